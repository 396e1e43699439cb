"""Two sidecars sharing one real redis-server share cached answers: a miss on one is a hit
on the other, for exact keys and for semantic neighbours (vectors shared through Redis)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import openai
import pytest

from sidecar.app import Sidecar
from tests.support.redis import RedisServer
from tests.support.sidecar import start_sidecar, write_policy
from tests.support.upstream import FakeOpenAI
from tests.support.wait import eventually


@pytest.fixture
async def pair(
    tmp_path: Path, upstream: FakeOpenAI, redis_server: RedisServer
) -> AsyncIterator[tuple[Sidecar, Sidecar]]:
    write_policy(
        tmp_path / "p",
        "p.yaml",
        f"""
        providers:
          main: {{type: openai, base_url: "{upstream.base_url}"}}
        models:
          a: {{provider: main, name: up-a, price: {{input: 1000, output: 1000}}}}
          emb: {{provider: main, name: up-emb}}
        state: {{backend: redis, url: "{redis_server.url}"}}
        cache:
          exact: {{mode: exact, store: redis, scope: global}}
          similar:
            mode: semantic
            store: redis
            scope: global
            semantic: {{model: emb, similarity: 0.9}}
        routes:
          plain: {{targets: [a], cache: exact}}
          fuzzy: {{targets: [a], cache: similar}}
        """,
    )
    first = await start_sidecar(tmp_path / "p", state_dir=tmp_path / "one")
    second = await start_sidecar(tmp_path / "p", state_dir=tmp_path / "two")
    yield first, second
    await first.stop()
    await second.stop()


async def ask(sc: Sidecar, model: str, text: str) -> tuple[str, str]:
    async with openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{sc.port}/v1", api_key="x", max_retries=0
    ) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": text}], temperature=0
        )
        return raw.parse().choices[0].message.content or "", raw.headers["x-sidecar-cache"]


async def test_an_answer_cached_by_one_sidecar_is_a_hit_on_the_other(pair, upstream: FakeOpenAI):
    first, second = pair
    upstream.behave("up-a", reply="forty-two")
    assert await ask(first, "plain", "the answer?") == ("forty-two", "miss")
    assert await ask(second, "plain", "the answer?") == ("forty-two", "hit")
    assert len(upstream.calls("up-a")) == 1


async def test_semantic_neighbours_are_found_across_sidecars(pair, upstream: FakeOpenAI):
    first, second = pair
    upstream.vectors["capital of France?"] = [1.0, 0.0, 0.0]
    upstream.vectors["France's capital city?"] = [0.98, 0.2, 0.0]
    upstream.vectors["tallest mountain?"] = [0.0, 1.0, 0.0]
    upstream.behave("up-a", reply="Paris")
    assert await ask(first, "fuzzy", "capital of France?") == ("Paris", "miss")
    assert await ask(second, "fuzzy", "France's capital city?") == ("Paris", "semantic-hit")
    assert (await ask(second, "fuzzy", "tallest mountain?"))[1] == "miss"
    assert len(upstream.calls("up-a")) == 2


async def test_reloads_that_change_a_cache_close_the_old_ones_redis_connections(
    tmp_path: Path, upstream: FakeOpenAI, redis_server: RedisServer
):
    folder = tmp_path / "p"

    def policy(ttl: int) -> None:
        write_policy(
            folder,
            "p.yaml",
            f"""
            providers:
              main: {{type: openai, base_url: "{upstream.base_url}"}}
            models:
              a: {{provider: main, name: up-a}}
            cache:
              exact:
                {{mode: exact, store: redis, url: "{redis_server.url}", scope: global, ttl: {ttl}s}}
            routes:
              plain: {{targets: [a], cache: exact}}
            state: {{backend: memory}}
            """,
        )

    policy(60)
    sc = await start_sidecar(folder, state_dir=tmp_path)
    try:
        await ask(sc, "plain", "q60")  # the cache's client connects on first use
        before = await redis_server.clients()
        for ttl in range(61, 71):  # ten GitOps edits, each a cache with new settings
            policy(ttl)
            await sc.holder.reload()
            assert sc.holder.current is not None
            assert sc.holder.current.policy.routes["plain"].cache.ttl == ttl  # type: ignore[union-attr]
            assert await ask(sc, "plain", f"q{ttl}") == ("hello from upstream", "miss")
        # The old snapshots end with their last request: no collection needed.
        assert await eventually(lambda: redis_server.at_most(before), within=3.0)
    finally:
        await sc.stop()
