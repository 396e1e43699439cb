"""The live side of the policy in force: what a request runs on besides the policy itself.

A `Snapshot` is a compiled policy with the provider clients, state backend, stores and
telemetry it runs on. `Runtime` builds one for each policy the holder (policy/holder.py)
compiles, and owns the lifetimes of what it opens: a state backend a reload replaced closes
after the last request of the snapshots that use it; caches likewise (stores/caches.py);
provider clients when idle (providers/pool.py). The layers below it (policy, providers,
stores, telemetry) do not know of each other's lifetimes; the pipeline and the API above it
take `current` and keep that snapshot to the request's end.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sidecar.pipeline.pricing import cost_usd
from sidecar.policy.holder import PolicyHolder
from sidecar.policy.model import ClassifierSpec, Policy, StateConfig
from sidecar.policy.problems import PolicyInvalid, Problem
from sidecar.policy.schema import USAGE_SCOPES
from sidecar.providers.base import Provider
from sidecar.providers.pool import ProviderPool
from sidecar.stores import Stores, keys
from sidecar.stores.backends import apply_settings, open_state, same_store
from sidecar.stores.classifiers import Record
from sidecar.stores.holds import Closer, Holds
from sidecar.stores.state import LEVERS, State, StoreUnavailable, Usage
from sidecar.telemetry.recorder import Telemetry

log = logging.getLogger("sidecar.policy")


@dataclass(frozen=True, slots=True, weakref_slot=True)  # weakref: stores see it end
class Snapshot:
    policy: Policy
    providers: Mapping[str, Provider]
    loaded_at: float
    stores: Stores
    state: State
    telemetry: Telemetry

    @property
    def version(self) -> str:
        return self.policy.version


class Runtime:
    def __init__(
        self,
        folder: Path,
        env: Mapping[str, str] | None = None,
        state_dir: Path = Path("."),
        telemetry: Telemetry | None = None,
    ) -> None:
        self.telemetry = telemetry or Telemetry({})
        self.state_dir = state_dir
        self.policy: PolicyHolder[Snapshot] = PolicyHolder(folder, self._build, env)
        self.pool = ProviderPool()
        self.stores = Stores()
        self.stores.classifiers.folder = state_dir / "llm-sidecar-embeddings"
        self.telemetry.watch_circuits(self.stores.breakers)
        self.telemetry.watch_caches(self.stores.caches)
        self._state: tuple[StateConfig, State] | None = None
        # A state backend a reload replaced closes when its last snapshot ends.
        self._state_holds: Holds[State] = Holds(self._state_released)
        self._retired_states: set[State] = set()
        self._closer = Closer()

    @property
    def current(self) -> Snapshot | None:
        """The snapshot in force; a request takes it once and keeps it to its end."""
        return self.policy.current

    async def reload(self) -> bool:
        return await self.policy.reload()

    async def _build(self, policy: Policy) -> Snapshot:
        try:
            state = await self._state_for(policy.state)
        except StoreUnavailable as exc:
            raise PolicyInvalid([Problem("state", 0, str(exc))]) from None
        snapshot = Snapshot(
            policy,
            self.pool.materialize(policy.providers),
            time.time(),
            self.stores,
            state,
            self.telemetry,
        )
        self.stores.caches.hold(
            snapshot, (r.cache for r in policy.routes.values() if r.cache is not None)
        )
        self._state_holds.hold(snapshot, (state,))
        await self.stores.classifiers.update(policy, snapshot.providers, self._embedded(state))
        return snapshot

    def _embedded(self, state: State) -> Record:
        """How a tier classifier's examples are accounted when they are embedded: usage
        rows for the route and the embedding model (no request), their cost a negative
        `selection` lever, as a request's own classifier embedding is."""

        async def record(spec: ClassifierSpec, tokens: int) -> None:
            cost = cost_usd(spec.model.price, tokens, 0, 0)
            saved = tuple(-cost if lever == "selection" else 0.0 for lever in LEVERS)
            values = {"global": "*", "route": spec.route, "model": spec.model.name}
            now = time.time()
            rows = tuple(
                (key, expires)
                for scope in USAGE_SCOPES
                for window in keys.WINDOWS
                for key, _, expires in (keys.row(window, scope, values.get(scope, "(none)"), now),)
            )
            try:
                await state.settle(None, rows, Usage(0, tokens, 0, 0, cost, -cost, saved))
            except StoreUnavailable as exc:
                log.error("state store unavailable (%s): an embedding is not recorded", exc)
            attrs = {"sidecar.route": spec.route, "sidecar.model": spec.model.name}
            self.telemetry.cost.add(cost, attrs)
            self.telemetry.cost_saved.add(-cost, {**attrs, "sidecar.lever": "selection"})

        return record

    async def _state_for(self, config: StateConfig) -> State:
        """The state backend `config` asks for: the current one while it is the same store
        (`same_store`). A replaced one stays open for requests of older snapshots and closes
        after the last."""
        if self._state is not None and same_store(self._state[0], config):
            state = self._state[1]
            apply_settings(state, config)
            self._state = (config, state)
            return state
        state = await open_state(config, self.state_dir)
        if self._state is not None:
            self._retired_states.add(self._state[1])
            log.info("state backend changed: %s -> %s", self._state[0].backend, config.backend)
        self._state = (config, state)
        return state

    def _state_released(self, state: State) -> None:
        if state in self._retired_states:  # else it is current again, or not yet current
            self._retired_states.discard(state)
            self._closer.close_soon("state backend", state.close)

    def status(self) -> dict[str, Any]:
        body = self.policy.status()
        body["circuits"] = self.stores.breakers.describe()
        body["classifiers"] = self.stores.classifiers.describe()
        body["caches"] = self.stores.caches.agreements.describe()  # semantic verification
        return body

    async def refresh_budget_gauges(self) -> None:
        snap = self.current
        if snap is not None and snap.policy.budgets:
            await self.telemetry.budgets.refresh(snap.policy.budgets, snap.state)

    async def close(self) -> None:
        await self.stores.micro_batches.close()
        await self.stores.classifiers.close()
        await self.pool.close()
        await self.stores.caches.close()
        await self._closer.wait()
        for state in [*self._retired_states, *([self._state[1]] if self._state else [])]:
            try:
                await state.close()
            except StoreUnavailable as exc:
                log.error("state: closing failed (%s)", exc)
