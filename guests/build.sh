#!/usr/bin/env bash
# Builds the wasm guest components into guests/out/*.wasm.
#
# rustup cannot add the wasm32-wasip2 target on these machines, so the guests
# are built with Debian's second Rust toolchain (rustc-web) and -Zbuild-std,
# as ../shared/GUESTS.md describes. PATH and RUSTFLAGS are set for this script
# only; the host workspace keeps rustup's cargo.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

source "$here/../scripts/common.sh"
apt_need rustc-web cargo-web rust-web-src lld-22 wasi-libc

export PATH=/usr/bin:/usr/lib/rustlib/x86_64-unknown-linux-gnu/bin:$PATH
export RUSTC_BOOTSTRAP=1
export RUSTFLAGS="-L /usr/lib/wasm32-wasi -C link-self-contained=no"
unset CARGO_TARGET_DIR CARGO_BUILD_TARGET_DIR
export CARGO_TARGET_DIR="$here/target"

cd "$here"
cargo build --release --target wasm32-wasip2 -Zbuild-std=std,panic_abort >&2
mkdir -p out
for g in hello faulty compute counter fetch hello-p3; do
    # cargo names a crate's artifact with `_` for `-` (hello-p3 -> hello_p3.wasm).
    cp "target/wasm32-wasip2/release/${g//-/_}.wasm" "out/$g.wasm"
done
ls -l out/*.wasm >&2
