"""Requests still settling: the work after an answer (slots back, the answer cached, usage
and spend recorded) runs as tasks kept here, not in the request's handler.

aiohttp cancels a handler when its client disconnects (deliberately: an app that gives up
must free its slot at once), and a client that closes right after reading would otherwise
cancel the accounting of an answer it already has: usage lost, budget holds left standing
until they expire. A task here is not the handler's, so nothing the client does reaches
it; shutdown waits for what is left (`drain`) before the stores close.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger("sidecar.account")


class Settlements:
    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def start(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run `work` to its end whatever happens to the caller: await the task through
        `asyncio.shield` to wait for it without being able to cancel it."""
        task = asyncio.get_running_loop().create_task(_logged(work))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def drain(self, grace: float) -> None:
        """At shutdown, after the listeners stopped: give what is still settling `grace`
        seconds; what is left then is cancelled, and said so."""
        left = await cancel_after(self._tasks, grace)
        if left:
            log.error(
                "%d request(s) still settling after %gs at shutdown: their usage and spend "
                "are not recorded",
                left,
                grace,
            )


async def cancel_after(tasks: set[asyncio.Task[None]], grace: float) -> int:
    """Wait up to `grace` seconds for `tasks` (a set their tasks leave when done, tasks
    started meanwhile included); cancel those still running then, and wait for them to
    end. Returns how many were cancelled."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    while tasks and loop.time() < deadline:
        await asyncio.wait(set(tasks), timeout=deadline - loop.time())
    left = set(tasks)
    for task in left:
        task.cancel()
    await asyncio.gather(*left, return_exceptions=True)
    return len(left)


async def _logged(work: Coroutine[Any, Any, None]) -> None:
    try:
        await work
    except Exception:  # a bug here must not pass silently: the books are off
        log.exception("settling a request failed: its usage or spend may not be recorded")
