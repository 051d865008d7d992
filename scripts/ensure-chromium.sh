#!/usr/bin/env bash
# Chromium, for the browser tests (passkeys through a virtual authenticator):
# prints the path of its binary. Order: $CASTELLAN_TEST_CHROMIUM (a binary
# the user names); Debian's /usr/bin/chromium; else Debian's package is
# installed (as root). A browser needs dozens of libraries, so it is
# installed, not unpacked as the other tools are; it runs no service. No
# browser means exit 1 and a reason: the tests never skip it.
set -euo pipefail
log() { echo "ensure-chromium: $*" >&2; }

if [ -n "${CASTELLAN_TEST_CHROMIUM:-}" ]; then
  [ -x "$CASTELLAN_TEST_CHROMIUM" ] || { log "$CASTELLAN_TEST_CHROMIUM (\$CASTELLAN_TEST_CHROMIUM) is not executable"; exit 1; }
  echo "$CASTELLAN_TEST_CHROMIUM"; exit 0
fi
bin=/usr/bin/chromium
if [ -x "$bin" ]; then echo "$bin"; exit 0; fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  log "the browser tests need Chromium: install Debian's chromium package (apt-get install chromium)"
  log "or set CASTELLAN_TEST_CHROMIUM to a Chromium binary"
  exit 1
fi
log "installing Debian's chromium package (apt-get install chromium)"
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y -q --no-install-recommends chromium >&2; then
  log "refreshing the package lists (apt-get update) to find chromium"
  apt-get update -q >&2
  apt-get install -y -q --no-install-recommends chromium >&2
fi
[ -x "$bin" ] || { log "chromium installed but $bin is missing"; exit 1; }
echo "$bin"
