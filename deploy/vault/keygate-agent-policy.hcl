# The agent's Vault policy: read the gateway's consumer secrets (KV v1 at kv/, the seed
# layout) and the gateway's Admin API key (gateway/admin, field key), nothing else. For
# KV v2 the data paths are secret/data/apisix/...
path "kv/apisix/consumer/*" {
  capabilities = ["read"]
}
path "secret/data/apisix/consumer/*" {
  capabilities = ["read"]
}
path "kv/apisix/gateway/admin" {
  capabilities = ["read"]
}
path "secret/data/apisix/gateway/admin" {
  capabilities = ["read"]
}
# Admin write-through (gateway admin.vault_write_through, agent peers[].write_paths):
# the agent then also needs to write the consumers' secrets. Off here; to turn it on,
# give "create" and "update" on the two consumer paths above.
# kv_version: auto asks sys/internal/ui/mounts/<path>, which Vault answers for any
# token holding a capability on <path>: no extra rule is needed.
