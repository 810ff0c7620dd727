#!/bin/bash
# Starts (or restarts) the spike's processes inside its container: Redis, the workers, the baseline,
# design (a)'s SSE processes, design (b)'s backend, nginx. Usage: start.sh [sse processes, default: cores]
set -euo pipefail
SSE_PROCS=${1:-$(nproc)}
WORKERS=${SPIKE_WORKERS:-2}
mkdir -p /run/spike /var/lib/spike-redis /var/log/spike
cd /opt/spike

up() {  # up NAME ENV... -- COMMAND...: one process, cmdline starting with NAME (the load generator groups by it)
    local name=$1; shift
    local envs=()
    while [ "$1" != "--" ]; do envs+=("$1"); shift; done
    shift
    env "${envs[@]}" PYTHONPATH=/opt/spike:/opt/pi5bench setsid bash -c 'exec -a "$0" "$@"' "$name" "$@" \
        >>"/var/log/spike/$name.log" 2>&1 </dev/null &
}

uvicorn_up() {  # uvicorn_up NAME ROLE SOCKET [SINK] [READ]
    rm -f "$3"
    up "$1" SPIKE_ROLE="$2" SPIKE_SINK="${4:-stream}" SPIKE_READ="${5:-each}" -- python3 -m uvicorn app:app --uds "$3" --http h11 --loop asyncio \
        --no-access-log --log-level warning --timeout-keep-alive 75
}

redis_up() {
    up spike-redis -- redis-server --bind 127.0.0.1 --port 6399 --save "" --appendonly yes --appendfsync everysec \
        --dir /var/lib/spike-redis --maxmemory 512mb --maxmemory-policy noeviction --maxclients 20000
    for _ in $(seq 50); do redis-cli -p 6399 ping >/dev/null 2>&1 && return; sleep 0.1; done
    echo "redis did not start" >&2; exit 1
}

sse_up() {  # design (a) twice: one XREAD per client (spike-sse-a*), one per process (spike-hub-a*)
    : >/run/spike/sse_many.conf
    : >/run/spike/hub_many.conf
    for i in $(seq "$SSE_PROCS"); do
        uvicorn_up "spike-sse-a$i" sse "/run/spike/sse-$i.sock"
        echo "server unix:/run/spike/sse-$i.sock;" >>/run/spike/sse_many.conf
        uvicorn_up "spike-hub-a$i" sse "/run/spike/hub-$i.sock" stream hub
        echo "server unix:/run/spike/hub-$i.sock;" >>/run/spike/hub_many.conf
    done
}

stop() {  # stop PREFIX: SIGTERM, then SIGKILL after 2 s (a restart, as docker restart does after its grace)
    pkill -TERM -f "^$1" || true
    for _ in $(seq 20); do pgrep -f "^$1" >/dev/null || return 0; sleep 0.1; done
    pkill -KILL -f "^$1" || true
    sleep 0.2
}

case "${SPIKE_ACTION:-all}" in
    reload) nginx -s reload -c /opt/spike/nginx.conf ;;
    restart-sse) stop spike-sse-a; stop spike-hub-a; sse_up ;;
    restart-backend) stop spike-backend-b; uvicorn_up spike-backend-b backend /run/spike/backend.sock nchan ;;
    restart-redis) redis-cli -p 6399 shutdown >/dev/null 2>&1 || true; stop spike-redis; redis_up ;;
    stop-all) nginx -s stop -c /opt/spike/nginx.conf 2>/dev/null || true; stop spike- ;;
    all)
        ulimit -n "$(ulimit -Hn)"
        redis_up
        for i in $(seq "$WORKERS"); do up "spike-worker$i" -- python3 worker.py; done
        uvicorn_up spike-local local /run/spike/local.sock
        uvicorn_up spike-backend-b backend /run/spike/backend.sock nchan
        sse_up
        sleep 2
        nginx -t -q -c /opt/spike/nginx.conf
        nginx -c /opt/spike/nginx.conf
        ;;
esac
