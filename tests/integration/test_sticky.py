"""Sticky conversations across two replicas sharing a real Redis: a conversation that
reached a higher tier (a rule, or a cascade that escalated) stays there on the other
replica too; other conversations do not; the app's `x-sidecar-session` names a
conversation when it sends one."""

from __future__ import annotations

from typing import Any

import openai

from sidecar.app import Sidecar
from tests.support.redis import RedisServer
from tests.support.sidecar import Sidecars
from tests.support.upstream import FakeOpenAI


def policy(url: str, redis_url: str) -> str:
    return f"""
        providers:
          main: {{type: openai, base_url: "{url}"}}
        models:
          big: {{provider: main, name: up-big}}
          small: {{provider: main, name: up-small}}
        routes:
          chat:
            select:
              tiers:
                small: {{targets: [small]}}
                large: {{targets: [big]}}
              default: small
              rules: [{{tier: large, keywords: [refund]}}]
              sticky: 10m
            cascade: {{}}
        state: {{backend: redis, url: "{redis_url}"}}
        """


async def say(sc: Sidecar, conversation: list[str], **kw: Any) -> str:
    """The conversation so far (user turns; the assistant's in between), asked of `sc`;
    the tier that answered the last turn."""
    messages: list[Any] = [{"role": "system", "content": "You are the shop's assistant."}]
    for i, turn in enumerate(conversation):
        if i:
            messages.append({"role": "assistant", "content": "ok"})
        messages.append({"role": "user", "content": turn})
    async with openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{sc.port}/v1", api_key="x", max_retries=0
    ) as c:
        raw = await c.chat.completions.with_raw_response.create(
            model="chat", messages=messages, **kw
        )
        raw.parse()
        return raw.headers["x-sidecar-tier"]


async def test_a_conversation_stays_on_the_highest_tier_it_reached_on_every_replica(
    sidecars: Sidecars, upstream: FakeOpenAI, redis_server: RedisServer
):
    a = await sidecars.start(policy(upstream.base_url, redis_server.url))
    b = await sidecars.start(policy(upstream.base_url, redis_server.url))
    talk = ["hi, I need help with order 123"]
    assert await say(a, talk) == "small"
    talk.append("I want a refund")
    assert await say(b, talk) == "large"  # the rule
    talk.append("thanks, and where is it now?")
    assert await say(a, talk) == "large"  # sticky, on the other replica
    assert await say(b, ["hi, another conversation", "where is it now?"]) == "small"


async def test_an_escalation_makes_the_conversation_sticky(
    sidecars: Sidecars, upstream: FakeOpenAI, redis_server: RedisServer
):
    a = await sidecars.start(policy(upstream.base_url, redis_server.url))
    b = await sidecars.start(policy(upstream.base_url, redis_server.url))
    upstream.behave("up-small", replies=["I'm sorry, I can't help with that.", "fine"])
    talk = ["what is the warranty on boots?"]
    assert await say(a, talk) == "large"  # the cascade rejected the refusal
    talk.append("and on tents?")
    assert await say(b, talk) == "large"
    assert len(upstream.calls("up-small")) == 1  # the second turn did not try small again


async def test_the_app_s_session_header_names_the_conversation(
    sidecars: Sidecars, upstream: FakeOpenAI, redis_server: RedisServer
):
    a = await sidecars.start(policy(upstream.base_url, redis_server.url))
    b = await sidecars.start(policy(upstream.base_url, redis_server.url))
    session = {"extra_headers": {"x-sidecar-session": "ticket-42"}}
    assert await say(a, ["please refund order 7"], **session) == "large"
    # Another first message, the same session: the same conversation.
    assert await say(b, ["a new subject"], **session) == "large"
    assert await say(b, ["a new subject"]) == "small"
