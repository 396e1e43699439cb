"""The embedded default: state in memory (exact, fast), written behind to a SQLite file
so spend and rate state survive a restart without any server.

Writes are batched off the request path: every `flush_interval` the rows changed since
the last flush are upserted in one transaction on the store's own thread, and once more on
close. A crash (not a SIGTERM) loses at most the last interval. One process owns the
file; for state shared between sidecars use Redis.

A write, once its rows have left the dirty sets, is shielded from cancellation (a stop can
land at any moment), and the store's one thread runs its jobs in order, so close() never
closes the file under a write still running or queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sidecar.stores.memory import MemoryState
from sidecar.stores.state import Hold, StoreUnavailable, Usage

log = logging.getLogger("sidecar.state")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS usage_rows (
    key TEXT PRIMARY KEY, requests REAL, input_tokens REAL, output_tokens REAL,
    cached_tokens REAL, cost_usd REAL, saved_usd REAL, expires_at REAL);
CREATE TABLE IF NOT EXISTS rates (key TEXT PRIMARY KEY, tat REAL);
CREATE TABLE IF NOT EXISTS seen (key TEXT PRIMARY KEY, expires_at REAL);
CREATE TABLE IF NOT EXISTS levels (key TEXT PRIMARY KEY, level INTEGER, expires_at REAL);
CREATE TABLE IF NOT EXISTS notes (key TEXT PRIMARY KEY, value TEXT, expires_at REAL);
CREATE TABLE IF NOT EXISTS tallies (
    key TEXT, field TEXT, value REAL, expires_at REAL, PRIMARY KEY (key, field));
"""
# Columns are named in every statement: a file from an older version gets the columns it
# lacks added at the end (after expires_at), with 0 for the rows it already has.
_COLUMNS = ", ".join(Usage.FIELDS)
_SELECT_ROWS = f"SELECT key, {_COLUMNS}, expires_at FROM usage_rows WHERE expires_at > ?"
_UPSERT_ROW = (
    f"INSERT OR REPLACE INTO usage_rows (key, {_COLUMNS}, expires_at) "
    f"VALUES ({', '.join('?' * (len(Usage.FIELDS) + 2))})"
)


class SqliteState(MemoryState):
    def __init__(self, path: Path, flush_interval: float = 1.0) -> None:
        super().__init__()
        self.path = path
        self.flush_interval = flush_interval
        self._db: sqlite3.Connection | None = None
        self._dirty_rows: set[str] = set()
        self._dirty_rates: set[str] = set()
        self._dirty_seen: set[str] = set()
        self._dirty_levels: set[str] = set()
        self._dirty_notes: set[str] = set()
        self._dirty_tallies: set[str] = set()
        self._flusher: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="sidecar-state-sqlite")

    async def _call(self, fn: Callable[..., None], *args: object) -> None:
        job = asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)
        try:
            await asyncio.shield(job)
        except asyncio.CancelledError:
            job.add_done_callback(_log_failure)
            raise

    async def open(self) -> SqliteState:
        try:
            await self._call(self._load)
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailable(f"cannot open state file {self.path}: {exc}") from None
        self._flusher = asyncio.create_task(self._flush_forever())
        return self

    def _load(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(_SCHEMA)
        have = {row[1] for row in db.execute("PRAGMA table_info(usage_rows)")}
        for column in Usage.FIELDS:
            if column not in have:
                db.execute(f"ALTER TABLE usage_rows ADD COLUMN {column} REAL NOT NULL DEFAULT 0")
        now = time.time()
        for key, *values, expires_at in db.execute(_SELECT_ROWS, (now,)):
            self.rows[key] = [float(v or 0.0) for v in values]
            self.row_expiry[key] = expires_at
        for key, tat in db.execute("SELECT key, tat FROM rates WHERE tat > ?", (now,)):
            self.tats[key] = tat
        for key, expires_at in db.execute(
            "SELECT key, expires_at FROM seen WHERE expires_at > ?", (now,)
        ):
            self.seen[key] = expires_at
        for key, level, expires_at in db.execute(
            "SELECT key, level, expires_at FROM levels WHERE expires_at > ?", (now,)
        ):
            self.levels[key] = (int(level), expires_at)
        for key, value, expires_at in db.execute(
            "SELECT key, value, expires_at FROM notes WHERE expires_at > ? ORDER BY expires_at",
            (now,),
        ):
            self.notes[key] = (value, expires_at)
        for key, name, value, expires_at in db.execute(
            "SELECT key, field, value, expires_at FROM tallies WHERE expires_at > ?", (now,)
        ):
            self.tally_rows.setdefault(key, {})[name] = value
            self.tally_expiry[key] = expires_at
        self._db = db

    # Every write marks what it touched; the flusher persists it.

    async def take_rate(self, key: str, cost: float, limit: float, window: float) -> float:
        wait = await super().take_rate(key, cost, limit, window)
        if not wait:
            self._dirty_rates.add(key)
        return wait

    async def adjust_rate(self, key: str, delta: float, limit: float, window: float) -> None:
        await super().adjust_rate(key, delta, limit, window)
        self._dirty_rates.add(key)

    async def settle(
        self, hold: Hold | None, rows: tuple[tuple[str, float], ...], usage: Usage
    ) -> None:
        await super().settle(hold, rows, usage)
        self._dirty_rows.update(key for key, _ in rows)

    async def once(self, key: str, ttl: float) -> bool:
        first = await super().once(key, ttl)
        if first:
            self._dirty_seen.add(key)
        return first

    async def stick(self, key: str, level: int, ttl: float) -> int:
        got = await super().stick(key, level, ttl)
        if got == level and level >= 0:
            self._dirty_levels.add(key)
        return got

    async def note(self, key: str, value: str, ttl: float) -> None:
        await super().note(key, value, ttl)
        self._dirty_notes.add(key)

    async def tally(self, key: str, fields: Mapping[str, float], expires_at: float) -> None:
        await super().tally(key, fields, expires_at)
        self._dirty_tallies.add(key)

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval)
            try:
                await self.flush()
            except sqlite3.Error as exc:
                log.error("state: cannot write %s (%s); will retry", self.path, exc)

    async def flush(self) -> None:
        async with self._lock:
            rows = [
                (k, *self.rows[k], self.row_expiry[k]) for k in self._dirty_rows if k in self.rows
            ]
            rates = [(k, self.tats[k]) for k in self._dirty_rates if k in self.tats]
            seen = [(k, self.seen[k]) for k in self._dirty_seen if k in self.seen]
            levels = [(k, *self.levels[k]) for k in self._dirty_levels if k in self.levels]
            notes = [(k, *self.notes[k]) for k in self._dirty_notes if k in self.notes]
            tallies = [
                (k, name, value, self.tally_expiry[k])
                for k in self._dirty_tallies
                if k in self.tally_rows
                for name, value in self.tally_rows[k].items()
            ]
            written = self._dirty()
            self._dirty_rows, self._dirty_rates, self._dirty_seen = set(), set(), set()
            self._dirty_levels, self._dirty_notes, self._dirty_tallies = set(), set(), set()
            if rows or rates or seen or levels or notes or tallies:
                try:
                    await self._call(self._write, rows, rates, seen, levels, notes, tallies)
                except sqlite3.Error:
                    # Keep them dirty so the next flush tries again.
                    for now_dirty, kept in zip(self._dirty(), written, strict=True):
                        now_dirty.update(kept)
                    raise

    def _dirty(self) -> tuple[set[str], ...]:
        return (
            self._dirty_rows,
            self._dirty_rates,
            self._dirty_seen,
            self._dirty_levels,
            self._dirty_notes,
            self._dirty_tallies,
        )

    def _write(
        self,
        rows: list[tuple[object, ...]],
        rates: list[tuple[str, float]],
        seen: list[tuple[str, float]],
        levels: list[tuple[str, int, float]],
        notes: list[tuple[str, str, float]],
        tallies: list[tuple[str, str, float, float]],
    ) -> None:
        assert self._db is not None
        db = self._db
        now = time.time()
        db.execute("BEGIN")
        try:
            db.executemany(_UPSERT_ROW, rows)
            db.executemany("INSERT OR REPLACE INTO rates VALUES (?, ?)", rates)
            db.executemany("INSERT OR REPLACE INTO seen VALUES (?, ?)", seen)
            db.executemany("INSERT OR REPLACE INTO levels VALUES (?, ?, ?)", levels)
            db.execute("DELETE FROM levels WHERE expires_at <= ?", (now,))
            db.executemany("INSERT OR REPLACE INTO notes VALUES (?, ?, ?)", notes)
            db.executemany("INSERT OR REPLACE INTO tallies VALUES (?, ?, ?, ?)", tallies)
            db.execute("DELETE FROM usage_rows WHERE expires_at <= ?", (now,))
            db.execute("DELETE FROM notes WHERE expires_at <= ?", (now,))
            db.execute("DELETE FROM tallies WHERE expires_at <= ?", (now,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        await self.flush()
        if self._db is not None:
            await self._call(self._db.close)  # after any write still on the thread
            self._db = None
        self._thread.shutdown(wait=False)


def _log_failure(job: asyncio.Future[None]) -> None:
    """A write whose flush was cancelled still runs: if it fails, nobody awaits it but the
    log must say so."""
    if not job.cancelled() and (exc := job.exception()) is not None:
        log.error("state: a write cancelled mid-way failed (%s)", exc)
