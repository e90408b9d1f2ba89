#!/usr/bin/env bash
# Failover timings of a real swarm: 3 managers + 2 workers, each its own
# `swarmlet daemon` on its own loopback address, ROUNDS fresh clusters.
#   leader:  kill -9 of the raft leader -> a surviving manager acknowledges a
#            write (`service scale … --detach` returns 0), polled every 20 ms
#   worker:  kill -9 of a worker running replicas -> all replicas running on
#            the other nodes again (`service ps`), polled every 50 ms
# Prints one markdown table (min / median / max over the rounds).
#
# Usage: scripts/bench-failover.sh [ROUNDS]   (SWARMLET=path/to/swarmlet)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-${ROUNDS:-5}}
BIN=${SWARMLET:-${CARGO_TARGET_DIR:-target}/release/swarmlet}
HELLO=guests/out/hello.wasm
[ -x "$BIN" ] || { echo "build first: cargo build --release -p swarmlet ($BIN)" >&2; exit 1; }
[ -f "$HELLO" ] || { echo "run guests/build.sh first ($HELLO)" >&2; exit 1; }
now_ms() { date +%s%3N; }

WORK=$(mktemp -d /tmp/swarmlet-failover.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

NAMES=(m1 m2 m3 w1 w2)
declare -A IP PID
start() { # NAME
    local n=$1 dir=$WORK/$1
    mkdir -p "$dir"
    "$BIN" daemon --data-dir "$dir" --listen-addr "${IP[$n]}:2377" \
        --publish-addr "${IP[$n]}" --node-name "$n" >>"$dir/log" 2>&1 &
    PID[$n]=$!
    PIDS+=($!)
    for _ in $(seq 200); do
        [ -S "$dir/swarmlet.sock" ] && return 0
        sleep 0.05
    done
    echo "daemon $n did not start; its log:" >&2
    cat "$dir/log" >&2
    exit 1
}
cli() { # NAME ARGS...
    local n=$1
    shift
    "$BIN" -H "unix://$WORK/$n/swarmlet.sock" "$@"
}
leader() { # -> name of the leader as manager $1 sees it
    cli "$1" node ls --format json |
        python3 -c 'import json,sys; print(next(r["node"]["hostname"] for r in json.load(sys.stdin) if r["manager_status"]=="Leader"))'
}
running_elsewhere() { # MANAGER SERVICE N VICTIM -> 0 when N tasks run, none on VICTIM
    cli "$1" service ps "$2" --format json 2>/dev/null | python3 -c '
import json, sys
n, victim = int(sys.argv[1]), sys.argv[2]
ts = [t for t in json.load(sys.stdin) if t["task"]["state"] == "running" and t["task"]["desired_state"] == "running"]
sys.exit(0 if len(ts) == n and all(t["node_name"] != victim for t in ts) else 1)' "$3" "$4"
}

LEADER_MS=()
WORKER_MS=()
for round in $(seq "$ROUNDS"); do
    rm -rf "${WORK:?}"/*
    for i in "${!NAMES[@]}"; do IP[${NAMES[$i]}]=127.77.$round.$((i + 1)); done
    for n in "${NAMES[@]}"; do start "$n"; done
    cli m1 init >/dev/null
    mt=$(cli m1 swarm join-token -q manager)
    wt=$(cli m1 swarm join-token -q worker)
    for n in m2 m3; do cli "$n" join --token "$mt" "${IP[m1]}:2377" >/dev/null; done
    for n in w1 w2; do cli "$n" join --token "$wt" "${IP[m1]}:2377" >/dev/null; done
    # Every node Ready before the service is created, so replicas spread.
    until [ "$(cli m1 node ls --format json | python3 -c 'import json,sys; print(sum(r["status"]=="Ready" for r in json.load(sys.stdin)))')" = 5 ]; do
        sleep 0.1
    done
    cli m1 service create --name web --replicas 6 "$HELLO" >/dev/null

    # Worker kill: the worker with most replicas.
    victim=$(cli m1 service ps web --format json | python3 -c '
import collections, json, sys
c = collections.Counter(t["node_name"] for t in json.load(sys.stdin) if t["node_name"].startswith("w"))
print(c.most_common(1)[0][0] if c else "")')
    [ -n "$victim" ] || { echo "no replica landed on a worker; cannot measure" >&2; exit 1; }
    t0=$(now_ms)
    kill -9 "${PID[$victim]}"
    until running_elsewhere m1 web 6 "$victim"; do sleep 0.05; done
    WORKER_MS+=($(($(now_ms) - t0)))

    # Leader kill.
    l=$(leader m1)
    survivor=m1
    [ "$l" = m1 ] && survivor=m2
    replicas=3
    t0=$(now_ms)
    kill -9 "${PID[$l]}"
    until cli "$survivor" service scale "web=$replicas" --detach >/dev/null 2>&1; do sleep 0.02; done
    LEADER_MS+=($(($(now_ms) - t0)))

    for n in "${NAMES[@]}"; do kill -9 "${PID[$n]}" 2>/dev/null || true; done
    wait 2>/dev/null || true
    echo "round $round: worker ${WORKER_MS[-1]} ms, leader ${LEADER_MS[-1]} ms" >&2
done

stats() { printf '%s\n' "$@" | sort -n | awk '{v[NR]=$1} END {m=int((NR+1)/2); printf "%d | %d | %d", v[1], v[m], v[NR]}'; }
echo "| failover ($ROUNDS rounds, 3 managers + 2 workers on loopback) | min ms | median ms | max ms |"
echo "| --- | --- | --- | --- |"
echo "| leader kill -9 → a survivor acknowledges a write | $(stats "${LEADER_MS[@]}") |"
echo "| worker kill -9 → its replicas running elsewhere | $(stats "${WORKER_MS[@]}") |"
