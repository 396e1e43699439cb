"""Anthropic Messages requests → the internal (OpenAI) shape, and answers back.

The ingress half of the Anthropic adapter: an app using the `anthropic` SDK is served by
the same pipeline as an OpenAI one. Anthropic-only request fields (`top_k`, `thinking`)
travel in `x_anthropic`, which the Anthropic egress applies and other egresses drop.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

import orjson

from sidecar.errors import PROTOCOL, InvalidRequest, UpstreamError
from sidecar.providers.base import Events

STOP = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
_CARRIED = ("top_k", "thinking")


def request(body: Mapping[str, Any]) -> dict[str, Any]:
    """`body` has the Messages shape (api/shapes.py checked it) before it comes here."""
    try:
        return _request(body)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        # Whatever the shape check lets through and the translation still cannot read is
        # the request's fault too: a 400, never a 500 from deep inside.
        raise InvalidRequest(
            f"malformed Messages request ({exc.__class__.__name__}: {exc})"[:300],
            code="invalid_request",
        ) from None


def _request(body: Mapping[str, Any]) -> dict[str, Any]:
    marks = _Marks()
    messages: list[dict[str, Any]] = []
    if body.get("system"):
        messages.append({"role": "system", "content": _system(body["system"], marks)})
    for m in body["messages"]:
        role, content = m.get("role"), m.get("content")
        if isinstance(content, str):
            messages.append({"role": role, "content": content})
        elif role == "assistant":
            messages.append(_assistant(content, marks))
        else:
            messages.extend(_user(content, marks))
    out: dict[str, Any] = {
        "model": body["model"],
        "messages": messages,
        "max_tokens": body["max_tokens"],
    }
    for field in ("temperature", "top_p"):
        if body.get(field) is not None:
            out[field] = body[field]
    if body.get("stop_sequences"):
        out["stop"] = list(body["stop_sequences"])
    if body.get("tools"):
        out["tools"] = [
            marks.keep(
                t,
                {
                    "type": "function",
                    "function": {
                        "name": t["name"],
                        "description": t.get("description", ""),
                        "parameters": t.get("input_schema") or {"type": "object"},
                    },
                },
            )
            for t in body["tools"]
        ]
    choice = body.get("tool_choice")
    if choice:
        kind = choice.get("type")
        out["tool_choice"] = (
            {"type": "function", "function": {"name": choice.get("name", "")}}
            if kind == "tool"
            else {"auto": "auto", "any": "required", "none": "none"}.get(kind, "auto")
        )
        if choice.get("disable_parallel_tool_use"):
            out["parallel_tool_calls"] = False
    user = (body.get("metadata") or {}).get("user_id")
    if isinstance(user, str):
        out["user"] = user
    carried = {k: body[k] for k in _CARRIED if k in body}
    if carried:
        out["x_anthropic"] = carried
    if marks.carried:
        out["x_cache_control"] = True  # an OpenAI-compatible egress drops them
    if body.get("stream"):
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}  # Anthropic streams always report usage
    return out


class _Marks:
    """The app's own prompt-cache breakpoints (`cache_control`), carried into the internal
    shape where the Anthropic egress finds them again: on content parts, tools, tool calls
    and tool messages."""

    __slots__ = ("carried",)

    def __init__(self) -> None:
        self.carried = False

    def keep(self, block: Mapping[str, Any], into: dict[str, Any]) -> dict[str, Any]:
        if "cache_control" in block:
            into["cache_control"] = block["cache_control"]
            self.carried = True
        return into


def _system(content: Any, marks: _Marks) -> Any:
    """A system prompt as one text, or as its text blocks when the app marked one."""
    if isinstance(content, str) or not any("cache_control" in b for b in content or ()):
        return _text(content)
    return [
        marks.keep(b, {"type": "text", "text": b.get("text", "")})
        for b in content
        if b.get("type") == "text"
    ]


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "\n".join(b.get("text", "") for b in content or [] if b.get("type") == "text")


def _assistant(blocks: list[dict[str, Any]], marks: _Marks) -> dict[str, Any]:
    marked = [b for b in blocks if b.get("type") == "text" and "cache_control" in b]
    content: Any = _text(blocks) or None
    if marked:
        content = [
            marks.keep(b, {"type": "text", "text": b.get("text", "")})
            for b in blocks
            if b.get("type") == "text"
        ]
    message: dict[str, Any] = {"role": "assistant", "content": content}
    calls = [
        marks.keep(
            b,
            {
                "id": b["id"],
                "type": "function",
                "function": {
                    "name": b["name"],
                    "arguments": orjson.dumps(b.get("input", {})).decode(),
                },
            },
        )
        for b in blocks
        if b.get("type") == "tool_use"
    ]
    if calls:
        message["tool_calls"] = calls
    return message


def _user(blocks: list[dict[str, Any]], marks: _Marks) -> list[dict[str, Any]]:
    """Tool results become `tool` messages (OpenAI wants them right after the call)."""
    out: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for b in blocks:
        kind = b.get("type")
        if kind == "tool_result":
            out.append(
                marks.keep(
                    b,
                    {
                        "role": "tool",
                        "tool_call_id": b.get("tool_use_id", ""),
                        "content": _text(b.get("content")),
                    },
                )
            )
        elif kind == "text":
            parts.append(marks.keep(b, {"type": "text", "text": b.get("text", "")}))
        elif kind == "image":
            src = b.get("source") or {}
            url = (
                src.get("url")
                if src.get("type") == "url"
                else f"data:{src.get('media_type')};base64,{src.get('data')}"
            )
            parts.append(marks.keep(b, {"type": "image_url", "image_url": {"url": url}}))
        else:
            raise InvalidRequest(
                f"content block '{kind}' is not supported", code="unsupported_content"
            )
    if parts:
        out.append({"role": "user", "content": parts})
    return out


def usage(u: Mapping[str, Any]) -> dict[str, int]:
    details = u.get("prompt_tokens_details") or {}
    cached = details.get("cached_tokens") or 0
    written = details.get("cache_creation_tokens") or 0
    return {
        "input_tokens": max(0, (u.get("prompt_tokens") or 0) - cached - written),
        "output_tokens": u.get("completion_tokens") or 0,
        "cache_read_input_tokens": cached,
        "cache_creation_input_tokens": written,
    }


def _message_id(raw_id: Any) -> str:
    """Anthropic's form of the answer's id: `msg_` before an OpenAI target's id, so app
    feedback (pipeline/recent.py) finds the answer by either."""
    if isinstance(raw_id, str) and raw_id:
        return raw_id if raw_id.startswith("msg_") else f"msg_{raw_id}"
    return f"msg_{uuid.uuid4().hex[:24]}"


def response(raw: bytes) -> bytes:
    c = orjson.loads(raw)
    choice = c["choices"][0]
    msg = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    if msg.get("content"):
        content.append({"type": "text", "text": msg["content"]})
    for call in msg.get("tool_calls") or []:
        fn = call.get("function") or {}
        content.append(
            {
                "type": "tool_use",
                "id": call.get("id", ""),
                "name": fn.get("name", ""),
                "input": _arguments(fn.get("arguments")),
            }
        )
    return orjson.dumps(
        {
            "id": _message_id(c.get("id")),
            "type": "message",
            "role": "assistant",
            "model": c.get("model", ""),
            "content": content,
            "stop_reason": STOP.get(choice.get("finish_reason") or "stop", "end_turn"),
            "stop_sequence": None,
            "usage": usage(c.get("usage") or {}),
        }
    )


def _arguments(arguments: Any) -> Any:
    try:
        return orjson.loads(arguments or "{}")
    except orjson.JSONDecodeError:
        return {"_raw": arguments}


def _event(kind: str, data: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **data}) + b"\n\n"


def error_event(message: str, kind: str = "api_error") -> bytes:
    return _event("error", {"error": {"type": kind, "message": message}})


async def stream(events: Events) -> Events:
    """OpenAI chunk events → Anthropic stream events, batch for batch as they arrive."""
    started = False
    index = -1
    open_block: tuple[str, int] | None = None  # ("text", 0) or ("tool", openai tool index)
    stop_reason = "end_turn"
    totals: dict[str, Any] = {}
    done = False
    out: list[bytes] = []

    def close() -> None:
        nonlocal open_block
        if open_block is not None:
            open_block = None
            out.append(_event("content_block_stop", {"index": index}))

    def open_(block: tuple[str, int], content: dict[str, Any]) -> None:
        nonlocal index, open_block
        close()
        index += 1
        open_block = block
        out.append(_event("content_block_start", {"index": index, "content_block": content}))

    async for batch in events:
        for event in batch:
            if not event.startswith(b"data:"):
                continue
            payload = event[5:].strip()
            if payload == b"[DONE]":
                done = True
                break
            chunk = orjson.loads(payload)
            if "error" in chunk:
                if out:
                    yield out  # what came before the error still reaches the client
                raise UpstreamError(
                    PROTOCOL, str((chunk["error"] or {}).get("message", "stream error"))[:300]
                )
            if not started:
                started = True
                message = {
                    "id": _message_id(chunk.get("id")),
                    "type": "message",
                    "role": "assistant",
                    "model": chunk.get("model", ""),
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {"input_tokens": 0, "output_tokens": 0},
                }
                out.append(_event("message_start", {"message": message}))
            if chunk.get("usage"):
                totals = chunk["usage"]
            for choice in chunk.get("choices") or []:
                delta = choice.get("delta") or {}
                if delta.get("content"):
                    if open_block is None or open_block[0] != "text":
                        open_(("text", 0), {"type": "text", "text": ""})
                    text = {"type": "text_delta", "text": delta["content"]}
                    out.append(_event("content_block_delta", {"index": index, "delta": text}))
                for call in delta.get("tool_calls") or []:
                    which = call.get("index", 0)
                    fn = call.get("function") or {}
                    if open_block != ("tool", which):
                        tool = {
                            "type": "tool_use",
                            "id": call.get("id", ""),
                            "name": fn.get("name", ""),
                            "input": {},
                        }
                        open_(("tool", which), tool)
                    if fn.get("arguments"):
                        part = {"type": "input_json_delta", "partial_json": fn["arguments"]}
                        out.append(_event("content_block_delta", {"index": index, "delta": part}))
                if choice.get("finish_reason"):
                    stop_reason = STOP.get(choice["finish_reason"], "end_turn")
        if done:
            break
        if out:
            yield out
            out = []
    if not done:
        raise UpstreamError(PROTOCOL, "ended without [DONE]")
    close()
    out.append(
        _event(
            "message_delta",
            {"delta": {"stop_reason": stop_reason, "stop_sequence": None}, "usage": usage(totals)},
        )
    )
    out.append(_event("message_stop", {}))
    yield out
