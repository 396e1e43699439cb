"""The answer caches of this process, one per cache policy (by name and settings, so a
reload that leaves a cache unchanged keeps its entries), and in-flight misses for
single-flight coalescing.

A cache lives as long as some policy snapshot names it: requests still running on an
older snapshot keep using theirs, and once no snapshot names a cache any more it is closed
(its Redis connections) and dropped (its memory). Without that, every GitOps edit of a
cache's settings left the old cache behind for the life of the process.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING

from sidecar.policy.model import CachePolicy
from sidecar.stores.answers import Answers, MemoryAnswers

if TYPE_CHECKING:
    from sidecar.stores.semantic import SemanticIndex


log = logging.getLogger(__name__)

Cache = tuple[Answers, "SemanticIndex | None"]


class Caches:
    def __init__(self) -> None:
        self._caches: dict[CachePolicy, Cache] = {}
        self._holders: Counter[CachePolicy] = Counter()  # live snapshots naming each policy
        self._closing: set[asyncio.Task[None]] = set()
        self.flights: dict[str, asyncio.Future[None]] = {}

    def hold(self, snapshot: object, policies: Iterable[CachePolicy]) -> None:
        """Keep the caches of `policies` while `snapshot` lives; let go of them after."""
        held = tuple(set(policies))
        self._holders.update(held)
        weakref.finalize(snapshot, self._let_go, held).atexit = False

    def _let_go(self, policies: tuple[CachePolicy, ...]) -> None:
        for policy in policies:
            self._holders[policy] -= 1
            if self._holders[policy] > 0:
                continue
            del self._holders[policy]
            cache = self._caches.pop(policy, None)
            if cache is not None:
                self._close_soon(cache)

    def _close_soon(self, cache: Cache) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop: the process is ending and takes the connections with it
        task = loop.create_task(_close(cache))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def get(self, policy: CachePolicy) -> Cache:
        found = self._caches.get(policy)
        if found is None:
            url = policy.url if policy.store == "redis" else None
            answers: Answers
            if url:
                from sidecar.stores.answers_redis import RedisAnswers  # the client only when used

                answers = RedisAnswers(url)
            else:
                answers = MemoryAnswers(policy.ttl, policy.max_entries, policy.max_bytes)
            index = None
            if policy.semantic:
                # numpy and usearch cost ~20 MB of RSS: loaded only when a policy needs them.
                from sidecar.stores.semantic import SemanticIndex

                index = SemanticIndex(url, max_entries=policy.max_entries)
            found = self._caches[policy] = (answers, index)
        return found

    def by_name(self, name: str) -> list[Cache]:
        return [c for p, c in self._caches.items() if p.name == name]

    async def close(self) -> None:
        for cache in self._caches.values():
            await _close(cache)
        self._caches.clear()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)


async def _close(cache: Cache) -> None:
    answers, index = cache
    try:
        await answers.close()
        if index is not None:
            await index.close()
    except Exception as exc:  # a cache that cannot close cleanly must not take others along
        log.warning("closing a retired cache failed (%s)", exc.__class__.__name__)
