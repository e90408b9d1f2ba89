//! Link options for the `swarmlet` binary.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && env == "gnu" {
        // Packed relative relocations (DT_RELR): the ~76,000 relative
        // relocations of a position-independent binary this size take
        // 1.8 MB as RELA entries, which the dynamic loader reads, and so
        // keeps resident, at every start; as RELR they take a few KB.
        // Needs GNU ld ≥ 2.38 to link and glibc ≥ 2.36 to run (Debian 12,
        // Raspberry Pi OS bookworm); the binary already needs glibc 2.34.
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
