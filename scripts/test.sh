#!/usr/bin/env bash
# The whole test suite, on SQLite and on PostgreSQL: unit tests, the black-box
# HTTP tests, the official clients (@supabase/auth-js, supabase-js and
# supabase-py for the README's examples), passkeys in Chromium, and the
# Grafana dashboards checked against a real Prometheus.
set -euo pipefail
cd "$(dirname "$0")/.."

# PostgreSQL: the server the user names, else this checkout's own cluster
# (never the system's, never another checkout's). Say which.
if [ -n "${CASTELLAN_TEST_PG_URL:-}" ]; then which="CASTELLAN_TEST_PG_URL"; else which=""; fi
CASTELLAN_TEST_PG_URL=$(scripts/ensure-postgres.sh)
export CASTELLAN_TEST_PG_URL
[ -n "$which" ] || which="this checkout's cluster in target/pg, port $(cat target/pg/port)"
echo "tests use PostgreSQL at $CASTELLAN_TEST_PG_URL ($which)"
# Prometheus and promtool, for the dashboards and alert rules.
CASTELLAN_TEST_PROMETHEUS_DIR=$(scripts/ensure-prometheus.sh)
export CASTELLAN_TEST_PROMETHEUS_DIR
echo "tests use prometheus and promtool from $CASTELLAN_TEST_PROMETHEUS_DIR"
# nginx, for the deployment test (three API processes behind a proxy).
CASTELLAN_TEST_NGINX_DIR=$(scripts/ensure-nginx.sh)
export CASTELLAN_TEST_NGINX_DIR
echo "tests use nginx from $CASTELLAN_TEST_NGINX_DIR"

# Chromium, for the passkey tests in a real browser.
CASTELLAN_TEST_CHROMIUM=$(scripts/ensure-chromium.sh)
export CASTELLAN_TEST_CHROMIUM
echo "tests use Chromium at $CASTELLAN_TEST_CHROMIUM"

command -v node >/dev/null 2>&1 || { echo "Node.js is required for tests/e2e (the official client)"; exit 1; }
(cd tests/e2e && npm ci --no-audit --no-fund --loglevel=error)
# supabase-py, for the README's Python example, and schemathesis, the fuzzer.
command -v python3 >/dev/null 2>&1 || { echo "Python 3 is required for the README's supabase-py example test"; exit 1; }
[ -x tests/e2e/.venv/bin/python ] || python3 -m venv tests/e2e/.venv
tests/e2e/.venv/bin/pip install --quiet --disable-pip-version-check -r tests/e2e/requirements.txt

cargo test --workspace "$@"
