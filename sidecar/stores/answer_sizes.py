"""How long each route's answers have been, to size budget holds by what answers really use.

A `reject` budget holds a request's worst case until its answer settles it. A request that
sets no `max_tokens` has no worst case short of the model's limit, and holding a flat 4096
output tokens refused small requests from budgets with plenty of room. Its hold uses a high
percentile of the route's recent answers instead, from this process's own answers (kept by
route name, so a reload keeps them; each replica learns from its own traffic).
"""

from __future__ import annotations

import math
from collections import deque

PERCENTILE = 0.95
KEPT = 200  # the most recent answers per route


class AnswerSizes:
    def __init__(self) -> None:
        self._recent: dict[str, deque[int]] = {}
        self._high: dict[str, int] = {}  # the percentile, until the next answer changes it

    def note(self, route: str, output_tokens: int) -> None:
        recent = self._recent.get(route)
        if recent is None:
            recent = self._recent[route] = deque(maxlen=KEPT)
        recent.append(output_tokens)
        self._high.pop(route, None)

    def high(self, route: str) -> int | None:
        """The route's 95th percentile of output tokens (nearest rank); None before it has
        answered once."""
        found = self._high.get(route)
        if found is None:
            recent = self._recent.get(route)
            if not recent:
                return None
            ranked = sorted(recent)
            found = self._high[route] = ranked[math.ceil(PERCENTILE * len(ranked)) - 1]
        return found
