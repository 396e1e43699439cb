"""The Redis queue's provider-batch operations (the seam's contract is in queue.py; the
keys and scripts in redis_scripts_lines.py). A mixin of `RedisQueue`: its clients, prefix
and error handling."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import orjson
import redis.asyncio as aioredis

from sidecar.jobs.lines import DONE, Group, Line, Submission
from sidecar.jobs.model import Job
from sidecar.jobs.redis_scripts_lines import (
    CANCEL_DEFERRED,
    CLAIM_SUBMISSION,
    DEFER,
    LAND,
    OPEN,
    REQUEST_CANCEL,
    RETURN_LINE,
    SAVE_SUBMISSION,
)

T = TypeVar("T")
CHUNK = 500  # job ids per script call or pipeline


class RedisLines:
    p: str
    _redis: aioredis.Redis
    _call: Callable[[Callable[[], Awaitable[Any]]], Awaitable[Any]]
    _args: Callable[..., list[Any]]
    _job: Callable[[str], str]
    _jobs: Callable[[Sequence[str]], Awaitable[list[Job]]]

    def _register_lines(self) -> None:
        r = self._redis
        self._defer = r.register_script(DEFER)
        self._open = r.register_script(OPEN)
        self._claim_submission = r.register_script(CLAIM_SUBMISSION)
        self._save_submission = r.register_script(SAVE_SUBMISSION)
        self._land = r.register_script(LAND)
        self._return_line = r.register_script(RETURN_LINE)
        self._cancel_deferred = r.register_script(CANCEL_DEFERRED)
        self._request_cancel = r.register_script(REQUEST_CANCEL)

    async def defer(self, job: Job, line: Line) -> bool:
        args = self._args(
            job.id, job.lease, line.group, line.added_at, line.dump(), line.batch_id or ""
        )
        return bool(await self._call(lambda: self._defer(args=args)))

    async def deferred_groups(self) -> list[Group]:
        keys = await self._call(lambda: self._redis.smembers(f"{self.p}groups"))
        if not keys:
            return []
        ordered = sorted(keys)

        async def read() -> list[Any]:
            pipe = self._redis.pipeline(transaction=False)
            for key in ordered:
                pipe.zcard(f"{self.p}group:{key}")
                pipe.zrange(f"{self.p}group:{key}", 0, 0, withscores=True)
            return list(await pipe.execute())

        found = await self._call(read)
        out = []
        for i, key in enumerate(ordered):
            count, first = found[2 * i], found[2 * i + 1]
            if count and first:
                out.append(Group(key, int(count), float(first[0][1])))
        return out

    async def open_submission(
        self, submission: Submission, limit: int, lease_for: float
    ) -> list[Line]:
        args = self._args(
            submission.group, limit, submission.id, submission.lease, lease_for, submission.dump()
        )
        flat = await self._call(lambda: self._open(args=args))
        lines = []
        for i in range(0, len(flat), 4):
            line = Line.load(flat[i + 1])
            line.submission, line.submissions = submission.id, int(flat[i + 2])
            line.reason, line.position = flat[i + 3] or None, i // 4 + 1
            lines.append(line)
        submission.lines = len(lines)
        return lines

    async def claim_submission(self, lease: str, lease_for: float) -> Submission | None:
        found = await self._call(lambda: self._claim_submission(args=self._args(lease, lease_for)))
        if not found:
            return None
        return Submission.load(found[0], lease, found[1] == "1")

    async def save_submission(
        self, submission: Submission, due: float | None, lease_for: float
    ) -> bool:
        args = self._args(
            submission.id,
            submission.lease or "",
            submission.status,
            submission.dump(),
            "" if due is None else due,
            lease_for,
            int(submission.cancel_sent),
        )
        return bool(await self._call(lambda: self._save_submission(args=args)))

    async def submission_lines(self, submission_id: str) -> list[tuple[Line, Job]]:
        key = f"{self.p}sub:{submission_id}:lines"
        ids = await self._call(lambda: self._redis.lrange(key, 0, -1))
        out: list[tuple[Line, Job]] = []
        for start in range(0, len(ids), CHUNK):
            chunk = ids[start : start + CHUNK]

            async def read(chunk: Sequence[str] = chunk) -> list[Any]:
                pipe = self._redis.pipeline(transaction=False)
                for job_id in chunk:
                    pipe.hmget(
                        f"{self.p}line:{job_id}",
                        ["doc", "state", "submission", "submissions", "reason", "position"],
                    )
                return list(await pipe.execute())

            rows = await self._call(read)
            mine = [
                (job_id, row)
                for job_id, row in zip(chunk, rows, strict=True)
                if row[0] and row[1] == "submitted" and row[2] == submission_id
            ]
            jobs = {job.id: job for job in await self._jobs([job_id for job_id, _ in mine])}
            for job_id, (doc, _, sub, submissions, reason, position) in mine:
                if job_id in jobs:
                    line = Line.load(doc)
                    line.submission, line.submissions = sub, int(submissions or 0)
                    line.reason, line.position = reason or None, int(position or 0)
                    out.append((line, jobs[job_id]))
        return out

    async def _submissions(self, ids: Sequence[str]) -> list[Submission]:
        async def read() -> list[Any]:
            pipe = self._redis.pipeline(transaction=False)
            for sid in ids:
                pipe.hmget(f"{self.p}sub:{sid}", ["doc", "lease", "cancel"])
            return list(await pipe.execute())

        rows = await self._call(read) if ids else []
        return [
            Submission.load(doc, lease or None, cancel == "1") for doc, lease, cancel in rows if doc
        ]

    async def open_submissions(self) -> list[Submission]:
        ids = await self._call(lambda: self._redis.zrange(f"{self.p}subs", 0, -1))
        return [s for s in await self._submissions(ids) if s.status != DONE]

    async def batch_submissions(self, batch_id: str) -> list[Submission]:
        ids = await self._call(lambda: self._redis.smembers(f"{self.p}batch:{batch_id}:subs"))
        return sorted(await self._submissions(sorted(ids)), key=lambda s: s.created_at)

    async def land(self, job: Job, expect: str) -> bool:
        row = job.to_row()
        pending = job.webhook is not None and job.webhook.get("status") == "pending"
        args = self._args(job.id, expect, job.status, "1" if pending else "0")
        for name in ("status_code", "result", "error", "webhook", "response_headers"):
            args += [name, "" if row[name] is None else row[name]]
        return bool(await self._call(lambda: self._land(args=args)))

    async def return_line(
        self, job_id: str, reason: str, headers: dict[str, str] | None = None
    ) -> bool:
        text = "" if headers is None else orjson.dumps(headers).decode()
        args = self._args(job_id, reason, text)
        return bool(await self._call(lambda: self._return_line(args=args)))

    async def cancel_deferred(self, batch_id: str) -> tuple[list[Line], list[str]]:
        key = f"{self.p}batch:{batch_id}:jobs"
        ids = await self._call(lambda: self._redis.lrange(key, 0, -1))
        lines: list[Line] = []
        held: dict[str, None] = {}
        for start in range(0, len(ids), CHUNK):
            args = self._args(*ids[start : start + CHUNK])
            docs, subs = await self._call(lambda a=args: self._cancel_deferred(args=a))
            lines += [Line.load(doc) for doc in docs]
            held.update(dict.fromkeys(subs))
        return lines, list(held)

    async def request_cancel(self, submission_id: str) -> None:
        keys = [f"{self.p}sub:{submission_id}", f"{self.p}subs"]
        await self._call(lambda: self._request_cancel(keys=keys, args=[submission_id]))
