"""Connections that never finish a request are closed: idle ones, half-sent headers (even
trickled a byte at a time), half-sent bodies; and the ops listener, on all interfaces, holds
no more than its cap at once. Raw sockets, as a careless or hostile client would send."""

from __future__ import annotations

import asyncio
import time

import orjson

from sidecar.app import Sidecar
from tests.support.sidecar import Sidecars

POLICY = """
providers: {m: {type: mock}}
models: {a: {provider: m}}
routes: {chat: {targets: [a]}}
state: {backend: memory}
"""
LIMITS = {"idle_timeout": 0.5, "body_timeout": 0.5, "ops_idle_timeout": 0.5}
SOON = 5.0  # generous: these tests check that a connection closes, not how fast


async def start(sidecars: Sidecars, **limits: object) -> Sidecar:
    return await sidecars.start(POLICY, **{**LIMITS, **limits})


async def until_closed(reader: asyncio.StreamReader, within: float = SOON) -> bytes:
    """Everything the server sends until it closes the connection (a TimeoutError if it
    has not closed within `within` seconds)."""
    got = b""
    async with asyncio.timeout(within):
        try:
            while chunk := await reader.read(65536):
                got += chunk
        except ConnectionError:  # closed while the test was still writing
            pass
    return got


async def test_an_idle_connection_is_closed(sidecars: Sidecars):
    sidecar = await start(sidecars)
    for port in (sidecar.port, sidecar.ops_port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await until_closed(reader) == b""
        writer.close()


async def test_a_header_trickled_a_byte_at_a_time_is_closed_at_the_idle_deadline(
    sidecars: Sidecars,
):
    sidecar = await start(sidecars, idle_timeout=1.0)
    reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
    started = time.monotonic()
    header = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200
    try:
        for byte in header:  # one byte every 50 ms: the deadline is not put back by them
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.05)
    except ConnectionError:  # reset or broken pipe: closed while we were still sending
        pass
    assert await until_closed(reader) == b""
    assert time.monotonic() - started < SOON  # 200 bytes at 50 ms would take 10 s
    writer.close()


async def test_a_half_sent_body_gets_a_408_and_the_connection_closes(sidecars: Sidecars):
    sidecar = await start(sidecars, idle_timeout=5.0)  # the header is no part of this test
    reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b'Content-Length: 100\r\n\r\n{"model": "chat", '
    )
    await writer.drain()
    answer = await until_closed(reader)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ")
    assert orjson.loads(body)["error"]["code"] == "body_timeout"
    writer.close()


async def test_the_ops_listener_holds_at_most_its_cap_and_still_answers_probes(
    sidecars: Sidecars,
):
    sidecar = await start(sidecars, ops_max_connections=8, ops_idle_timeout=1.0)
    half_sent = b"GET /healthz HTTP/1.1\r\nHost: x\r\n"  # and never the blank line
    held = []
    for _ in range(40):
        reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.ops_port)
        writer.write(half_sent)
        held.append((reader, writer))
    await asyncio.sleep(0.2)
    closed = [r.at_eof() for r, _ in held]
    assert closed.count(False) <= 8  # past the cap, connections are closed on arrival
    for reader, _ in held:
        await until_closed(reader)  # and the rest at the idle deadline
    for _, writer in held:
        writer.close()
    reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.ops_port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert (await until_closed(reader)).startswith(b"HTTP/1.1 200 ")
    writer.close()


async def test_a_kept_alive_connection_closes_once_idle_after_its_answer(sidecars: Sidecars):
    sidecar = await start(sidecars)
    reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
    body = b'{"model": "chat", "messages": [{"role": "user", "content": "hi"}]}'
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
        % (len(body), body)
    )
    await writer.drain()
    answer = await until_closed(reader)
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert b"Mock reply to: hi" in answer
    writer.close()
