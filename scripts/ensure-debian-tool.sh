#!/usr/bin/env bash
# Makes a tool from a Debian package available to the tests and prints the
# directory holding its binaries:
#   scripts/ensure-debian-tool.sh <package> <VARIABLE> <binary>...
# Order: $VARIABLE (a directory the user names); the binaries on PATH; the
# package unpacked into this checkout's target/tools/<package>. The package
# is downloaded and unpacked, never installed: installing would enable its
# service (a Prometheus on 0.0.0.0:9090, an nginx on port 80), and each test
# starts its own on loopback. No tool means exit 1 and a reason: the tests
# never skip it.
set -euo pipefail
package=$1 var=$2
shift 2
bins=("$@")

log() { echo "ensure-$package: $*" >&2; }
all_in() { for b in "${bins[@]}"; do [ -x "$1/$b" ] || return 1; done; }
# Every binary starts (an unpacked copy might lack a library).
all_run() { for b in "${bins[@]}"; do "$1/$b" -v >/dev/null 2>&1 || "$1/$b" --version >/dev/null 2>&1 || return 1; done; }

if [ -n "${!var:-}" ]; then
  all_in "${!var}" || { log "no ${bins[*]} in ${!var} (\$$var)"; exit 1; }
  echo "${!var}"; exit 0
fi
if command -v "${bins[0]}" >/dev/null 2>&1; then
  dir=$(dirname "$(command -v "${bins[0]}")")
  if all_in "$dir"; then echo "$dir"; exit 0; fi
fi

root=$(cd "$(dirname "$0")/.." && pwd -P)
tools="$root/target/tools/$package"
for bin in "$tools/usr/bin" "$tools/usr/sbin"; do
  if all_in "$bin" && all_run "$bin"; then echo "$bin"; exit 0; fi
done

if ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg-deb >/dev/null 2>&1; then
  log "$package is needed by the tests and cannot be fetched here (need apt-get and dpkg-deb)."
  log "Install it and set $var to the directory holding ${bins[*]}."
  exit 1
fi
log "downloading Debian's $package package (apt-get download $package) and unpacking it into"
log "  target/tools/$package: nothing is installed, no service is enabled or started."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# As root apt drops to the _apt user to download: let it write there.
if [ "$(id -u)" = 0 ] && id _apt >/dev/null 2>&1; then chown _apt "$tmp"; fi
download() { (cd "$tmp" && apt-get download -q "$package" >&2); }
if ! download; then
  # Stale or missing package lists: refreshing them needs root.
  [ "$(id -u)" = 0 ] || { log "apt-get download failed and apt-get update needs root; run it, or set $var"; exit 1; }
  log "refreshing the package lists as root (apt-get update) to find the $package package"
  apt-get update -q >&2
  download
fi
rm -rf "$tools"; mkdir -p "$tools"
dpkg-deb -x "$tmp"/"$package"_*.deb "$tools"
for bin in "$tools/usr/bin" "$tools/usr/sbin"; do
  if all_in "$bin" && all_run "$bin"; then log "${bins[*]} in $bin"; echo "$bin"; exit 0; fi
done
log "the unpacked ${bins[*]} do not run"
exit 1
