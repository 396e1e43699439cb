"""Model selection through HTTP with the `openai` SDK against a real fake provider: tiers
chosen before the call by the request's features, and verified cascades that escalate an
answer the app must not see (an invalid schema, a cut-off answer, a refusal, low
log-probabilities) to the next tier, charging the rejected call to the `escalation` lever.

Prices (USD per 1M tokens) are large so the ledger's sums are easy to read; the fake
upstream reports 7 input and 3 output tokens per answer.
"""

from __future__ import annotations

import json
import textwrap
from typing import Any

import aiohttp
import openai
import pytest

from sidecar.app import Sidecar
from tests.support.sidecar import Sidecars
from tests.support.upstream import FakeOpenAI

IN, OUT = 7, 3
BIG = (3000 * IN + 15000 * OUT) / 1e6  # 0.066
SMALL = (1000 * IN + 4000 * OUT) / 1e6  # 0.019
GOOD = '{"total": 12.5}'


def policy(url: str, routes: str) -> str:
    route = textwrap.indent(routes.strip("\n"), " " * 8)[8:]
    return f"""
        providers:
          main: {{type: openai, base_url: "{url}"}}
        models:
          big: {{provider: main, name: up-big, price: {{input: 3000, output: 15000}}}}
          small: {{provider: main, name: up-small, price: {{input: 1000, output: 4000}}}}
        schemas:
          invoice: {{type: object, required: [total], properties: {{total: {{type: number}}}}}}
        routes:
        {route}
        state: {{backend: memory}}
        """


TIERS = """
  chat:
    select:
      tiers:
        small: {targets: [small]}
        large: {targets: [big]}
      default: small
      rules:
        - {tier: large, tools: true}
        - {tier: large, min_input_tokens: 200}
        - {tier: large, keywords: [refund, "step by step"]}
        - {tier: large, min_turns: 3}
        - {tier: large, images: true}
        - {tier: large, response_format: true}
        - {tier: large, regex: "^(?:prove|show) that"}
"""

CASCADE = """
  chat:
    targets: [small, big]
    output: {schema: invoice, on_invalid: {retries: 0}}
    cascade: {min_logprob: -1.0}
  streaming:
    targets: [small, big]
    cascade: {}
  passthrough:
    targets: [small, big]
    cascade: {stream: passthrough}
"""


def client(sc: Sidecar) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{sc.port}/v1", api_key="x", max_retries=0)


async def ask(
    sc: Sidecar, route: str = "chat", content: str = "hello", **kw: Any
) -> tuple[str, dict[str, str]]:
    messages = kw.pop("messages", [{"role": "user", "content": content}])
    async with client(sc) as c:
        raw = await c.chat.completions.with_raw_response.create(
            model=route, messages=messages, **kw
        )
        return raw.parse().choices[0].message.content or "", dict(raw.headers)


async def usage(sc: Sidecar, route: str) -> dict[str, Any]:
    url = f"http://127.0.0.1:{sc.ops_port}/usage?scope=route&window=day"
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        rows = {row["value"]: row for row in (await r.json())["rows"]}
    return rows[route]


async def stats(sc: Sidecar) -> dict[str, Any]:
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{sc.ops_port}/stats") as r:
        return dict((await r.json())["metrics"])


def points(metrics: dict[str, Any], name: str) -> list[tuple[dict[str, Any], float]]:
    return [(p["attributes"], p["value"]) for p in metrics.get(name, {}).get("points", [])]


# -- tiers before the call ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "tier"),
    [
        ({"content": "what time is it?"}, "small"),  # nothing matches: the default
        ({"content": "please compute my REFUND"}, "large"),  # a keyword, any case
        ({"content": "x " * 600}, "large"),  # ~600 estimated input tokens
        ({"content": "go Step by step"}, "large"),
        ({"content": "refunds are nice"}, "small"),  # a whole word, not a prefix
        ({"content": "prove that 2 + 2 = 4"}, "large"),  # the regular expression
        ({"content": "I can prove that"}, "small"),
        ({"content": "x", "response_format": {"type": "json_object"}}, "large"),
        ({"content": "x", "response_format": {"type": "text"}}, "small"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "what is this?"},
                            {
                                "type": "image_url",
                                "image_url": {"url": "data:image/png;base64,AA=="},
                            },
                        ],
                    }
                ]
            },
            "large",
        ),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
            "large",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "a"},
                    {"role": "assistant", "content": "b"},
                    {"role": "user", "content": "c"},
                    {"role": "assistant", "content": "d"},
                    {"role": "user", "content": "e"},
                ]
            },
            "large",
        ),
    ],
)
async def test_the_request_s_features_choose_its_tier_before_the_call(
    sidecars: Sidecars, upstream: FakeOpenAI, kw: dict[str, Any], tier: str
):
    sc = await sidecars.start(policy(upstream.base_url, TIERS))
    _, headers = await ask(sc, **kw)
    assert headers["x-sidecar-tier"] == tier
    assert headers["x-sidecar-escalations"] == "0"
    assert headers["x-sidecar-model"] == ("big" if tier == "large" else "small")
    assert [s.body["model"] for s in upstream.calls()] == [
        "up-big" if tier == "large" else "up-small"
    ]


async def test_a_tier_that_is_down_hands_over_to_the_next_one_up(
    sidecars: Sidecars, upstream: FakeOpenAI
):
    sc = await sidecars.start(policy(upstream.base_url, TIERS))
    upstream.behave("up-small", status=503)
    text, headers = await ask(sc, content="what time is it?")
    assert text == "hello from upstream"
    assert (headers["x-sidecar-tier"], headers["x-sidecar-escalations"]) == ("large", "0")


# -- verified cascades --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "check"),
    [
        ({"reply": '{"total": "lots"}'}, "schema"),
        ({"reply": GOOD, "finish_reason": "length"}, "finish"),
        ({"reply": "I'm sorry, but I can't help with that."}, "refusal"),
        ({"reply": GOOD, "logprob": -2.5}, "logprob"),
        ({"reply": ""}, "empty"),
    ],
)
async def test_a_rejected_cheap_answer_is_never_shown_and_the_next_tier_answers(
    sidecars: Sidecars, upstream: FakeOpenAI, bad: dict[str, Any], check: str
):
    sc = await sidecars.start(policy(upstream.base_url, CASCADE))
    upstream.behave("up-small", **{"logprob": -0.1, **bad})
    upstream.behave("up-big", reply='{"total": 99}', logprob=-5.0)  # the top: never judged
    text, headers = await ask(sc)
    assert json.loads(text) == {"total": 99}
    assert headers["x-sidecar-tier"] == "big"
    assert headers["x-sidecar-model"] == "big"
    assert headers["x-sidecar-escalations"] == "1"
    assert headers["x-sidecar-output"] == "valid"
    small, big = upstream.calls("up-small"), upstream.calls("up-big")
    assert (len(small), len(big)) == (1, 1)
    assert small[0].body["logprobs"] is True  # asked for only where a check reads them
    assert "logprobs" not in big[0].body
    # Both calls are paid for; the rejected one counts against the escalation lever.
    assert float(headers["x-sidecar-cost-usd"]) == pytest.approx(BIG + SMALL)
    row = await usage(sc, "chat")
    assert row["saved_by_lever"]["escalation"] == pytest.approx(-SMALL)
    assert row["saved_usd"] == pytest.approx(-SMALL)
    metrics = await stats(sc)
    checks = {
        (a["sidecar.check"], a["result"]): v
        for a, v in points(metrics, "sidecar.cascade.checks")
        if a["sidecar.tier"] == "small"
    }
    assert checks[(check, "fail")] == 1
    assert dict(points(metrics, "sidecar.cascade.escalation.cost")[0][0]) == {
        "sidecar.route": "chat",
        "sidecar.tier": "small",
    }


async def test_an_accepted_cheap_answer_is_the_app_s_as_it_asked_for_it(
    sidecars: Sidecars, upstream: FakeOpenAI
):
    sc = await sidecars.start(policy(upstream.base_url, CASCADE))
    upstream.behave("up-small", reply=GOOD, logprob=-0.2)
    async with client(sc) as c:
        raw = await c.chat.completions.with_raw_response.create(
            model="chat", messages=[{"role": "user", "content": "x"}]
        )
    answer, headers = raw.parse(), dict(raw.headers)
    assert json.loads(answer.choices[0].message.content or "") == {"total": 12.5}
    assert answer.choices[0].logprobs is None  # the sidecar asked for them, the app did not
    assert (headers["x-sidecar-tier"], headers["x-sidecar-escalations"]) == ("small", "0")
    assert upstream.calls("up-big") == []
    row = await usage(sc, "chat")
    assert row["saved_by_lever"]["selection"] == pytest.approx(BIG - SMALL)
    assert row["saved_by_lever"]["escalation"] == 0.0


async def test_an_app_that_asks_for_logprobs_keeps_them(sidecars: Sidecars, upstream: FakeOpenAI):
    sc = await sidecars.start(policy(upstream.base_url, CASCADE))
    upstream.behave("up-small", reply=GOOD, logprob=-0.2)
    async with client(sc) as c:
        answer = await c.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "x"}], logprobs=True
        )
    assert answer.choices[0].logprobs is not None
    assert answer.choices[0].logprobs.content[0].logprob == pytest.approx(-0.2)


async def stream(sc: Sidecar, route: str) -> tuple[str, dict[str, str]]:
    async with client(sc) as c:
        raw = await c.chat.completions.with_raw_response.create(
            model=route, messages=[{"role": "user", "content": "x"}], stream=True
        )
        parts = [
            chunk.choices[0].delta.content or "" async for chunk in raw.parse() if chunk.choices
        ]
        return "".join(parts), dict(raw.headers)


async def test_a_stream_is_judged_whole_before_any_of_it_is_sent(
    sidecars: Sidecars, upstream: FakeOpenAI
):
    sc = await sidecars.start(policy(upstream.base_url, CASCADE))
    upstream.behave("up-small", reply="I am not sure, but it is 12.")
    upstream.behave("up-big", reply="It is 42.")
    text, headers = await stream(sc, "streaming")
    assert text == "It is 42."
    assert (headers["x-sidecar-tier"], headers["x-sidecar-escalations"]) == ("big", "1")
    upstream.behave("up-small", reply="It is 12.", finish_reason="stop")
    text, headers = await stream(sc, "streaming")
    assert (text, headers["x-sidecar-tier"]) == ("It is 12.", "small")


async def test_a_passthrough_stream_is_not_escalated_once_tokens_are_sent(
    sidecars: Sidecars, upstream: FakeOpenAI
):
    sc = await sidecars.start(policy(upstream.base_url, CASCADE))
    upstream.behave("up-small", reply="I am not sure, but it is 12.")
    text, headers = await stream(sc, "passthrough")
    assert text == "I am not sure, but it is 12."
    assert (headers["x-sidecar-tier"], headers["x-sidecar-escalations"]) == ("small", "0")
    assert upstream.calls("up-big") == []


async def test_a_checked_stream_that_breaks_off_is_answered_by_the_next_tier(
    sidecars: Sidecars, upstream: FakeOpenAI
):
    sc = await sidecars.start(policy(upstream.base_url, CASCADE))
    upstream.behave("up-small", reply="one two three four five", cut_after=3)
    upstream.behave("up-big", reply="It is 42.")
    text, headers = await stream(sc, "streaming")
    assert text == "It is 42."
    assert headers["x-sidecar-tier"] == "big"
