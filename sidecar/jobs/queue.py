"""The jobs seam: what the API and the workers need from a durable queue.

Two implementations, one contract:
`SqliteQueue` (a file, no server; several processes on one host may share it) and
`RedisQueue` (Streams and a consumer group; workers in many pods share it).
tests/integration/test_jobs_queue.py runs the contract below on both; `jobs/backends.py`
opens the one a policy names. This module imports neither backend: they import it.

The contract:

- `claim` hands a ready job to one worker: status `running`, `attempts` + 1, and a fresh
  `lease` token. A running job whose lease was not renewed for `visibility_timeout` (its
  worker died) is ready again, and the next claim takes it over with a new lease. Every
  claimer passes the same timeout (the policy's): Redis measures idleness at the claim.
- `settle`, `retry`, `release` and `renew` present the lease; after a takeover the old
  worker's writes are refused (False), so a job has exactly one result even when it ran
  twice. `settle` is terminal; `retry` queues the job again after `delay`; `release`
  (graceful shutdown) queues it at once and gives its attempt back.
- Files and batch records (the OpenAI Batch API) live in the same store.
- So do provider batches (jobs/provider_batches.py): a running job `defer`red becomes a
  `Line` in its group; `open_submission` moves a group's oldest lines into a `Submission`
  in one step, so no line is ever in two; submissions are leased like jobs (a holder that
  died is taken over by the next `claim_submission` after its lease), and `land` writes a
  line's outcome only while its job is still waiting, so a line has one result.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sidecar.jobs.lines import Group, Line, Submission
from sidecar.jobs.model import Job


@dataclass(frozen=True, slots=True)
class StoredFile:
    id: str
    filename: str
    purpose: str
    bytes: int
    created_at: int

    def view(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": self.bytes,
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": None,
        }


class JobQueue(Protocol):
    async def submit(self, jobs: Sequence[Job]) -> None:
        """Store and enqueue, all or none."""
        ...

    async def claim(self, worker: str, visibility_timeout: float) -> Job | None: ...

    async def wait(self, at_most: float) -> None:
        """Return when a job may have become ready, or after `at_most` seconds."""
        ...

    async def renew(self, job: Job, visibility_timeout: float) -> bool: ...

    async def settle(self, job: Job) -> bool:
        """Write `job`'s status (terminal), status_code, result, error and webhook."""
        ...

    async def retry(self, job: Job, delay: float) -> bool: ...

    async def release(self, job: Job) -> bool: ...

    async def get(self, job_id: str) -> Job | None: ...

    async def list(self, status: str | None, limit: int) -> list[Job]:
        """Newest first."""
        ...

    async def set_webhook(self, job_id: str, state: dict[str, Any]) -> None: ...

    async def take_webhooks(self, before: float, limit: int) -> list[Job]:
        """Finished jobs whose webhook is `pending` and was last tried before `before`;
        marked tried now, so other processes sweeping for them skip them for a while."""
        ...

    async def purge_finished(self, before: float, limit: int) -> int:
        """Delete up to `limit` jobs that finished before `before`; how many were. Only
        stand-alone jobs (a batch's jobs are its output and go with it) whose webhook is
        not still pending."""
        ...

    async def cancel_batch(self, batch_id: str) -> int:
        """Cancel the batch's jobs that have not started; how many were."""
        ...

    async def batch_unfinished(self, batch_id: str) -> bool:
        """Whether any job of the batch is queued or running (cheap: asked per job)."""
        ...

    async def batch_counts(self, batch_id: str) -> dict[str, int]:
        """Jobs of the batch by status."""
        ...

    async def batch_jobs(self, batch_id: str) -> list[Job]:
        """In input order."""
        ...

    async def put_file(self, file: StoredFile, content: bytes) -> None: ...

    async def get_file(self, file_id: str) -> StoredFile | None: ...

    async def file_content(self, file_id: str) -> bytes | None: ...

    async def delete_file(self, file_id: str) -> bool: ...

    async def put_batch(self, batch: dict[str, Any]) -> None: ...

    async def get_batch(self, batch_id: str) -> dict[str, Any] | None: ...

    async def swap_batch(self, batch: dict[str, Any], expect: str) -> bool:
        """Replace the record if its status is still `expect` (one finalizer wins)."""
        ...

    async def list_batches(self, limit: int) -> list[dict[str, Any]]: ...

    # --- provider batches ------------------------------------------------------------------

    async def defer(self, job: Job, line: Line) -> bool:
        """The running job (its lease presented) becomes `deferred`, its line in its group."""
        ...

    async def deferred_groups(self) -> list[Group]: ...

    async def open_submission(
        self, submission: Submission, limit: int, lease_for: float
    ) -> list[Line]:
        """Move up to `limit` of the group's oldest deferred lines into `submission` (their
        jobs `submitted`) and store it, leased to `submission.lease`. No lines: no record."""
        ...

    async def claim_submission(self, lease: str, lease_for: float) -> Submission | None:
        """An unfinished submission that is due (or whose holder's lease ran out), leased."""
        ...

    async def save_submission(
        self, submission: Submission, due: float | None, lease_for: float
    ) -> bool:
        """Write it while its lease holds; `due`: give the lease up until then (sooner when
        a cancel was asked for and not sent yet); None: keep the lease for `lease_for`."""
        ...

    async def submission_lines(self, submission_id: str) -> list[tuple[Line, Job]]:
        """Its lines not landed yet, with their jobs."""
        ...

    async def open_submissions(self) -> list[Submission]:
        """Every submission not done yet."""
        ...

    async def batch_submissions(self, batch_id: str) -> list[Submission]:
        """The submissions that held lines of a batch of ours."""
        ...

    async def land(self, job: Job, expect: str) -> bool:
        """Write a waiting line's outcome (`job`'s status, result, error, webhook) if its job
        is still `expect` (deferred or submitted), and drop its line."""
        ...

    async def return_line(
        self, job_id: str, reason: str, headers: dict[str, str] | None = None
    ) -> bool:
        """A submitted line its provider batch left unfinished: deferred again (to be
        resubmitted), or with `headers`, queued again to run as a call."""
        ...

    async def cancel_deferred(self, batch_id: str) -> tuple[list[Line], list[str]]:
        """Cancel the batch's deferred lines: those lines, and the submissions holding its
        submitted ones (to be cancelled at the provider)."""
        ...

    async def request_cancel(self, submission_id: str) -> None: ...

    async def close(self) -> None: ...
