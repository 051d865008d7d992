#!/usr/bin/env bash
# Makes Prometheus (and promtool) available for the dashboard tests and
# prints the directory holding both. Order: $CASTELLAN_TEST_PROMETHEUS_DIR;
# `prometheus` on PATH; Debian's `prometheus` package, installed when we may.
# No Prometheus means exit 1 and a reason: the tests never skip it.
set -euo pipefail

log() { echo "ensure-prometheus: $*" >&2; }
both_in() { [ -x "$1/prometheus" ] && [ -x "$1/promtool" ]; }

if [ -n "${CASTELLAN_TEST_PROMETHEUS_DIR:-}" ]; then
  both_in "$CASTELLAN_TEST_PROMETHEUS_DIR" || { log "no prometheus and promtool in $CASTELLAN_TEST_PROMETHEUS_DIR"; exit 1; }
  echo "$CASTELLAN_TEST_PROMETHEUS_DIR"; exit 0
fi
if command -v prometheus >/dev/null 2>&1; then
  dir=$(dirname "$(command -v prometheus)")
  if both_in "$dir"; then echo "$dir"; exit 0; fi
fi
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  log "installing Debian's prometheus package"
  # The package's service is not started (no init here, and none is wanted):
  # each test starts its own Prometheus on loopback.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus >&2 \
    || { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus >&2; }
  both_in /usr/bin && { echo /usr/bin; exit 0; }
fi
log "Prometheus is needed for the dashboard tests and cannot be installed here (need root and apt-get)."
log "Install it and set CASTELLAN_TEST_PROMETHEUS_DIR to the directory holding prometheus and promtool."
exit 1
