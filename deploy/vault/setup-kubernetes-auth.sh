#!/usr/bin/env bash
# Sets up Vault/OpenBao Kubernetes auth for the keygate pod (deploy/k8s): the policies
# keygate-agent (keygate-agent-policy.hcl beside this script: the secrets) and
# keygate-agent-token (keygate-agent-token-policy.hcl: its own token), and a role that
# only the ServiceAccount keygate in namespace keygate can log in with, using a token
# whose audience is "vault" (the pod's projected token). Idempotent; run with a Vault token
# allowed to manage auth methods and policies (VAULT_ADDR/VAULT_TOKEN, or BAO_*).
#
#   deploy/vault/setup-kubernetes-auth.sh
#
# Environment (defaults in brackets):
#   VAULT_CLI             vault or bao [whichever is on PATH, vault first]
#   K8S_MOUNT             auth mount path [kubernetes]
#   K8S_HOST              the Kubernetes API as Vault reaches it [https://kubernetes.default.svc]
#   K8S_CA_CERT_FILE      the API's CA certificate, for Vault outside the cluster
#                         [unset: Vault in the cluster uses its pod's ca.crt]
#   TOKEN_REVIEWER_JWT_FILE  a token allowed to call TokenReview (system:auth-delegator)
#                         [unset: Vault in the cluster uses its own service account, which
#                         then needs kubernetes-token-reviewer.yaml beside this script]
#   KEYGATE_NAMESPACE     [keygate]   KEYGATE_SERVICE_ACCOUNT [keygate]
#   KEYGATE_ROLE          [keygate]   (vault.kubernetes.role in the agent's config)
#   KEYGATE_AUDIENCE      [vault]     (the projected token's audience in the Deployment)
#   KEYGATE_POLICY        [keygate-agent] (and $KEYGATE_POLICY-token)
#   TOKEN_TTL [1h] TOKEN_MAX_TTL [4h]: the agent renews, then logs in again with a fresh
#                         projected token.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cli="${VAULT_CLI:-$(command -v vault || command -v bao || true)}"
[[ -n "$cli" ]] || { echo "setup-kubernetes-auth: neither vault nor bao found on PATH" >&2; exit 1; }
mount="${K8S_MOUNT:-kubernetes}"
role="${KEYGATE_ROLE:-keygate}"
policy="${KEYGATE_POLICY:-keygate-agent}"

# (Captured first: grep -q closing the pipe early would fail the pipeline.)
auth_methods="$("$cli" auth list -format=json)"
if ! grep -q "\"$mount/\"" <<<"$auth_methods"; then
    "$cli" auth enable -path="$mount" kubernetes
fi

config=(kubernetes_host="${K8S_HOST:-https://kubernetes.default.svc}")
if [[ -n "${K8S_CA_CERT_FILE:-}" ]]; then
    # Vault outside the cluster: use what is given, not Vault's own pod files.
    config+=(kubernetes_ca_cert=@"$K8S_CA_CERT_FILE" disable_local_ca_jwt=true)
fi
if [[ -n "${TOKEN_REVIEWER_JWT_FILE:-}" ]]; then config+=(token_reviewer_jwt=@"$TOKEN_REVIEWER_JWT_FILE"); fi
"$cli" write "auth/$mount/config" "${config[@]}"

"$cli" policy write "$policy" "$here/keygate-agent-policy.hcl"
"$cli" policy write "$policy-token" "$here/keygate-agent-token-policy.hcl"

"$cli" write "auth/$mount/role/$role" \
    bound_service_account_names="${KEYGATE_SERVICE_ACCOUNT:-keygate}" \
    bound_service_account_namespaces="${KEYGATE_NAMESPACE:-keygate}" \
    audience="${KEYGATE_AUDIENCE:-vault}" \
    alias_name_source=serviceaccount_name \
    token_policies="$policy,$policy-token" \
    token_no_default_policy=true \
    token_type=service \
    token_ttl="${TOKEN_TTL:-1h}" \
    token_max_ttl="${TOKEN_MAX_TTL:-4h}"

echo "setup-kubernetes-auth: role $mount/$role -> policies $policy, $policy-token for ${KEYGATE_NAMESPACE:-keygate}/${KEYGATE_SERVICE_ACCOUNT:-keygate} (audience ${KEYGATE_AUDIENCE:-vault})" >&2
