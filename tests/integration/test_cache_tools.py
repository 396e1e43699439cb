"""Caching requests that offer tools (issue 23), through the OpenAI SDK: a text answer has
no action to skip, so it is cached by default; an answer that calls a tool is stored only
when the cache opts in (`tools: always`, or the tool is on its safe list); `tools: false`
still means never. And the app can tell its own bypass from the policy's refusal."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import openai
import pytest

from sidecar.app import Sidecar
from tests.support.sidecar import Sidecars
from tests.support.upstream import FakeOpenAI

Q = [{"role": "user", "content": "Where is order 7?"}]


def tool(name: str) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {"name": name, "parameters": {"type": "object", "properties": {}}},
    }


TOOLS = [tool("lookup_order"), tool("refund_order")]

Make = Callable[[str], Awaitable[Sidecar]]


@pytest.fixture
def make(sidecars: Sidecars, upstream: FakeOpenAI) -> Make:
    async def start(cache: str) -> Sidecar:
        return await sidecars.start(
            f"""
            providers:
              main: {{type: openai, base_url: "{upstream.base_url}"}}
            models:
              a: {{provider: main, name: up-a}}
            cache:
              answers: {cache}
            routes:
              chat: {{targets: [a], cache: answers}}
            state: {{backend: memory}}
            """,
        )

    return start


async def ask(
    sc: Sidecar, stream: bool = False, messages: list[dict[str, str]] = Q, **headers: str
) -> tuple[list[str], dict[str, str]]:
    """The tools the answer calls (or its text), and the response headers."""
    async with openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{sc.port}/v1", api_key="x", max_retries=0
    ) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="chat", messages=messages, tools=TOOLS, extra_headers=headers, stream=stream
        )
        if not stream:
            message = raw.parse().choices[0].message
            said = [c.function.name for c in message.tool_calls or ()] or [message.content]
            return said, dict(raw.headers)
        names: list[str] = []
        text = ""
        async for chunk in raw.parse():
            for choice in chunk.choices:
                names += [c.function.name for c in choice.delta.tool_calls or () if c.function]
                text += choice.delta.content or ""
        return [n for n in names if n] or [text], dict(raw.headers)


def results(seen: list[tuple[list[str], dict[str, str]]]) -> list[tuple[str, str | None]]:
    return [(h["x-sidecar-cache"], h.get("x-sidecar-cache-reason")) for _, h in seen]


async def test_a_text_answer_to_a_request_with_tools_is_a_hit(make: Make, upstream: FakeOpenAI):
    sc = await make("{mode: exact}")
    upstream.behave("up-a", reply="Order 7 ships tomorrow.")
    seen = [await ask(sc) for _ in range(2)] + [await ask(sc, stream=True)]
    assert [said for said, _ in seen] == [["Order 7 ships tomorrow."]] * 3
    assert results(seen) == [("miss", None), ("hit", None), ("hit", None)]
    assert len(upstream.calls("up-a")) == 1


@pytest.mark.parametrize("stream", [False, True])
async def test_an_answer_that_calls_a_tool_is_not_stored_by_default(
    make: Make, upstream: FakeOpenAI, stream: bool
):
    sc = await make("{mode: exact}")
    upstream.behave("up-a", tool_calls=[("refund_order", '{"order": 7}')])
    seen = [await ask(sc, stream) for _ in range(2)]
    assert [said for said, _ in seen] == [["refund_order"]] * 2
    if not stream:  # a stream's headers went out before its tool call came
        assert results(seen) == [("miss", "tool-call")] * 2
    assert [h["x-sidecar-cache"] for _, h in seen] == ["miss", "miss"]
    assert len(upstream.calls("up-a")) == 2  # each asked: the refund was made twice


async def test_tool_calls_are_replayed_when_the_cache_opts_in(make: Make, upstream: FakeOpenAI):
    sc = await make("{mode: exact, tools: always}")
    upstream.behave("up-a", tool_calls=[("refund_order", '{"order": 7}')])
    seen = [await ask(sc) for _ in range(2)]
    assert [said for said, _ in seen] == [["refund_order"]] * 2
    assert results(seen) == [("miss", None), ("hit", None)]
    assert len(upstream.calls("up-a")) == 1


async def test_a_safe_list_replays_calls_to_those_tools_only(make: Make, upstream: FakeOpenAI):
    sc = await make("{mode: exact, tools: [lookup_order]}")
    upstream.behave("up-a", tool_calls=[("lookup_order", '{"order": 7}')])
    seen = [await ask(sc) for _ in range(2)]
    assert [said for said, _ in seen] == [["lookup_order"]] * 2
    assert results(seen) == [("miss", None), ("hit", None)]
    # Another question whose answer also calls a tool not on the list: not kept.
    upstream.behave("up-a", tool_calls=[("lookup_order", '{"order": 7}'), ("refund_order", "{}")])
    again = [*Q, {"role": "user", "content": "and refund it"}]
    seen = [await ask(sc, messages=again) for _ in range(2)]
    assert results(seen) == [("miss", "tool-call")] * 2
    assert len(upstream.calls("up-a")) == 3


async def test_tools_false_is_ineligible_and_says_so_apart_from_the_apps_bypass(
    make: Make, upstream: FakeOpenAI
):
    sc = await make("{mode: exact, tools: false}")
    upstream.behave("up-a", reply="Order 7 ships tomorrow.")
    seen = [await ask(sc) for _ in range(2)]
    assert results(seen) == [("ineligible", "tools")] * 2
    sc = await make("{mode: exact}")
    seen = [await ask(sc, **{"x-sidecar-cache": "bypass"}), await ask(sc)]
    seen.append(await ask(sc, **{"cache-control": "no-store"}))
    assert results(seen) == [
        ("bypass", "x-sidecar-cache"),
        ("miss", None),
        ("bypass", "no-store"),
    ]
    assert len(upstream.calls("up-a")) == 5
