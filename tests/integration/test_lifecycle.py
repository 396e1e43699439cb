"""The sidecar as a real process (`python -m sidecar serve`): SIGTERM drains streams in
flight, the drain timeout bounds the wait, and the provider key never leaves the process."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from tests.support.sidecar import SidecarProcess, write_policy
from tests.support.upstream import FakeOpenAI
from tests.support.wait import eventually

WITHIN = 2.0
MESSAGES: Any = [{"role": "user", "content": "hi"}]
KEY = "fake-live-Qm7vRt2XpL9wZs4Kd8Hj3NfB6cYa"  # distinctive: found anywhere means leaked
Start = Callable[..., Awaitable[SidecarProcess]]  # start(*serve_args)


def policy(upstream: FakeOpenAI) -> str:
    return f"""
    providers:
      primary:
        type: openai
        base_url: {upstream.base_url}
        api_key: ${{UPSTREAM_KEY}}
        timeout: 30s
    models:
      ok: {{provider: primary, name: up-ok}}
      unauthorized: {{provider: primary, name: up-401}}
      rejected: {{provider: primary, name: up-400}}
      down: {{provider: primary, name: up-500}}
    routes:
      chat:
        targets: [ok]
        timeout: 30s
      chat-401: {{targets: [unauthorized]}}
      chat-400: {{targets: [rejected]}}
      chat-502: {{targets: [down]}}
    """


@pytest.fixture
async def start(tmp_path: Path, upstream: FakeOpenAI) -> AsyncIterator[Start]:
    """Start `llm-sidecar serve` on the policy above; every process is stopped at the end."""
    folder = tmp_path / "policies"
    write_policy(folder, "main.yaml", policy(upstream))
    procs: list[SidecarProcess] = []

    async def run(*args: str) -> SidecarProcess:
        proc = SidecarProcess(folder, {"UPSTREAM_KEY": KEY}, *args)
        procs.append(proc)
        await proc.wait_ready()
        return proc

    yield run
    for proc in procs:
        await asyncio.to_thread(proc.stop)


def client(proc: SidecarProcess) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=proc.base_url, api_key="app-key", max_retries=0)


async def exit_code(proc: SidecarProcess, within: float) -> int:
    return await asyncio.to_thread(proc.proc.wait, within)


async def refuses_connections(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionRefusedError:
        return True
    writer.close()
    await writer.wait_closed()
    return False


async def raw_stream(proc: SidecarProcess, started: asyncio.Event) -> bytes:
    """One streamed answer as bytes, read with a plain HTTP client."""
    body = {"model": "chat", "messages": MESSAGES, "stream": True}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{proc.base_url}/chat/completions", json=body) as r,
    ):
        assert r.status == 200
        received = await r.content.readany()
        started.set()
        return received + await r.content.read()


async def test_sigterm_lets_streams_in_flight_finish(start: Start, upstream: FakeOpenAI):
    words = "the quick brown fox jumps over the lazy dog again"
    upstream.behave("up-ok", reply=words, chunk_delay=0.15)  # about 1.8 s per stream
    proc = await start("--drain-timeout", "8")
    async with client(proc) as api:
        raw_started = asyncio.Event()
        raw = asyncio.create_task(raw_stream(proc, raw_started))
        stream = await api.chat.completions.create(model="chat", messages=MESSAGES, stream=True)
        chunks = aiter(stream)
        text = ""
        while not text:
            chunk = await anext(chunks)
            text += (chunk.choices[0].delta.content or "") if chunk.choices else ""
        await raw_started.wait()

        proc.terminate()
        signalled = time.monotonic()

        async def refused() -> bool:
            return await refuses_connections(proc.port)

        await eventually(refused, within=1.0)

        async def draining() -> bool:
            url = f"http://127.0.0.1:{proc.ops_port}/readyz"
            async with aiohttp.ClientSession() as session, session.get(url) as r:
                return r.status == 503 and (await r.json())["status"] == "draining"

        assert await draining()  # the kubelet stops sending traffic while streams drain

        finish = None
        async for chunk in chunks:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
                finish = chunk.choices[0].finish_reason or finish
        assert text == words
        assert finish == "stop"
        relayed = await raw
        assert relayed.endswith(b"data: [DONE]\n\n")
        assert b'"error"' not in relayed

    assert await exit_code(proc, within=8.0) == 0
    assert time.monotonic() - signalled < 8.0
    assert upstream.cancelled == 0
    assert "Traceback" not in proc.log()


async def test_drain_timeout_cuts_a_long_stream_and_exits_promptly(
    start: Start, upstream: FakeOpenAI
):
    upstream.behave("up-ok", reply=" ".join(["word"] * 20), chunk_delay=0.5)  # about 10 s
    proc = await start("--drain-timeout", "1")
    async with client(proc) as api:
        stream = await api.chat.completions.create(model="chat", messages=MESSAGES, stream=True)
        chunks = aiter(stream)
        text = ""
        while not text:
            chunk = await anext(chunks)
            text += (chunk.choices[0].delta.content or "") if chunk.choices else ""

        proc.terminate()
        signalled = time.monotonic()

        async def read_rest() -> None:
            nonlocal text
            async for chunk in chunks:
                text += (chunk.choices[0].delta.content or "") if chunk.choices else ""

        with pytest.raises(openai.APIConnectionError):  # cut mid-body: never taken as complete
            await read_rest()
        assert time.monotonic() - signalled < 3.0
        assert text.count("word") < 20

    assert await exit_code(proc, within=4.0) == 0
    assert time.monotonic() - signalled < 4.0


async def test_provider_key_never_leaves_the_process(
    start: Start, upstream: FakeOpenAI, tmp_path: Path
):
    echo = {"error": {"message": f"bad key {KEY} in request", "type": "x", "code": "x"}}
    upstream.behave("up-401", status=401, error_body=echo)
    upstream.behave("up-400", status=400, error_body=echo)
    upstream.behave("up-500", status=500, error_body=echo)
    proc = await start()
    seen: list[str] = []  # everything the app got back: bodies and headers

    def keep(status: int, headers: Any, body: str) -> None:
        seen.append(f"{status} {dict(headers)!r} {body}")

    async with client(proc) as api:
        raw = await api.chat.completions.with_raw_response.create(model="chat", messages=MESSAGES)
        keep(raw.status_code, raw.headers, raw.text)
        stream = await api.chat.completions.with_raw_response.create(
            model="chat", messages=MESSAGES, stream=True
        )
        keep(stream.status_code, stream.headers, "")
        seen.append(repr([c.model_dump() async for c in stream.parse()]))
        for route, status in (("chat-401", 502), ("chat-400", 400), ("chat-502", 502)):
            with pytest.raises(openai.APIStatusError) as info:
                await api.chat.completions.create(model=route, messages=MESSAGES)
            assert info.value.status_code == status
            keep(status, info.value.response.headers, info.value.response.text)
        models = await api.models.with_raw_response.list()
        keep(models.status_code, models.headers, models.text)

    # An invalid edit whose problems sit right where the key is used, or misused.
    folder = tmp_path / "policies"
    broken = policy(upstream).replace(f"base_url: {upstream.base_url}", "base_url: ${UPSTREAM_KEY}")
    write_policy(folder, "main.yaml", broken.replace("timeout: 30s", "timeout: ${UPSTREAM_KEY}"))

    async def rejected() -> str | None:
        url = f"http://127.0.0.1:{proc.ops_port}/status"
        async with aiohttp.ClientSession() as session, session.get(url) as r:
            text = await r.text()
            return text if '"ok": false' in text else None

    status = await eventually(rejected, within=WITHIN)
    # The problem is still named, with the reference where the value would have been.
    assert "main.yaml:5: providers.primary.base_url: '${UPSTREAM_KEY}' is not" in status
    seen.append(status)

    assert await asyncio.to_thread(proc.stop) == 0
    log = proc.log_path.read_text()
    assert "policy rejected" in log
    assert "rejected the sidecar's credentials" in log
    assert all(s.headers["Authorization"] == f"Bearer {KEY}" for s in upstream.calls())
    assert len(upstream.calls()) == 5
    for where, text in [("log", log), *(("response", s) for s in seen)]:
        assert KEY not in text, f"the key leaked into the {where}: {text}"
        assert KEY[8:20] not in text, f"part of the key leaked into the {where}: {text}"
