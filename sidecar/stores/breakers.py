"""Circuit breakers, one per target (model), so a provider that fails hard stops costing
every request a timeout.

    closed ──(threshold reached)──▶ open ──(cooldown over)──▶ half-open ──(probe ok)──▶ closed
                                      ▲                            │
                                      └───────(probe failed)───────┘

Half-open lets exactly one probe through; everything else skips the target without a
network call. State is per process: each sidecar judges the providers by what it sees.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from sidecar.policy.model import Circuit

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"


class Breaker:
    __slots__ = ("calls", "consecutive", "cooldown", "opened_at", "probing", "state", "trips")

    def __init__(self) -> None:
        self.state = CLOSED
        self.consecutive = 0
        self.opened_at = 0.0
        self.cooldown = 0.0  # of the circuit that opened it, for `seen_at`
        self.probing = False
        self.calls: deque[tuple[float, bool]] = deque()  # (when, failed) inside the window
        self.trips = 0

    def allow(self, circuit: Circuit, now: float) -> bool:
        if self.state == CLOSED:
            return True
        if self.state == OPEN:
            if now - self.opened_at < circuit.cooldown:
                return False
            self.state = HALF_OPEN
        if self.probing:
            return False
        self.probing = True
        return True

    def record(self, circuit: Circuit, failed: bool | None, now: float) -> None:
        """`failed` None: the call was abandoned (cancelled), which says nothing either way."""
        was_probe = self.state == HALF_OPEN and self.probing
        if was_probe:
            self.probing = False
        if failed is None:
            return
        if was_probe:
            if failed:
                self._open(now, circuit)
            else:
                self._close()
            return
        if self.state != CLOSED:
            return  # a call that started before the circuit opened
        self.consecutive = self.consecutive + 1 if failed else 0
        if circuit.consecutive_failures and self.consecutive >= circuit.consecutive_failures:
            self._open(now, circuit)
            return
        if circuit.failure_ratio:
            calls = self.calls
            calls.append((now, failed))
            while calls and calls[0][0] < now - circuit.window:
                calls.popleft()
            if len(calls) >= circuit.min_calls:
                ratio = sum(1 for _, f in calls if f) / len(calls)
                if ratio >= circuit.failure_ratio:
                    self._open(now, circuit)

    def seen_at(self, now: float) -> str:
        """The state as the next request would find it: an open circuit whose cooldown is
        over is half-open (its next call is the probe), even before anyone calls."""
        if self.state == OPEN and now - self.opened_at >= self.cooldown:
            return HALF_OPEN
        return self.state

    def _open(self, now: float, circuit: Circuit) -> None:
        self.state = OPEN
        self.opened_at = now
        self.cooldown = circuit.cooldown
        self.trips += 1
        self.calls.clear()

    def _close(self) -> None:
        self.state = CLOSED
        self.consecutive = 0
        self.calls.clear()


class Breakers:
    def __init__(self) -> None:
        self._by_target: dict[str, Breaker] = {}

    def get(self, target: str) -> Breaker:
        breaker = self._by_target.get(target)
        if breaker is None:
            breaker = self._by_target[target] = Breaker()
        return breaker

    def describe(self) -> dict[str, Any]:
        now, wall = time.monotonic(), time.time()
        return {
            name: {
                "state": b.seen_at(now),
                "consecutive_failures": b.consecutive,
                "trips": b.trips,
                "opened_at": wall - (now - b.opened_at) if b.state != CLOSED else None,
                "half_open_at": (
                    wall - (now - b.opened_at) + b.cooldown if b.state != CLOSED else None
                ),
            }
            for name, b in sorted(self._by_target.items())
        }
