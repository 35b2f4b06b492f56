#!/usr/bin/env bash
# Makes sure RabbitMQ and PostgreSQL accept connections, starting local ones that are down.
# Idempotent: when both are up it only reports that.
#
# Targets the host and port of AMQP_URL and DATABASE_URL when set, otherwise the defaults
# of the `warren` binary (RabbitMQ 127.0.0.1:5672, PostgreSQL 127.0.0.1:5432). Only a local
# host (127.0.0.1, localhost, ::1) is ever started; a remote one is only waited for.
# Starting works without Docker on a machine where the services are installed as Debian
# packages (pg_ctlcluster, rabbitmq-server), usually as root. With Docker use instead:
#   docker compose up -d rabbitmq postgres
#
# SERVICES_TIMEOUT (seconds, default 90) bounds the wait for each service.
set -euo pipefail

timeout_s="${SERVICES_TIMEOUT:-90}"

# Prints "host port" of a URL like scheme://user:pass@host:port/path (IPv6 in brackets).
host_port() {
    local url="$1" default_port="$2" rest host port
    rest="${url#*://}"
    rest="${rest%%/*}"
    rest="${rest%%\?*}"
    rest="${rest##*@}"
    if [[ "$rest" == \[* ]]; then
        host="${rest%%]*}"
        host="${host#[}"
        port="${rest#*]}"
        port="${port#:}"
    elif [[ "$rest" == *:* ]]; then
        host="${rest%%:*}"
        port="${rest##*:}"
    else
        host="$rest"
        port=""
    fi
    echo "${host:-127.0.0.1} ${port:-$default_port}"
}

is_local() {
    case "$1" in
        127.0.0.1 | localhost | ::1) return 0 ;;
        *) return 1 ;;
    esac
}

read -r amqp_host amqp_port < <(host_port "${AMQP_URL:-amqp://127.0.0.1:5672/%2f}" 5672)
read -r pg_host pg_port < <(host_port "${DATABASE_URL:-postgres://127.0.0.1:5432/warren}" 5432)

amqp_open() {
    timeout 1 bash -c "</dev/tcp/${amqp_host}/${amqp_port}" 2>/dev/null
}

# Calls "$1" until it succeeds or timeout_s passes, printing progress every 5 s.
wait_for() {
    local check="$1" what="$2" start now next_report
    start=$(date +%s)
    next_report=$((start + 5))
    until "$check"; do
        now=$(date +%s)
        if ((now - start >= timeout_s)); then
            echo "services: $what did not come up within ${timeout_s}s" >&2
            return 1
        fi
        if ((now >= next_report)); then
            echo "services: waiting for $what ($((now - start))s of ${timeout_s}s)"
            next_report=$((now + 5))
        fi
        sleep 1
    done
}

# ---------------------------------------------------------------- PostgreSQL
pg_ready() {
    pg_isready -q -h "$pg_host" -p "$pg_port"
}

if ! command -v pg_isready >/dev/null 2>&1; then
    cat >&2 <<EOF
services: pg_isready not found: PostgreSQL (>= 13) is not installed here.
  Install it (Debian/Ubuntu: apt-get install postgresql), or run it with Docker:
  docker compose up -d postgres
EOF
    exit 1
fi

if pg_ready; then
    echo "services: PostgreSQL is up on ${pg_host}:${pg_port}"
else
    set +e
    pg_isready -q -h "$pg_host" -p "$pg_port"
    pg_state=$?
    set -e
    # 1 = the server is starting (or shutting down): wait. 2 = nothing answers: start it.
    if [[ $pg_state -eq 2 ]] && is_local "$pg_host"; then
        if ! command -v pg_ctlcluster >/dev/null 2>&1 || [[ ! -d /etc/postgresql ]]; then
            cat >&2 <<EOF
services: PostgreSQL does not answer on ${pg_host}:${pg_port} and pg_ctlcluster is not
  available to start it. Start PostgreSQL yourself (or: docker compose up -d postgres).
EOF
            exit 1
        fi
        # shellcheck disable=SC2012 # directory names are version numbers
        pg_version=$(ls /etc/postgresql | sort -V | tail -n 1)
        echo "services: starting PostgreSQL ${pg_version} (pg_ctlcluster ${pg_version} main start)"
        pg_ctlcluster --skip-systemctl-redirect "$pg_version" main start ||
            echo "services: pg_ctlcluster reported an error; waiting in case it is already starting" >&2
    elif ! is_local "$pg_host"; then
        echo "services: PostgreSQL on ${pg_host}:${pg_port} is remote; waiting for it"
    fi
    wait_for pg_ready "PostgreSQL on ${pg_host}:${pg_port}"
    echo "services: PostgreSQL is up on ${pg_host}:${pg_port}"
fi

# ---------------------------------------------------------------- RabbitMQ
if amqp_open; then
    echo "services: RabbitMQ accepts connections on ${amqp_host}:${amqp_port}"
else
    if is_local "$amqp_host"; then
        if ! command -v rabbitmq-server >/dev/null 2>&1; then
            cat >&2 <<EOF
services: nothing listens on ${amqp_host}:${amqp_port} and rabbitmq-server is not installed.
  Install RabbitMQ (>= 3.10; Debian/Ubuntu: apt-get install rabbitmq-server), or run it with
  Docker: docker compose up -d rabbitmq
EOF
            exit 1
        fi
        if command -v rabbitmq-diagnostics >/dev/null 2>&1 &&
            rabbitmq-diagnostics -q ping >/dev/null 2>&1; then
            echo "services: the RabbitMQ node is running but not listening yet; waiting"
        else
            echo "services: starting RabbitMQ (rabbitmq-server -detached)"
            rabbitmq-server -detached
        fi
    else
        echo "services: RabbitMQ on ${amqp_host}:${amqp_port} is remote; waiting for it"
    fi
    wait_for amqp_open "RabbitMQ on ${amqp_host}:${amqp_port}"
    echo "services: RabbitMQ accepts connections on ${amqp_host}:${amqp_port}"
fi

# The port opens before every plugin and vhost is ready; await_startup waits for the rest.
if is_local "$amqp_host" && command -v rabbitmqctl >/dev/null 2>&1; then
    if rabbitmqctl -q -t "$timeout_s" await_startup >/dev/null 2>&1; then
        echo "services: RabbitMQ finished booting (rabbitmqctl await_startup)"
    else
        echo "services: rabbitmqctl await_startup failed (no permission for the Erlang cookie?);" \
            "the port is open, continuing" >&2
    fi
fi
