"""Rate limits in Redis, shared by every metering replica: one atomic script per admission.

Each scope's window is three keys: `w`, a sorted set of the reservations admitted in the last
minute (scored by admission time, ms), `t`, a hash of the tokens each counts for plus their
`_total`, and `c`, a sorted set of the reservations in flight scored by when their concurrency
lease ends. `ADMIT` prunes, checks and records every scope of a request in one EVALSHA: one
round trip, and no other admission can interleave. The clock is Redis's own (`TIME`), so the
replicas' clocks do not matter; tests may pass a clock instead.

Redis Cluster: a script may touch only keys of one hash slot, so every key carries the
organization as its hash tag (`sluice:rl:{org_1}:key:key_ab12:w`). All the scopes a request
counts in (its key, its project, its organization and the organization's plan) belong to one
organization, so one admission is one slot, and organizations spread over the shards. The cost:
one organization's admissions are served by one shard (measured here at about 7,000 four-scope
admissions per second on one Redis core; see docs/SCALING.md).

When Redis cannot be reached, admission fails closed (`LimiterUnavailable`, which metering
answers with UNAVAILABLE and the edge with 503): a request is never served unlimited. Settling
and expiring a reservation write the ledger first and correct Redis afterwards, best effort: if
that fails, the window entry leaves within a minute and the concurrency lease ends by itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from services.metering.ratelimit import (
    WINDOW_MS,
    Limiter,
    LimiterUnavailable,
    Limits,
    RateLimitState,
    Scope,
    WindowView,
    refusal,
    state,
)

log = logging.getLogger(__name__)

# KEYS: w, t, c of each scope. ARGV: now_ms ("" = Redis TIME), reservation id, tokens,
# lease_ms, window_ms, record ("1" admits, "0" only looks), then rpm, tpm, max_concurrent of
# each scope. Returns {admitted (0/1), then per scope: requests, tokens, inflight, reset_ms,
# rpm_wait_ms, tpm_wait_ms}, the views before recording. The refusal rule is
# ratelimit.breaks(). Window keys outlive their last entry by a second, lease sets theirs by a
# window, then Redis drops them by itself. (Increments skip zero: Lua writes -0 as "-0", which
# HINCRBY refuses.) HMGET/HDEL take their fields as arguments: pruning in
# chunks of 1000 stays under Lua's stack limit.
ADMIT = """
local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
else
  now = tonumber(ARGV[1])
end
local rid, n = ARGV[2], tonumber(ARGV[3])
local lease, window, record = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6] == '1'
local chunk = 1000
local out = {1}
local refused = false
for i = 0, #KEYS / 3 - 1 do
  local w, t, c = KEYS[3 * i + 1], KEYS[3 * i + 2], KEYS[3 * i + 3]
  local rpm, tpm = tonumber(ARGV[7 + 3 * i]), tonumber(ARGV[8 + 3 * i])
  local conc = tonumber(ARGV[9 + 3 * i])
  local horizon = now - window
  local gone = redis.call('ZRANGEBYSCORE', w, '-inf', horizon)
  for s = 1, #gone, chunk do
    local part = {unpack(gone, s, math.min(s + chunk - 1, #gone))}
    local sum = 0
    for _, v in ipairs(redis.call('HMGET', t, unpack(part))) do
      sum = sum + (tonumber(v) or 0)
    end
    redis.call('HDEL', t, unpack(part))
    if sum ~= 0 then redis.call('HINCRBY', t, '_total', -sum) end
  end
  redis.call('ZREMRANGEBYSCORE', w, '-inf', horizon)
  redis.call('ZREMRANGEBYSCORE', c, '-inf', now)
  local used = redis.call('ZCARD', w)
  local total = 0
  if used > 0 then total = tonumber(redis.call('HGET', t, '_total')) or 0 end
  local inflight = redis.call('ZCARD', c)
  local reset, rpm_wait, tpm_wait = 0, 0, 0
  if used > 0 then
    local oldest = redis.call('ZRANGE', w, 0, 0, 'WITHSCORES')
    reset = math.max(0, tonumber(oldest[2]) + window - now)
  end
  if rpm > 0 and used >= rpm then
    local at = redis.call('ZRANGE', w, used - rpm, used - rpm, 'WITHSCORES')
    rpm_wait = tonumber(at[2]) + window - now
  end
  if tpm > 0 and total + n > tpm then
    tpm_wait = window
    local excess = total + n - tpm
    local entries = redis.call('ZRANGE', w, 0, -1, 'WITHSCORES')
    for e = 1, #entries, 2 do
      excess = excess - (tonumber(redis.call('HGET', t, entries[e])) or 0)
      if excess <= 0 then
        tpm_wait = tonumber(entries[e + 1]) + window - now
        break
      end
    end
  end
  if (rpm > 0 and used + 1 > rpm) or (tpm > 0 and total + n > tpm)
      or (conc > 0 and inflight + 1 > conc) then
    refused = true
  end
  for _, v in ipairs({used, total, inflight, reset, rpm_wait, tpm_wait}) do
    out[#out + 1] = v
  end
end
if refused or not record then
  out[1] = 0
  return out
end
for i = 0, #KEYS / 3 - 1 do
  local w, t, c = KEYS[3 * i + 1], KEYS[3 * i + 2], KEYS[3 * i + 3]
  redis.call('ZADD', w, now, rid)
  redis.call('HSET', t, rid, n)
  redis.call('HINCRBY', t, '_total', n)
  redis.call('ZADD', c, now + lease, rid)
  redis.call('PEXPIRE', w, window + 1000)
  redis.call('PEXPIRE', t, window + 1000)
  redis.call('PEXPIRE', c, lease + window)
end
return out
"""

# KEYS: w, t, c of each scope. ARGV: reservation id, mode ("settle", "release" or "undo"),
# actual tokens (settle). Settle corrects the tokens an entry still in its window counts for
# and ends the lease; release only ends the lease; undo also takes the entry out of the window.
FINISH = """
local rid, mode, actual = ARGV[1], ARGV[2], tonumber(ARGV[3])
for i = 0, #KEYS / 3 - 1 do
  local w, t, c = KEYS[3 * i + 1], KEYS[3 * i + 2], KEYS[3 * i + 3]
  if mode ~= 'release' then
    local old = tonumber(redis.call('HGET', t, rid))
    if old then
      if mode == 'settle' then
        redis.call('HSET', t, rid, actual)
        if actual ~= old then redis.call('HINCRBY', t, '_total', actual - old) end
      else
        redis.call('HDEL', t, rid)
        if old ~= 0 then redis.call('HINCRBY', t, '_total', -old) end
        redis.call('ZREM', w, rid)
      end
    end
  end
  redis.call('ZREM', c, rid)
end
return 1
"""

# KEYS: c of each scope. ARGV: now_ms ("" = Redis TIME), reservation id, lease_ms, window_ms.
# Extends leases that have not ended; returns how many scopes held one.
RENEW = """
local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
else
  now = tonumber(ARGV[1])
end
local rid, lease, window = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local renewed = 0
for _, c in ipairs(KEYS) do
  local ends = tonumber(redis.call('ZSCORE', c, rid))
  if ends and ends > now then
    redis.call('ZADD', c, now + lease, rid)
    redis.call('PEXPIRE', c, lease + window)
    renewed = renewed + 1
  end
end
return renewed
"""


def connect(url: str, *, cluster: bool = False, timeout_s: float = 1.0) -> Any:
    """An asyncio client for `url` that fails fast (`timeout_s` to connect and to answer), so an
    unreachable Redis refuses admissions at once instead of holding them. A call that fails on a
    connection is tried once more on a fresh one: after Redis restarts, the pooled connections
    are stale, and the first call on each would otherwise fail although Redis is back."""
    options: dict[str, Any] = {
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
        "retry": Retry(NoBackoff(), 1),
    }
    if cluster:
        return redis.RedisCluster.from_url(url, **options)
    return redis.Redis.from_url(url, **options)


class RedisLimiter(Limiter):
    """The windows in Redis (`client`: `connect()`'s), under keys starting with `prefix`.

    `clock` (unix seconds) replaces Redis's own clock; only tests pass one.
    """

    def __init__(
        self, client: Any, *, prefix: str = "sluice", clock: Callable[[], float] | None = None
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._clock = clock
        # Loaded into Redis once and called by digest (EVALSHA); reloaded if Redis forgot it.
        self._admit = client.register_script(ADMIT)
        self._finish = client.register_script(FINISH)
        self._renew = client.register_script(RENEW)

    def keys(self, org_id: str, scope: str, scope_id: str) -> list[str]:
        """The scope's three keys; the organization is their hash tag (one slot per org)."""
        base = f"{self._prefix}:rl:{{{org_id}}}:{scope}:{scope_id}"
        return [f"{base}:w", f"{base}:t", f"{base}:c"]

    def _now_arg(self) -> str:
        return "" if self._clock is None else str(int(self._clock() * 1000))

    async def _call(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        try:
            return await script(keys=keys, args=args)
        except (RedisError, OSError) as exc:
            raise LimiterUnavailable(f"Redis: {exc.__class__.__name__}: {exc}") from None

    async def _views(
        self, org_id: str, limits: Sequence[Limits], tokens: int, lease_ms: int, record: bool
    ) -> tuple[bool, list[WindowView]]:
        keys: list[str] = []
        args: list[Any] = [self._now_arg(), "", tokens, lease_ms, WINDOW_MS, int(record)]
        for lim in limits:
            keys += self.keys(org_id, lim.scope, lim.scope_id)
            args += [lim.rpm, lim.tpm, lim.max_concurrent]
        return await self._run_admit(keys, args)

    async def _run_admit(self, keys: list[str], args: list[Any]) -> tuple[bool, list[WindowView]]:
        out = [int(v) for v in await self._call(self._admit, keys, args)]
        views = [WindowView(*out[i : i + 6]) for i in range(1, len(out), 6)]
        return bool(out[0]), views

    async def acquire(
        self,
        reservation_id: str,
        org_id: str,
        limits: Sequence[Limits],
        tokens: int,
        lease_ms: int,
    ) -> RateLimitState:
        active = [lim for lim in limits if lim.active]
        if not active:
            return RateLimitState()
        keys: list[str] = []
        args: list[Any] = [self._now_arg(), reservation_id, tokens, lease_ms, WINDOW_MS, 1]
        for lim in active:
            keys += self.keys(org_id, lim.scope, lim.scope_id)
            args += [lim.rpm, lim.tpm, lim.max_concurrent]
        admitted, views = await self._run_admit(keys, args)
        if not admitted:
            refused = refusal(active, views, tokens)
            assert refused is not None, "the script and ratelimit.breaks() disagree"
            raise refused
        return state(active, [view.recorded(tokens) for view in views])

    async def state(self, org_id: str, limits: Sequence[Limits]) -> RateLimitState:
        active = [lim for lim in limits if lim.active]
        if not active:
            return RateLimitState()
        _, views = await self._views(org_id, active, 0, 0, record=False)
        return state(active, views)

    async def _end(
        self, reservation_id: str, org_id: str, scopes: Sequence[Scope], mode: str, actual: int
    ) -> None:
        keys = [k for scope, scope_id in scopes for k in self.keys(org_id, scope, scope_id)]
        await self._call(self._finish, keys, [reservation_id, mode, actual])

    async def settle(
        self, reservation_id: str, org_id: str, scopes: Sequence[Scope], actual_tokens: int
    ) -> None:
        await self._end(reservation_id, org_id, scopes, "settle", actual_tokens)

    async def release(self, reservation_id: str, org_id: str, scopes: Sequence[Scope]) -> None:
        await self._end(reservation_id, org_id, scopes, "release", 0)

    async def undo(self, reservation_id: str, org_id: str, scopes: Sequence[Scope]) -> None:
        await self._end(reservation_id, org_id, scopes, "undo", 0)

    async def renew(
        self, reservation_id: str, org_id: str, scopes: Sequence[Scope], lease_ms: int
    ) -> None:
        keys = [self.keys(org_id, scope, scope_id)[2] for scope, scope_id in scopes]
        await self._call(self._renew, keys, [self._now_arg(), reservation_id, lease_ms, WINDOW_MS])

    async def recover(self, inflight: Iterable[tuple[str, str, Sequence[Scope]]]) -> int:
        """Nothing to recount: the leases live in Redis and outlast any metering process.

        (Re-adding leases from the database on start would race with another replica settling
        them meanwhile, and leave slots held that no request holds.)
        """
        return 0

    async def compact(self) -> None:
        """Redis drops idle windows itself: every key expires a little after its last entry."""

    async def close(self) -> None:
        await self._client.aclose()
