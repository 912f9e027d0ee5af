#!/usr/bin/env bash
# Prints the URL of a Redis server the tests may use, starting one if needed: the machine's own
# on 6379 when it answers, else a throwaway redis-server (Debian's package, installed with apt-get
# when missing) on a spare loopback port with its files under var/redis, keeping nothing on disk.
# Tests share the server: each keeps to a key prefix of its own.
set -euo pipefail
host=127.0.0.1
if [ -n "${SLUICE_TEST_REDIS_URL:-}" ]; then echo "$SLUICE_TEST_REDIS_URL"; exit 0; fi
answers() {
  # PING over plain TCP, so that no client is needed to tell whether a server answers.
  { exec 3<>"/dev/tcp/$host/$1"; } 2>/dev/null || return 1
  printf 'PING\r\n' >&3
  local reply=""
  read -r -t 2 reply <&3 || true
  exec 3<&- 3>&-
  [ "${reply%$'\r'}" = "+PONG" ]
}
if answers 6379; then echo "redis://$host:6379/0"; exit 0; fi
port=56379
if ! answers "$port"; then
  if ! command -v redis-server >/dev/null 2>&1; then
    echo "installing redis-server (Debian package)" >&2
    apt-get update >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server >&2
  fi
  dir="$(pwd)/var/redis"; mkdir -p "$dir"
  redis-server --port "$port" --bind "$host" --save "" --appendonly no --dir "$dir" \
    --daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/log" >&2
  for _ in $(seq 1 50); do answers "$port" && break; sleep 0.1; done
  answers "$port" || { echo "redis-server did not start; see $dir/log" >&2; exit 1; }
fi
echo "redis://$host:$port/0"
