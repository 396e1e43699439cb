"""The answer caches of this process, one per cache policy (by name and settings, so a
reload that leaves a cache unchanged keeps its entries), in-flight misses for
single-flight coalescing, and the verification records of semantic caches.

A cache lives as long as some policy snapshot names it (`holds.py`): requests still
running on an older snapshot keep using theirs, and once no snapshot names a cache any
more it is closed (its Redis connections) and dropped (its memory).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from sidecar.policy.model import CachePolicy
from sidecar.stores.agreement import Agreements
from sidecar.stores.answers import Answers, MemoryAnswers
from sidecar.stores.holds import Closer, Holds

if TYPE_CHECKING:
    from sidecar.stores.semantic import SemanticIndex


Cache = tuple[Answers, "SemanticIndex | None"]


class Caches:
    def __init__(self) -> None:
        self._caches: dict[CachePolicy, Cache] = {}
        self._holds: Holds[CachePolicy] = Holds(self._drop)
        self._closer = Closer()
        self.flights: dict[str, asyncio.Future[Any]] = {}  # how each leader landed
        self.agreements = Agreements()  # semantic caches that verify: how their hits fare

    def hold(self, snapshot: object, policies: Iterable[CachePolicy]) -> None:
        """Keep the caches of `policies` while `snapshot` lives; let go of them after."""
        policies = list(policies)
        self._holds.hold(snapshot, policies)
        for policy in policies:  # on /status from the start, before any hit is verified
            self.agreements.of(policy)

    def _drop(self, policy: CachePolicy) -> None:
        cache = self._caches.pop(policy, None)
        self.agreements.drop(policy)
        if cache is not None:
            self._closer.close_soon("cache", lambda: _close(cache))

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
        await self._closer.wait()


async def _close(cache: Cache) -> None:
    answers, index = cache
    await answers.close()
    if index is not None:
        await index.close()
