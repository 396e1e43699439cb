"""Shaping requests for the providers' prompt caches; nothing here changes an answer.

Anthropic caches a prefix only up to a `cache_control` breakpoint, at most four per request,
and only from the model's minimum length (`PromptCache.min_tokens`). The prefix is read in
order tools → system → messages, and a breakpoint finds an earlier cached prefix by looking
back at most 20 blocks. So, after the app's own breakpoints (kept, and counted against the
four), the translated request gets, in this order while any are left:

1. the end of the app's system prompt (tools and system: what every request of the app
   repeats; a schema hint the adapter appends comes after it),
2. in a conversation (a request with an assistant turn in it), the end of the newest user
   turn: the next turn of that conversation reads everything up to it,
3. the end of the turn before that, when it is 20 blocks or more back (a turn of many tool
   calls), where the previous request wrote it and the look-back would not find it,
4. the end of the tools, for apps whose system prompt changes while their tools do not.

Each only where the prefix before it reaches the minimum (estimated at 4 characters a token:
a breakpoint on a prefix that falls short is ignored by Anthropic, so an estimate a little
off costs nothing). A `ttl` of 1h is kept in the order Anthropic requires: a longer-lived
breakpoint never after a shorter-lived one.

OpenAI-compatible servers cache prefixes on their own; OpenAI routes a request to a machine
by its first tokens and `prompt_cache_key`, and a prefix sent more than about 15 times a
minute spills over to other machines, where it is not cached. A key per conversation (the
route, the tools, the system prompt and the first user turn, hashed) keeps a conversation's
turns on one machine without gathering a whole route's traffic on one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import orjson

from sidecar.policy.model import PromptCache
from sidecar.tokens import IMAGE_TOKENS

MAX_BREAKPOINTS = 4  # Anthropic's limit per request
LOOKBACK = 20  # blocks a breakpoint looks back for an earlier cached prefix
_CHARS_PER_TOKEN = 4
_IMAGE_CHARS = IMAGE_TOKENS * _CHARS_PER_TOKEN
_TTL_RANK = {"5m": 0, "1h": 1}


def place_breakpoints(out: dict[str, Any], cache: PromptCache, system_end: int) -> None:
    """Add breakpoints to `out`, a Messages request the adapter has just built (its blocks
    are its own, never the app's). `system_end`: how many of its system blocks are the
    app's (the rest are the adapter's additions)."""
    blocks: list[dict[str, Any]] = []  # every block that can take a breakpoint, in order
    ends: list[int] = []  # prefix length (characters) at the end of each
    size = 0
    for tool in out.get("tools") or ():
        size += len(orjson.dumps(tool))
        blocks.append(tool)
        ends.append(size)
    tools_end = len(blocks) - 1
    system = out.get("system") or ()
    system_at = -1
    for i, block in enumerate(system):
        size += len(block.get("text", ""))
        blocks.append(block)
        ends.append(size)
        if i < system_end:
            system_at = len(blocks) - 1
    if system_at < 0:
        system_at = tools_end
    user_ends: list[int] = []  # the last block of each user message
    conversation = False
    for message in out.get("messages") or ():
        content = message.get("content")
        if not isinstance(content, list) or not content:
            continue
        for block in content:
            size += _size(block)
            blocks.append(block)
            ends.append(size)
        if message.get("role") == "user":
            user_ends.append(len(blocks) - 1)
        else:
            conversation = True
    marked = [i for i, block in enumerate(blocks) if "cache_control" in block]
    free = MAX_BREAKPOINTS - len(marked)
    if free <= 0:
        return
    wanted = [system_at]
    if conversation and user_ends:
        newest = user_ends[-1]
        wanted.append(newest)
        if len(user_ends) > 1 and newest - user_ends[-2] >= LOOKBACK:
            wanted.append(user_ends[-2])
    wanted.append(tools_end)
    least = cache.min_tokens * _CHARS_PER_TOKEN
    chosen: list[int] = []
    for i in wanted:
        if i < 0 or i in chosen or i in marked or ends[i] < least:
            continue
        if not _cacheable(blocks[i]):
            continue
        chosen.append(i)
        if len(chosen) == free:
            break
    for i in chosen:
        blocks[i]["cache_control"] = _marker(cache.ttl, i, marked, blocks)


def _size(block: Mapping[str, Any]) -> int:
    kind = block.get("type")
    if kind == "text":
        return len(block.get("text", ""))
    if kind == "image":
        return _IMAGE_CHARS
    if kind == "tool_use":
        return len(orjson.dumps(block.get("input"))) + len(block.get("name", ""))
    if kind == "tool_result":
        return sum(_size(b) for b in block.get("content") or ())
    return len(orjson.dumps(block))


def _cacheable(block: Mapping[str, Any]) -> bool:
    """Anthropic refuses a breakpoint on an empty text block (and on thinking blocks)."""
    kind = block.get("type")
    if kind == "text":
        return bool(block.get("text"))
    return kind not in ("thinking", "redacted_thinking")


def _marker(
    ttl: str | None, at: int, marked: list[int], blocks: list[dict[str, Any]]
) -> dict[str, str]:
    """A breakpoint whose ttl keeps the app's breakpoints valid: none shorter-lived
    before one longer-lived."""
    if ttl is None and not marked:
        return {"type": "ephemeral"}
    rank = _TTL_RANK.get(ttl or "5m", 0)
    before = [_rank(blocks[i]) for i in marked if i < at]
    after = [_rank(blocks[i]) for i in marked if i > at]
    high = min(before, default=1)
    low = max(after, default=0)
    if low <= high:
        rank = min(max(rank, low), high)
    return {"type": "ephemeral", "ttl": "1h"} if rank else {"type": "ephemeral"}


def _rank(block: Mapping[str, Any]) -> int:
    marker = block.get("cache_control") or {}
    return _TTL_RANK.get(marker.get("ttl", "5m"), 0) if isinstance(marker, dict) else 0


def cache_key(route: str, body: Mapping[str, Any]) -> str:
    """A conversation's `prompt_cache_key`: the same for every turn of it (its start does
    not change as it grows), another on another route or for another conversation."""
    start: list[Any] = [route, body.get("tools")]
    for message in body.get("messages") or ():
        start.append(message)
        if isinstance(message, Mapping) and message.get("role") == "user":
            break
    digest = hashlib.blake2b(orjson.dumps(start, default=str), digest_size=16).hexdigest()
    return f"sidecar-{digest}"


def without_markers(body: dict[str, Any]) -> dict[str, Any]:
    """`body` without the `cache_control` an Anthropic app put on its blocks (carried in the
    internal shape: on content parts, tools, tool calls and tool messages), new where it
    changed: OpenAI-compatible servers may refuse a field they do not know."""

    def bare(item: Any) -> Any:
        if not isinstance(item, dict) or "cache_control" not in item:
            return item
        return {k: v for k, v in item.items() if k != "cache_control"}

    messages = []
    for message in body.get("messages") or ():
        message = bare(message)
        content = message.get("content")
        if isinstance(content, list):
            message = {**message, "content": [bare(p) for p in content]}
        if message.get("tool_calls"):
            message = {**message, "tool_calls": [bare(c) for c in message["tool_calls"]]}
        messages.append(message)
    out = {**body, "messages": messages}
    if body.get("tools"):
        out["tools"] = [bare(t) for t in body["tools"]]
    return out
