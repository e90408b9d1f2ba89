#!/usr/bin/env bash
# The container images of the end-to-end tests, as one OCI layout (tags
# nginx, crash, nocmd) that tests/src/registry.rs pushes to its registry:
#   nginx  swarmlet/nginx:1.27  the nginx rootfs of nginx-rootfs.sh, CMD nginx -g 'daemon off;', port 80
#   crash  swarmlet/crash:1     a shell and its libraries; CMD prints a line to stderr and exits 1
#   nocmd  swarmlet/nocmd:1     /etc only; CMD /usr/bin/does-not-exist
# Built into DIR.tmp and renamed to DIR when complete, so a DIR that exists
# is whole (the harness builds it once and reuses it).
#   images/e2e-images.sh DIR
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: e2e-images.sh DIR}
work="$out.tmp.$$"
rm -rf "$work"
mkdir -p "$work"
trap 'rm -rf "$work"' EXIT
arch=$(dpkg --print-architecture 2>/dev/null || uname -m)
case "$arch" in x86_64) arch=amd64 ;; aarch64) arch=arm64 ;; esac
path=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# A layer tar of directory $1 (numeric owners, as image layers have them).
layer() { tar --numeric-owner --sort=name -C "$1" -cf "$2" .; }

# Copies binary $1 and the libraries it links into rootfs $2.
with_libs() {
    mkdir -p "$2$(dirname "$1")"
    cp -L "$1" "$2$1"
    ldd "$1" | grep -o '/[^ ]*' | while read -r lib; do
        mkdir -p "$2$(dirname "$lib")"
        cp -L "$lib" "$2$lib"
    done
}

etc() {
    mkdir -p "$1/etc" "$1/tmp"
    chmod 1777 "$1/tmp"
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n' >"$1/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' >"$1/etc/group"
}

oci="$work/oci"
umoci init --layout "$oci"

"$here/nginx-rootfs.sh" "$work/nginx"
layer "$work/nginx" "$work/nginx.tar"
umoci new --image "$oci:nginx"
umoci raw add-layer --image "$oci:nginx" "$work/nginx.tar"
umoci config --image "$oci:nginx" --os linux --architecture "$arch" --config.env "$path" \
    --config.cmd /usr/sbin/nginx --config.cmd -g --config.cmd 'daemon off;' \
    --config.exposedports 80/tcp

sh=$(readlink -f /bin/sh)
etc "$work/crash"
with_libs "$sh" "$work/crash"
mkdir -p "$work/crash/bin"
[ "$sh" = /bin/sh ] || ln -s "$sh" "$work/crash/bin/sh"
layer "$work/crash" "$work/crash.tar"
umoci new --image "$oci:crash"
umoci raw add-layer --image "$oci:crash" "$work/crash.tar"
umoci config --image "$oci:crash" --os linux --architecture "$arch" --config.env "$path" \
    --config.cmd /bin/sh --config.cmd -c --config.cmd 'echo "crash: exiting with code 1 at start" >&2; exit 1'

etc "$work/nocmd"
layer "$work/nocmd" "$work/nocmd.tar"
umoci new --image "$oci:nocmd"
umoci raw add-layer --image "$oci:nocmd" "$work/nocmd.tar"
umoci config --image "$oci:nocmd" --os linux --architecture "$arch" --config.env "$path" \
    --config.cmd /usr/bin/does-not-exist

umoci gc --layout "$oci"
mkdir -p "$(dirname "$out")"
# Another test process may have built it meanwhile: either copy is whole.
mv -T "$oci" "$out" 2>/dev/null || [ -e "$out/index.json" ]
