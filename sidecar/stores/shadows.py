"""Shadow calls in flight (sidecar/shadow): detached from the request that sampled them,
bounded per route, and never in the way of shutdown.

A shadow call runs after its request's answer went out, as a task of its own: nothing the
app does reaches it, and it delays nothing of the app's. Each route runs at most its
`shadow.max_concurrent` at once in this process; a sampled request beyond that is skipped
(a trial needs samples, not all of them). A route whose daily spend limit was found full
is not asked again for a minute (`pause`), so a trial over its limit costs the state store
nothing per request. At shutdown no new one starts, and those still running get a short
grace, then are cancelled: a trial's sample is worth less than a prompt exit.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import Any

from sidecar.stores.settlements import cancel_after

log = logging.getLogger("sidecar.shadow")


class Shadows:
    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()
        self._running: dict[str, int] = {}
        self._paused: dict[str, float] = {}  # route → until when (monotonic)
        self.closed = False

    def running(self, route: str) -> int:
        return self._running.get(route, 0)

    def paused(self, route: str) -> bool:
        until = self._paused.get(route)
        return until is not None and time.monotonic() < until

    def pause(self, route: str, seconds: float) -> None:
        self._paused[route] = time.monotonic() + seconds

    def start(self, route: str, limit: int, work: Coroutine[Any, Any, None]) -> bool:
        """Run `work` unless the route has `limit` running (or shutdown began): False
        then, and `work` is closed unrun."""
        if self.closed or self._running.get(route, 0) >= limit:
            work.close()
            return False
        self._running[route] = self._running.get(route, 0) + 1
        task = asyncio.get_running_loop().create_task(_logged(work))
        self._tasks.add(task)

        def done(task: asyncio.Task[None]) -> None:
            self._tasks.discard(task)
            left = self._running.get(route, 1) - 1
            if left:
                self._running[route] = left
            else:
                self._running.pop(route, None)

        task.add_done_callback(done)
        return True

    async def drain(self, grace: float) -> None:
        """Start no more; give those running `grace` seconds, then cancel them (each
        gives its spend hold back as it ends)."""
        self.closed = True
        cancelled = await cancel_after(self._tasks, grace)
        if cancelled:
            log.info("%d shadow call(s) cancelled at shutdown", cancelled)


async def _logged(work: Coroutine[Any, Any, None]) -> None:
    try:
        await work
    except Exception:  # a trial's bug must not pass silently, nor reach anything else
        log.exception("a shadow call failed")
