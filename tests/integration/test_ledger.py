"""The savings ledger through the HTTP path with the `openai` SDK: one request per case,
its saving checked in USD by hand against the prices below, in the response header
`x-sidecar-saved-usd` and in `/usage` (baseline, total and by lever). A lever that cost
more than it saved (a refined retry, a hedge, a cache write) shows as a negative saving.

Prices are USD per 1M tokens; the fake upstream reports 7 input and 3 output tokens per
answer unless a test says otherwise.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import openai
import pytest

from sidecar.app import Sidecar
from tests.support.anthropic_upstream import FakeAnthropic
from tests.support.sidecar import Sidecars
from tests.support.upstream import FakeOpenAI

IN, OUT = 7, 3
BIG = (3000 * IN + 15000 * OUT) / 1e6  # 0.066
SMALL = (1000 * IN + 4000 * OUT) / 1e6  # 0.019


def policy(openai_url: str, anthropic_url: str = "http://127.0.0.1:9", state: str = "") -> str:
    return f"""
        providers:
          main: {{type: openai, base_url: "{openai_url}"}}
          anth: {{type: anthropic, base_url: "{anthropic_url}", api_key: k}}
        models:
          big: {{provider: main, name: up-big, price: {{input: 3000, output: 15000}}}}
          small: {{provider: main, name: up-small, price: {{input: 1000, output: 4000}}}}
          cachey:
            provider: main
            name: up-cachey
            price: {{input: 2, output: 8, cached_input: 0.5}}
          claude:
            provider: anth
            name: claude-x
            price: {{input: 3, output: 15, cached_input: 0.3, cache_write: 3.75}}
          emb: {{provider: main, name: up-emb, price: {{input: 100}}}}
        schemas:
          thing: {{type: object, required: [a]}}
        cache:
          exact: {{mode: exact, scope: global{state and ", store: redis"}}}
          similar: {{mode: semantic, scope: global, semantic: {{model: emb, similarity: 0.9}}}}
        routes:
          cascade: {{targets: [small, big]}}        # baseline: the dearest target, big
          pinned: {{targets: [small], baseline: big}}
          provider-cache: {{targets: [cachey]}}
          anthropic: {{targets: [claude]}}
          cached: {{targets: [small, big], cache: exact}}
          semantic: {{targets: [big], cache: similar}}
          checked:
            targets: [big]
            output: {{schema: thing, on_invalid: {{retries: 1}}}}
          hedged:
            targets: [big, small]
            hedge: {{after: 50ms}}
        {state}
        """


def client(sc: Sidecar) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{sc.port}/v1", api_key="x", max_retries=0)


async def ask(
    sc: Sidecar | openai.AsyncOpenAI, model: str, content: str = "hello", user: str = "u"
) -> dict[str, str]:
    """One request; through `sc` when it is a client kept open (its connection stays up
    while the sidecar records the request), else on a client of its own."""
    if isinstance(sc, Sidecar):
        async with client(sc) as own:
            return await ask(own, model, content, user)
    raw = await sc.chat.completions.with_raw_response.create(
        model=model,
        messages=[{"role": "user", "content": content}],
        temperature=0,
        extra_headers={"x-sidecar-user": user},
    )
    raw.parse()
    return dict(raw.headers)


async def usage(sc: Sidecar, scope: str, value: str) -> dict[str, Any]:
    url = f"http://127.0.0.1:{sc.ops_port}/usage?scope={scope}&window=day"
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        rows = {row["value"]: row for row in (await r.json())["rows"]}
    return rows.get(value) or {"requests": 0}


def levers(row: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in row["saved_by_lever"].items() if v}


def saved_header(headers: dict[str, str]) -> float:
    return float(headers["x-sidecar-saved-usd"])


async def test_a_cheaper_target_saves_its_price_difference_against_the_baseline(
    sidecars: Sidecars, upstream: FakeOpenAI
):
    sc = await sidecars.start(policy(upstream.base_url))
    for route in ("cascade", "pinned"):  # the dearest target by default, or named
        headers = await ask(sc, route)
        assert headers["x-sidecar-model"] == "small"
        assert saved_header(headers) == pytest.approx(BIG - SMALL)  # 0.047
        row = await usage(sc, "route", route)
        assert row["cost_usd"] == pytest.approx(SMALL)
        assert row["baseline_usd"] == pytest.approx(BIG)
        assert row["saved_usd"] == pytest.approx(BIG - SMALL)
        assert levers(row) == {"selection": pytest.approx(BIG - SMALL)}


async def test_the_baseline_answering_saves_nothing(sidecars: Sidecars, upstream: FakeOpenAI):
    sc = await sidecars.start(policy(upstream.base_url))
    upstream.behave("up-small", status=500)  # the cascade falls back to big, its baseline
    headers = await ask(sc, "cascade")
    assert headers["x-sidecar-model"] == "big"
    assert saved_header(headers) == 0.0
    row = await usage(sc, "route", "cascade")
    assert (row["cost_usd"], row["baseline_usd"]) == (pytest.approx(BIG), pytest.approx(BIG))
    assert levers(row) == {}


async def test_openai_cached_tokens_are_the_prompt_cache_lever(
    sidecars: Sidecars, upstream: FakeOpenAI
):
    sc = await sidecars.start(policy(upstream.base_url))
    upstream.behave(
        "up-cachey",
        usage={
            "prompt_tokens": 2000,
            "completion_tokens": 10,
            "total_tokens": 2010,
            "prompt_tokens_details": {"cached_tokens": 1536},
        },
    )
    headers = await ask(sc, "provider-cache")
    # list: 2000 x 2 + 10 x 8 = 4080; paid: 464 x 2 + 1536 x 0.5 + 10 x 8 = 1776 (per 1M)
    assert float(headers["x-sidecar-cost-usd"]) == pytest.approx(1776e-6)
    assert saved_header(headers) == pytest.approx(2304e-6)
    row = await usage(sc, "route", "provider-cache")
    assert row["baseline_usd"] == pytest.approx(4080e-6)
    assert row["cached_tokens"] == 1536
    assert levers(row) == {"prompt_cache": pytest.approx(2304e-6)}


async def test_anthropic_cache_reads_save_and_cache_writes_cost(
    sidecars: Sidecars, upstream: FakeOpenAI, upstream_anthropic: FakeAnthropic
):
    sc = await sidecars.start(policy(upstream.base_url, upstream_anthropic.base_url))

    def cache(read: int, written: int) -> None:
        upstream_anthropic.behave(
            "claude-x",
            input_tokens=100,
            cache_read_input_tokens=read,
            cache_creation_input_tokens=written,
            output_tokens=20,
        )

    cache(read=1000, written=500)
    reads = await ask(sc, "anthropic", user="reader")
    # list: 1600 x 3 + 20 x 15 = 5100; paid: 100 x 3 + 1000 x 0.3 + 500 x 3.75 + 20 x 15 = 2775
    assert float(reads["x-sidecar-cost-usd"]) == pytest.approx(2775e-6)
    assert saved_header(reads) == pytest.approx(2325e-6)  # reads 2700 less writes 375
    row = await usage(sc, "user", "reader")
    assert row["baseline_usd"] == pytest.approx(5100e-6)
    assert levers(row) == {"prompt_cache": pytest.approx(2325e-6)}

    cache(read=0, written=1500)
    writes = await ask(sc, "anthropic", user="writer")
    assert saved_header(writes) == pytest.approx(-1125e-6)  # 1500 x (3.75 - 3): a loss
    row = await usage(sc, "user", "writer")
    assert levers(row) == {"prompt_cache": pytest.approx(-1125e-6)}
    assert row["cost_usd"] - row["baseline_usd"] == pytest.approx(1125e-6)


async def test_a_cache_hit_saves_the_baseline_price_of_the_stored_answer(
    sidecars: Sidecars, upstream: FakeOpenAI
):
    sc = await sidecars.start(policy(upstream.base_url))
    miss = await ask(sc, "cached", user="first")
    hit = await ask(sc, "cached", user="second")
    assert (miss["x-sidecar-cache"], hit["x-sidecar-cache"]) == ("miss", "hit")
    assert saved_header(miss) == pytest.approx(BIG - SMALL)  # small answered
    assert saved_header(hit) == pytest.approx(BIG)  # no call: big's price of the same tokens
    row = await usage(sc, "user", "second")
    assert (row["cost_usd"], row["baseline_usd"]) == (0.0, pytest.approx(BIG))
    assert levers(row) == {"cache": pytest.approx(BIG)}


async def test_a_semantic_lookup_costs_its_embedding_against_the_cache_lever(
    sidecars: Sidecars, upstream: FakeOpenAI
):
    sc = await sidecars.start(policy(upstream.base_url))
    upstream.vectors["What is the capital of France?"] = [1.0, 0.0, 0.0]
    upstream.vectors["Tell me the capital of France"] = [0.99, 0.1, 0.0]
    embedding = 100 * 1 / 1e6  # one token, as the fake counts one per input
    miss = await ask(sc, "semantic", "What is the capital of France?", user="first")
    assert miss["x-sidecar-cache"] == "miss"
    assert saved_header(miss) == pytest.approx(-embedding)  # big answered: only the lookup
    hit = await ask(sc, "semantic", "Tell me the capital of France", user="second")
    assert hit["x-sidecar-cache"] == "semantic-hit"
    assert saved_header(hit) == pytest.approx(BIG - embedding)
    first, second = await usage(sc, "user", "first"), await usage(sc, "user", "second")
    assert levers(first) == {"cache": pytest.approx(-embedding)}
    assert first["cost_usd"] == pytest.approx(BIG + embedding)
    assert levers(second) == {"cache": pytest.approx(BIG - embedding)}
    assert second["cost_usd"] == pytest.approx(embedding)


async def test_a_refined_retry_counts_against_the_saving(sidecars: Sidecars, upstream: FakeOpenAI):
    sc = await sidecars.start(policy(upstream.base_url))
    upstream.behave("up-big", replies=["not json", '{"a": 1}'])
    headers = await ask(sc, "checked")
    assert headers["x-sidecar-output"] == "repaired"
    assert float(headers["x-sidecar-cost-usd"]) == pytest.approx(2 * BIG)
    assert saved_header(headers) == pytest.approx(-BIG)  # the app would have paid one call
    row = await usage(sc, "route", "checked")
    assert row["baseline_usd"] == pytest.approx(BIG)
    assert levers(row) == {"retry": pytest.approx(-BIG)}


async def test_a_losing_hedge_counts_against_the_saving(sidecars: Sidecars, upstream: FakeOpenAI):
    sc = await sidecars.start(policy(upstream.base_url))
    upstream.behave("up-big", delay=2.0)  # no answer within 50ms: small races it and wins
    content = "x" * 40
    headers = await ask(sc, "hedged", content)
    assert headers["x-sidecar-model"] == "small"
    # The cancelled call to big is charged at the request's estimated input: 3 + 4 per
    # message + 40 characters / 4 = 17 tokens at big's 3000 per 1M. Small answering saved
    # its price difference against big, the route's baseline.
    hedge = 17 * 3000 / 1e6
    assert saved_header(headers) == pytest.approx(BIG - SMALL - hedge)
    row = await usage(sc, "route", "hedged")
    assert row["cost_usd"] == pytest.approx(SMALL + hedge)
    assert levers(row) == {
        "selection": pytest.approx(BIG - SMALL),
        "hedge": pytest.approx(-hedge),
    }


async def test_a_stream_records_its_saving_but_sends_no_header(
    sidecars: Sidecars, upstream: FakeOpenAI
):
    """A stream's headers leave before its usage arrives: the saving is in /usage only."""
    sc = await sidecars.start(policy(upstream.base_url))
    async with (
        client(sc) as own,
        own.chat.completions.with_streaming_response.create(
            model="pinned", messages=[{"role": "user", "content": "hi"}], stream=True
        ) as response,
    ):
        assert "x-sidecar-saved-usd" not in response.headers
        async for _ in response.iter_lines():
            pass
    row = await usage(sc, "route", "pinned")
    for _ in range(100):  # accounted just after the last event
        if row["requests"]:
            break
        await asyncio.sleep(0.02)
        row = await usage(sc, "route", "pinned")
    assert levers(row) == {"selection": pytest.approx(BIG - SMALL)}


async def test_replicas_sharing_redis_keep_one_ledger(
    sidecars: Sidecars, upstream: FakeOpenAI, redis_server: Any
):
    text = policy(upstream.base_url, state=f"state: {{backend: redis, url: '{redis_server.url}'}}")
    one, two = await sidecars.start(text), await sidecars.start(text)
    async with client(one) as to_one, client(two) as to_two:
        assert saved_header(await ask(to_one, "cached", user="a")) == pytest.approx(BIG - SMALL)
        hit = await ask(to_two, "cached", user="b")  # the answer one stored, shared
        assert hit["x-sidecar-cache"] == "hit"
        upstream.behave("up-big", replies=["not json", '{"a": 1}'])
        await ask(to_two, "checked", user="b")
        rows = [await usage(sc, "global", "*") for sc in (one, two)]
        for _ in range(100):  # each request is recorded just after its answer left
            if all(row["requests"] == 3 for row in rows):
                break
            await asyncio.sleep(0.02)
            rows = [await usage(sc, "global", "*") for sc in (one, two)]
    expected = {
        "cache": pytest.approx(BIG),
        "selection": pytest.approx(BIG - SMALL),
        "retry": pytest.approx(-BIG),
    }
    for row in rows:
        assert row["requests"] == 3
        assert row["cost_usd"] == pytest.approx(SMALL + 2 * BIG)
        assert row["baseline_usd"] == pytest.approx(3 * BIG)
        assert levers(row) == expected
