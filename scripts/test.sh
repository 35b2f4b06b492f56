#!/usr/bin/env bash
# The test command: formatting, lints, then every unit and whole-system test.
#
#   scripts/test.sh                      # everything
#   scripts/test.sh -p warren-core       # extra arguments go to `cargo test`
#   scripts/test.sh -- --nocapture
#
# Whole-system tests need RabbitMQ and PostgreSQL; scripts/services.sh starts local ones.
# Cargo runs the test binaries one after another (tests inside one binary run in
# parallel); the fault tests, which stop and restart services, rely on that.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/services.sh

echo "==> cargo fmt --all -- --check"
cargo fmt --all -- --check

echo "==> cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

echo "==> cargo test --workspace $*"
cargo test --workspace "$@"
