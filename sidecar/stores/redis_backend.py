"""State shared by every sidecar, on a plain Redis 7 server (no modules).

Each check-and-update is one Lua script, so it is atomic across processes; the clock is
Redis's own (`TIME`), so replicas with skewed clocks still agree. Rate state is one key per
limit value (GCRA); slots are a sorted set of leases that expire if their holder dies;
holds are a hash per budget key whose entries expire the same way.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from sidecar.stores.state import Hold, StoreUnavailable, Usage

T = TypeVar("T")

_NOW = "local t = redis.call('TIME'); local now = tonumber(t[1]) + tonumber(t[2]) / 1000000\n"

_TAKE_RATE = (
    _NOW
    + """
local cost, limit, window = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new = tat + cost * window / limit
local over = new - now - window
if over > 1e-9 then return tostring(over) end
redis.call('SET', KEYS[1], tostring(new), 'PX', math.ceil((new - now) * 1000) + 1000)
return '0'
"""
)

_ADJUST_RATE = (
    _NOW
    + """
local delta, limit, window = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new = tat + delta * window / limit
if new <= now then redis.call('DEL', KEYS[1]) return 0 end
redis.call('SET', KEYS[1], tostring(new), 'PX', math.ceil((new - now) * 1000) + 1000)
return 0
"""
)

_ACQUIRE_SLOT = (
    _NOW
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], math.ceil(tonumber(ARGV[3]) * 1000) + 1000)
return 1
"""
)

# KEYS: row1, holds1, row2, holds2, ...   ARGV: id, amount, expires_at, limit1, limit2, ...
_RESERVE = (
    _NOW
    + """
local id, amount, expires = ARGV[1], tonumber(ARGV[2]), ARGV[3]
for i = 1, #KEYS, 2 do
  local spent = tonumber(redis.call('HGET', KEYS[i], 'cost_usd') or '0')
  local held = 0
  local entries = redis.call('HGETALL', KEYS[i + 1])
  for j = 1, #entries, 2 do
    local sep = string.find(entries[j + 1], '|', 1, true)
    local amt = tonumber(string.sub(entries[j + 1], 1, sep - 1))
    local exp = tonumber(string.sub(entries[j + 1], sep + 1))
    if exp <= now then redis.call('HDEL', KEYS[i + 1], entries[j]) else held = held + amt end
  end
  if spent + held + amount > tonumber(ARGV[3 + (i + 1) / 2]) + 1e-12 then return (i - 1) / 2 end
end
for i = 1, #KEYS, 2 do
  redis.call('HSET', KEYS[i + 1], id, tostring(amount) .. '|' .. expires)
  redis.call('EXPIREAT', KEYS[i + 1], math.ceil(tonumber(expires)) + 60)
end
return -1
"""
)

# KEYS: holds keys (n), then row keys.  ARGV: id, n, then one value per usage field (in
# Usage.FIELDS order), then row expiries.
_SETTLE = """
local id, n = ARGV[1], tonumber(ARGV[2])
for i = 1, n do redis.call('HDEL', KEYS[i], id) end
local fields = {FIELDS}
local nf = #fields
for i = n + 1, #KEYS do
  for f = 1, nf do
    local v = ARGV[2 + f]
    if v ~= '0' then redis.call('HINCRBYFLOAT', KEYS[i], fields[f], v) end
  end
  redis.call('EXPIREAT', KEYS[i], ARGV[2 + nf + i - n])
end
return 0
""".replace("FIELDS", ", ".join(f"'{f}'" for f in Usage.FIELDS))


# KEYS: the sticky key. ARGV: level, ttl (ms). Stores the level with a fresh TTL when it is
# at or above the one held; returns the higher of the two.
_STICK = """
local held = tonumber(redis.call('GET', KEYS[1]) or '-1')
local level = tonumber(ARGV[1])
if level >= held and level >= 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return level
end
return held
"""


# KEYS: the row.  ARGV: expires_at, then field, amount pairs.
_TALLY = """
for i = 2, #ARGV, 2 do redis.call('HINCRBYFLOAT', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('EXPIREAT', KEYS[1], ARGV[1])
return 0
"""


def _holds(key: str) -> str:
    return f"h:{key}"


class RedisState:
    def __init__(self, url: str, prefix: str = "llm-sidecar:") -> None:
        self.url = url
        self.prefix = prefix
        self._redis = aioredis.from_url(
            url, socket_timeout=1.0, socket_connect_timeout=1.0, decode_responses=True
        )
        r = self._redis
        self._take = r.register_script(_TAKE_RATE)
        self._adjust = r.register_script(_ADJUST_RATE)
        self._acquire = r.register_script(_ACQUIRE_SLOT)
        self._reserve = r.register_script(_RESERVE)
        self._settle = r.register_script(_SETTLE)
        self._stick = r.register_script(_STICK)
        self._tally = r.register_script(_TALLY)

    def _k(self, key: str) -> str:
        return self.prefix + key

    async def _call(self, op: Callable[[], Awaitable[T]]) -> T:
        try:
            return await op()
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(
                f"redis at {_where(self.url)}: {exc.__class__.__name__}"
            ) from None

    async def take_rate(self, key: str, cost: float, limit: float, window: float) -> float:
        result = await self._call(
            lambda: self._take(keys=[self._k(key)], args=[cost, limit, window])
        )
        return float(result)

    async def adjust_rate(self, key: str, delta: float, limit: float, window: float) -> None:
        await self._call(lambda: self._adjust(keys=[self._k(key)], args=[delta, limit, window]))

    async def acquire_slot(self, key: str, limit: int, lease: str, ttl: float) -> bool:
        got = await self._call(lambda: self._acquire(keys=[self._k(key)], args=[lease, limit, ttl]))
        return bool(int(got))

    async def release_slot(self, key: str, lease: str) -> None:
        await self._call(lambda: self._redis.zrem(self._k(key), lease))

    async def reserve(self, hold: Hold, limits: tuple[float, ...]) -> int:
        keys: list[str] = []
        for key in hold.keys:
            keys += [self._k(key), self._k(_holds(key))]
        args = [hold.id, repr(hold.amount), repr(hold.expires_at), *map(repr, limits)]
        return int(await self._call(lambda: self._reserve(keys=keys, args=args)))

    async def spent(self, key: str) -> tuple[float, float]:
        async def read() -> tuple[Any, Any, Any]:
            pipe = self._redis.pipeline(transaction=False)
            pipe.hget(self._k(key), "cost_usd")
            pipe.hgetall(self._k(_holds(key)))
            pipe.time()
            return tuple(await pipe.execute())  # type: ignore[return-value]

        spent, holds, (secs, micros) = await self._call(read)
        now = secs + micros / 1e6  # Redis's clock, as the scripts use: expired holds don't count
        amounts = (v.split("|") for v in (holds or {}).values())
        held = sum(float(amount) for amount, expires in amounts if float(expires) > now)
        return float(spent or 0.0), held

    async def settle(
        self, hold: Hold | None, rows: tuple[tuple[str, float], ...], usage: Usage
    ) -> None:
        hold_keys = [self._k(_holds(k)) for k in hold.keys] if hold else []
        keys = hold_keys + [self._k(k) for k, _ in rows]
        values = [repr(v) if v else "0" for v in usage.values()]
        args = [hold.id if hold else "", len(hold_keys), *values, *(int(exp) for _, exp in rows)]
        await self._call(lambda: self._settle(keys=keys, args=args))

    async def once(self, key: str, ttl: float) -> bool:
        got = await self._call(
            lambda: self._redis.set(self._k(key), "1", nx=True, px=int(ttl * 1000))
        )
        return bool(got)

    async def stick(self, key: str, level: int, ttl: float) -> int:
        args = [level, max(1, int(ttl * 1000))]
        return int(await self._call(lambda: self._stick(keys=[self._k(key)], args=args)))

    async def usage(self, prefix: str) -> dict[str, dict[str, float]]:
        async def scan() -> dict[str, dict[str, float]]:
            out: dict[str, dict[str, float]] = {}
            async for full in self._redis.scan_iter(match=self._k(prefix) + "*", count=500):
                row = await self._redis.hgetall(full)
                out[full[len(self.prefix) :]] = {f: float(row.get(f, 0.0)) for f in Usage.FIELDS}
            return out

        return await self._call(scan)

    async def note(self, key: str, value: str, ttl: float) -> None:
        px = max(1, int(ttl * 1000))
        await self._call(lambda: self._redis.set(self._k(key), value, px=px))

    async def recall(self, key: str) -> str | None:
        found = await self._call(lambda: self._redis.get(self._k(key)))
        return None if found is None else str(found)

    async def tally(self, key: str, fields: Mapping[str, float], expires_at: float) -> None:
        args: list[Any] = [int(expires_at)]
        for name, amount in fields.items():
            args += [name, repr(float(amount))]
        await self._call(lambda: self._tally(keys=[self._k(key)], args=args))

    async def tallies(self, prefix: str) -> dict[str, dict[str, float]]:
        async def scan() -> dict[str, dict[str, float]]:
            out: dict[str, dict[str, float]] = {}
            async for full in self._redis.scan_iter(match=self._k(prefix) + "*", count=500):
                row = await self._redis.hgetall(full)
                if row:
                    out[full[len(self.prefix) :]] = {f: float(v) for f, v in row.items()}
            return out

        return await self._call(scan)

    async def close(self) -> None:
        await self._redis.aclose()


def _where(url: str) -> str:
    """Host and port only: a Redis URL may carry a password."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or 6379}"
