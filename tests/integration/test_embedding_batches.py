"""Embeddings micro-batches: concurrent `/v1/embeddings` calls for one model go upstream as
one call, and each caller still gets exactly its own vectors, in order, and its own share
of the usage. Driven with the official `openai` SDK against a real fake provider."""

from __future__ import annotations

import asyncio

import openai
import pytest

from sidecar.stores.micro_batches import shares
from tests.support.sidecar import Sidecars
from tests.support.upstream import FakeOpenAI

# Five-letter words: one token each, and the same weight for the byte estimate too.
WORDS = ["apple", "river", "stone", "cloud", "tiger", "piano", "green", "table", "chair", "house"]


def policy(upstream: FakeOpenAI, window: str = "100ms", max_inputs: int = 64) -> str:
    return f"""
    providers:
      up: {{type: openai, base_url: "{upstream.base_url}", api_key: k}}
    models:
      embed:
        provider: up
        name: up-embed
        embeddings: {{batch_window: {window}, max_inputs: {max_inputs}}}
    routes:
      vectors: {{targets: [embed], retry: {{attempts: 2, backoff: 10ms}}}}
    """


def client(port: int) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="app", max_retries=0)


@pytest.fixture
def vectors(upstream: FakeOpenAI) -> dict[str, list[float]]:
    for n, word in enumerate(WORDS):
        upstream.vectors[word] = [float(n), float(n) / 10, 1.0]
    return upstream.vectors


async def test_concurrent_callers_share_one_upstream_call_and_get_their_own_vectors(
    sidecars: Sidecars, upstream: FakeOpenAI, vectors: dict[str, list[float]]
) -> None:
    sidecar = await sidecars.start(policy(upstream))
    asks = [WORDS[0:1], WORDS[1:3], WORDS[3:6], WORDS[6:10]]  # 1, 2, 3 and 4 inputs
    async with client(sidecar.port) as sdk:
        answers = await asyncio.gather(
            *(sdk.embeddings.create(model="vectors", input=words) for words in asks)
        )
    assert len(upstream.calls("up-embed")) == 1  # four callers, one upstream call
    assert upstream.calls("up-embed")[0].body["input"] == WORDS
    for words, answer in zip(asks, answers, strict=True):
        assert [d.index for d in answer.data] == list(range(len(words)))
        assert [d.embedding for d in answer.data] == [vectors[w] for w in words]
        # The provider billed one token per input (10): each caller pays for its own.
        assert answer.usage.prompt_tokens == len(words)
        assert answer.usage.total_tokens == len(words)


async def test_a_single_string_input_comes_back_as_one_vector(
    sidecars: Sidecars, upstream: FakeOpenAI, vectors: dict[str, list[float]]
) -> None:
    sidecar = await sidecars.start(policy(upstream))
    async with client(sidecar.port) as sdk:
        one, many = await asyncio.gather(
            sdk.embeddings.create(model="vectors", input="piano"),
            sdk.embeddings.create(model="vectors", input=["tiger", "green"]),
        )
    assert len(upstream.calls("up-embed")) == 1
    assert [d.embedding for d in one.data] == [vectors["piano"]]
    assert [d.embedding for d in many.data] == [vectors["tiger"], vectors["green"]]


async def test_calls_that_differ_in_parameters_are_not_merged(
    sidecars: Sidecars, upstream: FakeOpenAI, vectors: dict[str, list[float]]
) -> None:
    sidecar = await sidecars.start(policy(upstream))
    async with client(sidecar.port) as sdk:
        await asyncio.gather(
            sdk.embeddings.create(model="vectors", input=["apple"], dimensions=3),
            sdk.embeddings.create(model="vectors", input=["river"], dimensions=3),
            sdk.embeddings.create(model="vectors", input=["stone"], dimensions=8),
        )
    inputs = sorted(c.body["input"] for c in upstream.calls("up-embed"))
    assert inputs == [["apple", "river"], ["stone"]]


async def test_a_full_group_goes_at_once_and_the_next_caller_starts_another(
    sidecars: Sidecars, upstream: FakeOpenAI, vectors: dict[str, list[float]]
) -> None:
    sidecar = await sidecars.start(policy(upstream, window="5s", max_inputs=4))
    async with client(sidecar.port) as sdk:
        async with asyncio.timeout(3):  # a 5s window: only `max_inputs` sends them
            answers = await asyncio.gather(
                *(sdk.embeddings.create(model="vectors", input=WORDS[n : n + 2]) for n in (0, 2))
            )
    assert [c.body["input"] for c in upstream.calls("up-embed")] == [WORDS[0:4]]
    assert [d.embedding for d in answers[1].data] == [vectors["stone"], vectors["cloud"]]


async def test_a_refused_input_fails_only_its_caller(
    sidecars: Sidecars, upstream: FakeOpenAI, vectors: dict[str, list[float]]
) -> None:
    upstream.behave("up-embed", refuse_input="chair")
    sidecar = await sidecars.start(policy(upstream))
    async with client(sidecar.port) as sdk:
        results = await asyncio.gather(
            sdk.embeddings.create(model="vectors", input=["apple"]),
            sdk.embeddings.create(model="vectors", input=["chair", "house"]),
            sdk.embeddings.create(model="vectors", input=["river"]),
            return_exceptions=True,
        )
    first, refused, third = results
    assert isinstance(refused, openai.BadRequestError)
    assert not isinstance(first, BaseException)
    assert not isinstance(third, BaseException)
    assert [d.embedding for d in first.data] == [vectors["apple"]]
    assert [d.embedding for d in third.data] == [vectors["river"]]
    # The merged call was refused; each caller's inputs went again on their own.
    assert [c.body["input"] for c in upstream.calls("up-embed")] == [
        ["apple", "chair", "house", "river"],
        ["apple"],
        ["chair", "house"],
        ["river"],
    ]


async def test_a_failed_merged_call_is_retried_by_every_caller_merged_again(
    sidecars: Sidecars, upstream: FakeOpenAI, vectors: dict[str, list[float]]
) -> None:
    upstream.behave("up-embed", status=503, fail_times=1)
    sidecar = await sidecars.start(policy(upstream))
    async with client(sidecar.port) as sdk:
        answers = await asyncio.gather(
            *(sdk.embeddings.create(model="vectors", input=[w]) for w in WORDS[:3])
        )
    assert [d.data[0].embedding for d in answers] == [vectors[w] for w in WORDS[:3]]
    calls = upstream.calls("up-embed")
    assert len(calls) == 2  # the failed merged call, then the retries, merged again
    assert sorted(calls[1].body["input"]) == sorted(WORDS[:3])


def test_usage_shares_add_up_to_the_bill_exactly() -> None:
    assert shares(10, [1, 1, 1]) == [4, 3, 3]
    assert shares(10, [1, 2, 3, 4]) == [1, 2, 3, 4]
    assert shares(7, [5, 0]) == [6, 1]  # a caller of no tokens still weighs one
    for total, weights in ((0, [3, 1]), (101, [7, 13, 2]), (3, [1] * 5)):
        assert sum(shares(total, weights)) == total
