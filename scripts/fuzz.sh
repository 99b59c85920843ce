#!/usr/bin/env bash
# Runs every cargo-fuzz target for a bounded time (seconds per target, default 30) and
# prints executions and findings per target. Needs cargo-fuzz (see fuzz/README.md);
# builds without a sanitizer, which works on the stable toolchain. Not part of CI.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../fuzz"
seconds="${1:-30}"
targets=(jwt router config admin_json agent_request upstream_response client_request)

cargo fuzz build -s none
status=0
for target in "${targets[@]}"; do
    mkdir -p "corpus/$target"
    log="$(mktemp)"
    if cargo fuzz run -s none "$target" "corpus/$target" -- \
        -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1; then
        outcome="ok"
    else
        outcome="FAILED (see fuzz/artifacts/$target)"
        status=1
    fi
    execs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')"
    echo "fuzz: $target: $execs executions in ${seconds}s: $outcome"
    [ "$outcome" = "ok" ] || tail -n 30 "$log"
    rm -f "$log"
done
exit "$status"
