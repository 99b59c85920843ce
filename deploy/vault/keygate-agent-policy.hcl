# The agent's Vault policy: read the gateway's consumer secrets (KV v1 at kv/, the seed
# layout), nothing else. For KV v2 the data path is secret/data/apisix/consumer/*.
path "kv/apisix/consumer/*" {
  capabilities = ["read"]
}
path "secret/data/apisix/consumer/*" {
  capabilities = ["read"]
}
# kv_version: auto asks sys/internal/ui/mounts/<path>, which Vault answers for any
# token holding a capability on <path>: no extra rule is needed.
