#!/usr/bin/env bash
# Builds the wasm guest components into guests/out/*.wasm.
#
# rustup cannot add the wasm32-wasip2 target on these machines, so the guests
# are built with Debian's second Rust toolchain (rustc-web) and -Zbuild-std,
# as ../shared/GUESTS.md describes. PATH and RUSTFLAGS are set for this script
# only; the host workspace keeps rustup's cargo.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

need_pkgs=()
[ -x /usr/bin/cargo ] || need_pkgs+=(cargo-web)
[ -x /usr/bin/rustc ] || need_pkgs+=(rustc-web)
[ -d /usr/lib/rustlib/src/rust/library ] || need_pkgs+=(rust-web-src)
command -v lld-22 >/dev/null 2>&1 || [ -x /usr/bin/lld-22 ] || need_pkgs+=(lld-22)
[ -d /usr/lib/wasm32-wasi ] || need_pkgs+=(wasi-libc)
if [ ${#need_pkgs[@]} -gt 0 ]; then
    echo "guests: installing ${need_pkgs[*]} (Debian's wasm-capable Rust toolchain)" >&2
    if [ "$(id -u)" -ne 0 ]; then
        echo "guests: need root to apt-get install ${need_pkgs[*]}" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rustc-web cargo-web rust-web-src lld-22 wasi-libc >/dev/null
fi

export PATH=/usr/bin:/usr/lib/rustlib/x86_64-unknown-linux-gnu/bin:$PATH
export RUSTC_BOOTSTRAP=1
export RUSTFLAGS="-L /usr/lib/wasm32-wasi -C link-self-contained=no"
unset CARGO_TARGET_DIR CARGO_BUILD_TARGET_DIR
export CARGO_TARGET_DIR="$here/target"

cd "$here"
cargo build --release --target wasm32-wasip2 -Zbuild-std=std,panic_abort >&2
mkdir -p out
for g in hello faulty; do
    cp "target/wasm32-wasip2/release/$g.wasm" "out/$g.wasm"
done
ls -l out/*.wasm >&2
