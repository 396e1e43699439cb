"""The shared job queue on a plain Redis 7: Streams with one consumer group, records in hashes.

Three streams, one per priority, carry job ids; the job itself is a hash. Each state
change is one Lua script, so it is atomic across every worker in every pod:

- claim: move due retries (a sorted set) into their streams; take over entries whose
  worker went silent for the visibility timeout (XAUTOCLAIM); else read a new entry
  (XREADGROUP), highest priority first; mark the job running under a fresh lease.
- renew: while the lease is ours, reset the entry's idle time (XCLAIM ... JUSTID), so
  a long job is not taken over while its worker is alive.
- settle / retry / release: only with the current lease; ack and delete the entry.

Per-status sorted sets list jobs; per-batch hashes count them by status. All keys share
one hash tag, so a Redis Cluster keeps them in one slot.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from sidecar.jobs.model import UNFINISHED, Job, new_lease
from sidecar.jobs.queue import StoredFile
from sidecar.jobs.queue_redis_lines import RedisLines
from sidecar.jobs.redis_scripts import (
    CANCEL,
    CLAIM,
    PURGE,
    RELEASE,
    RENEW,
    RETRY,
    SETTLE,
    SWAP_BATCH,
    TAKE_WEBHOOKS,
)
from sidecar.stores.redis_backend import _where
from sidecar.stores.state import StoreUnavailable

T = TypeVar("T")
GROUP = "workers"
STREAMS = 3  # priorities 0 (high), 1 (normal), 2 (low)


class RedisQueue(RedisLines):
    def __init__(self, url: str, prefix: str = "llm-sidecar:{jobs}:") -> None:
        self.url = url
        self.p = prefix
        # Blocking reads wait up to a second: the socket timeout must be longer.
        options: dict[str, Any] = {"socket_timeout": 10.0, "socket_connect_timeout": 2.0}
        self._redis = aioredis.from_url(url, decode_responses=True, **options)
        self._raw = aioredis.from_url(url, decode_responses=False, **options)  # file bodies
        r = self._redis
        self._claim = r.register_script(CLAIM)
        self._renew = r.register_script(RENEW)
        self._settle = r.register_script(SETTLE)
        self._retry = r.register_script(RETRY)
        self._release = r.register_script(RELEASE)
        self._cancel = r.register_script(CANCEL)
        self._take_webhooks = r.register_script(TAKE_WEBHOOKS)
        self._purge = r.register_script(PURGE)
        self._swap_batch = r.register_script(SWAP_BATCH)
        self._register_lines()
        self.streams = [f"{prefix}stream:{p}" for p in range(STREAMS)]
        self._looked = 0.0  # monotonic time of the last look for silent workers
        self._cursors = ["0-0"] * STREAMS

    async def _call(self, op: Callable[[], Awaitable[T]]) -> T:
        try:
            return await op()
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(
                f"jobs redis at {_where(self.url)}: {exc.__class__.__name__}"
            ) from None

    def _args(self, *args: Any) -> list[Any]:
        return [self.p, GROUP, *args]

    async def open(self) -> RedisQueue:
        async def create_groups() -> None:
            for stream in self.streams:
                try:
                    await self._redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
                except ResponseError as exc:  # BUSYGROUP: another process made it first
                    if "BUSYGROUP" not in str(exc):
                        raise

        await self._call(create_groups)
        return self

    def _job(self, job_id: str) -> str:
        return f"{self.p}job:{job_id}"

    # --- jobs ---------------------------------------------------------------------------

    async def submit(self, jobs: Sequence[Job]) -> None:
        async def write() -> None:
            pipe = self._redis.pipeline(transaction=True)
            for job in jobs:
                row = {k: v for k, v in job.to_row().items() if v is not None}
                pipe.hset(self._job(job.id), mapping=row)  # type: ignore[arg-type]
                pipe.zadd(f"{self.p}status:{job.status}", {job.id: job.created_at})
                pipe.zadd(f"{self.p}all", {job.id: job.created_at})
                if job.batch_id:
                    pipe.rpush(f"{self.p}batch:{job.batch_id}:jobs", job.id)
                    pipe.hincrby(f"{self.p}batch:{job.batch_id}:counts", job.status, 1)
                pipe.xadd(self.streams[job.priority], {"id": job.id})
            await pipe.execute()

        await self._call(write)

    async def claim(self, worker: str, visibility_timeout: float) -> Job | None:
        """Takeovers are looked for a few times per visibility timeout, not per claim:
        XAUTOCLAIM walks the pending list, which is as long as the jobs in flight. A look
        that found one, or stopped part-way, goes on at the next claim."""
        lease = new_lease()
        now = time.monotonic()
        look = now - self._looked >= visibility_timeout / 4
        vt = int(visibility_timeout * 1000)
        args = self._args(worker, lease, vt, int(look), *self._cursors)
        reply = await self._call(lambda: self._claim(args=args))
        if look:
            self._cursors = list(reply[:3])
            unfinished = reply[3] == "1" or any(c != "0-0" for c in self._cursors)
            self._looked = 0.0 if unfinished else now
        flat = reply[4:]
        if not flat:
            return None
        return Job.from_row(dict(zip(flat[::2], flat[1::2], strict=True)))

    async def wait(self, at_most: float) -> None:
        """Block until an entry is added to any stream (or `at_most` passes)."""
        ms = max(1, int(min(at_most, 1.0) * 1000))
        await self._call(lambda: self._redis.xread(dict.fromkeys(self.streams, "$"), block=ms))

    async def renew(self, job: Job, visibility_timeout: float) -> bool:
        args = self._args(job.worker, job.id, job.lease)
        return bool(await self._call(lambda: self._renew(args=args)))

    async def settle(self, job: Job) -> bool:
        row = job.to_row()
        pending = job.webhook is not None and job.webhook.get("status") == "pending"
        args = self._args(job.id, job.lease, job.status, "1" if pending else "0")
        for name in ("status_code", "result", "error", "webhook", "response_headers"):
            args += [name, "" if row[name] is None else row[name]]
        return bool(await self._call(lambda: self._settle(args=args)))

    async def retry(self, job: Job, delay: float) -> bool:
        error = orjson.dumps(job.error).decode() if job.error else ""
        code = "" if job.status_code is None else job.status_code
        args = self._args(job.id, job.lease, delay, code, error)
        return bool(await self._call(lambda: self._retry(args=args)))

    async def release(self, job: Job) -> bool:
        args = self._args(job.id, job.lease)
        return bool(await self._call(lambda: self._release(args=args)))

    async def _jobs(self, ids: Sequence[str]) -> list[Job]:
        out: list[Job] = []
        for start in range(0, len(ids), 500):

            async def read(chunk: Sequence[str] = ids[start : start + 500]) -> list[Any]:
                pipe = self._redis.pipeline(transaction=False)
                for job_id in chunk:
                    pipe.hgetall(self._job(job_id))
                return list(await pipe.execute())

            out += [Job.from_row(row) for row in await self._call(read) if row]
        return out

    async def get(self, job_id: str) -> Job | None:
        found = await self._jobs([job_id])
        return found[0] if found else None

    async def list(self, status: str | None, limit: int) -> list[Job]:
        key = f"{self.p}status:{status}" if status else f"{self.p}all"
        ids = await self._call(lambda: self._redis.zrevrange(key, 0, limit - 1))
        return await self._jobs(ids)

    async def set_webhook(self, job_id: str, state: dict[str, Any]) -> None:
        async def write() -> None:
            pipe = self._redis.pipeline(transaction=True)
            pipe.hset(self._job(job_id), "webhook", orjson.dumps(state).decode())
            if state.get("status") == "pending":
                pipe.zadd(f"{self.p}webhooks", {job_id: time.time()})
            else:
                pipe.zrem(f"{self.p}webhooks", job_id)
            await pipe.execute()

        await self._call(write)

    async def purge_finished(self, before: float, limit: int) -> int:
        return int(await self._call(lambda: self._purge(args=self._args(before, limit))))

    async def take_webhooks(self, before: float, limit: int) -> list[Job]:
        ids = await self._call(lambda: self._take_webhooks(args=self._args(before, limit)))
        return await self._jobs(ids)

    # --- batches --------------------------------------------------------------------------

    async def cancel_batch(self, batch_id: str) -> int:
        ids = await self._call(lambda: self._redis.lrange(f"{self.p}batch:{batch_id}:jobs", 0, -1))
        n = 0
        for start in range(0, len(ids), 500):
            args = self._args(*ids[start : start + 500])
            n += int(await self._call(lambda a=args: self._cancel(args=a)))
        return n

    async def batch_unfinished(self, batch_id: str) -> bool:
        key = f"{self.p}batch:{batch_id}:counts"
        counts = await self._call(lambda: self._redis.hmget(key, list(UNFINISHED)))
        return any(int(n or 0) for n in counts)

    async def batch_counts(self, batch_id: str) -> dict[str, int]:
        raw = await self._call(lambda: self._redis.hgetall(f"{self.p}batch:{batch_id}:counts"))
        return {k: int(v) for k, v in raw.items() if int(v)}

    async def batch_jobs(self, batch_id: str) -> list[Job]:
        ids = await self._call(lambda: self._redis.lrange(f"{self.p}batch:{batch_id}:jobs", 0, -1))
        return await self._jobs(ids)

    async def put_file(self, file: StoredFile, content: bytes) -> None:
        async def write() -> None:
            pipe = self._raw.pipeline(transaction=True)
            meta = {
                "id": file.id,
                "filename": file.filename,
                "purpose": file.purpose,
                "bytes": file.bytes,
                "created_at": file.created_at,
            }
            pipe.hset(f"{self.p}file:{file.id}", mapping=meta)  # type: ignore[arg-type]
            pipe.set(f"{self.p}file:{file.id}:content", content)
            await pipe.execute()

        await self._call(write)

    async def get_file(self, file_id: str) -> StoredFile | None:
        row = await self._call(lambda: self._redis.hgetall(f"{self.p}file:{file_id}"))
        if not row:
            return None
        return StoredFile(
            row["id"], row["filename"], row["purpose"], int(row["bytes"]), int(row["created_at"])
        )

    async def file_content(self, file_id: str) -> bytes | None:
        content = await self._call(lambda: self._raw.get(f"{self.p}file:{file_id}:content"))
        return bytes(content) if content is not None else None

    async def delete_file(self, file_id: str) -> bool:
        keys = (f"{self.p}file:{file_id}", f"{self.p}file:{file_id}:content")
        return bool(await self._call(lambda: self._redis.delete(*keys)))

    async def put_batch(self, batch: dict[str, Any]) -> None:
        async def write() -> None:
            pipe = self._redis.pipeline(transaction=True)
            doc = orjson.dumps(batch).decode()
            pipe.hset(
                f"{self.p}batch:{batch['id']}", mapping={"status": batch["status"], "doc": doc}
            )
            pipe.zadd(f"{self.p}batches", {batch["id"]: batch["created_at"]})
            await pipe.execute()

        await self._call(write)

    async def get_batch(self, batch_id: str) -> dict[str, Any] | None:
        doc = await self._call(lambda: self._redis.hget(f"{self.p}batch:{batch_id}", "doc"))
        return orjson.loads(doc) if doc else None

    async def swap_batch(self, batch: dict[str, Any], expect: str) -> bool:
        keys = [f"{self.p}batch:{batch['id']}"]
        args = [expect, batch["status"], orjson.dumps(batch).decode()]
        return bool(await self._call(lambda: self._swap_batch(keys=keys, args=args)))

    async def list_batches(self, limit: int) -> list[dict[str, Any]]:
        ids = await self._call(lambda: self._redis.zrevrange(f"{self.p}batches", 0, limit - 1))
        out = []
        for batch_id in ids:
            batch = await self.get_batch(batch_id)
            if batch is not None:
                out.append(batch)
        return out

    async def close(self) -> None:
        await self._redis.aclose()
        await self._raw.aclose()
