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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

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

    async def close(self) -> None: ...
