"""Shadow trials through the HTTP path, with the `openai` SDK as the app: a candidate gets a
sampled copy of the app's requests after the answer went out, never in the app's way; its
answers are compared with the primary's (exact, JSON-equal, semantic), its spend stops at
the trial's daily limit and counts against the saving, and `/shadow` and `llm-sidecar
shadow` report it.

The fake upstream plays both models: `up-big` (the primary, `hello from upstream`) and
`up-small` (the candidate, scripted per test). Prices are USD per 1M tokens; the fake
reports 7 input and 3 output tokens per answer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import openai
import pytest

from sidecar.app import Sidecar
from sidecar.cli import main as cli
from sidecar.shadow.results import wilson
from tests.support.sidecar import Sidecars
from tests.support.upstream import FakeOpenAI
from tests.support.wait import eventually

BIG = (3000 * 7 + 15000 * 3) / 1e6  # 0.066 per primary answer
SMALL = (1000 * 7 + 4000 * 3) / 1e6  # 0.019 per candidate answer
SAME = "hello from upstream"


def policy(url: str, shadow: str, extra: str = "") -> str:
    return f"""
        providers:
          main: {{type: openai, base_url: "{url}"}}
        models:
          big: {{provider: main, name: up-big, price: {{input: 3000, output: 15000}}}}
          small: {{provider: main, name: up-small, price: {{input: 1000, output: 4000}}}}
          emb: {{provider: main, name: up-emb, price: {{input: 100}}}}
        schemas:
          order: {{type: object, required: [id]}}
        routes:
          chat:
            targets: [big]
            shadow: {shadow}
          extract:
            targets: [big]
            output: {{schema: order}}
            shadow: {shadow}
        {extra}
        """


def client(sc: Sidecar) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{sc.port}/v1", api_key="x", max_retries=0)


async def ask(
    app: openai.AsyncOpenAI, route: str = "chat", content: str = "hi", stream: bool = False
) -> tuple[dict[str, str], str]:
    messages = [{"role": "user", "content": content}]
    if stream:
        async with app.chat.completions.with_streaming_response.create(
            model=route,
            messages=messages,
            stream=True,  # type: ignore[arg-type]
        ) as raw:
            text = "".join(
                [c.choices[0].delta.content or "" async for c in await raw.parse() if c.choices]
            )
            return dict(raw.headers), text
    raw = await app.chat.completions.with_raw_response.create(model=route, messages=messages)  # type: ignore[arg-type]
    return dict(raw.headers), raw.parse().choices[0].message.content or ""


def same_headers(headers: dict[str, str]) -> dict[str, str]:
    """What should not differ between two sidecars' answers to the same request."""
    return {k: v for k, v in headers.items() if k not in ("date", "x-sidecar-policy-version")}


async def ops(sc: Sidecar, path: str) -> Any:
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{sc.ops_port}{path}") as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def report(sc: Sidecar, route: str = "chat") -> dict[str, Any]:
    body = await ops(sc, f"/shadow?route={route}")
    return body["routes"][route]


async def compared(sc: Sidecar, n: int, route: str = "chat") -> dict[str, Any]:
    """The candidate's report once `n` samples are in (shadows land after the answers)."""

    async def ready() -> dict[str, Any] | None:
        found = (await report(sc, route))["candidates"][0]
        return found if found["samples"] >= n else None

    return await eventually(ready)


async def until(condition: Callable[[], bool]) -> None:
    async def check() -> bool:
        return condition()

    await eventually(check)


def candidate_calls(upstream: FakeOpenAI) -> int:
    return len(upstream.calls("up-small"))


async def test_a_slow_candidate_never_delays_the_app_nor_changes_its_answer(
    sidecars: Sidecars, upstream: FakeOpenAI
):
    upstream.behave("up-small", delay=4.0, reply="slow and different")
    plain = await sidecars.start(
        policy(upstream.base_url, "{candidates: [small], sample: 0.0, max_usd_per_day: 1}")
    )
    shadowed = await sidecars.start(
        policy(upstream.base_url, "{candidates: [small], sample: 1.0, max_usd_per_day: 1}")
    )
    async with client(plain) as a, client(shadowed) as b:
        unshadowed = [await ask(a), await ask(a, stream=True), await ask(a)]
        began = time.monotonic()
        # Three requests in turn on one keep-alive connection, JSON and streamed: none waits
        # for the 4 s candidate (they would take 12 s), though each was copied to it.
        answers = [await ask(b), await ask(b, stream=True), await ask(b)]
        took = time.monotonic() - began
    assert took < 3.0, f"the app waited for the shadow calls ({took:.1f}s)"
    await until(lambda: candidate_calls(upstream) == 3)
    for (headers, text), (plain_headers, plain_text) in zip(answers, unshadowed, strict=True):
        assert text == plain_text == SAME  # the app's answer is the primary's
        assert same_headers(headers) == same_headers(plain_headers)
    copied = upstream.calls("up-small")[0].body
    assert copied["messages"] == [{"role": "user", "content": "hi"}]
    assert "stream" not in copied  # a shadow call is a JSON request, even for a stream
    running = (await ops(shadowed, "/stats"))["metrics"]["sidecar.shadow.running"]["points"]
    assert sum(p["value"] for p in running) == 3  # still waiting for the candidate
    await shadowed.stop()  # before the fake upstream, which would wait for their answers
    sidecars.started.remove(shadowed)


async def test_shadow_calls_never_count_against_the_apps_rate_limits(
    sidecars: Sidecars, upstream: FakeOpenAI
):
    sc = await sidecars.start(
        policy(
            upstream.base_url,
            "{candidates: [small], sample: 1.0, max_usd_per_day: 1}",
            "limits: {per-route: {scope: route, requests_per_minute: 3}}",
        )
    )
    async with client(sc) as app:
        for _ in range(3):  # with shadows counted, the second request would be refused
            await ask(app)
        with pytest.raises(openai.RateLimitError):
            await ask(app)
    await until(lambda: candidate_calls(upstream) == 3)


async def test_agreement_is_reported_with_its_wilson_interval_on_a_known_share(
    sidecars: Sidecars, upstream: FakeOpenAI
):
    # 12 samples: the candidate says the same thing 9 times (3 of them with other spacing),
    # then something else: 75 % agreement, 50 % exact.
    replies = [SAME] * 6 + ["  hello   from\nupstream "] * 3 + ["no idea"] * 3
    upstream.behave("up-small", replies=replies)
    sc = await sidecars.start(
        policy(upstream.base_url, "{candidates: [small], sample: 1.0, max_usd_per_day: 10}")
    )
    async with client(sc) as app:
        for i in range(12):
            await ask(app, content=f"question {i}")
    found = await compared(sc, 12)
    agreement = found["agreement"]
    assert (found["compared"], found["errors"]) == (12, 0)
    assert agreement["rate"] == pytest.approx(0.75)
    assert agreement["exact"] == pytest.approx(0.75)  # whitespace aside
    low, high = wilson(9, 12)
    assert (agreement["low"], agreement["high"]) == (pytest.approx(low), pytest.approx(high))
    assert (round(low, 3), round(high, 3)) == (0.468, 0.911)
    assert found["validity"] is None  # the route checks no schema
    assert found["cost_per_request"] == pytest.approx(SMALL)
    assert found["primary_cost_per_request"] == pytest.approx(BIG)
    saving = found["projected_saving"]
    assert saving["share"] == pytest.approx(1 - SMALL / BIG)
    assert saving["usd_per_1k_requests"] == pytest.approx((BIG - SMALL) * 1000)
    assert saving["usd_per_day"] == pytest.approx((1 - SMALL / BIG) * 12 * BIG)
    assert None not in found["latency"].values()
    stats = (await ops(sc, "/stats"))["metrics"]["sidecar.shadow.comparisons"]["points"]
    by = {p["attributes"]["sidecar.agreement"]: p["value"] for p in stats}
    assert by == {"agree": 9, "disagree": 3}


async def test_structured_answers_agree_when_their_json_is_equal(
    sidecars: Sidecars, upstream: FakeOpenAI
):
    upstream.behave("up-big", reply='{"id": 7, "items": [1, 2]}')
    # Same JSON in another layout; a value that differs; not JSON at all (and invalid).
    upstream.behave(
        "up-small",
        replies=['{"items":[1,2],\n "id":7}', '{"id": 8, "items": [1, 2]}', "order 7"],
    )
    sc = await sidecars.start(
        policy(upstream.base_url, "{candidates: [small], sample: 1.0, max_usd_per_day: 10}")
    )
    async with client(sc) as app:
        for i in range(3):
            await ask(app, "extract", content=f"order {i}")
    found = await compared(sc, 3, "extract")
    agreement = found["agreement"]
    assert agreement["rate"] == pytest.approx(1 / 3)
    assert agreement["json_equal"] == pytest.approx(1 / 3)
    assert agreement["exact"] == 0.0
    assert found["validity"] == pytest.approx(2 / 3)  # the route's schema, on the candidate


async def test_semantic_similarity_counts_close_answers_as_agreeing(
    sidecars: Sidecars, upstream: FakeOpenAI
):
    upstream.behave("up-small", replies=["hi there from upstream", "bananas"])
    upstream.vectors = {
        SAME: [1.0, 0.0, 0.0],
        "hi there from upstream": [0.95, 0.31, 0.0],  # cosine 0.95
        "bananas": [0.0, 0.0, 1.0],  # cosine 0
    }
    shadow = "{candidates: [small], sample: 1.0, max_usd_per_day: 10, compare: {embedding: emb}}"
    sc = await sidecars.start(policy(upstream.base_url, shadow))
    async with client(sc) as app:
        await ask(app, content="one")
        await until(lambda: candidate_calls(upstream) == 1)
        await ask(app, content="two")
    found = await compared(sc, 2)
    agreement = found["agreement"]
    assert agreement["rate"] == pytest.approx(0.5)  # 0.95 >= 0.9; 0 is not
    assert agreement["exact"] == 0.0
    assert agreement["semantic"] == pytest.approx(0.5)
    assert agreement["mean_similarity"] == pytest.approx(0.95 / 2, abs=0.01)
    # The embedding calls are the trial's spend too (2 inputs x 100 per 1M each).
    row = (await ops(sc, "/usage?scope=shadow&window=day"))["rows"][0]
    assert row["cost_usd"] == pytest.approx(2 * SMALL + 2 * 2 * 100 / 1e6)


async def test_a_trial_stops_at_its_daily_spend_limit(sidecars: Sidecars, upstream: FakeOpenAI):
    # A call holds 0.135 (7 input tokens, and twice 16 output tokens at most) and costs
    # 0.019: 0.16 a day lets two through (0.019 + 0.135 fits), not a third.
    sc = await sidecars.start(
        policy(upstream.base_url, "{candidates: [small], sample: 1.0, max_usd_per_day: 0.16}")
    )
    async with client(sc) as app:
        for i in range(6):
            await ask(app, content=f"q{i}")
            await until(lambda: sc.holder.stores.shadows.running("chat") == 0)
    trial = await report(sc)
    found = trial["candidates"][0]
    assert candidate_calls(upstream) == found["compared"] == 2
    assert found["skipped_at_limit"] == 1  # then paused: no store call per request for a while
    assert trial["spent_today_usd"] == pytest.approx(2 * SMALL)
    assert trial["held_usd"] == 0.0
    skipped = (await ops(sc, "/stats"))["metrics"]["sidecar.shadow.skipped"]["points"]
    assert sum(p["value"] for p in skipped if p["attributes"]["sidecar.reason"] == "limit") == 4


async def test_shadow_spend_counts_against_the_saving_but_not_the_apps_rows(
    sidecars: Sidecars, upstream: FakeOpenAI
):
    sc = await sidecars.start(
        policy(upstream.base_url, "{candidates: [small], sample: 1.0, max_usd_per_day: 10}")
    )
    async with client(sc) as app:
        headers, _ = await ask(app)
    assert float(headers["x-sidecar-saved-usd"]) == 0.0  # the answer's own ledger
    await compared(sc, 1)

    async def row(scope: str, value: str) -> dict[str, Any]:
        rows = (await ops(sc, f"/usage?scope={scope}&window=day"))["rows"]
        return next(r for r in rows if r["value"] == value)

    glob, route = await row("global", "*"), await row("route", "chat")
    assert glob["cost_usd"] == pytest.approx(BIG + SMALL)
    assert glob["saved_by_lever"]["shadow"] == pytest.approx(-SMALL)
    assert glob["saved_usd"] == pytest.approx(-SMALL)
    assert glob["requests"] == 1  # a shadow call is not a request
    assert route["cost_usd"] == pytest.approx(BIG)  # the app's route (and its budgets)
    assert (await row("model", "small"))["cost_usd"] == pytest.approx(SMALL)
    assert (await row("shadow", "chat"))["cost_usd"] == pytest.approx(SMALL)
    saved = (await ops(sc, "/stats"))["metrics"]["sidecar.cost.saved"]["points"]
    assert [p["value"] for p in saved if p["attributes"]["sidecar.lever"] == "shadow"] == [
        pytest.approx(-SMALL)
    ]


async def test_a_candidate_that_answered_the_request_itself_is_not_asked_again(
    sidecars: Sidecars, upstream: FakeOpenAI
):
    upstream.behave("up-big", status=500, fail_times=1)  # the first request falls back to small
    upstream.behave("up-small", reply="other words")
    routes = """
        providers:
          main: {{type: openai, base_url: "{url}"}}
        models:
          big: {{provider: main, name: up-big, price: {{input: 3000, output: 15000}}}}
          small: {{provider: main, name: up-small, price: {{input: 1000, output: 4000}}}}
        routes:
          chat:
            targets: [big, small]
            retry: {{attempts: 1}}
            shadow: {{candidates: [small], sample: 1.0, max_usd_per_day: 10}}
        """
    sc = await sidecars.start(routes.format(url=upstream.base_url))
    async with client(sc) as app:
        assert (await ask(app))[1] == "other words"  # small's own answer: not compared
        assert (await ask(app))[1] == SAME  # big's: compared with small's
    await compared(sc, 1)
    await until(lambda: sc.holder.stores.shadows.running("chat") == 0)
    found = (await report(sc))["candidates"][0]
    assert (found["compared"], found["agreement"]["rate"]) == (1, 0.0)
    assert candidate_calls(upstream) == 2  # its answer, and one shadow call


async def test_a_failing_candidate_is_counted_as_an_error(sidecars: Sidecars, upstream: FakeOpenAI):
    upstream.behave("up-small", status=500)
    sc = await sidecars.start(
        policy(upstream.base_url, "{candidates: [small], sample: 1.0, max_usd_per_day: 1}")
    )
    async with client(sc) as app:
        _, text = await ask(app)
    assert text == SAME
    found = await compared(sc, 1)
    assert (found["errors"], found["compared"]) == (1, 0)
    assert found["agreement"]["rate"] is None
    assert (await report(sc))["spent_today_usd"] == 0.0


async def test_llm_sidecar_shadow_prints_the_report(
    sidecars: Sidecars, upstream: FakeOpenAI, capsys: pytest.CaptureFixture[str]
):
    upstream.behave("up-small", replies=[SAME, SAME, SAME, "different"])
    sc = await sidecars.start(
        policy(upstream.base_url, "{candidates: [small], sample: 1.0, max_usd_per_day: 10}")
    )
    async with client(sc) as app:
        for i in range(4):
            await ask(app, content=f"q{i}")
    await compared(sc, 4)
    url = f"http://127.0.0.1:{sc.ops_port}"
    assert await asyncio.to_thread(cli, ["shadow", "--ops", url, "--route", "chat"]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("small"))
    cells = line.split()
    assert cells[:4] == ["small", "4", "75.0%", "30.1-95.4%"]
    assert "71.2%" in cells  # the saving: 1 - 0.019 / 0.066
    assert "shadow spend today 0.0760 of 10 USD" in out
    assert await asyncio.to_thread(cli, ["shadow", "--ops", url, "--route", "nope"]) == 1
    assert "has no shadow trial" in capsys.readouterr().err


async def test_shutdown_does_not_wait_for_a_slow_candidate(
    sidecars: Sidecars, upstream: FakeOpenAI
):
    upstream.behave("up-small", delay=30.0)
    sc = await sidecars.start(
        policy(upstream.base_url, "{candidates: [small], sample: 1.0, max_usd_per_day: 1}")
    )
    async with client(sc) as app:
        await ask(app)
    await until(lambda: candidate_calls(upstream) == 1)
    began = time.monotonic()
    await sc.stop()
    sidecars.started.remove(sc)
    assert time.monotonic() - began < 10  # the candidate would answer after 30 s
    await until(lambda: upstream.cancelled == 1)  # its call was given up, not left running
