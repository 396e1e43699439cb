"""Waiting for something that happens in the background (a reload, a job, a webhook)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def eventually(check: Callable[[], Awaitable[T | None]], within: float = 5.0) -> T:
    """Poll `check` until it returns something truthy, and return that; fail if that takes
    over `within` seconds."""
    start = time.monotonic()
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() - start > within:
            raise AssertionError(f"no effect within {within}s")
        await asyncio.sleep(0.02)
