"""App feedback through the HTTP path: `POST /v1/feedback` with an answer's id (or trace id)
is attributed to the route and model that produced it — also for an answer served from the
cache, and on another replica sharing the state store (a real Redis) — and shows in
`/usage` and the metrics; an unknown or expired id is a 404 that says so.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import anthropic
import openai
import pytest

from sidecar.app import Sidecar
from tests.support.otlp import OtlpReceiver
from tests.support.redis import RedisServer
from tests.support.sidecar import Sidecars
from tests.support.upstream import FakeOpenAI


def policy(url: str, ttl: str = "1h", state: str = "state: {backend: memory}") -> str:
    return f"""
        providers:
          main: {{type: openai, base_url: "{url}"}}
        models:
          a: {{provider: main, name: up-a, price: {{input: 1, output: 2}}}}
          b: {{provider: main, name: up-b}}
        cache:
          answers: {{mode: exact, scope: global, ttl: 1h}}
        routes:
          chat: {{targets: [a]}}
          other: {{targets: [b]}}
          cached: {{targets: [a], cache: answers}}
        quality:
          feedback: {{ttl: {ttl}, labels: [wrong, rude]}}
        {state}
        """


async def answer(sc: Sidecar, route: str = "chat", user: str = "ann", **kw: Any) -> Any:
    async with openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{sc.port}/v1", api_key="x", max_retries=0
    ) as app:
        return await app.chat.completions.with_raw_response.create(
            model=route,
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-sidecar-user": user},
            **kw,
        )


async def feedback(sc: Sidecar, **body: Any) -> tuple[int, dict[str, Any]]:
    url = f"http://127.0.0.1:{sc.port}/v1/feedback"
    async with aiohttp.ClientSession() as s, s.post(url, json=body) as r:
        return r.status, await r.json()


async def usage(sc: Sidecar, scope: str, value: str) -> dict[str, Any]:
    url = f"http://127.0.0.1:{sc.ops_port}/usage?scope={scope}&window=day"
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        rows = {row["value"]: row for row in (await r.json())["rows"]}
    return rows.get(value) or {"feedback": {"count": 0, "mean_score": None}}


async def metric(sc: Sidecar, name: str) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{sc.ops_port}/stats"
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        return list((await r.json())["metrics"].get(name, {}).get("points", []))


async def test_feedback_on_a_fresh_answer_counts_against_its_route_and_model(
    sidecars: Sidecars, upstream: FakeOpenAI
):
    sc = await sidecars.start(policy(upstream.base_url))
    first = (await answer(sc)).parse().id
    second = (await answer(sc, "other", user="bob")).parse().id
    status, body = await feedback(sc, id=first, score=0.8, label="wrong")
    assert status == 200
    assert (body["route"], body["model"], body["score"], body["label"]) == (
        "chat",
        "a",
        0.8,
        "wrong",
    )
    assert (await feedback(sc, id=first, score="down", label="a label of the app's"))[0] == 200
    assert (await feedback(sc, id=second, score="up"))[0] == 200
    route = await usage(sc, "route", "chat")
    assert route["feedback"] == {"count": 2, "mean_score": pytest.approx(0.4)}
    assert route["requests"] == 1  # feedback is not a request
    assert (await usage(sc, "model", "b"))["feedback"] == {"count": 1, "mean_score": 1.0}
    assert (await usage(sc, "user", "ann"))["feedback"]["count"] == 2
    counted = {
        (p["attributes"]["sidecar.route"], p["attributes"]["sidecar.label"]): p["value"]
        for p in await metric(sc, "sidecar.feedback")
    }
    # Labels the policy lists are kept; any other is "(other)": the app's text never
    # becomes an unbounded metric attribute. No user either (telemetry.user_attribute).
    assert counted == {("chat", "wrong"): 1, ("chat", "(other)"): 1, ("other", "(none)"): 1}
    scores = {
        p["attributes"]["sidecar.model"]: p for p in await metric(sc, "sidecar.feedback.score")
    }
    assert (scores["a"]["count"], scores["a"]["sum"]) == (2, pytest.approx(0.8))
    assert all("sidecar.user" not in p["attributes"] for p in await metric(sc, "sidecar.feedback"))


async def test_unknown_expired_and_malformed_feedback_is_refused(
    sidecars: Sidecars, upstream: FakeOpenAI
):
    sc = await sidecars.start(policy(upstream.base_url, ttl="300ms"))
    given = (await answer(sc)).parse().id
    status, body = await feedback(sc, id="chatcmpl-never-seen", score=1)
    assert status == 404
    assert body["error"]["code"] == "answer_not_found"
    assert "unknown, or too old for feedback" in body["error"]["message"]
    for bad, field in (
        ({"id": given, "score": 1.5}, "score"),
        ({"id": given, "score": "meh"}, "score"),
        ({"id": given, "score": 1, "label": "x" * 65}, "label"),
        ({"score": 1}, "id"),
    ):
        status, body = await feedback(sc, **bad)
        assert (status, body["error"]["param"]) == (400, field), bad
    await asyncio.sleep(0.5)  # past quality.feedback.ttl
    status, body = await feedback(sc, id=given, score=1)
    assert (status, body["error"]["code"]) == (404, "answer_not_found")
    assert (await usage(sc, "route", "chat"))["feedback"]["count"] == 0


async def test_feedback_on_an_answer_served_from_the_cache(
    sidecars: Sidecars, upstream: FakeOpenAI
):
    sc = await sidecars.start(policy(upstream.base_url, ttl="300ms"))
    miss = await answer(sc, "cached", temperature=0)
    await asyncio.sleep(0.5)  # the answer's own note expired; the cached answer has not
    hit = await answer(sc, "cached", user="carl", temperature=0)
    assert (miss.headers["x-sidecar-cache"], hit.headers["x-sidecar-cache"]) == ("miss", "hit")
    assert hit.parse().id == miss.parse().id  # the stored answer, id and all
    status, body = await feedback(sc, id=hit.parse().id, score=0.0)
    assert status == 200
    assert (body["route"], body["model"], body["cache"]) == ("cached", "a", "hit")
    assert (await usage(sc, "user", "carl"))["feedback"]["count"] == 1  # who got the hit


async def test_feedback_by_trace_id_and_by_the_anthropic_form_of_the_id(
    sidecars: Sidecars, upstream: FakeOpenAI, otlp: OtlpReceiver
):
    sc = await sidecars.start(
        policy(upstream.base_url), env={"OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint}
    )
    raw = await answer(sc)
    status, body = await feedback(sc, id=raw.headers["x-sidecar-trace-id"], score=1)
    assert (status, body["model"]) == (200, "a")
    async with anthropic.AsyncAnthropic(
        base_url=f"http://127.0.0.1:{sc.port}", api_key="x", max_retries=0
    ) as app:
        message = await app.messages.create(
            model="other", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )
    assert message.id.startswith("msg_chatcmpl-fake-")
    status, body = await feedback(sc, id=message.id, score=1)
    assert (status, body["model"]) == (200, "b")


async def test_feedback_reaching_another_replica_finds_the_answer_through_redis(
    sidecars: Sidecars, upstream: FakeOpenAI, redis_server: RedisServer
):
    state = f'state: {{backend: redis, url: "{redis_server.url}"}}'
    one = await sidecars.start(policy(upstream.base_url, state=state))
    two = await sidecars.start(policy(upstream.base_url, state=state))
    given = (await answer(one, user="dee")).parse().id
    status, body = await feedback(two, id=given, score=0.25)
    assert (status, body["route"], body["model"]) == (200, "chat", "a")
    assert (await usage(one, "user", "dee"))["feedback"] == {"count": 1, "mean_score": 0.25}
    assert (await feedback(two, id="chatcmpl-elsewhere", score=1))[0] == 404
