#!/usr/bin/env bash
# Makes a PostgreSQL server available for the tests and prints its admin URL.
# $CASTELLAN_TEST_PG_URL when set (used as is, checked reachable); otherwise
# this checkout's own cluster in target/pg (trust auth, 127.0.0.1 only, no
# Unix socket), created on first use on a free port remembered in
# target/pg/port. A server on that port is used only once it says its data
# directory is ours: never another checkout's cluster nor the system's.
# Debian's postgresql package is installed when initdb is missing and we may,
# without starting or enabling its service. No server: exit 1 and a reason.
set -euo pipefail

log() { echo "ensure-postgres: $*" >&2; }

if [ -n "${CASTELLAN_TEST_PG_URL:-}" ]; then
  command -v psql >/dev/null 2>&1 || { log "psql is needed to check CASTELLAN_TEST_PG_URL"; exit 1; }
  psql -Xw "$CASTELLAN_TEST_PG_URL" -Atqc 'select 1' >/dev/null 2>&1 \
    || { log "CASTELLAN_TEST_PG_URL=$CASTELLAN_TEST_PG_URL is not reachable"; exit 1; }
  echo "$CASTELLAN_TEST_PG_URL"; exit 0
fi

bindir() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1; }
bin=$(bindir || true)
if [ -z "$bin" ] || [ ! -x "$bin/initdb" ]; then
  if ! command -v apt-get >/dev/null 2>&1 || [ "$(id -u)" != 0 ]; then
    log "initdb not found and it cannot be installed here (need root and apt-get)."
    log "Install PostgreSQL, or start a server and set CASTELLAN_TEST_PG_URL=postgres://user[:pass]@host:port/postgres."
    exit 1
  fi
  log "installing Debian's postgresql package as root (apt-get install postgresql):"
  log "  the tests need initdb and pg_ctl for a cluster of their own in target/pg."
  # policy-rc.d exiting 101 is Debian's way to keep a package's service from
  # starting during the install. Someone else's policy is left alone.
  policy=/usr/sbin/policy-rc.d
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod 755 "$policy"
    trap 'rm -f "$policy"' EXIT
  fi
  get() { DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >&2; }
  get || { apt-get update -q >&2 && get; }
  # The package enables postgresql.service, which would start the system
  # cluster on 5432 at the next boot: these tests do not want it.
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    log "disabling and stopping postgresql.service, which the package just enabled (systemctl disable --now postgresql)"
    systemctl disable --now postgresql >&2
  fi
  bin=$(bindir)
fi

root=$(cd "$(dirname "$0")/.." && pwd -P)
dir="$root/target/pg"
data="$dir/data"
url() { echo "postgres://postgres@127.0.0.1:$1/postgres"; }
# The server on port $1 is this checkout's cluster (asked, not assumed; -w:
# a server wanting a password is not ours, and nobody is prompted).
ours() {
  local d
  d=$(PGCONNECT_TIMEOUT=5 "$bin/psql" -Xw "$(url "$1")" -Atqc 'show data_directory' 2>/dev/null) || return 1
  [ "$(realpath -m -- "$d")" = "$(realpath -m -- "$data")" ]
}
# Nothing listens on 127.0.0.1:$1.
free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# A random free port below Linux's ephemeral range (32768-60999), where
# outgoing connections do not come and go.
pick() {
  local p
  for p in $(shuf -i 20000-29999 -n 100); do free "$p" && { echo "$p"; return; }; done
  log "no free port found in 20000-29999"; exit 1
}
# As the postgres user when we are root: PostgreSQL refuses to run as root.
run() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

# Already running? On the remembered port, or on the one it last started
# on (postmaster.opts records the command line; clusters made before
# target/pg/port existed have only that).
port=$(cat "$dir/port" 2>/dev/null || true)
last=$(sed -n 's/.*"-p" "\([0-9]*\)".*/\1/p' "$data/postmaster.opts" 2>/dev/null || true)
for p in $port $last; do
  if ours "$p"; then echo "$p" >"$dir/port"; url "$p"; exit 0; fi
done
port=${port:-$last}

mkdir -p "$dir"
if [ ! -s "$data/PG_VERSION" ]; then
  log "creating this checkout's cluster in $data"
  rm -rf "$data"; mkdir -p "$data"
  if [ "$(id -u)" = 0 ]; then chown -R postgres "$dir"; fi
  run "$bin/initdb" -D "$data" -A trust -U postgres >"$dir/initdb.log" 2>&1 \
    || { cat "$dir/initdb.log" >&2; log "initdb failed (as root it runs as the postgres user, who must reach $dir)"; exit 1; }
fi
if [ -n "$port" ] && ! free "$port"; then
  log "port $port is taken by a server that is not this checkout's cluster: choosing another"
  port=""
fi
# TCP on 127.0.0.1 only, no Unix socket (whose lock in /tmp another cluster
# on the same port would hold). Another process may take the port between
# the check and the start: retry.
for _ in 1 2 3; do
  [ -n "$port" ] || port=$(pick)
  log "starting this checkout's cluster on 127.0.0.1:$port (log: target/pg/log)"
  if run "$bin/pg_ctl" -D "$data" -l "$dir/log" -w start \
      -o "-p $port -c listen_addresses=127.0.0.1 -c unix_socket_directories=''" >&2 && ours "$port"; then
    echo "$port" >"$dir/port"; url "$port"; exit 0
  fi
  port=""
done
log "this checkout's cluster did not come up; see $dir/log"
exit 1
