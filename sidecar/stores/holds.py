"""Resources that live as long as some policy snapshot names them.

A reload swaps in a new snapshot while requests of older ones are still running, so what a
reload replaces (a cache with other settings, a state backend with another URL) cannot be
closed at the swap, and must not stay open for the life of the process either: every
GitOps edit would leave one behind. Each snapshot holds what it names; when the last
snapshot holding a thing ends (its last request done), `release` is called for it.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections import Counter
from collections.abc import Callable, Coroutine, Hashable, Iterable
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)


class Holds(Generic[K]):
    def __init__(self, release: Callable[[K], None]) -> None:
        self._release = release
        self._count: Counter[K] = Counter()

    def hold(self, snapshot: object, keys: Iterable[K]) -> None:
        held = tuple(set(keys))
        self._count.update(held)
        weakref.finalize(snapshot, self._let_go, held).atexit = False

    def _let_go(self, keys: tuple[K, ...]) -> None:
        for key in keys:
            self._count[key] -= 1
            if self._count[key] <= 0:
                del self._count[key]
                self._release(key)


class Closer:
    """Runs closings in the background and waits for them at shutdown."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def close_soon(self, what: str, closing: Callable[[], Coroutine[Any, Any, None]]) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop: the process is ending and takes the connections with it
        task = loop.create_task(_logged(what, closing))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def wait(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


async def _logged(what: str, closing: Callable[[], Coroutine[Any, Any, None]]) -> None:
    try:
        await closing()
    except Exception as exc:  # one that cannot close cleanly must not take others along
        log.warning("closing a retired %s failed (%s)", what, exc.__class__.__name__)
