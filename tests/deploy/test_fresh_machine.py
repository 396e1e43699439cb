"""What a fresh machine with only Python has: the test command finds a Redis server in the
test extra, and running the sidecar from a checkout leaves no state file in it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import aiohttp

from tests.support.sidecar import ChildProcess, free_port, write_policy

POLICY = """
providers:
  local: {type: mock}
models:
  small: {provider: local, price: {input: 1, output: 2}}
routes:
  chat: {targets: [small]}
"""


def test_the_redis_fixture_needs_no_redis_server_on_path(tmp_path: Path) -> None:
    probe = """
import asyncio, pathlib, sys
import redis.asyncio as aioredis
from tests.support.redis import RedisServer

server = RedisServer(pathlib.Path(sys.argv[1]))
async def ping() -> None:
    async with aioredis.from_url(server.url) as client:
        await client.set("k", "v")
        print((await client.get("k")).decode(), (await client.info("server"))["tcp_port"])
try:
    asyncio.run(ping())
finally:
    server.stop()
"""
    # Only the venv's own bin folder on PATH: no redis-server, whatever this machine has.
    env = {**os.environ, "PATH": str(Path(sys.executable).parent)}
    env.pop("SIDECAR_TEST_REDIS", None)
    done = subprocess.run(
        [sys.executable, "-c", probe, str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parents[2],
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    value, port = done.stdout.split()
    assert value == "v"
    assert int(port) > 0


async def test_serve_from_a_checkout_keeps_its_state_outside_it(tmp_path: Path) -> None:
    checkout, home = tmp_path / "checkout", tmp_path / "home"
    checkout.mkdir()
    folder = checkout / "policies"
    write_policy(folder, "policy.yaml", POLICY)
    env = {"HOME": str(home), "SIDECAR_STATE_DIR": "", "XDG_STATE_HOME": ""}
    port = free_port()
    child = ChildProcess(
        "sidecar",
        ["serve", "--policies", "policies", "--port", str(port)],
        tmp_path,
        env,
        cwd=checkout,
    )
    try:
        await child.wait_ready()
        async with aiohttp.ClientSession() as session:
            body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
            url = f"http://127.0.0.1:{port}/v1/chat/completions"
            async with session.post(url, json=body) as response:
                assert response.status == 200
    finally:
        assert child.stop() == 0
    assert sorted(p.name for p in checkout.iterdir()) == ["policies"]
    assert (home / ".local" / "state" / "llm-sidecar" / "llm-sidecar-state.db").is_file()
