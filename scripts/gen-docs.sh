#!/usr/bin/env bash
# Regenerates the references that come from the code:
#   docs/configuration.md  from the clap definitions (`warren reference config`)
#   docs/metrics.md        from warren_core::telemetry::CATALOGUE (`warren reference metrics`)
# tests/reference_docs.rs fails when a committed file differs from what the binary prints.
# Needs no services.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

cargo build --quiet --bin warren
target/debug/warren reference config >docs/configuration.md
target/debug/warren reference metrics >docs/metrics.md
echo "gen-docs: wrote docs/configuration.md and docs/metrics.md"
