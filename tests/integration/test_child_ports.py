"""The test harness itself: a child sidecar whose port was taken before it could bind it is
started again on other ports, instead of failing the test it serves."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.support import sidecar as support
from tests.support.sidecar import SidecarProcess, write_policy


async def test_a_port_taken_between_choosing_and_binding_is_chosen_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    taken = squatter.getsockname()[1]
    real = support.free_port
    ports: Iterator[int] = iter([taken])
    monkeypatch.setattr(support, "free_port", lambda: next(ports, None) or real())
    write_policy(
        tmp_path / "p",
        "p.yaml",
        "providers: {m: {type: mock}}\nmodels: {a: {provider: m}}\nroutes: {r: {targets: [a]}}\n",
    )
    proc = SidecarProcess(tmp_path / "p")
    try:
        await proc.wait_ready()
        assert proc._respawns == 1  # the first child found its port taken
        assert taken not in (proc.port, proc.ops_port)
        async with aiohttp.ClientSession() as http, http.get(f"{proc.base_url}/models") as r:
            assert r.status == 200
    finally:
        proc.stop()
        squatter.close()
