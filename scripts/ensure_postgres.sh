#!/usr/bin/env bash
# Prints a DSN of a PostgreSQL server the tests may create databases on, starting one if needed:
# the machine's own cluster when it is merely stopped, else a throwaway server from the installed
# binaries under var/pg (trust auth, loopback only).
set -euo pipefail
host=127.0.0.1
if [ -n "${SLUICE_TEST_PG_DSN:-}" ]; then echo "$SLUICE_TEST_PG_DSN"; exit 0; fi
if pg_isready -q -h "$host" -p 5432 2>/dev/null; then
  echo "postgresql://postgres@$host:5432/postgres"; exit 0
fi
if command -v pg_ctlcluster >/dev/null 2>&1; then
  for v in $(ls /etc/postgresql 2>/dev/null); do
    pg_ctlcluster --skip-systemctl-redirect "$v" main start >&2 2>/dev/null || true
  done
  for _ in $(seq 1 20); do
    if pg_isready -q -h "$host" -p 5432; then echo "postgresql://postgres@$host:5432/postgres"; exit 0; fi
    sleep 0.5
  done
fi
bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
[ -n "$bindir" ] || { echo "no PostgreSQL binaries found" >&2; exit 1; }
dir="$(pwd)/var/pg"; port=55432
run_as=()
[ "$(id -u)" = 0 ] && run_as=(runuser -u postgres --)
if ! pg_isready -q -h "$host" -p "$port" 2>/dev/null; then
  if [ ! -f "$dir/PG_VERSION" ]; then
    mkdir -p "$dir"; [ "$(id -u)" = 0 ] && chown postgres "$dir"
    "${run_as[@]}" "$bindir/initdb" -D "$dir" -U postgres --auth=trust >&2
  fi
  "${run_as[@]}" "$bindir/pg_ctl" -D "$dir" -o "-p $port -k /tmp -c listen_addresses=$host" -l "$dir/log" -w start >&2
fi
echo "postgresql://postgres@$host:$port/postgres"
