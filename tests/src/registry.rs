//! A real OCI registry for container tests: Debian's `docker-registry` on a
//! free 127.0.0.1 port (plain HTTP, which clients use for loopback
//! registries without any flag, as Docker does), holding the test images
//! that `scripts/images/e2e-images.sh` builds with umoci and pushed with
//! skopeo, exactly as a user pushes an image:
//!
//! - [`NGINX`] `swarmlet/nginx:1.27`: nginx (the rootfs of
//!   `scripts/images/nginx-rootfs.sh`), `CMD nginx -g 'daemon off;'`, port 80,
//!   answers every request with `hello from nginx`;
//! - [`CRASH`] `swarmlet/crash:1`: its command prints
//!   `crash: exiting with code 1 at start` on stderr and exits 1 at once;
//! - [`NOCMD`] `swarmlet/nocmd:1`: its command `/usr/bin/does-not-exist`
//!   does not exist.
//!
//! One registry per test process, started by the first [`Registry::start`]
//! and stopped when the process ends (`registry.sh start … PID` watches it).
//! The images are built once into the target directory (`e2e-images/`) and
//! reused by later test processes; each process pushes them to its own
//! registry.
//!
//! Needs `docker-registry`, `skopeo`, `umoci`, `curl` and nginx
//! (`scripts/setup.sh` installs them). Without them `start` returns `None`
//! after saying so on stderr, and the test skips, except under `CI=true`,
//! where a missing tool fails the test.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The images' repositories and tags, without the registry's address.
pub const NGINX: &str = "swarmlet/nginx:1.27";
pub const CRASH: &str = "swarmlet/crash:1";
pub const NOCMD: &str = "swarmlet/nocmd:1";

/// (tag in the OCI layout, reference in the registry)
const IMAGES: [(&str, &str); 3] = [("nginx", NGINX), ("crash", CRASH), ("nocmd", NOCMD)];

const TOOLS: [&str; 6] = ["docker-registry", "skopeo", "umoci", "curl", "nginx", "tar"];

/// The registry of this test process.
#[derive(Debug)]
pub struct Registry {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// Its configuration, storage and log (`registry.log`).
    pub dir: PathBuf,
    /// The OCI layout the images were pushed from.
    pub layout: PathBuf,
}

impl Registry {
    /// The registry, started (and the images pushed) on the first call of
    /// this process. `None`: a tool is missing (said on stderr); under
    /// `CI=true` that panics instead.
    pub fn start() -> Option<&'static Registry> {
        static REG: OnceLock<Option<Registry>> = OnceLock::new();
        REG.get_or_init(|| {
            let missing = missing_tools();
            if !missing.is_empty() {
                let why = format!(
                    "container tests need {} (scripts/setup.sh installs them)",
                    missing.join(", ")
                );
                assert!(!crate::ci(), "{why}; under CI=true nothing is skipped");
                eprintln!("SKIPPED: {why}");
                return None;
            }
            Some(Registry::launch())
        })
        .as_ref()
    }

    /// `ADDR/repo:tag`, e.g. `image(NGINX)` → `127.0.0.1:41234/swarmlet/nginx:1.27`.
    pub fn image(&self, name: &str) -> String {
        format!("{}/{name}", self.addr)
    }

    fn launch() -> Registry {
        let layout = images_layout();
        // A free port: bound by us, released, then taken by the registry
        // (nothing else on this machine hands out ports on 127.0.0.1 that fast).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port on 127.0.0.1")
            .port();
        let addr = format!("127.0.0.1:{port}");
        sweep_stale();
        let dir =
            std::env::temp_dir().join(format!("swarmlet-e2e-registry-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        run(
            Command::new(repo().join("scripts/images/registry.sh"))
                .arg("start")
                .arg(&dir)
                .arg(&addr)
                .arg(std::process::id().to_string()),
            "registry.sh start",
        );
        for (tag, name) in IMAGES {
            run(
                Command::new("skopeo")
                    .args(["copy", "-q", "--dest-tls-verify=false"])
                    .arg(format!("oci:{}:{tag}", layout.display()))
                    .arg(format!("docker://{addr}/{name}")),
                &format!("skopeo copy (push {name})"),
            );
        }
        Registry { addr, dir, layout }
    }
}

/// Whether the `swarmlet` under test runs container services: its daemon
/// has a container runtime (`--bridge-cidr`) and `service create` takes an
/// image reference (`--no-resolve-image`). A build capability, not a
/// missing tool: tests of container services skip without it, in CI too.
pub fn containers_supported() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        crate::bridges_enabled()
            && Command::new(crate::swarmlet_bin())
                .args(["service", "create", "--help"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).contains("--no-resolve-image"))
                .unwrap_or(false)
    })
}

/// The tools of `TOOLS` that are not on PATH.
fn missing_tools() -> Vec<String> {
    TOOLS
        .iter()
        .filter(|t| {
            !Command::new("sh")
                .args(["-c", &format!("command -v {t}")])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
        })
        .map(|t| t.to_string())
        .collect()
}

fn repo() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .join("..")
}

/// The OCI layout with the test images, built on first use into the target
/// directory. Its name carries a hash of the build scripts, so changing them
/// rebuilds it.
fn images_layout() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/release/deps/TEST → target/release
    let profile = exe
        .parent()
        .and_then(Path::parent)
        .expect("target profile dir");
    let scripts = ["e2e-images.sh", "nginx-rootfs.sh"].map(|s| {
        let p = repo().join("scripts/images").join(s);
        std::fs::read(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
    });
    let layout = profile.join(format!("e2e-images/{:016x}", fnv1a(&scripts.concat())));
    if !layout.join("index.json").exists() {
        run(
            Command::new(repo().join("scripts/images/e2e-images.sh")).arg(&layout),
            "scripts/images/e2e-images.sh",
        );
    }
    layout
}

/// FNV-1a: a cache key for the build scripts' contents (not security; no
/// hashing crate needed for that).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Runs `cmd`; panics with its output if it fails.
fn run(cmd: &mut Command, what: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("could not run {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Removes the registry directories of test processes that are gone (each
/// registry stops with its process; its storage stays behind).
fn sweep_stale() {
    let Ok(rd) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("swarmlet-e2e-registry-")
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        // SAFETY: signal 0 only checks that the process exists.
        let gone = unsafe { libc::kill(pid, 0) } != 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if gone {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}
