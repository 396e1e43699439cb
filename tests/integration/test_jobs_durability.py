"""Jobs survive what kills processes, on SQLite and on a real `redis-server`.

`llm-sidecar worker` processes work the queue a sidecar fills. A worker killed with SIGKILL
mid-job has its job taken over after the visibility timeout and completed exactly once in
the results; a sidecar restarted with jobs queued and running loses none; two worker
processes never run one job at the same time, even when jobs outlast the visibility
timeout (their leases are renewed). The fake provider counts, per request text, how many
calls ran and how many were in flight together.
"""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from sidecar.app import Sidecar
from tests.support.redis import RedisServer
from tests.support.sidecar import WorkerProcess, start_sidecar, write_policy
from tests.support.upstream import completion
from tests.support.wait import eventually

WITHIN = 10.0  # seconds: a SIGKILLed worker's lease must expire first


class Tracker:
    """A provider that takes `delay` per answer and records concurrency per request text."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.calls: Counter[str] = Counter()
        self.inflight: Counter[str] = Counter()
        self.most: Counter[str] = Counter()
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> Tracker:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        # A killed worker's connection closes: its call stops counting as in flight.
        self._runner = web.AppRunner(app, handler_cancellation=True)
        await self._runner.setup()
        sock = socket.create_server(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()
        return self

    async def _chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        key = body["messages"][-1]["content"]
        self.calls[key] += 1
        self.inflight[key] += 1
        self.most[key] = max(self.most[key], self.inflight[key])
        try:
            await asyncio.sleep(self.delay)
        finally:
            self.inflight[key] -= 1
        return web.json_response(completion(body["model"], f"answer to {key}"))

    async def stop(self) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


@pytest.fixture(params=["sqlite", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The `jobs:` lines that choose the queue; a redis-server when it is Redis."""
    if request.param == "sqlite":
        yield "backend: sqlite"
        return
    server = RedisServer(tmp_path)
    yield f'backend: redis, url: "{server.url}"'
    server.stop()


Setup = Callable[..., Awaitable[tuple[Sidecar, Tracker]]]


@pytest.fixture
async def setup(tmp_path: Path, backend: str) -> AsyncIterator[Setup]:
    """A sidecar (in-process) on the policy below, and the tracking provider."""
    folder = tmp_path / "policies"
    trackers: list[Tracker] = []
    sidecars: list[Sidecar] = []

    async def run(
        delay: float, workers: int = 0, visibility: str = "1s"
    ) -> tuple[Sidecar, Tracker]:
        tracker = trackers[0] if trackers else await Tracker(delay).start()
        trackers[:] = [tracker]
        write_policy(
            folder,
            "main.yaml",
            f"""
            providers:
              up: {{type: openai, base_url: "http://127.0.0.1:{tracker.port}/v1", api_key: k}}
            models:
              m: {{provider: up, name: up-m}}
            routes:
              chat: {{targets: [m]}}
            jobs: {{{backend}, workers: {workers}, visibility_timeout: {visibility},
                    poll_interval: 50ms, retry_backoff: 50ms}}
            """,
        )
        sidecar = await start_sidecar(folder, drain_timeout=0.1)
        sidecars.append(sidecar)
        return sidecar, tracker

    yield run
    for sidecar in sidecars:
        if not sidecar.lifecycle["draining"]:  # not stopped by the test itself
            await sidecar.stop()
    for tracker in trackers:
        await tracker.stop()


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Callable[[int], WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(n: int) -> WorkerProcess:
        started.append(WorkerProcess(tmp_path / "policies", n))
        return started[-1]

    yield start
    for worker in started:
        worker.stop()


def chat(text: str) -> dict[str, Any]:
    return {"model": "chat", "messages": [{"role": "user", "content": text}]}


async def run_batch(http: aiohttp.ClientSession, base: str, texts: list[str]) -> str:
    lines = [
        {"custom_id": t, "method": "POST", "url": "/v1/chat/completions", "body": chat(t)}
        for t in texts
    ]
    form = aiohttp.FormData()
    form.add_field("purpose", "batch")
    form.add_field("file", b"\n".join(orjson.dumps(line) for line in lines), filename="in.jsonl")
    async with http.post(f"{base}/files", data=form) as r:
        file_id = (await r.json())["id"]
    body = {"input_file_id": file_id, "endpoint": "/v1/chat/completions"}
    async with http.post(f"{base}/batches", json=body) as r:
        return str((await r.json())["id"])


async def test_a_worker_killed_mid_job_is_taken_over_and_completed_once(
    setup: Setup, workers: Callable[[int], WorkerProcess]
) -> None:
    sidecar, tracker = await setup(delay=0.6)
    doomed, survivor = workers(1), workers(1)
    await asyncio.gather(doomed.wait_ready(), survivor.wait_ready())
    base = f"http://127.0.0.1:{sidecar.port}/v1"
    texts = [f"doc-{n}" for n in range(4)]
    async with aiohttp.ClientSession() as http:
        batch_id = await run_batch(http, base, texts)
        await eventually(
            lambda: asyncio.sleep(0, sum(tracker.inflight.values()) == 2), within=WITHIN
        )
        doomed.kill()  # SIGKILL mid-job: no cleanup, no release

        async def completed() -> dict[str, Any] | None:
            async with http.get(f"{base}/batches/{batch_id}") as r:
                batch = await r.json()
            return batch if batch["status"] == "completed" else None

        batch = await eventually(completed, within=WITHIN)
        async with http.get(f"{base}/files/{batch['output_file_id']}/content") as r:
            output = [orjson.loads(line) for line in (await r.read()).splitlines()]
        async with http.get(f"{base}/jobs?status=succeeded") as r:
            jobs = (await r.json())["data"]
    assert batch["request_counts"] == {"total": 4, "completed": 4, "failed": 0}
    assert sorted(line["custom_id"] for line in output) == texts  # each exactly once
    assert batch["error_file_id"] is None
    taken_over = [j for j in jobs if j["attempts"] == 2]
    assert len(taken_over) == 1
    assert sorted(j["attempts"] for j in jobs) == [1, 1, 1, 2]
    assert tracker.calls[taken_over[0]["custom_id"]] == 2  # it ran twice: one result
    assert taken_over[0]["worker"].endswith(f"-{survivor.proc.pid}-0")


async def test_a_restarted_sidecar_loses_no_job(setup: Setup) -> None:
    sidecar, tracker = await setup(delay=0.3, workers=1)
    base = f"http://127.0.0.1:{sidecar.port}/v1"
    async with aiohttp.ClientSession() as http:
        ids = []
        for n in range(6):
            async with http.post(f"{base}/jobs", json={"request": chat(f"job-{n}")}) as r:
                ids.append((await r.json())["id"])
        await eventually(lambda: asyncio.sleep(0, sum(tracker.calls.values()) >= 1), within=WITHIN)
        await sidecar.stop()  # one running (drain 0.1s < 0.3s: returned), five queued
        await eventually(lambda: asyncio.sleep(0, tracker.inflight.total() == 0), within=WITHIN)
        restarted, _ = await setup(delay=0.3, workers=3)
        base = f"http://127.0.0.1:{restarted.port}/v1"

        async def all_done() -> list[dict[str, Any]] | None:
            jobs = []
            for job_id in ids:
                async with http.get(f"{base}/jobs/{job_id}") as r:
                    jobs.append(await r.json())
            return jobs if all(j["status"] == "succeeded" for j in jobs) else None

        jobs = await eventually(all_done, within=WITHIN)
    assert [j["result"]["choices"][0]["message"]["content"] for j in jobs] == [
        f"answer to job-{n}" for n in range(6)
    ]
    assert {j["attempts"] for j in jobs} == {1}  # the returned job got its attempt back
    assert sorted(tracker.calls.values()) in ([1] * 6, [1] * 5 + [2])


async def test_two_worker_processes_never_run_one_job_at_once(
    setup: Setup, workers: Callable[[int], WorkerProcess]
) -> None:
    # Each job outlasts the visibility timeout: only lease renewals keep it with its worker.
    sidecar, tracker = await setup(delay=0.9, visibility="500ms")
    pair = workers(2), workers(2)
    await asyncio.gather(*(w.wait_ready() for w in pair))
    base = f"http://127.0.0.1:{sidecar.port}/v1"
    texts = [f"t-{n}" for n in range(8)]
    async with aiohttp.ClientSession() as http:
        batch_id = await run_batch(http, base, texts)

        async def completed() -> dict[str, Any] | None:
            async with http.get(f"{base}/batches/{batch_id}") as r:
                batch = await r.json()
            return batch if batch["status"] == "completed" else None

        batch = await eventually(completed, within=WITHIN)
        async with http.get(f"{base}/jobs?status=succeeded") as r:
            jobs = (await r.json())["data"]
    assert batch["request_counts"]["completed"] == 8
    assert dict(tracker.most) == dict.fromkeys(texts, 1)  # never two at once
    assert dict(tracker.calls) == dict.fromkeys(texts, 1)  # nor one after the other
    pids = {j["worker"].rsplit("-", 2)[1] for j in jobs}
    assert pids == {str(w.proc.pid) for w in pair}  # both processes took part
