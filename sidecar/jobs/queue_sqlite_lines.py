"""The SQLite queue's provider-batch tables: deferred lines and submissions (the seam's
contract is in queue.py). A mixin of `SqliteQueue`: its connection, thread and write lock.

A line's state (deferred, submitted) is its job's status, changed in the same transaction;
a submission's lease is two columns, like a job's.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any, TypeVar

import orjson

from sidecar.jobs.lines import DONE, Group, Line, Submission
from sidecar.jobs.model import CANCELLED, DEFERRED, QUEUED, SUBMITTED, Job

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS lines (
    job_id TEXT PRIMARY KEY, grp TEXT NOT NULL, batch_id TEXT, state TEXT NOT NULL,
    submission TEXT, added_at REAL NOT NULL, doc TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS lines_waiting ON lines(grp, added_at) WHERE state = 'deferred';
CREATE INDEX IF NOT EXISTS lines_submission ON lines(submission) WHERE submission IS NOT NULL;
CREATE INDEX IF NOT EXISTS lines_batch ON lines(batch_id, state) WHERE batch_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS submissions (
    id TEXT PRIMARY KEY, status TEXT NOT NULL, due_at REAL NOT NULL, lease TEXT,
    lease_until REAL, cancel INTEGER NOT NULL DEFAULT 0, doc TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS submissions_due ON submissions(due_at) WHERE status != 'done';
CREATE TABLE IF NOT EXISTS submission_batches (
    batch_id TEXT NOT NULL, submission TEXT NOT NULL, PRIMARY KEY (batch_id, submission));
"""

# A job's outcome, as `settle` and `land` write it (the values: `outcome`).
OUTCOME = (
    "status = ?, status_code = ?, result = ?, error = ?, webhook = ?, response_headers = ?, "
    "webhook_due = ?, finished_at = ?"
)


def outcome(job: Job) -> tuple[Any, ...]:
    row = job.to_row()
    pending = job.webhook is not None and job.webhook.get("status") == "pending"
    now = time.time()
    return (
        job.status,
        job.status_code,
        row["result"],
        row["error"],
        row["webhook"],
        row["response_headers"],
        now if pending else None,
        job.finished_at or now,
    )


class SqliteLines:
    _call: Callable[..., Any]
    _write: Callable[[], AbstractContextManager[sqlite3.Connection]]
    _rows: Callable[[str, Sequence[Any]], list[dict[str, Any]]]

    def _wake_workers(self) -> None: ...

    async def defer(self, job: Job, line: Line) -> bool:
        def write() -> bool:
            with self._write() as db:
                moved = db.execute(
                    "UPDATE jobs SET status = ?, lease = NULL, lease_until = NULL "
                    "WHERE id = ? AND lease = ? AND status = 'running'",
                    (DEFERRED, job.id, job.lease),
                ).rowcount
                if moved:
                    db.execute(
                        "INSERT OR REPLACE INTO lines VALUES (?, ?, ?, ?, NULL, ?, ?)",
                        (
                            line.job_id,
                            line.group,
                            line.batch_id,
                            DEFERRED,
                            line.added_at,
                            line.dump(),
                        ),
                    )
                return bool(moved)

        return bool(await self._call(write))

    async def deferred_groups(self) -> list[Group]:
        sql = (
            "SELECT grp, count(*) AS n, min(added_at) AS oldest FROM lines "
            "WHERE state = 'deferred' GROUP BY grp"
        )
        rows = await self._call(self._rows, sql, ())
        return [Group(r["grp"], r["n"], r["oldest"]) for r in rows]

    async def open_submission(
        self, submission: Submission, limit: int, lease_for: float
    ) -> list[Line]:
        def take() -> list[Line]:
            with self._write() as db:
                rows = db.execute(
                    "SELECT doc FROM lines WHERE grp = ? AND state = 'deferred' "
                    "ORDER BY added_at, job_id LIMIT ?",
                    (submission.group, limit),
                ).fetchall()
                lines = [Line.load(r[0]) for r in rows]
                if not lines:
                    return []
                for n, line in enumerate(lines, 1):
                    line.submission, line.position = submission.id, n
                    line.submissions += 1
                db.executemany(
                    "UPDATE lines SET state = ?, submission = ?, doc = ? WHERE job_id = ?",
                    [(SUBMITTED, submission.id, ln.dump(), ln.job_id) for ln in lines],
                )
                db.executemany(
                    "UPDATE jobs SET status = ? WHERE id = ? AND status = ?",
                    [(SUBMITTED, ln.job_id, DEFERRED) for ln in lines],
                )
                submission.lines = len(lines)
                now = time.time()
                db.execute(
                    "INSERT INTO submissions VALUES (?, ?, ?, ?, ?, 0, ?)",
                    (
                        submission.id,
                        submission.status,
                        now,
                        submission.lease,
                        now + lease_for,
                        submission.dump(),
                    ),
                )
                db.executemany(
                    "INSERT OR IGNORE INTO submission_batches VALUES (?, ?)",
                    [(b, submission.id) for b in {ln.batch_id for ln in lines if ln.batch_id}],
                )
                return lines

        return list(await self._call(take))

    async def claim_submission(self, lease: str, lease_for: float) -> Submission | None:
        def claim() -> Submission | None:
            now = time.time()
            with self._write() as db:
                row = db.execute(
                    "UPDATE submissions SET lease = ?, lease_until = ? WHERE id = ("
                    "SELECT id FROM submissions WHERE status != 'done' AND due_at <= ? "
                    "AND (lease IS NULL OR lease_until < ?) ORDER BY due_at LIMIT 1) "
                    "RETURNING doc, cancel",
                    (lease, now + lease_for, now, now),
                ).fetchone()
            return None if row is None else Submission.load(row[0], lease, bool(row[1]))

        return await self._call(claim)  # type: ignore[no-any-return]

    async def save_submission(
        self, submission: Submission, due: float | None, lease_for: float
    ) -> bool:
        now = time.time()
        if due is None:
            sql = "UPDATE submissions SET status = ?, doc = ?, lease_until = ? "
            args: tuple[Any, ...] = (submission.status, submission.dump(), now + lease_for)
        else:
            sql = (
                "UPDATE submissions SET status = ?, doc = ?, lease = NULL, lease_until = NULL, "
                "due_at = CASE WHEN cancel = 1 AND ? = 0 THEN ? ELSE ? END "
            )
            args = (submission.status, submission.dump(), int(submission.cancel_sent), now, due)
        sql += "WHERE id = ? AND lease = ?"

        def write() -> int:
            with self._write() as db:
                return db.execute(sql, (*args, submission.id, submission.lease)).rowcount

        return bool(await self._call(write))

    async def submission_lines(self, submission_id: str) -> list[tuple[Line, Job]]:
        sql = (
            "SELECT lines.doc AS line, jobs.* FROM lines JOIN jobs ON jobs.id = lines.job_id "
            "WHERE lines.submission = ? AND lines.state = 'submitted' "
            "ORDER BY lines.added_at, lines.job_id"
        )
        rows = await self._call(self._rows, sql, (submission_id,))
        return [(Line.load(r.pop("line")), Job.from_row(r)) for r in rows]

    async def open_submissions(self) -> list[Submission]:
        sql = "SELECT doc, lease, cancel FROM submissions WHERE status != ? ORDER BY due_at"
        rows = await self._call(self._rows, sql, (DONE,))
        return [Submission.load(r["doc"], r["lease"], bool(r["cancel"])) for r in rows]

    async def batch_submissions(self, batch_id: str) -> list[Submission]:
        sql = (
            "SELECT doc, lease, cancel FROM submissions WHERE id IN "
            "(SELECT submission FROM submission_batches WHERE batch_id = ?)"
        )
        rows = await self._call(self._rows, sql, (batch_id,))
        found = [Submission.load(r["doc"], r["lease"], bool(r["cancel"])) for r in rows]
        return sorted(found, key=lambda s: s.created_at)

    async def land(self, job: Job, expect: str) -> bool:
        sql = f"UPDATE jobs SET {OUTCOME} WHERE id = ? AND status = ?"
        args = (*outcome(job), job.id, expect)

        def write() -> bool:
            with self._write() as db:
                if not db.execute(sql, args).rowcount:
                    return False
                db.execute("DELETE FROM lines WHERE job_id = ?", (job.id,))
                return True

        return bool(await self._call(write))

    async def return_line(
        self, job_id: str, reason: str, headers: dict[str, str] | None = None
    ) -> bool:
        def write() -> bool:
            with self._write() as db:
                found = db.execute(
                    "SELECT doc FROM lines WHERE job_id = ? AND state = 'submitted'", (job_id,)
                ).fetchone()
                if found is None:
                    return False
                if headers is not None:  # to run as a call: the line is done with
                    db.execute(
                        "UPDATE jobs SET status = ?, headers = ?, not_before = 0 "
                        "WHERE id = ? AND status = ?",
                        (QUEUED, orjson.dumps(headers).decode(), job_id, SUBMITTED),
                    )
                    db.execute("DELETE FROM lines WHERE job_id = ?", (job_id,))
                    return True
                line = Line.load(found[0])
                line.submission, line.reason = None, reason
                db.execute(
                    "UPDATE lines SET state = ?, submission = NULL, doc = ? WHERE job_id = ?",
                    (DEFERRED, line.dump(), job_id),
                )
                db.execute(
                    "UPDATE jobs SET status = ? WHERE id = ? AND status = ?",
                    (DEFERRED, job_id, SUBMITTED),
                )
                return True

        done = bool(await self._call(write))
        if done and headers is not None:
            self._wake_workers()
        return done

    async def cancel_deferred(self, batch_id: str) -> tuple[list[Line], list[str]]:
        def write() -> tuple[list[Line], list[str]]:
            with self._write() as db:
                docs = db.execute(
                    "DELETE FROM lines WHERE batch_id = ? AND state = 'deferred' RETURNING doc",
                    (batch_id,),
                ).fetchall()
                lines = [Line.load(r[0]) for r in docs]
                db.executemany(
                    "UPDATE jobs SET status = ?, finished_at = ? WHERE id = ? AND status = ?",
                    [(CANCELLED, time.time(), ln.job_id, DEFERRED) for ln in lines],
                )
                held = db.execute(
                    "SELECT DISTINCT submission FROM lines WHERE batch_id = ? "
                    "AND state = 'submitted'",
                    (batch_id,),
                ).fetchall()
                return lines, [r[0] for r in held]

        return await self._call(write)  # type: ignore[no-any-return]

    async def request_cancel(self, submission_id: str) -> None:
        def write() -> None:
            with self._write() as db:
                db.execute(
                    "UPDATE submissions SET cancel = 1, due_at = min(due_at, ?) WHERE id = ?",
                    (time.time(), submission_id),
                )

        await self._call(write)
