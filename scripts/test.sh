#!/usr/bin/env bash
# The whole test suite, on SQLite and on PostgreSQL: unit tests, the black-box
# HTTP tests and the official @supabase/auth-js client.
set -euo pipefail
cd "$(dirname "$0")/.."

CASTELLAN_TEST_PG_URL=$(scripts/ensure-postgres.sh)
export CASTELLAN_TEST_PG_URL
echo "tests use PostgreSQL at $CASTELLAN_TEST_PG_URL"

command -v node >/dev/null 2>&1 || { echo "Node.js is required for tests/e2e (the official client)"; exit 1; }
(cd tests/e2e && npm ci --no-audit --no-fund --loglevel=error)

cargo test --workspace "$@"
