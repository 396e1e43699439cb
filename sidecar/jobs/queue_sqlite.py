"""The embedded job queue: one SQLite file, durable, no server.

Every write is its own transaction, committed before the call returns, so a job accepted
with 202 survives a crash. Claims run `BEGIN IMMEDIATE` (SQLite's write lock), so several
processes on one host — the sidecar and `llm-sidecar worker`s — can share the file and
never claim one job twice. A claim's lease is `lease_until`; a running job past it is
taken back by the next claim. Calls run on one thread per queue, off the event loop.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import orjson

from sidecar.jobs.model import CANCELLED, FIELDS, QUEUED, TERMINAL, UNFINISHED, Job, new_lease
from sidecar.jobs.queue import StoredFile
from sidecar.jobs.queue_sqlite_lines import OUTCOME, SqliteLines, outcome
from sidecar.jobs.queue_sqlite_lines import SCHEMA as LINES_SCHEMA
from sidecar.stores.state import StoreUnavailable

T = TypeVar("T")

COLUMNS = FIELDS

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    {", ".join(f"{c} {'TEXT UNIQUE NOT NULL' if c == 'id' else ''}" for c in COLUMNS)},
    not_before REAL NOT NULL DEFAULT 0,
    lease_until REAL,
    webhook_due REAL);
CREATE INDEX IF NOT EXISTS jobs_ready ON jobs(priority, seq) WHERE status = 'queued';
CREATE INDEX IF NOT EXISTS jobs_leased ON jobs(lease_until) WHERE status = 'running';
CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status, seq);
CREATE INDEX IF NOT EXISTS jobs_batch ON jobs(batch_id, status) WHERE batch_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_webhook ON jobs(webhook_due) WHERE webhook_due IS NOT NULL;
CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY, filename TEXT, purpose TEXT, bytes INTEGER, created_at INTEGER,
    content BLOB);
CREATE TABLE IF NOT EXISTS batches (
    id TEXT PRIMARY KEY, status TEXT NOT NULL, created_at REAL NOT NULL, doc TEXT NOT NULL);
"""

_INSERT = f"INSERT INTO jobs ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
_FENCE = "WHERE id = ? AND lease = ? AND status = 'running'"


class SqliteQueue(SqliteLines):
    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="sidecar-jobs-sqlite")
        self._wake = asyncio.Event()

    async def open(self) -> SqliteQueue:
        await self._call(self._connect)
        return self

    def _connect(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA busy_timeout = 10000")  # other processes hold the lock briefly
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")  # WAL: durable against process crashes
        db.executescript(_SCHEMA + LINES_SCHEMA)
        self._db = db

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._thread, fn, *args)
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailable(f"jobs file {self.path}: {exc}") from None

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        db = self._db
        assert db is not None, "queue is closed"
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _one(self, sql: str, args: Sequence[Any]) -> int:
        with self._write() as db:
            return db.execute(sql, args).rowcount

    # --- jobs ---------------------------------------------------------------------------

    async def submit(self, jobs: Sequence[Job]) -> None:
        rows = [tuple(job.to_row().values()) for job in jobs]

        def insert() -> None:
            with self._write() as db:
                db.executemany(_INSERT, rows)

        await self._call(insert)
        self._wake.set()

    async def claim(self, worker: str, visibility_timeout: float) -> Job | None:
        row = await self._call(self._claim, worker, new_lease(), visibility_timeout)
        return Job.from_row(row) if row is not None else None

    def _claim(self, worker: str, lease: str, visibility_timeout: float) -> dict[str, Any] | None:
        assert self._db is not None
        now = time.time()
        # INDEXED BY: without statistics SQLite picks (status, seq) and sorts every row.
        taken = (
            "SELECT seq FROM jobs INDEXED BY jobs_leased "
            "WHERE status = 'running' AND lease_until < ? LIMIT 1"
        )
        ready = (
            "SELECT seq FROM jobs INDEXED BY jobs_ready "
            "WHERE status = 'queued' AND not_before <= ? ORDER BY priority, seq LIMIT 1"
        )
        # Look before taking the write lock: idle workers poll, and most polls find nothing.
        look = f"SELECT EXISTS ({taken}) OR EXISTS ({ready})"
        if not self._db.execute(look, (now, now)).fetchone()[0]:
            return None
        with self._write() as db:
            found = db.execute(taken, (now,)).fetchone() or db.execute(ready, (now,)).fetchone()
            if found is None:
                return None
            row = db.execute(
                "UPDATE jobs SET status = 'running', worker = ?, lease = ?, lease_until = ?, "
                "attempts = attempts + 1, started_at = COALESCE(started_at, ?) "
                "WHERE seq = ? RETURNING *",
                (worker, lease, now + visibility_timeout, now, found[0]),
            ).fetchone()
            return dict(row)

    def _wake_workers(self) -> None:
        self._wake.set()

    async def wait(self, at_most: float) -> None:
        try:
            await asyncio.wait_for(self._wake.wait(), at_most)
        except TimeoutError:
            return
        self._wake.clear()

    async def renew(self, job: Job, visibility_timeout: float) -> bool:
        sql = f"UPDATE jobs SET lease_until = ? {_FENCE}"
        args = (time.time() + visibility_timeout, job.id, job.lease)
        return await self._call(self._one, sql, args) == 1

    async def settle(self, job: Job) -> bool:
        sql = f"UPDATE jobs SET {OUTCOME}, lease = NULL, lease_until = NULL {_FENCE}"
        args = (*outcome(job), job.id, job.lease)
        return await self._call(self._one, sql, args) == 1

    async def retry(self, job: Job, delay: float) -> bool:
        sql = (
            "UPDATE jobs SET status = 'queued', status_code = ?, error = ?, not_before = ?, "
            f"lease = NULL, lease_until = NULL {_FENCE}"
        )
        error = orjson.dumps(job.error).decode() if job.error else None
        args = (job.status_code, error, time.time() + delay, job.id, job.lease)
        return await self._call(self._one, sql, args) == 1

    async def release(self, job: Job) -> bool:
        sql = (
            "UPDATE jobs SET status = 'queued', attempts = attempts - 1, not_before = 0, "
            f"lease = NULL, lease_until = NULL {_FENCE}"
        )
        done = await self._call(self._one, sql, (job.id, job.lease)) == 1
        self._wake.set()
        return done

    def _rows(self, sql: str, args: Sequence[Any]) -> list[dict[str, Any]]:
        assert self._db is not None
        return [dict(r) for r in self._db.execute(sql, args).fetchall()]

    async def get(self, job_id: str) -> Job | None:
        rows = await self._call(self._rows, "SELECT * FROM jobs WHERE id = ?", (job_id,))
        return Job.from_row(rows[0]) if rows else None

    async def list(self, status: str | None, limit: int) -> list[Job]:
        where = "WHERE status = ?" if status else ""
        args = (status, limit) if status else (limit,)
        sql = f"SELECT * FROM jobs {where} ORDER BY seq DESC LIMIT ?"
        return [Job.from_row(r) for r in await self._call(self._rows, sql, args)]

    async def set_webhook(self, job_id: str, state: dict[str, Any]) -> None:
        due = time.time() if state.get("status") == "pending" else None
        sql = "UPDATE jobs SET webhook = ?, webhook_due = ? WHERE id = ?"
        await self._call(self._one, sql, (orjson.dumps(state).decode(), due, job_id))

    async def purge_finished(self, before: float, limit: int) -> int:
        sql = (
            "DELETE FROM jobs WHERE seq IN (SELECT seq FROM jobs WHERE status IN "
            f"({', '.join('?' * len(TERMINAL))}) AND batch_id IS NULL "
            "AND webhook_due IS NULL AND finished_at < ? LIMIT ?)"
        )

        def purge() -> int:
            with self._write() as db:
                return db.execute(sql, (*sorted(TERMINAL), before, limit)).rowcount

        return await self._call(purge)

    async def take_webhooks(self, before: float, limit: int) -> list[Job]:
        sql = (
            "UPDATE jobs SET webhook_due = ? WHERE seq IN (SELECT seq FROM jobs "
            "WHERE webhook_due IS NOT NULL AND webhook_due < ? ORDER BY webhook_due LIMIT ?) "
            "RETURNING *"
        )

        def take() -> list[dict[str, Any]]:
            with self._write() as db:
                return [dict(r) for r in db.execute(sql, (time.time(), before, limit))]

        return [Job.from_row(r) for r in await self._call(take)]

    # --- batches --------------------------------------------------------------------------

    async def cancel_batch(self, batch_id: str) -> int:
        sql = (
            f"UPDATE jobs SET status = '{CANCELLED}', finished_at = ? "
            f"WHERE batch_id = ? AND status = '{QUEUED}'"
        )
        return await self._call(self._one, sql, (time.time(), batch_id))

    async def batch_unfinished(self, batch_id: str) -> bool:
        sql = (
            "SELECT EXISTS (SELECT 1 FROM jobs WHERE batch_id = ? "
            f"AND status IN ({', '.join(repr(s) for s in UNFINISHED)})) AS open"
        )
        return bool((await self._call(self._rows, sql, (batch_id,)))[0]["open"])

    async def batch_counts(self, batch_id: str) -> dict[str, int]:
        sql = "SELECT status, count(*) AS n FROM jobs WHERE batch_id = ? GROUP BY status"
        rows = await self._call(self._rows, sql, (batch_id,))
        return {r["status"]: r["n"] for r in rows}

    async def batch_jobs(self, batch_id: str) -> list[Job]:
        sql = "SELECT * FROM jobs WHERE batch_id = ? ORDER BY seq"
        return [Job.from_row(r) for r in await self._call(self._rows, sql, (batch_id,))]

    async def put_file(self, file: StoredFile, content: bytes) -> None:
        sql = "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?)"  # output files: rewritable
        args = (file.id, file.filename, file.purpose, file.bytes, file.created_at, content)
        await self._call(self._one, sql, args)

    async def get_file(self, file_id: str) -> StoredFile | None:
        sql = "SELECT id, filename, purpose, bytes, created_at FROM files WHERE id = ?"
        rows = await self._call(self._rows, sql, (file_id,))
        return StoredFile(**rows[0]) if rows else None

    async def file_content(self, file_id: str) -> bytes | None:
        rows = await self._call(self._rows, "SELECT content FROM files WHERE id = ?", (file_id,))
        return bytes(rows[0]["content"]) if rows else None

    async def delete_file(self, file_id: str) -> bool:
        return await self._call(self._one, "DELETE FROM files WHERE id = ?", (file_id,)) == 1

    async def put_batch(self, batch: dict[str, Any]) -> None:
        sql = "INSERT INTO batches VALUES (?, ?, ?, ?)"
        args = (batch["id"], batch["status"], batch["created_at"], orjson.dumps(batch).decode())
        await self._call(self._one, sql, args)

    async def get_batch(self, batch_id: str) -> dict[str, Any] | None:
        rows = await self._call(self._rows, "SELECT doc FROM batches WHERE id = ?", (batch_id,))
        return orjson.loads(rows[0]["doc"]) if rows else None

    async def swap_batch(self, batch: dict[str, Any], expect: str) -> bool:
        sql = "UPDATE batches SET status = ?, doc = ? WHERE id = ? AND status = ?"
        args = (batch["status"], orjson.dumps(batch).decode(), batch["id"], expect)
        return await self._call(self._one, sql, args) == 1

    async def list_batches(self, limit: int) -> list[dict[str, Any]]:
        sql = "SELECT doc FROM batches ORDER BY created_at DESC LIMIT ?"
        return [orjson.loads(r["doc"]) for r in await self._call(self._rows, sql, (limit,))]

    async def close(self) -> None:
        if self._db is not None:
            await self._call(self._db.close)
            self._db = None
        self._thread.shutdown(wait=False)
