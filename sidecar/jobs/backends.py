"""Open the job queue backend a policy's `jobs:` section names (the seam is in queue.py).

Apart from the seam so that the backends, which import its shared types, are not imported
back by it: each backend is loaded only when a policy asks for it.
"""

from __future__ import annotations

from pathlib import Path

from sidecar.jobs.queue import JobQueue
from sidecar.policy.model import JobsConfig


async def open_queue(config: JobsConfig, state_dir: Path) -> JobQueue:
    if config.backend == "redis":
        assert config.url is not None
        from sidecar.jobs.queue_redis import RedisQueue  # the client only when used

        return await RedisQueue(config.url).open()
    from sidecar.jobs.queue_sqlite import SqliteQueue

    # Relative to --state-dir, like the state file: policies are often a read-only ConfigMap.
    return await SqliteQueue(state_dir / config.path).open()
