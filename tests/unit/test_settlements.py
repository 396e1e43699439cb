"""Settling outlives the request that started it, and shutdown says what it could not wait
for."""

from __future__ import annotations

import asyncio
import logging

import pytest

from sidecar.stores.settlements import Settlements


async def test_a_cancelled_starter_does_not_cancel_its_settlement():
    settlements = Settlements()
    written: list[str] = []

    async def books() -> None:
        await asyncio.sleep(0.05)
        written.append("usage")

    async def handler() -> None:
        await asyncio.shield(settlements.start(books()))

    request = asyncio.create_task(handler())
    await asyncio.sleep(0.01)
    request.cancel()  # the app went away
    with pytest.raises(asyncio.CancelledError):
        await request
    await settlements.drain(grace=1.0)
    assert written == ["usage"]
    assert len(settlements) == 0


async def test_drain_gives_up_after_its_grace_and_says_so(caplog: pytest.LogCaptureFixture):
    settlements = Settlements()
    settlements.start(asyncio.sleep(30))
    with caplog.at_level(logging.ERROR, "sidecar"):
        await settlements.drain(grace=0.05)
    assert len(settlements) == 0
    assert any("1 request(s) still settling" in r.getMessage() for r in caplog.records)


async def test_a_failing_settlement_is_logged_not_lost(caplog: pytest.LogCaptureFixture):
    settlements = Settlements()

    async def broken() -> None:
        raise RuntimeError("bug")

    with caplog.at_level(logging.ERROR, "sidecar"):
        await settlements.start(broken())
    assert any("usage or spend may not be recorded" in r.getMessage() for r in caplog.records)
