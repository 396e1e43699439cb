"""Build the state backend a policy's `state:` section names."""

from __future__ import annotations

from pathlib import Path

from sidecar.policy.model import StateConfig
from sidecar.stores.memory import MemoryState
from sidecar.stores.sqlite import SqliteState
from sidecar.stores.state import State


def same_store(a: StateConfig, b: StateConfig) -> bool:
    """Whether `b` names the store `a` opened: then a reload keeps it, with what it counted
    (a new one would reset memory, or put a second writer on one SQLite file)."""
    if a.backend != b.backend:
        return False
    if a.backend == "sqlite":
        return a.path == b.path
    return a.backend == "memory" or a.url == b.url


def apply_settings(state: State, config: StateConfig) -> None:
    """The settings a running store takes from an edited policy (`on_error` is read from
    the snapshot, not the store)."""
    if isinstance(state, SqliteState):
        state.flush_interval = config.flush_interval  # read at every flush


async def open_state(config: StateConfig, state_dir: Path) -> State:
    if config.backend == "memory":
        return MemoryState()
    if config.backend == "redis":
        assert config.url is not None
        from sidecar.stores.redis_backend import RedisState  # the client only when used

        return RedisState(config.url)
    # A relative path is under the sidecar's state folder (--state-dir): never next to the
    # policies, which are often a read-only ConfigMap.
    return await SqliteState(state_dir / config.path, config.flush_interval).open()
