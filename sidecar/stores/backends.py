"""Build the state backend a policy's `state:` section names."""

from __future__ import annotations

from pathlib import Path

from sidecar.policy.model import StateConfig
from sidecar.stores.memory import MemoryState
from sidecar.stores.sqlite import SqliteState
from sidecar.stores.state import State


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
