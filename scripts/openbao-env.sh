# Sourced (not executed) by the other scripts: installs OpenBao if needed and puts the
# directory holding `bao` on PATH in the calling shell.
#   source scripts/openbao-env.sh
_keygate_scripts_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
_keygate_bao_export="$("$_keygate_scripts_dir/install-openbao.sh" | tail -n 1)"
eval "$_keygate_bao_export"
unset _keygate_scripts_dir _keygate_bao_export
