"""OpenAI chat completions → Anthropic Messages, and Anthropic's answers back.

The sidecar's internal format is OpenAI's; this module is the Anthropic adapter's half of
the seam. Requests for features whose absence changes the answer's shape (logprobs, n > 1,
audio, unknown content parts or tool types) fail with a 400 that names the feature;
sampling knobs with no Anthropic equivalent (seed, penalties, logit_bias) are dropped.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import orjson

from sidecar.errors import CLIENT, PROTOCOL, UpstreamError
from sidecar.policy.model import PromptCache
from sidecar.policy.native import NativeSchema
from sidecar.providers.base import MALFORMED, Events
from sidecar.providers.prompt_cache import place_breakpoints
from sidecar.providers.structured import anthropic_tool

FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
_UNSUPPORTED = {
    "logprobs": "logprobs",
    "top_logprobs": "logprobs",
    "audio": "audio output",
    "modalities": "audio output",
    "prediction": "predicted outputs",
}


def _reject(feature: str) -> UpstreamError:
    body = {
        "error": {
            "message": f"{feature} cannot be translated to the Anthropic Messages API",
            "type": "invalid_request_error",
            "code": "unsupported_parameter",
        }
    }
    return UpstreamError(CLIENT, f"unsupported: {feature}", status=400, raw_body=orjson.dumps(body))


def request(
    body: Mapping[str, Any],
    model: str,
    default_max_tokens: int,
    native: NativeSchema | None = None,
    cache: PromptCache | None = None,
) -> dict[str, Any]:
    """`native`: force a tool whose input is the answer (see providers/structured.py).
    `cache`: place prompt-cache breakpoints (see providers/prompt_cache.py)."""
    try:
        return _request(body, model, default_max_tokens, native, cache)
    except (AttributeError, KeyError, TypeError) as exc:
        # Parts of the wrong shape (a message that is not an object, `stop: 5`): the
        # request's own fault, so a 400 like any other, not an error that escapes dispatch.
        error = {
            "error": {
                "message": f"malformed chat request ({exc.__class__.__name__}: {exc})"[:300],
                "type": "invalid_request_error",
                "code": "invalid_request",
            }
        }
        raise UpstreamError(
            CLIENT, "malformed request", status=400, raw_body=orjson.dumps(error)
        ) from None


def _request(
    body: Mapping[str, Any],
    model: str,
    default_max_tokens: int,
    native: NativeSchema | None,
    cache: PromptCache | None,
) -> dict[str, Any]:
    for key, feature in _UNSUPPORTED.items():
        if body.get(key):
            raise _reject(feature)
    if (body.get("n") or 1) > 1:
        raise _reject("n > 1")
    system: list[dict[str, Any]] = []
    messages: list[dict[str, Any]] = []
    for m in body.get("messages") or []:
        role = m.get("role")
        if role in ("system", "developer"):
            system.extend(_blocks(m.get("content")))
        elif role == "tool":
            block = {
                "type": "tool_result",
                "tool_use_id": m.get("tool_call_id", ""),
                "content": _blocks(m.get("content")),
            }
            if "cache_control" in m:
                block["cache_control"] = m["cache_control"]
            _append(messages, "user", [block])
        elif role == "assistant":
            blocks = _blocks(m.get("content"))
            for call in m.get("tool_calls") or []:
                fn = call.get("function") or {}
                use = {
                    "type": "tool_use",
                    "id": call.get("id", ""),
                    "name": fn.get("name", ""),
                    "input": _json_object(fn.get("arguments")),
                }
                if "cache_control" in call:
                    use["cache_control"] = call["cache_control"]
                blocks.append(use)
            _append(messages, "assistant", blocks)
        else:
            _append(messages, "user", _blocks(m.get("content")))
    out: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "max_tokens": body.get("max_completion_tokens")
        or body.get("max_tokens")
        or default_max_tokens,
    }
    app_system = len(system)  # the sidecar's hint below is not part of the app's prefix
    fmt = body.get("response_format") or {}
    if native is not None:
        out["tools"] = [anthropic_tool(native)]
        out["tool_choice"] = {"type": "tool", "name": native.name}
    elif fmt.get("type") in ("json_object", "json_schema"):
        schema = (fmt.get("json_schema") or {}).get("schema")
        hint = "Answer with one JSON object only, no prose and no code fences."
        if schema is not None:
            hint += " It must validate against this JSON Schema: " + orjson.dumps(schema).decode()
        system.append({"type": "text", "text": hint})
    if system:
        out["system"] = system
    for ours, theirs in (("temperature", "temperature"), ("top_p", "top_p")):
        if body.get(ours) is not None:
            out[theirs] = body[ours]
    stop = body.get("stop")
    if stop:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if body.get("tools"):
        out["tools"] = [_tool(t) for t in body["tools"]]
        choice = _tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls"))
        if choice is not None:
            out["tool_choice"] = choice
    if isinstance(body.get("user"), str):
        out["metadata"] = {"user_id": body["user"]}
    out.update(body.get("x_anthropic") or {})  # Anthropic-only fields carried from ingress
    if body.get("stream"):
        out["stream"] = True
    if cache is not None:
        place_breakpoints(out, cache, app_system)
    return out


def _append(messages: list[dict[str, Any]], role: str, blocks: list[dict[str, Any]]) -> None:
    """Anthropic wants user and assistant turns to alternate: merge neighbours."""
    if messages and messages[-1]["role"] == role:
        messages[-1]["content"].extend(blocks)
    else:
        messages.append({"role": role, "content": blocks})


def _blocks(content: Any) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks = []
    for part in content:
        kind = part.get("type")
        if kind == "text":
            block: dict[str, Any] = {"type": "text", "text": part.get("text", "")}
        elif kind == "image_url":
            url = (part.get("image_url") or {}).get("url", "")
            block = {"type": "image", "source": _image_source(url)}
        else:
            raise _reject(f"content part '{kind}'")
        if "cache_control" in part:  # the app's own breakpoint (OpenRouter's convention)
            block["cache_control"] = part["cache_control"]
        blocks.append(block)
    return blocks


def _image_source(url: str) -> dict[str, Any]:
    if url.startswith("data:"):
        header, _, data = url.partition(",")
        media_type = header[5:].split(";")[0] or "image/png"
        return {"type": "base64", "media_type": media_type, "data": data}
    return {"type": "url", "url": url}


def _json_object(arguments: Any) -> Any:
    if isinstance(arguments, dict):
        return arguments
    try:
        return orjson.loads(arguments or "{}")
    except orjson.JSONDecodeError:
        raise _reject("tool call arguments that are not JSON") from None


def _tool(tool: Mapping[str, Any]) -> dict[str, Any]:
    if tool.get("type", "function") != "function":
        raise _reject(f"tool type '{tool.get('type')}'")
    fn = tool.get("function") or {}
    out = {"name": fn.get("name", ""), "input_schema": fn.get("parameters") or {"type": "object"}}
    if fn.get("description"):
        out["description"] = fn["description"]
    if "cache_control" in tool:
        out["cache_control"] = tool["cache_control"]
    return out


def _tool_choice(choice: Any, parallel: Any) -> dict[str, Any] | None:
    if choice is None and parallel is None:
        return None
    if choice in (None, "auto"):
        out: dict[str, Any] = {"type": "auto"}
    elif choice == "required":
        out = {"type": "any"}
    elif choice == "none":
        return {"type": "none"}
    elif isinstance(choice, dict) and choice.get("type") == "function":
        out = {"type": "tool", "name": (choice.get("function") or {}).get("name", "")}
    else:
        raise _reject(f"tool_choice {choice!r}")
    if parallel is False:
        out["disable_parallel_tool_use"] = True
    return out


def usage(u: Mapping[str, Any]) -> dict[str, Any]:
    cached = u.get("cache_read_input_tokens") or 0
    written = u.get("cache_creation_input_tokens") or 0
    prompt = (u.get("input_tokens") or 0) + cached + written
    completion = u.get("output_tokens") or 0
    details = {"cached_tokens": cached, "cache_creation_tokens": written}
    long = (u.get("cache_creation") or {}).get("ephemeral_1h_input_tokens")
    if long:  # priced apart: an hour-long cache write costs more than a 5-minute one
        details["cache_creation_1h_tokens"] = long
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": details,
    }


def response(raw: bytes, native: NativeSchema | None = None) -> bytes:
    """`native`: the forced tool's input is the answer, given back as the content."""
    try:
        msg = orjson.loads(raw)
        if native is not None:
            msg["content"] = _unwrapped(msg["content"], native.name)
            if msg.get("stop_reason") == "tool_use":
                msg["stop_reason"] = "end_turn"
        text = "".join(b["text"] for b in msg["content"] if b["type"] == "text")
        calls = [
            {
                "id": b["id"],
                "type": "function",
                "function": {
                    "name": b["name"],
                    "arguments": orjson.dumps(b.get("input", {})).decode(),
                },
            }
            for b in msg["content"]
            if b["type"] == "tool_use"
        ]
        message: dict[str, Any] = {
            "role": "assistant",
            "content": text if text or not calls else None,
        }
        if calls:
            message["tool_calls"] = calls
        out = {
            "id": msg["id"],
            "object": "chat.completion",
            "created": int(time.time()),
            "model": msg.get("model", ""),
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": FINISH.get(msg.get("stop_reason") or "", "stop"),
                }
            ],
            "usage": usage(msg.get("usage") or {}),
        }
    except MALFORMED as exc:  # orjson.JSONDecodeError is a ValueError
        raise UpstreamError(
            PROTOCOL, f"malformed Anthropic answer ({exc.__class__.__name__})"
        ) from None
    return orjson.dumps(out)


def _unwrapped(blocks: list[dict[str, Any]], tool: str) -> list[dict[str, Any]]:
    """The forced tool's call as one text block of JSON (the text around it dropped)."""
    for b in blocks:
        if b["type"] == "tool_use" and b["name"] == tool:
            return [{"type": "text", "text": orjson.dumps(b.get("input", {})).decode()}]
    return blocks


async def stream(events: Events, include_usage: bool, native: NativeSchema | None = None) -> Events:
    """Anthropic SSE events → OpenAI chunk events, batch for batch as they arrive. With
    `native`, the forced tool's input streams as content."""
    ident, model, created = "", "", int(time.time())
    input_usage: dict[str, Any] = {}
    tool_index: dict[int, int] = {}  # Anthropic block index → OpenAI tool call index
    answer_block: int | None = None  # the forced tool's block, streamed as content
    finish: str | None = None
    output_tokens = 0

    def chunk(
        delta: dict[str, Any] | None, finish_reason: str | None = None, **extra: Any
    ) -> bytes:
        choices = (
            [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish_reason}]
        )
        body = {
            "id": ident,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": choices,
            **extra,
        }
        return b"data: " + orjson.dumps(body) + b"\n\n"

    async for batch in events:
        out: list[bytes] = []
        for event in batch:
            try:
                data = _data(event)
                if data is None:
                    continue
                kind = data.get("type")
                if kind == "message_start":
                    msg = data.get("message") or {}
                    ident, model = msg.get("id", ""), msg.get("model", "")
                    input_usage = msg.get("usage") or {}
                    out.append(chunk({"role": "assistant", "content": ""}))
                elif kind == "content_block_start":
                    block = data.get("content_block") or {}
                    if native is not None and block.get("name") == native.name:
                        answer_block = data.get("index", 0)
                    elif block.get("type") == "tool_use":
                        i = tool_index.setdefault(data.get("index", 0), len(tool_index))
                        call = {
                            "index": i,
                            "id": block.get("id", ""),
                            "type": "function",
                            "function": {"name": block.get("name", ""), "arguments": ""},
                        }
                        out.append(chunk({"tool_calls": [call]}))
                    elif block.get("type") == "text" and block.get("text"):
                        out.append(chunk({"content": block["text"]}))
                elif kind == "content_block_delta":
                    delta = data.get("delta") or {}
                    if delta.get("type") == "text_delta" and answer_block is None:
                        out.append(chunk({"content": delta.get("text", "")}))
                    elif answer_block is not None and data.get("index", 0) == answer_block:
                        out.append(chunk({"content": delta.get("partial_json", "")}))
                    elif delta.get("type") == "input_json_delta":
                        i = tool_index.get(data.get("index", 0), 0)
                        arguments = delta.get("partial_json", "")
                        part = {"index": i, "function": {"arguments": arguments}}
                        out.append(chunk({"tool_calls": [part]}))
                elif kind == "message_delta":
                    stop = (data.get("delta") or {}).get("stop_reason")
                    finish = FINISH.get(stop or "", "stop")
                    if answer_block is not None and stop == "tool_use":
                        finish = "stop"
                    output_tokens = (data.get("usage") or {}).get("output_tokens", output_tokens)
                elif kind == "message_stop":
                    out.append(chunk({}, finish or "stop"))
                    if include_usage:
                        totals = usage({**input_usage, "output_tokens": output_tokens})
                        out.append(chunk(None, usage=totals))
                    out.append(b"data: [DONE]\n\n")
                    yield out
                    return
                elif kind == "error":
                    err = data.get("error") or {}
                    raise UpstreamError(
                        PROTOCOL, f"{err.get('type', 'error')}: {err.get('message', '')}"[:300]
                    )
            except (UpstreamError, *MALFORMED) as exc:
                if out:
                    yield out  # what came before the break still reaches the client
                if isinstance(exc, UpstreamError):
                    raise
                raise UpstreamError(
                    PROTOCOL, f"malformed Anthropic stream event ({exc.__class__.__name__})"
                ) from None
        if out:
            yield out


def _data(event: bytes) -> dict[str, Any] | None:
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            try:
                value = orjson.loads(line[5:])
            except orjson.JSONDecodeError:
                raise UpstreamError(PROTOCOL, "malformed Anthropic stream event") from None
            return value if isinstance(value, dict) else None
    return None
