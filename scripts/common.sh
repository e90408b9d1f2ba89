# Shared by the scripts: where cargo builds (outside the clone, so CI and
# later checkouts on this machine reuse the compiled wasmtime), and apt.
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/swarmlet-target}
SWARMLET=$CARGO_TARGET_DIR/release/swarmlet

# apt_need PKG... : installs the Debian packages that are missing.
apt_need() {
    local missing=()
    for p in "$@"; do
        dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        echo "need root to install: ${missing[*]} (run: sudo apt-get install ${missing[*]})" >&2
        return 1
    fi
    echo "installing ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

# start_watchdog SECONDS: after SECONDS, prints the stacks of this target
# dir's test binaries still running (with gdb, where it is installed) and
# kills them, so a hung test fails the run at once, showing where it hung,
# instead of running into CI's time limit. stop_watchdog ends it (through a
# flag file it polls: killing it would make bash print "Terminated").
start_watchdog() {
    local secs=$1
    WATCHDOG_DONE=$(mktemp -u)
    (
        for ((i = 0; i < secs; i++)); do
            [ -e "$WATCHDOG_DONE" ] && exit 0
            sleep 1
        done
        echo "watchdog: tests still running after $secs s; their stacks follow, then they are killed" >&2
        for p in $(pgrep -f "^$CARGO_TARGET_DIR/release/deps/"); do
            echo "== pid $p: $(tr '\0' ' ' <"/proc/$p/cmdline")" >&2
            if command -v gdb >/dev/null; then
                timeout 120 gdb -q -batch -p "$p" -ex 'thread apply all bt 40' 2>&1 |
                    grep -E '^(Thread |#)' >&2 || true
            fi
            kill -9 "$p" 2>/dev/null || true
        done
    ) &
    WATCHDOG=$!
    trap stop_watchdog EXIT
}
stop_watchdog() {
    touch "$WATCHDOG_DONE"
    wait "$WATCHDOG" 2>/dev/null || true
    rm -f "$WATCHDOG_DONE"
}
