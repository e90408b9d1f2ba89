#!/usr/bin/env bash
# A local OCI registry for tests (Docker Hub is not reachable here): Debian's
# `docker-registry` (the CNCF distribution registry) serving plain HTTP on a
# loopback address, and test images built from small root filesystems with
# umoci and pushed with skopeo, exactly as a user pushes an image.
#
#   registry.sh start DIR [ADDR [PID]]
#                                  registry on ADDR (default 127.0.4.1:5000),
#                                  storage under DIR/storage, pid DIR/registry.pid;
#                                  with PID, it stops when process PID ends (tests)
#   registry.sh images DIR [ADDR]  build and push the test images (below), and
#                                  write archives for `image import` tests
#   registry.sh stop DIR           stop the registry started with DIR
#
# Test images (ADDR/...):
#   web:v1      two layers: the second deletes /etc/gone.txt (a `.wh.` whiteout),
#               replaces /data's contents (an opaque `.wh..wh..opq` directory)
#               and rewrites /etc/hello.txt; config with entrypoint, cmd, env,
#               workdir, user and an exposed port
#   multi:v1    a manifest list: linux/amd64 and linux/arm64 variants whose
#               configs say VARIANT=amd64 / VARIANT=arm64
#   armonly:v1  a manifest list with a linux/arm64 variant only
#   corrupt:v1  one layer of its own; DIR/corrupt-layer holds that layer's
#               digest, so a test can damage it in the registry's storage
# Archives: DIR/web-docker.tar (docker-archive, named imported/web:v1) and
# DIR/web-oci.tar (an OCI layout, tag web).
set -euo pipefail
source "$(dirname "$0")/../common.sh"

cmd=${1:?usage: registry.sh start|images|stop DIR [ADDR]}
dir=${2:?usage: registry.sh start|images|stop DIR [ADDR]}
addr=${3:-127.0.4.1:5000}
watch=${4:-}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

start() {
    apt_need docker-registry curl
    if [ -f "$dir/registry.pid" ] && kill -0 "$(cat "$dir/registry.pid")" 2>/dev/null; then
        return 0
    fi
    mkdir -p "$dir/storage"
    cat >"$dir/config.yml" <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $dir/storage
  delete:
    enabled: true
http:
  addr: $addr
EOF
    docker-registry serve "$dir/config.yml" >"$dir/registry.log" 2>&1 &
    local pid=$!
    echo $pid >"$dir/registry.pid"
    if [ -n "$watch" ]; then
        # Outlives this script, not the watched process.
        (while kill -0 "$watch" 2>/dev/null && kill -0 "$pid" 2>/dev/null; do sleep 1; done
         kill "$pid" 2>/dev/null) >/dev/null 2>&1 </dev/null &
        disown
    fi
    for _ in $(seq 1 100); do
        if curl -fsS "http://$addr/v2/" >/dev/null 2>&1; then
            return 0
        fi
        if ! kill -0 "$(cat "$dir/registry.pid")" 2>/dev/null; then
            echo "docker-registry exited at start; its log:" >&2
            cat "$dir/registry.log" >&2
            return 1
        fi
        sleep 0.1
    done
    echo "docker-registry did not answer on http://$addr/v2/ after 10s; its log:" >&2
    cat "$dir/registry.log" >&2
    return 1
}

stop() {
    if [ -f "$dir/registry.pid" ]; then
        kill "$(cat "$dir/registry.pid")" 2>/dev/null || true
        rm -f "$dir/registry.pid"
    fi
}

# sha256:<hex> of a file.
digest() { echo "sha256:$(sha256sum "$1" | cut -d' ' -f1)"; }

# The manifest descriptor (JSON) that tag $2 has in OCI layout $1.
descriptor() {
    jq -c --arg t "$2" '.manifests[] | select(.annotations["org.opencontainers.image.ref.name"] == $t)' "$1/index.json"
}

# Writes an image index over the manifests of tags $3... in layout $1, tagged $2.
make_index() {
    local oci=$1 tag=$2
    shift 2
    local entries=()
    for t in "$@"; do
        local d cfg arch
        d=$(descriptor "$oci" "$t")
        cfg=$(jq -r '.config.digest' "$oci/blobs/sha256/$(jq -r '.digest' <<<"$d" | cut -d: -f2)")
        arch=$(jq -r '.architecture' "$oci/blobs/sha256/${cfg#sha256:}")
        entries+=("$(jq -c --arg a "$arch" '{mediaType, digest, size, platform: {os: "linux", architecture: $a}}' <<<"$d")")
    done
    local index="$oci/index-$tag.json"
    printf '%s\n' "${entries[@]}" | jq -s '{schemaVersion: 2, mediaType: "application/vnd.oci.image.index.v1+json", manifests: .}' >"$index"
    local d
    d=$(digest "$index")
    mv "$index" "$oci/blobs/sha256/${d#sha256:}"
    local size
    size=$(stat -c %s "$oci/blobs/sha256/${d#sha256:}")
    jq --arg d "$d" --argjson s "$size" --arg t "$tag" \
        '.manifests += [{mediaType: "application/vnd.oci.image.index.v1+json", digest: $d, size: $s, annotations: {"org.opencontainers.image.ref.name": $t}}]' \
        "$oci/index.json" >"$oci/index.json.new"
    mv "$oci/index.json.new" "$oci/index.json"
}

# A layer tar of directory $1 (numeric owners, as image layers have them).
layer() { tar --numeric-owner --sort=name -C "$1" -cf "$2" .; }

images() {
    apt_need umoci skopeo jq tar
    local work="$dir/build"
    rm -rf "$work"
    mkdir -p "$work"
    local oci="$work/oci"
    umoci init --layout "$oci"

    # web:v1, layer 1: a small tree with a symlink, a hard link and an owner.
    local l1="$work/l1" l2="$work/l2"
    mkdir -p "$l1/etc" "$l1/data" "$l1/bin"
    echo "hello v1" >"$l1/etc/hello.txt"
    echo "deleted by layer 2" >"$l1/etc/gone.txt"
    echo "kept" >"$l1/etc/keep.txt"
    echo "old 1" >"$l1/data/old1.txt"
    echo "old 2" >"$l1/data/old2.txt"
    printf '#!/bin/sh\necho tool\n' >"$l1/bin/tool"
    chmod 0755 "$l1/bin/tool"
    chown 1000:1000 "$l1/bin/tool"
    ln -s tool "$l1/bin/tool-link"
    ln "$l1/bin/tool" "$l1/bin/tool-hard"
    layer "$l1" "$work/l1.tar"
    # Layer 2: whiteouts as OCI writes them, and an overwrite.
    mkdir -p "$l2/etc" "$l2/data"
    : >"$l2/etc/.wh.gone.txt"
    : >"$l2/data/.wh..wh..opq"
    echo "new" >"$l2/data/new.txt"
    echo "hello v2" >"$l2/etc/hello.txt"
    layer "$l2" "$work/l2.tar"
    umoci new --image "$oci:web"
    umoci raw add-layer --image "$oci:web" "$work/l1.tar"
    umoci raw add-layer --image "$oci:web" "$work/l2.tar"
    umoci config --image "$oci:web" --config.entrypoint /bin/tool --config.cmd --serve \
        --config.env GREETING=hi --config.workingdir /data --config.user 1000:1000 \
        --config.exposedports 8080/tcp --os linux --architecture amd64

    # Variants for the manifest lists: one small layer each.
    for arch in amd64 arm64; do
        local l="$work/l-$arch"
        mkdir -p "$l/etc"
        echo "$arch" >"$l/etc/arch"
        layer "$l" "$work/l-$arch.tar"
        umoci new --image "$oci:$arch"
        umoci raw add-layer --image "$oci:$arch" "$work/l-$arch.tar"
        umoci config --image "$oci:$arch" --config.env "VARIANT=$arch" --os linux --architecture "$arch"
    done
    make_index "$oci" multi amd64 arm64
    make_index "$oci" armonly arm64

    # corrupt:v1: content no other image shares.
    local lc="$work/lc"
    mkdir -p "$lc"
    head -c 65536 /dev/urandom >"$lc/random.bin"
    layer "$lc" "$work/lc.tar"
    umoci new --image "$oci:corrupt"
    umoci raw add-layer --image "$oci:corrupt" "$work/lc.tar"
    umoci config --image "$oci:corrupt" --os linux --architecture amd64
    local m
    m=$(descriptor "$oci" corrupt | jq -r '.digest')
    jq -r '.layers[0].digest' "$oci/blobs/sha256/${m#sha256:}" >"$dir/corrupt-layer"

    local to="--dest-tls-verify=false"
    skopeo copy -q $to "oci:$oci:web" "docker://$addr/web:v1"
    skopeo copy -q $to --all "oci:$oci:multi" "docker://$addr/multi:v1"
    skopeo copy -q $to --all "oci:$oci:armonly" "docker://$addr/armonly:v1"
    skopeo copy -q $to "oci:$oci:corrupt" "docker://$addr/corrupt:v1"

    rm -f "$dir/web-docker.tar" "$dir/web-oci.tar"
    skopeo copy -q "oci:$oci:web" "docker-archive:$dir/web-docker.tar:imported/web:v1"
    skopeo copy -q "oci:$oci:web" "oci-archive:$dir/web-oci.tar:web"
}

case "$cmd" in
    start) start ;;
    images) images ;;
    stop) stop ;;
    *) echo "usage: registry.sh start|images|stop DIR [ADDR]" >&2; exit 2 ;;
esac
