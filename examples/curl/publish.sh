#!/usr/bin/env bash
# Enqueue a Warren job over HTTP (`warren ingest`, docs/ingest.md). The job is accepted
# (202, with its id) only once RabbitMQ confirmed it.
#   WARREN_INGEST_URL=http://127.0.0.1:8080 WARREN_INGEST_TOKEN=... examples/curl/publish.sh
set -euo pipefail
url="${WARREN_INGEST_URL:-http://127.0.0.1:8080}"
curl -sS --fail-with-body -X POST "$url/v1/jobs/demo.sleep" \
  -H "Authorization: Bearer ${WARREN_INGEST_TOKEN:?set WARREN_INGEST_TOKEN}" \
  -H "Content-Type: application/json" \
  -H "Idempotency-Key: example-$(date +%s)" \
  -d '{"ms": 50}'
echo
