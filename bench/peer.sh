#!/usr/bin/env bash
# The peer benchmark: a bare lapin consumer, `warren worker` and Celery drain the
# same jobs on the same broker; then the scheduler's due scan over 1M subscriptions.
# Not a CI test. Results and how to read them: docs/benchmarks.md, "Peer benchmark".
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: bench/peer.sh [options]

Builds warren (release), installs Celery into bench/.venv, then runs `warren bench --peer`
for demo.noop and for demo.sleep {"ms":5}: a bare lapin consumer, `warren worker` and Celery
(prefork, acks_late), each its own process, on quorum queues with the same
prefetch, persistent messages and publisher confirms. Prints, per workload, a table of
jobs/s, p50/p99 publish->finish latency, peak RSS and CPU per job, and the ratios
Warren/lapin and Warren/Celery. Then `warren bench-due` (1M subscriptions, 100k due).

Options (defaults in brackets; each also as the environment variable shown):
  --jobs N              demo.noop jobs drained per contender [20000] (NOOP_JOBS)
  --sleep-jobs N        demo.sleep jobs drained per contender [3000] (SLEEP_JOBS)
  --sleep-ms MS         how long demo.sleep sleeps [5] (SLEEP_MS)
  --latency-jobs N      jobs published at a steady rate for the latency figures [1000]
                        (LATENCY_JOBS)
  --noop-rate R         their rate for demo.noop, per second [200] (NOOP_RATE)
  --sleep-rate R        their rate for demo.sleep, per second [100] (SLEEP_RATE)
  --prefetch N          unacked deliveries per contender [256] (PREFETCH)
  --celery-noop C,...   Celery prefork concurrencies for demo.noop [2] (CELERY_NOOP)
  --celery-sleep C,...  Celery prefork concurrencies for demo.sleep [2,16] (CELERY_SLEEP)
  --rounds N            run both workloads N times [1] (ROUNDS)
  --lock FILE           run each measurement under `flock FILE` (WARREN_BENCH_LOCK)
  --no-celery           leave Celery out (no venv needed)
  --no-due              skip the scheduler's due scan
  -h, --help            this text

Needs RabbitMQ on $AMQP_URL and PostgreSQL on $DATABASE_URL (defaults: local; started with
scripts/services.sh if they do not answer), python3 with venv, and cargo. Everything the
benchmark creates (namespace <ns>-bench-peer-<pid>, its ledger rows, the Celery queue) is
removed at the end of each run.
EOF
}

CELERY_VERSION=5.7.0
NOOP_JOBS=${NOOP_JOBS:-20000}
SLEEP_JOBS=${SLEEP_JOBS:-3000}
SLEEP_MS=${SLEEP_MS:-5}
LATENCY_JOBS=${LATENCY_JOBS:-1000}
NOOP_RATE=${NOOP_RATE:-200}
SLEEP_RATE=${SLEEP_RATE:-100}
PREFETCH=${PREFETCH:-256}
CELERY_NOOP=${CELERY_NOOP:-2}
CELERY_SLEEP=${CELERY_SLEEP:-2,16}
ROUNDS=${ROUNDS:-1}
LOCK=${WARREN_BENCH_LOCK:-}
CELERY=1
DUE=1

while [[ $# -gt 0 ]]; do
  case "$1" in
    --jobs) NOOP_JOBS=$2; shift 2 ;;
    --sleep-jobs) SLEEP_JOBS=$2; shift 2 ;;
    --sleep-ms) SLEEP_MS=$2; shift 2 ;;
    --latency-jobs) LATENCY_JOBS=$2; shift 2 ;;
    --noop-rate) NOOP_RATE=$2; shift 2 ;;
    --sleep-rate) SLEEP_RATE=$2; shift 2 ;;
    --prefetch) PREFETCH=$2; shift 2 ;;
    --celery-noop) CELERY_NOOP=$2; shift 2 ;;
    --celery-sleep) CELERY_SLEEP=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --lock) LOCK=$2; shift 2 ;;
    --no-celery) CELERY=0; shift ;;
    --no-due) DUE=0; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "bench/peer.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

cd "$(dirname "$0")/.."
step() { echo "==> $*" >&2; }
measure() {
  if [[ -n "$LOCK" ]]; then
    step "waiting for $LOCK"
    flock "$LOCK" "$@"
  else
    "$@"
  fi
}

step "building warren (release)"
cargo build --release --quiet
WARREN=target/release/warren

if ! (exec 3<>/dev/tcp/127.0.0.1/5672 && exec 4<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; then
  step "RabbitMQ or PostgreSQL not answering locally: scripts/services.sh"
  scripts/services.sh
fi

CELERY_ARGS=()
if [[ $CELERY == 1 ]]; then
  VENV=bench/.venv
  if [[ "$("$VENV/bin/celery" --version 2>/dev/null | cut -d' ' -f1)" != "$CELERY_VERSION" ]]; then
    step "installing celery==$CELERY_VERSION into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "celery==$CELERY_VERSION"
  fi
  CELERY_ARGS=(--celery "$VENV/bin/celery" --celery-app bench/celery_peer.py)
fi
PEERS=lapin,worker
[[ $CELERY == 1 ]] && PEERS=lapin,worker,celery

echo "# warren peer benchmark, $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "commit:   $(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo ' (+ local changes)')"
echo "machine:  $(nproc) cores, $(free -g | awk '/^Mem:/ {print $2}') GiB, $(uname -r)"
echo "load:     $(cut -d' ' -f1-3 /proc/loadavg) (1, 5, 15 min) at the start"
echo "rabbitmq: $(rabbitmqctl version 2>/dev/null || echo '?')"
echo "postgres: $(psql "${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}" -tAc 'show server_version' 2>/dev/null || echo '?')"
if [[ $CELERY == 1 ]]; then
  echo "celery:   $("$VENV/bin/pip" freeze 2>/dev/null | grep -iE '^(celery|kombu|billiard|amqp)==' | tr '\n' ' ')"
  echo "python:   $("$VENV/bin/python" --version 2>&1)"
fi

for round in $(seq 1 "$ROUNDS"); do
  step "round $round/$ROUNDS: demo.noop, $NOOP_JOBS jobs per contender"
  measure "$WARREN" bench --peer "$PEERS" --jobs "$NOOP_JOBS" --sleep-ms 0 \
    --prefetch "$PREFETCH" --latency-jobs "$LATENCY_JOBS" --latency-rate "$NOOP_RATE" \
    --celery-concurrency "$CELERY_NOOP" "${CELERY_ARGS[@]}"
  step "round $round/$ROUNDS: demo.sleep ${SLEEP_MS} ms, $SLEEP_JOBS jobs per contender"
  measure "$WARREN" bench --peer "$PEERS" --jobs "$SLEEP_JOBS" --sleep-ms "$SLEEP_MS" \
    --prefetch "$PREFETCH" --latency-jobs "$LATENCY_JOBS" --latency-rate "$SLEEP_RATE" \
    --celery-concurrency "$CELERY_SLEEP" "${CELERY_ARGS[@]}"
done

if [[ $DUE == 1 ]]; then
  step "scheduler due scan: 1,000,000 subscriptions, 100,000 due"
  measure "$WARREN" bench-due --subscriptions 1000000 --due 100000
fi
echo "load:     $(cut -d' ' -f1-3 /proc/loadavg) (1, 5, 15 min) at the end"

if command -v rabbitmqctl >/dev/null; then
  left=$(rabbitmqctl list_queues name 2>/dev/null | grep -c -- '-bench-peer-' || true)
  if [[ "$left" != 0 ]]; then
    echo "warning: $left '-bench-peer-' queue(s) left on the broker (a run was interrupted?)" >&2
  fi
fi
