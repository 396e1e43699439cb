"""A minimal, fast OpenAI-compatible upstream for the benchmark.

It must cost as little CPU as possible, because it shares a core with wrk: every
microsecond spent here is charged to both the direct and the proxied measurement and
blurs the difference we want to see. So every answer is prebuilt bytes, nothing is
logged, and the only per-request work is reading the body to see whether it asks for a
stream. `--delay-ms` emulates a slow model (the wait happens before the headers, as a
real provider's time to first token would).

    python bench/fake_upstream.py --port 9100 [--delay-ms 50]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket

import orjson
import uvloop
from aiohttp import web

MODEL = "bench-model"
CREATED = 1_700_000_000
N_CHUNKS = 8

COMPLETION: bytes = orjson.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": CREATED,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello from the fake upstream."},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19},
    }
)


def _chunk(delta: dict[str, str], finish: str | None) -> bytes:
    body = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": MODEL,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + orjson.dumps(body) + b"\n\n"


def _stream_events() -> list[bytes]:
    """N_CHUNKS chunk events (role first, finish_reason last) and the `[DONE]` marker."""
    events = [_chunk({"role": "assistant", "content": ""}, None)]
    events += [_chunk({"content": f"tok{i} "}, None) for i in range(1, N_CHUNKS - 1)]
    events.append(_chunk({}, "stop"))
    events.append(b"data: [DONE]\n\n")
    return events


STREAM: bytes = b"".join(_stream_events())  # written in one go: the upstream is "instant"
JSON_HEADERS = {"content-type": "application/json"}
SSE_HEADERS = {"content-type": "text/event-stream", "cache-control": "no-cache"}


def make_app(delay: float) -> web.Application:
    async def chat(request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        # The sidecar and wrk both send compact JSON; a substring test is enough and
        # much cheaper than parsing, but fall back to parsing for other spellings.
        stream = b'"stream":true' in raw or (b'"stream"' in raw and _asks_stream(raw))
        if delay:
            await asyncio.sleep(delay)
        if not stream:
            return web.Response(body=COMPLETION, headers=JSON_HEADERS)
        resp = web.StreamResponse(headers=SSE_HEADERS)  # chunked, as real providers answer
        await resp.prepare(request)
        await resp.write(STREAM)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    return app


def _asks_stream(raw: bytes) -> bool:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False
    return isinstance(body, dict) and body.get("stream") is True


async def serve(host: str, port: int, delay: float) -> None:
    runner = web.AppRunner(make_app(delay), access_log=None)
    await runner.setup()
    sock = socket.create_server((host, port), backlog=4096)
    await web.SockSite(runner, sock).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"fake upstream on http://{host}:{port}/v1 (delay {delay * 1000:.0f} ms)", flush=True)
    await stop.wait()
    await runner.cleanup()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--delay-ms", type=float, default=0.0, help="wait before answering")
    args = p.parse_args()
    uvloop.run(serve(args.host, args.port, args.delay_ms / 1000))


if __name__ == "__main__":
    main()
