"""What the fake providers share: a real aiohttp server on a random 127.0.0.1 port, a
record of every request, and scripted behaviour chosen per model name."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from aiohttp import web

B = TypeVar("B")


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
