#!/usr/bin/env bash
# Runs the fleet locally: makes sure RabbitMQ and PostgreSQL are up, then `warren dev`
# (migrate, declare the topology, start the provider simulator, run a worker on every queue
# and the scheduler). Without arguments it seeds 200 demo subscriptions that are due now,
# so renewals flow at once; with arguments they go to `warren dev` instead (e.g.
# `--seed 1000 --seed-mix ok,decline`, or `--prefetch 64` to seed nothing).
# Ctrl-C stops it gracefully; a second Ctrl-C exits at once.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/services.sh
if [ "$#" -eq 0 ]; then
  set -- --seed 200
fi
exec cargo run --release -- dev "$@"
