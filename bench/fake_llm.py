"""Fake LLM providers for bench/savings.py: one aiohttp server that speaks OpenAI's and
Anthropic's wire formats and bills every call at list prices, so a run's spend is measured
on the provider's side, apart from anything the sidecar reports.

    .venv/bin/python bench/fake_llm.py --port 9000 --seed 17

- OpenAI: POST /v1/chat/completions (JSON and SSE with `stream_options.include_usage`),
  /v1/embeddings, and a minimal Batch API (/v1/files, /v1/batches) at the batch price.
- Anthropic: POST /v1/messages (JSON and SSE) and a minimal Message Batches API
  (/v1/messages/batches) at the batch price.
- GET /bill: what each model was paid so far; POST /reset: a new run (empty bill, empty
  prompt caches).

Answers come from bench/world.py: the question in the last user message is parsed and
answered by the model's size. Tokens are counted from the text, one per 4 characters
(rounded up) of everything the model reads — tools, system, messages, a response schema —
and of the answer. Embeddings are deterministic: a bag of concepts (synonyms folded,
numbers weighted low, as real embedders barely move for a changed number), so paraphrases
land close together and near misses closer still.

Prompt caching is reported the way each provider does: OpenAI caches automatically, a
prompt of 1,024 tokens or more reading the longest prefix seen before in 128-token steps
(`prompt_tokens_details.cached_tokens`) on the machine the request lands on: one of four,
chosen by a hash of the prompt's first 256 tokens and its `prompt_cache_key`, except that
past 15 requests in 3 seconds (OpenAI's ~15 a minute, at this server's speed) for one such
hash the rest spill over to a machine picked at random. Anthropic caches only up to
`cache_control` breakpoints, reporting writes and reads apart (`cache_creation_input_tokens`,
`cache_read_input_tokens`): each breakpoint reads the longest prefix cached before that
ends on a block boundary at most 20 blocks back, and writes the rest up to itself.
Latency is scaled down about 20x from real providers so a run
takes minutes: a base per call plus a time per output token.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import random
import re
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
from aiohttp import web
from world import World, answer

DIMS = 256
MACHINES = 4  # OpenAI: the machines a prompt prefix may be cached on
OVERFLOW = (15, 3.0)  # more requests than this per routing hash in this many seconds spill
LOOKBACK = 20  # Anthropic: blocks a breakpoint looks back for a cached prefix


@dataclass(frozen=True)
class Listed:
    """List prices, USD per 1M tokens (bench/README.md says where they come from)."""

    input: float
    output: float
    cached_input: float
    cache_write: float
    small: bool = False
    base: float = 0.03  # seconds before the first token
    per_token: float = 0.0005  # seconds per output token
    batch: float = 0.5  # batch APIs: half price


MODELS = {
    "claude-sonnet-4-5": Listed(3.0, 15.0, 0.30, 3.75),
    "claude-haiku-4-5": Listed(1.0, 5.0, 0.10, 1.25, True, 0.015, 0.0002),
    "gpt-4.1-mini": Listed(0.40, 1.60, 0.10, 0.40, True, 0.015, 0.0002),
    "text-embedding-3-small": Listed(0.02, 0.0, 0.02, 0.02, True, 0.003, 0.0),
}


def tokens(text: str) -> int:
    return math.ceil(len(text) / 4)


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


# -- embeddings -----------------------------------------------------------------------------

_FOLD = {
    # words that mean the same to the shop's questions fold into one concept
    "where": "status", "status": "status",
    "cost": "price", "price": "price", "charge": "price",
    "ship": "ship", "deliver": "ship", "shipping": "ship", "possible": "ship",
    "return": "return", "returns": "return", "policy": "return",
    "bought": "return", "something": "return",
    "warranty": "warranty", "cover": "warranty", "covered": "warranty", "gear": "warranty",
    "payment": "pay", "pay": "pay", "methods": "pay", "ways": "pay", "accept": "pay",
    "classify": "sentiment", "sentiment": "sentiment", "positive": "sentiment",
    "negative": "sentiment", "neutral": "sentiment", "customer": "sentiment",
    "extract": "extract", "message": "extract", "id": "order", "number": "order",
    "orders": "order",
    "refund": "refund", "returning": "refund", "back": "refund", "send": "refund",
    "restocking": "fee", "fee": "fee", "taken": "fee", "off": "fee",
    "arrive": "arrival", "delivery": "arrival", "date": "arrival", "buy": "order_verb",
    "buying": "order_verb", "business": "business", "days": "business", "count": "business",
    "compare": "compare", "most": "compare", "priciest": "compare", "expensive": "compare",
    "cheapest": "cheapest", "difference": "cheapest", "exceed": "cheapest", "more": "cheapest",
    "python": "code", "code": "code", "function": "code", "write": "code", "fetches": "list",
    "lists": "list", "open": "open", "pagination": "pages", "rate": "retry", "limits": "retry",
    "limiting": "retry", "retrying": "retry", "handling": "retry", "following": "pages",
    "summarise": "json", "json": "json", "object": "json", "refunded": "refundable",
    "refundable": "refundable", "still": "refundable",
}  # fmt: skip
_STOP_WORDS = (
    "a an the is are my me i of to for do does you your can what which how this that it "
    "and or with from on in if be by its was will when any all as at once only one get "
    "give us our tell there they them thanks please yet has have been so these those "
    "every whether much after am than did work purchase turn into right now"
)
_STOP = frozenset(_STOP_WORDS.split())


def embed(text: str) -> list[float]:
    """A deterministic unit vector: concepts weigh 1, numbers 0.15."""
    vector = np.zeros(DIMS)
    words = re.findall(r"[a-z]+|\d+(?:\.\d+)?", text.lower())
    for concept in {_FOLD.get(w, w) for w in words if w not in _STOP}:
        weight = 0.15 if concept[0].isdigit() else 1.0
        seed = int.from_bytes(hashlib.sha256(concept.encode()).digest()[:8], "little")
        vector += weight * np.random.default_rng(seed).standard_normal(DIMS)
    norm = float(np.linalg.norm(vector)) or 1.0
    return [round(float(v), 6) for v in vector / norm]


# -- the server -----------------------------------------------------------------------------


class Bill:
    def __init__(self) -> None:
        self.models: dict[str, dict[str, float]] = {}

    def add(
        self, model: str, fresh: int, cached: int, written: int, out: int, batch: bool = False
    ) -> None:
        p = MODELS[model]
        usd = (fresh * p.input + cached * p.cached_input + written * p.cache_write) / 1e6
        usd = (usd + out * p.output / 1e6) * (p.batch if batch else 1.0)
        row = self.models.setdefault(
            model, dict.fromkeys(("calls", "input", "cached", "written", "output", "usd"), 0.0)
        )
        row["calls"] += 1
        row["input"] += fresh + cached + written
        row["cached"] += cached
        row["written"] += written
        row["output"] += out
        row["usd"] += usd


class FakeLLM:
    def __init__(self, seed: int) -> None:
        self.world = World(seed)
        self.reset()

    def reset(self) -> None:
        self.bill = Bill()
        self.prefixes: set[bytes] = set()  # prompt caches: hashes of cached prefixes
        self.routing: dict[bytes, deque[float]] = {}  # OpenAI: recent requests per hash
        self.spill = random.Random(0)
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict[str, Any]] = {}

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        r = app.router
        r.add_post("/v1/chat/completions", self.openai_chat)
        r.add_post("/v1/embeddings", self.openai_embeddings)
        r.add_post("/v1/files", self.openai_file)
        r.add_get("/v1/files/{id}/content", self.openai_file_content)
        r.add_post("/v1/batches", self.openai_batch)
        r.add_get("/v1/batches/{id}", self.openai_batch_get)
        r.add_post("/v1/messages", self.anthropic_messages)
        r.add_post("/v1/messages/batches", self.anthropic_batch)
        r.add_get("/v1/messages/batches/{id}", self.anthropic_batch_get)
        r.add_get("/v1/messages/batches/{id}/results", self.anthropic_batch_results)
        r.add_get("/bill", self.get_bill)
        r.add_post("/reset", self.post_reset)
        return app

    async def get_bill(self, request: web.Request) -> web.Response:
        return web.json_response(self.bill.models)

    async def post_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"ok": True})

    # -- prompt caching ---------------------------------------------------------------------

    def openai_cached(self, model: str, prompt: str, key: str = "") -> int:
        """The longest prefix seen before on the machine the request lands on, from 1,024
        tokens in 128-token steps."""
        n = tokens(prompt)
        if n < 1024:
            return 0
        machine = self.machine(model, prompt, key)
        digest, cached, done = hashlib.sha1(f"{model}@{machine}".encode()), 0, 0
        for k in range(1024, n + 1, 128):
            digest.update(prompt[done : k * 4].encode())
            done = k * 4
            found = digest.copy().digest()
            if found in self.prefixes:
                cached = k
            else:
                self.prefixes.add(found)
        return cached

    def machine(self, model: str, prompt: str, key: str) -> int:
        routing = hashlib.sha1(f"{model}\0{key}\0{prompt[:1024]}".encode()).digest()
        recent = self.routing.setdefault(routing, deque())
        now = time.monotonic()
        most, seconds = OVERFLOW
        while recent and recent[0] < now - seconds:
            recent.popleft()
        recent.append(now)
        if len(recent) > most:
            return self.spill.randrange(MACHINES)
        return int.from_bytes(routing[:4], "little") % MACHINES

    def anthropic_cached(self, model: str, parts: list[tuple[str, bool]]) -> tuple[int, int]:
        """(read, written) tokens: each breakpoint reads the longest prefix cached before
        that ends on a block boundary at most 20 blocks back, and writes the rest up to
        itself. Prefixes under 1,024 tokens are not cached."""
        text, ends, marks = "", [], []
        for piece, marked in parts:
            text += piece
            ends.append(len(text))
            if marked:
                marks.append(len(ends) - 1)
        read = top = 0
        for at in marks:
            mark = tokens(text[: ends[at]])
            if mark < 1024:
                continue
            for back in range(at, max(-1, at - LOOKBACK - 1), -1):
                key = hashlib.sha1((model + text[: ends[back]]).encode()).digest()
                if key in self.prefixes:
                    read = max(read, tokens(text[: ends[back]]))
                    break
            self.prefixes.add(hashlib.sha1((model + text[: ends[at]]).encode()).digest())
            top = max(top, mark)
        return read, max(0, top - read)

    # -- OpenAI -----------------------------------------------------------------------------

    def _openai_prompt(self, body: dict[str, Any]) -> tuple[str, str]:
        """(everything the model reads, in order; the last user message)."""
        parts = [canonical(t.get("function", t)) for t in body.get("tools") or ()]
        last = ""
        for m in body.get("messages") or ():
            content = m.get("content")
            if isinstance(content, list):
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
            parts.append(str(content or ""))
            if m.get("role") == "user":
                last = str(content or "")
        fmt = body.get("response_format") or {}
        if fmt.get("type") == "json_schema":
            parts.append(canonical(fmt["json_schema"].get("schema")))
        return "".join(parts), last

    def openai_usage(
        self, model: str, body: dict[str, Any], text: str, batch: bool = False
    ) -> dict[str, Any]:
        prompt, _ = self._openai_prompt(body)
        n, out = tokens(prompt), tokens(text)
        cached = self.openai_cached(model, prompt, str(body.get("prompt_cache_key") or ""))
        self.bill.add(model, n - cached, cached, 0, out, batch)
        details = {"cached_tokens": cached}
        return {
            "prompt_tokens": n,
            "completion_tokens": out,
            "total_tokens": n + out,
            "prompt_tokens_details": details,
        }

    def openai_answer(self, body: dict[str, Any]) -> tuple[str, str]:
        model = str(body.get("model"))
        if model not in MODELS:
            raise web.HTTPNotFound(text=f"no model {model}")
        _, last = self._openai_prompt(body)
        return model, answer(self.world, last, MODELS[model].small)

    async def openai_chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        model, text = self.openai_answer(body)
        usage = self.openai_usage(model, body, text)
        listed = MODELS[model]
        created, cid = int(time.time()), f"chatcmpl-{uuid.uuid4().hex[:12]}"
        if not body.get("stream"):
            await asyncio.sleep(listed.base + listed.per_token * usage["completion_tokens"])
            message = {"role": "assistant", "content": text}
            return web.json_response(
                {
                    "id": cid,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                    "usage": usage,
                }
            )

        def chunk(choices: list[dict[str, Any]], **extra: Any) -> bytes:
            data = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": choices,
                **extra,
            }
            return b"data: " + json.dumps(data).encode() + b"\n\n"

        pieces = _pieces(text)
        events = [chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}}])]
        events += [chunk([{"index": 0, "delta": {"content": p}}]) for p in pieces]
        events.append(chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}]))
        if (body.get("stream_options") or {}).get("include_usage"):
            events.append(chunk([], usage=usage))
        events.append(b"data: [DONE]\n\n")
        return await _stream(request, events, listed, usage["completion_tokens"])

    async def openai_embeddings(self, request: web.Request) -> web.Response:
        body = await request.json()
        model = str(body.get("model"))
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        n = sum(tokens(str(i)) for i in inputs)
        self.bill.add(model, n, 0, 0, 0)
        await asyncio.sleep(MODELS[model].base)
        data = [
            {"object": "embedding", "index": i, "embedding": embed(str(x))}
            for i, x in enumerate(inputs)
        ]
        usage = {"prompt_tokens": n, "total_tokens": n}
        return web.json_response({"object": "list", "data": data, "model": model, "usage": usage})

    async def openai_file(self, request: web.Request) -> web.Response:
        form = await request.post()
        upload: Any = form["file"]
        fid = f"file-{uuid.uuid4().hex[:12]}"
        self.files[fid] = upload.file.read()
        return web.json_response(
            {"id": fid, "object": "file", "bytes": len(self.files[fid]), "purpose": "batch"}
        )

    async def openai_file_content(self, request: web.Request) -> web.Response:
        return web.Response(body=self.files[request.match_info["id"]])

    async def openai_batch(self, request: web.Request) -> web.Response:
        """Every line answered at once, at the batch price."""
        body = await request.json()
        lines = []
        for raw in self.files[body["input_file_id"]].splitlines():
            line = json.loads(raw)
            model, text = self.openai_answer(line["body"])
            usage = self.openai_usage(model, line["body"], text, batch=True)
            message = {"role": "assistant", "content": text}
            answer_body = {
                "object": "chat.completion",
                "model": model,
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                "usage": usage,
            }
            lines.append(
                {
                    "custom_id": line["custom_id"],
                    "response": {"status_code": 200, "body": answer_body},
                }
            )
        out = f"file-{uuid.uuid4().hex[:12]}"
        self.files[out] = "\n".join(json.dumps(x) for x in lines).encode()
        bid = f"batch_{uuid.uuid4().hex[:12]}"
        self.batches[bid] = {
            "id": bid,
            "object": "batch",
            "endpoint": body.get("endpoint"),
            "input_file_id": body["input_file_id"],
            "completion_window": body.get("completion_window", "24h"),
            "status": "completed",
            "output_file_id": out,
            "created_at": int(time.time()),
            "request_counts": {"total": len(lines), "completed": len(lines), "failed": 0},
        }
        return web.json_response(self.batches[bid])

    async def openai_batch_get(self, request: web.Request) -> web.Response:
        return web.json_response(self.batches[request.match_info["id"]])

    # -- Anthropic --------------------------------------------------------------------------

    def _anthropic_prompt(self, body: dict[str, Any]) -> tuple[list[tuple[str, bool]], str]:
        """(the prompt in order as (text, cache breakpoint after it); the last user text)."""
        parts: list[tuple[str, bool]] = []
        for t in body.get("tools") or ():
            tool = {"name": t["name"], "description": t.get("description", "")}
            tool["parameters"] = t.get("input_schema")
            parts.append((canonical(tool), "cache_control" in t))
        system = body.get("system") or []
        if isinstance(system, str):
            system = [{"type": "text", "text": system}]
        parts += [(b.get("text", ""), "cache_control" in b) for b in system]
        last = ""
        for m in body.get("messages") or ():
            blocks = m.get("content")
            if isinstance(blocks, str):
                blocks = [{"type": "text", "text": blocks}]
            texts = [(b.get("text", ""), "cache_control" in b) for b in blocks]
            parts += texts
            if m.get("role") == "user":
                last = "".join(t for t, _ in texts)
        return parts, last

    def anthropic_reply(self, body: dict[str, Any], batch: bool = False) -> dict[str, Any]:
        model = str(body.get("model"))
        if model not in MODELS:
            raise web.HTTPNotFound(text=f"no model {model}")
        parts, last = self._anthropic_prompt(body)
        text = answer(self.world, last, MODELS[model].small)
        n, out = tokens("".join(t for t, _ in parts)), tokens(text)
        read, written = self.anthropic_cached(model, parts)
        self.bill.add(model, n - read - written, read, written, out, batch)
        return {
            "id": f"msg_{uuid.uuid4().hex[:12]}",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {
                "input_tokens": n - read - written,
                "output_tokens": out,
                "cache_read_input_tokens": read,
                "cache_creation_input_tokens": written,
            },
        }

    async def anthropic_messages(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        message = self.anthropic_reply(body)
        listed = MODELS[message["model"]]
        out = message["usage"]["output_tokens"]
        if not body.get("stream"):
            await asyncio.sleep(listed.base + listed.per_token * out)
            return web.json_response(message)

        def sse(kind: str, data: dict[str, Any]) -> bytes:
            return f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode()

        start = {**message, "content": [], "stop_reason": None}
        start["usage"] = {**message["usage"], "output_tokens": 1}
        block = {"type": "text", "text": ""}
        events = [
            sse("message_start", {"type": "message_start", "message": start}),
            sse(
                "content_block_start",
                {"type": "content_block_start", "index": 0, "content_block": block},
            ),
        ]
        for piece in _pieces(message["content"][0]["text"]):
            delta = {"type": "text_delta", "text": piece}
            events.append(
                sse(
                    "content_block_delta",
                    {"type": "content_block_delta", "index": 0, "delta": delta},
                )
            )
        events.append(sse("content_block_stop", {"type": "content_block_stop", "index": 0}))
        delta = {"stop_reason": "end_turn", "stop_sequence": None}
        events.append(
            sse(
                "message_delta",
                {"type": "message_delta", "delta": delta, "usage": {"output_tokens": out}},
            )
        )
        events.append(sse("message_stop", {"type": "message_stop"}))
        return await _stream(request, events, listed, out)

    async def anthropic_batch(self, request: web.Request) -> web.Response:
        body = await request.json()
        results = [
            {
                "custom_id": r["custom_id"],
                "result": {
                    "type": "succeeded",
                    "message": self.anthropic_reply(r["params"], batch=True),
                },
            }
            for r in body["requests"]
        ]
        bid = f"msgbatch_{uuid.uuid4().hex[:12]}"
        self.batches[bid] = {
            "id": bid,
            "type": "message_batch",
            "processing_status": "ended",
            "request_counts": {
                "processing": 0,
                "succeeded": len(results),
                "errored": 0,
                "canceled": 0,
                "expired": 0,
            },
            "results_url": f"/v1/messages/batches/{bid}/results",
            "results": results,
        }
        return web.json_response({k: v for k, v in self.batches[bid].items() if k != "results"})

    async def anthropic_batch_get(self, request: web.Request) -> web.Response:
        found = self.batches[request.match_info["id"]]
        return web.json_response({k: v for k, v in found.items() if k != "results"})

    async def anthropic_batch_results(self, request: web.Request) -> web.Response:
        results = self.batches[request.match_info["id"]]["results"]
        return web.Response(text="\n".join(json.dumps(r) for r in results))


def _pieces(text: str, parts: int = 8) -> list[str]:
    size = max(1, -(-len(text) // parts))
    return [text[i : i + size] for i in range(0, len(text), size)]


async def _stream(
    request: web.Request, events: list[bytes], listed: Listed, out: int
) -> web.StreamResponse:
    """The first event after the base latency, the rest paced over the output tokens."""
    response = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await asyncio.sleep(listed.base)
    await response.prepare(request)
    pause = listed.per_token * out / max(1, len(events) - 1)
    for i, event in enumerate(events):
        if i and pause:
            await asyncio.sleep(pause)
        await response.write(event)
    await response.write_eof()
    return response


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--seed", type=int, default=17)
    args = p.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    web.run_app(FakeLLM(args.seed).app(), host="127.0.0.1", port=args.port, print=None)


if __name__ == "__main__":
    main()
