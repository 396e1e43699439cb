"""Retries, Retry-After, circuit breakers, hedging, concurrency caps, deadlines and
cancellation, seen through the OpenAI SDK against real fake upstreams."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import aiohttp
import openai
import pytest

from sidecar.app import Sidecar
from tests.support.sidecar import Sidecars
from tests.support.upstream import FakeOpenAI

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture
def make(sidecars: Sidecars, upstream: FakeOpenAI) -> Callable[..., object]:
    """Start a sidecar whose policy is the given `routes:` text (and provider extras)."""

    async def start(routes: str, provider_extra: str = "", model_extra: str = "") -> Sidecar:
        return await sidecars.start(
            f"""
            providers:
              main:
                type: openai
                base_url: {upstream.base_url}
                timeout: 5s
            {provider_extra}
              spare:
                type: openai
                base_url: {upstream.base_url}
            models:
              a: {{provider: main, name: up-a{model_extra}}}
              b: {{provider: spare, name: up-b}}
            routes:
            {routes}
            """,
        )

    return start


def api(sc: Sidecar, timeout: float = 10.0) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{sc.port}/v1", api_key="x", max_retries=0, timeout=timeout
    )


async def ask(sc: Sidecar, **kw: object) -> tuple[str, dict[str, str]]:
    async with api(sc) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="r", messages=MESSAGES, **kw
        )
        return raw.parse().choices[0].message.content or "", dict(raw.headers)


async def test_retries_the_same_target_until_it_answers(make, upstream: FakeOpenAI):
    sc = await make("  r: {targets: [a, b], retry: {attempts: 3, backoff: 10ms}}")
    upstream.behave("up-a", status=503, fail_times=2, reply="third time lucky")
    text, headers = await ask(sc)
    assert text == "third time lucky"
    assert headers["x-sidecar-attempts"] == "3"
    assert headers["x-sidecar-model"] == "a"
    assert upstream.calls("up-b") == []


async def test_classes_not_in_retry_on_move_to_the_next_target_at_once(make, upstream: FakeOpenAI):
    sc = await make("  r: {targets: [a, b], retry: {attempts: 3, backoff: 10ms, on: [connect]}}")
    upstream.behave("up-a", status=500)
    _, headers = await ask(sc)
    assert len(upstream.calls("up-a")) == 1
    assert headers["x-sidecar-model"] == "b"
    assert headers["x-sidecar-fallback-reason"] == "5xx"


async def test_retry_after_is_honoured_when_it_fits_the_deadline(make, upstream: FakeOpenAI):
    sc = await make("  r: {targets: [a, b], retry: {attempts: 2, backoff: 10ms}, timeout: 5s}")
    upstream.behave("up-a", status=429, retry_after="1", fail_times=1, reply="after waiting")
    began = time.monotonic()
    text, headers = await ask(sc)
    assert text == "after waiting"
    assert headers["x-sidecar-model"] == "a"
    assert time.monotonic() - began >= 0.9
    calls = upstream.calls("up-a")
    assert calls[1].at - calls[0].at >= 0.95


async def test_retry_after_beyond_the_deadline_moves_on_without_waiting(make, upstream: FakeOpenAI):
    sc = await make("  r: {targets: [a, b], retry: {attempts: 2, backoff: 10ms}, timeout: 3s}")
    upstream.behave("up-a", status=429, retry_after="30")
    began = time.monotonic()
    _, headers = await ask(sc)
    assert time.monotonic() - began < 1.0
    assert headers["x-sidecar-model"] == "b"
    assert headers["x-sidecar-fallback-reason"] == "429"


async def test_all_targets_rate_limited_passes_429_and_retry_after_on(make, upstream: FakeOpenAI):
    sc = await make("  r: {targets: [a, b], timeout: 2s}")
    upstream.behave("up-a", status=429, retry_after="7")
    upstream.behave("up-b", status=429, retry_after="12")
    async with api(sc) as client:
        with pytest.raises(openai.RateLimitError) as info:
            await client.chat.completions.create(model="r", messages=MESSAGES)
    assert info.value.response.headers["retry-after"] == "12"


async def test_open_circuit_skips_the_target_without_calling_it(make, upstream: FakeOpenAI):
    sc = await make(
        "  r: {targets: [a, b]}",
        model_extra=", circuit: {consecutive_failures: 2, cooldown: 300ms}",
    )
    upstream.behave("up-a", status=500)
    for _ in range(2):
        await ask(sc)
    assert len(upstream.calls("up-a")) == 2
    _, headers = await ask(sc)
    assert len(upstream.calls("up-a")) == 2  # skipped: no network call
    assert headers["x-sidecar-attempts"] == "1"
    assert headers["x-sidecar-fallback-reason"] == "circuit_open"
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{sc.ops_port}/status") as r:
        assert (await r.json())["circuits"]["a"]["state"] == "open"

    # After the cooldown one probe goes through; the provider has recovered: closed again.
    upstream.behave("up-a", reply="recovered")
    await asyncio.sleep(0.35)
    text, _ = await ask(sc)
    assert text == "recovered"
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{sc.ops_port}/status") as r:
        assert (await r.json())["circuits"]["a"]["state"] == "closed"


async def status_of(sc: Sidecar, circuit: str) -> dict[str, object]:
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{sc.ops_port}/status") as r:
        return (await r.json())["circuits"][circuit]


async def test_status_shows_a_circuit_half_open_once_its_cooldown_is_over(
    make, upstream: FakeOpenAI
):
    """By the clock, not by the next request: nobody may be asking while someone looks."""
    sc = await make(
        "  r: {targets: [a, b]}",
        model_extra=", circuit: {consecutive_failures: 1, cooldown: 300ms}",
    )
    upstream.behave("up-a", status=500)
    await ask(sc)
    opened = await status_of(sc, "a")
    assert opened["state"] == "open"
    assert opened["half_open_at"] == pytest.approx(opened["opened_at"] + 0.3)
    await asyncio.sleep(0.35)
    assert (await status_of(sc, "a"))["state"] == "half-open"  # the next call is the probe
    upstream.behave("up-a", reply="back")
    assert (await ask(sc))[0] == "back"
    closed = await status_of(sc, "a")
    assert (closed["state"], closed["half_open_at"]) == ("closed", None)


async def test_attempts_count_only_calls_made_not_targets_skipped(make, upstream: FakeOpenAI):
    sc = await make(
        "  r: {targets: [a, b]}",
        model_extra=", circuit: {consecutive_failures: 1, cooldown: 30s}",
    )
    upstream.behave("up-a", status=500)
    _, headers = await ask(sc)  # a fails (and its circuit opens), b answers
    assert (headers["x-sidecar-attempts"], headers["x-sidecar-fallback-reason"]) == ("2", "5xx")
    _, headers = await ask(sc)  # a is skipped: one call, to b
    assert (headers["x-sidecar-attempts"], headers["x-sidecar-fallback-reason"]) == (
        "1",
        "circuit_open",
    )
    async with api(sc) as client:  # a alone, addressed directly: no call made, and it says why
        with pytest.raises(openai.APIStatusError) as info:
            await client.chat.completions.create(model="a", messages=MESSAGES)
    assert info.value.response.headers["x-sidecar-attempts"] == "0"
    assert "circuit open" in info.value.message
    assert len(upstream.calls("up-a")) == 1


async def test_a_busy_provider_is_skipped_without_counting_an_attempt(make, upstream: FakeOpenAI):
    sc = await make(
        "  r: {targets: [a, b]}",
        provider_extra="""    max_concurrency: 1
                concurrency_wait: 50ms""",
    )
    upstream.behave("up-a", delay=0.5)
    first = asyncio.create_task(ask(sc))
    await asyncio.sleep(0.1)  # the first call holds main's only slot
    _, headers = await ask(sc)
    assert (headers["x-sidecar-model"], headers["x-sidecar-fallback-reason"]) == ("b", "busy")
    assert headers["x-sidecar-attempts"] == "1"  # b's call; a was never called
    await first


async def test_failed_probe_reopens_the_circuit(make, upstream: FakeOpenAI):
    sc = await make(
        "  r: {targets: [a, b]}",
        model_extra=", circuit: {consecutive_failures: 1, cooldown: 600ms}",
    )
    upstream.behave("up-a", status=503)
    await ask(sc)
    await asyncio.sleep(0.65)
    await ask(sc)  # the probe, which fails; the next ask must come within the new cooldown
    assert len(upstream.calls("up-a")) == 2
    await ask(sc)
    assert len(upstream.calls("up-a")) == 2  # open again


async def test_hedge_races_the_next_target_and_cancels_the_loser(make, upstream: FakeOpenAI):
    sc = await make("  r: {targets: [a, b], hedge: {after: 100ms}}")
    upstream.behave("up-a", delay=2.0, reply="slow")
    upstream.behave("up-b", reply="fast")
    began = time.monotonic()
    text, headers = await ask(sc)
    assert text == "fast"
    assert time.monotonic() - began < 1.5
    assert headers["x-sidecar-model"] == "b"
    assert headers["x-sidecar-attempts"] == "2"
    for _ in range(50):
        if upstream.cancelled:
            break
        await asyncio.sleep(0.02)
    assert upstream.cancelled == 1  # the slow one was cancelled, not left to run and bill


async def test_hedge_does_not_start_when_the_first_answers_in_time(make, upstream: FakeOpenAI):
    sc = await make("  r: {targets: [a, b], hedge: {after: 500ms}}")
    _, headers = await ask(sc)
    assert headers["x-sidecar-model"] == "a"
    assert upstream.calls("up-b") == []


async def test_max_concurrency_sends_the_excess_to_the_next_target(make, upstream: FakeOpenAI):
    sc = await make(
        "  r: {targets: [a, b]}",
        provider_extra="""    max_concurrency: 1
                concurrency_wait: 50ms""",
    )
    upstream.behave("up-a", delay=0.5, reply="slow one")
    first = asyncio.create_task(ask(sc))
    await asyncio.sleep(0.1)  # the first call now holds main's only slot
    text, headers = await ask(sc)
    assert headers["x-sidecar-model"] == "b"
    assert headers["x-sidecar-fallback-reason"] == "busy"
    assert len(upstream.calls("up-a")) == 1  # the excess never reached the slow provider
    text, _ = await first
    assert text == "slow one"


async def test_route_deadline_bounds_the_whole_request(make, upstream: FakeOpenAI):
    sc = await make("  r: {targets: [a, b], timeout: 400ms}")
    upstream.behave("up-a", delay=5.0)
    upstream.behave("up-b", delay=5.0)
    began = time.monotonic()
    async with api(sc) as client:
        with pytest.raises(openai.APIStatusError) as info:
            await client.chat.completions.create(model="r", messages=MESSAGES)
    assert info.value.status_code == 504
    assert time.monotonic() - began < 1.5


async def test_first_token_timeout_falls_over_a_silent_stream(make, upstream: FakeOpenAI):
    sc = await make("  r: {targets: [a, b], first_token_timeout: 200ms}")
    upstream.behave("up-a", delay=3.0)
    upstream.behave("up-b", reply="b streams")
    async with api(sc) as client:
        stream = await client.chat.completions.create(model="r", messages=MESSAGES, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "b streams"


async def test_client_leaving_a_stream_cancels_the_upstream(make, upstream: FakeOpenAI):
    sc = await make("  r: {targets: [a]}")
    upstream.behave("up-a", reply="w " * 200, chunk_delay=0.02)
    async with api(sc) as client:
        stream = await client.chat.completions.create(model="r", messages=MESSAGES, stream=True)
        seen = 0
        async for _ in stream:
            seen += 1
            if seen == 3:
                break
        await stream.close()
    for _ in range(100):
        if upstream.cancelled:
            break
        await asyncio.sleep(0.02)
    assert upstream.cancelled == 1


async def test_client_giving_up_on_a_json_call_cancels_the_upstream(make, upstream: FakeOpenAI):
    sc = await make("  r: {targets: [a]}")
    upstream.behave("up-a", delay=3.0)
    async with api(sc, timeout=0.3) as client:
        with pytest.raises(openai.APITimeoutError):
            await client.chat.completions.create(model="r", messages=MESSAGES)
    for _ in range(100):
        if upstream.cancelled:
            break
        await asyncio.sleep(0.02)
    assert upstream.cancelled == 1
