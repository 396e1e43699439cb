"""Quality counters through the HTTP path with the `openai` SDK: each moves on the answers
it is about, per route and model, and no other — read from `/stats` and `/metrics` as
`llm-sidecar top` and Prometheus read them.

- `sidecar.quality.signals`: truncated (finish reason `length`), refusal (the policy's
  patterns, OpenAI's `refusal` field, Anthropic's `refusal` stop), empty (no text, no
  tool call);
- `sidecar.output.validations`: valid at the first try, repaired, default, and `rejected`
  (the 422s), beside `invalid` (each answer thrown away).
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import openai
import pytest

from sidecar.app import Sidecar
from tests.support.anthropic_upstream import FakeAnthropic
from tests.support.sidecar import Sidecars
from tests.support.upstream import FakeOpenAI, completion

REFUSAL = "I'm sorry, but I can't help with that."


def policy(openai_url: str, anthropic_url: str = "http://127.0.0.1:9", quality: str = "") -> str:
    return f"""
        providers:
          main: {{type: openai, base_url: "{openai_url}"}}
          anth: {{type: anthropic, base_url: "{anthropic_url}", api_key: k}}
        models:
          a: {{provider: main, name: up-a}}
          b: {{provider: main, name: up-b}}
          claude: {{provider: anth, name: claude-x}}
        schemas:
          thing: {{type: object, required: [a]}}
        cache:
          answers: {{mode: exact, scope: global}}
        routes:
          chat: {{targets: [a]}}
          other: {{targets: [b]}}
          anthropic: {{targets: [claude]}}
          cached: {{targets: [a], cache: answers}}
          strict:
            targets: [a]
            output: {{schema: thing, on_invalid: {{retries: 1, then: error}}}}
          lenient:
            targets: [b]
            output: {{schema: thing, on_invalid: {{retries: 1, then: default}}, default: {{a: 0}}}}
        {quality}
        """


async def ask(
    sc: Sidecar, route: str, content: str = "hi", stream: bool = False, **kw: Any
) -> str | None:
    async with openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{sc.port}/v1", api_key="x", max_retries=0
    ) as app:
        messages = [{"role": "user", "content": content}]
        if stream:
            chunks = await app.chat.completions.create(
                model=route, messages=messages, stream=True, **kw
            )
            return "".join([c.choices[0].delta.content or "" async for c in chunks if c.choices])
        answer = await app.chat.completions.create(model=route, messages=messages, **kw)
        return answer.choices[0].message.content


async def counted(sc: Sidecar, metric: str, by: str) -> dict[tuple[str, str, str], float]:
    """A counter from /stats, by (route, model, the attribute `by`)."""
    url = f"http://127.0.0.1:{sc.ops_port}/stats"
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        points = (await r.json())["metrics"].get(metric, {}).get("points", [])
    out: dict[tuple[str, str, str], float] = {}
    for p in points:
        a = p["attributes"]
        key = (a["sidecar.route"], a["sidecar.model"], a[by])
        out[key] = out.get(key, 0) + p["value"]
    return out


async def signals(sc: Sidecar) -> dict[tuple[str, str, str], float]:
    return await counted(sc, "sidecar.quality.signals", "sidecar.signal")


async def test_truncated_refused_and_empty_answers_are_counted_per_route_and_model(
    sidecars: Sidecars, upstream: FakeOpenAI
):
    sc = await sidecars.start(policy(upstream.base_url))
    upstream.behave("up-a", replies=["fine", "cut off", REFUSAL, "", "fine"])
    upstream.behaviours["up-a"].finish_reason = "stop"
    assert await ask(sc, "chat") == "fine"
    assert await signals(sc) == {}  # a good answer moves nothing
    upstream.behaviours["up-a"].finish_reason = "length"
    await ask(sc, "chat")
    upstream.behaviours["up-a"].finish_reason = "stop"
    await ask(sc, "chat")
    await ask(sc, "chat")
    upstream.behave("up-b", reply="  ")  # blank is empty too
    await ask(sc, "other")
    assert await signals(sc) == {
        ("chat", "a", "truncated"): 1,
        ("chat", "a", "refusal"): 1,
        ("chat", "a", "empty"): 1,
        ("other", "b", "empty"): 1,
    }


async def test_a_streamed_refusal_and_providers_own_refusals_are_counted(
    sidecars: Sidecars, upstream: FakeOpenAI, upstream_anthropic: FakeAnthropic
):
    sc = await sidecars.start(policy(upstream.base_url, upstream_anthropic.base_url))
    upstream.behave("up-a", reply=REFUSAL)
    assert await ask(sc, "chat", stream=True) == REFUSAL
    flagged = completion("up-b", "")
    flagged["choices"][0]["message"] = {"role": "assistant", "content": None, "refusal": "No."}
    upstream.behave("up-b", raw_body=json.dumps(flagged).encode())
    await ask(sc, "other")
    upstream_anthropic.behave("claude-x", reply="", stop_reason="refusal")
    await ask(sc, "anthropic")
    assert await signals(sc) == {
        ("chat", "a", "refusal"): 1,
        ("other", "b", "refusal"): 1,  # not empty: the refusal is what it said
        ("anthropic", "claude", "refusal"): 1,
    }


async def test_the_policy_names_what_a_refusal_looks_like(sidecars: Sidecars, upstream: FakeOpenAI):
    quality = 'quality: {refusals: ["^Ich kann (das|dabei) nicht"]}'
    sc = await sidecars.start(policy(upstream.base_url, quality=quality))
    upstream.behave("up-a", replies=["Ich kann dabei nicht helfen.", REFUSAL])
    await ask(sc, "chat")
    await ask(sc, "chat")  # the default English patterns are replaced
    assert await signals(sc) == {("chat", "a", "refusal"): 1}


async def test_validity_counts_first_try_retries_defaults_and_422s(
    sidecars: Sidecars, upstream: FakeOpenAI
):
    sc = await sidecars.start(policy(upstream.base_url))
    upstream.behave("up-a", replies=['{"a": 1}', "nope", '{"a": 2}', "no", "never"])
    await ask(sc, "strict")  # valid at once
    await ask(sc, "strict")  # repaired by its retry
    with pytest.raises(openai.UnprocessableEntityError):
        await ask(sc, "strict")  # invalid twice: a 422
    upstream.behave("up-b", reply="not json")
    assert await ask(sc, "lenient") == '{"a":0}'
    outputs = await counted(sc, "sidecar.output.validations", "sidecar.output")
    assert outputs == {
        ("strict", "a", "valid"): 1,
        ("strict", "a", "repaired"): 1,
        ("strict", "a", "invalid"): 3,  # every answer thrown away
        ("strict", "a", "rejected"): 1,
        ("lenient", "b", "invalid"): 2,
        ("lenient", "b", "default"): 1,
    }
    assert await signals(sc) == {}  # a default is the policy's answer: nothing to judge


async def test_cache_hits_are_not_counted_again_and_prometheus_has_the_counter(
    sidecars: Sidecars, upstream: FakeOpenAI
):
    sc = await sidecars.start(policy(upstream.base_url))
    upstream.behave("up-a", reply=REFUSAL)
    for _ in range(3):
        assert await ask(sc, "cached", temperature=0) == REFUSAL
    assert await signals(sc) == {("cached", "a", "refusal"): 1}  # the answer, not its hits
    url = f"http://127.0.0.1:{sc.ops_port}/metrics"
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        text = await r.text()
    assert (
        'sidecar_quality_signals_total{sidecar_model="a",sidecar_route="cached",'
        'sidecar_signal="refusal"} 1.0'
    ) in text
