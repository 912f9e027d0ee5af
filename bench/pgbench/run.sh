#!/usr/bin/env bash
# Budget rows under contention, measured with pgbench against the real metering schema (migrated
# by services.metering's own Alembic history) on a throwaway database of the test server.
#   bench/pgbench/run.sh [seconds per run] [client counts...]     e.g. bench/pgbench/run.sh 10 1 8 32
# Prints one line per script and client count: transactions per second and mean latency.
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${1:-10}; shift || true
clients=("${@:-1 8 32}"); clients=(${clients[@]})
dsn=$(scripts/ensure_postgres.sh)
db="sluice_pgbench_$$"
psql "$dsn" -qc "CREATE DATABASE $db" >/dev/null
trap 'psql "$dsn" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null' EXIT
url="${dsn%/*}/$db"
PY=${PY:-.venv/bin/python}
"$PY" - "$url" <<'PYEOF'
import asyncio, sys
from sqlalchemy.engine import make_url
from services.common.db import create_engine, migrate
from services.metering.main import MIGRATIONS, VERSION_TABLE

async def main() -> None:
    engine = create_engine(make_url(sys.argv[1]).set(drivername="postgresql+asyncpg").render_as_string(hide_password=False))
    await migrate(engine, MIGRATIONS, VERSION_TABLE)
    await engine.dispose()

asyncio.run(main())
PYEOF
psql "$url" -q <<'SQL'
INSERT INTO budget_counters (scope, scope_id, period, period_start_ms, limit_tokens, used_tokens, reserved_tokens)
SELECT 'org', 'org_' || g, 'month', 0, 1000000000000, 0, 0 FROM generate_series(1, 10000) g
UNION ALL SELECT 'org', 'org_hot', 'month', 0, 1000000000000, 0, 0;
SQL
for script in reserve_hot reserve_spread settle_hot; do
  for c in "${clients[@]}"; do
    out=$(pgbench -n -M prepared -T "$seconds" -c "$c" -j "$(( c < 2 ? c : 2 ))" \
      -f "bench/pgbench/$script.sql" "$url" 2>&1)
    tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' <<<"$out")
    lat=$(sed -n 's/^latency average = \([0-9.]*\) ms/\1/p' <<<"$out")
    printf '%-15s clients=%-3s tps=%-10s latency_ms=%s\n' "$script" "$c" "$tps" "$lat"
  done
done
