"""Listening sockets, and the limits that keep connections which never finish from piling up.

A connection has `idle_timeout` seconds, from when it opens or its last answer went out,
to deliver a complete request header: aiohttp's keep-alive timer runs from then and is
not put back by bytes that arrive, so one deadline closes an idle connection and one
that sends half a header alike. The body then has the body timeout (api/body.py). The ops
listener, on all interfaces for the kubelet, also takes at most `max_connections` at once:
past that a new connection is closed as it arrives, so nothing on the pod network can use
up the process's file descriptors.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass

from aiohttp import web
from aiohttp.web_server import Server

log = logging.getLogger("sidecar")

LINGER = 2.0  # seconds (aiohttp's default, 10, kept a slow client's connection that long)


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    idle_timeout: float  # seconds; keep-alive idle, and the deadline for a request's header
    max_connections: int | None = None  # open at once; None: no cap


def listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, backlog=2048)
    sock.setblocking(False)
    return sock


async def serve(
    app: web.Application, sock: socket.socket, limits: ConnectionLimits, shutdown_timeout: float
) -> web.AppRunner:
    """Start serving `app` on `sock`; `runner.cleanup()` stops it."""
    runner = web.AppRunner(
        app,
        access_log=None,
        handler_cancellation=True,
        shutdown_timeout=shutdown_timeout,
        keepalive_timeout=limits.idle_timeout,
        # A client still sending a body the sidecar already answered (a 408, a 413) gets
        # this long to finish, so it reads the answer rather than a reset; then it closes.
        lingering_time=LINGER,
        auto_decompress=False,  # api/body.py inflates, within the body limit
    )
    await runner.setup()
    if limits.max_connections is None:
        await web.SockSite(runner, sock).start()
    else:
        await CappedSite(runner, sock, limits.max_connections).start()
    return runner


class CappedSite(web.BaseSite):
    """A site on a bound socket that closes connections past `limit` as they arrive."""

    __slots__ = ("_full", "_limit", "_sock")

    def __init__(self, runner: web.AppRunner, sock: socket.socket, limit: int) -> None:
        super().__init__(runner, backlog=2048)
        self._sock = sock
        self._limit = limit
        self._full = False

    @property
    def name(self) -> str:
        host, port = self._sock.getsockname()[:2]
        return f"http://{host}:{port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: self._accept(server), sock=self._sock, backlog=self._backlog
        )

    def _accept(self, server: Server) -> asyncio.BaseProtocol:
        if len(server.connections) < self._limit:
            self._full = False
            return server()
        if not self._full:  # once per episode, not once per connection refused
            self._full = True
            log.warning(
                "%s: %d connections open, the most allowed: closing new ones until some end",
                self.name,
                self._limit,
            )
        return _Refused()


class _Refused(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()
