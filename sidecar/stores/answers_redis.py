"""Cached answers in Redis, shared by every sidecar (bounded by the server's maxmemory)."""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from sidecar.stores.state import StoreUnavailable


class RedisAnswers:
    def __init__(self, url: str, prefix: str = "llm-sidecar:") -> None:
        self.prefix = prefix
        self.redis = aioredis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)

    async def get(self, key: str) -> bytes | None:
        try:
            value = await self.redis.get(self.prefix + key)
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"cache: {exc.__class__.__name__}") from None
        return value if isinstance(value, bytes) else None

    async def put(self, key: str, value: bytes, ttl: float) -> None:
        try:
            await self.redis.set(self.prefix + key, value, px=max(1, int(ttl * 1000)))
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"cache: {exc.__class__.__name__}") from None

    async def purge(self, prefix: str) -> int:
        n = 0
        try:
            async for key in self.redis.scan_iter(match=self.prefix + prefix + "*", count=500):
                n += await self.redis.unlink(key)
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"cache: {exc.__class__.__name__}") from None
        return n

    async def close(self) -> None:
        await self.redis.aclose()
