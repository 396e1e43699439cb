"""One answer in its two shapes, a chat completion and the SSE stream of it, both ways:
answers the sidecar writes itself (a policy default, a cached answer, a validated stream
replayed), and streamed answers put back together (to validate or cache them)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import Any

import orjson

from sidecar.providers.base import Events


def completion(model: str, content: str, usage: Mapping[str, int] | None = None) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-sidecar-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": dict(usage or {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}),
    }


def events_from_completion(answer: Mapping[str, Any], include_usage: bool) -> list[bytes]:
    """A complete answer as the chunk events a stream of it would have carried."""
    base = {
        "id": answer.get("id", f"chatcmpl-sidecar-{uuid.uuid4().hex[:24]}"),
        "object": "chat.completion.chunk",
        "created": answer.get("created", int(time.time())),
        "model": answer.get("model", ""),
    }

    def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        return b"data: " + orjson.dumps({**base, "choices": choices, **extra}) + b"\n\n"

    events = []
    for choice in answer.get("choices") or []:
        index = choice.get("index", 0)
        message = choice.get("message") or {}
        delta: dict[str, Any] = {"role": "assistant", "content": message.get("content")}
        if message.get("tool_calls"):
            delta["tool_calls"] = [
                {**call, "index": i} for i, call in enumerate(message["tool_calls"])
            ]
        events.append(event([{"index": index, "delta": delta, "finish_reason": None}]))
        events.append(
            event(
                [
                    {
                        "index": index,
                        "delta": {},
                        "finish_reason": choice.get("finish_reason", "stop"),
                    }
                ]
            )
        )
    if include_usage and answer.get("usage"):
        events.append(event([], usage=answer["usage"]))
    events.append(b"data: [DONE]\n\n")
    return events


async def replay(events: list[bytes]) -> Events:
    """Events that are all at hand (a cached or buffered answer) leave in one write."""
    if events:
        yield events


def assemble(events: list[bytes]) -> dict[str, Any]:
    """A streamed answer put back together as one completion."""
    content: list[str] = []
    calls: dict[int, dict[str, Any]] = {}
    answer: dict[str, Any] = {}
    finish = "stop"
    for event in events:
        if not event.startswith(b"data: {"):
            continue
        chunk = orjson.loads(event[6:])
        answer.setdefault("id", chunk.get("id"))
        answer.setdefault("model", chunk.get("model"))
        if chunk.get("usage"):
            answer["usage"] = chunk["usage"]
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            if delta.get("content"):
                content.append(delta["content"])
            for call in delta.get("tool_calls") or ():
                slot = calls.setdefault(
                    call.get("index", 0),
                    {"id": "", "type": "function", "function": {"name": "", "arguments": ""}},
                )
                slot["id"] = call.get("id") or slot["id"]
                fn = call.get("function") or {}
                slot["function"]["name"] += fn.get("name") or ""
                slot["function"]["arguments"] += fn.get("arguments") or ""
            finish = choice.get("finish_reason") or finish
    message: dict[str, Any] = {"role": "assistant", "content": "".join(content) or None}
    if calls:
        message["tool_calls"] = [calls[i] for i in sorted(calls)]
    answer.update(
        object="chat.completion",
        choices=[{"index": 0, "message": message, "finish_reason": finish}],
    )
    return answer
