"""What the fake providers share: a real aiohttp server on a random 127.0.0.1 port, a
record of every request, and scripted behaviour chosen per model name."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from aiohttp import web

B = TypeVar("B")

ECHO = b"<<key>>"  # in a scripted raw answer: replaced by the key the request carried


def echo_key(raw: bytes, request: web.Request) -> bytes:
    """`raw` with ECHO replaced by the caller's key, as a provider that quotes it does."""
    auth = request.headers.get("authorization", "").removeprefix("Bearer ")
    key = auth or request.headers.get("x-api-key", "")
    return raw.replace(ECHO, key.encode())


async def send_raw(
    request: web.Request, body: bytes | None, events: list[bytes] | None, content_type: str
) -> web.StreamResponse:
    """A 200 made of scripted bytes (a body, or SSE events as they are), keys echoed."""
    if events is None:
        return web.Response(body=echo_key(body or b"", request), content_type=content_type)
    response = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await response.prepare(request)
    for event in events:
        await response.write(echo_key(event, request))
    await response.write_eof()
    return response


@dataclass
class Seen:
    path: str
    headers: dict[str, str]  # as received; `header` looks one up in any case
    body: dict[str, Any]
    at: float = field(default_factory=time.monotonic)

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        return next((v for k, v in self.headers.items() if k.lower() == wanted), None)


class FakeServer(Generic[B]):
    behaviour: type[B]  # what a model does when the test said nothing about it

    def __init__(self) -> None:
        self.behaviours: dict[str, B] = {}
        self.seen: list[Seen] = []
        self._runner: web.AppRunner | None = None
        self.port = 0

    def behave(self, model: str, **kwargs: Any) -> B:
        self.behaviours[model] = self.behaviour(**kwargs)
        return self.behaviours[model]

    def behaviour_of(self, model: str) -> B:
        found = self.behaviours.get(model)
        return self.behaviour() if found is None else found

    def calls(self, model: str | None = None) -> list[Seen]:
        return [s for s in self.seen if model is None or s.body.get("model") == model]

    def record(self, request: web.Request, body: dict[str, Any]) -> None:
        self.seen.append(Seen(request.path, dict(request.headers), body))

    async def serve(self, app: web.Application) -> None:
        self._runner = web.AppRunner(app, handler_cancellation=True)
        await self._runner.setup()
        sock = socket.create_server(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
