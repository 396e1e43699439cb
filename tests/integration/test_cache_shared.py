"""Response caching as replicas see it: two real `llm-sidecar serve` processes share one
real redis-server, so an answer one of them paid for is a hit on the other (exact keys, and
semantic neighbours found through the shared vector list). Also what must never be served
or stored: another team's answer, requests with tools when the cache says never, error
answers, `length`-cut answers; the memory bounds (`max_entries`, `max_bytes`); the
Anthropic ingress; and a Redis that goes away (requests still answered, the cache marked
unavailable and logged).

The two processes, the fake upstream and the redis-server are started once for the module
(a process takes about a second to start); every test asks its own questions, so tests do
not see each other's cached answers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import openai
import pytest
import pytest_asyncio
from openai.types.chat import ChatCompletionFunctionToolParam

from tests.support.redis import RedisServer
from tests.support.sidecar import SidecarProcess, write_policy
from tests.support.upstream import FakeOpenAI

pytestmark = pytest.mark.asyncio(loop_scope="module")

TOOL: ChatCompletionFunctionToolParam = {
    "type": "function",
    "function": {
        "name": "refund",
        "description": "Refund an order (acts on the world)",
        "parameters": {"type": "object", "properties": {"order": {"type": "string"}}},
    },
}


def policy(upstream: FakeOpenAI, redis_url: str) -> str:
    shared = f'store: redis, url: "{redis_url}"'
    return f"""
    providers:
      main: {{type: openai, base_url: "{upstream.base_url}"}}
    models:
      a: {{provider: main, name: up-a, price: {{input: 1000, output: 2000}}}}
      cut: {{provider: main, name: up-cut}}
      bad1: {{provider: main, name: up-bad1}}
      bad2: {{provider: main, name: up-bad2}}
      emb: {{provider: main, name: up-emb, price: {{input: 100}}}}
      emb-down: {{provider: main, name: up-emb-down}}
    state: {{backend: memory}}
    cache:
      per-team: {{mode: exact, {shared}, scope: team}}
      everyone: {{mode: exact, {shared}, scope: global}}
      no-tools: {{mode: exact, {shared}, scope: team, tools: false}}
      similar:
        {{mode: semantic, {shared}, scope: team, semantic: {{model: emb, similarity: 0.9}}}}
      similar-few:
        {{mode: semantic, {shared}, max_entries: 2, semantic: {{model: emb, similarity: 0.9}}}}
      similar-no-embeddings:
        {{mode: semantic, {shared}, semantic: {{model: emb-down, similarity: 0.9}}}}
      few: {{mode: exact, store: memory, max_entries: 2}}
      small: {{mode: exact, store: memory, max_bytes: 2048}}
    routes:
      chat: {{targets: [a], cache: per-team}}
      shared: {{targets: [a], cache: everyone}}
      agent: {{targets: [a], cache: no-tools}}
      fuzzy: {{targets: [a], cache: similar}}
      fuzzy-few: {{targets: [a], cache: similar-few}}
      fuzzy-blind: {{targets: [a], cache: similar-no-embeddings}}
      few: {{targets: [a], cache: few}}
      small: {{targets: [a], cache: small}}
      cut: {{targets: [cut], cache: per-team}}
      flaky:
        targets: [bad1, bad2]
        retry: {{attempts: 1}}
        cache: per-team
    """


# -- fixtures: one fake upstream, one redis-server, two sidecar processes per module -------


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def upstream() -> AsyncIterator[FakeOpenAI]:
    fake = await FakeOpenAI().start()
    yield fake
    await fake.stop()


async def start_processes(folder: Path, n: int) -> list[SidecarProcess]:
    sidecars = [SidecarProcess(folder, {"SIDECAR_USAGE_TOKEN": ""}) for _ in range(n)]
    try:
        await asyncio.gather(*(sc.wait_ready() for sc in sidecars))
    except BaseException:
        for sc in sidecars:
            sc.stop()
        raise
    return sidecars


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def pair(
    tmp_path_factory: pytest.TempPathFactory, upstream: FakeOpenAI, redis_server: RedisServer
) -> AsyncIterator[tuple[SidecarProcess, SidecarProcess]]:
    folder = tmp_path_factory.mktemp("shared") / "policies"
    write_policy(folder, "p.yaml", policy(upstream, redis_server.url))
    first, second = await start_processes(folder, 2)
    yield first, second
    first.stop()
    second.stop()


@pytest.fixture(autouse=True)
def fresh_upstream(upstream: FakeOpenAI) -> None:
    """Each test starts with a healthy upstream and an empty call record."""
    upstream.behaviours.clear()
    upstream.vectors.clear()
    upstream.seen.clear()


# -- clients -------------------------------------------------------------------------------


async def ask(
    sc: SidecarProcess,
    text: str,
    route: str = "chat",
    team: str | None = None,
    headers: dict[str, str] | None = None,
    **kw: Any,
) -> tuple[str, str]:
    """One chat completion at temperature 0 (cacheable): (answer, x-sidecar-cache)."""
    headers = {**(headers or {}), **({"x-sidecar-team": team} if team else {})}
    async with openai.AsyncOpenAI(
        base_url=sc.base_url, api_key="x", max_retries=0, default_headers=headers
    ) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model=route, messages=[{"role": "user", "content": text}], temperature=0, **kw
        )
        return raw.parse().choices[0].message.content or "", raw.headers["x-sidecar-cache"]


def asked(upstream: FakeOpenAI, model: str = "up-a") -> int:
    """How many chat completions the upstream answered for `model`."""
    return len([s for s in upstream.calls(model) if s.path.endswith("/chat/completions")])


# -- sharing between processes -------------------------------------------------------------


async def test_a_miss_on_one_process_is_a_hit_on_the_other(pair, upstream: FakeOpenAI) -> None:
    first, second = pair
    upstream.behave("up-a", reply="forty-two")
    assert await ask(first, "the answer to everything?", team="t") == ("forty-two", "miss")
    assert await ask(second, "the answer to everything?", team="t") == ("forty-two", "hit")
    assert await ask(first, "the answer to everything?", team="t") == ("forty-two", "hit")
    assert asked(upstream) == 1


async def test_a_streamed_miss_on_one_process_is_replayed_as_a_stream_on_the_other(
    pair, upstream: FakeOpenAI
) -> None:
    first, second = pair
    upstream.behave("up-a", reply="one two three")
    texts: list[tuple[str, str]] = []
    for sc in (first, second):
        async with openai.AsyncOpenAI(base_url=sc.base_url, api_key="x", max_retries=0) as client:
            raw = await client.chat.completions.with_raw_response.create(
                model="chat",
                messages=[{"role": "user", "content": "count to three, streamed"}],
                temperature=0,
                stream=True,
            )
            chunks = [c async for c in raw.parse()]
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            texts.append((text, raw.headers["x-sidecar-cache"]))
    assert texts == [("one two three", "miss"), ("one two three", "hit")]
    assert asked(upstream) == 1


async def test_semantic_neighbour_stored_by_one_process_is_found_by_the_other(
    pair, upstream: FakeOpenAI
) -> None:
    first, second = pair
    upstream.vectors["capital of Italy?"] = [1.0, 0.0, 0.0]
    upstream.vectors["Italy's capital city?"] = [0.97, 0.24, 0.0]
    upstream.vectors["longest river in Italy?"] = [0.3, 0.0, 0.95]
    upstream.behave("up-a", reply="Rome")
    assert await ask(first, "capital of Italy?", "fuzzy", team="t") == ("Rome", "miss")
    # The second process never saw this prompt: it finds the first one's vector in the
    # shared Redis list, and the answer under that entry's exact key.
    assert await ask(second, "Italy's capital city?", "fuzzy", team="t") == ("Rome", "semantic-hit")
    assert (await ask(second, "longest river in Italy?", "fuzzy", team="t"))[1] == "miss"
    assert asked(upstream) == 2
    assert len(upstream.calls("up-emb")) == 3  # one embedding per lookup


async def test_a_near_miss_stored_by_one_process_is_refused_by_the_other(
    pair, upstream: FakeOpenAI
) -> None:
    """The guard tokens travel with the vector through the shared stream."""
    first, second = pair
    upstream.vectors["refund order 81 today?"] = [1.0, 0.0, 0.0]
    upstream.vectors["refund order 18 today?"] = [0.999, 0.04, 0.0]  # closer than a paraphrase
    upstream.vectors["can order 81 be refunded today?"] = [0.99, 0.1, 0.0]
    upstream.behave("up-a", replies=["81: yes", "18: no"])
    assert await ask(first, "refund order 81 today?", "fuzzy", team="t") == ("81: yes", "miss")
    assert await ask(second, "refund order 18 today?", "fuzzy", team="t") == ("18: no", "miss")
    hit = await ask(second, "can order 81 be refunded today?", "fuzzy", team="t")
    assert hit == ("81: yes", "semantic-hit")
    assert asked(upstream) == 2


async def test_a_refreshed_semantic_answer_is_found_by_its_neighbours(
    pair, upstream: FakeOpenAI
) -> None:
    first, second = pair
    upstream.vectors["what changed today?"] = [0.0, 0.6, 0.8]
    upstream.vectors["today's changes?"] = [0.0, 0.62, 0.78]
    upstream.behave("up-a", reply="fresh news")
    refresh = {"x-sidecar-cache": "refresh"}
    assert await ask(first, "what changed today?", "fuzzy", "r", refresh) == ("fresh news", "miss")
    assert await ask(second, "today's changes?", "fuzzy", "r") == ("fresh news", "semantic-hit")
    assert asked(upstream) == 1


async def test_a_new_replica_loads_the_shared_vectors_while_lookups_go_on(
    redis_server: RedisServer,
) -> None:
    """Straight at the index: 600 vectors in a partition's stream (several reads) are loaded
    by a fresh index in the background, once each, while concurrent lookups keep coming."""
    import numpy as np

    from sidecar.stores.semantic import SemanticIndex

    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((600, 64)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    writer = SemanticIndex(redis_server.url, prefix="join:")
    reader = SemanticIndex(redis_server.url, prefix="join:", sync_every=0.05, sync_wait=0.01)
    try:
        for i, vector in enumerate(vectors):
            await writer.add("p", vector, f"k{i}", 60)
        found: list[tuple[str, float, object]] = []
        for _ in range(200):
            lookups = [reader.search("p", vectors[i], time.time()) for i in (0, 599, 599)]
            found = (await asyncio.gather(*lookups))[1]
            if found and found[0][0] == "k599":
                break
            await asyncio.sleep(0.02)
        assert found
        assert found[0][0] == "k599"
        nearest = (await reader.search("p", vectors[0], time.time()))[0]
        assert nearest == ("k0", pytest.approx(1.0), ())
        part = reader._parts["p"]
        assert sorted(e[0] for e in part.keys.values()) == sorted(f"k{i}" for i in range(600))
    finally:
        await writer.close()
        await reader.close()


# -- tenants -------------------------------------------------------------------------------


async def test_one_teams_answer_is_never_served_to_another(pair, upstream: FakeOpenAI) -> None:
    first, second = pair
    upstream.behave("up-a", replies=["for team A", "for team B"])
    assert await ask(first, "our roadmap?", team="A") == ("for team A", "miss")
    assert await ask(second, "our roadmap?", team="B") == ("for team B", "miss")
    assert await ask(second, "our roadmap?", team="A") == ("for team A", "hit")
    assert await ask(first, "our roadmap?", team="B") == ("for team B", "hit")
    assert await ask(first, "our roadmap?") == ("for team B", "miss")  # no team is a scope too
    assert asked(upstream) == 3


async def test_semantic_neighbours_stay_within_the_team(pair, upstream: FakeOpenAI) -> None:
    first, second = pair
    upstream.vectors["our salary bands?"] = [0.0, 1.0, 0.0]
    upstream.vectors["what are our salary bands"] = [0.0, 0.99, 0.1]
    upstream.behave("up-a", replies=["A's bands", "B's bands"])
    assert await ask(first, "our salary bands?", "fuzzy", team="A") == ("A's bands", "miss")
    assert await ask(second, "what are our salary bands", "fuzzy", team="B") == (
        "B's bands",
        "miss",
    )
    assert asked(upstream) == 2


async def test_scope_global_shares_between_teams(pair, upstream: FakeOpenAI) -> None:
    first, second = pair
    upstream.behave("up-a", reply="public answer")
    assert await ask(first, "opening hours?", "shared", team="A") == ("public answer", "miss")
    assert await ask(second, "opening hours?", "shared", team="B") == ("public answer", "hit")
    assert await ask(second, "opening hours?", "shared") == ("public answer", "hit")
    assert asked(upstream) == 1


# -- what is cacheable ---------------------------------------------------------------------


async def test_text_answers_to_requests_with_tools_are_shared_unless_the_cache_says_never(
    pair, upstream: FakeOpenAI
) -> None:
    first, second = pair
    upstream.behave("up-a", reply="no refund needed")
    seen = [(await ask(sc, "refund order 7?", tools=[TOOL]))[1] for sc in (first, first, second)]
    assert seen == ["miss", "hit", "hit"]  # a text answer has no action to skip
    assert asked(upstream) == 1
    seen = [
        (await ask(sc, "refund order 7?", "agent", tools=[TOOL]))[1]
        for sc in (first, first, second)
    ]
    assert seen == ["ineligible"] * 3  # `no-tools` says `tools: false`
    assert asked(upstream) == 4


async def test_error_answers_are_never_cached(pair, upstream: FakeOpenAI) -> None:
    first, second = pair
    upstream.behave("up-bad1", status=500)
    upstream.behave("up-bad2", status=500)  # the fallback fails too
    for sc in (first, second, first):
        with pytest.raises(openai.APIStatusError) as info:
            await ask(sc, "will this fail?", "flaky")
        assert info.value.status_code >= 500
    upstream.behave("up-bad1", reply="recovered")
    assert await ask(second, "will this fail?", "flaky") == ("recovered", "miss")
    assert await ask(first, "will this fail?", "flaky") == ("recovered", "hit")


async def test_a_length_cut_answer_is_not_cached(pair, upstream: FakeOpenAI) -> None:
    upstream.behave("up-cut", reply="a long answer that was cu", finish_reason="length")
    seen = [(await ask(sc, "tell me everything", "cut", max_tokens=5))[1] for sc in pair]
    assert seen == ["miss", "miss"]
    assert asked(upstream, "up-cut") == 2
    upstream.behave("up-cut", reply="short")
    assert [(await ask(sc, "tell me everything", "cut", max_tokens=5))[1] for sc in pair] == [
        "miss",
        "hit",
    ]


async def test_a_semantic_cache_whose_embeddings_fail_still_answers(
    pair, upstream: FakeOpenAI
) -> None:
    first, _ = pair
    upstream.behave("up-emb-down", status=500)
    upstream.behave("up-a", reply="answered anyway")
    text, how = await ask(first, "is the embedder down?", "fuzzy-blind")
    assert text == "answered anyway"
    assert how == "miss"
    # The exact half of the cache still works without an embedding.
    assert await ask(first, "is the embedder down?", "fuzzy-blind") == ("answered anyway", "hit")
    assert asked(upstream) == 1
    assert "semantic cache: embedding failed" in first.log()


async def test_semantic_entries_are_bounded_by_max_entries(pair, upstream: FakeOpenAI) -> None:
    first, second = pair
    for i, axis in enumerate(([1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0])):
        upstream.vectors[f"topic {i}"] = axis
        upstream.vectors[f"about topic {i}"] = [0.98 * x + 0.1 for x in axis]
        assert (await ask(first, f"topic {i}", "fuzzy-few"))[1] == "miss"
    # `similar-few` keeps two vectors: the oldest went out on the third, in both processes
    # (the answer itself is still in Redis: only the nearest-neighbour entry is gone).
    assert (await ask(second, "about topic 2", "fuzzy-few"))[1] == "semantic-hit"
    assert (await ask(second, "about topic 0", "fuzzy-few"))[1] == "miss"
    assert (await ask(first, "topic 0", "fuzzy-few"))[1] == "hit"


async def test_purge_on_one_process_empties_the_shared_cache(pair, upstream: FakeOpenAI) -> None:
    first, second = pair
    upstream.vectors["purge me"] = [0.6, 0.8, 0.0]
    upstream.vectors["please purge me"] = [0.6, 0.79, 0.05]
    assert (await ask(first, "purge me", "fuzzy"))[1] == "miss"
    assert (await ask(first, "keep me?", "shared"))[1] == "miss"
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"http://127.0.0.1:{second.ops_port}/cache/purge?route=fuzzy") as r,
    ):
        assert r.status == 200
        assert (await r.json())["removed"] >= 1
    assert (await ask(first, "purge me", "fuzzy"))[1] == "miss"
    assert (await ask(second, "please purge me", "fuzzy"))[1] == "semantic-hit"  # the new one
    assert (await ask(second, "keep me?", "shared"))[1] == "hit"  # other routes keep theirs
    assert asked(upstream) == 3


# -- memory bounds (one process: the memory store is per process) ---------------------------


async def test_max_entries_evicts_the_least_recently_used(pair, upstream: FakeOpenAI) -> None:
    first, second = pair
    upstream.behave("up-a", reply="ok")
    for q in ("q1", "q2", "q3"):  # `few` holds two entries: q3 pushes q1 out
        assert (await ask(first, q, "few"))[1] == "miss"
    assert (await ask(first, "q3", "few"))[1] == "hit"
    assert (await ask(first, "q2", "few"))[1] == "hit"
    assert (await ask(first, "q1", "few"))[1] == "miss"
    assert (await ask(second, "q2", "few"))[1] == "miss"  # memory is not shared
    assert asked(upstream) == 5


async def test_max_bytes_bounds_the_memory_cache(pair, upstream: FakeOpenAI) -> None:
    first, _ = pair
    # An answer bigger than the whole cache (2048 bytes) is never kept.
    upstream.behave("up-a", reply="word " * 600)
    assert [(await ask(first, "a long essay", "small"))[1] for _ in range(2)] == ["miss", "miss"]
    # Entries of ~700 bytes: three fit, a fourth evicts the oldest.
    upstream.behave("up-a", reply="x" * 400)
    for q in ("b1", "b2", "b3", "b4"):
        assert (await ask(first, q, "small"))[1] == "miss"
    assert (await ask(first, "b4", "small"))[1] == "hit"
    assert (await ask(first, "b1", "small"))[1] == "miss"
    assert asked(upstream) == 7


# -- the Anthropic ingress -----------------------------------------------------------------


async def test_the_anthropic_ingress_hits_the_shared_cache(pair, upstream: FakeOpenAI) -> None:
    first, second = pair
    upstream.behave("up-a", reply="Bonjour")
    results: list[tuple[str, str]] = []
    for sc in (first, second):
        async with anthropic.AsyncAnthropic(
            base_url=f"http://127.0.0.1:{sc.port}", api_key="x", max_retries=0
        ) as client:
            raw = await client.messages.with_raw_response.create(
                model="chat",
                max_tokens=50,
                messages=[{"role": "user", "content": "hello in French?"}],
                extra_body={"temperature": 0},  # this SDK has no `temperature` argument
            )
            message = await raw.parse()
            assert message.content[0].type == "text"
            results.append((message.content[0].text, raw.headers["x-sidecar-cache"]))
    assert results == [("Bonjour", "miss"), ("Bonjour", "hit")]
    # and a streaming Messages request is answered from the same entry, as Anthropic SSE
    async with (
        anthropic.AsyncAnthropic(
            base_url=f"http://127.0.0.1:{first.port}", api_key="x", max_retries=0
        ) as client,
        client.messages.stream(
            model="chat",
            max_tokens=50,
            messages=[{"role": "user", "content": "hello in French?"}],
            extra_body={"temperature": 0},
        ) as stream,
    ):
        text = "".join([t async for t in stream.text_stream])
        final = await stream.get_final_message()
    assert (text, final.stop_reason) == ("Bonjour", "end_turn")
    assert asked(upstream) == 1


# -- Redis goes away -----------------------------------------------------------------------


async def test_requests_are_served_when_redis_is_down(tmp_path: Path, upstream: FakeOpenAI) -> None:
    server = RedisServer(tmp_path)
    folder = tmp_path / "policies"
    write_policy(folder, "p.yaml", policy(upstream, server.url))
    (sidecar,) = await start_processes(folder, 1)
    try:
        upstream.behave("up-a", reply="still here")
        assert await ask(sidecar, "are you there?") == ("still here", "miss")
        assert await ask(sidecar, "are you there?") == ("still here", "hit")
        server.stop()
        for route in ("chat", "fuzzy"):
            for _ in range(2):
                assert await ask(sidecar, "are you there?", route) == ("still here", "unavailable")
        assert asked(upstream) == 5
        async with (
            aiohttp.ClientSession() as s,
            s.get(f"http://127.0.0.1:{sidecar.ops_port}/readyz") as r,
        ):
            assert r.status == 200  # an optional cache being down does not take the pod out
        assert "cache unavailable (cache: ConnectionError); asking the provider" in sidecar.log()
    finally:
        sidecar.stop()
        server.stop()
