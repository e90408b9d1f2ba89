#!/usr/bin/env bash
# Container services (nginx from a local registry), measured side by side in
# one run:
#   direct:  wrk -> the nginx container's own address (its IP, port 80)
#   local:   wrk -> node A's published port; A runs the replica (mesh, TCP)
#   remote:  wrk -> node B's published port; B runs none, so every
#            connection is tunnelled to A over the cluster port (mTLS HTTP/2)
#   haproxy: wrk -> HAProxy (tcp mode, 1 thread) -> the same container
# One replica, so every row ends at the same nginx (1 worker). A, B, HAProxy
# and the containers run on core 0, wrk on core 1 (as bench.sh). Rows are
# interleaved round by round; min / median / max requests/s, p50/p99 of the
# median round, the 1-minute load average per row.
# Then, on node A alone (as the Docker Swarm figures, one node): a container
# replica's start from an image already on the node (scale 0 -> 1, 5 times),
# and scale 0 -> 10 and 10 -> 50, each timed from the command until
# `service ps` shows every replica running (polled), beside Docker Swarm's
# figures: DOCKER_S0_10 / DOCKER_S10_50 from the environment (bench.sh passes
# what peers/docker-swarm.sh measured in the same run), or with DOCKER=1 this
# script runs peers/docker-swarm.sh itself (it restores the FORWARD policy);
# otherwise the figures of ../shared/PEERS.md are quoted, labelled as such.
#
# Usage: scripts/bench-containers.sh [ROUNDS]   (SWARMLET=path, DUR=10s,
#        CONNS=64, CT_A/CT_B/CT_HA = loopback addresses of node A, node B
#        and HAProxy, DOCKER=1 to run the Docker Swarm peer here)
# Needs root (containers), containerd-shim-runc-v2, runc, iproute2,
# iptables, docker-registry, skopeo, umoci, nginx, haproxy, wrk, python3.
# Prints one markdown section; fails (never a wrong table) if this swarmlet
# has no container services or a tool is missing.
set -euo pipefail
BIN=${SWARMLET:-}   # common.sh sets SWARMLET to this checkout's build
source "$(dirname "$0")/common.sh"
source "$(dirname "$0")/bench-lib.sh"
cd "$REPO"
ROUNDS=${1:-${ROUNDS:-3}}
DUR=${DUR:-10s}
CONNS=${CONNS:-64}
BIN=${BIN:-$SWARMLET}
A=${CT_A:-127.0.0.70}
B=${CT_B:-127.0.0.71}
HA=${CT_HA:-127.0.0.72}
PORT=18280
STARTS=5

broke() { echo "benchmark broke: $*" >&2; exit 1; }

[ -x "$BIN" ] || broke "build first: cargo build --release -p swarmlet ($BIN)"
[ "$(id -u)" -eq 0 ] || broke "containers need root"
# Container services: the daemon's bridge flags (container runtime) and an
# image reference accepted by service create (the API).
"$BIN" daemon --help | grep -q -- --bridge-cidr \
    || broke "this swarmlet has no container runtime (daemon --bridge-cidr is missing): container services are not supported by $BIN"
"$BIN" service create --help | grep -q -- --no-resolve-image \
    || broke "this swarmlet's service create takes no image reference (no --no-resolve-image): container services are not supported by $BIN"
if ! command -v containerd-shim-runc-v2 >/dev/null || ! command -v runc >/dev/null; then
    apt_need containerd runc
fi
command -v haproxy >/dev/null || apt_need haproxy
command -v wrk >/dev/null || apt_need wrk
for t in docker-registry skopeo umoci nginx python3 curl ip iptables; do
    command -v "$t" >/dev/null || apt_need docker-registry skopeo umoci nginx python3 curl iproute2 iptables
done

WORK=$(mktemp -d /tmp/swarmlet-containers.XXXXXX)
PIDS=()
cleanup() {
    # After a failure: stop what may still run (a bounded wait).
    if [ -S "$WORK/a/swarmlet.sock" ] && cli a service ps web >/dev/null 2>&1; then
        cli a service rm web >/dev/null 2>&1 || true
        sleep 5
    fi
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    "$REPO/scripts/images/registry.sh" stop "$WORK/registry" >/dev/null 2>&1 || true
    ip link del swbench-a 2>/dev/null || true
    ip link del swbench-b 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

start() { # NAME IP BRIDGE CIDR
    local n=$1 ip=$2
    mkdir -p "$WORK/$n"
    "${SERVER_PIN[@]}" "$BIN" daemon --data-dir "$WORK/$n" --listen-addr "$ip:2377" \
        --publish-addr "$ip" --node-name "$n" --bridge "$3" --bridge-cidr "$4" >>"$WORK/$n.log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 400); do [ -S "$WORK/$n/swarmlet.sock" ] && return 0; sleep 0.05; done
    cat "$WORK/$n.log" >&2
    broke "node $n did not start"
}
cli() { local n=$1; shift; "$BIN" -H "unix://$WORK/$n/swarmlet.sock" "$@"; }
wait_http() {
    for _ in $(seq 600); do
        [ "$(curl -s -o /dev/null -w '%{http_code}' "$1" || true)" = 200 ] && return 0
        sleep 0.05
    done
    broke "$1 never answered"
}
# tasks SERVICE -> "running endpoint..." : how many of its tasks meant to run
# are running, then their endpoints (IP:PORT).
tasks() {
    cli a service ps "$1" --format json | python3 -c '
import json, sys
ts = [v["task"] for v in json.load(sys.stdin)]
live = [t for t in ts if t["desired_state"] == "running" and t["state"] == "running"]
eps = ["%s:%s" % (t["endpoint"]["addr"], t["endpoint"]["port"]) for t in live if t.get("endpoint")]
print(len(live), *eps)'
}
# live SERVICE -> how many of its tasks have not ended (running or stopping).
live() {
    cli a service ps "$1" --format json | python3 -c '
import json, sys
ended = ("complete", "shutdown", "failed", "rejected")
print(sum(v["task"]["state"] not in ended for v in json.load(sys.stdin)))'
}
# wait_stopped SERVICE : bounded poll until none of its tasks is left running.
wait_stopped() {
    for _ in $(seq 2400); do
        [ "$(live "$1")" = 0 ] && return 0
        sleep 0.05
    done
    cli a service ps "$1" >&2 || true
    broke "the replicas of $1 never all stopped (2 minutes)"
}
# wait_running SERVICE N : bounded poll until N tasks run; prints nothing.
wait_running() {
    for _ in $(seq 2400); do
        [ "$(tasks "$1" | cut -d' ' -f1)" = "$2" ] && return 0
        sleep 0.05
    done
    cli a service ps "$1" >&2 || true
    broke "$2 replicas of $1 never all ran (2 minutes)"
}
DETACH=()
cli_help_scale=$("$BIN" service scale --help 2>&1 || true)
grep -q -- --detach <<<"$cli_help_scale" && DETACH=(-d)
# timed_scale N -> ms from the scale command until N replicas run.
timed_scale() {
    local t0; t0=$(now_ms)
    cli a service scale "${DETACH[@]}" web="$1" >/dev/null
    wait_running web "$1"
    echo $(( $(now_ms) - t0 ))
}

# --- a local registry with the nginx image ------------------------------------
RPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
REG=127.0.0.1:$RPORT
"$REPO/scripts/images/registry.sh" start "$WORK/registry" "$REG" $$ >&2
"$REPO/scripts/images/e2e-images.sh" "$WORK/images" >&2
skopeo copy -q --dest-tls-verify=false "oci:$WORK/images:nginx" "docker://$REG/swarmlet/nginx:1.27" >&2
IMAGE=$REG/swarmlet/nginx:1.27

# --- two nodes; every replica on A --------------------------------------------
start a "$A" swbench-a 10.230.1.0/24
start b "$B" swbench-b 10.230.2.0/24
cli a init >/dev/null
cli b join --token "$(cli a swarm join-token -q worker)" "$A:2377" >/dev/null
cli a node update --availability pause b >/dev/null
cli a service create --name web --replicas 1 -p "$PORT:80" "$IMAGE" >/dev/null
wait_running web 1
read -r _ DIRECT < <(tasks web)
[ -n "${DIRECT:-}" ] || broke "the running nginx task reports no endpoint (service ps --format json)"

cat >"$WORK/haproxy.cfg" <<CONF
global
    nbthread 1
defaults
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend tcp_in
    mode tcp
    bind $HA:$PORT
    default_backend web
backend web
    mode tcp
    server c1 $DIRECT
CONF
"${SERVER_PIN[@]}" haproxy -f "$WORK/haproxy.cfg" &
PIDS+=($!)
wait_http "http://$DIRECT/"
wait_http "http://$A:$PORT/"
wait_http "http://$B:$PORT/"
wait_http "http://$HA:$PORT/"

ROWS=("direct|nginx directly at its container address ($DIRECT)|http://$DIRECT/"
      "local|swarmlet mesh, node A (the replica's node)|http://$A:$PORT/"
      "remote|swarmlet mesh, node B (tunnel to node A over the cluster port, mTLS HTTP/2)|http://$B:$PORT/"
      "haproxy|HAProxy tcp mode → the same container|http://$HA:$PORT/")
mkdir -p "$WORK/rows"
for round in $(seq "$ROUNDS"); do
    for row in "${ROWS[@]}"; do
        IFS='|' read -r key label url <<<"$row"
        load=$(cut -d' ' -f1 /proc/loadavg)
        echo "$(wrk_once "$url") $load" >>"$WORK/rows/$key"
        echo "containers round $round: $label" >&2
    done
done

# --- replica start and convergence on node A ----------------------------------
START_MS=()
for _ in $(seq "$STARTS"); do
    cli a service scale "${DETACH[@]}" web=0 >/dev/null
    wait_stopped web
    START_MS+=("$(timed_scale 1)")
done
read -r START_MIN START_MED START_MAX < <(printf '%s\n' "${START_MS[@]}" | sort -n | awk '
    { v[NR] = $1 } END { printf "%d %d %d\n", v[1], v[int((NR + 1) / 2)], v[NR] }')
cli a service scale "${DETACH[@]}" web=0 >/dev/null
wait_stopped web
S0_10=$(timed_scale 10)
S10_50=$(timed_scale 50)
A_PID=${PIDS[0]}
RSS50=$(rss_mb "$A_PID")
# Stopped here, not at exit, so no container outlives the benchmark.
cli a service scale "${DETACH[@]}" web=0 >/dev/null
wait_stopped web
cli a service rm web >/dev/null

# --- Docker Swarm's figures -----------------------------------------------------
if [ -z "${DOCKER_S0_10:-}" ] && [ "${DOCKER:-0}" = 1 ]; then
    if PEER=$(DUR=$DUR ROUNDS=1 CONNS=$CONNS "$REPO/scripts/peers/docker-swarm.sh" "$WORK/docker"); then
        eval "$PEER"
    else
        echo "note: the Docker Swarm peer failed; quoting PEERS.md instead" >&2
    fi
    iptables -P FORWARD ACCEPT 2>/dev/null || true
fi
if [ -n "${DOCKER_S0_10:-}" ]; then
    SWARM_SRC="measured in this run (peers/docker-swarm.sh, \`--restart-delay 0s\`, one node)"
    SWARM_0_10=$DOCKER_S0_10
    SWARM_10_50=${DOCKER_S10_50:-?}
else
    SWARM_SRC="not run here: the figures quoted from ../shared/PEERS.md (median of 3 on a machine of this kind; 10 → 50 was measured there as 10 → 20 and 20 → 50)"
    SWARM_0_10="1600–1800 (quoted)"
    SWARM_10_50="9200–9400 (quoted: 1500–1700 + 7700)"
fi

declare -A MED P99
echo "## Container services: nginx (1 replica, 1 worker) through the mesh ($CONNS connections, $DUR, $ROUNDS round(s), interleaved; $PINNING)"
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
awk -v l="${MED[local]}" -v r="${MED[remote]}" -v h="${MED[haproxy]}" -v d="${MED[direct]}" \
    -v lp="${P99[local]}" -v rp="${P99[remote]}" -v hp="${P99[haproxy]}" 'BEGIN {
    printf "- mesh on the replica'"'"'s node vs HAProxy tcp: %.2f× requests/s (target ≥ 1.0×), p99 %+.2f ms (target ≤ +1 ms)\n", l / h, lp - hp
    printf "- mesh via another node vs HAProxy tcp: %.2f× requests/s, p99 %+.2f ms\n", r / h, rp - hp
    printf "- mesh on the replica'"'"'s node vs nginx directly: %.2f× requests/s\n", l / d
}'
echo
echo "## Container replicas: start and convergence (node A alone, image already on the node; polled \`service ps\` until all run)"
echo
echo "| what | swarmlet ms | Docker Swarm ms |"
echo "| --- | ---: | ---: |"
echo "| one replica, scale 0 → 1 (min / median / max of $STARTS; target < 300 ms) | $START_MIN / $START_MED / $START_MAX | |"
echo "| scale 0 → 10 | $S0_10 | $SWARM_0_10 |"
echo "| scale 10 → 50 | $S10_50 | $SWARM_10_50 |"
echo
echo "Docker Swarm: $SWARM_SRC. Node A's RSS with 50 replicas: $RSS50 MB (the shims are separate processes)."
