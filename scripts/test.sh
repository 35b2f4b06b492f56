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

# Example clients, run by tests/examples.rs: a Python venv with pika and amqplib for Node,
# pinned by examples/python/requirements.txt and examples/node/package-lock.json. Each is
# (re)installed only when missing or when its pin file changed since the last install.
venv=target/example-clients/venv
if [[ -x $venv/bin/python ]] && cmp -s examples/python/requirements.txt "$venv/warren-requirements.txt"; then
  echo "==> example clients: $venv is up to date"
else
  echo "==> example clients: python3 -m venv $venv && pip install -r examples/python/requirements.txt"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r examples/python/requirements.txt
  cp examples/python/requirements.txt "$venv/warren-requirements.txt"
fi
if cmp -s examples/node/package-lock.json examples/node/node_modules/.warren-package-lock.json; then
  echo "==> example clients: examples/node/node_modules is up to date"
else
  echo "==> example clients: npm ci (examples/node)"
  (cd examples/node && npm ci --no-audit --no-fund)
  cp examples/node/package-lock.json examples/node/node_modules/.warren-package-lock.json
fi

# promtool, run by tests/promql.rs to check deploy/prometheus/*.yml and the dashboard's
# queries: from the Debian package `prometheus`, installed only when missing.
if command -v promtool >/dev/null; then
  echo "==> promtool: $(command -v promtool) is installed"
else
  echo "==> promtool: apt-get install prometheus"
  sudo_=""; [[ $(id -u) -eq 0 ]] || sudo_="sudo"
  $sudo_ apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq --no-install-recommends prometheus
fi

# libfaketime, preloaded by tests/scheduler.rs to run a scheduler replica with a clock 5 minutes
# fast: from the Debian package `faketime`, installed only when missing (the test skips, saying
# so, without it).
if [[ -e /usr/lib/$(uname -m)-linux-gnu/faketime/libfaketime.so.1 ]]; then
  echo "==> libfaketime: installed"
else
  echo "==> libfaketime: apt-get install faketime"
  sudo_=""; [[ $(id -u) -eq 0 ]] || sudo_="sudo"
  $sudo_ apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq --no-install-recommends faketime
fi

echo "==> cargo fmt --all -- --check"
cargo fmt --all -- --check

echo "==> cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

echo "==> cargo test --workspace $*"
cargo test --workspace "$@"
