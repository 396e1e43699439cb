"""The answer caches of this process, one per cache policy (by name and settings, so a
reload that leaves a cache unchanged keeps its entries), and in-flight misses for
single-flight coalescing."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from sidecar.policy.model import CachePolicy
from sidecar.stores.answers import Answers, MemoryAnswers

if TYPE_CHECKING:
    from sidecar.stores.semantic import SemanticIndex


class Caches:
    def __init__(self) -> None:
        self._caches: dict[CachePolicy, tuple[Answers, SemanticIndex | None]] = {}
        self.flights: dict[str, asyncio.Future[None]] = {}

    def get(self, policy: CachePolicy) -> tuple[Answers, SemanticIndex | None]:
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

    def by_name(self, name: str) -> list[tuple[Answers, SemanticIndex | None]]:
        return [c for p, c in self._caches.items() if p.name == name]

    async def close(self) -> None:
        for answers, index in self._caches.values():
            await answers.close()
            if index is not None:
                await index.close()
        self._caches.clear()
