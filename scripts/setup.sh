#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine: system packages, the wasm guests, and the
# swarmlet release binary. Idempotent; safe to run again.
set -euo pipefail
source "$(dirname "$0")/common.sh"

# curl and wrk for the demo and benchmark; the guest toolchain is installed
# by guests/build.sh itself.
apt_need curl wrk ca-certificates
# gdb: scripts/test.sh's watchdog prints the stacks of a hung test with it.
apt_need gdb
# iproute2 and nftables (+ iptables) for the e2e tests that put nodes in
# network namespaces and cut their links (tests/src/netns.rs).
apt_need iproute2 nftables iptables
# A local OCI registry and the tools that build and push test images into it
# (node/tests/images.rs, scripts/images/registry.sh).
apt_need docker-registry skopeo umoci jq
# Containers (node/src/runtime/container): containerd's package ships
# containerd-shim-runc-v2 (no containerd daemon is used), runc runs them;
# nginx is copied into the test image (scripts/images/nginx-rootfs.sh).
apt_need containerd runc nginx
"$REPO/guests/build.sh"
(cd "$REPO" && cargo build --release -p swarmlet)
# On the PATH, as a user would have it after installing a package.
BINDIR=${BINDIR:-/usr/local/bin}
if [ -w "$BINDIR" ]; then
    install -m 0755 "$SWARMLET" "$BINDIR/swarmlet.new"
    mv -f "$BINDIR/swarmlet.new" "$BINDIR/swarmlet"
    echo "swarmlet installed: $BINDIR/swarmlet" >&2
else
    echo "swarmlet built: $SWARMLET (no write access to $BINDIR; run as root or set BINDIR to put it on the PATH)" >&2
fi
