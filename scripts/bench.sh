#!/usr/bin/env bash
# swarmlet's benchmark: starts what it needs, measures side by side in one
# run, prints a markdown table and (full mode) writes bench/results/latest.md.
#
#   scripts/bench.sh          full run: 3 rounds of 10 s, plus `wasmtime serve`
#                             (default and best flags of shared/GUESTS.md) when
#                             wasmtime-cli 48.0.8 is installed or installable
#   scripts/bench.sh --quick  swarmlet's own figures, a few seconds each (CI)
#
# It never fails on a number, only when something it measures breaks.
set -euo pipefail
source "$(dirname "$0")/common.sh"
source "$(dirname "$0")/bench-lib.sh"
cd "$REPO"

QUICK=0
[ "${1:-}" = "--quick" ] && QUICK=1
if [ $QUICK = 1 ]; then DUR=3s; ROUNDS=1; else DUR=10s; ROUNDS=3; fi
CONNS=64
IP=127.0.0.50
PORT=18080
[ -x "$SWARMLET" ] && [ -f guests/out/hello.wasm ] || "$REPO/scripts/setup.sh"
command -v wrk >/dev/null || apt_need wrk

WORK=$(mktemp -d /tmp/swarmlet-bench.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

wait_http() { # wait_http URL : bounded wait until it answers 200
    for _ in $(seq 600); do
        [ "$(curl -s -o /dev/null -w '%{http_code}' "$1" || true)" = 200 ] && return 0
        sleep 0.05
    done
    echo "benchmark broke: $1 never answered" >&2; exit 1
}

# --- swarmlet node ---------------------------------------------------------
"$SWARMLET" daemon --data-dir "$WORK/node" --listen-addr $IP:2377 --publish-addr $IP --node-name bench \
    >"$WORK/daemon.log" 2>&1 &
DAEMON=$!; PIDS+=($DAEMON)
S() { "$SWARMLET" -H "unix://$WORK/node/swarmlet.sock" "$@"; }
for _ in $(seq 200); do [ -S "$WORK/node/swarmlet.sock" ] && break; sleep 0.05; done
S init >/dev/null
sleep 0.5
IDLE_RSS=$(rss_mb $DAEMON)

t0=$(now_ms); S service create --name hello --replicas 1 -p $PORT:80 guests/out/hello.wasm >/dev/null; t1=$(now_ms)
FIRST_START=$((t1 - t0))   # includes upload, compile (cached after), raft, start
S service scale hello=0 >/dev/null
t0=$(now_ms); S service scale hello=1 >/dev/null; t1=$(now_ms)
ONE_START=$((t1 - t0))
S service scale hello=4 >/dev/null
wait_http "http://$IP:$PORT/"
read -r SW_RPS SW_P50 SW_P99 < <(wrk_median "http://$IP:$PORT/")
LOADED_RSS=$(rss_mb $DAEMON)

t0=$(now_ms); S service scale hello=100 >/dev/null; t1=$(now_ms); CONV100=$((t1 - t0))
t0=$(now_ms); S service scale hello=0 >/dev/null; S service scale hello=10 >/dev/null; t1=$(now_ms); S0_10=$((t1 - t0))
t0=$(now_ms); S service scale hello=50 >/dev/null; t1=$(now_ms); S10_50=$((t1 - t0))
t0=$(now_ms); S service scale hello=10 >/dev/null; t1=$(now_ms); S50_10=$((t1 - t0))

RSS_100=$(S service scale hello=100 >/dev/null && rss_mb $DAEMON)
RSS_1=$(S service scale hello=1 >/dev/null && sleep 0.2 && rss_mb $DAEMON)

# A node killed with -9 and started again on its data dir: until it serves.
kill -9 $DAEMON; wait $DAEMON 2>/dev/null || true
t0=$(now_ms)
"$SWARMLET" daemon --data-dir "$WORK/node" --listen-addr $IP:2377 --publish-addr $IP --node-name bench \
    >>"$WORK/daemon.log" 2>&1 &
DAEMON=$!; PIDS+=($DAEMON)
wait_http "http://$IP:$PORT/"
RECOVER=$(( $(now_ms) - t0 ))

BIN_MB=$(awk -v b="$(stat -c %s "$SWARMLET")" 'BEGIN {printf "%.1f", b/1048576}')
strip -o "$WORK/swarmlet.stripped" "$SWARMLET"
STRIPPED_MB=$(awk -v b="$(stat -c %s "$WORK/swarmlet.stripped")" 'BEGIN {printf "%.1f", b/1048576}')
DIST_MB=""
if [ $QUICK = 0 ]; then
    # The shipping profile (thin LTO, one codegen unit, stripped); a second
    # wasmtime build, so only in the full run.
    cargo build -q --profile dist -p swarmlet
    DIST_MB=$(awk -v b="$(stat -c %s "$CARGO_TARGET_DIR/dist/swarmlet")" 'BEGIN {printf "%.1f", b/1048576}')
fi

# --- wasmtime serve, same component (full run) ------------------------------
WT_ROWS=""
WASMTIME=$(command -v wasmtime || true)
[ -z "$WASMTIME" ] && [ -x "$HOME/.cargo/bin/wasmtime" ] && WASMTIME=$HOME/.cargo/bin/wasmtime
if [ $QUICK = 0 ] && [ -z "$WASMTIME" ]; then
    echo "installing wasmtime-cli 48.0.8 (about 14 minutes on 2 cores, once)" >&2
    cargo install --locked wasmtime-cli --version 48.0.8 >&2
    WASMTIME=$HOME/.cargo/bin/wasmtime
fi
if [ $QUICK = 0 ]; then
    BEST="pooling-allocator=y,pooling-pagemap-scan=y,pooling-memory-keep-resident=4194304,pooling-table-keep-resident=1048576,pooling-async-stack-keep-resident=1048576"
    for variant in default best; do
        opts=(-Scli)
        [ $variant = best ] && opts+=(-O "$BEST")
        "$WASMTIME" serve "${opts[@]}" --addr $IP:18090 guests/out/hello.wasm >"$WORK/wt-$variant.log" 2>&1 &
        WT=$!; PIDS+=($WT)
        wait_http "http://$IP:18090/"
        read -r rps p50 p99 < <(wrk_median "http://$IP:18090/")
        kill $WT; wait $WT 2>/dev/null || true
        eval "WT_${variant}_RPS=$rps"
        WT_ROWS+="| \`wasmtime serve -Scli\` ($variant flags), same component | $rps | $p50 | $p99 |"$'\n'
    done
fi

# --- control plane, in process ---------------------------------------------
CP=$(cargo run --release -q -p swarmlet --example control_plane -- $([ $QUICK = 1 ] && echo --quick))

# --- reference proxies and the Docker Swarm peer (full run) -----------------
REF_ROWS=""
PEER=""
if [ $QUICK = 0 ]; then
    apt_need nginx haproxy docker.io
    cat >"$WORK/nginx.conf" <<CONF
worker_processes 1;
error_log $WORK/nginx.err;
pid $WORK/nginx.pid;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    server { listen $IP:18082; location / { return 200 "hello from nginx\n"; } }
}
CONF
    nginx -c "$WORK/nginx.conf" -g 'daemon off;' &
    PIDS+=($!)
    cat >"$WORK/haproxy.cfg" <<CONF
global
    nbthread 2
defaults
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend http_in
    mode http
    bind $IP:18083
    default_backend nginx_http
backend nginx_http
    mode http
    http-reuse always
    server n1 $IP:18082
frontend tcp_in
    mode tcp
    bind $IP:18084
    default_backend nginx_tcp
backend nginx_tcp
    mode tcp
    server n1 $IP:18082
CONF
    haproxy -f "$WORK/haproxy.cfg" &
    PIDS+=($!)
    wait_http "http://$IP:18082/"; wait_http "http://$IP:18083/"; wait_http "http://$IP:18084/"
    read -r rps p50 p99 < <(wrk_median "http://$IP:18082/")
    REF_ROWS+="| nginx directly (1 worker, \`return 200\`): the limit | $rps | $p50 | $p99 |"$'\n'
    read -r rps p50 p99 < <(wrk_median "http://$IP:18083/")
    REF_ROWS+="| HAProxy 2 threads, http mode, in front of that nginx | $rps | $p50 | $p99 |"$'\n'
    read -r rps p50 p99 < <(wrk_median "http://$IP:18084/")
    REF_ROWS+="| HAProxy 2 threads, tcp mode, in front of that nginx | $rps | $p50 | $p99 |"$'\n'
    PEER=$(DUR=$DUR ROUNDS=$ROUNDS CONNS=$CONNS "$REPO/scripts/peers/docker-swarm.sh" "$WORK/docker")
    eval "$PEER"
    REF_ROWS+="| Docker Swarm nginx, host-mode publish through docker-proxy | $DOCKER_RPS | $DOCKER_P50 | $DOCKER_P99 |"$'\n'
fi

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f×", a/b; else print "n/a" }'; }
LOAD=$(cut -d' ' -f1-3 /proc/loadavg)
{
    echo "# swarmlet benchmark"
    echo
    echo "![requests/s per setup](latest.svg)"
    echo
    echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, load average (1/5/15 min) at the end: $LOAD, mode: $([ $QUICK = 1 ] && echo quick || echo full), wrk -t2 -c$CONNS -d$DUR, median of $ROUNDS."
    echo
    echo "## HTTP: \`hello.wasm\`, a fresh instance per request"
    echo
    echo "| setup | req/s | p50 ms | p99 ms |"
    echo "| --- | ---: | ---: | ---: |"
    echo "| swarmlet mesh, 4 local replicas, port $PORT | $SW_RPS | $SW_P50 | $SW_P99 |"
    printf '%s' "$WT_ROWS"
    printf '%s' "$REF_ROWS"
    if [ $QUICK = 0 ]; then
        echo
        echo "swarmlet vs \`wasmtime serve\` best flags: $(ratio "$SW_RPS" "$WT_best_RPS") (target ≥ 1.2×); vs its defaults: $(ratio "$SW_RPS" "$WT_default_RPS")."
    fi
    echo
    echo "## Start and convergence (CLI command until \`verify: Service converged\`)"
    echo
    echo "| what | ms |"
    echo "| --- | ---: |"
    echo "| first create, 1 replica (upload + compile + raft + start) | $FIRST_START |"
    echo "| one wasm replica, scale 0 → 1 (target < 10 ms for the replica itself) | $ONE_START |"
    echo "| scale 4 → 100 (target < 1000) | $CONV100 |"
    echo "| scale 100 → 0 → 10 | $S0_10 |"
    echo "| scale 10 → 50 | $S10_50 |"
    echo "| scale 50 → 10 | $S50_10 |"
    echo "| node kill -9, restarted on its data dir → serving again | $RECOVER |"
    if [ -n "$PEER" ]; then
        echo
        echo "Docker Swarm on the same machine, nginx containers from a local image (\`--restart-delay 0s\`):"
        echo
        echo "| what | ms |"
        echo "| --- | ---: |"
        echo "| blocking \`service create --replicas 10\` | $DOCKER_CREATE10 |"
        echo "| scale 10 → 0 | $DOCKER_S10_0 |"
        echo "| scale 0 → 10 | $DOCKER_S0_10 |"
        echo "| scale 10 → 50 | $DOCKER_S10_50 |"
        echo "| scale 50 → 10 | $DOCKER_S50_10 |"
        echo "| a killed replica replaced | $DOCKER_REPLACE |"
    fi
    echo
    echo "## Control plane (in process: real raft log on disk, simulated nodes)"
    echo
    echo "$CP"
    echo
    echo "## Footprint"
    echo
    echo "| what | figure |"
    echo "| --- | ---: |"
    echo "| idle daemon RSS after init (target < 30 MB) | $IDLE_RSS MB |"
    echo "| daemon RSS after the HTTP load | $LOADED_RSS MB |"
    echo "| daemon RSS with 100 / 1 wasm replicas (replicas share one compiled component) | $RSS_100 MB / $RSS_1 MB |"
    if [ -n "$PEER" ]; then
        echo "| Docker: dockerd / containerd RSS after the runs | $DOCKER_DOCKERD_MB MB / $DOCKER_CONTAINERD_MB MB |"
        echo "| Docker: one container's shim RSS | $DOCKER_SHIM_MB MB |"
    fi
    echo "| release binary | $BIN_MB MB |"
    echo "| release binary, stripped | $STRIPPED_MB MB |"
    if [ -n "$DIST_MB" ]; then
        echo "| \`dist\` profile binary: thin LTO, 1 codegen unit, stripped (target ≤ 20 MB) | $DIST_MB MB |"
    fi
} > "$WORK/result.md"
cat "$WORK/result.md"
python3 "$REPO/scripts/chart.py" "$WORK/result.md" "$WORK/result.svg"
if [ $QUICK = 0 ]; then
    cp "$WORK/result.md" "$REPO/bench/results/latest.md"
    cp "$WORK/result.svg" "$REPO/bench/results/latest.svg"
    echo "written to bench/results/latest.md and latest.svg" >&2
fi
