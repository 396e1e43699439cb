"""The floor: a bare aiohttp pass-through that does nothing but relay.

It runs where the sidecar runs (pinned to the same core, same event loop, same client
connector settings), so `bench/run.py` can say how much of the sidecar's cost is the
HTTP server and client it is built on, and how much is its own work. No routing, no
policy, no accounting, no telemetry: one shared `ClientSession`, the body forwarded as
bytes, JSON answers returned whole and event streams relayed chunk by chunk.

    python bench/passthrough.py --port 9200 --upstream http://127.0.0.1:9100
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket

import aiohttp
import uvloop
from aiohttp import web

PATH = "/v1/chat/completions"


async def serve(port: int, upstream: str) -> None:
    session = aiohttp.ClientSession(
        # As the sidecar's providers configure theirs (sidecar/providers/http.py).
        connector=aiohttp.TCPConnector(limit=512, limit_per_host=0, keepalive_timeout=30),
        skip_auto_headers=("User-Agent",),
        raise_for_status=False,
    )
    url = upstream.rstrip("/") + PATH

    async def relay(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        async with session.post(
            url, data=body, headers={"content-type": "application/json"}
        ) as reply:
            kind = reply.headers.get("content-type", "application/json")
            if not kind.startswith("text/event-stream"):
                return web.Response(
                    body=await reply.read(), status=reply.status, content_type=kind.split(";")[0]
                )
            response = web.StreamResponse(status=reply.status, headers={"content-type": kind})
            await response.prepare(request)
            async for chunk in reply.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    app = web.Application()
    app.router.add_post(PATH, relay)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    await web.SockSite(runner, sock, backlog=1024).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()
    await session.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstream", required=True, help="base URL of the upstream")
    args = p.parse_args()
    uvloop.run(serve(args.port, args.upstream))


if __name__ == "__main__":
    main()
