#!/usr/bin/env bash
# Sets up Vault/OpenBao AppRole auth for keygate-agent on a VM (deploy/systemd): the
# policies keygate-agent (keygate-agent-policy.hcl beside this script: the secrets)
# and keygate-agent-token (keygate-agent-token-policy.hcl: its own token) and the role
# keygate-agent, and optionally writes a role id and a fresh secret id for the agent.
# Idempotent (each run with --out issues a new secret id). Run with a Vault token
# allowed to manage auth methods and policies (VAULT_ADDR/VAULT_TOKEN, or BAO_*).
#
#   deploy/vault/setup-approle.sh [--out DIR]
#
#   --out DIR   write DIR/role-id and DIR/secret-id (mode 0640; on the VM, DIR is
#               /etc/keygate/approle and the files are root:keygate-agent). Without it
#               nothing secret is printed; fetch them later with
#               `vault read -field=role_id auth/approle/role/keygate-agent/role-id` and
#               `vault write -f -field=secret_id auth/approle/role/keygate-agent/secret-id`.
#
# Environment (defaults in brackets):
#   VAULT_CLI [vault or bao on PATH]   APPROLE_MOUNT [approle]   KEYGATE_ROLE [keygate-agent]
#   KEYGATE_POLICY [keygate-agent] (and $KEYGATE_POLICY-token)   TOKEN_TTL [1h]   TOKEN_MAX_TTL [4h]
#   SECRET_ID_TTL [0 = no expiry: the agent logs in with it again after every max TTL;
#                 rotate it by writing a new file, the agent re-reads it on each login]
#   SECRET_ID_BOUND_CIDRS / TOKEN_BOUND_CIDRS  [unset] e.g. the VM's address/32
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out=""
while (($#)); do
    case "$1" in
        --out) out="${2:?--out needs a directory}"; shift 2 ;;
        *) echo "setup-approle: unknown argument $1" >&2; exit 64 ;;
    esac
done
cli="${VAULT_CLI:-$(command -v vault || command -v bao || true)}"
[[ -n "$cli" ]] || { echo "setup-approle: neither vault nor bao found on PATH" >&2; exit 1; }
mount="${APPROLE_MOUNT:-approle}"
role="${KEYGATE_ROLE:-keygate-agent}"
policy="${KEYGATE_POLICY:-keygate-agent}"

# (Captured first: grep -q closing the pipe early would fail the pipeline.)
auth_methods="$("$cli" auth list -format=json)"
if ! grep -q "\"$mount/\"" <<<"$auth_methods"; then
    "$cli" auth enable -path="$mount" approle
fi

"$cli" policy write "$policy" "$here/keygate-agent-policy.hcl"
"$cli" policy write "$policy-token" "$here/keygate-agent-token-policy.hcl"

args=(
    token_policies="$policy,$policy-token"
    token_no_default_policy=true
    token_type=service
    token_ttl="${TOKEN_TTL:-1h}"
    token_max_ttl="${TOKEN_MAX_TTL:-4h}"
    bind_secret_id=true
    secret_id_ttl="${SECRET_ID_TTL:-0}"
    secret_id_num_uses=0
)
if [[ -n "${SECRET_ID_BOUND_CIDRS:-}" ]]; then args+=(secret_id_bound_cidrs="$SECRET_ID_BOUND_CIDRS"); fi
if [[ -n "${TOKEN_BOUND_CIDRS:-}" ]]; then args+=(token_bound_cidrs="$TOKEN_BOUND_CIDRS"); fi
"$cli" write "auth/$mount/role/$role" "${args[@]}"

if [[ -n "$out" ]]; then
    mkdir -p "$out"
    umask 0137
    "$cli" read -field=role_id "auth/$mount/role/$role/role-id" >"$out/role-id.tmp"
    "$cli" write -f -field=secret_id "auth/$mount/role/$role/secret-id" >"$out/secret-id.tmp"
    mv "$out/role-id.tmp" "$out/role-id"
    mv "$out/secret-id.tmp" "$out/secret-id"
    echo "setup-approle: wrote $out/role-id and $out/secret-id" >&2
fi
echo "setup-approle: role $mount/$role -> policies $policy, $policy-token" >&2
