"""Waiting in tests for what background tasks do: polls a condition, with an upper bound that
only turns a hang into a failure (nothing is measured)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

STEP_S = 0.01


async def until(condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
    for _ in range(int(timeout_s / STEP_S)):
        if condition():
            return
        await asyncio.sleep(STEP_S)
    raise AssertionError(f"still not true after {timeout_s}s")
