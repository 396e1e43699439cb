"""Provider batches survive what kills processes, on SQLite and on a real Redis.

`llm-sidecar worker` processes submit and poll; a sidecar (in-process, no workers) serves
the batches API. A worker killed with SIGKILL while it polls leaves its submission to the
next worker, which resumes polling the same provider batch; one killed while the provider
is answering its create call (the batch made, our record not knowing it) leaves a
submission in doubt, which the next worker finds at the provider instead of creating it
again. Either way every line is submitted exactly once (the fakes count per line).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import openai
import pytest

from tests.integration.test_provider_batches import finished, line, outputs, policy, submit
from tests.support.anthropic_upstream import FakeAnthropic
from tests.support.redis import RedisServer
from tests.support.sidecar import WorkerProcess, start_sidecar, write_policy
from tests.support.upstream import FakeOpenAI
from tests.support.wait import eventually

WITHIN = 15.0


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Callable[[], WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start() -> WorkerProcess:
        started.append(WorkerProcess(tmp_path / "policies", 1))
        return started[-1]

    yield start
    for worker in started:
        worker.stop()


def queue_lines(backend: str, tmp_path: Path) -> tuple[str, RedisServer | None]:
    if backend == "sqlite":
        return "backend: sqlite", None
    server = RedisServer(tmp_path)
    return f'backend: redis, url: "{server.url}"', server


async def run(
    tmp_path: Path,
    backend: str,
    oai: FakeOpenAI,
    claude: FakeAnthropic,
    workers: Callable[[], WorkerProcess],
    model: str,
    kill_when: Callable[[], bool],
) -> None:
    jobs, redis = queue_lines(backend, tmp_path)
    text = policy(oai, claude).replace(
        "jobs: {workers: 2,", f"jobs: {{{jobs}, visibility_timeout: 1s, workers: 0,"
    )
    # Calls to the providers time out before a slow create answers.
    text = text.replace("api_key: k1}", "api_key: k1, timeout: 5s}")
    folder = tmp_path / "policies"
    write_policy(folder, "main.yaml", text)
    sidecar = await start_sidecar(folder, drain_timeout=0.1)
    fake = oai if model == "cheap" else claude
    try:
        doomed = workers()
        await doomed.wait_ready()
        base = f"http://127.0.0.1:{sidecar.port}/v1"
        async with openai.AsyncOpenAI(base_url=base, api_key="app", max_retries=0) as sdk:
            batch_id = await submit(sdk, [line(f"l{n}", model, f"q {n}") for n in range(3)])
            await eventually(lambda: asyncio.sleep(0, kill_when()), within=WITHIN)
            doomed.kill()
            fake.batches.script.create_delay = fake.batches.script.poll_delay = 0.0
            survivor = workers()
            await survivor.wait_ready()
            fake.batches.release()
            done = await finished(sdk, batch_id, within=WITHIN)
            results = await outputs(sdk, done)
    finally:
        await sidecar.stop()
        if redis is not None:
            redis.stop()
    assert done.status == "completed"
    assert done.request_counts.completed == 3
    assert sorted(results) == ["l0", "l1", "l2"]
    assert len(fake.batches.made) == 1  # one provider batch, polled by both workers
    assert sorted(fake.batches.submitted.values()) == [1, 1, 1]  # each line once


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
async def test_a_worker_killed_mid_poll_is_taken_over_and_nothing_is_submitted_twice(
    tmp_path: Path,
    backend: str,
    upstream: FakeOpenAI,
    upstream_anthropic: FakeAnthropic,
    workers: Callable[[], WorkerProcess],
) -> None:
    upstream.batches.script.poll_delay = 30.0  # the worker is inside a poll when killed
    await run(
        tmp_path,
        backend,
        upstream,
        upstream_anthropic,
        workers,
        "cheap",
        lambda: upstream.batches.polling > 0,
    )
    assert upstream.batches.polls >= 1


@pytest.mark.parametrize(("backend", "model"), [("sqlite", "cheap"), ("redis", "smart")])
async def test_a_worker_killed_while_the_provider_creates_its_batch_is_not_submitted_twice(
    tmp_path: Path,
    backend: str,
    model: str,
    upstream: FakeOpenAI,
    upstream_anthropic: FakeAnthropic,
    workers: Callable[[], WorkerProcess],
) -> None:
    fake = upstream if model == "cheap" else upstream_anthropic
    fake.batches.script.create_delay = 30.0  # made at the provider, not yet answered
    await run(
        tmp_path,
        backend,
        upstream,
        upstream_anthropic,
        workers,
        model,
        lambda: len(fake.batches.made) == 1,
    )
