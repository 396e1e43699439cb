"""A fake OpenAI-compatible provider: a real HTTP server on 127.0.0.1 with scripted faults.

Behaviour is chosen per upstream model name, so one server can play a healthy provider,
a failing one and a slow one in the same test. Every request it receives is recorded.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from tests.support.batch_apis import OpenAIBatchFake
from tests.support.fake_server import FakeServer, send_raw


@dataclass
class Behaviour:
    """What the fake does for one model. Defaults: answer at once with `reply`."""

    reply: str = "hello from upstream"
    status: int = 200  # non-200: answer with this status and an OpenAI error body
    error_body: dict[str, Any] | None = None
    retry_after: str | None = None
    delay: float = 0.0  # before the response headers
    chunk_delay: float = 0.0  # between stream events
    drop: bool = False  # close the connection without answering
    cut_after: int | None = None  # streams: close the connection after this many events
    fail_times: int | None = None  # fail only this many times, then behave normally
    replies: list[str] | None = None  # successive answers (the last one repeats)
    finish_reason: str = "stop"
    answered_by: str | None = None  # the model the answer names (default: the one asked for)
    raw_body: bytes | None = None  # answer 200 with these bytes (fake_server.ECHO: the key)
    raw_type: str = "application/json"
    raw_events: list[bytes] | None = None  # streams: send these SSE bytes as they are
    refuse_input: str | None = None  # embeddings: a 400 for any call with this input
    usage: dict[str, Any] | None = None  # what the answers report (default: 7 in, 3 out)
    logprob: float | None = None  # each token's, when the request asks for logprobs
    tool_calls: list[tuple[str, str]] | None = None  # answer by calling these (name, args)


class FakeOpenAI(FakeServer[Behaviour]):
    behaviour = Behaviour

    def __init__(self) -> None:
        super().__init__()
        self.cancelled = 0  # requests whose client went away before we finished
        self.vectors: dict[str, list[float]] = {}  # embeddings the test controls, by input
        self.embedder: Callable[[str], list[float]] | None = None  # for the other inputs

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self) -> FakeOpenAI:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/embeddings", self._embeddings)
        self.batches = OpenAIBatchFake(self)  # /v1/files, /v1/batches
        self.batches.register(app)
        await self.serve(app)
        return self

    def answer_line(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """A batch line's answer: what the synchronous endpoint would say, as (status, body)."""
        b = self.behaviour_of(str(body.get("model", "")))
        if b.status != 200:
            error = {"message": f"fake failure {b.status}", "type": "invalid_request_error"}
            return b.status, {"error": {**error, "code": None}}
        if "input" in body:
            return 200, self.embeddings_answer(body)
        answer = completion(b.answered_by or body["model"], b.reply)
        answer["choices"][0]["finish_reason"] = b.finish_reason
        return 200, answer

    async def _common(
        self, request: web.Request
    ) -> tuple[dict[str, Any], Behaviour, web.StreamResponse | None]:
        body = await request.json()
        self.record(request, body)
        b = self.behaviour_of(str(body.get("model", "")))
        failing = b.fail_times is None or b.fail_times > 0
        if b.fail_times is not None and b.fail_times > 0:
            b.fail_times -= 1
        try:
            if b.delay:
                await asyncio.sleep(b.delay)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if failing and b.drop:
            assert request.transport is not None
            request.transport.close()
            return body, b, web.Response(status=500)
        if failing and b.status != 200:
            error = b.error_body or {
                "error": {
                    "message": f"fake failure {b.status}",
                    "type": "server_error",
                    "code": None,
                }
            }
            headers = {"retry-after": b.retry_after} if b.retry_after else {}
            return body, b, web.json_response(error, status=b.status, headers=headers)
        return body, b, None

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body, b, early = await self._common(request)
        if early is not None:
            return early
        if b.raw_body is not None or (b.raw_events is not None and body.get("stream")):
            return await send_raw(request, b.raw_body, b.raw_events, b.raw_type)
        model = b.answered_by or body["model"]
        text = b.reply
        if b.replies:
            text = b.replies.pop(0) if len(b.replies) > 1 else b.replies[0]
        logprob = b.logprob if body.get("logprobs") else None
        if not body.get("stream"):
            answer = completion(model, text, b.usage, b.tool_calls)
            if not b.tool_calls:
                answer["choices"][0]["finish_reason"] = b.finish_reason
            if logprob is not None and not b.tool_calls:
                answer["choices"][0]["logprobs"] = {
                    "content": [_token(w, logprob) for w in text.split(" ")]
                }
            return web.json_response(answer)
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        events = stream_events(
            model,
            text,
            (body.get("stream_options") or {}).get("include_usage", False),
            b.usage,
            logprob,
            b.finish_reason,
            b.tool_calls,
        )
        try:
            for i, event in enumerate(events):
                if b.cut_after is not None and i >= b.cut_after:
                    assert request.transport is not None
                    request.transport.close()
                    return response
                if b.chunk_delay and i:
                    await asyncio.sleep(b.chunk_delay)
                await response.write(event)
        except (asyncio.CancelledError, ConnectionResetError):
            self.cancelled += 1
            raise
        await response.write_eof()
        return response

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        body, b, early = await self._common(request)
        if early is not None:
            return early
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        if b.refuse_input is not None and b.refuse_input in inputs:
            error = {"message": "input refused", "type": "invalid_request_error", "code": None}
            return web.json_response({"error": error}, status=400)
        return web.json_response(self.embeddings_answer(body))

    def embeddings_answer(self, body: dict[str, Any]) -> dict[str, Any]:
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data = [
            {
                "object": "embedding",
                "index": i,
                "embedding": self._vector(str(x)),
            }
            for i, x in enumerate(inputs)
        ]
        usage = {"prompt_tokens": len(inputs), "total_tokens": len(inputs)}
        return {"object": "list", "data": data, "model": body["model"], "usage": usage}

    def _vector(self, text: str) -> list[float]:
        if text in self.vectors:
            return self.vectors[text]
        return self.embedder(text) if self.embedder else [float(len(text)), 1.0, 0.0]


USAGE = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
_IDS = itertools.count(1)  # every answer has an id of its own, as a real provider's has


def answer_id() -> str:
    return f"chatcmpl-fake-{next(_IDS)}"


def completion(
    model: str,
    text: str,
    usage: dict[str, Any] | None = None,
    tool_calls: list[tuple[str, str]] | None = None,
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if tool_calls:
        message = {"role": "assistant", "content": None, "tool_calls": _calls(tool_calls)}
    return {
        "id": answer_id(),
        "object": "chat.completion",
        "created": 1700000000,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": "tool_calls" if tool_calls else "stop",
            }
        ],
        "usage": usage or USAGE,
    }


def _token(word: str, logprob: float) -> dict[str, Any]:
    return {"token": word, "logprob": logprob, "bytes": list(word.encode()), "top_logprobs": []}


def _calls(tool_calls: list[tuple[str, str]]) -> list[dict[str, Any]]:
    return [
        {"id": f"call_{i}", "type": "function", "function": {"name": name, "arguments": args}}
        for i, (name, args) in enumerate(tool_calls)
    ]


def stream_events(
    model: str,
    text: str,
    include_usage: bool,
    usage: dict[str, Any] | None = None,
    logprob: float | None = None,
    finish_reason: str = "stop",
    tool_calls: list[tuple[str, str]] | None = None,
) -> list[bytes]:
    ident = answer_id()

    def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        chunk = {
            "id": ident,
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": model,
            "choices": choices,
            **extra,
        }
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    events = [
        event([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
    ]
    if tool_calls:
        for i, call in enumerate(_calls(tool_calls)):
            delta = {"tool_calls": [{**call, "index": i}]}
            events.append(event([{"index": 0, "delta": delta, "finish_reason": None}]))
        events.append(event([{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]))
        if include_usage:
            events.append(event([], usage=usage or USAGE))
        return [*events, b"data: [DONE]\n\n"]
    for i, word in enumerate(text.split(" ")):
        piece = word if i == 0 else " " + word
        choice: dict[str, Any] = {"index": 0, "delta": {"content": piece}, "finish_reason": None}
        if logprob is not None:
            choice["logprobs"] = {"content": [_token(piece, logprob)]}
        events.append(event([choice]))
    events.append(event([{"index": 0, "delta": {}, "finish_reason": finish_reason}]))
    if include_usage:
        events.append(event([], usage=usage or USAGE))
    events.append(b"data: [DONE]\n\n")
    return events
