#!/usr/bin/env bash
# Installs keygate-agent and keygate-gateway as systemd services on a VM.
#
#   sudo deploy/systemd/install.sh [--bin-dir DIR] [--destdir DIR] [--enable] [--start]
#
#   --bin-dir DIR   where the two binaries are (default: target/release of this repository;
#                   build them with `cargo build --release --locked --bins`)
#   --destdir DIR   install under DIR instead of / (a staging root for packaging or tests):
#                   users are created in DIR/etc/passwd, nothing is enabled or started
#   --enable        systemctl enable both units (default: only daemon-reload)
#   --start         enable and (re)start both units
#
# What goes where (idempotent: binaries, units and snippets are replaced, configs and
# credentials that exist are never overwritten; a newer shipped config lands beside the
# old one as *.new):
#   /usr/local/bin/keygate-agent, keygate-gateway          0755 root:root
#   /etc/systemd/system/keygate-{agent,gateway}.service     0644
#   /etc/sysusers.d/keygate.conf, /etc/tmpfiles.d/keygate.conf   (then applied)
#   /etc/keygate/                                           0755 root:root
#   /etc/keygate/agent.yaml, agent.env                      0640 root:keygate-agent
#   /etc/keygate/gateway.yaml, gateway.env                  0640 root:keygate-gateway
#   /etc/keygate/approle/                                   0750 root:keygate-agent
#   /run/keygate/                                           2750 keygate-agent:keygate-gateway
# The agent config's peers entry gets the real keygate-gateway uid.
#
# Then: put the AppRole role id and secret id (deploy/vault/setup-approle.sh prints
# them) in /etc/keygate/approle/{role-id,secret-id}, set vault.host in agent.yaml, and
# `systemctl enable --now keygate-agent keygate-gateway`.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
bin_dir="$repo/target/release"
destdir=""
enable=0
start=0

say() { printf 'install: %s\n' "$*" >&2; }
die() { printf 'install: error: %s\n' "$*" >&2; exit 1; }

while (($#)); do
    case "$1" in
        --bin-dir) bin_dir="${2:?--bin-dir needs a directory}"; shift 2 ;;
        --destdir) destdir="${2:?--destdir needs a directory}"; shift 2 ;;
        --enable) enable=1; shift ;;
        --start) enable=1; start=1; shift ;;
        -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done

[[ $(id -u) -eq 0 ]] || die "run as root (files are owned by root and the service users)"
for b in keygate-agent keygate-gateway; do
    [[ -x "$bin_dir/$b" ]] || die "$bin_dir/$b not found: build with 'cargo build --release --locked --bins' or pass --bin-dir"
done
if [[ -n "$destdir" ]]; then
    mkdir -p "$destdir"
    destdir="$(cd "$destdir" && pwd)"
    ((enable == 0)) || die "--enable/--start make no sense with --destdir"
fi
root="${destdir:-/}"
d() { printf '%s%s\n' "$destdir" "$1"; }

# 1. Binaries, units, sysusers.d and tmpfiles.d snippets.
install -d -m 0755 "$(d /usr/local/bin)" "$(d /etc/systemd/system)" \
    "$(d /etc/sysusers.d)" "$(d /etc/tmpfiles.d)"
install -m 0755 "$bin_dir/keygate-agent" "$bin_dir/keygate-gateway" "$(d /usr/local/bin)/"
install -m 0644 "$here/keygate-agent.service" "$here/keygate-gateway.service" "$(d /etc/systemd/system)/"
install -m 0644 "$here/sysusers.d/keygate.conf" "$(d /etc/sysusers.d)/keygate.conf"
install -m 0644 "$here/tmpfiles.d/keygate.conf" "$(d /etc/tmpfiles.d)/keygate.conf"
say "installed binaries, units and snippets under ${destdir:-/}"

# 2. Users and groups (system range), then the ids the files need.
systemd-sysusers --root="$root" "$(d /etc/sysusers.d)/keygate.conf"
lookup() { # database (passwd|group), name -> numeric id, from the target root
    awk -F: -v n="$2" '$1 == n { print $3; found = 1 } END { exit !found }' "$(d "/etc/$1")" ||
        die "$2 not found in $(d "/etc/$1") after systemd-sysusers"
}
agent_gid="$(lookup group keygate-agent)"
gateway_uid="$(lookup passwd keygate-gateway)"
gateway_gid="$(lookup group keygate-gateway)"
say "users: keygate-agent uid $(lookup passwd keygate-agent), keygate-gateway uid $gateway_uid"

# 3. Configuration: never overwrite what is there.
put_config() { # source, target, group gid
    local src="$1" dst="$2" gid="$3" tmp
    tmp="$(mktemp "$(dirname "$dst")/.keygate.XXXXXX")"
    cp "$src" "$tmp"
    if [[ "$(basename "$dst")" == agent.yaml ]]; then
        # The gateway's real uid into peers (the line marked "keygate-gateway uid").
        sed -i -E "s/^( *uids: \[)[0-9]+(\] *# keygate-gateway uid.*)$/\1$gateway_uid\2/" "$tmp"
    fi
    chown "0:$gid" "$tmp"
    chmod 0640 "$tmp"
    if [[ ! -e "$dst" ]]; then
        mv "$tmp" "$dst"
        say "wrote ${dst#"$destdir"}"
    elif cmp -s "$tmp" "$dst"; then
        rm -f "$tmp"
    else
        mv "$tmp" "$dst.new"
        say "kept ${dst#"$destdir"} (yours); the shipped version is ${dst#"$destdir"}.new"
    fi
}
install -d -m 0755 -o 0 -g 0 "$(d /etc/keygate)"
install -d -m 0750 -o 0 -g "$agent_gid" "$(d /etc/keygate/approle)"
put_config "$here/agent.yaml" "$(d /etc/keygate/agent.yaml)" "$agent_gid"
put_config "$here/agent.env" "$(d /etc/keygate/agent.env)" "$agent_gid"
put_config "$here/gateway.yaml" "$(d /etc/keygate/gateway.yaml)" "$gateway_gid"
put_config "$here/gateway.env" "$(d /etc/keygate/gateway.env)" "$gateway_gid"
for f in role-id secret-id; do
    if [[ -e "$(d "/etc/keygate/approle/$f")" ]]; then
        chown "0:$agent_gid" "$(d "/etc/keygate/approle/$f")"
        chmod 0640 "$(d "/etc/keygate/approle/$f")"
    fi
done

# 4. The socket directory (at boot, systemd-tmpfiles-setup.service does this).
systemd-tmpfiles --root="$root" --create "$(d /etc/tmpfiles.d)/keygate.conf"

# 5. Check the configs with the installed binaries.
if [[ -z "$destdir" ]]; then
    /usr/local/bin/keygate-agent check-config --config /etc/keygate/agent.yaml ||
        die "/etc/keygate/agent.yaml does not validate"
    /usr/local/bin/keygate-gateway check-config --config /etc/keygate/gateway.yaml ||
        die "/etc/keygate/gateway.yaml does not validate"
fi

# 6. systemd.
if [[ -n "$destdir" ]]; then
    say "staged under $destdir; nothing enabled"
    exit 0
fi
if [[ -d /run/systemd/system ]]; then
    systemctl daemon-reload
    if ((enable)); then systemctl enable keygate-agent.service keygate-gateway.service; fi
    if ((start)); then systemctl restart keygate-agent.service keygate-gateway.service; fi
else
    say "systemd is not running here: enable the units on the target with systemctl"
fi
missing=()
for f in role-id secret-id; do
    [[ -s "/etc/keygate/approle/$f" ]] || missing+=("/etc/keygate/approle/$f")
done
if ((${#missing[@]})); then
    say "next: write ${missing[*]} (root:keygate-agent 0640; see deploy/vault/setup-approle.sh), set vault.host in /etc/keygate/agent.yaml, then: systemctl enable --now keygate-agent keygate-gateway"
fi
say "done"
