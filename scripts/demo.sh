#!/usr/bin/env bash
# One command on a fresh machine: installs what is needed, builds swarmlet and
# the guests, starts a node (daemon + init) and deploys `hello` (a wasm
# component) with 3 replicas on port 8080, then a local registry with an
# nginx image (built from Debian's nginx; Docker Hub is not needed) and
# `web` from that image with 3 container replicas on port 8081. The node
# keeps running; the script says how to stop it.
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$REPO"

DATA_DIR=${DATA_DIR:-/tmp/swarmlet-demo}
ADDR=${ADDR:-127.0.0.1}
PORT=${PORT:-8080}
WEB_PORT=${WEB_PORT:-8081}
REGISTRY=${REGISTRY:-127.0.0.1:5055}

"$REPO/scripts/setup.sh"
# setup.sh put it on the PATH (as root); else use the build output.
SWARMLET=$(command -v swarmlet || echo "$SWARMLET")
mkdir -p "$DATA_DIR"
if [ -S "$DATA_DIR/swarmlet.sock" ] && "$SWARMLET" -H "unix://$DATA_DIR/swarmlet.sock" node ls >/dev/null 2>&1; then
    echo "a demo node is already running on $DATA_DIR" >&2
else
    nohup "$SWARMLET" daemon --data-dir "$DATA_DIR" --listen-addr "$ADDR:2377" --publish-addr "$ADDR" \
        >"$DATA_DIR/daemon.log" 2>&1 &
    echo $! >"$DATA_DIR/daemon.pid"
    for _ in $(seq 200); do [ -S "$DATA_DIR/swarmlet.sock" ] && break; sleep 0.05; done
fi
export SWARMLET_HOST="unix://$DATA_DIR/swarmlet.sock"
"$SWARMLET" node ls >/dev/null 2>&1 || "$SWARMLET" init
"$SWARMLET" node ls
if ! "$SWARMLET" service inspect hello >/dev/null 2>&1; then
    "$SWARMLET" service create --name hello --replicas 3 -p "$PORT:80" guests/out/hello.wasm
fi
"$SWARMLET" service ls
"$SWARMLET" service ps hello
for _ in 1 2 3; do curl -s "http://$ADDR:$PORT/demo"; done

# A container service: push an nginx image to a local registry as a user
# would (skopeo), then run it from there.
if ! "$SWARMLET" service inspect web >/dev/null 2>&1; then
    "$REPO/scripts/images/registry.sh" start "$DATA_DIR-registry" "$REGISTRY"
    [ -d "$DATA_DIR-images" ] || "$REPO/scripts/images/e2e-images.sh" "$DATA_DIR-images"
    skopeo copy -q --dest-tls-verify=false "oci:$DATA_DIR-images:nginx" "docker://$REGISTRY/demo/nginx:1.27"
    "$SWARMLET" service create --name web --replicas 3 -p "$WEB_PORT:80" "$REGISTRY/demo/nginx:1.27"
fi
"$SWARMLET" service ls
"$SWARMLET" service ps web
for _ in 1 2 3; do curl -s "http://$ADDR:$WEB_PORT/"; done
cat <<EOT

The node is running (pid $(cat "$DATA_DIR/daemon.pid" 2>/dev/null || echo "?"), log $DATA_DIR/daemon.log).
Try:
    export SWARMLET_HOST=unix://$DATA_DIR/swarmlet.sock
    swarmlet service scale hello=5
    wrk -c64 -d10s http://$ADDR:$PORT/
    swarmlet service logs web
Stop it with:  swarmlet service rm web hello; kill \$(cat $DATA_DIR/daemon.pid); scripts/images/registry.sh stop $DATA_DIR-registry
EOT
