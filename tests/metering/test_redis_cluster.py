"""The Redis limiter on a real Redis Cluster: every script of an admission touches one slot (the
organization's hash tag), so admissions, settlements, undo and renewal run on any shard."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.crc import key_slot

from services.metering.ratelimit import Limits, request_scopes
from services.metering.redis_limits import RedisLimiter, connect
from services.metering.refusals import Refusal
from tests.metering.conftest import FakeClock
from tests.throwaway_redis import RedisCluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    started = RedisCluster(Path(tmp_path_factory.mktemp("cluster")))
    try:
        started.start()
        yield started
    finally:
        started.stop()


async def test_admissions_of_many_organizations_across_the_shards(
    cluster: RedisCluster, clock: FakeClock
) -> None:
    limiter = RedisLimiter(connect(cluster.url, cluster=True), prefix="c", clock=clock)
    orgs = [f"org_{i}" for i in range(12)]
    slots = {key_slot(limiter.keys(org, "org", org)[0].encode()) // (16384 // 3) for org in orgs}
    assert len(slots) > 1  # the organizations do land on different shards
    try:
        for org in orgs:
            scopes = request_scopes(org, f"proj_{org}", f"key_{org}")
            limits = [
                Limits("key", f"key_{org}", "key", rpm=2, tpm=1000, max_concurrent=1),
                Limits("project", f"proj_{org}", "project", rpm=10),
                Limits("org", org, "organization", tpm=5000),
                Limits("plan", org, "plan", max_concurrent=5),
            ]
            state = await limiter.acquire(f"res_{org}_1", org, limits, 300, 60_000)
            assert (state.remaining_requests, state.remaining_tokens) == (1, 700)
            with pytest.raises(Refusal):  # the key's one concurrency slot is taken
                await limiter.acquire(f"res_{org}_2", org, limits, 300, 60_000)
            await limiter.renew(f"res_{org}_1", org, scopes, 60_000)
            await limiter.settle(f"res_{org}_1", org, scopes, 100)
            state = await limiter.acquire(f"res_{org}_3", org, limits, 300, 60_000)
            assert (state.remaining_requests, state.remaining_tokens) == (0, 600)
            await limiter.undo(f"res_{org}_3", org, scopes)
            assert (await limiter.state(org, limits)).remaining_requests == 1
    finally:
        await limiter.close()
