#!/usr/bin/env bash
# swarmlet's benchmark: starts what it needs, measures side by side in one
# run, prints a markdown table and (full mode) writes bench/results/latest.md.
#
#   scripts/bench.sh          full run: every HTTP row 3 times, systems
#                             interleaved (A B C A B C ...), min/median/max;
#                             fixed-rate latency; control plane; Docker Swarm
#                             (NO_DOCKER=1 skips it); container services
#                             (scripts/bench-containers.sh; NO_CONTAINERS=1
#                             skips it); the shipped (`dist`) binary's own
#                             rows and footprint (NO_DIST=1 skips them) and
#                             `wasmtime serve` built with wasmtime's own LTO
#                             profile (NO_WT_LTO=1 skips it)
#   scripts/bench.sh --quick  swarmlet's own figures, a few seconds each (CI)
#
# Servers run on core 0 and the load generator on core 1 (taskset). It never
# fails on a number, only when something it measures breaks.
set -euo pipefail
source "$(dirname "$0")/common.sh"
source "$(dirname "$0")/bench-lib.sh"
cd "$REPO"

QUICK=0
[ "${1:-}" = "--quick" ] && QUICK=1
if [ $QUICK = 1 ]; then DUR=3s; ROUNDS=1; else DUR=10s; ROUNDS=${ROUNDS:-3}; fi
CONNS=64
IP=127.0.0.50     # swarmlet, wasmtime's default isolation (the default)
IP_FAST=127.0.0.51 # swarmlet with the opt-in fast mode (no guard pages)
PORT=18080
# The opt-in, less isolated engine mode (see README: what it gives up).
FAST_OPTS=(--wasm-isolation no-guard-pages)
[ -x "$SWARMLET" ] && [ -f guests/out/hello.wasm ] && [ -f guests/out/compute.wasm ] || "$REPO/scripts/setup.sh"
apt_need wrk curl
[ $QUICK = 0 ] && apt_need nginx haproxy nghttp2-client

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

# start_node NAME IP [DAEMON FLAGS...] : a swarmlet node on core 0; sets NODE_PID
start_node() {
    local name=$1 ip=$2; shift 2
    "${SERVER_PIN[@]}" "$SWARMLET" daemon --data-dir "$WORK/$name" --listen-addr "$ip:2377" \
        --publish-addr "$ip" --node-name "$name" "$@" >>"$WORK/$name.log" 2>&1 &
    NODE_PID=$!; PIDS+=("$NODE_PID")
    for _ in $(seq 400); do [ -S "$WORK/$name/swarmlet.sock" ] && break; sleep 0.05; done
    [ -S "$WORK/$name/swarmlet.sock" ] || { cat "$WORK/$name.log" >&2; echo "benchmark broke: node $name did not start" >&2; exit 1; }
}
S() { "$SWARMLET" -H "unix://$WORK/node/swarmlet.sock" "$@"; }
SF() { "$SWARMLET" -H "unix://$WORK/fast/swarmlet.sock" "$@"; }

settle() { # waits (at most 3 min) for the 1-minute load average to fall below 1
    for _ in $(seq 180); do
        awk '{ exit !($1 < 1.0) }' /proc/loadavg && return 0
        sleep 1
    done
    echo "note: the load average stayed at $(cut -d' ' -f1 /proc/loadavg) after 3 min" >&2
}

# --- builds first (full run), then the machine settles -----------------------
# The binary a user ships is the `dist` profile (thin LTO, 1 codegen unit),
# not the `release` one the tests use. A build this late would load the
# machine between measured rows, so both builds happen before any server.
DIST=""
WT_VERSION=48.0.8
WASMTIME_LTO=""
if [ $QUICK = 0 ]; then
    if [ "${NO_DIST:-0}" != 1 ]; then
        echo "building the dist profile (thin LTO, 1 codegen unit; minutes when stale)" >&2
        cargo build -q --profile dist -p swarmlet
        DIST=$CARGO_TARGET_DIR/dist/swarmlet
    fi
    # Like with like for the LTO'd binary: wasmtime's own LTO profile
    # (`fastest-runtime`: fat LTO, 1 codegen unit), beside the plain
    # `--release` build wasmtime's release artifacts are made with.
    if [ "${NO_WT_LTO:-0}" != 1 ]; then
        WT_LTO_ROOT=${WT_LTO_ROOT:-/var/tmp/wasmtime-fastest-runtime}
        if [ ! -x "$WT_LTO_ROOT/bin/wasmtime" ]; then
            echo "installing wasmtime-cli $WT_VERSION --profile fastest-runtime (about 30 minutes on 2 cores, once)" >&2
            cargo install -q --locked wasmtime-cli --version $WT_VERSION --profile fastest-runtime --root "$WT_LTO_ROOT" >&2
        fi
        WASMTIME_LTO=$WT_LTO_ROOT/bin/wasmtime
    fi
    settle
fi

# --- swarmlet node: start, create, footprint --------------------------------
start_node node $IP
DAEMON=$NODE_PID
S init >/dev/null
sleep 0.5
IDLE_RSS=$(rss_mb $DAEMON); IDLE_PARTS=$(rss_parts $DAEMON)
t0=$(now_ms); S service create --name hello --replicas 1 -p $PORT:80 guests/out/hello.wasm >/dev/null; t1=$(now_ms)
FIRST_START=$((t1 - t0))   # includes upload, compile (cached after), raft, start
S service create --name compute --replicas 1 -p 18085:80 guests/out/compute.wasm >/dev/null
sleep 0.5
CREATED_RSS=$(rss_mb $DAEMON); CREATED_PARTS=$(rss_parts $DAEMON)
S service scale hello=4 >/dev/null
wait_http "http://$IP:$PORT/"
wait_http "http://$IP:18085/"
REUSE_ROW=0
if S service create --name reuse --instance-reuse 128 -p 18086:80 guests/out/hello.wasm >/dev/null 2>"$WORK/reuse.err"; then
    REUSE_ROW=1
    wait_http "http://$IP:18086/"
else
    echo "note: no --instance-reuse row: $(cat "$WORK/reuse.err")" >&2
fi
# WASIp3 concurrent reuse: one instance serves up to 16 requests at once
# (wasmtime serve's default for WASIp3), 128 in all.
CONC_ROW=0
if [ -f guests/out/hello-p3.wasm ] && S service create --name conc --instance-concurrency 16 --instance-reuse 128 -p 18087:80 guests/out/hello-p3.wasm >/dev/null 2>"$WORK/conc.err"; then
    CONC_ROW=1
    wait_http "http://$IP:18087/"
else
    echo "note: no --instance-concurrency row: $(cat "$WORK/conc.err" 2>/dev/null || echo 'no guests/out/hello-p3.wasm')" >&2
fi

# --- every HTTP server, all started before any measurement ------------------
ROWS=()   # "key|label|url"
ROWS+=("sw|swarmlet mesh, default isolation (guard pages, Spectre mitigations), 4 replicas|http://$IP:$PORT/")
# The shipped binary's node: the same services as the release node's rows.
IP_DIST=127.0.0.53
if [ -n "$DIST" ]; then
    SWARMLET=$DIST start_node distrows $IP_DIST
    DR() { "$DIST" -H "unix://$WORK/distrows/swarmlet.sock" "$@"; }
    DR init >/dev/null
    DR service create --name hello --replicas 4 -p $PORT:80 guests/out/hello.wasm >/dev/null
    DR service create --name reuse --instance-reuse 128 -p 18086:80 guests/out/hello.wasm >/dev/null
    wait_http "http://$IP_DIST:$PORT/"; wait_http "http://$IP_DIST:18086/"
    ROWS+=("swdist|swarmlet \`dist\` binary (what ships: thin LTO, 1 codegen unit), mesh, default isolation, 4 replicas|http://$IP_DIST:$PORT/")
    ROWS+=("swdistreuse|swarmlet \`dist\` binary, default isolation, \`--instance-reuse 128\` (not a fresh instance per request)|http://$IP_DIST:18086/")
fi
FAST_ROW=0
if [ $QUICK = 0 ]; then
    if "$SWARMLET" daemon --help | grep -q -- "${FAST_OPTS[0]}"; then
        start_node fast $IP_FAST "${FAST_OPTS[@]}"
        SF init >/dev/null
        FAST_ROW=1
        SF service create --name hello --replicas 4 -p $PORT:80 guests/out/hello.wasm >/dev/null
        SF service create --name compute -p 18085:80 guests/out/compute.wasm >/dev/null
        wait_http "http://$IP_FAST:$PORT/"; wait_http "http://$IP_FAST:18085/"
        ROWS+=("swfast|swarmlet mesh, opt-in ${FAST_OPTS[*]} (explicit bounds checks), 4 replicas|http://$IP_FAST:$PORT/")
    else
        echo "note: no fast-mode row (${FAST_OPTS[*]} not accepted)" >&2
    fi
fi
[ $CONC_ROW = 1 ] && ROWS+=("swconc|swarmlet mesh, default isolation, WASIp3 hello-p3 \`--instance-concurrency 16 --instance-reuse 128\` (not a fresh instance per request)|http://$IP:18087/")
[ $REUSE_ROW = 1 ] && ROWS+=("swreuse|swarmlet mesh, default isolation, \`--instance-reuse 128\` (not a fresh instance per request)|http://$IP:18086/")

WASMTIME=""
if [ $QUICK = 0 ]; then
    WASMTIME=$(command -v wasmtime || true)
    [ -z "$WASMTIME" ] && [ -x "$HOME/.cargo/bin/wasmtime" ] && WASMTIME=$HOME/.cargo/bin/wasmtime
    if [ -z "$WASMTIME" ]; then
        echo "installing wasmtime-cli $WT_VERSION (about 14 minutes on 2 cores, once)" >&2
        cargo install --locked wasmtime-cli --version $WT_VERSION >&2
        WASMTIME=$HOME/.cargo/bin/wasmtime
    fi
    POOL="pooling-allocator=y,pooling-pagemap-scan=y,pooling-memory-keep-resident=4194304,pooling-table-keep-resident=1048576,pooling-async-stack-keep-resident=1048576"
    NOGUARD="signals-based-traps=n,memory-guard-size=0"
    wt() { # wt KEY PORT LABEL WASM OPTS...
        local key=$1 port=$2 label=$3 wasm=$4; shift 4
        "${SERVER_PIN[@]}" "${WT_BIN:-$WASMTIME}" serve -Scli "$@" --addr "$IP:$port" "$wasm" >"$WORK/wt-$key.log" 2>&1 &
        PIDS+=($!)
        wait_http "http://$IP:$port/"
        ROWS+=("$key|$label|http://$IP:$port/")
    }
    wt wtdef 18090 "\`wasmtime serve -Scli\`, default flags (default isolation)" guests/out/hello.wasm
    wt wtbest 18091 "\`wasmtime serve -Scli\`, best flags (pooling, PAGEMAP_SCAN, keep-resident; default isolation)" guests/out/hello.wasm -O "$POOL"
    wt wtfast 18092 "\`wasmtime serve -Scli\`, best flags + \`$NOGUARD\` (as swarmlet's fast mode)" guests/out/hello.wasm -O "$POOL,$NOGUARD"
    wt wtreuse 18093 "\`wasmtime serve -Scli\`, best flags + \`--max-instance-reuse-count 128\`" guests/out/hello.wasm -O "$POOL" --max-instance-reuse-count 128
    if [ -n "$WASMTIME_LTO" ]; then
        WT_BIN=$WASMTIME_LTO wt wtlto 18097 "\`wasmtime serve -Scli\` built with \`--profile fastest-runtime\` (fat LTO, 1 codegen unit), best flags (default isolation)" guests/out/hello.wasm -O "$POOL"
        WT_BIN=$WASMTIME_LTO wt wtltoreuse 18098 "\`wasmtime serve -Scli\` \`fastest-runtime\` build, best flags + \`--max-instance-reuse-count 128\`" guests/out/hello.wasm -O "$POOL" --max-instance-reuse-count 128
    fi
    [ $CONC_ROW = 1 ] && wt wtconc 18096 "\`wasmtime serve -Scli -Sp3\`, best flags + \`--max-instance-concurrent-reuse-count 16 --max-instance-reuse-count 128\` (WASIp3 hello-p3)" guests/out/hello-p3.wasm -O "$POOL" -Sp3 --max-instance-concurrent-reuse-count 16 --max-instance-reuse-count 128

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
    "${SERVER_PIN[@]}" nginx -c "$WORK/nginx.conf" -g 'daemon off;' &
    PIDS+=($!)
    # One thread, as the one core every server here gets.
    cat >"$WORK/haproxy.cfg" <<CONF
global
    nbthread 1
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
    "${SERVER_PIN[@]}" haproxy -f "$WORK/haproxy.cfg" &
    PIDS+=($!)
    wait_http "http://$IP:18082/"; wait_http "http://$IP:18083/"; wait_http "http://$IP:18084/"
    ROWS+=("nginx|reference: nginx directly (1 worker, \`return 200\`), no wasm|http://$IP:18082/")
    ROWS+=("hahttp|reference: HAProxy http mode in front of that nginx|http://$IP:18083/")
    ROWS+=("hatcp|reference: HAProxy tcp mode in front of that nginx|http://$IP:18084/")

    # The compute-heavy guest in both isolation modes, on both hosts.
    ROWS+=("cmp|compute guest: swarmlet, default isolation|http://$IP:18085/")
    [ $FAST_ROW = 1 ] && ROWS+=("cmpfast|compute guest: swarmlet, ${FAST_OPTS[*]}|http://$IP_FAST:18085/")
    wt wtcmp 18094 "compute guest: \`wasmtime serve\` best flags (default isolation)" guests/out/compute.wasm -O "$POOL"
    wt wtcmpfast 18095 "compute guest: \`wasmtime serve\` best flags + \`$NOGUARD\`" guests/out/compute.wasm -O "$POOL,$NOGUARD"
fi

# --- saturation: ROUNDS rounds, the systems interleaved ----------------------
mkdir -p "$WORK/rows"
for round in $(seq "$ROUNDS"); do
    for row in "${ROWS[@]}"; do
        IFS='|' read -r key label url <<<"$row"
        load=$(cut -d' ' -f1 /proc/loadavg)
        echo "$(wrk_once "$url") $load" >>"$WORK/rows/$key"
        echo "round $round: $label" >&2
    done
done
LOADED_RSS=$(rss_mb $DAEMON); LOADED_PARTS=$(rss_parts $DAEMON)
LOADED_HWM=$(hwm_mb $DAEMON)
declare -A MED
for row in "${ROWS[@]}"; do
    IFS='|' read -r key _ _ <<<"$row"
    read -r mn md mx p50 p99 ld < <(summarize "$WORK/rows/$key")
    MED[$key]=$md
done

# --- latency at fixed rates below saturation (full run) ---------------------
RATE_ROWS=""
if [ $QUICK = 0 ]; then
    for rate in 5000 10000 20000; do
        for row in "sw|swarmlet mesh, default isolation|http://$IP:$PORT/" \
                   "wtbest|\`wasmtime serve\` best flags|http://$IP:18091/" \
                   "hahttp|HAProxy http → nginx|http://$IP:18083/" \
                   "nginx|nginx directly|http://$IP:18082/"; do
            IFS='|' read -r key label url <<<"$row"
            read -r got p50 p99 < <(h2load_rate "$url" $rate)
            RATE_ROWS+="| $label | $rate | $got | $p50 | $p99 |"$'\n'
        done
    done
fi

# --- start, convergence, recovery -------------------------------------------
S service scale hello=0 >/dev/null
t0=$(now_ms); S service scale hello=1 >/dev/null; t1=$(now_ms)
ONE_START=$((t1 - t0))
t0=$(now_ms); S service scale hello=100 >/dev/null; t1=$(now_ms); CONV100=$((t1 - t0))
t0=$(now_ms); S service scale hello=0 >/dev/null; S service scale hello=10 >/dev/null; t1=$(now_ms); S0_10=$((t1 - t0))
t0=$(now_ms); S service scale hello=50 >/dev/null; t1=$(now_ms); S10_50=$((t1 - t0))
t0=$(now_ms); S service scale hello=10 >/dev/null; t1=$(now_ms); S50_10=$((t1 - t0))
RSS_100=$(S service scale hello=100 >/dev/null && rss_mb $DAEMON)
RSS_1=$(S service scale hello=1 >/dev/null && sleep 0.2 && rss_mb $DAEMON)

# A node killed with -9 and started again on its data dir: until it serves.
kill -9 $DAEMON; wait $DAEMON 2>/dev/null || true
t0=$(now_ms)
start_node node $IP
DAEMON=$NODE_PID
wait_http "http://$IP:$PORT/"
RECOVER=$(( $(now_ms) - t0 ))

# --- control plane, in process ----------------------------------------------
CP=$(cargo run --release -q -p swarmlet --example control_plane -- $([ $QUICK = 1 ] && echo --quick))

# --- failover of a real 5-node swarm (3 managers, 2 workers) -----------------
FAILOVER=$(SWARMLET="$SWARMLET" "$REPO/scripts/bench-failover.sh" $([ $QUICK = 1 ] && echo 1 || echo 5))

# --- the mesh's node-to-node hop vs HAProxy doing the same hop ---------------
MESH=$(SWARMLET="$SWARMLET" DUR=$DUR CONNS=$CONNS "$REPO/scripts/bench-mesh.sh" "$ROUNDS")

# --- the Docker Swarm peer (full run) ---------------------------------------
PEER=""
if [ $QUICK = 0 ] && [ "${NO_DOCKER:-0}" != 1 ]; then
    # The peer is measured after swarmlet's rows; if it breaks, say so and
    # keep what was measured.
    if PEER=$(DUR=$DUR ROUNDS=$ROUNDS CONNS=$CONNS "$REPO/scripts/peers/docker-swarm.sh" "$WORK/docker"); then
        eval "$PEER"
    else
        echo "note: the Docker Swarm peer failed; its rows are left out (see above)" >&2
        PEER=""
    fi
fi

# --- container services (full run): nginx through the mesh vs HAProxy tcp, ----
# replica start and scale beside Docker Swarm's figures measured above.
CONTAINERS=""
if [ $QUICK = 0 ] && [ "${NO_CONTAINERS:-0}" != 1 ]; then
    CONTAINERS=$(SWARMLET="$SWARMLET" DUR=$DUR CONNS=$CONNS \
        DOCKER_S0_10=${DOCKER_S0_10:-} DOCKER_S10_50=${DOCKER_S10_50:-} \
        "$REPO/scripts/bench-containers.sh" "$ROUNDS")
fi

# --- binary size: the dist build last, after every measurement --------------
BIN_MB=$(awk -v b="$(stat -c %s "$SWARMLET")" 'BEGIN {printf "%.1f", b/1048576}')
strip -o "$WORK/swarmlet.stripped" "$SWARMLET"
STRIPPED_MB=$(awk -v b="$(stat -c %s "$WORK/swarmlet.stripped")" 'BEGIN {printf "%.1f", b/1048576}')
DIST_MB=""
if [ -n "$DIST" ]; then
    DIST_MB=$(awk -v b="$(stat -c %s "$DIST")" 'BEGIN {printf "%.1f", b/1048576}')
    # The shipped binary's footprint: the same steps as above, on its own
    # node (a short load instead of the rounds).
    SWARMLET=$DIST start_node dist 127.0.0.52
    D() { "$DIST" -H "unix://$WORK/dist/swarmlet.sock" "$@"; }
    D init >/dev/null; sleep 0.5
    DIST_IDLE="$(rss_mb $NODE_PID) MB ($(rss_parts $NODE_PID))"
    D service create --name hello --replicas 4 -p $PORT:80 guests/out/hello.wasm >/dev/null
    D service create --name compute -p 18085:80 guests/out/compute.wasm >/dev/null
    sleep 0.5
    DIST_CREATED="$(rss_mb $NODE_PID) MB ($(rss_parts $NODE_PID))"
    wait_http "http://127.0.0.52:$PORT/"; wait_http "http://127.0.0.52:18085/"
    wrk_once "http://127.0.0.52:$PORT/" >/dev/null; wrk_once "http://127.0.0.52:18085/" >/dev/null
    DIST_LOADED="$(rss_mb $NODE_PID) MB ($(rss_parts $NODE_PID))"
    # The node gives freed heap back once quiet (node/src/heap.rs, 2 s ticks).
    sleep 5
    DIST_QUIET="$(rss_mb $NODE_PID) MB ($(rss_parts $NODE_PID))"
    kill $NODE_PID
fi

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a > 0 && b > 0) printf "%.2f×", a/b; else print "n/a" }'; }
{
    echo "# swarmlet benchmark"
    echo
    echo "![requests/s per setup](latest.svg)"
    echo
    echo "$(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'), $(nproc) cores, mode: $([ $QUICK = 1 ] && echo quick || echo full); $PINNING; wrk -t1 -c$CONNS -d$DUR, $ROUNDS round(s) per row, rows interleaved round by round."
    echo
    echo "## HTTP: \`hello.wasm\` unless the row says otherwise, a fresh instance per request unless it says reuse"
    echo
    echo "| setup | req/s min | req/s median | req/s max | p50 ms | p99 ms | load (1 min) |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    for row in "${ROWS[@]}"; do
        IFS='|' read -r key label _ <<<"$row"
        read -r mn md mx p50 p99 ld < <(summarize "$WORK/rows/$key")
        echo "| $label | $mn | $md | $mx | $p50 | $p99 | $ld |"
    done
    if [ $QUICK = 0 ]; then
        echo
        echo "Ratios of medians, same isolation on both sides; both \`release\` builds (no LTO):"
        echo
        echo "- swarmlet (default isolation) vs \`wasmtime serve\` best flags: $(ratio "${MED[sw]}" "${MED[wtbest]}") (target ≥ 2×); vs its default flags: $(ratio "${MED[sw]}" "${MED[wtdef]}")"
        echo "- swarmlet (default isolation, fresh instances) vs \`wasmtime serve --max-instance-reuse-count 128\`: $(ratio "${MED[sw]}" "${MED[wtreuse]}") (target ≥ 0.75×)"
        [ $FAST_ROW = 1 ] && echo "- swarmlet fast mode vs \`wasmtime serve\` with the same switch: $(ratio "${MED[swfast]}" "${MED[wtfast]}")"
        [ $REUSE_ROW = 1 ] && echo "- swarmlet \`--instance-reuse 128\` vs \`wasmtime serve --max-instance-reuse-count 128\`: $(ratio "${MED[swreuse]}" "${MED[wtreuse]}")"
        [ $CONC_ROW = 1 ] && echo "- swarmlet \`--instance-concurrency 16\` vs \`wasmtime serve -Sp3 --max-instance-concurrent-reuse-count 16\` (WASIp3): $(ratio "${MED[swconc]}" "${MED[wtconc]}")"
        echo "- compute guest, swarmlet vs \`wasmtime serve\` (default isolation): $(ratio "${MED[cmp]}" "${MED[wtcmp]}"); cost of default isolation for swarmlet: fast/default $( [ $FAST_ROW = 1 ] && ratio "${MED[cmpfast]}" "${MED[cmp]}" || echo n/a)"
        # dist_ratios HEADING WT_BEST_KEY WT_REUSE_KEY: the dist rows against one wasmtime build
        dist_ratios() {
            echo
            echo "$1"
            echo
            echo "- swarmlet \`dist\` (default isolation) vs \`wasmtime serve\` best flags: $(ratio "${MED[swdist]}" "${MED[$2]}") (target ≥ 2×)"
            echo "- swarmlet \`dist\` (fresh instances) vs \`wasmtime serve --max-instance-reuse-count 128\`: $(ratio "${MED[swdist]}" "${MED[$3]}") (target ≥ 0.75×)"
            echo "- swarmlet \`dist\` \`--instance-reuse 128\` vs \`wasmtime serve --max-instance-reuse-count 128\`: $(ratio "${MED[swdistreuse]}" "${MED[$3]}")"
        }
        if [ -n "$DIST" ]; then
            dist_ratios "The shipped binaries: swarmlet's \`dist\` build (thin LTO, 1 codegen unit) vs \`wasmtime serve\` as wasmtime's release artifacts are built (\`--release\`, no LTO):" wtbest wtreuse
            if [ -n "$WASMTIME_LTO" ]; then
                dist_ratios "Both built with LTO: swarmlet \`dist\` (thin) vs \`wasmtime serve\` built with its \`fastest-runtime\` profile (fat LTO):" wtlto wtltoreuse
            fi
        fi
        echo
        echo "nginx and HAProxy rows are references (no wasm): they bound what any HTTP server or proxy does on this machine."
        echo
        echo "## Latency at fixed request rates (h2load, $CONNS connections, $DUR each)"
        echo
        echo "| setup | offered req/s | served req/s | p50 ms | p99 ms |"
        echo "| --- | ---: | ---: | ---: | ---: |"
        printf '%s' "$RATE_ROWS"
    fi
    echo
    echo "## Start and convergence (CLI command until \`verify: Service converged\`)"
    echo
    echo "A wasm replica is a routing entry over a shared compiled component, not a process: compare with care."
    echo
    echo "| what | ms |"
    echo "| --- | ---: |"
    echo "| first create, 1 replica (upload + compile + raft + start) | $FIRST_START |"
    echo "| one wasm replica, scale 0 → 1 (target < 10 ms for the replica itself) | $ONE_START |"
    echo "| scale 1 → 100 (target < 1000) | $CONV100 |"
    echo "| scale 100 → 0 → 10 | $S0_10 |"
    echo "| scale 10 → 50 | $S10_50 |"
    echo "| scale 50 → 10 | $S50_10 |"
    echo "| node kill -9, restarted on its data dir → serving again | $RECOVER |"
    if [ -n "$PEER" ]; then
        echo
        echo "Docker Swarm on the same machine, nginx containers from a local image (\`--restart-delay 0s\`). Docker's blocking create includes its CLI's ~5 s stability wait (\`--detach=false\` monitors for 5 s)."
        echo
        echo "| what | ms |"
        echo "| --- | ---: |"
        echo "| blocking \`service create --replicas 10\` | $DOCKER_CREATE10 |"
        echo "| scale 10 → 0 | $DOCKER_S10_0 |"
        echo "| scale 0 → 10 | $DOCKER_S0_10 |"
        echo "| scale 10 → 50 | $DOCKER_S10_50 |"
        echo "| scale 50 → 10 | $DOCKER_S50_10 |"
        echo "| a killed replica replaced | $DOCKER_REPLACE |"
        echo
        echo "| Docker Swarm nginx, host-mode publish (reference, not wasm) | req/s | p50 ms | p99 ms |"
        echo "| --- | ---: | ---: | ---: |"
        echo "| through docker-proxy (default \`--userland-proxy=true\`) | $DOCKER_RPS | $DOCKER_P50 | $DOCKER_P99 |"
        echo "| kernel NAT (\`--userland-proxy=false\`) | $DOCKER_NAT_RPS | $DOCKER_NAT_P50 | $DOCKER_NAT_P99 |"
    fi
    echo
    echo "## Control plane (in process: real raft log on disk, simulated nodes)"
    echo
    echo "$CP"
    echo
    echo "## Failover (separate daemons on loopback; targets: a new leader answering writes < 2 s, a dead node's replicas elsewhere < 5 s; --node-down-after 3s)"
    echo
    echo "$FAILOVER"
    echo
    echo "Docker Swarm for comparison (not run here: one dockerd per machine): not measured, swarmkit's defaults are quoted: raft ElectionTick 10 with 1 s ticks (a leader election waits ≥ 10 s) and a dispatcher heartbeat period of 5 s with a node marked down after about three missed periods (~15 s)."
    echo
    echo "$MESH"
    if [ -n "$CONTAINERS" ]; then
        echo
        echo "$CONTAINERS"
    fi
    echo
    echo "## Footprint"
    echo
    echo "| what | figure |"
    echo "| --- | ---: |"
    echo "| idle daemon RSS after init | $IDLE_RSS MB ($IDLE_PARTS) |"
    echo "| RSS after creating two wasm services (hello, compute) | $CREATED_RSS MB ($CREATED_PARTS) |"
    echo "| RSS after the saturation rounds (4 services; its own last round ended ~30 s before, so its freed heap is given back) / peak (VmHWM) | $LOADED_RSS MB ($LOADED_PARTS) / $LOADED_HWM MB |"
    echo "| RSS with 100 / 1 wasm replicas (replicas share one compiled component) | $RSS_100 MB / $RSS_1 MB |"
    if [ -n "$PEER" ]; then
        echo "| Docker: dockerd / containerd RSS after the runs | $DOCKER_DOCKERD_MB MB / $DOCKER_CONTAINERD_MB MB |"
        echo "| Docker: one container's shim RSS | $DOCKER_SHIM_MB MB |"
    fi
    echo "| release binary | $BIN_MB MB |"
    echo "| release binary, stripped | $STRIPPED_MB MB |"
    if [ -n "$DIST_MB" ]; then
        echo "| \`dist\` profile binary: stripped, thin LTO, 1 codegen unit, per-request crates at opt-level 3 and the rest at \"s\" (target ≤ 20 MB) | $DIST_MB MB |"
        echo "| \`dist\` binary's node: RSS after init | $DIST_IDLE |"
        echo "| \`dist\` binary's node: RSS after two wasm services | $DIST_CREATED |"
        echo "| \`dist\` binary's node: RSS right after a short load on each | $DIST_LOADED |"
        echo "| \`dist\` binary's node: RSS 5 s after the load (target < 30 MB) | $DIST_QUIET |"
    fi
    echo
    echo "Rows without \`dist\` run the \`release\` binary (the one tests use). RSS is anon (memory the daemon owns: heap, stacks, instances) plus file (mapped from the page cache, almost all the binary's own code: clean, shared, dropped and read again by the kernel under memory pressure). The file part grows with the binary: the kernel maps up to 64 KiB around each code page the node touches."
} > "$WORK/result.md"
cat "$WORK/result.md"
python3 "$REPO/scripts/chart.py" "$WORK/result.md" "$WORK/result.svg"
if [ $QUICK = 0 ]; then
    cp "$WORK/result.md" "$REPO/bench/results/latest.md"
    cp "$WORK/result.svg" "$REPO/bench/results/latest.svg"
    echo "written to bench/results/latest.md and latest.svg" >&2
fi
