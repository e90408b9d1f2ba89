#!/usr/bin/env bash
# Builds a minimal nginx root filesystem from Debian's nginx package (no
# registry needed): the binary, the libraries it links, a config that
# answers `return 200` with the container's hostname (its task ID), so a
# test through the mesh can tell replicas apart. Used for container images in tests and benchmarks.
#   images/nginx-rootfs.sh DIR
set -euo pipefail
source "$(dirname "$0")/../common.sh"
out=${1:?usage: nginx-rootfs.sh DIR}
apt_need nginx
rm -rf "$out"
mkdir -p "$out"/{etc/nginx,run,tmp,var/log/nginx,var/lib/nginx/{body,proxy,fastcgi,uwsgi,scgi},usr/sbin}
cp /usr/sbin/nginx "$out/usr/sbin/nginx"
ldd /usr/sbin/nginx | grep -o '/[^ ]*' | while read -r lib; do
    mkdir -p "$out$(dirname "$lib")"
    cp -L "$lib" "$out$lib"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n' >"$out/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$out/etc/group"
cp /etc/nginx/mime.types "$out/etc/nginx/mime.types"
cat >"$out/etc/nginx/nginx.conf" <<'CONF'
user root;
worker_processes 1;
error_log stderr;
pid /run/nginx.pid;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    server {
        listen 80;
        location / { return 200 "hello from nginx on $hostname\n"; }
    }
}
CONF
chmod 1777 "$out/tmp"
