"""The state seam: what limits, budgets and the usage API need from a store.

Every operation is atomic on its backend: a check and its update happen in one step
(one event-loop turn in memory, one Lua script on Redis), so concurrent requests can
never both pass a check that only one of them fits. Implementations: `MemoryState`
(one process; tests), `SqliteState` (memory plus a durable write-behind file: the
embedded default) and `RedisState` (shared by every sidecar).

Keys are built by the caller from stable policy names (limit, budget, scope value,
window), so state survives reloads and means the same thing in every replica.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

MAX_NOTES = 100_000  # notes an in-process store keeps (about 30 MB at most)


class StoreUnavailable(Exception):
    """The backend could not be reached; `state.on_error` decides what happens."""


# The savings ledger's levers (pipeline/ledger.py), in attribution order. Each is a usage
# column `saved_<lever>_usd`; a new lever goes at the end (sqlite adds its column on open).
LEVERS = (
    "cache",
    "selection",
    "trim",
    "prompt_cache",
    "batch",
    "retry",
    "hedge",
    "escalation",
    "shadow",
)
LEVER_FIELDS = tuple(f"saved_{lever}_usd" for lever in LEVERS)
# App feedback on answers (api/feedback.py): how many scores, and their sum (0 to 1 each).
FEEDBACK_FIELDS = ("feedback", "feedback_score")


@dataclass(slots=True)
class Usage:
    """One request's contribution to every usage row it belongs to. Not frozen: one is
    made per request, and a frozen dataclass's __init__ costs three times as much."""

    requests: int = 1
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: float = 0.0
    saved_usd: float = 0.0  # what it would have cost at the baseline, minus what it did
    saved: tuple[float, ...] = ()  # saved_usd per lever, in LEVERS order; () when none moved
    feedback: int = 0  # feedback scores received (not requests: those come with `requests: 0`)
    feedback_score: float = 0.0  # their sum

    BASE = ("requests", "input_tokens", "output_tokens", "cached_tokens", "cost_usd", "saved_usd")
    FIELDS = (*BASE, *LEVER_FIELDS, *FEEDBACK_FIELDS)

    def values(self) -> tuple[float, ...]:
        """Every field's value, in FIELDS order."""
        levers = self.saved or (0.0,) * len(LEVERS)
        return (
            self.requests,
            self.input_tokens,
            self.output_tokens,
            self.cached_tokens,
            self.cost_usd,
            self.saved_usd,
            *levers,
            self.feedback,
            self.feedback_score,
        )


@dataclass(frozen=True, slots=True)
class Hold:
    """A reservation against one or more budgets: `amount` USD held on each key until
    settled (or, if its holder dies, until `expires_at`)."""

    id: str
    keys: tuple[str, ...]
    amount: float
    expires_at: float


class State(Protocol):
    async def take_rate(self, key: str, cost: float, limit: float, window: float) -> float:
        """Spend `cost` units of a `limit`-per-`window` allowance (GCRA). 0 when admitted,
        else the seconds until it would be; nothing is spent then."""
        ...

    async def adjust_rate(self, key: str, delta: float, limit: float, window: float) -> None:
        """Correct an earlier estimate by `delta` units (negative gives back)."""
        ...

    async def acquire_slot(self, key: str, limit: int, lease: str, ttl: float) -> bool: ...

    async def release_slot(self, key: str, lease: str) -> None: ...

    async def reserve(self, hold: Hold, limits: tuple[float, ...]) -> int:
        """Hold `hold.amount` on every key if, for each, spent + held + amount <= its
        limit; -1 when held, else the index of the first key that would go over."""
        ...

    async def spent(self, key: str) -> tuple[float, float]:
        """(spent, held) for one budget key."""
        ...

    async def settle(
        self, hold: Hold | None, rows: tuple[tuple[str, float], ...], usage: Usage
    ) -> None:
        """Release `hold` and add `usage` to each (row key, expires_at) in one step. A budget
        key is a usage row, so this is also what moves held money to spent."""
        ...

    async def once(self, key: str, ttl: float) -> bool:
        """True the first time `key` is seen within `ttl` (warnings sent once per window)."""
        ...

    async def usage(self, prefix: str) -> dict[str, dict[str, float]]:
        """Usage rows whose key starts with `prefix`, by key."""
        ...

    async def stick(self, key: str, level: int, ttl: float) -> int:
        """The highest of `level` and the level `key` holds (sticky conversations: the tier
        a conversation reached). A `level` at or above the held one is stored for `ttl`
        seconds from now; a lower one changes nothing, so the time runs from when the
        conversation last reached its level. -1 when nothing is held (and `level` < 0)."""
        ...

    # Quality (feedback, shadow trials): a short-lived index of recent answers, and rows
    # of counters whose fields the caller names.

    async def note(self, key: str, value: str, ttl: float) -> None:
        """Keep `value` under `key` for `ttl` seconds; a later note replaces it. An
        in-process store keeps at most `MAX_NOTES`, dropping the oldest first."""
        ...

    async def recall(self, key: str) -> str | None:
        """The value noted under `key`; None when there is none or it expired."""
        ...

    async def tally(self, key: str, fields: Mapping[str, float], expires_at: float) -> None:
        """Add each field's amount to the row `key` (absent fields start at 0), in one
        step, and keep the row until `expires_at` (unix time)."""
        ...

    async def tallies(self, prefix: str) -> dict[str, dict[str, float]]:
        """Tally rows whose key starts with `prefix`, by key, with the fields they have."""
        ...

    async def close(self) -> None: ...
