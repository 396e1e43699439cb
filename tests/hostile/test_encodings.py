"""Compressed request bodies: gzip and deflate are inflated within the body limit and off
the event loop; a bomb is a 413 that costs little memory while health checks go on being
answered; a corrupt one is a 400; encodings the sidecar does not inflate are a 415."""

from __future__ import annotations

import asyncio
import gzip
import struct
import zlib
from pathlib import Path

import aiohttp
import orjson
import pytest

from sidecar.app import Sidecar
from tests.support.raw_client import error_shape_problem, send
from tests.support.sidecar import SidecarProcess, Sidecars, write_policy

POLICY = """
providers: {m: {type: mock}}
models: {a: {provider: m}}
routes: {chat: {targets: [a]}}
state: {backend: memory}
jobs: {workers: 0}
"""
CHAT = orjson.dumps({"model": "chat", "messages": [{"role": "user", "content": "zipped"}]})
MESSAGES = orjson.dumps(
    {"model": "chat", "max_tokens": 9, "messages": [{"role": "user", "content": "zipped"}]}
)


def gzip_bomb(mib: int) -> bytes:
    """A gzip member that inflates to `mib` MiB of zeros, about 1 KiB per MiB: one
    compressed MiB repeated (a full flush makes each copy independent)."""
    zeros = b"\0" * (1 << 20)
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    piece = deflater.compress(zeros) + deflater.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(mib):
        crc = zlib.crc32(zeros, crc)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    trailer = b"\x03\x00" + struct.pack("<II", crc, (mib << 20) & 0xFFFFFFFF)
    return header + piece * mib + trailer


def raw_deflate(data: bytes) -> bytes:
    deflater = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return deflater.compress(data) + deflater.flush()


@pytest.fixture
async def sidecar(sidecars: Sidecars) -> Sidecar:
    return await sidecars.start(POLICY)


@pytest.mark.parametrize(
    ("encoding", "pack"),
    [
        pytest.param("gzip", gzip.compress, id="gzip"),
        pytest.param("x-gzip", gzip.compress, id="x-gzip"),
        pytest.param("deflate", zlib.compress, id="deflate"),
        pytest.param("deflate", raw_deflate, id="raw-deflate"),
        pytest.param("identity", lambda b: b, id="identity"),
        pytest.param("gzip, identity", gzip.compress, id="gzip-identity"),
    ],
)
async def test_gzip_and_deflate_bodies_are_inflated(sidecar: Sidecar, encoding: str, pack):
    for path, body in (("/v1/chat/completions", CHAT), ("/v1/messages", MESSAGES)):
        answer = await asyncio.to_thread(
            send, sidecar.port, "POST", path, pack(body), {"content-encoding": encoding}
        )
        assert answer.status == 200, answer.body
        assert b"Mock reply to: zipped" in answer.body


@pytest.mark.parametrize(
    ("encoding", "body", "status", "code"),
    [
        pytest.param("br", CHAT, 415, "unsupported_encoding", id="br"),
        pytest.param("zstd", CHAT, 415, "unsupported_encoding", id="zstd"),
        pytest.param(
            "gzip, gzip", gzip.compress(gzip.compress(CHAT)), 415, "unsupported_encoding", id="2x"
        ),
        pytest.param("gzip", gzip.compress(CHAT)[:-9], 400, "invalid_encoding", id="cut-off"),
        pytest.param("gzip", b"\x1f\x8b\x08\x00garbage", 400, "invalid_encoding", id="garbage"),
        pytest.param("gzip", CHAT, 400, "invalid_encoding", id="not-gzip-at-all"),
        pytest.param("gzip", gzip_bomb(64), 413, "body_too_large", id="bomb"),
    ],
)
async def test_bodies_the_sidecar_cannot_inflate_are_refused_in_the_ingress_shape(
    sidecar: Sidecar, encoding: str, body: bytes, status: int, code: str
):
    for path in ("/v1/chat/completions", "/v1/messages", "/v1/embeddings", "/v1/jobs"):
        answer = await asyncio.to_thread(
            send, sidecar.port, "POST", path, body, {"content-encoding": encoding}
        )
        assert answer.status == status, (path, answer.body)
        assert error_shape_problem(path, answer) is None
        if path != "/v1/messages":
            assert answer.json()["error"]["code"] == code


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


async def test_a_gzip_bomb_costs_little_memory_and_health_is_answered_meanwhile(
    tmp_path: Path,
):
    folder = tmp_path / "policies"
    write_policy(folder, "p.yaml", POLICY)
    child = SidecarProcess(folder)
    try:
        await child.wait_ready()
        bomb = gzip_bomb(512)  # 512 KiB on the wire, 512 MiB inflated
        before = peak_rss_mib(child.proc.pid)
        probes: list[int] = []
        async with aiohttp.ClientSession() as http:

            async def probe() -> None:
                while True:
                    url = f"http://127.0.0.1:{child.ops_port}/healthz"
                    async with http.get(url, timeout=aiohttp.ClientTimeout(total=10)) as r:
                        probes.append(r.status)
                    await asyncio.sleep(0.01)

            prober = asyncio.create_task(probe())
            await asyncio.sleep(0.05)
            url = f"{child.base_url}/chat/completions"
            headers = {"content-encoding": "gzip", "content-type": "application/json"}
            async with http.post(url, data=bomb, headers=headers) as r:
                assert r.status == 413
                assert (await r.json())["error"]["code"] == "body_too_large"
            await asyncio.sleep(0.05)
            prober.cancel()
        assert probes
        assert set(probes) == {200}
        grown = peak_rss_mib(child.proc.pid) - before
        assert grown < 150, f"peak RSS grew by {grown:.0f} MiB"  # 32 MiB kept, not 512
    finally:
        child.stop()
