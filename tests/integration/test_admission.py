"""Admission and accounting through real servers: rate limits and queues, token limits,
cost headers and usage rows, budgets (reject, downgrade, alert, warn), state on memory,
sqlite and a real redis-server, four sidecar processes sharing one Redis, restarts, a Redis
that dies, and the usage API. Clients are the official OpenAI SDK.

Prices are chosen so costs are easy to read: the fake upstream always reports 7 prompt and
3 completion tokens, so model `a` costs (7 x 1000 + 3 x 2000) / 1e6 = 0.013 USD a request.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import yaml

from sidecar.app import Sidecar
from tests.support.redis import RedisServer
from tests.support.sidecar import SidecarProcess, Sidecars, write_policy
from tests.support.upstream import FakeOpenAI

PRICES = {
    "a": {"input": 1000, "output": 2000},
    "b": {"input": 3000, "output": 5000},
    "cheap": {"input": 100, "output": 200},
}
IN, OUT = 7, 3  # what the fake upstream reports for every answer


def cost(model: str, input_tokens: int = IN, output_tokens: int = OUT) -> float:
    price = PRICES[model]
    return (input_tokens * price["input"] + output_tokens * price["output"]) / 1e6


def hold(model: str, estimate_in: int, max_tokens: int) -> float:
    """What admission reserves: estimated input plus max_tokens output, at `model`'s prices."""
    return cost(model, estimate_in, max_tokens)


HI_ESTIMATE = 7  # the sidecar's estimate for one message "hi": 3 + 4 a message + 2 // 4


def policy(
    upstream: FakeOpenAI,
    *,
    state: Mapping[str, Any] | None = None,
    limits: Mapping[str, Any] | None = None,
    budgets: Mapping[str, Any] | None = None,
    targets: Sequence[str] = ("a",),
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "providers": {"main": {"type": "openai", "base_url": upstream.base_url, "timeout": "5s"}},
        "models": {
            name: {"provider": "main", "name": f"up-{name}", "price": price}
            for name, price in PRICES.items()
        },
        "routes": {"r": {"targets": list(targets), "timeout": "5s"}},
        "state": dict(state or {"backend": "memory"}),
    }
    if limits:
        doc["limits"] = dict(limits)
    if budgets:
        doc["budgets"] = dict(budgets)
    return doc


def write(folder: Path, doc: Mapping[str, Any]) -> Path:
    write_policy(folder, "policy.yaml", yaml.safe_dump(dict(doc), sort_keys=False))
    return folder


Make = Callable[..., Awaitable[Sidecar]]


@pytest.fixture
def make(sidecars: Sidecars, upstream: FakeOpenAI) -> Make:
    """Start an in-process sidecar on the policy built from keyword arguments."""

    async def start(usage_token: str = "", **kw: Any) -> Sidecar:
        text = yaml.safe_dump(policy(upstream, **kw), sort_keys=False)
        return await sidecars.start(text, usage_token=usage_token)

    return start


def api(
    port: int,
    user: str | None = None,
    team: str | None = None,
    timeout: float = 10.0,
) -> openai.AsyncOpenAI:
    headers = {}
    if user is not None:
        headers["x-sidecar-user"] = user
    if team is not None:
        headers["x-sidecar-team"] = team
    return openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{port}/v1",
        api_key="app-key",
        max_retries=0,
        timeout=timeout,
        default_headers=headers,
    )


@dataclass
class Outcome:
    status: int
    headers: Mapping[str, str]
    code: str | None = None
    type: str | None = None
    message: str = ""
    text: str = ""


async def chat(client: openai.AsyncOpenAI, content: str = "hi", **kw: Any) -> Outcome:
    try:
        raw = await client.chat.completions.with_raw_response.create(
            model="r", messages=[{"role": "user", "content": content}], **kw
        )
    except openai.APIStatusError as exc:
        body = exc.response.json()
        assert set(body) == {"error"}, body  # OpenAI's error shape
        error = body["error"]
        assert set(error) == {"message", "type", "code"}, error
        return Outcome(
            exc.status_code, exc.response.headers, error["code"], error["type"], error["message"]
        )
    return Outcome(200, raw.headers, text=raw.parse().choices[0].message.content or "")


async def get_usage(
    ops_port: int, scope: str, window: str = "day", token: str | None = None
) -> tuple[int, dict[str, Any]]:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"http://127.0.0.1:{ops_port}/usage",
            params={"scope": scope, "window": window},
            headers=headers,
        ) as r,
    ):
        return r.status, await r.json()


async def rows(ops_port: int, scope: str, window: str = "day") -> dict[str, dict[str, Any]]:
    status, body = await get_usage(ops_port, scope, window)
    assert status == 200, body
    return {row["value"]: row for row in body["rows"]}


async def until(check: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.005)


def waiting(sc: Sidecar) -> int:
    return sum(sc.holder.stores.lines.waiting().values())


def seconds_to_utc_midnight() -> float:
    now = dt.datetime.now(dt.UTC)
    midnight = (now + dt.timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return (midnight - now).total_seconds()


async def cli_usage(
    ops_port: int, *args: str, env: Mapping[str, str] | None = None
) -> tuple[int, str, str]:
    """`llm-sidecar usage` as a user runs it, off the event loop serving the sidecar."""
    environ = {k: v for k, v in os.environ.items() if k != "SIDECAR_USAGE_TOKEN"}
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "sidecar", "usage", "--ops", f"http://127.0.0.1:{ops_port}"),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**environ, **(env or {})},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


# -- rate limits and queues ---------------------------------------------------------------


async def test_rate_limit_is_exact_under_50_concurrent_requests(make: Make, upstream: FakeOpenAI):
    sc = await make(limits={"per-team": {"scope": "team", "requests_per_minute": 10}})
    async with api(sc.port, team="t") as client:
        outcomes = await asyncio.gather(*(chat(client) for _ in range(50)))
    ok = [o for o in outcomes if o.status == 200]
    refused = [o for o in outcomes if o.status != 200]
    assert len(ok) == 10
    assert len(upstream.calls()) == 10
    assert len(refused) == 40
    for o in refused:
        assert (o.status, o.type, o.code) == (429, "rate_limit_error", "rate_limited")
        assert "per-team" in o.message
        # Ten a minute is one every six seconds, and all ten were taken just now: the next
        # is due in six (Retry-After rounds the wait up to whole seconds).
        assert o.headers["retry-after"] == "6"
    # Per team: another team has its own allowance.
    async with api(sc.port, team="other") as client:
        assert (await chat(client)).status == 200


async def test_queued_requests_are_served_one_at_a_time_in_arrival_order(
    make: Make, upstream: FakeOpenAI
):
    sc = await make(
        limits={"one": {"scope": "global", "max_concurrent": 1, "queue": {"max_wait": "10s"}}}
    )
    upstream.behave("up-a", delay=0.15)
    async with api(sc.port) as client:
        tasks = [asyncio.create_task(chat(client, "m0"))]
        await until(lambda: len(upstream.seen) == 1)
        for i in range(1, 5):
            tasks.append(asyncio.create_task(chat(client, f"m{i}")))
            await until(lambda i=i: waiting(sc) == i)  # type: ignore[misc]
        outcomes = await asyncio.gather(*tasks)
    assert [o.status for o in outcomes] == [200] * 5
    seen = upstream.calls()
    assert [s.body["messages"][0]["content"] for s in seen] == [f"m{i}" for i in range(5)]
    gaps = [b.at - a.at for a, b in itertools.pairwise(seen)]
    assert min(gaps) >= 0.14  # each waited for the one before it to finish


async def test_a_full_queue_answers_429_queue_full(make: Make, upstream: FakeOpenAI):
    sc = await make(
        limits={
            "one": {
                "scope": "global",
                "max_concurrent": 1,
                "queue": {"max_wait": "10s", "max_size": 2},
            }
        }
    )
    upstream.behave("up-a", delay=0.3)
    async with api(sc.port) as client:
        first = asyncio.create_task(chat(client))
        await until(lambda: len(upstream.seen) == 1)
        queued = [asyncio.create_task(chat(client)) for _ in range(2)]
        await until(lambda: waiting(sc) == 2)
        began = time.monotonic()
        over = await chat(client)
        assert time.monotonic() - began < 0.2  # refused at once, not after waiting
        assert (over.status, over.code) == (429, "queue_full")
        assert over.headers["retry-after"] == "1"
        assert [o.status for o in await asyncio.gather(first, *queued)] == [200] * 3


async def test_waiting_longer_than_max_wait_answers_429(make: Make, upstream: FakeOpenAI):
    sc = await make(
        limits={"one": {"scope": "global", "max_concurrent": 1, "queue": {"max_wait": "300ms"}}}
    )
    upstream.behave("up-a", delay=1.0)
    async with api(sc.port) as client:
        first = asyncio.create_task(chat(client))
        await until(lambda: len(upstream.seen) == 1)
        began = time.monotonic()
        late = await chat(client)
        waited = time.monotonic() - began
        assert (late.status, late.code) == (429, "rate_limited")
        assert int(late.headers["retry-after"]) >= 1
        assert 0.28 <= waited < 0.8
        assert waiting(sc) == 0  # it left the line
        assert (await first).status == 200
    assert len(upstream.calls()) == 1


async def test_an_app_that_gives_up_frees_its_concurrency_slot_at_once(
    make: Make, upstream: FakeOpenAI
):
    sc = await make(
        limits={"one": {"scope": "global", "max_concurrent": 1, "queue": {"max_wait": "200ms"}}}
    )
    upstream.behave("up-a", delay=3.0)
    async with api(sc.port, timeout=0.3) as impatient:
        with pytest.raises(openai.APITimeoutError):
            await chat(impatient)
    upstream.behave("up-a")
    # Its slot went with it: the next request is not left waiting 200 ms and refused.
    async with api(sc.port) as client:
        assert (await chat(client)).status == 200
    assert waiting(sc) == 0


async def test_priority_header_jumps_ahead_of_normal_waiters(make: Make, upstream: FakeOpenAI):
    sc = await make(
        limits={"one": {"scope": "global", "max_concurrent": 1, "queue": {"max_wait": "10s"}}}
    )
    upstream.behave("up-a", delay=0.15)
    async with api(sc.port) as client:
        tasks = [asyncio.create_task(chat(client, "first"))]
        await until(lambda: len(upstream.seen) == 1)
        for n, (content, priority) in enumerate(
            [("normal-1", None), ("normal-2", "normal"), ("urgent", "high")], start=1
        ):
            headers = {"x-sidecar-priority": priority} if priority else {}
            tasks.append(asyncio.create_task(chat(client, content, extra_headers=headers)))
            await until(lambda n=n: waiting(sc) == n)  # type: ignore[misc]
        assert [o.status for o in await asyncio.gather(*tasks)] == [200] * 4
    order = [s.body["messages"][0]["content"] for s in upstream.calls()]
    assert order == ["first", "urgent", "normal-1", "normal-2"]


async def test_tokens_are_charged_as_estimated_then_corrected_to_real_usage(
    make: Make, upstream: FakeOpenAI
):
    sc = await make(limits={"tpm": {"scope": "team", "tokens_per_minute": 200}})
    big = "x" * 360  # estimated at 3 + 4 + 90 = 97 tokens; the upstream reports 7 + 3 = 10
    upstream.behave("up-a", delay=0.3)
    async with api(sc.port, team="t") as client:
        # Charged before the call: two estimates fit in 200, a third does not.
        outcomes = await asyncio.gather(*(chat(client, big) for _ in range(3)))
        assert sorted(o.status for o in outcomes) == [200, 200, 429]
        refused = next(o for o in outcomes if o.status == 429)
        assert refused.code == "rate_limited"
        assert "tpm" in refused.message
        # Corrected after: the two count 10 each, not 97. Each further request needs room for
        # its 97 and then counts 10, so exactly 9 more fit (20 + 8 x 10 + 97 <= 200).
        upstream.behave("up-a")
        statuses = [(await chat(client, big)).status for _ in range(10)]
    assert statuses == [200] * 9 + [429]


# -- accounting ----------------------------------------------------------------------------


async def test_cost_header_prices_the_model_that_answered(make: Make, upstream: FakeOpenAI):
    sc = await make(targets=["a", "b"])
    async with api(sc.port) as client:
        first = await chat(client)
        assert first.headers["x-sidecar-model"] == "a"
        assert first.headers["x-sidecar-cost-usd"] == f"{cost('a'):.8f}" == "0.01300000"
        assert "x-sidecar-usage" not in first.headers  # reported, not estimated
        upstream.behave("up-a", status=500)
        fallback = await chat(client)
    assert fallback.headers["x-sidecar-model"] == "b"
    assert fallback.headers["x-sidecar-cost-usd"] == f"{cost('b'):.8f}" == "0.03600000"


async def test_streams_are_accounted_with_or_without_include_usage(
    make: Make, upstream: FakeOpenAI
):
    sc = await make()
    async with api(sc.port, user="asked") as client:
        stream = await client.chat.completions.create(
            model="r",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        usages = [chunk.usage async for chunk in stream if chunk.usage is not None]
    assert [(u.prompt_tokens, u.completion_tokens) for u in usages] == [(IN, OUT)]

    async with api(sc.port, user="silent") as client:
        stream = await client.chat.completions.create(
            model="r", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert all(c.usage is None for c in chunks)  # the usage chunk the sidecar asked for is dropped
    assert all(c.choices for c in chunks)
    assert upstream.calls()[-1].body["stream_options"] == {"include_usage": True}

    # Headers went out before the usage was known: the cost is in the usage rows. A stream is
    # accounted just after its last event, so wait for the row.
    found: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and len(found) < 2:
        found = await rows(sc.ops_port, "user")
    for user in ("asked", "silent"):
        assert found[user]["requests"] == 1
        assert (found[user]["input_tokens"], found[user]["output_tokens"]) == (IN, OUT)
        assert found[user]["cost_usd"] == pytest.approx(cost("a"))


async def test_usage_rows_per_user_team_route_model_and_the_usage_command(
    make: Make, upstream: FakeOpenAI
):
    sc = await make(
        targets=["a", "b"],
        budgets={"team-cap": {"scope": "team", "limit_usd": 1.0, "window": "day"}},
    )
    async with api(sc.port, user="u1", team="t1") as client:
        assert (await chat(client, max_tokens=10)).status == 200  # answered by a
    upstream.behave("up-a", status=500)
    async with api(sc.port, user="u2", team="t1") as client:
        assert (await chat(client, max_tokens=10)).status == 200  # answered by b
    both = cost("a") + cost("b")

    users = await rows(sc.ops_port, "user")
    assert users["u1"]["cost_usd"] == pytest.approx(cost("a"))
    assert users["u2"]["cost_usd"] == pytest.approx(cost("b"))
    assert "budgets" not in users["u1"]
    teams = await rows(sc.ops_port, "team")
    assert set(teams) == {"t1"}
    assert teams["t1"]["requests"] == 2
    assert (teams["t1"]["input_tokens"], teams["t1"]["output_tokens"]) == (2 * IN, 2 * OUT)
    assert teams["t1"]["cost_usd"] == pytest.approx(both)
    [budget] = teams["t1"]["budgets"]
    assert budget["name"] == "team-cap"
    assert budget["remaining_usd"] == pytest.approx(1.0 - both)
    assert (await rows(sc.ops_port, "route"))["r"]["requests"] == 2
    models = await rows(sc.ops_port, "model")
    assert {m: row["requests"] for m, row in models.items()} == {"a": 1, "b": 1}
    assert (await rows(sc.ops_port, "global", "total"))["*"]["cost_usd"] == pytest.approx(both)
    assert (await rows(sc.ops_port, "team", "hour"))["t1"]["requests"] == 2
    status, _ = await get_usage(sc.ops_port, "planet")
    assert status == 400

    code, out, err = await cli_usage(sc.ops_port, "--scope", "team", "--window", "day")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("team usage, day ")
    [t1] = [line.split() for line in lines if line.startswith("t1 ")]
    # b is the dearer target, so the route's baseline: a answering saved the difference.
    saved = cost("b") - cost("a")
    money = [f"{both:.6f}", f"{2 * cost('b'):.6f}", f"{saved:.6f}", f"{saved:.6f}"]
    assert lines[2].split() == [
        "value",
        *("requests", "input_tokens", "output_tokens", "cached_tokens"),
        *("cost_usd", "baseline_usd", "saved_usd", "saved_selection"),
        "budget_remaining_usd",
    ]
    assert t1 == ["t1", "2", "14", "6", "0", *money, f"{1.0 - both:.6f}"]
    code, out, _ = await cli_usage(sc.ops_port, "--scope", "model", "--window", "week")
    assert code == 0
    assert {line.split()[0] for line in out.splitlines()[4:]} == {"a", "b"}


# -- budgets --------------------------------------------------------------------------------


async def test_reject_budget_answers_429_until_the_end_of_the_utc_window(
    make: Make, upstream: FakeOpenAI
):
    sc = await make(budgets={"cap": {"scope": "team", "limit_usd": 0.1, "window": "day"}})
    # Each request holds 0.027 and then costs 0.013: six fit (0.078 + 0.027 > 0.1).
    assert hold("a", HI_ESTIMATE, 10) == pytest.approx(0.027)
    async with api(sc.port, team="spender") as client:
        statuses = [(await chat(client, max_tokens=10)).status for _ in range(6)]
        assert statuses == [200] * 6
        over = await chat(client, max_tokens=10)
    assert (over.status, over.type, over.code) == (429, "rate_limit_error", "budget_exceeded")
    assert "cap" in over.message
    assert abs(int(over.headers["retry-after"]) - seconds_to_utc_midnight()) <= 2
    assert len(upstream.calls()) == 6
    spent = (await rows(sc.ops_port, "team"))["spender"]
    assert spent["cost_usd"] == pytest.approx(6 * cost("a"))
    assert spent["budgets"][0]["remaining_usd"] == pytest.approx(0.1 - 6 * cost("a"))
    async with api(sc.port, team="frugal") as client:  # every team has its own budget
        assert (await chat(client, max_tokens=10)).status == 200


async def test_a_request_without_max_tokens_holds_what_the_routes_answers_use(
    sidecars: Sidecars, upstream: FakeOpenAI
):
    """Before the route has answered, its hold assumes 4096 output tokens, and the refusal
    says so; once it has, the hold is what its answers use (3 tokens each, here)."""
    doc = policy(
        upstream,
        budgets={"cap": {"scope": "team", "values": ["t"], "limit_usd": 0.02, "window": "day"}},
    )
    doc["models"]["a"]["price"] = {"input": 0, "output": 10}  # USD per 1M: 4096 -> 0.041
    sc = await sidecars.start(yaml.safe_dump(doc, sort_keys=False))
    async with api(sc.port, team="t") as client:
        refused = await chat(client)
    assert (refused.status, refused.code) == (429, "budget_exceeded")
    assert "0.04096 USD" in refused.message
    assert "4096 output tokens" in refused.message
    assert "no answers yet" in refused.message
    async with api(sc.port, team="other") as client:  # no budget: the route's history
        assert [(await chat(client)).status for _ in range(3)] == [200] * 3
    async with api(sc.port, team="t") as client:
        assert (await chat(client)).status == 200  # holds 3 x 10 / 1e6 USD
    spent = (await rows(sc.ops_port, "team"))["t"]
    assert spent["cost_usd"] == pytest.approx(OUT * 10 / 1e6)


async def test_downgrade_budget_switches_to_the_cheaper_model_and_says_so(
    make: Make, upstream: FakeOpenAI
):
    sc = await make(
        budgets={
            "soft": {
                "scope": "team",
                "limit_usd": 0.02,
                "window": "day",
                "on_exceed": "downgrade",
                "downgrade_to": "cheap",
            }
        }
    )
    async with api(sc.port, team="t") as client:
        before = [await chat(client) for _ in range(2)]  # 0.013, then 0.026 >= 0.02
        after = [await chat(client) for _ in range(2)]
    for o in before:
        assert o.headers["x-sidecar-model"] == "a"
        assert "x-sidecar-downgraded" not in o.headers
    for o in after:
        assert o.status == 200
        assert o.headers["x-sidecar-model"] == "cheap"
        assert o.headers["x-sidecar-downgraded"] == "soft"
        assert o.headers["x-sidecar-cost-usd"] == f"{cost('cheap'):.8f}"
    assert [s.body["model"] for s in upstream.calls()] == ["up-a"] * 2 + ["up-cheap"] * 2


async def test_alert_budget_serves_and_warns_once(
    make: Make, upstream: FakeOpenAI, caplog: pytest.LogCaptureFixture
):
    sc = await make(
        budgets={
            "watch": {"scope": "team", "limit_usd": 0.02, "window": "day", "on_exceed": "alert"}
        }
    )
    caplog.set_level(logging.WARNING, "sidecar")
    async with api(sc.port, team="t") as client:
        outcomes = [await chat(client) for _ in range(5)]
    assert [o.status for o in outcomes] == [200] * 5
    assert all(o.headers["x-sidecar-model"] == "a" for o in outcomes)
    alerts = [r for r in caplog.records if "(on_exceed: alert)" in r.getMessage()]
    assert len(alerts) == 1
    assert "watch" in alerts[0].getMessage()


async def test_warn_at_logs_once_per_window(
    make: Make, upstream: FakeOpenAI, caplog: pytest.LogCaptureFixture
):
    sc = await make(
        budgets={"cap": {"scope": "team", "limit_usd": 1.0, "window": "day", "warn_at": 0.05}}
    )
    caplog.set_level(logging.WARNING, "sidecar")

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if "(warn_at " in r.getMessage()]

    async with api(sc.port, team="t") as client:
        for _ in range(3):  # 0.039 spent: below 5% of 1 USD
            await chat(client, max_tokens=10)
        assert warnings() == []
        await chat(client, max_tokens=10)  # 0.052
        assert len(warnings()) == 1
        assert "cap" in warnings()[0]
        for _ in range(3):
            await chat(client, max_tokens=10)
    assert len(warnings()) == 1
    async with api(sc.port, team="other") as client:  # a window per team value
        for _ in range(4):
            await chat(client, max_tokens=10)
    assert len(warnings()) == 2


def state_for(backend: str, request: pytest.FixtureRequest) -> dict[str, Any]:
    if backend == "memory":
        return {"backend": "memory"}
    if backend == "sqlite":
        return {"backend": "sqlite", "path": "state.db", "flush_interval": "50ms"}
    server: RedisServer = request.getfixturevalue("redis_server")
    return {"backend": "redis", "url": server.url}


async def spend_in_waves(
    ports: Sequence[int], team: str, max_tokens: int, concurrent: int
) -> tuple[int, list[int]]:
    """Send waves of `concurrent` requests, spread over `ports`, until a wave has no success.
    Returns (successes, successes per wave)."""
    clients = [api(port, team=team) for port in ports]
    waves: list[int] = []
    try:
        for _ in range(10):
            outcomes = await asyncio.gather(
                *(chat(clients[i % len(clients)], max_tokens=max_tokens) for i in range(concurrent))
            )
            refused = [o for o in outcomes if o.status != 200]
            assert {o.code for o in refused} <= {"budget_exceeded"}
            waves.append(len(outcomes) - len(refused))
            if not waves[-1]:
                break
    finally:
        for client in clients:
            await client.close()
    return sum(waves), waves


@pytest.mark.parametrize("max_tokens", [10, 1], ids=["hold-covers-cost", "hold-too-small"])
@pytest.mark.parametrize("backend", ["memory", "sqlite", "redis"])
async def test_concurrent_requests_never_overspend_beyond_the_bound(
    make: Make,
    upstream: FakeOpenAI,
    request: pytest.FixtureRequest,
    backend: str,
    max_tokens: int,
):
    limit, concurrent = 0.1, 30
    sc = await make(
        state=state_for(backend, request),
        budgets={"cap": {"scope": "team", "limit_usd": limit, "window": "day"}},
    )
    upstream.behave("up-a", delay=0.1)  # every wave is in flight at once
    successes, waves = await spend_in_waves([sc.port], "t", max_tokens, concurrent)
    spent = (await rows(sc.ops_port, "team"))["t"]["cost_usd"]
    assert spent == pytest.approx(successes * cost("a"))
    # The documented bound: spend exceeds the limit only by what requests in flight cost
    # beyond their holds (here the fake ignores max_tokens=1 and answers 3 tokens).
    excess = max(0.0, cost("a") - hold("a", HI_ESTIMATE, max_tokens))
    bound = limit + concurrent * excess  # at most `concurrent` requests are ever in flight
    assert spent <= bound + 1e-9, (spent, bound, waves)
    assert spent <= limit + max(waves) * excess + 1e-9  # those admitted, to be exact
    if excess == 0:
        assert waves == [3, 2, 1, 0]  # holds of 0.027 against 0.1, then 0.013 each settled
    else:
        assert waves[0] == math.floor(limit / hold("a", HI_ESTIMATE, max_tokens))
        assert spent > limit  # the case the bound is there for


# -- many sidecars on one Redis --------------------------------------------------------------


async def test_four_sidecar_processes_on_one_redis_enforce_one_budget_and_one_rate(
    tmp_path: Path, upstream: FakeOpenAI, redis_server: RedisServer
):
    limit = 0.1
    folder = write(
        tmp_path / "p",
        policy(
            upstream,
            state={"backend": "redis", "url": redis_server.url},
            limits={
                "rl": {"scope": "team", "values": ["rl-team"], "requests_per_minute": 20},
            },
            budgets={
                "cap": {
                    "scope": "team",
                    "values": ["bud-team"],
                    "limit_usd": limit,
                    "window": "day",
                }
            },
        ),
    )
    sidecars = [SidecarProcess(folder, {"SIDECAR_USAGE_TOKEN": ""}) for _ in range(4)]
    try:
        await asyncio.gather(*(sc.wait_ready() for sc in sidecars))
        ports = [sc.port for sc in sidecars]

        clients = [api(port, team="rl-team") for port in ports]
        outcomes = await asyncio.gather(*(chat(clients[i % 4]) for i in range(60)))
        for client in clients:
            await client.close()
        by_port = [sum(1 for o in outcomes[i::4] if o.status == 200) for i in range(4)]
        assert sum(by_port) == 20, by_port
        assert {o.code for o in outcomes if o.status != 200} == {"rate_limited"}

        upstream.behave("up-a", delay=0.1)
        successes, waves = await spend_in_waves(ports, "bud-team", max_tokens=10, concurrent=40)
        assert waves == [3, 2, 1, 0]  # as in one process: the hold is atomic across all four
        for sc in sidecars:  # every one of them sees the one shared spend
            spent = (await rows(sc.ops_port, "team"))["bud-team"]["cost_usd"]
            assert spent == pytest.approx(successes * cost("a"))
            assert spent <= limit
    finally:
        for sc in sidecars:
            sc.stop()


# -- restarts and a store that dies --------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
async def test_restart_keeps_spend_and_rates(
    tmp_path: Path, upstream: FakeOpenAI, request: pytest.FixtureRequest, backend: str
):
    state = (
        {"backend": "sqlite", "path": "state.db", "flush_interval": "10s"}  # SIGTERM flushes
        if backend == "sqlite"
        else state_for(backend, request)
    )
    folder = write(
        tmp_path / "p",
        policy(
            upstream,
            state=state,
            limits={"rl": {"scope": "user", "values": ["limited"], "requests_per_minute": 5}},
            budgets={
                "cap": {"scope": "team", "values": ["spenders"], "limit_usd": 0.05, "window": "day"}
            },
        ),
    )

    async def check(sc: SidecarProcess, fresh: bool) -> None:
        async with api(sc.port, user="u", team="spenders") as client:
            if fresh:  # holds 0.027, costs 0.013: two fit in 0.05
                assert [(await chat(client, max_tokens=10)).status for _ in range(2)] == [200] * 2
            assert (await chat(client, max_tokens=10)).code == "budget_exceeded"
        async with api(sc.port, user="limited") as client:
            if fresh:
                assert [(await chat(client)).status for _ in range(5)] == [200] * 5
            assert (await chat(client)).code == "rate_limited"

    first = SidecarProcess(folder, {"SIDECAR_USAGE_TOKEN": ""})
    try:
        await first.wait_ready()
        await check(first, fresh=True)
    finally:
        assert first.stop() == 0, first.log()

    second = SidecarProcess(folder, {"SIDECAR_USAGE_TOKEN": ""})
    try:
        await second.wait_ready()
        team = (await rows(second.ops_port, "team"))["spenders"]
        assert team["cost_usd"] == pytest.approx(2 * cost("a"))
        assert team["input_tokens"] == 2 * IN
        await check(second, fresh=False)
    finally:
        assert second.stop() == 0, second.log()
    assert len(upstream.calls()) == 7


@pytest.mark.parametrize("on_error", ["open", "closed"])
async def test_redis_dying_follows_on_error(
    make: Make,
    upstream: FakeOpenAI,
    redis_server: RedisServer,
    caplog: pytest.LogCaptureFixture,
    on_error: str,
):
    sc = await make(
        state={"backend": "redis", "url": redis_server.url, "on_error": on_error},
        limits={"rl": {"scope": "team", "requests_per_minute": 1000, "max_concurrent": 10}},
        budgets={"cap": {"scope": "team", "limit_usd": 10, "window": "day"}},
    )
    caplog.set_level(logging.ERROR, "sidecar")
    async with api(sc.port, team="t", timeout=5) as client:
        assert (await chat(client, max_tokens=10)).status == 200
        redis_server.stop()
        for _ in range(3):
            began = time.monotonic()
            outcome = await chat(client, max_tokens=10)
            assert time.monotonic() - began < 2.5
            if on_error == "open":
                assert outcome.status == 200
                assert outcome.headers["x-sidecar-model"] == "a"
            else:
                assert (outcome.status, outcome.code) == (503, "state_unavailable")
                assert "redis" in outcome.message
                assert "retry-after" in outcome.headers
    logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    if on_error == "open":  # served while the store is down: its usage cannot be recorded
        assert any("usage is not recorded" in m for m in logged)
        assert any("admitting anyway (on_error: open)" in m for m in logged)
    assert len(upstream.calls()) == (4 if on_error == "open" else 1)
    status, body = await get_usage(sc.ops_port, "team")
    assert status == 503
    assert body["error"]["message"].startswith("state store unavailable")
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{sc.ops_port}/healthz") as r,
    ):
        assert r.status == 200  # alive and well


async def test_a_frozen_redis_costs_seconds_not_a_hang(
    make: Make, upstream: FakeOpenAI, redis_server: RedisServer
):
    """A Redis that stops answering (a partition, not a refused connection) times out."""
    sc = await make(
        state={"backend": "redis", "url": redis_server.url, "on_error": "open"},
        limits={"rl": {"scope": "team", "requests_per_minute": 1000}},
        budgets={"cap": {"scope": "team", "limit_usd": 10, "window": "day"}},
    )
    async with api(sc.port, team="t", timeout=10) as client:
        assert (await chat(client, max_tokens=10)).status == 200
        redis_server.proc.send_signal(signal.SIGSTOP)
        try:
            began = time.monotonic()
            outcome = await chat(client, max_tokens=10)
            took = time.monotonic() - began
        finally:
            redis_server.proc.send_signal(signal.SIGCONT)
    assert outcome.status == 200
    assert took < 3.0  # one timed-out call to admit, one to account


# -- the usage API ---------------------------------------------------------------------------


async def test_usage_api_requires_the_bearer_token_when_set(make: Make, upstream: FakeOpenAI):
    sc = await make(usage_token="s3cret-usage-token")
    async with api(sc.port, team="t") as client:
        await chat(client)
    status, body = await get_usage(sc.ops_port, "team")
    assert status == 401
    assert "s3cret" not in str(body)
    assert (await get_usage(sc.ops_port, "team", token="wrong"))[0] == 401
    status, body = await get_usage(sc.ops_port, "team", token="s3cret-usage-token")
    assert status == 200
    assert body["rows"][0]["value"] == "t"

    code, _, err = await cli_usage(sc.ops_port)
    assert code == 1
    assert "401" in err
    code, out, _ = await cli_usage(sc.ops_port, env={"SIDECAR_USAGE_TOKEN": "s3cret-usage-token"})
    assert code == 0
    assert "t " in out
