# Helpers shared by bench.sh and the peers/ scripts. Callers set DUR,
# ROUNDS and CONNS.
now_ms() { date +%s%3N; }
rss_mb() { awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$1/status"; }
to_ms() { # wrk latency like 812.00us / 2.84ms / 1.20s -> ms
    awk -v v="$1" 'BEGIN { n=v+0; if (v ~ /us$/) n/=1000; else if (v ~ /ms$/) n=n; else if (v ~ /s$/) n*=1000; printf "%.2f", n }'
}
# wrk_median URL -> "rps p50 p99" (median round by rps)
wrk_median() {
    local url=$1 out rounds=()
    for _ in $(seq $ROUNDS); do
        out=$(wrk -t2 -c$CONNS -d$DUR --latency "$url")
        if echo "$out" | grep -q "Non-2xx\|Socket errors"; then
            echo "$out" >&2
            echo "benchmark broke: errors while loading $url" >&2
            exit 1
        fi
        local rps p50 p99
        rps=$(echo "$out" | awk '/Requests\/sec/ {printf "%.0f", $2}')
        p50=$(to_ms "$(echo "$out" | awk '$1=="50%" {print $2}')")
        p99=$(to_ms "$(echo "$out" | awk '$1=="99%" {print $2}')")
        rounds+=("$rps $p50 $p99")
    done
    printf '%s\n' "${rounds[@]}" | sort -n | sed -n "$(( (ROUNDS + 1) / 2 ))p"
}
