"""Answers the sidecar writes itself (a policy default, a cached answer, a validated stream
replayed), as a chat completion and as the SSE stream the same answer would have been."""

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
