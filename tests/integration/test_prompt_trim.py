"""Prompt economy before dispatch through the HTTP path (issue 19): trimming a
conversation to `prompt.max_input_tokens` (whole old turns, tool calls with their results,
the system prompt and the last user message kept, a 400 naming the budget when it cannot
fit), output caps (and the budget holds they size), and the optional normalisation. What
the upstream received is read from the fake upstream (a real HTTP server).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest

from sidecar.app import Sidecar
from tests.support.sidecar import Sidecars, openai_client
from tests.support.upstream import FakeOpenAI

WORDS = "word " * 100  # 500 characters: 129 estimated tokens as a message


def policy(url: str) -> str:
    return f"""
        providers:
          main: {{type: openai, base_url: "{url}"}}
        models:
          m: {{provider: main, name: up, price: {{input: 1000, output: 1000}}}}
        routes:
          trimmed: {{targets: [m], prompt: {{max_input_tokens: 250}}}}
          first-kept:
            targets: [m]
            prompt: {{max_input_tokens: 250, strategy: keep_first}}
          capped: {{targets: [m], max_output_tokens: 100}}
          filled: {{targets: [m], max_output_tokens: {{limit: 100, mode: default}}}}
          tidy: {{targets: [m], prompt: {{normalize: [whitespace, duplicate_system]}}}}
          plain: {{targets: [m]}}
          budgeted: {{targets: [m], max_output_tokens: 1000}}
          unbudgeted: {{targets: [m]}}
        budgets:
          tight:
            scope: global
            routes: [budgeted, unbudgeted]
            limit_usd: 2
            window: day
        """


@pytest.fixture
async def sc(sidecars: Sidecars, upstream: FakeOpenAI) -> Sidecar:
    return await sidecars.start(policy(upstream.base_url))


@pytest.fixture
async def api(sc: Sidecar) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai_client(sc) as client:
        yield client


def call(i: int) -> dict[str, Any]:
    return {"id": f"call_{i}", "type": "function", "function": {"name": "f", "arguments": "{}"}}


# Turns of ~135-300 estimated tokens each (580 in all); 250 fit the system prompt and one.
CHAT: list[dict[str, Any]] = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "first " + WORDS},
    {"role": "assistant", "content": "one"},
    {"role": "user", "content": "second " + WORDS},
    {"role": "assistant", "content": None, "tool_calls": [call(1)]},
    {"role": "tool", "tool_call_id": "call_1", "content": WORDS},
    {"role": "assistant", "content": "two"},
    {"role": "user", "content": "third " + WORDS},
    {"role": "assistant", "content": "three"},
    {"role": "user", "content": "last question"},
]


def sent(upstream: FakeOpenAI) -> dict[str, Any]:
    return upstream.calls()[-1].body


def texts(body: dict[str, Any]) -> list[str]:
    return [
        str(m.get("content") or m.get("tool_calls", [{}])[0].get("id"))[:6]
        for m in body["messages"]
    ]


async def test_oldest_whole_turns_go_first_and_tool_calls_keep_their_results(
    sc: Sidecar, api: openai.AsyncOpenAI, upstream: FakeOpenAI
) -> None:
    raw = await api.chat.completions.with_raw_response.create(model="trimmed", messages=CHAT)
    raw.parse()
    # The first turn went, then the second: its tool call and result went with it.
    assert texts(sent(upstream)) == ["Be bri", "third ", "three", "last q"]
    assert raw.headers["x-sidecar-trimmed"] == "6"
    # The ledger counts the saving as `trim`: 6 messages of ~1,150 characters at the
    # request's own tokens per character (the fake reports 7 input tokens for the rest).
    url = f"http://127.0.0.1:{sc.ops_port}/usage?scope=route&window=day"
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        (row,) = (await r.json())["rows"]
    assert row["saved_by_lever"]["trim"] > 0
    assert row["saved_usd"] == pytest.approx(row["saved_by_lever"]["trim"])
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"http://127.0.0.1:{sc.ops_port}/stats") as r,
    ):
        stats = (await r.json())["metrics"]
    (point,) = stats["sidecar.prompt.trimmed"]["points"]
    assert point == {"attributes": {"sidecar.route": "trimmed"}, "value": 6}
    # What fits is sent as it is.
    raw = await api.chat.completions.with_raw_response.create(model="trimmed", messages=CHAT[-3:])
    raw.parse()
    assert "x-sidecar-trimmed" not in raw.headers
    assert sent(upstream)["messages"] == CHAT[-3:]


async def test_keep_first_drops_the_turns_after_the_first(
    api: openai.AsyncOpenAI, upstream: FakeOpenAI
) -> None:
    await api.chat.completions.create(model="first-kept", messages=CHAT)
    assert texts(sent(upstream)) == ["Be bri", "first ", "one", "last q"]


async def test_a_request_that_cannot_fit_is_a_400_naming_the_budget(
    api: openai.AsyncOpenAI, upstream: FakeOpenAI
) -> None:
    messages = [*CHAT[:-1], {"role": "user", "content": WORDS * 5}]
    with pytest.raises(openai.BadRequestError) as caught:
        await api.chat.completions.create(model="trimmed", messages=messages)
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["code"] == "prompt_too_long"
    assert "250 input tokens (prompt.max_input_tokens)" in error["message"]
    assert upstream.calls() == []


async def test_output_caps_fill_in_and_lower_max_tokens(
    api: openai.AsyncOpenAI, upstream: FakeOpenAI
) -> None:
    async def limit(route: str, **asked: Any) -> tuple[Any, Any]:
        await api.chat.completions.create(
            model=route, messages=[{"role": "user", "content": "hi"}], **asked
        )
        body = sent(upstream)
        return body.get("max_tokens"), body.get("max_completion_tokens")

    assert await limit("capped") == (100, None)  # none asked: the cap
    assert await limit("capped", max_tokens=5000) == (100, None)  # more asked: capped
    assert await limit("capped", max_completion_tokens=5000) == (None, 100)
    assert await limit("capped", max_tokens=50) == (50, None)  # less asked: kept
    assert await limit("filled") == (100, None)  # mode default: filled in
    assert await limit("filled", max_tokens=5000) == (5000, None)  # and not capped
    assert await limit("plain") == (None, None)


async def test_budget_holds_use_the_capped_output(
    api: openai.AsyncOpenAI, upstream: FakeOpenAI
) -> None:
    # Asking for 100,000 tokens at 1,000 USD per million holds 100 USD: more than the
    # budget's 2. The route's cap of 1,000 holds 1 USD, which fits.
    asked = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 100_000}
    with pytest.raises(openai.RateLimitError) as caught:
        await api.chat.completions.create(model="unbudgeted", **asked)
    assert "budget 'tight'" in caught.value.message
    await api.chat.completions.create(model="budgeted", **asked)
    assert sent(upstream)["max_tokens"] == 1000


async def test_normalisation_is_opt_in_and_leaves_code_alone(
    api: openai.AsyncOpenAI, upstream: FakeOpenAI
) -> None:
    text = "Hello   there,\t\tfriend.  \n\n\n\nNext.\n```\nx  =   1\n```\n    indented  line"
    messages = [
        {"role": "system", "content": "Rules."},
        {"role": "system", "content": "Rules."},
        {"role": "user", "content": text},
    ]
    await api.chat.completions.create(model="tidy", messages=messages)
    assert sent(upstream)["messages"] == [
        {"role": "system", "content": "Rules."},
        {
            "role": "user",
            "content": "Hello there, friend.\n\nNext.\n```\nx  =   1\n```\n    indented line",
        },
    ]
    await api.chat.completions.create(model="plain", messages=messages)
    assert sent(upstream)["messages"] == messages
