#!/usr/bin/env bash
# Prometheus and promtool, for the dashboard and alert tests: prints their
# directory ($CASTELLAN_TEST_PROMETHEUS_DIR, PATH, or Debian's package
# unpacked into target/tools; see ensure-debian-tool.sh).
exec "$(dirname "$0")/ensure-debian-tool.sh" prometheus CASTELLAN_TEST_PROMETHEUS_DIR prometheus promtool
