#!/usr/bin/env bash
# Makes a PostgreSQL server available for the tests and prints its admin URL.
# Order: $CASTELLAN_TEST_PG_URL; the local server on 127.0.0.1:5432 (started
# through pg_ctlcluster when it is installed but down); a throwaway cluster in
# target/pg (installing Debian's postgresql package when it is missing and we
# may). It never silently goes without: no server means exit 1 and a reason.
set -euo pipefail

log() { echo "ensure-postgres: $*" >&2; }

reachable() {
  command -v psql >/dev/null 2>&1 && psql "$1" -Atqc 'select 1' >/dev/null 2>&1
}

if [ -n "${CASTELLAN_TEST_PG_URL:-}" ]; then
  reachable "$CASTELLAN_TEST_PG_URL" || { log "CASTELLAN_TEST_PG_URL=$CASTELLAN_TEST_PG_URL is not reachable"; exit 1; }
  echo "$CASTELLAN_TEST_PG_URL"; exit 0
fi

local_url="postgres://postgres@127.0.0.1:5432/postgres"
# CASTELLAN_TEST_PG_THROWAWAY=1 skips the local server (to exercise the fallback).
if [ -z "${CASTELLAN_TEST_PG_THROWAWAY:-}" ] && reachable "$local_url"; then echo "$local_url"; exit 0; fi

if [ -z "${CASTELLAN_TEST_PG_THROWAWAY:-}" ] && command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ] && [ -n "$(ls /etc/postgresql 2>/dev/null)" ]; then
  version=$(ls /etc/postgresql | sort -V | tail -n1)
  log "starting the local PostgreSQL $version cluster"
  pg_ctlcluster --skip-systemctl-redirect "$version" main start >&2 2>&1 || true
  for _ in $(seq 1 30); do
    if reachable "$local_url"; then echo "$local_url"; exit 0; fi
    sleep 1
  done
  log "the local cluster started but $local_url does not accept trust connections; trying a throwaway cluster"
fi

# A throwaway cluster of our own, with trust auth on a free port.
bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)
if [ -z "$bindir" ] || [ ! -x "$bindir/initdb" ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    log "installing Debian's postgresql package"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >&2 \
      || { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >&2; }
    bindir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)
  else
    log "no PostgreSQL server found and none can be installed here (need root and apt-get)."
    log "Start one and set CASTELLAN_TEST_PG_URL=postgres://user@host:port/postgres (trust or password in the URL)."
    exit 1
  fi
fi

root=$(cd "$(dirname "$0")/.." && pwd)
data="$root/target/pg/data"
port=55432
url="postgres://postgres@127.0.0.1:$port/postgres"
if reachable "$url"; then echo "$url"; exit 0; fi
run() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
mkdir -p "$root/target/pg"
if [ ! -s "$data/PG_VERSION" ]; then
  rm -rf "$data"; mkdir -p "$data"
  [ "$(id -u)" = 0 ] && chown -R postgres "$root/target/pg"
  run "$bindir/initdb" -D "$data" -A trust -U postgres >&2
fi
log "starting a throwaway cluster on port $port"
run "$bindir/pg_ctl" -D "$data" -o "-p $port -k /tmp -c listen_addresses=127.0.0.1" -l "$root/target/pg/log" -w start >&2
reachable "$url" || { log "the throwaway cluster did not come up; see target/pg/log"; exit 1; }
echo "$url"
