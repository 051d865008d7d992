#!/usr/bin/env bash
# nginx, for the deployment test (several API processes behind a proxy):
# prints its directory ($CASTELLAN_TEST_NGINX_DIR, PATH, or Debian's package
# unpacked into target/tools; see ensure-debian-tool.sh).
exec "$(dirname "$0")/ensure-debian-tool.sh" nginx CASTELLAN_TEST_NGINX_DIR nginx
