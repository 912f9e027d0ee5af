"""scripts/ensure_redis.sh prints the URL of a Redis that answers, or the one it is given."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import redis

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "ensure_redis.sh"


def _run(env: dict[str, str]) -> str:
    out = subprocess.run(
        ["bash", str(SCRIPT)], env=env, capture_output=True, text=True, check=True, timeout=300
    )
    return out.stdout.strip()


def test_a_given_url_is_printed_as_is() -> None:
    env = {**os.environ, "SLUICE_TEST_REDIS_URL": "redis://example.invalid:1/3"}
    assert _run(env) == "redis://example.invalid:1/3"


def test_the_printed_url_answers() -> None:
    env = {k: v for k, v in os.environ.items() if k != "SLUICE_TEST_REDIS_URL"}
    url = _run(env)
    client = redis.Redis.from_url(url, socket_connect_timeout=5)
    try:
        assert client.ping()
    finally:
        client.close()
