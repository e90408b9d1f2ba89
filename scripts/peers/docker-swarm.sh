#!/usr/bin/env bash
# The system swarmlet replaces: a real single-node Docker Swarm (Debian's
# docker.io), started here, measured, and stopped. Prints markdown rows.
# What does not work on this kernel (no IPVS: the ingress routing mesh) is
# replaced by host-mode publishing, as docker documents for nodes without IPVS.
#   peers/docker-swarm.sh WORKDIR   (prints NAME=VALUE lines for bench.sh)
set -euo pipefail
source "$(dirname "$0")/../common.sh"
source "$(dirname "$0")/../bench-lib.sh"
DUR=${DUR:-10s}; ROUNDS=${ROUNDS:-3}; CONNS=${CONNS:-64}
W=${1:?usage: docker-swarm.sh WORKDIR}
apt_need docker.io wrk curl
mkdir -p "$W"
SOCK=$W/docker.sock
D() { /usr/bin/docker -H "unix://$SOCK" "$@"; }

dockerd --data-root "$W/root" --exec-root "$W/exec" -H "unix://$SOCK" --pidfile "$W/docker.pid" \
    >"$W/dockerd.log" 2>&1 &
DOCKERD=$!
stop_docker() {
    D swarm leave --force >/dev/null 2>&1 || true
    kill "$DOCKERD" 2>/dev/null || true
    wait "$DOCKERD" 2>/dev/null || true
    pkill -f "containerd --config $W" 2>/dev/null || true
    # dockerd set FORWARD to DROP; swarmlet's own networking needs it back.
    iptables -P FORWARD ACCEPT 2>/dev/null || true
}
trap stop_docker EXIT
for _ in $(seq 300); do D info >/dev/null 2>&1 && break; sleep 0.1; done
D info >/dev/null
D swarm init --advertise-addr 127.0.0.1:2378 --listen-addr 127.0.0.1:2378 >/dev/null

"$REPO/scripts/images/nginx-rootfs.sh" "$W/rootfs"
tar -C "$W/rootfs" -c . | D import -c 'CMD ["/usr/sbin/nginx","-g","daemon off;"]' - localnginx:1 >/dev/null

running() { D service ls --filter "name=$1" --format '{{.Replicas}}' | cut -d/ -f1; }
wait_running() { # wait_running SERVICE N : bounded poll
    for _ in $(seq 1200); do [ "$(running "$1")" = "$2" ] && return 0; sleep 0.05; done
    echo "docker swarm never reached $2 running tasks of $1" >&2; return 1
}
timed_scale() { # timed_scale N -> ms until N replicas run
    local t0; t0=$(now_ms)
    D service scale -d web="$1" >/dev/null 2>&1
    wait_running web "$1"
    echo $(( $(now_ms) - t0 ))
}

t0=$(now_ms)
D service create -q --no-resolve-image --name web --replicas 10 --restart-delay 0s localnginx:1 >/dev/null
CREATE10=$(( $(now_ms) - t0 ))
wait_running web 10
S10_0=$(timed_scale 0)
S0_10=$(timed_scale 10)
S10_50=$(timed_scale 50)
S50_10=$(timed_scale 10)
victim=$(D ps -q --filter "label=com.docker.swarm.service.name=web" | head -1)
t0=$(now_ms); D kill "$victim" >/dev/null
for _ in $(seq 200); do [ "$(running web)" != 10 ] && break; sleep 0.01; done
wait_running web 10; REPLACE=$(( $(now_ms) - t0 ))

DOCKERD_MB=$(awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$DOCKERD/status")
CTRD_PID=$(pgrep -f "containerd --config" | head -1 || true)
CTRD_MB=$([ -n "$CTRD_PID" ] && awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$CTRD_PID/status" || echo "?")
SHIM_MB=$(pgrep -f containerd-shim-runc-v2 | head -1 | xargs -I{} awk '/VmRSS/ {printf "%.1f", $2/1024}' /proc/{}/status || echo "?")
D service rm web >/dev/null

D service create -q --no-resolve-image --name pub --publish mode=host,published=18081,target=80 localnginx:1 >/dev/null
wait_running pub 1
for _ in $(seq 200); do curl -sf -o /dev/null http://127.0.0.1:18081/ && break; sleep 0.05; done

echo "DOCKER_CREATE10=$CREATE10"
echo "DOCKER_S10_0=$S10_0"
echo "DOCKER_S0_10=$S0_10"
echo "DOCKER_S10_50=$S10_50"
echo "DOCKER_S50_10=$S50_10"
echo "DOCKER_REPLACE=$REPLACE"
echo "DOCKER_DOCKERD_MB=$DOCKERD_MB"
echo "DOCKER_CONTAINERD_MB=$CTRD_MB"
echo "DOCKER_SHIM_MB=$SHIM_MB"
read -r rps p50 p99 < <(wrk_median http://127.0.0.1:18081/)
echo "DOCKER_RPS=$rps DOCKER_P50=$p50 DOCKER_P99=$p99"

# The same published nginx with kernel NAT instead of docker-proxy: a second
# dockerd on its own data root with --userland-proxy=false.
stop_docker
W=$W/nat
mkdir -p "$W"
SOCK=$W/docker.sock
dockerd --data-root "$W/root" --exec-root "$W/exec" -H "unix://$SOCK" --pidfile "$W/docker.pid" \
    --userland-proxy=false >"$W/dockerd.log" 2>&1 &
DOCKERD=$!
for _ in $(seq 300); do D info >/dev/null 2>&1 && break; sleep 0.1; done
D info >/dev/null
D swarm init --advertise-addr 127.0.0.1:2378 --listen-addr 127.0.0.1:2378 >/dev/null
tar -C "$(dirname "$W")/rootfs" -c . | D import -c 'CMD ["/usr/sbin/nginx","-g","daemon off;"]' - localnginx:1 >/dev/null
D service create -q --no-resolve-image --name pub --publish mode=host,published=18081,target=80 localnginx:1 >/dev/null
if wait_running pub 1 && for _ in $(seq 200); do curl -sf -o /dev/null http://127.0.0.1:18081/ && break; sleep 0.05; done \
    && curl -sf -o /dev/null http://127.0.0.1:18081/; then
    read -r rps p50 p99 < <(wrk_median http://127.0.0.1:18081/)
    echo "DOCKER_NAT_RPS=${rps:-n/a} DOCKER_NAT_P50=${p50:-n/a} DOCKER_NAT_P99=${p99:-n/a}"
else
    echo "note: Docker with --userland-proxy=false did not answer on 127.0.0.1:18081 (kernel NAT does not hairpin loopback here)" >&2
    echo "DOCKER_NAT_RPS=n/a DOCKER_NAT_P50=n/a DOCKER_NAT_P99=n/a"
fi
