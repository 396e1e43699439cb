"""Response caching seen through the OpenAI SDK: exact keys, scopes, single-flight,
streaming replay, semantic hits with embeddings the test controls, and the controls."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiohttp
import openai
import pytest

from sidecar.app import Sidecar
from tests.support.sidecar import Sidecars
from tests.support.upstream import FakeOpenAI
from tests.support.wait import eventually

Q = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture
def make(sidecars: Sidecars, upstream: FakeOpenAI) -> Callable[..., object]:

    async def start(cache: str) -> Sidecar:
        return await sidecars.start(
            f"""
            providers:
              main: {{type: openai, base_url: "{upstream.base_url}"}}
            models:
              a: {{provider: main, name: up-a, price: {{input: 1000, output: 2000}}}}
              emb: {{provider: main, name: up-emb, price: {{input: 100}}}}
            cache:
              answers: {cache}
            routes:
              chat: {{targets: [a], cache: answers}}
            state: {{backend: memory}}
            """,
        )

    return start


def api(sc: Sidecar, **headers: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{sc.port}/v1",
        api_key="x",
        max_retries=0,
        default_headers=headers,
    )


async def ask(
    sc: Sidecar,
    messages: list[dict[str, str]] = Q,
    headers: dict[str, str] | None = None,
    **kw: object,
) -> tuple[str, dict[str, str]]:
    async with api(sc, **(headers or {})) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="chat", messages=messages, temperature=0, **kw
        )
        return raw.parse().choices[0].message.content or "", dict(raw.headers)


async def test_second_identical_request_is_a_hit_that_costs_nothing(make, upstream: FakeOpenAI):
    sc = await make("{mode: exact, ttl: 1m}")
    upstream.behave("up-a", reply="Paris")
    first, h1 = await ask(sc)
    second, h2 = await ask(sc)
    assert (first, second) == ("Paris", "Paris")
    assert (h1["x-sidecar-cache"], h2["x-sidecar-cache"]) == ("miss", "hit")
    assert len(upstream.calls("up-a")) == 1
    assert float(h1["x-sidecar-cost-usd"]) > 0
    assert "x-sidecar-cost-usd" not in h2 or float(h2["x-sidecar-cost-usd"]) == 0
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"http://127.0.0.1:{sc.ops_port}/usage?scope=route&window=day") as r,
    ):
        row = (await r.json())["rows"][0]
    assert row["requests"] == 2
    assert row["saved_usd"] == pytest.approx(row["cost_usd"])  # the hit saved what the miss cost


async def test_key_order_and_whitespace_do_not_cause_misses(make, upstream: FakeOpenAI):
    sc = await make("{mode: exact}")
    url = f"http://127.0.0.1:{sc.port}/v1/chat/completions"
    bodies = [
        b'{"model":"chat","temperature":0,"messages":[{"role":"user","content":"hi"}]}',
        b'{ "messages" : [ {"content": "hi", "role": "user"} ],\n'
        b' "temperature": 0, "model": "chat", "stream": false }',
        # What apps send per user or conversation says who asks, not what to answer.
        b'{"model":"chat","temperature":0,"messages":[{"role":"user","content":"hi"}],'
        b'"safety_identifier":"u-81","prompt_cache_key":"conv-7"}',
    ]
    seen = []
    async with aiohttp.ClientSession() as s:
        for body in bodies:
            async with s.post(url, data=body) as r:
                assert r.status == 200
                seen.append(r.headers["x-sidecar-cache"])
    assert seen == ["miss", "hit", "hit"]
    assert len(upstream.calls()) == 1


async def test_users_never_see_each_others_answers_by_default(make, upstream: FakeOpenAI):
    sc = await make("{mode: exact}")
    await ask(sc, headers={"x-sidecar-user": "alice"})
    _, h = await ask(sc, headers={"x-sidecar-user": "bob"})
    assert h["x-sidecar-cache"] == "miss"
    _, h = await ask(sc, headers={"x-sidecar-user": "alice"})
    assert h["x-sidecar-cache"] == "hit"


async def test_ttl_expiry(make, upstream: FakeOpenAI):
    sc = await make("{mode: exact, ttl: 300ms}")
    await ask(sc)
    await asyncio.sleep(0.4)
    _, h = await ask(sc)
    assert h["x-sidecar-cache"] == "miss"


async def test_any_temperature_is_cached_by_default_and_can_be_made_ineligible(
    make, upstream: FakeOpenAI
):
    """No temperature (1 for the provider) is the key's own parameter: a hit is an answer
    to this very request. `any_temperature: false` makes it ineligible, and says so."""
    sc = await make("{mode: exact}")
    async with api(sc) as client:
        seen = [
            (
                await client.chat.completions.with_raw_response.create(model="chat", messages=Q)
            ).headers["x-sidecar-cache"]
            for _ in range(2)
        ]
    assert seen == ["miss", "hit"]
    sc = await make("{mode: exact, any_temperature: false}")
    async with api(sc) as client:
        for _ in range(2):
            raw = await client.chat.completions.with_raw_response.create(
                model="chat", messages=Q, temperature=0.7
            )
            assert raw.headers["x-sidecar-cache"] == "ineligible"
            assert raw.headers["x-sidecar-cache-reason"] == "temperature"
    assert len(upstream.calls()) == 3


async def test_concurrent_identical_misses_make_one_upstream_call(make, upstream: FakeOpenAI):
    sc = await make("{mode: exact}")
    upstream.behave("up-a", reply="Paris", delay=0.3)
    results = await asyncio.gather(*(ask(sc) for _ in range(20)))
    assert {text for text, _ in results} == {"Paris"}
    assert len(upstream.calls("up-a")) == 1
    assert sorted(h["x-sidecar-cache"] for _, h in results).count("hit") == 19


async def test_a_leader_that_leaves_hands_the_flight_to_one_waiter(make, upstream: FakeOpenAI):
    """The first caller gives up (its call is cancelled, as every abandoned call is); one of
    the callers waiting on it asks instead, and the others wait on that one."""
    sc = await make("{mode: exact}")
    upstream.behave("up-a", reply="Paris", delay=1.5)
    url = f"http://127.0.0.1:{sc.port}/v1/chat/completions"
    body = {"model": "chat", "messages": Q, "temperature": 0}

    async def call(session: aiohttp.ClientSession) -> tuple[str, str]:
        async with session.post(url, json=body) as r:
            answer = await r.json()
            return answer["choices"][0]["message"]["content"], r.headers["x-sidecar-cache"]

    async def its_call_is_out() -> bool:
        return bool(upstream.calls("up-a"))

    async with aiohttp.ClientSession() as session:
        leaving = asyncio.create_task(call(session))
        await eventually(its_call_is_out)  # it leads the flight
        waiting = asyncio.gather(*(call(session) for _ in range(9)))
        await asyncio.sleep(0.4)  # they wait on it
        leaving.cancel()  # the app gives up: its connection closes, its call is cancelled
        results = await waiting
    assert {text for text, _ in results} == {"Paris"}
    assert len(upstream.calls("up-a")) == 2  # the abandoned call and the new leader's
    assert sorted(how for _, how in results) == ["hit"] * 8 + ["miss"]


async def test_waiters_share_the_leaders_failure_instead_of_each_calling(
    make, upstream: FakeOpenAI
):
    sc = await make("{mode: exact}")
    upstream.behave("up-a", status=500, delay=0.3)
    outcomes = await asyncio.gather(*(ask(sc) for _ in range(10)), return_exceptions=True)
    assert all(isinstance(o, openai.InternalServerError) for o in outcomes), outcomes
    assert {o.status_code for o in outcomes} == {502}  # type: ignore[union-attr]
    assert len(upstream.calls("up-a")) == 1


async def test_waiters_ask_at_once_when_the_leaders_answer_cannot_be_shared(
    make, upstream: FakeOpenAI
):
    """A cut answer is not cached: each waiter asks for its own, all at once, not in turn."""
    sc = await make("{mode: exact}")
    upstream.behave("up-a", reply="Par", delay=0.3, finish_reason="length")
    results = await asyncio.gather(*(ask(sc) for _ in range(5)))
    assert {text for text, _ in results} == {"Par"}
    calls = upstream.calls("up-a")
    assert len(calls) == 5
    waiters = sorted(call.at for call in calls)[1:]
    assert waiters[-1] - waiters[0] < 0.2  # together, after the leader; not one by one


async def test_streams_are_cached_when_complete_and_replayed_as_sse(make, upstream: FakeOpenAI):
    sc = await make("{mode: exact}")
    upstream.behave("up-a", reply="The capital is Paris")
    async with api(sc) as client:
        for expected in ("miss", "hit"):
            raw = await client.chat.completions.with_raw_response.create(
                model="chat", messages=Q, temperature=0, stream=True
            )
            assert raw.headers["x-sidecar-cache"] == expected
            text = "".join(
                [c.choices[0].delta.content or "" async for c in raw.parse() if c.choices]
            )
            assert text == "The capital is Paris"
        # and the same answer, cached from a stream, serves a JSON request
    assert len(upstream.calls("up-a")) == 1


async def test_a_broken_stream_is_never_cached(make, upstream: FakeOpenAI):
    sc = await make("{mode: exact}")
    upstream.behave("up-a", reply="a b c d e", cut_after=3)
    async with api(sc) as client:
        stream = await client.chat.completions.create(
            model="chat", messages=Q, temperature=0, stream=True
        )
        with pytest.raises(openai.APIError):
            async for _ in stream:
                pass
    upstream.behave("up-a", reply="whole")
    text, h = await ask(sc)
    assert (text, h["x-sidecar-cache"]) == ("whole", "miss")


async def test_controls_bypass_refresh_only_if_cached_and_no_store(make, upstream: FakeOpenAI):
    sc = await make("{mode: exact}")
    with pytest.raises(openai.APIStatusError) as info:
        await ask(sc, headers={"x-sidecar-cache": "only-if-cached"})
    assert info.value.status_code == 504
    _, h = await ask(sc, headers={"cache-control": "no-store"})
    assert (h["x-sidecar-cache"], h["x-sidecar-cache-reason"]) == ("bypass", "no-store")
    _, h = await ask(sc, headers={"x-sidecar-cache": "bypass"})
    assert (h["x-sidecar-cache"], h["x-sidecar-cache-reason"]) == ("bypass", "x-sidecar-cache")
    await ask(sc)
    upstream.behave("up-a", reply="fresh")
    text, h = await ask(sc, headers={"x-sidecar-cache": "refresh"})
    assert (text, h["x-sidecar-cache"]) == ("fresh", "miss")
    text, h = await ask(sc, headers={"x-sidecar-cache": "only-if-cached"})
    assert (text, h["x-sidecar-cache"]) == ("fresh", "hit")


async def test_semantic_hit_and_miss_by_similarity(make, upstream: FakeOpenAI):
    sc = await make("{mode: semantic, semantic: {model: emb, similarity: 0.95}}")
    upstream.vectors["What is the capital of France?"] = [1.0, 0.0, 0.0]
    upstream.vectors["Which city is France's capital?"] = [0.99, 0.1, 0.0]
    upstream.vectors["How tall is the Eiffel tower?"] = [0.5, 0.8, 0.3]
    upstream.behave("up-a", reply="Paris")
    await ask(sc)
    text, h = await ask(sc, [{"role": "user", "content": "Which city is France's capital?"}])
    assert (text, h["x-sidecar-cache"]) == ("Paris", "semantic-hit")
    assert float(h["x-sidecar-cache-similarity"]) == pytest.approx(0.995, abs=0.002)
    _, h = await ask(sc, [{"role": "user", "content": "How tall is the Eiffel tower?"}])
    assert h["x-sidecar-cache"] == "miss"
    assert len(upstream.calls("up-a")) == 2
    assert len(upstream.calls("up-emb")) == 3  # each lookup embedded once, through the provider


async def test_a_silent_embedder_costs_a_lookup_its_provider_timeout_not_the_answer(
    sidecars: Sidecars, upstream: FakeOpenAI
):
    sc = await sidecars.start(
        f"""
        providers:
          main: {{type: openai, base_url: "{upstream.base_url}"}}
          embedder: {{type: openai, base_url: "{upstream.base_url}", timeout: 300ms}}
        models:
          a: {{provider: main, name: up-a}}
          emb: {{provider: embedder, name: up-emb}}
        cache:
          answers: {{mode: semantic, semantic: {{model: emb}}}}
        routes:
          chat: {{targets: [a], cache: answers}}
        state: {{backend: memory}}
        """,
    )
    upstream.behave("up-emb", delay=5.0)
    upstream.behave("up-a", reply="Paris")
    async with asyncio.timeout(3.0):  # the embedder alone would take 5 s
        text, h = await ask(sc)
    assert (text, h["x-sidecar-cache"]) == ("Paris", "miss")


async def test_admin_purge_by_route(make, upstream: FakeOpenAI):
    sc = await make("{mode: exact}")
    await ask(sc)
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"http://127.0.0.1:{sc.ops_port}/cache/purge?route=chat") as r,
    ):
        assert (await r.json())["removed"] == 1
    _, h = await ask(sc)
    assert h["x-sidecar-cache"] == "miss"
