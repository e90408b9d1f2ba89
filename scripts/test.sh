#!/usr/bin/env bash
# Runs every check and test: formatting, clippy, unit tests, end-to-end tests
# against real daemons and real wasmtime, and the quick benchmark (which fails
# only if the benchmark itself breaks, never on a number).
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$REPO"

"$REPO/scripts/setup.sh"
cargo fmt --all -- --check
cargo clippy --release --workspace --all-targets -- -D warnings
cargo test --release --workspace 2>&1 | tee /tmp/swarmlet-test.log
"$REPO/scripts/bench.sh" --quick
