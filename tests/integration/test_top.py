"""`llm-sidecar top --once` as a user runs it: a separate process reading the ops port of a
sidecar that has served real traffic, its numbers checked against what was sent."""

from __future__ import annotations

import asyncio
import contextlib
import re
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import openai

from tests.support.sidecar import start_sidecar, write_policy
from tests.support.upstream import FakeOpenAI

MESSAGES = [{"role": "user", "content": "hi"}]


async def top_once(ops_port: int) -> str:
    proc = await asyncio.create_subprocess_exec(  # the sidecar runs on this test's loop
        sys.executable,
        "-m",
        "sidecar",
        "top",
        "--once",
        "--ops",
        f"http://127.0.0.1:{ops_port}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 15)
    assert proc.returncode == 0, err.decode()
    return out.decode()


def row(text: str, first: str) -> list[str]:
    return next(line.split() for line in text.splitlines() if line.split()[:1] == [first])


def seconds(cell: str) -> float:
    number = float(re.sub(r"[a-z]+$", "", cell))
    return number / 1000 if cell.endswith("ms") else number


async def traffic_then_top(
    tmp_path: Path, policy: str, send: Callable[[openai.AsyncOpenAI], Awaitable[None]]
) -> str:
    """Serve `policy`, let `send` make requests through the SDK, then run `top --once`."""
    write_policy(tmp_path / "p", "p.yaml", policy)
    sc = await start_sidecar(tmp_path / "p")
    try:
        async with openai.AsyncOpenAI(
            base_url=f"http://127.0.0.1:{sc.port}/v1", api_key="x", max_retries=0
        ) as client:
            await send(client)
        return await top_once(sc.ops_port)
    finally:
        await sc.stop()


async def test_top_once_shows_counts_percentiles_users_and_circuits(
    tmp_path: Path, upstream: FakeOpenAI
):
    policy = f"""\
        providers:
          main: {{type: openai, base_url: {upstream.base_url}}}
        models:
          f: {{provider: main, name: up-f, price: {{input: 1000, output: 2000}}}}
          s: {{provider: main, name: up-s, circuit: {{consecutive_failures: 5}}}}
        routes:
          fast: {{targets: [f]}}
          slow: {{targets: [s]}}
          cached: {{targets: [f], cache: answers}}
        cache:
          answers: {{mode: exact, tools: false}}
        telemetry: {{user_attribute: true, max_users: 10}}
        budgets:
          fast-day: {{scope: route, routes: [fast], limit_usd: 100, window: day}}
        """
    upstream.behave("up-s", delay=0.2)

    async def send(client: openai.AsyncOpenAI) -> None:
        for i in range(12):
            await client.chat.completions.create(
                model="fast", messages=MESSAGES, extra_headers={"x-sidecar-user": f"u{i % 2}"}
            )
        await asyncio.gather(
            *(client.chat.completions.create(model="slow", messages=MESSAGES) for _ in range(8))
        )
        for _ in range(3):  # a miss, two hits
            await client.chat.completions.create(model="cached", messages=MESSAGES)
        bypass = {"x-sidecar-cache": "bypass"}  # the app's own
        await client.chat.completions.create(
            model="cached", messages=MESSAGES, extra_headers=bypass
        )
        tool = {"type": "function", "function": {"name": "t", "parameters": {"type": "object"}}}
        await client.chat.completions.create(  # the cache says tools: false
            model="cached",
            messages=MESSAGES,
            tools=[tool],
        )

    text = await traffic_then_top(tmp_path, policy, send)

    assert "requests" in text
    assert re.search(r"requests\s+[\d.]+/s \(25\)", text), text
    # Two of the three lookups hit (the others looked nothing up); each saved the miss's cost.
    one = (7 * 1000 + 3 * 2000) / 1e6
    cache = row(text, "cache")
    assert cache[:8] == ["cache", "hits", "67%", "of", "3", "(semantic", "0)", "bypassed"], text
    assert cache[8:] == ["1", "ineligible", "1", "saved", f"{2 * one:.6f}", "USD"], text
    fast, slow = row(text, "fast"), row(text, "slow")
    # ROUTE REQ/S ERR% P50 P95 P99 REQUESTS TOK-IN TOK-OUT COST
    assert fast[6] == "12"
    assert slow[6] == "8"
    assert fast[2] == slow[2] == "0.0%"
    # Each slow request took a little over 200 ms (more for the first connections): its
    # median lies in the (160, 320] ms bucket of the conventions' boundaries, interpolated
    # within it; the fast ones' in the first buckets.
    assert 0.16 < seconds(slow[3]) <= 0.32, text
    assert seconds(fast[3]) <= 0.04, text
    assert (fast[7], fast[8]) == ("84", "36")  # 12 x 7 and 12 x 3 tokens
    assert float(fast[9]) == 12 * (7 * 1000 + 3 * 2000) / 1e6
    assert row(text, "u0")[1:3] == ["42", "18"]  # 6 requests each
    assert row(text, "u1")[1:3] == ["42", "18"]
    assert row(text, "s")[1] == "closed"  # the model with a circuit breaker
    # BUDGET SCOPE WINDOW SPENT LEFT: read from the state store when top asked.
    spent = 12 * (7 * 1000 + 3 * 2000) / 1e6
    assert row(text, "fast-day") == [
        "fast-day",
        "route",
        "fast",
        "day",
        f"{spent:.6f}",
        f"{100 - spent:.6f}",
    ]


async def test_top_once_shows_what_the_ledger_saved_by_lever(tmp_path: Path, upstream: FakeOpenAI):
    policy = f"""\
        providers:
          main: {{type: openai, base_url: {upstream.base_url}}}
        models:
          dear: {{provider: main, name: up-dear, price: {{input: 3000, output: 15000}}}}
          cheap: {{provider: main, name: up-cheap, price: {{input: 1000, output: 4000}}}}
        cache:
          answers: {{mode: exact, scope: global}}
        routes:
          picked: {{targets: [cheap], baseline: dear}}
          cached: {{targets: [dear], cache: answers}}
        """

    async def send(client: openai.AsyncOpenAI) -> None:
        await client.chat.completions.create(model="picked", messages=MESSAGES)
        for _ in range(3):  # a miss, then two hits
            await client.chat.completions.create(model="cached", messages=MESSAGES, temperature=0)

    text = await traffic_then_top(tmp_path, policy, send)
    dear, cheap = (7 * 3000 + 3 * 15000) / 1e6, (7 * 1000 + 3 * 4000) / 1e6
    would, saved = 4 * dear, (dear - cheap) + 2 * dear
    assert row(text, "savings") == [
        "savings",
        *("would", "have", "cost", f"{would:.6f}", "USD,", "saved", f"{saved:.6f}"),
        f"({100 * saved / would:.1f}%)",
        *("cache", f"{2 * dear:.6f}", "selection", f"{dear - cheap:.6f}"),
    ]
    # ROUTE ... COST USD, SAVED USD
    assert row(text, "picked")[-2:] == [f"{cheap:.6f}", f"{dear - cheap:.6f}"]
    assert row(text, "cached")[-1] == f"{2 * dear:.6f}"


async def test_top_once_shows_tiers_acceptance_and_escalations(
    tmp_path: Path, upstream: FakeOpenAI
):
    policy = f"""\
        providers:
          main: {{type: openai, base_url: {upstream.base_url}}}
        models:
          dear: {{provider: main, name: up-dear, price: {{input: 3000, output: 15000}}}}
          cheap: {{provider: main, name: up-cheap, price: {{input: 1000, output: 4000}}}}
        routes:
          chat:
            select:
              tiers:
                small: {{targets: [cheap]}}
                large: {{targets: [dear]}}
              default: small
            cascade: {{}}
        """
    upstream.behave("up-cheap", replies=["fine", "fine", "fine", "I'm sorry, I cannot help."])

    async def send(client: openai.AsyncOpenAI) -> None:
        for _ in range(4):
            await client.chat.completions.create(model="chat", messages=MESSAGES)

    text = await traffic_then_top(tmp_path, policy, send)
    cheap = (7 * 1000 + 3 * 4000) / 1e6
    assert row(text, "tiers") == [
        *("tiers", "small", "3", "(accepted", "75%)", "large", "1", "escalations", "1"),
        *("(refusal", "1)", "cost", f"{cheap:.6f}", "USD"),
    ]


async def test_top_once_shows_quality_per_route_and_model(tmp_path: Path, upstream: FakeOpenAI):
    policy = f"""\
        providers:
          main: {{type: openai, base_url: {upstream.base_url}}}
        models:
          a: {{provider: main, name: up-a}}
          b: {{provider: main, name: up-b}}
        schemas:
          thing: {{type: object, required: [x]}}
        routes:
          chat:
            targets: [a]
            shadow: {{candidates: [b], sample: 1.0, max_usd_per_day: 1}}
          form:
            targets: [a]
            output: {{schema: thing, on_invalid: {{retries: 0, then: error}}}}
        """
    upstream.behave("up-a", replies=["fine", "I'm sorry, but I can't help.", "", "fine"])
    upstream.behave("up-b", replies=["fine", "other", "", "fine"])

    async def send(client: openai.AsyncOpenAI) -> None:
        ids = [
            (await client.chat.completions.create(model="chat", messages=MESSAGES)).id
            for _ in range(4)
        ]
        upstream.behave("up-a", reply='{"x": 1}')
        await client.chat.completions.create(model="form", messages=MESSAGES)
        upstream.behave("up-a", reply="no")
        with contextlib.suppress(openai.UnprocessableEntityError):
            await client.chat.completions.create(model="form", messages=MESSAGES)
        for answer_id, score in zip(ids, ("up", "down", 0.5), strict=False):
            await client.post("/feedback", body={"id": answer_id, "score": score}, cast_to=object)
        await asyncio.sleep(0.3)  # the shadow calls land after the answers

    text = await traffic_then_top(tmp_path, policy, send)
    quality = row(text, "quality")
    assert quality[:6] == ["quality", "truncated", "0", "refused", "1", "empty"], text
    assert quality[6:10] == ["1", "feedback", "3", "(mean"], text
    assert quality[10:] == ["0.50)", "shadow", "4", "compared,", "75.0%", "agree"], text
    # QUALITY MODEL TIER REQUESTS VALID REPAIRED DEFAULT 422 TRUNC REFUSED EMPTY FEEDBACK SCORE
    lines = [line.split() for line in text.splitlines()]
    by_route = {cells[0]: cells for cells in lines if cells[1:3] == ["a", "-"]}
    assert by_route["chat"][3:] == [
        "4",
        "0",
        "0",
        "0",
        "0",
        *("0.0%", "25.0%", "25.0%"),
        "3",
        "0.50",
    ]
    assert by_route["form"][3:] == ["2", "1", "0", "0", "1", *("0.0%",) * 3, "0", "-"]
