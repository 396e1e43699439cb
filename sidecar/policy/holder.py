"""The one reference to the policy in force, and how a reload replaces it.

A reload reads and compiles off the event loop, builds the runtime `Snapshot` (compiled
policy plus live provider clients), then swaps `current` in one assignment. A request takes
`current` once and keeps that snapshot to its end, so a reload never changes a request
half-way. A reload that fails changes nothing but `status`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sidecar.policy.compile import compile_sources
from sidecar.policy.model import Policy, StateConfig
from sidecar.policy.problems import PolicyInvalid, Problem
from sidecar.policy.source import SourceFile, content_hash, read_folder
from sidecar.providers.base import Provider
from sidecar.providers.pool import ProviderPool
from sidecar.stores import Stores
from sidecar.stores.backends import apply_settings, open_state, same_store
from sidecar.stores.holds import Closer, Holds
from sidecar.stores.state import State, StoreUnavailable
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


@dataclass(slots=True)
class ReloadStatus:
    at: float | None = None
    ok: bool = False
    version: str | None = None  # of what was tried
    problems: list[Problem] = field(default_factory=list)
    reloads: int = 0
    failures: int = 0


class PolicyHolder:
    def __init__(
        self,
        folder: Path,
        env: Mapping[str, str] | None = None,
        state_dir: Path = Path("."),
        telemetry: Telemetry | None = None,
    ) -> None:
        self.folder = folder
        self.telemetry = telemetry or Telemetry({})
        self.state_dir = state_dir
        self.env = env if env is not None else os.environ
        self.current: Snapshot | None = None
        self.last = ReloadStatus()
        self.pool = ProviderPool()
        self.stores = Stores()
        self.telemetry.watch_circuits(self.stores.breakers)
        self._state: tuple[StateConfig, State] | None = None
        # A state backend a reload replaced closes when its last snapshot ends.
        self._state_holds: Holds[State] = Holds(self._state_released)
        self._retired_states: set[State] = set()
        self._closer = Closer()
        self._tried: str | None = None
        self._lock = asyncio.Lock()

    async def reload(self) -> bool:
        """Re-read the folder; swap in its policy if it changed and compiles. True if swapped."""
        async with self._lock:
            files = await asyncio.to_thread(self._read)
            version = content_hash(files) if files is not None else None
            if version is not None and version == self._tried:
                return False  # same content as the last attempt: nothing to do
            self._tried = version
            try:
                if files is None:
                    raise PolicyInvalid(
                        [Problem(str(self.folder), 0, "policy folder does not exist")]
                    )
                policy = await asyncio.to_thread(compile_sources, files, self.env)
            except PolicyInvalid as exc:
                self._failed(version, exc.problems)
                return False
            try:
                state = await self._state_for(policy.state)
            except StoreUnavailable as exc:
                self._failed(version, [Problem("state", 0, str(exc))])
                return False
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
            previous = self.current
            self.current = snapshot
            self.last = ReloadStatus(
                time.time(), True, policy.version, [], self.last.reloads + 1, self.last.failures
            )
            log.info(
                "policy %s loaded from %d file(s)%s",
                policy.version,
                len(policy.files),
                f" (was {previous.version})" if previous else "",
            )
            return True

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

    def _read(self) -> list[SourceFile] | None:
        return read_folder(self.folder) if self.folder.is_dir() else None

    def _failed(self, version: str | None, problems: list[Problem]) -> None:
        self.last = ReloadStatus(
            time.time(), False, version, problems, self.last.reloads + 1, self.last.failures + 1
        )
        keeping = f"; still serving {self.current.version}" if self.current else ""
        log.error("policy rejected%s:\n  %s", keeping, "\n  ".join(str(p) for p in problems))

    def status(self) -> dict[str, Any]:
        snap = self.current
        return {
            "ready": snap is not None,
            "policy": {
                "version": snap.version if snap else None,
                "folder": str(self.folder),
                "files": list(snap.policy.files) if snap else [],
                "loaded_at": snap.loaded_at if snap else None,
                "routes": sorted(snap.policy.routes) if snap else [],
            },
            "last_reload": {
                "at": self.last.at,
                "ok": self.last.ok,
                "version": self.last.version,
                "errors": [str(p) for p in self.last.problems],
                "reloads": self.last.reloads,
                "failures": self.last.failures,
            },
            "circuits": self.stores.breakers.describe(),
        }

    async def refresh_budget_gauges(self) -> None:
        snap = self.current
        if snap is not None and snap.policy.budgets:
            await self.telemetry.budgets.refresh(snap.policy.budgets, snap.state)

    async def close(self) -> None:
        await self.pool.close()
        await self.stores.caches.close()
        await self._closer.wait()
        for state in [*self._retired_states, *([self._state[1]] if self._state else [])]:
            try:
                await state.close()
            except StoreUnavailable as exc:
                log.error("state: closing failed (%s)", exc)
