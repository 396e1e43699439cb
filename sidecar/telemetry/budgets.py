"""Budget spend and room left as gauges, for dashboards and alerts before a budget bites.

Spend lives in the state store (shared by every replica on Redis), and a metric callback
runs on the exporter's thread, where it cannot await a store. So the request path only
notes which budget scope values it served (a dict lookup), and `refresh`, run in the
background and before `/stats`, reads their spend; the callbacks report the last reading.

Cardinality stays bounded: a budget reports at most `telemetry.max_users` scope values per
window, and values of a `user`-scoped budget only when `telemetry.user_attribute` allows
users as metric attributes (the usage API is the exact record for everyone).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from opentelemetry.metrics import CallbackOptions, Observation

from sidecar.policy.model import Budget, TelemetryConfig
from sidecar.stores import keys
from sidecar.stores.state import State, StoreUnavailable

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Reading:
    spent: float
    remaining: float


class BudgetGauges:
    def __init__(self) -> None:
        # budget name -> scope value -> end of the window it was seen in
        self._seen: dict[str, dict[str, float]] = {}
        self._readings: dict[tuple[str, str, str, str], _Reading] = {}

    def seen(self, budget: Budget, value: str, window_end: float, config: TelemetryConfig) -> None:
        """Called by admission for each budget a request falls under."""
        if budget.scope == "user" and not config.user_attribute:
            return
        values = self._seen.setdefault(budget.name, {})
        if value in values or len(values) < config.max_users:
            values[value] = window_end

    async def refresh(self, budgets: Mapping[str, Budget], state: State) -> None:
        now = time.time()
        readings: dict[tuple[str, str, str, str], _Reading] = {}
        for name in list(self._seen):
            budget = budgets.get(name)
            if budget is None:  # gone from the policy
                del self._seen[name]
                continue
            values = self._seen[name]
            for value, end in list(values.items()):
                if end <= now:  # its window is over: a new one starts when next seen
                    del values[value]
                    continue
                key, _, _ = keys.row(budget.window, budget.scope, value, now)
                try:
                    spent, held = await state.spent(key)
                except StoreUnavailable as exc:
                    log.debug("budget gauges: state unavailable (%s); keeping old readings", exc)
                    return
                remaining = max(0.0, budget.limit_usd - spent - held)
                labels = (budget.name, budget.scope, budget.window, value)
                readings[labels] = _Reading(spent, remaining)
        self._readings = readings

    def observe_spend(self, options: CallbackOptions) -> Iterator[Observation]:
        for labels, reading in list(self._readings.items()):
            yield Observation(reading.spent, _attributes(labels))

    def observe_remaining(self, options: CallbackOptions) -> Iterator[Observation]:
        for labels, reading in list(self._readings.items()):
            yield Observation(reading.remaining, _attributes(labels))


def _attributes(labels: tuple[str, str, str, str]) -> dict[str, str]:
    name, scope, window, value = labels
    return {
        "sidecar.budget": name,
        "sidecar.budget.scope": scope,
        "sidecar.budget.window": window,
        "sidecar.budget.scope_value": value,
    }
