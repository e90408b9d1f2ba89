#!/usr/bin/env bash
# Runs every check and test: formatting, clippy, unit tests, end-to-end tests
# against real daemons and real wasmtime, the Raspberry Pi build run under
# qemu-aarch64 (scripts/aarch64.sh: ~2 minutes with its target dir warm, ~28
# cold), and the quick benchmark (which fails only if the benchmark itself
# breaks, never on a number).
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$REPO"

"$REPO/scripts/setup.sh"
cargo fmt --all -- --check
cargo clippy --release --workspace --all-targets -- -D warnings
log=$(mktemp)
# The whole suite takes ~10 minutes here; a test that hangs is killed (with
# its stacks printed) after 35, well inside CI's 90.
start_watchdog 2100
cargo test --release --workspace 2>&1 | tee "$log"
stop_watchdog
"$REPO/scripts/aarch64.sh"
"$REPO/scripts/bench.sh" --quick
# One closing line for the whole run, summed over cargo's test binaries.
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
rm -f "$log"
