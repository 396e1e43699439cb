"""The job queue contract, run on both backends: a SQLite file and a real `redis-server`.

Claims are exclusive, leases fence every write (a worker presumed dead cannot write a
result after its job was taken over), retries wait, released jobs come back at once,
batches count and cancel, and everything is still there for a new queue object.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from sidecar.jobs.backends import open_queue
from sidecar.jobs.model import Job, new_id
from sidecar.jobs.queue import JobQueue, StoredFile
from sidecar.policy.model import JobsConfig
from tests.support.redis import RedisServer

Opener = Callable[[], "asyncio.Future[JobQueue]"]


def job(**kwargs: object) -> Job:
    body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
    return Job(id=new_id("job_"), endpoint="/v1/chat/completions", request=body, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(params=["sqlite", "redis"])
async def opener(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Opener]:
    if request.param == "redis":
        server = RedisServer(tmp_path)
        config = JobsConfig(backend="redis", url=server.url)
    else:
        server = None
        config = JobsConfig(backend="sqlite", path="jobs.db")
    opened: list[JobQueue] = []

    async def open_one() -> JobQueue:
        queue = await open_queue(config, tmp_path)
        opened.append(queue)
        return queue

    yield open_one  # type: ignore[misc]
    for queue in opened:
        await queue.close()
    if server is not None:
        server.stop()


async def test_a_claim_is_exclusive_and_its_lease_fences_the_result(opener: Opener) -> None:
    queue = await opener()
    submitted = job(metadata={"doc": 7})
    await queue.submit([submitted])
    claimed = await queue.claim("w1", 60)
    assert claimed is not None
    assert (claimed.id, claimed.status, claimed.attempts) == (submitted.id, "running", 1)
    assert claimed.metadata == {"doc": 7}
    assert claimed.worker == "w1"
    assert claimed.lease
    assert await queue.claim("w2", 60) is None
    claimed.status, claimed.status_code, claimed.result = "succeeded", 200, {"answer": 42}
    assert await queue.settle(claimed)
    assert not await queue.settle(claimed)  # written once: a second write has no lease
    stored = await queue.get(submitted.id)
    assert stored is not None
    assert (stored.status, stored.result, stored.status_code) == ("succeeded", {"answer": 42}, 200)
    assert stored.finished_at is not None
    assert stored.started_at is not None


async def test_a_silent_worker_loses_its_job_and_cannot_write_after(opener: Opener) -> None:
    queue = await opener()
    await queue.submit([job()])
    first = await queue.claim("w1", 0.2)
    assert first is not None
    await asyncio.sleep(0.3)  # w1 went silent past the visibility timeout
    second = await queue.claim("w2", 0.2)
    assert second is not None
    assert second.id == first.id
    assert second.attempts == 2
    assert second.lease != first.lease
    assert second.worker == "w2"
    assert not await queue.renew(first, 60)
    first.status, first.result = "succeeded", {"from": "w1"}
    assert not await queue.settle(first)
    second.status, second.result = "succeeded", {"from": "w2"}
    assert await queue.settle(second)
    stored = await queue.get(first.id)
    assert stored is not None
    assert stored.result == {"from": "w2"}


async def test_renewing_keeps_a_long_job(opener: Opener) -> None:
    queue = await opener()
    await queue.submit([job()])
    claimed = await queue.claim("w1", 0.3)
    assert claimed is not None
    for _ in range(4):
        await asyncio.sleep(0.12)
        assert await queue.renew(claimed, 0.3)
    assert await queue.claim("w2", 0.3) is None


async def test_retry_waits_and_release_returns_at_once(opener: Opener) -> None:
    queue = await opener()
    await queue.submit([job()])
    claimed = await queue.claim("w1", 60)
    assert claimed is not None
    claimed.status_code, claimed.error = 503, {"message": "busy", "code": "x", "type": "y"}
    assert await queue.retry(claimed, 0.3)
    assert await queue.claim("w1", 60) is None
    waiting = await queue.get(claimed.id)
    assert waiting is not None
    assert waiting.status == "queued"
    assert waiting.error is not None
    await asyncio.sleep(0.35)
    again = await queue.claim("w1", 60)
    assert again is not None
    assert again.attempts == 2
    assert await queue.release(again)
    back = await queue.claim("w2", 60)
    assert back is not None
    assert back.id == claimed.id
    assert back.attempts == 2


async def test_higher_priority_first_then_in_order(opener: Opener) -> None:
    queue = await opener()
    jobs = [job(priority=2), job(priority=1), job(priority=0), job(priority=1)]
    for j in jobs:
        await queue.submit([j])
    order = []
    while (claimed := await queue.claim("w", 60)) is not None:
        order.append(claimed.id)
    assert order == [jobs[2].id, jobs[1].id, jobs[3].id, jobs[0].id]
    listed = await queue.list("running", 10)
    assert {j.id for j in listed} == {j.id for j in jobs}
    assert [j.id for j in await queue.list(None, 2)] == [jobs[3].id, jobs[2].id]  # newest first


async def test_batches_count_cancel_and_finalize_once(opener: Opener) -> None:
    queue = await opener()
    batch = {"id": "batch_1", "status": "in_progress", "created_at": int(time.time())}
    await queue.put_batch(batch)
    lines = [job(batch_id="batch_1", custom_id=f"c{n}") for n in range(4)]
    await queue.submit(lines)
    running = await queue.claim("w", 60)
    assert running is not None
    assert await queue.cancel_batch("batch_1") == 3
    assert await queue.claim("w", 60) is None  # cancelled lines are skipped
    assert await queue.batch_unfinished("batch_1")
    running.status, running.result = "succeeded", {}
    assert await queue.settle(running)
    assert not await queue.batch_unfinished("batch_1")
    assert await queue.batch_counts("batch_1") == {"succeeded": 1, "cancelled": 3}
    assert [j.custom_id for j in await queue.batch_jobs("batch_1")] == ["c0", "c1", "c2", "c3"]
    assert await queue.swap_batch({**batch, "status": "completed"}, expect="in_progress")
    assert not await queue.swap_batch({**batch, "status": "cancelled"}, expect="in_progress")
    stored = await queue.get_batch("batch_1")
    assert stored is not None
    assert stored["status"] == "completed"
    assert [b["id"] for b in await queue.list_batches(5)] == ["batch_1"]


async def test_files_keep_their_bytes(opener: Opener) -> None:
    queue = await opener()
    content = b'{"a": 1}\n\xff\x00binary\n'
    await queue.put_file(StoredFile("file-1", "in.jsonl", "batch", len(content), 1), content)
    assert await queue.file_content("file-1") == content
    stored = await queue.get_file("file-1")
    assert stored is not None
    assert stored.view()["bytes"] == len(content)
    assert await queue.get_file("file-2") is None
    assert await queue.delete_file("file-1")
    assert not await queue.delete_file("file-1")
    assert await queue.file_content("file-1") is None
    assert await queue.file_content("file-2") is None


async def test_pending_webhooks_are_taken_by_one_sweeper_at_a_time(opener: Opener) -> None:
    queue = await opener()
    await queue.submit([job(callback_url="http://hooks.test/x")])
    claimed = await queue.claim("w", 60)
    assert claimed is not None
    claimed.status, claimed.webhook = "succeeded", {"status": "pending", "attempts": 0}
    assert await queue.settle(claimed)
    taken = await queue.take_webhooks(time.time() + 1, 10)
    assert [j.id for j in taken] == [claimed.id]
    assert await queue.take_webhooks(time.time() - 5, 10) == []  # just taken: skipped
    await queue.set_webhook(claimed.id, {"status": "delivered", "attempts": 1})
    assert await queue.take_webhooks(time.time() + 1, 10) == []


async def test_a_new_queue_object_sees_everything(opener: Opener) -> None:
    first = await opener()
    submitted = [job() for _ in range(3)]
    await first.submit(submitted)
    await first.close()
    second = await opener()
    claimed = await second.claim("w", 60)
    assert claimed is not None
    assert claimed.id == submitted[0].id
    assert len(await second.list("queued", 10)) == 2


async def test_finished_jobs_past_retention_are_deleted_and_nothing_else(opener: Opener) -> None:
    queue = await opener()
    old, hooked, batched, running, queued = (
        job(),
        job(callback_url="http://hooks.test/x"),
        job(batch_id="batch_1", custom_id="a"),
        job(),
        job(),
    )
    await queue.submit([old, hooked, batched, running])
    for _ in range(3):
        claimed = await queue.claim("w", 60)
        assert claimed is not None
        claimed.status = "succeeded"
        if claimed.id == hooked.id:
            claimed.webhook = {"status": "pending", "attempts": 1}  # still being delivered
        assert await queue.settle(claimed)
    assert await queue.claim("w", 60) is not None  # `running` stays running
    await queue.submit([queued])
    cut = time.time() + 1  # everything finished so far is past retention
    assert await queue.purge_finished(cut, 100) == 1
    assert await queue.get(old.id) is None
    assert [j.id for j in await queue.list(None, 10) if j.id == old.id] == []
    for kept in (hooked, batched, running, queued):
        assert await queue.get(kept.id) is not None
    assert await queue.purge_finished(cut - 3600, 100) == 0  # nothing finished that early


async def test_purging_steps_over_what_must_stay_and_honours_its_limit(opener: Opener) -> None:
    queue = await opener()
    kept = [job(batch_id="batch_1", custom_id=str(i)) for i in range(150)]
    gone = [job() for _ in range(5)]
    await queue.submit([*kept, *gone])  # the batch's jobs come first in every status set
    while (claimed := await queue.claim("w", 60)) is not None:
        claimed.status = "succeeded"
        assert await queue.settle(claimed)
    assert await queue.purge_finished(time.time() + 1, 3) == 3
    assert await queue.purge_finished(time.time() + 1, 100) == 2
    assert [await queue.get(j.id) for j in gone] == [None] * 5
    assert await queue.batch_counts("batch_1") == {"succeeded": 150}
