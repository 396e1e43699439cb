"""The queue's provider-batch contract, on both backends (a SQLite file, a real Redis):
deferring needs the job's lease, a line goes into one submission only, submissions are
leased and fenced like jobs, a line lands once, and lines come back (to be resubmitted, or
queued to run as calls) and get cancelled as the seam says."""

from __future__ import annotations

import asyncio
import time

from sidecar.jobs.lines import DONE, PENDING, Line, Submission
from sidecar.jobs.model import CANCELLED, DEFERRED, QUEUED, SUBMITTED, SUCCEEDED, Job, new_id
from sidecar.jobs.queue import JobQueue
from tests.integration import test_jobs_queue
from tests.integration.test_jobs_queue import Opener, job

opener = test_jobs_queue.opener  # the same fixture: both backends


async def deferred(queue: JobQueue, n: int, batch_id: str | None = None) -> list[Job]:
    """`n` jobs claimed and deferred into group (r, m, chat), in order."""
    await queue.submit([job(batch_id=batch_id, custom_id=str(i)) for i in range(n)])
    out = []
    for i in range(n):
        claimed = await queue.claim("w", 60)
        assert claimed is not None
        line = Line(claimed.id, "r", "m", "p", "chat", '{"x": 1}', batch_id, time.time() + i)
        line.hold = ["h1", ["k"], 0.5, time.time() + 60]
        assert await queue.defer(claimed, line)
        out.append(claimed)
    return out


def submission(lease: str = "L1") -> Submission:
    return Submission(new_id("subm_"), "r", "m", "p", "chat", lease=lease)


async def test_deferring_needs_the_lease_and_groups_the_line(opener: Opener) -> None:
    queue = await opener()
    await queue.submit([job()])
    claimed = await queue.claim("w", 60)
    assert claimed is not None
    line = Line(claimed.id, "r", "m", "p", "chat", "{}")
    stale = Job.from_row({**claimed.to_row(), "lease": "someone-else"})
    assert not await queue.defer(stale, line)
    assert await queue.defer(claimed, line)
    assert not await queue.defer(claimed, line)  # not running any more
    found = await queue.get(claimed.id)
    assert found is not None
    assert found.status == DEFERRED
    (group,) = await queue.deferred_groups()
    assert (group.key, group.count, group.parts) == ("r m chat", 1, ("r", "m", "chat"))
    assert await queue.claim("w", 60) is None  # a deferred job is nobody's to run


async def test_concurrent_submissions_take_disjoint_lines_oldest_first(opener: Opener) -> None:
    queue, other = await opener(), await opener()
    jobs = await deferred(queue, 5)
    first, second = submission("L1"), submission("L2")
    a, b = await asyncio.gather(
        queue.open_submission(first, 3, 60), other.open_submission(second, 3, 60)
    )
    taken = [ln.job_id for ln in a] + [ln.job_id for ln in b]
    assert sorted(taken) == sorted(j.id for j in jobs)  # every line once, none twice
    assert {len(a), len(b)} == {3, 2}
    bigger = a if len(a) == 3 else b
    assert [ln.job_id for ln in bigger] == [j.id for j in jobs[:3]]  # the oldest, in order
    assert [ln.position for ln in bigger] == [1, 2, 3]
    assert {ln.submissions for ln in a + b} == {1}
    assert bigger[0].held() is not None
    assert bigger[0].held().amount == 0.5
    assert await queue.deferred_groups() == []
    assert (await queue.get(jobs[0].id)).status == SUBMITTED  # type: ignore[union-attr]
    owner = first if len(a) == 3 else second
    lines = await queue.submission_lines(owner.id)
    assert [(ln.job_id, j.id, ln.position) for ln, j in lines] == [
        (x.id, x.id, n) for n, x in enumerate(jobs[:3], 1)
    ]
    assert await queue.open_submission(submission("L3"), 3, 60) == []  # nothing left


async def test_submissions_are_leased_and_fenced(opener: Opener) -> None:
    queue = await opener()
    await deferred(queue, 2)
    sub = submission("L1")
    await queue.open_submission(sub, 10, 60)
    assert await queue.claim_submission("L2", 60) is None  # leased to L1, and not due
    sub.provider_batch_id, sub.status = "pb_1", PENDING
    assert await queue.save_submission(sub, time.time() - 1, 60)  # due now, lease given up
    stale = Submission.load(sub.dump(), "L1")
    claimed = await queue.claim_submission("L2", 0.3)
    assert claimed is not None
    assert claimed.provider_batch_id == "pb_1"
    assert claimed.lines == 2
    assert await queue.claim_submission("L3", 60) is None  # L2 holds it
    assert not await queue.save_submission(stale, None, 60)  # the old holder is fenced out
    await asyncio.sleep(0.4)  # L2 went silent: its lease runs out
    taken = await queue.claim_submission("L3", 60)
    assert taken is not None
    assert taken.lease == "L3"
    assert not await queue.save_submission(claimed, time.time(), 60)
    taken.status = DONE
    assert await queue.save_submission(taken, time.time(), 60)
    assert await queue.open_submissions() == []
    assert [s.id for s in await queue.open_submissions()] == []


async def test_a_line_lands_once(opener: Opener) -> None:
    queue = await opener()
    (one,) = await deferred(queue, 1)
    sub = submission()
    await queue.open_submission(sub, 10, 60)
    ((_, landed_job),) = await queue.submission_lines(sub.id)
    landed_job.status, landed_job.status_code, landed_job.result = SUCCEEDED, 200, {"ok": 1}
    landed_job.response_headers = {"x-sidecar-batch": "pb"}
    assert await queue.land(landed_job, SUBMITTED)
    assert not await queue.land(landed_job, SUBMITTED)  # a second lander writes nothing
    found = await queue.get(one.id)
    assert found is not None
    assert (found.status, found.result, found.response_headers) == (
        SUCCEEDED,
        {"ok": 1},
        {"x-sidecar-batch": "pb"},
    )
    assert await queue.submission_lines(sub.id) == []


async def test_lines_come_back_to_be_resubmitted_or_run_as_calls(opener: Opener) -> None:
    queue = await opener()
    again, as_call = await deferred(queue, 2)
    sub = submission()
    await queue.open_submission(sub, 10, 60)
    assert await queue.return_line(again.id, "expired")
    assert not await queue.return_line(again.id, "expired")  # no longer submitted
    assert await queue.return_line(as_call.id, "expired", {"x-sidecar-batch": "sync"})
    assert (await queue.get(again.id)).status == DEFERRED  # type: ignore[union-attr]
    (group,) = await queue.deferred_groups()
    assert group.count == 1
    (line,) = await queue.open_submission(submission("L2"), 10, 60)
    assert (line.job_id, line.submissions, line.reason) == (again.id, 2, "expired")
    claimed = await queue.claim("w", 60)  # the other one is queued again, with its header
    assert claimed is not None
    assert claimed.id == as_call.id
    assert claimed.status == "running"
    assert claimed.headers == {"x-sidecar-batch": "sync"}


async def test_cancelling_a_batch_cancels_its_deferred_lines_and_names_its_submissions(
    opener: Opener,
) -> None:
    queue = await opener()
    batch_id = new_id("batch_")
    jobs = await deferred(queue, 3, batch_id)
    sub = submission()
    await queue.open_submission(sub, 1, 60)  # the first is submitted, two stay deferred
    cancelled, held = await queue.cancel_deferred(batch_id)
    assert sorted(ln.job_id for ln in cancelled) == sorted(j.id for j in jobs[1:])
    assert cancelled[0].held() is not None  # its hold, to give back
    assert held == [sub.id]
    assert [(await queue.get(j.id)).status for j in jobs] == [SUBMITTED, CANCELLED, CANCELLED]  # type: ignore[union-attr]
    assert await queue.batch_unfinished(batch_id)  # the submitted one
    assert [s.id for s in await queue.batch_submissions(batch_id)] == [sub.id]
    sub.status = PENDING
    assert await queue.save_submission(sub, time.time() + 3600, 60)
    await queue.request_cancel(sub.id)
    claimed = await queue.claim_submission("L9", 60)  # due at once, and it says why
    assert claimed is not None
    assert claimed.id == sub.id
    assert claimed.cancel
    assert QUEUED not in {(await queue.get(j.id)).status for j in jobs}  # type: ignore[union-attr]
