#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine: system packages, the wasm guests, and the
# swarmlet release binary. Idempotent; safe to run again.
set -euo pipefail
source "$(dirname "$0")/common.sh"

# curl and wrk for the demo and benchmark; the guest toolchain is installed
# by guests/build.sh itself.
apt_need curl wrk ca-certificates
"$REPO/guests/build.sh"
(cd "$REPO" && cargo build --release -p swarmlet)
echo "swarmlet built: $SWARMLET" >&2
