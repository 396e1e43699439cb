"""Lines of provider batches as gauges: how many wait to be submitted (`deferred`) or are
at a provider (`submitted`), and how long the oldest of each has waited.

They are the queue's numbers, not this process's: the submitter (jobs/provider_batches.py)
reads them from the queue store on each of its ticks, and the callbacks, which run on the
exporter's thread and cannot await a store, report the last reading. Every replica that
runs workers reports the same queue: aggregate them with max, not sum.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from opentelemetry.metrics import CallbackOptions, Observation

STATES = ("deferred", "submitted")


class LineGauges:
    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self._oldest: dict[str, float | None] = {}  # unix time the oldest line entered

    def update(
        self,
        *,
        deferred: tuple[int, float | None],
        submitted: tuple[int, float | None],
    ) -> None:
        for state, (count, oldest) in zip(STATES, (deferred, submitted), strict=True):
            self._counts[state] = count
            self._oldest[state] = oldest

    def observe_count(self, options: CallbackOptions) -> Iterator[Observation]:
        for state, count in self._counts.items():
            yield Observation(count, {"state": state})

    def observe_age(self, options: CallbackOptions) -> Iterator[Observation]:
        now = time.time()
        for state, oldest in self._oldest.items():
            yield Observation(
                max(0.0, now - oldest) if oldest is not None else 0.0, {"state": state}
            )
