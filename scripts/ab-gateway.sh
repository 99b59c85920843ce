#!/usr/bin/env bash
# A/B of gateway binaries against nginx's plain proxy, one worker each: the CPU a
# request costs in user space and in the kernel (from /proc/<pid>/stat), and req/s, for
# a plain route and an HS256 jwt-auth route, runs interleaved over several rounds. For
# telling what a change to the request path did when the machine is shared (the CPU
# split moves far less than req/s). Not part of CI.
#
#   scripts/ab-gateway.sh [--rounds N] [--duration S] [--threads N] GATEWAY [GATEWAY...]
#   scripts/ab-gateway.sh target/release/keygate-gateway /tmp/old/keygate-gateway
#   scripts/ab-gateway.sh --threads 2 target/release/keygate-gateway \
#       "target/release/keygate-gateway --cpu-affinity auto"
#
# A GATEWAY is a binary, optionally with arguments (one shell word: quote it).
# With one thread (the default) each proxy is pinned to CPU 1, wrk (-t1 -c64) and the
# nginx upstream to CPU 0. With --threads N, nothing is pinned by taskset: each proxy
# gets N workers (nginx with `worker_cpu_affinity auto`), wrk N threads. Prints req/s,
# p99 and CPU per request. Needs nginx, wrk, taskset (installed with apt-get when
# missing) and keygate-bench (built).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo="$(pwd)"
rounds=3 duration=4 threads=1
while [[ $# -gt 0 ]]; do
    case "$1" in
        --rounds) rounds="$2"; shift 2 ;;
        --duration) duration="$2"; shift 2 ;;
        --threads)
            [[ "${2:-}" =~ ^[1-9][0-9]*$ ]] || { echo "ab-gateway: --threads takes a positive number" >&2; exit 64; }
            threads="$2"; shift 2 ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        *) break ;;
    esac
done
[[ $# -ge 1 ]] || { echo "ab-gateway: name one gateway binary or more" >&2; exit 64; }
for gateway in "$@"; do
    read -r bin _ <<<"$gateway"
    [[ -x ${bin:-} ]] || { echo "ab-gateway: ${bin:-(empty)} is not an executable" >&2; exit 64; }
done
# CPUs: proxies, then wrk and the upstream (all of them beyond one thread).
if ((threads == 1)); then
    proxy_cpus=1 load_cpus=0 nginx_pin=""
else
    all="0-$(($(nproc) - 1))"
    proxy_cpus="$all" load_cpus="$all" nginx_pin="worker_cpu_affinity auto;"
fi
for tool in nginx wrk taskset; do
    command -v "$tool" >/dev/null 2>&1 || {
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx wrk util-linux >/dev/null
        break
    }
done
kb="${CARGO_TARGET_DIR:-$repo/target}/release/keygate-bench"
[[ -x $kb ]] || cargo build --release --quiet -p keygate-bench

work="$(mktemp -d)"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for f in "$work"/*/nginx.pid; do [[ -f $f ]] && kill "$(cat "$f")" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ready() { for _ in $(seq 1 100); do curl -s -o /dev/null "$1" && return 0; sleep 0.1; done; return 1; }

up="$(free_port)" np="$(free_port)"
mkdir -p "$work/up/tmp" "$work/np/tmp" "$work/np/ptmp"
cat >"$work/up/nginx.conf" <<CONF
worker_processes 1; daemon off; pid $work/up/nginx.pid; error_log $work/up/error.log warn;
events { worker_connections 4096; }
http { access_log off; client_body_temp_path $work/up/tmp; keepalive_requests 100000000;
  server { listen 127.0.0.1:$up; location / { default_type text/plain; return 200 "secure/pong\n"; } } }
CONF
cat >"$work/np/nginx.conf" <<CONF
worker_processes $threads; $nginx_pin daemon off; pid $work/np/nginx.pid; error_log $work/np/error.log warn;
events { worker_connections 8192; }
http { access_log off; client_body_temp_path $work/np/tmp; proxy_temp_path $work/np/ptmp;
  keepalive_requests 100000000;
  upstream up { server 127.0.0.1:$up; keepalive 256; keepalive_requests 100000000; }
  server { listen 127.0.0.1:$np backlog=4096;
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
CONF
taskset -c "$load_cpus" nginx -c "$work/up/nginx.conf" -p "$work/up" >/dev/null 2>&1 &
taskset -c "$proxy_cpus" nginx -c "$work/np/nginx.conf" -p "$work/np" >/dev/null 2>&1 &
ready "http://127.0.0.1:$up/" && ready "http://127.0.0.1:$np/"
nginx_workers="$(pgrep -P "$(cat "$work/np/nginx.pid")" | paste -sd' ')"

names=() gw_pids=() gw_ports=()
i=0
for gateway in "$@"; do
    i=$((i + 1))
    read -r -a cmd <<<"$gateway"
    port="$(free_port)" status="$(free_port)"
    cat >"$work/gw$i.yaml" <<CONF
listen: 127.0.0.1:$port
status_listen: 127.0.0.1:$status
upstreams: [ { id: up, nodes: { "127.0.0.1:$up": 1 } } ]
consumers: [ { username: jack, plugins: { jwt-auth: { key: jack-key, secret: ab-secret } } } ]
routes:
  - { id: plain, uri: /plain, upstream_id: up }
  - { id: hs256, uri: /hs256, plugins: { jwt-auth: {} }, upstream_id: up }
CONF
    KEYGATE_LOG=warn taskset -c "$proxy_cpus" "${cmd[@]}" --config "$work/gw$i.yaml" --threads "$threads" 2>"$work/gw$i.log" &
    pids+=($!) gw_pids+=($!) gw_ports+=("$port") names+=("$i:$gateway")
    ready "http://127.0.0.1:$status/healthz" || { cat "$work/gw$i.log" >&2; exit 1; }
done
token="$("$kb" token --alg HS256 --key jack-key --secret ab-secret)"
tick="$(getconf CLK_TCK)"

cpu_of() { # user and system ticks of processes, summed
    local u=0 s=0 pid uu ss
    for pid in "$@"; do
        read -r uu ss < <(awk '{print $14, $15}' "/proc/$pid/stat")
        u=$((u + uu)) s=$((s + ss))
    done
    echo "$u $s"
}

run() { # label "pids" url [wrk args]
    local label="$1" pids_of="$2" url="$3"; shift 3
    local u0 s0 u1 s1 out
    # shellcheck disable=SC2086 # a list of pids
    read -r u0 s0 < <(cpu_of $pids_of)
    out="$(taskset -c "$load_cpus" wrk -t"$threads" -c64 -d"${duration}s" --latency "$@" "$url")"
    # shellcheck disable=SC2086
    read -r u1 s1 < <(cpu_of $pids_of)
    python3 - "$label" "$out" "$duration" "$tick" "$u0" "$s0" "$u1" "$s1" <<'PY'
import re, sys
label, out, dur, tick, u0, s0, u1, s1 = sys.argv[1:]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
p99 = re.search(r"99%\s+(\S+)", out).group(1)
n = rps * float(dur)
user = (int(u1) - int(u0)) / int(tick) * 1e6 / n
system = (int(s1) - int(s0)) / int(tick) * 1e6 / n
print(f"{label:<14} {rps:>9.0f} req/s   p99 {p99:>8}   user {user:5.2f} us   sys {system:5.2f} us   total {user + system:5.2f} us")
PY
}

for name in "${names[@]}"; do echo "gw${name%%:*} = ${name#*:}"; done
for round in $(seq 1 "$rounds"); do
    echo "round $round"
    run nginx-plain "$nginx_workers" "http://127.0.0.1:$np/plain"
    for j in $(seq 1 "$i"); do
        run "gw$j-plain" "${gw_pids[$((j - 1))]}" "http://127.0.0.1:${gw_ports[$((j - 1))]}/plain"
        run "gw$j-hs256" "${gw_pids[$((j - 1))]}" "http://127.0.0.1:${gw_ports[$((j - 1))]}/hs256" \
            -H "Authorization: Bearer $token"
    done
done
