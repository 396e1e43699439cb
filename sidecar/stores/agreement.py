"""How often a semantic cache's hits agree with what the upstream answers now, and how
far its hits may reach because of it: one record per cache with `verify_sample`.

Verification (pipeline/verify.py) asks the upstream again for a sampled share of semantic
hits, after the app has its answer, and notes here whether the two answers agree and how
similar the hit's prompt was. Over the last `window` checks, agreement below
`min_agreement` is logged as a warning and, with `on_low_agreement: tighten`, raises the
cache's effective similarity to the lowest threshold at which the checks in the window
would have agreed often enough: hits below it become misses. When agreement in the window
is back above the bar (the disagreements aged out), the policy's own similarity applies
again, and hits below the raised threshold are sampled anew; if they still disagree, the
threshold rises again. Per process: each replica measures its own hits.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any

from sidecar.policy.model import CachePolicy, Verify

log = logging.getLogger("sidecar.cache")

OFF = 1.01  # above any cosine similarity: no semantic hits until agreement recovers


class Agreement:
    def __init__(self, name: str, similarity: float, verify: Verify) -> None:
        self.name = name
        self.floor = similarity  # the policy's own threshold
        self.verify = verify
        self.threshold = similarity  # the effective one
        self.checks: deque[tuple[float, bool]] = deque(maxlen=verify.window)
        self.checked = 0  # since this cache was opened, errors not counted
        self.agreed = 0
        self.failed = 0  # checks that could not be made (the upstream failed)
        self.low = False

    @property
    def rate(self) -> float | None:
        """Agreement over the window."""
        if not self.checks:
            return None
        return sum(ok for _, ok in self.checks) / len(self.checks)

    def note(self, similarity: float, agreed: bool) -> None:
        self.checks.append((similarity, agreed))
        self.checked += 1
        self.agreed += agreed
        rate = self.rate
        assert rate is not None
        if len(self.checks) < min(self.verify.window, 10):
            return
        low = rate < self.verify.min_agreement
        threshold = self.floor
        if low and self.verify.tighten:
            threshold = max(self.floor, _reach(self.checks, self.verify.min_agreement))
        if low and (not self.low or threshold != self.threshold):
            log.warning(
                "semantic cache %s: %.0f%% of the last %d verified hits agree with the "
                "upstream (min_agreement %.0f%%); %s",
                self.name,
                100 * rate,
                len(self.checks),
                100 * self.verify.min_agreement,
                f"similarity raised to {threshold:.4f}"
                if threshold != self.floor
                else "tightening is off (on_low_agreement: alert)",
            )
        elif self.low and not low:
            log.warning("semantic cache %s: agreement back at %.0f%%", self.name, 100 * rate)
        self.low, self.threshold = low, threshold

    def describe(self) -> dict[str, Any]:
        rate = self.rate
        return {
            "similarity": self.floor,
            "effective_similarity": self.threshold,
            "agreement": None if rate is None else round(rate, 4),
            "window": len(self.checks),
            "min_agreement": self.verify.min_agreement,
            "below_min_agreement": self.low,
            "verified": self.checked,
            "agreed": self.agreed,
            "failed": self.failed,
        }


def _reach(checks: deque[tuple[float, bool]], wanted: float) -> float:
    """The lowest similarity s such that the checks at s or above agree at least `wanted`
    of the time (disagreements first among equals); OFF when no such s exists."""
    best = OFF
    agreed = 0
    for seen, (similarity, ok) in enumerate(sorted(checks, key=lambda c: (-c[0], c[1])), 1):
        agreed += ok
        if agreed / seen >= wanted:
            best = similarity
    return best


class Agreements:
    """The records of the caches that verify, by policy (a reload that changes the cache
    starts a new record, as it starts a new cache)."""

    def __init__(self) -> None:
        self._by: dict[CachePolicy, Agreement] = {}

    def of(self, policy: CachePolicy) -> Agreement | None:
        if policy.verify is None:
            return None
        found = self._by.get(policy)
        if found is None:
            found = self._by[policy] = Agreement(policy.name, policy.similarity, policy.verify)
        return found

    def threshold(self, policy: CachePolicy) -> float:
        """The similarity a semantic hit needs now."""
        found = self._by.get(policy)
        return policy.similarity if found is None else found.threshold

    def drop(self, policy: CachePolicy) -> None:
        self._by.pop(policy, None)

    def describe(self) -> dict[str, dict[str, Any]]:
        return {a.name: a.describe() for a in self._by.values()}
