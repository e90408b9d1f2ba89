#!/usr/bin/env bash
# The mesh's node-to-node hop, measured side by side in one run:
#   local:   wrk -> node A's published port; A runs every replica
#   remote:  wrk -> node B's published port; B runs none, so every request
#            crosses to A over the cluster port (HTTP/2, mutual TLS)
#   haproxy: wrk -> HAProxy (http mode, 1 thread, keep-alive to the backend)
#            -> node A's published port: the same extra hop done by HAProxy
# A, B and HAProxy run on core 0, wrk on core 1 (as bench.sh). Rows are
# interleaved round by round. Prints one markdown section (min / median /
# max requests/s, p50/p99 of the median round) and the ratio the target in
# DESIGN.md is about (remote hop ≥ 1.0× HAProxy, p99 ≤ HAProxy's + 1 ms).
#
# Usage: scripts/bench-mesh.sh [ROUNDS]   (SWARMLET=path, DUR=10s, CONNS=64,
#        MESH_A/MESH_B/MESH_HA=loopback addresses of node A, node B, HAProxy;
#        SPLIT=1 adds a row that tells node B's half of the hop from node A's:
#        HAProxy speaking HTTP/2 over mutual TLS (node B's certificate)
#        straight to A's cluster port, /v1/mesh/SERVICE_ID/..., as B does)
set -euo pipefail
source "$(dirname "$0")/common.sh"
source "$(dirname "$0")/bench-lib.sh"
cd "$REPO"
ROUNDS=${1:-${ROUNDS:-3}}
DUR=${DUR:-10s}
CONNS=${CONNS:-64}
BIN=${SWARMLET:-$CARGO_TARGET_DIR/release/swarmlet}
HELLO=guests/out/hello.wasm
[ -x "$BIN" ] || { echo "build first: cargo build --release -p swarmlet ($BIN)" >&2; exit 1; }
[ -f "$HELLO" ] || { echo "run guests/build.sh first ($HELLO)" >&2; exit 1; }
command -v haproxy >/dev/null || apt_need haproxy
command -v wrk >/dev/null || apt_need wrk

A=${MESH_A:-127.0.0.60}
B=${MESH_B:-127.0.0.61}
HA=${MESH_HA:-127.0.0.62}
SPLIT=${SPLIT:-0}
PORT=18180
WORK=$(mktemp -d /tmp/swarmlet-mesh.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

start() { # NAME IP
    local n=$1 ip=$2
    mkdir -p "$WORK/$n"
    "${SERVER_PIN[@]}" "$BIN" daemon --data-dir "$WORK/$n" --listen-addr "$ip:2377" \
        --publish-addr "$ip" --node-name "$n" >>"$WORK/$n.log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 400); do [ -S "$WORK/$n/swarmlet.sock" ] && return 0; sleep 0.05; done
    cat "$WORK/$n.log" >&2
    echo "benchmark broke: node $n did not start" >&2
    exit 1
}
cli() { local n=$1; shift; "$BIN" -H "unix://$WORK/$n/swarmlet.sock" "$@"; }
wait_http() {
    for _ in $(seq 600); do
        [ "$(curl -s -o /dev/null -w '%{http_code}' "$1" || true)" = 200 ] && return 0
        sleep 0.05
    done
    echo "benchmark broke: $1 never answered" >&2
    exit 1
}

start a $A
start b $B
cli a init >/dev/null
cli b join --token "$(cli a swarm join-token -q worker)" "$A:2377" >/dev/null
# B takes no task: every replica runs on A, so B must forward every request.
cli a node update --availability pause b >/dev/null
cli a service create --name hello --replicas 2 -p $PORT:80 "$HELLO" >/dev/null
ON_B=$(cli a service ps hello --format json | python3 -c 'import json,sys; print(sum(t["node_name"] == "b" for t in json.load(sys.stdin)))')
[ "$ON_B" = 0 ] || { echo "benchmark broke: a replica landed on node b" >&2; exit 1; }

cat >"$WORK/haproxy.cfg" <<CONF
global
    nbthread 1
defaults
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend http_in
    mode http
    bind $HA:$PORT
    default_backend a
backend a
    mode http
    http-reuse always
    server a $A:$PORT
CONF
if [ "$SPLIT" = 1 ]; then
    SID=$(cli a service inspect hello | python3 -c 'import json,sys; d=json.load(sys.stdin); d=d[0] if isinstance(d,list) else d; print(d.get("id") or d["service"]["id"])')
    cat "$WORK/b/certs/node.crt" "$WORK/b/certs/node.key" >"$WORK/b.pem"
    cat >>"$WORK/haproxy.cfg" <<CONF
frontend split_in
    mode http
    bind $HA:$((PORT + 1))
    default_backend a_cluster
backend a_cluster
    mode http
    http-reuse always
    http-request set-path /v1/mesh/$SID%[path]
    server a $A:2377 ssl crt $WORK/b.pem verify none alpn h2
CONF
fi
"${SERVER_PIN[@]}" haproxy -f "$WORK/haproxy.cfg" &
PIDS+=($!)
wait_http "http://$A:$PORT/"
wait_http "http://$B:$PORT/"
wait_http "http://$HA:$PORT/"
[ "$SPLIT" = 1 ] && wait_http "http://$HA:$((PORT + 1))/"

ROWS=("local|node A, replicas local (no hop)|http://$A:$PORT/"
      "remote|node B, every replica on A (mesh hop over the cluster port, mTLS HTTP/2)|http://$B:$PORT/"
      "haproxy|HAProxy http mode → node A (the same hop by HAProxy)|http://$HA:$PORT/")
[ "$SPLIT" = 1 ] && ROWS+=("split|HAProxy → HTTP/2 + mTLS → node A's cluster port (node A's half of the mesh hop)|http://$HA:$((PORT + 1))/")
mkdir -p "$WORK/rows"
for round in $(seq "$ROUNDS"); do
    for row in "${ROWS[@]}"; do
        IFS='|' read -r key label url <<<"$row"
        load=$(cut -d' ' -f1 /proc/loadavg)
        echo "$(wrk_once "$url") $load" >>"$WORK/rows/$key"
        echo "mesh round $round: $label" >&2
    done
done

declare -A MED P99
echo "## The mesh's node-to-node hop (hello.wasm, 2 replicas on node A; $CONNS connections, $DUR, $ROUNDS round(s), interleaved; $PINNING)"
echo
echo "| setup | req/s min | req/s median | req/s max | p50 ms | p99 ms | load (1 min) |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
for row in "${ROWS[@]}"; do
    IFS='|' read -r key label _ <<<"$row"
    read -r mn md mx p50 p99 ld < <(summarize "$WORK/rows/$key")
    MED[$key]=$md
    P99[$key]=$p99
    echo "| $label | $mn | $md | $mx | $p50 | $p99 | $ld |"
done
echo
awk -v r="${MED[remote]}" -v h="${MED[haproxy]}" -v l="${MED[local]}" -v rp="${P99[remote]}" -v hp="${P99[haproxy]}" 'BEGIN {
    printf "- remote hop vs HAProxy: %.2f× requests/s (target ≥ 1.0×), p99 %+.2f ms (target ≤ +1 ms)\n", r / h, rp - hp
    printf "- remote hop vs local replicas: %.2f× requests/s\n", r / l
}'
