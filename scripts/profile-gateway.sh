#!/usr/bin/env bash
# Instructions per proxied request of the gateway (callgrind), for the hot-path work of
# issue 7: an nginx upstream, the gateway (release build with debug info) under
# valgrind with one worker thread, a few seconds of requests over keep-alive connections to a
# plain route and an HS256 jwt-auth route. Prints instructions per request for each.
#
#   scripts/profile-gateway.sh [SECONDS]       # of load per route, default 10
#   scripts/profile-gateway.sh --scale [SECONDS]   # default 5; about 5 minutes
#
# --scale: the cost per request at 10 vs 10 000 consumers and routes, counted rather
# than timed (issue 7's scale target): for each of c10-r10, c10000-r10, c10-r10000 and
# c10000-r10000 (the benchmark's scale configurations), the gateway runs under callgrind
# with its cache simulator while wrk sends HS256 requests to the middle route as the
# middle consumer; prints instructions, data reads/writes and first-level cache misses
# per request. On a noisy machine wall-clock throughput at these sizes varies by 20 %
# between rounds; these counts vary by well under 1 %.
#
# Needs valgrind, nginx and wrk (installs them with apt-get when missing). Keeps the
# callgrind outputs in target/profile/ (callgrind_annotate them for the breakdown).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo="$(pwd)"
scale=0
if [[ ${1:-} == --scale ]]; then
    scale=1
    shift
fi
seconds="${1:-$((scale ? 5 : 10))}"

for tool in valgrind nginx wrk curl; do
    command -v "$tool" >/dev/null 2>&1 || {
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind nginx wrk curl >/dev/null
        break
    }
done

CARGO_PROFILE_RELEASE_DEBUG=line-tables-only cargo build --release --quiet -p keygate-gateway -p keygate-bench
bin="${CARGO_TARGET_DIR:-$repo/target}/release"
out="$repo/target/profile"
mkdir -p "$out"
work="$(mktemp -d)"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
up_port="$(free_port)" gw_port="$(free_port)" status_port="$(free_port)"

mkdir -p "$work/upstream/tmp"
cat >"$work/upstream/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $work/upstream/nginx.pid;
error_log $work/upstream/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $work/upstream/tmp;
    keepalive_requests 100000000;
    server {
        listen 127.0.0.1:$up_port;
        location / { default_type text/plain; return 200 "secure/pong\n"; }
    }
}
CONF
nginx -c "$work/upstream/nginx.conf" -p "$work/upstream" &
pids+=($!)

# The gateway's own count of answered requests; read outside the measured window (a
# scrape is work of its own).
served() {
    curl -s "http://127.0.0.1:$1/metrics" | awk '/^keygate_gateway_http_responses_total/ {s+=$2} END {print s+0}'
}

if ((scale)); then
    printf '%-14s %9s %9s %8s %8s %8s %8s\n' size requests Ir/req Dr/req Dw/req I1mr/req D1mr/req
    for size in c10-r10 c10000-r10 c10-r10000 c10000-r10000; do
        nc="${size#c}" nc="${nc%-r*}" nr="${size#*-r}"
        gw_port="$(free_port)" status_port="$(free_port)"
        "$bin/keygate-bench" gateway-config --listen "127.0.0.1:$gw_port" \
            --status-listen "127.0.0.1:$status_port" --upstream "127.0.0.1:$up_port" \
            --consumers "$nc" --routes "$nr" >"$work/gateway-$size.yaml"
        KEYGATE_LOG=warn valgrind --tool=callgrind --cache-sim=yes --dump-instr=no \
            --callgrind-out-file="$out/scale-$size.%p" \
            "$bin/keygate-gateway" --config "$work/gateway-$size.yaml" --threads 1 \
            2>"$work/gateway-$size.log" &
        gw_pid=$!
        pids+=($gw_pid)
        token="$("$bin/keygate-bench" token --key "key-$((nc / 2))" --secret "bench-secret-$((nc / 2))")"
        url="http://127.0.0.1:$gw_port/p$((nr / 2))/ping"
        for _ in $(seq 1 600); do
            curl -sf -H "Authorization: Bearer $token" "$url" >/dev/null 2>&1 && break
            sleep 0.5
        done
        curl -sf -H "Authorization: Bearer $token" "$url" >/dev/null \
            || { cat "$work/gateway-$size.log"; exit 1; }
        # Warm-up (connections, caches), then dumps around the measured window: each dump
        # holds the costs since the one before, so the second is the window alone.
        wrk -t1 -c4 -d2s -H "Authorization: Bearer $token" "$url" >/dev/null
        before="$(served "$status_port")"
        callgrind_control -d warm "$gw_pid" >/dev/null 2>&1
        wrk -t1 -c4 -d"$seconds"s -H "Authorization: Bearer $token" "$url" >/dev/null
        callgrind_control -d load "$gw_pid" >/dev/null 2>&1
        n=$(($(served "$status_port") - before))
        file="$out/scale-$size.$gw_pid.2"
        awk -v n="$n" -v size="$size" '
            /^events:/ { for (i = 2; i <= NF; i++) ev[$i] = i }
            /^summary:/ {
                printf "%-14s %9d %9.0f %8.0f %8.0f %8.1f %8.1f\n", size, n,
                    $ev["Ir"] / n, $ev["Dr"] / n, $ev["Dw"] / n, $ev["I1mr"] / n, $ev["D1mr"] / n
                exit
            }' "$file"
        kill "$gw_pid" 2>/dev/null || true
        wait "$gw_pid" 2>/dev/null || true
    done
    exit 0
fi

cat >"$work/gateway.yaml" <<CONF
listen: 127.0.0.1:$gw_port
status_listen: 127.0.0.1:$status_port
upstreams:
  - id: up
    nodes: { "127.0.0.1:$up_port": 1 }
consumers:
  - username: jack
    plugins: { jwt-auth: { key: jack-key, secret: profile-secret } }
routes:
  - id: plain
    uri: /plain
    upstream_id: up
  - id: hs256
    uri: /hs256
    plugins: { jwt-auth: {} }
    upstream_id: up
CONF
token="$("$bin/keygate-bench" token --alg HS256 --key jack-key --secret profile-secret)"

KEYGATE_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$out/callgrind.%p" \
    --dump-instr=no --collect-atstart=yes \
    "$bin/keygate-gateway" --config "$work/gateway.yaml" --threads 1 2>"$work/gateway.log" &
gw_pid=$!
pids+=($gw_pid)
for _ in $(seq 1 300); do
    curl -sf "http://127.0.0.1:$status_port/readyz" >/dev/null 2>&1 && break
    sleep 0.2
done
curl -sf "http://127.0.0.1:$gw_port/plain" >/dev/null || { cat "$work/gateway.log"; exit 1; }
curl -sf -H "Authorization: Bearer $token" "http://127.0.0.1:$gw_port/hs256" >/dev/null

# Instructions so far, then after N requests per route: the difference per request.
zero() { callgrind_control -z "$gw_pid" >/dev/null; }
dump() { callgrind_control -d "$1" "$gw_pid" >/dev/null; }
total() { # the newest dump's total instructions
    local f
    f="$(ls -t "$out"/callgrind."$gw_pid".* | head -1)"
    awk '/^summary:|^totals:/ {print $2; exit}' "$f"
}
load() { # path, extra wrk args: a fixed time; the gateway's own counter says how many
    local path="$1"; shift
    wrk -t1 -c4 -d"$seconds"s "$@" "http://127.0.0.1:$gw_port$path" >/dev/null
}
for route in plain hs256; do
    zero
    before="$(served "$status_port")"
    if [[ $route == hs256 ]]; then load /hs256 -H "Authorization: Bearer $token"; else load /plain; fi
    after="$(served "$status_port")"
    dump "$route"
    n=$((after - before))
    ins="$(total)"
    printf '%-6s %8d requests  %8d instructions per request  (%s)\n' "$route" "$n" "$((ins / (n > 0 ? n : 1)))" "$(ls -t "$out"/callgrind."$gw_pid".* | head -1)"
done
