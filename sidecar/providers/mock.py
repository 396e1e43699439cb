"""A provider that answers in-process: for trying the sidecar, and for testing apps and
policies against it without keys, network or cost. Answers are deterministic."""

from __future__ import annotations

import asyncio
import hashlib
import math
import struct
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from sidecar.policy.model import ProviderConfig
from sidecar.providers.base import EMBEDDINGS, Call, Events, Leases, Reply
from sidecar.providers.http import unsupported

MAX_DIMENSIONS = 8192  # the most `embedding_dims` may say


class MockProvider:
    batches = None  # no batch API: deferred lines run as calls

    def __init__(self, config: ProviderConfig) -> None:
        self.name = config.name
        self.settings = config.mock
        self._leases = Leases(config.max_concurrency, config.concurrency_wait)

    @property
    def busy(self) -> bool:
        return self._leases.count > 0

    @property
    def full(self) -> bool:
        return self._leases.full

    def when_idle(self, callback: Callable[[], None]) -> None:
        self._leases.idle = callback

    async def send(self, call: Call) -> Reply:
        release = await self._leases.acquire()
        try:
            if self.settings.latency:
                await asyncio.sleep(self.settings.latency)
            if call.operation == EMBEDDINGS:
                return Reply(body=orjson.dumps(self._embeddings(call)))
            text = self._reply_text(call.body)
            if call.stream:
                return Reply(events=self._stream(call, text, release), on_close=release)
            return Reply(body=orjson.dumps(self._completion(call, text)))
        finally:
            if not call.stream or call.operation == EMBEDDINGS:
                release()

    def _reply_text(self, body: Mapping[str, Any]) -> str:
        if self.settings.reply is not None:
            return self.settings.reply
        last = next(
            (m for m in reversed(body.get("messages") or []) if m.get("role") == "user"), None
        )
        content = last.get("content") if last else None
        if isinstance(content, list):
            content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
        prompt = " ".join(str(content or "").split())[:200]
        return f"Mock reply to: {prompt}" if prompt else "Mock reply."

    def _completion(self, call: Call, text: str) -> dict[str, Any]:
        usage = _usage(call.body, text)
        return {
            "id": f"chatcmpl-mock-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": call.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
            "usage": usage,
        }

    async def _stream(self, call: Call, text: str, release: Callable[[], None]) -> Events:
        ident = f"chatcmpl-mock-{uuid.uuid4().hex[:24]}"
        created = int(time.time())

        def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
            choices = (
                [{"index": 0, "delta": delta, "finish_reason": finish}] if delta or finish else []
            )
            body = {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": call.model,
                "choices": choices,
                **extra,
            }
            return b"data: " + orjson.dumps(body) + b"\n\n"

        delay = self.settings.chunk_delay
        try:
            ready = [chunk({"role": "assistant", "content": ""})]
            for i, word in enumerate(text.split(" ")):
                if delay:
                    yield ready  # what is ready goes out before the pause
                    ready = []
                    await asyncio.sleep(delay)
                ready.append(chunk({"content": word if i == 0 else " " + word}))
            ready.append(chunk({}, "stop"))
            options = call.body.get("stream_options") or {}
            if options.get("include_usage"):
                ready.append(chunk({}, None, usage=_usage(call.body, text)))
            ready.append(b"data: [DONE]\n\n")
            yield ready
        finally:
            release()

    def _embeddings(self, call: Call) -> dict[str, Any]:
        inputs = call.body.get("input")
        items = inputs if isinstance(inputs, list) else [inputs]
        dims = call.body.get("dimensions") or self.settings.embedding_dims
        if dims > MAX_DIMENSIONS:  # as a real model refuses more than it has
            raise unsupported(f"dimensions above {MAX_DIMENSIONS}")
        data = [
            {"object": "embedding", "index": i, "embedding": _vector(str(item), dims)}
            for i, item in enumerate(items)
        ]
        tokens = sum(_tokens(str(item)) for item in items)
        return {
            "object": "list",
            "data": data,
            "model": call.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    async def close(self) -> None:
        return None


def _tokens(text: str) -> int:
    """About four characters a token, as a rule of thumb for English."""
    return max(1, math.ceil(len(text) / 4))


def _usage(body: Mapping[str, Any], text: str) -> dict[str, int]:
    prompt = sum(_tokens(str(m.get("content") or "")) + 3 for m in body.get("messages") or [])
    completion = _tokens(text)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _vector(text: str, dims: int) -> list[float]:
    """A unit vector derived from the text's hash: equal texts embed equally."""
    raw = b""
    counter = 0
    while len(raw) < dims * 4:
        raw += hashlib.sha256(f"{counter}:{text}".encode()).digest()
        counter += 1
    values = [v / 2**31 - 1.0 for v in struct.unpack(f"<{dims}I", raw[: dims * 4])]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]
