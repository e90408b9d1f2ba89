# Helpers shared by bench.sh and the peers/ scripts. Callers set DUR,
# ROUNDS and CONNS.
now_ms() { date +%s%3N; }
rss_mb() { awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$1/status"; }
# rss_parts PID: "anon A + file F" (MB). Anon is memory the daemon owns; file
# is mapped from the page cache (mostly the binary's own code), clean and
# shared, which the kernel can drop and read again.
rss_parts() { awk '/^RssAnon/ {a=$2} /^RssFile/ {f=$2} END {printf "anon %.1f + file %.1f", a/1024, f/1024}' "/proc/$1/status"; }
hwm_mb() { awk '/VmHWM/ {printf "%.1f", $2/1024}' "/proc/$1/status"; }
to_ms() { # wrk latency like 812.00us / 2.84ms / 1.20s -> ms
    awk -v v="$1" 'BEGIN { n=v+0; if (v ~ /us$/) n/=1000; else if (v ~ /ms$/) n=n; else if (v ~ /s$/) n*=1000; printf "%.2f", n }'
}

# Servers on one core, the load generator on the other, so that they do not
# take CPU from each other (with fewer than 2 cores nothing is pinned and
# the table says so).
if [ "$(nproc)" -ge 2 ]; then
    SERVER_PIN=(taskset -c 0)
    CLIENT_PIN=(taskset -c 1)
    PINNING="servers pinned to core 0, wrk/h2load to core 1"
else
    SERVER_PIN=()
    CLIENT_PIN=()
    PINNING="not pinned (one core)"
fi

# wrk_once URL -> "rps p50 p99": one run of wrk, on the client core.
wrk_once() {
    local out rps p50 p99
    out=$("${CLIENT_PIN[@]}" wrk -t1 -c"$CONNS" -d"$DUR" --latency "$1")
    if echo "$out" | grep -q "Non-2xx\|Socket errors"; then
        echo "$out" >&2
        echo "benchmark broke: errors while loading $1" >&2
        exit 1
    fi
    rps=$(echo "$out" | awk '/Requests\/sec/ {printf "%.0f", $2}')
    p50=$(to_ms "$(echo "$out" | awk '$1=="50%" {print $2}')")
    p99=$(to_ms "$(echo "$out" | awk '$1=="99%" {print $2}')")
    echo "$rps $p50 $p99"
}

# wrk_median URL -> "rps p50 p99" of the median round (by rps), ROUNDS runs
# back to back (for peers measured on their own).
wrk_median() {
    local rounds=()
    for _ in $(seq "$ROUNDS"); do rounds+=("$(wrk_once "$1")"); done
    printf '%s\n' "${rounds[@]}" | sort -n | sed -n "$(( (ROUNDS + 1) / 2 ))p"
}

# summarize FILE -> "min median max p50 p99 load": FILE has one line per
# round, "rps p50 p99 load1"; p50/p99 are the median round's, load the
# highest 1-minute load average seen at the start of a round.
summarize() {
    sort -n "$1" | awk '
        { rps[NR] = $1; p50[NR] = $2; p99[NR] = $3; if ($4 > load) load = $4 }
        END { m = int((NR + 1) / 2); printf "%d %d %d %s %s %s\n", rps[1], rps[m], rps[NR], p50[m], p99[m], load }'
}

# h2load_rate URL RATE -> "achieved p50 p99": RATE requests/s offered over
# CONNS connections for DUR (below saturation), latency percentiles from
# h2load's per-request log.
h2load_rate() {
    local url=$1 rate=$2 log secs per
    log=$(mktemp)
    secs=${DUR%s}
    per=$(( (rate + CONNS - 1) / CONNS ))
    "${CLIENT_PIN[@]}" h2load --h1 -t1 -c"$CONNS" --rps "$per" -D "$secs" --log-file="$log" "$url" >/dev/null 2>&1 || true
    if awk '$2 != 200 { bad = 1 } END { exit !(bad || NR == 0) }' "$log"; then
        rm -f "$log"; echo "broken broken broken"; return
    fi
    awk '{ print $3 / 1000 }' "$log" | sort -n | awk -v secs="$secs" '
        { t[NR] = $1 }
        END {
            i50 = int(NR * 0.50); if (i50 < 1) i50 = 1
            i99 = int(NR * 0.99); if (i99 < 1) i99 = 1
            printf "%d %.2f %.2f\n", NR / secs, t[i50], t[i99]
        }'
    rm -f "$log"
}
