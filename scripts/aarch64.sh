#!/usr/bin/env bash
# Builds swarmlet for a Raspberry Pi (aarch64-unknown-linux-gnu) and runs a
# node under qemu-user with a Pi's address space (-R 512G: 39-bit virtual
# addresses, as 64-bit Raspberry Pi OS gives a process): daemon, init,
# `hello` with 2 replicas and the WASIp3 `hello-p3`, requests through the
# mesh, `swarmlet info`.
#
#   scripts/aarch64.sh              build (cold: ~28 min on 2 cores) and run
#   scripts/aarch64.sh --no-build   run the binary built before
#
# rustup here has only x86_64's std, so this uses Debian's rustc-web with
# -Zbuild-std, and a cross C compiler (ring and wasmtime build C). The aarch64
# target dir is its own (a second std and wasmtime), outside the clone, and reused.
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$REPO"

TARGET=aarch64-unknown-linux-gnu
A64_TARGET_DIR=${A64_TARGET_DIR:-/var/tmp/swarmlet-aarch64}
BIN=$A64_TARGET_DIR/$TARGET/release/swarmlet
DATA_DIR=${DATA_DIR:-/tmp/swarmlet-aarch64}
ADDR=${ADDR:-127.0.0.91}
PORT=${PORT:-18191}
PORT3=${PORT3:-18192}
# A64_ADDRESS_SPACE: the address space of a Pi 4 on 64-bit Pi OS. Never run
# the daemon under qemu without -R: qemu's bookkeeping of large reservations
# then costs GiBs.

build=1
for arg in "$@"; do
    case "$arg" in
        --no-build) build=0 ;;
        *) echo "usage: $0 [--no-build]" >&2; exit 2 ;;
    esac
done

apt_need rustc-web cargo-web rust-web-src gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user curl

if [ "$build" = 1 ]; then
    [ -f guests/out/hello.wasm ] && [ -f guests/out/hello-p3.wasm ] || "$REPO/guests/build.sh"
    (
        export PATH=/usr/bin:$PATH                 # Debian's cargo/rustc, not rustup's proxies
        export RUSTC_BOOTSTRAP=1                   # -Zbuild-std on a stable compiler
        export CARGO_TARGET_DIR=$A64_TARGET_DIR
        export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
        export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
        export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
        cargo build --release -p swarmlet --target "$TARGET" -Zbuild-std=std,panic_abort
    )
fi
[ -x "$BIN" ] || { echo "no aarch64 binary at $BIN: run without --no-build" >&2; exit 1; }
if command -v file >/dev/null && ! file "$BIN" | grep -q aarch64; then
    echo "warning: $BIN does not look like an aarch64 binary" >&2
fi

# One node per address space: a Pi's 512 GiB holds a pool of instances;
# a 4 GiB one (a 32-bit-ish budget, as a tight `ulimit -v`) falls back to
# on-demand allocation. Each must start, report its isolation and allocator,
# and serve `hello` through the mesh.
run_node() {
    local space=$1 expect=$2
    local QEMU=(qemu-aarch64 -R "$space" -L /usr/aarch64-linux-gnu)
    rm -rf "$DATA_DIR"
    mkdir -p "$DATA_DIR"
    "${QEMU[@]}" "$BIN" daemon --data-dir "$DATA_DIR" --listen-addr "$ADDR:2377" \
        --publish-addr "$ADDR" --advertise-addr "$ADDR" >"$DATA_DIR/daemon.log" 2>&1 &
    DAEMON=$!
    # Everything below drives the aarch64 CLI under qemu too.
    sl() { "${QEMU[@]}" "$BIN" -H "unix://$DATA_DIR/swarmlet.sock" "$@"; }
    for _ in $(seq 600); do
        [ -S "$DATA_DIR/swarmlet.sock" ] && break
        kill -0 "$DAEMON" 2>/dev/null || fail "the daemon exited before its API answered (qemu -R $space)"
        sleep 0.1
    done
    [ -S "$DATA_DIR/swarmlet.sock" ] || fail "the daemon's API socket never appeared (qemu -R $space)"

    sl info | tee "$DATA_DIR/info.txt"
    grep -q "Isolation: guard-pages" "$DATA_DIR/info.txt" || fail "info does not report guard-pages isolation"
    grep -q "Instance allocator: $expect" "$DATA_DIR/info.txt" ||
        fail "under qemu -R $space the instance allocator is not $expect"
    sl init >/dev/null
    sl service create --name hello --replicas 2 -p "$PORT:80" guests/out/hello.wasm
    local ok=0 body
    for i in $(seq 20); do
        body=$(curl -sf "http://$ADDR:$PORT/pi$i") || fail "request $i to hello failed (qemu -R $space)"
        case "$body" in "hello from hello."*) ok=$((ok + 1)) ;; *) fail "unexpected answer: $body" ;; esac
    done
    # A WASIp3 component runs on the second engine (the component model's
    # concurrency, on-demand allocation), built on first use: it must start
    # in this address space too and serve (one instance may take 4 at once).
    sl service create --name hellop3 --instance-concurrency 4 -p "$PORT3:80" guests/out/hello-p3.wasm
    local ok3=0
    for i in $(seq 20); do
        body=$(curl -sf "http://$ADDR:$PORT3/pi$i") || fail "request $i to hello-p3 failed (qemu -R $space)"
        case "$body" in "hello-p3 from hellop3."*) ok3=$((ok3 + 1)) ;; *) fail "unexpected answer: $body" ;; esac
    done
    sl service ls
    echo "aarch64 under qemu -R $space: $ok/20 requests answered by hello ($expect allocator), $ok3/20 by the WASIp3 hello-p3"
    grep "wasm engine" "$DATA_DIR/daemon.log" || true
    cleanup
}

cleanup() {
    if [ -n "${DAEMON:-}" ]; then
        kill "$DAEMON" 2>/dev/null || true
        wait "$DAEMON" 2>/dev/null || true
        DAEMON=
    fi
}
trap cleanup EXIT
fail() {
    echo "FAILED: $*" >&2
    echo "---- daemon log ($DATA_DIR/daemon.log) ----" >&2
    cat "$DATA_DIR/daemon.log" >&2
    exit 1
}

run_node "${A64_ADDRESS_SPACE:-512G}" pooling
run_node 4G on-demand
