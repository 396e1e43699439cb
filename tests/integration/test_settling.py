"""An answer that was produced is accounted, whatever the app does after: apps that close the
connection as soon as they have read the answer (curl does), apps that leave a stream half
way, and a sidecar stopped right after answering — with the state on a real Redis 30 ms
away (a delaying TCP proxy in front of it), where the books take longest to write."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.support.delay_proxy import DelayProxy
from tests.support.redis import RedisServer
from tests.support.sidecar import Sidecars
from tests.support.upstream import FakeOpenAI
from tests.support.wait import eventually

# The fake upstream reports 7 prompt and 3 completion tokens: at these prices an answer
# costs 0.013 USD, and with max_tokens 10 its budget hold is 0.027 USD.
COST = 0.013


@pytest.fixture
async def slow_redis(redis_server: RedisServer) -> AsyncIterator[DelayProxy]:
    proxy = await DelayProxy(redis_server.port, delay=0.03).start()
    yield proxy
    await proxy.stop()


def policy(upstream: FakeOpenAI, redis_url: str, *, budget_usd: float = 1.0) -> str:
    return f"""
        providers:
          main: {{type: openai, base_url: "{upstream.base_url}", timeout: 5s}}
        models:
          a: {{provider: main, name: up-a, price: {{input: 1000, output: 2000}}}}
        routes:
          r: {{targets: [a], timeout: 5s}}
        state: {{backend: redis, url: "{redis_url}"}}
        limits:
          one-at-a-time: {{scope: global, max_concurrent: 1}}
        budgets:
          cap: {{scope: team, limit_usd: {budget_usd}, window: day}}
        """


BODY = {"model": "r", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}


async def usage_of(ops_port: int, scope: str, value: str) -> dict[str, Any] | None:
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"http://127.0.0.1:{ops_port}/usage", params={"scope": scope, "window": "day"}
        ) as r,
    ):
        assert r.status == 200
        rows = {row["value"]: row for row in (await r.json())["rows"]}
    return rows.get(value)


async def test_an_app_closing_after_each_answer_has_every_answer_accounted(
    sidecars: Sidecars, upstream: FakeOpenAI, slow_redis: DelayProxy
):
    # Settled holds leave room for all five (4 x 0.013 + 0.027 < 0.1); holds left standing
    # would not (3 x 0.027 + 0.027 > 0.1), and neither would a slot never given back.
    sc = await sidecars.start(policy(upstream, slow_redis.url, budget_usd=0.1))
    n = 5
    url = f"http://127.0.0.1:{sc.port}/v1/chat/completions"
    # One connection per request, closed by the client as soon as it has read the answer.
    closing = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=closing) as client:
        for i in range(n):
            async with client.post(url, json=BODY, headers={"x-sidecar-team": "t"}) as r:
                assert r.status == 200, (i, await r.text())
                await r.read()

    async def all_recorded() -> dict[str, Any] | None:
        row = await usage_of(sc.ops_port, "team", "t")
        return row if row is not None and row["requests"] == n else None

    row = await eventually(all_recorded, within=5.0)
    assert row["cost_usd"] == pytest.approx(n * COST)
    assert row["budgets"][0]["remaining_usd"] == pytest.approx(0.1 - n * COST)
    assert len(upstream.calls()) == n


async def test_stopping_right_after_an_answer_still_records_it(
    sidecars: Sidecars, upstream: FakeOpenAI, redis_server: RedisServer
):
    """The app has its answer and has gone; SIGTERM comes while its books are still on their
    way to a Redis 80 ms away: shutdown waits for them before it closes the store."""
    far = await DelayProxy(redis_server.port, delay=0.08).start()
    try:
        text = policy(upstream, far.url)
        first = await sidecars.start(text)
        url = f"http://127.0.0.1:{first.port}/v1/chat/completions"
        closing = aiohttp.TCPConnector(force_close=True)  # gone as soon as it has the answer
        async with (
            aiohttp.ClientSession(connector=closing) as client,
            client.post(url, json=BODY, headers={"x-sidecar-team": "t"}) as r,
        ):
            assert r.status == 200
        await first.stop()
        sidecars.started.remove(first)
    finally:
        await far.stop()
    second = await sidecars.start(policy(upstream, redis_server.url))  # on the same Redis
    row = await usage_of(second.ops_port, "team", "t")
    assert row is not None
    assert (row["requests"], row["cost_usd"]) == (1, pytest.approx(COST))


async def test_apps_leaving_streams_half_way_leave_no_tracebacks_and_are_accounted(
    sidecars: Sidecars, upstream: FakeOpenAI, caplog: pytest.LogCaptureFixture
):
    """The relay writes while the app is going away: a write can find the connection
    closing before aiohttp cancels the handler (a few times in sixty, here)."""
    caplog.set_level(logging.DEBUG)
    sc = await sidecars.start(
        f"""
        providers:
          main: {{type: openai, base_url: "{upstream.base_url}", timeout: 5s}}
        models:
          a: {{provider: main, name: up-a, price: {{input: 1000, output: 2000}}}}
        routes:
          r: {{targets: [a]}}
        state: {{backend: memory}}
        """
    )
    upstream.behave("up-a", reply=" ".join(["word"] * 1000))  # the relay is busy writing
    url = f"http://127.0.0.1:{sc.port}/v1/chat/completions"
    n = 60
    for _ in range(n):
        async with (
            aiohttp.ClientSession() as client,
            client.post(url, json={**BODY, "stream": True}) as r,
        ):
            assert r.status == 200
            await r.content.readline()  # the first event, then the app is gone
            r.close()

    async def recorded() -> dict[str, Any] | None:
        row = await usage_of(sc.ops_port, "route", "r")
        return row if row is not None and row["requests"] == n else None

    row = await eventually(recorded, within=5.0)
    assert row["output_tokens"] > 0  # what was relayed before each left, estimated
    tracebacks = [r for r in caplog.records if r.exc_info is not None]
    assert not tracebacks, [f"{r.getMessage()}: {r.exc_info[1]!r}" for r in tracebacks]
