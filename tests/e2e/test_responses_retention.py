"""Stored responses are gone after the retention period: a stack whose metering keeps them for
three seconds (SLUICE_RESPONSES_RETENTION_S), on PostgreSQL, with the Anthropic stand-in (no
engine: no hosted model is asked for)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator

import asyncpg
import openai
import pytest

from tests.conftest import DEFAULT_PG_DSN
from tests.e2e.conftest import create_pg_database
from tests.e2e.processes import Services
from tests.e2e.providers import CLAUDE, client, provider_secret, script

RETENTION_S = 3.0


@pytest.fixture(scope="module")
def short(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Services, str]]:
    url, drop = create_pg_database(os.environ.get("SLUICE_TEST_PG_DSN", DEFAULT_PG_DSN))
    env = {"SLUICE_RESPONSES_RETENTION_S": str(RETENTION_S)}
    services = Services.create(tmp_path_factory.mktemp("retention"), url, env)
    try:
        services.start_fakes()
        for name in ("auth", "metering", "edge"):
            services.start(name)
        yield services, url
    finally:
        services.stop_all()
        drop()


async def stored_rows(url: str) -> int:
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        return int(await conn.fetchval("SELECT count(*) FROM stored_responses"))
    finally:
        await conn.close()


def test_a_stored_response_is_gone_after_the_retention_period(
    short: tuple[Services, str],
) -> None:
    services, url = short
    services.cli("orgs", "create", "keeper")
    services.cli(
        "providers", "add", "--org", "keeper", "--provider", "anthropic",
        "--api-key", provider_secret("anthropic"),
    )  # fmt: skip
    key = services.new_key("keeper", "k")
    script(services, "anthropic", reply="Noted.")
    with client(services, key) as c:
        kept = c.responses.create(model=CLAUDE, input="Remember this.")
        stored_at = time.monotonic()
        assert c.responses.retrieve(kept.id).output_text == "Noted."
        assert asyncio.run(stored_rows(url)) == 1
        time.sleep(max(0.0, RETENTION_S + 0.5 - (time.monotonic() - stored_at)))
        with pytest.raises(openai.NotFoundError):
            c.responses.retrieve(kept.id)
        with pytest.raises(openai.BadRequestError) as err:
            c.responses.create(model=CLAUDE, input="And?", previous_response_id=kept.id)
        assert err.value.code == "previous_response_not_found"
    # The sweeper (every quarter of the retention here) deletes the row itself.
    deadline = time.monotonic() + 10
    while asyncio.run(stored_rows(url)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert asyncio.run(stored_rows(url)) == 0
