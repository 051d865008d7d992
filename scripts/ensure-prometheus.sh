#!/usr/bin/env bash
# Makes Prometheus (and promtool) available for the dashboard tests and
# prints the directory holding both. Order: $CASTELLAN_TEST_PROMETHEUS_DIR;
# `prometheus` on PATH; Debian's `prometheus` package unpacked into this
# checkout's target/tools/prometheus. The package is downloaded and unpacked,
# never installed: installing it would enable prometheus.service (a
# Prometheus on 0.0.0.0:9090), and each test starts its own on loopback.
# No Prometheus means exit 1 and a reason: the tests never skip it.
set -euo pipefail

log() { echo "ensure-prometheus: $*" >&2; }
both_in() { [ -x "$1/prometheus" ] && [ -x "$1/promtool" ]; }
# Both binaries start (an unpacked copy might lack a library).
both_run() { "$1/prometheus" --version >/dev/null 2>&1 && "$1/promtool" --version >/dev/null 2>&1; }

if [ -n "${CASTELLAN_TEST_PROMETHEUS_DIR:-}" ]; then
  both_in "$CASTELLAN_TEST_PROMETHEUS_DIR" || { log "no prometheus and promtool in $CASTELLAN_TEST_PROMETHEUS_DIR"; exit 1; }
  echo "$CASTELLAN_TEST_PROMETHEUS_DIR"; exit 0
fi
if command -v prometheus >/dev/null 2>&1; then
  dir=$(dirname "$(command -v prometheus)")
  if both_in "$dir"; then echo "$dir"; exit 0; fi
fi

root=$(cd "$(dirname "$0")/.." && pwd -P)
tools="$root/target/tools/prometheus"
bin="$tools/usr/bin"
if both_in "$bin" && both_run "$bin"; then echo "$bin"; exit 0; fi

if ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg-deb >/dev/null 2>&1; then
  log "Prometheus is needed for the dashboard tests and cannot be fetched here (need apt-get and dpkg-deb)."
  log "Install it and set CASTELLAN_TEST_PROMETHEUS_DIR to the directory holding prometheus and promtool."
  exit 1
fi
log "downloading Debian's prometheus package (apt-get download prometheus) and unpacking it into"
log "  target/tools/prometheus: nothing is installed, no service is enabled or started."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# As root apt drops to the _apt user to download: let it write there.
if [ "$(id -u)" = 0 ] && id _apt >/dev/null 2>&1; then chown _apt "$tmp"; fi
download() { (cd "$tmp" && apt-get download -q prometheus >&2); }
if ! download; then
  # Stale or missing package lists: refreshing them needs root.
  [ "$(id -u)" = 0 ] || { log "apt-get download failed and apt-get update needs root; run it, or set CASTELLAN_TEST_PROMETHEUS_DIR"; exit 1; }
  log "refreshing the package lists as root (apt-get update) to find the prometheus package"
  apt-get update -q >&2
  download
fi
rm -rf "$tools"; mkdir -p "$tools"
dpkg-deb -x "$tmp"/prometheus_*.deb "$tools"
both_in "$bin" && both_run "$bin" || { log "the unpacked prometheus or promtool in $bin does not run"; exit 1; }
log "prometheus and promtool are in $bin"
echo "$bin"
