#!/usr/bin/env bash
# Runs the fleet locally: makes sure RabbitMQ and PostgreSQL are up, then `warren dev`
# (migrate, declare the topology, run a worker on every queue). Ctrl-C stops it gracefully;
# a second Ctrl-C exits at once. Extra arguments go to `warren dev` (e.g. --prefetch 64).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/services.sh
exec cargo run --release -- dev "$@"
