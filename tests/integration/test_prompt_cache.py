"""Provider prompt caching through the HTTP path (issue 19): the breakpoints the Anthropic
upstream receives (where, how many, from which length, with which ttl, the app's own kept),
the `prompt_cache_key` an OpenAI upstream receives, and cache reads and writes priced
exactly, a write never read again showing as a loss.

Clients are the official `openai` and `anthropic` SDKs; upstreams are real HTTP servers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anthropic
import openai
import orjson
import pytest

from sidecar.app import Sidecar
from tests.support.anthropic_upstream import FakeAnthropic
from tests.support.sidecar import Sidecars, openai_client
from tests.support.upstream import FakeOpenAI

SYSTEM = "You answer questions about the shop's orders, returns and shipping. " * 80  # ~1,350
TOOL = {
    "type": "function",
    "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}},
}
EPHEMERAL = {"type": "ephemeral"}


def policy(anthropic_url: str, openai_url: str) -> str:
    return f"""
        providers:
          anth: {{type: anthropic, base_url: "{anthropic_url}", api_key: k}}
          oai: {{type: openai, base_url: "{openai_url}", prompt_cache_key: true}}
          local: {{type: openai, base_url: "{openai_url}"}}
        models:
          sonnet:
            provider: anth
            name: claude-sonnet-4-5
            price: {{input: 3, output: 15, cached_input: 0.3, cache_write: 3.75,
                     cache_write_1h: 6}}
          haiku: {{provider: anth, name: claude-haiku-4-5}}    # caches from 4,096 tokens
          gpt: {{provider: oai, name: gpt-x}}
          plain: {{provider: local, name: plain-x}}
        routes:
          chat: {{targets: [sonnet]}}
          hourly: {{targets: [sonnet], prompt_cache: {{ttl: 1h}}}}
          small-prefix: {{targets: [haiku]}}
          uncached: {{targets: [sonnet], prompt_cache: "off"}}
          conv-a: {{targets: [gpt]}}
          conv-b: {{targets: [gpt]}}
          local: {{targets: [plain]}}
        """


@pytest.fixture
async def sc(
    sidecars: Sidecars, upstream_anthropic: FakeAnthropic, upstream: FakeOpenAI
) -> Sidecar:
    return await sidecars.start(policy(upstream_anthropic.base_url, upstream.base_url))


@pytest.fixture
async def api(sc: Sidecar) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai_client(sc) as client:
        yield client


@pytest.fixture
async def claude(sc: Sidecar) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(
        base_url=f"http://127.0.0.1:{sc.port}", api_key="app", max_retries=0
    ) as client:
        yield client


def conversation(*turns: str, system: str = SYSTEM) -> list[dict[str, Any]]:
    """System, then user and assistant turns alternating (the last one a user's)."""
    roles = ("user", "assistant")
    return [{"role": "system", "content": system}] + [
        {"role": roles[i % 2], "content": text} for i, text in enumerate(turns)
    ]


def sent(fake: FakeAnthropic | FakeOpenAI) -> dict[str, Any]:
    return fake.calls()[-1].body


def markers(body: dict[str, Any]) -> list[tuple[str, Any]]:
    """Where the breakpoints are: ("tools", i), ("system", i), ("messages", (i, j))."""
    found: list[tuple[str, Any]] = []
    for i, tool in enumerate(body.get("tools") or ()):
        if "cache_control" in tool:
            found.append(("tools", i))
    for i, block in enumerate(body.get("system") or ()):
        if "cache_control" in block:
            found.append(("system", i))
    for i, message in enumerate(body["messages"]):
        for j, block in enumerate(message["content"]):
            if "cache_control" in block:
                found.append(("messages", (i, j)))
    return found


async def test_breakpoints_go_on_the_system_prompt_and_the_newest_turn_of_a_conversation(
    api: openai.AsyncOpenAI, upstream_anthropic: FakeAnthropic
) -> None:
    # A one-shot request: the system prompt (with the tools before it) is the stable prefix.
    await api.chat.completions.create(model="chat", messages=conversation("hi"), tools=[TOOL])
    body = sent(upstream_anthropic)
    assert markers(body) == [("system", 0)]  # the tools alone are far below 1,024 tokens
    assert body["system"][0]["cache_control"] == EPHEMERAL
    # A conversation: its newest turn too, so the next turn reads all of it.
    turns = conversation("where is order 1?", "It shipped.", "and order 2?")
    await api.chat.completions.create(model="chat", messages=turns, tools=[TOOL])
    body = sent(upstream_anthropic)
    assert markers(body) == [("system", 0), ("messages", (2, 0))]
    assert body["messages"][2]["content"][0] == {
        "type": "text",
        "text": "and order 2?",
        "cache_control": EPHEMERAL,
    }
    # A schema hint the adapter appends to the system prompt is not part of the app's prefix.
    await api.chat.completions.create(
        model="chat", messages=conversation("hi"), response_format={"type": "json_object"}
    )
    body = sent(upstream_anthropic)
    assert len(body["system"]) == 2
    assert markers(body) == [("system", 0)]


async def test_no_breakpoint_below_the_models_minimum_or_when_off(
    api: openai.AsyncOpenAI, upstream_anthropic: FakeAnthropic
) -> None:
    turns = conversation("where is order 1?", "It shipped.", "and order 2?")
    for route, messages in (
        ("small-prefix", turns),  # ~1,400 tokens: Haiku 4.5 caches from 4,096
        ("uncached", turns),  # prompt_cache: off
        ("chat", conversation("a", "b", "c", system="Be brief.")),  # too short anywhere
    ):
        await api.chat.completions.create(model=route, messages=messages)
        assert markers(sent(upstream_anthropic)) == [], route


async def test_the_apps_own_breakpoints_are_kept_and_never_more_than_four(
    claude: anthropic.AsyncAnthropic, upstream_anthropic: FakeAnthropic
) -> None:
    marked = {"type": "ephemeral"}
    tools: Any = [{"name": "lookup", "input_schema": {"type": "object"}, "cache_control": marked}]
    system: Any = [{"type": "text", "text": SYSTEM, "cache_control": marked}]
    messages: Any = [
        {"role": "user", "content": [{"type": "text", "text": "one", "cache_control": marked}]},
        {"role": "assistant", "content": "It shipped."},
        {"role": "user", "content": [{"type": "text", "text": "two"}]},
    ]
    await claude.messages.create(
        model="chat", max_tokens=50, system=system, tools=tools, messages=messages
    )
    body = sent(upstream_anthropic)
    # The app's three, where it put them; one of ours on the newest turn (the system
    # prompt is marked already): four.
    assert markers(body) == [
        ("tools", 0),
        ("system", 0),
        ("messages", (0, 0)),
        ("messages", (2, 0)),
    ]


async def test_four_app_breakpoints_get_no_company(
    claude: anthropic.AsyncAnthropic, upstream_anthropic: FakeAnthropic
) -> None:
    marked = {"type": "ephemeral"}
    system: Any = [
        {"type": "text", "text": "Be brief.", "cache_control": marked},
        {"type": "text", "text": SYSTEM, "cache_control": marked},
    ]
    messages: Any = [
        {"role": "user", "content": [{"type": "text", "text": "one", "cache_control": marked}]},
        {"role": "assistant", "content": [{"type": "text", "text": "ok", "cache_control": marked}]},
        {"role": "user", "content": "two"},
    ]
    await claude.messages.create(model="chat", max_tokens=50, system=system, messages=messages)
    body = sent(upstream_anthropic)
    assert markers(body) == [
        ("system", 0),
        ("system", 1),
        ("messages", (0, 0)),
        ("messages", (1, 0)),
    ]


async def test_an_hour_long_cache_is_asked_for_in_an_order_anthropic_accepts(
    api: openai.AsyncOpenAI,
    claude: anthropic.AsyncAnthropic,
    upstream_anthropic: FakeAnthropic,
) -> None:
    await api.chat.completions.create(model="hourly", messages=conversation("hi"))
    assert sent(upstream_anthropic)["system"][0]["cache_control"] == {
        "type": "ephemeral",
        "ttl": "1h",
    }
    # After the app's own 5-minute breakpoint, an hour-long one would be refused.
    tools: Any = [
        {
            "name": "lookup",
            "input_schema": {"type": "object"},
            "cache_control": {"type": "ephemeral"},
        }
    ]
    await claude.messages.create(
        model="hourly",
        max_tokens=50,
        system=SYSTEM,
        tools=tools,
        messages=[{"role": "user", "content": "hi"}],
    )
    body = sent(upstream_anthropic)
    assert body["system"][0]["cache_control"] == EPHEMERAL


async def test_prompt_cache_key_is_stable_across_a_conversation_and_differs_across_routes(
    api: openai.AsyncOpenAI, upstream: FakeOpenAI
) -> None:
    async def key(route: str, messages: list[dict[str, Any]], **extra: Any) -> str | None:
        await api.chat.completions.create(model=route, messages=messages, **extra)
        return sent(upstream).get("prompt_cache_key")  # type: ignore[no-any-return]

    first = await key("conv-a", conversation("where is order 1?"))
    assert first is not None
    assert len(first) <= 64
    assert await key("conv-a", conversation("where is order 1?", "shipped", "and 2?")) == first
    assert await key("conv-b", conversation("where is order 1?")) not in (first, None)
    assert await key("conv-a", conversation("where is order 7?")) not in (first, None)
    assert await key("local", conversation("where is order 1?")) is None  # flag off
    mine = await key("conv-a", conversation("hi"), extra_body={"prompt_cache_key": "mine"})
    assert mine == "mine"


async def test_an_anthropic_apps_breakpoints_do_not_reach_an_openai_upstream(
    claude: anthropic.AsyncAnthropic, upstream: FakeOpenAI
) -> None:
    marked = {"type": "ephemeral"}
    await claude.messages.create(
        model="conv-a",
        max_tokens=50,
        system=[{"type": "text", "text": SYSTEM, "cache_control": marked}],
        tools=[{"name": "lookup", "input_schema": {"type": "object"}, "cache_control": marked}],
        messages=[{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
    )
    raw = orjson.dumps(sent(upstream))
    assert b"cache_control" not in raw
    assert b"x_cache_control" not in raw
    assert sent(upstream)["messages"][0]["content"][0]["text"] == SYSTEM


async def usage_row(sc: Sidecar, route: str) -> dict[str, Any]:
    url = f"http://127.0.0.1:{sc.ops_port}/usage?scope=route&window=day"
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        rows = {row["value"]: row for row in (await r.json())["rows"]}
    return rows[route]


async def test_cache_reads_and_writes_are_priced_as_billed_and_a_lone_write_is_a_loss(
    sc: Sidecar, api: openai.AsyncOpenAI, upstream_anthropic: FakeAnthropic
) -> None:
    # 100 fresh, 2,000 read, 1,000 written (400 of them for an hour), 10 out.
    upstream_anthropic.behave(
        "claude-sonnet-4-5",
        input_tokens=100,
        cache_read_input_tokens=2000,
        cache_creation_input_tokens=1000,
        cache_creation={"ephemeral_5m_input_tokens": 600, "ephemeral_1h_input_tokens": 400},
        output_tokens=10,
    )
    raw = await api.chat.completions.with_raw_response.create(
        model="chat", messages=conversation("hi")
    )
    answer = raw.parse()
    assert answer.usage is not None
    assert answer.usage.prompt_tokens == 3100
    cost = (100 * 3 + 2000 * 0.3 + 600 * 3.75 + 400 * 6 + 10 * 15) / 1e6
    listed = (3100 * 3 + 10 * 15) / 1e6
    assert float(raw.headers["x-sidecar-cost-usd"]) == pytest.approx(cost)
    assert float(raw.headers["x-sidecar-saved-usd"]) == pytest.approx(listed - cost)
    # A write that nothing reads: dearer than plain input, a negative saving.
    upstream_anthropic.behave(
        "claude-sonnet-4-5",
        input_tokens=100,
        cache_creation_input_tokens=2000,
        output_tokens=10,
    )
    raw = await api.chat.completions.with_raw_response.create(
        model="chat", messages=conversation("hello")
    )
    raw.parse()
    loss = (2000 * 3.75 - 2000 * 3) / 1e6
    assert float(raw.headers["x-sidecar-saved-usd"]) == pytest.approx(-loss)
    row = await usage_row(sc, "chat")
    assert row["saved_by_lever"]["prompt_cache"] == pytest.approx(listed - cost - loss)
