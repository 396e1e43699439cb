"""A fake Anthropic Messages API: a real HTTP server on 127.0.0.1 with scripted behaviour.

It speaks the wire format of `POST /v1/messages` as Anthropic documents it: JSON answers
with content blocks, SSE streams with `event:` lines in the real order (message_start,
content_block_start, ping, content_block_delta…, content_block_stop, message_delta,
message_stop), and errors in Anthropic's shape (`{"type": "error", "error": {…}}`),
including 529 overloaded and 429 with `retry-after`. Behaviour is chosen per model name;
every request is recorded with its headers and body.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
from aiohttp import web
from jsonschema import Draft202012Validator

from tests.support.batch_apis import AnthropicBatchFake
from tests.support.fake_server import FakeServer, send_raw

# Anthropic's error type for each status it uses.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


@dataclass
class Behaviour:
    """What the fake does for one model. Defaults: answer at once with `reply`."""

    reply: str = "hello from claude"
    tool_name: str | None = None  # answer with a tool_use block (after `reply`, if any)
    tool_input: dict[str, Any] = field(default_factory=dict)
    stop_reason: str | None = None  # default: tool_use with a tool, else end_turn
    input_tokens: int = 11
    output_tokens: int = 5
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_creation: dict[str, int] | None = None  # the writes by ttl (ephemeral_1h_input_tokens)
    status: int = 200  # non-200: answer with this status and an Anthropic error body
    error_type: str | None = None  # default: ERROR_TYPES[status]
    error_message: str | None = None
    retry_after: str | None = None
    delay: float = 0.0  # before the response headers
    chunk_delay: float = 0.0  # between stream events
    stream_error_after: int | None = None  # streams: an `error` event after this many events
    fail_times: int | None = None  # fail only this many times, then behave normally
    raw_body: bytes | None = None  # answer 200 with these bytes (fake_server.ECHO: the key)
    raw_type: str = "application/json"
    raw_events: list[bytes] | None = None  # streams: send these SSE bytes as they are
    # A model under constraints: the first candidate is what it says freely; a request that
    # forces a tool gets a call of it with the first candidate its input_schema accepts.
    candidates: list[Any] | None = None

    def constrained(self, body: dict[str, Any]) -> Behaviour:
        if self.candidates is None:
            return self
        choice = body.get("tool_choice") or {}
        tool = next((t for t in body.get("tools") or () if t["name"] == choice.get("name")), None)
        if choice.get("type") != "tool" or tool is None:
            return replace(self, reply=orjson.dumps(self.candidates[0]).decode())
        valid = Draft202012Validator(tool["input_schema"]).is_valid
        chosen = next((c for c in self.candidates if valid(c)), self.candidates[0])
        return replace(self, reply="", tool_name=tool["name"], tool_input=chosen)

    def content(self, model: str) -> list[dict[str, Any]]:
        blocks: list[dict[str, Any]] = []
        if self.reply:
            blocks.append({"type": "text", "text": self.reply})
        if self.tool_name is not None:
            blocks.append(
                {
                    "type": "tool_use",
                    "id": f"toolu_{model}_01",
                    "name": self.tool_name,
                    "input": self.tool_input,
                }
            )
        return blocks

    def stop(self) -> str:
        return self.stop_reason or ("tool_use" if self.tool_name is not None else "end_turn")

    def usage(self) -> dict[str, Any]:
        usage: dict[str, Any] = {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
            "cache_creation_input_tokens": self.cache_creation_input_tokens,
        }
        if self.cache_creation is not None:
            usage["cache_creation"] = self.cache_creation
        return usage


class FakeAnthropic(FakeServer[Behaviour]):
    behaviour = Behaviour

    @property
    def base_url(self) -> str:
        """The root URL, as a policy's `base_url` takes it (the adapter adds /v1/messages)."""
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> FakeAnthropic:
        app = web.Application(client_max_size=32 * 1024 * 1024)
        app.router.add_post("/v1/messages", self._messages)
        self.batches = AnthropicBatchFake(self)  # /v1/messages/batches
        self.batches.register(app)
        await self.serve(app)
        return self

    def answer_line(self, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """A batch request's answer: the message, or (status, Anthropic's error object)."""
        model = str(params.get("model", ""))
        b = self.behaviour_of(model)
        if b.status != 200:
            kind = b.error_type or ERROR_TYPES.get(b.status, "api_error")
            return b.status, {"type": "error", "error": {"type": kind, "message": f"fake {kind}"}}
        return 200, message(model, b.constrained(params))

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.record(request, body)
        model = str(body.get("model", ""))
        b = self.behaviour_of(model)
        failing = b.fail_times is None or b.fail_times > 0
        if b.fail_times is not None and b.fail_times > 0:
            b.fail_times -= 1
        if b.delay:
            await asyncio.sleep(b.delay)
        if failing and b.status != 200:
            kind = b.error_type or ERROR_TYPES.get(b.status, "api_error")
            error = {
                "type": "error",
                "error": {"type": kind, "message": b.error_message or f"fake {kind}"},
            }
            headers = {"retry-after": b.retry_after} if b.retry_after else {}
            return web.json_response(error, status=b.status, headers=headers)
        if b.raw_body is not None or (b.raw_events is not None and body.get("stream")):
            return await send_raw(request, b.raw_body, b.raw_events, b.raw_type)
        b = b.constrained(body)
        if not body.get("stream"):
            return web.json_response(message(model, b))
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        for i, event in enumerate(stream_events(model, b)):
            if failing and b.stream_error_after is not None and i >= b.stream_error_after:
                error = {"type": "overloaded_error", "message": "Overloaded"}
                await response.write(sse("error", {"type": "error", "error": error}))
                break
            if b.chunk_delay and i:
                await asyncio.sleep(b.chunk_delay)
            await response.write(event)
        await response.write_eof()
        return response


def message(model: str, b: Behaviour) -> dict[str, Any]:
    return {
        "id": f"msg_fake_{model}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": b.content(model),
        "stop_reason": b.stop(),
        "stop_sequence": None,
        "usage": b.usage(),
    }


def sse(kind: str, data: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def pieces(text: str, parts: int = 3) -> list[str]:
    """`text` cut in up to `parts` non-empty pieces, as a model streams it."""
    size = max(1, -(-len(text) // parts))
    return [text[i : i + size] for i in range(0, len(text), size)]


def stream_events(model: str, b: Behaviour) -> list[bytes]:
    start = {**message(model, b), "content": [], "stop_reason": None}
    start["usage"] = {**b.usage(), "output_tokens": 1}
    events = [sse("message_start", {"type": "message_start", "message": start})]
    for index, block in enumerate(b.content(model)):
        if block["type"] == "text":
            opening: dict[str, Any] = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": p} for p in pieces(block["text"])]
        else:
            opening = {**block, "input": {}}
            arguments = orjson.dumps(block["input"]).decode()
            # Anthropic opens with an empty partial_json, then sends the rest in pieces.
            deltas = [
                {"type": "input_json_delta", "partial_json": p} for p in ["", *pieces(arguments)]
            ]
        events.append(
            sse(
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": opening},
            )
        )
        if index == 0:
            events.append(sse("ping", {"type": "ping"}))
        events.extend(
            sse("content_block_delta", {"type": "content_block_delta", "index": index, "delta": d})
            for d in deltas
        )
        events.append(sse("content_block_stop", {"type": "content_block_stop", "index": index}))
    events.append(
        sse(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": b.stop(), "stop_sequence": None},
                "usage": {"output_tokens": b.output_tokens},
            },
        )
    )
    events.append(sse("message_stop", {"type": "message_stop"}))
    return events
