"""State in this process: exact under concurrency because every operation runs in one
event-loop turn (no `await` between a check and its update)."""

from __future__ import annotations

import time
from collections.abc import Mapping

from sidecar.stores.state import MAX_NOTES, Hold, Usage

_N = len(Usage.FIELDS)
# `settle` adds to the fields by position, in this order, the levers after them.
assert Usage.BASE == (
    "requests",
    "input_tokens",
    "output_tokens",
    "cached_tokens",
    "cost_usd",
    "saved_usd",
)
_LEVERS_AT = len(Usage.BASE)
_FEEDBACK_AT = Usage.FIELDS.index("feedback")


class MemoryState:
    def __init__(self) -> None:
        self.tats: dict[str, float] = {}  # GCRA: theoretical arrival time per rate key
        self.slots: dict[str, dict[str, float]] = {}  # key → lease → expires_at
        self.rows: dict[str, list[float]] = {}  # usage key → Usage.FIELDS values
        self.row_expiry: dict[str, float] = {}
        self.holds: dict[str, dict[str, tuple[float, float]]] = {}  # key → id → (amount, exp)
        self.seen: dict[str, float] = {}
        self.levels: dict[str, tuple[int, float]] = {}  # sticky key → (level, expires_at)
        self.notes: dict[str, tuple[str, float]] = {}  # key → (value, expires_at), oldest first
        self.tally_rows: dict[str, dict[str, float]] = {}
        self.tally_expiry: dict[str, float] = {}
        self._settles = 0

    # -- rates (GCRA: one timestamp per key, exact, O(1)) -------------------------------

    async def take_rate(self, key: str, cost: float, limit: float, window: float) -> float:
        now = time.time()
        interval = window / limit
        tat = max(self.tats.get(key, now), now)
        new_tat = tat + cost * interval
        over = new_tat - now - window
        if over > 1e-9:
            return over
        self.tats[key] = new_tat
        return 0.0

    async def adjust_rate(self, key: str, delta: float, limit: float, window: float) -> None:
        now = time.time()
        tat = max(self.tats.get(key, now), now)
        self.tats[key] = max(now, tat + delta * window / limit)

    # -- concurrency slots ---------------------------------------------------------------

    async def acquire_slot(self, key: str, limit: int, lease: str, ttl: float) -> bool:
        now = time.time()
        leases = self.slots.setdefault(key, {})
        if len(leases) >= limit:
            for stale in [k for k, exp in leases.items() if exp <= now]:
                del leases[stale]
            if len(leases) >= limit:
                return False
        leases[lease] = now + ttl
        return True

    async def release_slot(self, key: str, lease: str) -> None:
        leases = self.slots.get(key)
        if leases is not None:
            leases.pop(lease, None)

    # -- budgets -------------------------------------------------------------------------

    def _held(self, key: str, now: float) -> float:
        holds = self.holds.get(key)
        if not holds:
            return 0.0
        for stale in [h for h, (_, exp) in holds.items() if exp <= now]:
            del holds[stale]
        return sum(amount for amount, _ in holds.values())

    async def reserve(self, hold: Hold, limits: tuple[float, ...]) -> int:
        now = time.time()
        for i, (key, limit) in enumerate(zip(hold.keys, limits, strict=True)):
            row = self.rows.get(key)
            spent = row[4] if row is not None else 0.0
            if spent + self._held(key, now) + hold.amount > limit + 1e-12:
                return i
        for key in hold.keys:
            self.holds.setdefault(key, {})[hold.id] = (hold.amount, hold.expires_at)
        return -1

    async def spent(self, key: str) -> tuple[float, float]:
        row = self.rows.get(key)
        return (row[4] if row is not None else 0.0), self._held(key, time.time())

    async def settle(
        self, hold: Hold | None, rows: tuple[tuple[str, float], ...], usage: Usage
    ) -> None:
        if hold is not None:
            for key in hold.keys:
                holds = self.holds.get(key)
                if holds is not None:
                    holds.pop(hold.id, None)
        # Unrolled: a request adds to 30 rows, and a loop over the six fields doubled the
        # cost of this, the busiest function of accounting.
        requests, tokens_in, tokens_out, cached = (
            usage.requests,
            usage.input_tokens,
            usage.output_tokens,
            usage.cached_tokens,
        )
        cost, saved = usage.cost_usd, usage.saved_usd
        for key, expires_at in rows:
            row = self.rows.get(key)
            if row is None:
                row = self.rows[key] = [0.0] * _N
                self.row_expiry[key] = expires_at
            row[0] += requests
            row[1] += tokens_in
            row[2] += tokens_out
            row[3] += cached
            row[4] += cost
            row[5] += saved
        if usage.saved:  # most requests move no lever: no second pass for them
            levers = [(i, v) for i, v in enumerate(usage.saved, _LEVERS_AT) if v]
            for key, _ in rows:
                row = self.rows[key]
                for i, v in levers:
                    row[i] += v
        if usage.feedback:
            for key, _ in rows:
                row = self.rows[key]
                row[_FEEDBACK_AT] += usage.feedback
                row[_FEEDBACK_AT + 1] += usage.feedback_score
        self._settles += 1
        if self._settles % 10_000 == 0:
            self.purge(time.time())

    def purge(self, now: float) -> None:
        for key in [k for k, exp in self.row_expiry.items() if exp <= now]:
            self.rows.pop(key, None)
            del self.row_expiry[key]
        for key in [k for k, exp in self.seen.items() if exp <= now]:
            del self.seen[key]
        for key in [k for k, (_, exp) in self.levels.items() if exp <= now]:
            del self.levels[key]
        for key in [k for k, tat in self.tats.items() if tat <= now]:
            del self.tats[key]  # an empty bucket is the same as no bucket
        for key in [k for k, (_, exp) in self.notes.items() if exp <= now]:
            del self.notes[key]
        for key in [k for k, exp in self.tally_expiry.items() if exp <= now]:
            self.tally_rows.pop(key, None)
            del self.tally_expiry[key]

    async def once(self, key: str, ttl: float) -> bool:
        now = time.time()
        if self.seen.get(key, 0.0) > now:
            return False
        self.seen[key] = now + ttl
        return True

    async def stick(self, key: str, level: int, ttl: float) -> int:
        now = time.time()
        held, expires = self.levels.get(key, (-1, 0.0))
        if expires <= now:
            held = -1
        if level >= held and level >= 0:
            self.levels[key] = (level, now + ttl)
            return level
        return held

    async def usage(self, prefix: str) -> dict[str, dict[str, float]]:
        return {
            key: dict(zip(Usage.FIELDS, row, strict=True))
            for key, row in self.rows.items()
            if key.startswith(prefix)
        }

    # -- notes and tallies ---------------------------------------------------------------

    async def note(self, key: str, value: str, ttl: float) -> None:
        notes = self.notes
        notes.pop(key, None)  # to the end: the oldest are dropped first
        notes[key] = (value, time.time() + ttl)
        if len(notes) > MAX_NOTES:
            del notes[next(iter(notes))]

    async def recall(self, key: str) -> str | None:
        found = self.notes.get(key)
        if found is None or found[1] <= time.time():
            return None
        return found[0]

    async def tally(self, key: str, fields: Mapping[str, float], expires_at: float) -> None:
        row = self.tally_rows.get(key)
        if row is None:
            row = self.tally_rows[key] = {}
        for name, amount in fields.items():
            row[name] = row.get(name, 0.0) + amount
        self.tally_expiry[key] = expires_at

    async def tallies(self, prefix: str) -> dict[str, dict[str, float]]:
        now = time.time()
        return {
            key: dict(row)
            for key, row in self.tally_rows.items()
            if key.startswith(prefix) and self.tally_expiry[key] > now
        }

    async def close(self) -> None:
        return None
