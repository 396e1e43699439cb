"""Where cached answers live: in this process (cachetools, bounded by entries or bytes,
with a TTL) or in Redis (shared by every sidecar; bounded by the server's maxmemory)."""

from __future__ import annotations

from typing import Protocol

from cachetools import TTLCache


class Answers(Protocol):
    async def get(self, key: str) -> bytes | None: ...

    async def put(self, key: str, value: bytes, ttl: float) -> None: ...

    async def purge(self, prefix: str) -> int: ...

    async def close(self) -> None: ...


class MemoryAnswers:
    def __init__(self, ttl: float, max_entries: int, max_bytes: int | None) -> None:
        if max_bytes is not None:
            self._cache: TTLCache[str, bytes] = TTLCache(max_bytes, ttl, getsizeof=len)
        else:
            self._cache = TTLCache(max_entries, ttl)
        self.max_bytes = max_bytes

    async def get(self, key: str) -> bytes | None:
        return self._cache.get(key)

    async def put(self, key: str, value: bytes, ttl: float) -> None:
        if self.max_bytes is not None and len(value) > self.max_bytes:
            return  # larger than the whole cache
        self._cache[key] = value

    async def purge(self, prefix: str) -> int:
        doomed = [k for k in list(self._cache.keys()) if k.startswith(prefix)]
        for k in doomed:
            self._cache.pop(k, None)
        return len(doomed)

    async def close(self) -> None:
        return None
