# What keygate-agent does with its own token, granted explicitly so that its roles can
# set token_no_default_policy=true (the "default" policy grants much more: cubbyhole,
# response wrapping, sys/tools, ...). Used with keygate-agent-policy.hcl by
# setup-kubernetes-auth.sh and setup-approle.sh (policy name keygate-agent-token).
path "auth/token/lookup-self" {
  capabilities = ["read"]
}
path "auth/token/renew-self" {
  capabilities = ["update"]
}
path "auth/token/revoke-self" {
  capabilities = ["update"]
}
# Leased (dynamic) secrets the agent reads are renewed like its token.
path "sys/leases/renew" {
  capabilities = ["update"]
}
