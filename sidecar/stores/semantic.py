"""Nearest cached prompts by cosine similarity, per partition (route, scope value, the
parameters that change answers and the context around the embedded text: pipeline/
cache.py), each with the guard signature it was stored with (policy/guards.py), so the
cache can pass over a near miss to a true paraphrase further down. An HNSW index
(usearch): on one core a lookup takes ~2.4 ms at 10k and ~3.5 ms at 100k entries of 1,536
dimensions, where a float32 scan takes 5 and 52 ms (bench/cache.py; random vectors, the
hardest case for the graph: recall@1 is 1.0 at 10k but 0.64 at 100k with usearch's default
search effort).

Each partition holds at most `max_entries` vectors, oldest out first, and forgets entries
whose TTL has passed; usearch reuses the slots of removed vectors, so a busy cache runs
in bounded memory (about entries x dimensions x 2 bytes per partition: the index stores
half floats). Inserting into the graph costs milliseconds per vector, so it runs in a
worker thread (usearch releases the GIL): the event loop keeps serving while a miss is
stored or a new replica loads thousands of shared vectors.

With a Redis cache the vectors are shared too, on a plain Redis 7 (no modules): each
partition is a stream of `entry key, expiry, float32 vector, guard signature` records,
capped near `max_entries` by XADD MAXLEN ~ (Redis trims whole nodes of ~100 records), that
every sidecar appends to and reads from the id it saw last (at most every `sync_every`
seconds, on lookup), keeping its own in-memory index of the partitions it serves. Ids,
unlike list offsets, survive trimming, a purge and a stream that expired and started over
(new ids are always larger). A stream expires when its partition gets no new entry for a
TTL, by which time every entry in it has expired too.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError
from usearch.index import Index

from sidecar.policy.guards import Signature
from sidecar.stores.state import StoreUnavailable

_BATCH = 250  # stream records read per round trip (1,536 dims: 1.5 MB)
_NEAREST = 8  # neighbours looked at: the nearest may be a near miss the guards refuse

_Entry = tuple[str, float, Signature]  # cache entry key, expiry, guard signature
Found = tuple[str, float, Signature]  # cache entry key, similarity, guard signature


@dataclass(slots=True)
class _Partition:
    index: Any
    keys: dict[int, _Entry] = field(default_factory=dict)  # id → (entry, expires, guards)
    order: deque[int] = field(default_factory=deque)  # ids, oldest first (some forgotten)
    doomed: list[int] = field(default_factory=list)  # forgotten, still in the index
    next_id: int = 0
    last_seen: tuple[int, int] = (0, 0)  # id of the newest stream record in the index
    synced_at: float = 0.0
    adding: asyncio.Future[Any] | None = None  # the insert running in a worker thread
    syncing: asyncio.Task[None] | None = None  # reading the shared stream
    growing: bool = False  # that insert reallocates the index: no search meanwhile


def _stream_id(raw: bytes) -> tuple[int, int]:
    ms, _, seq = raw.partition(b"-")
    return int(ms), int(seq)


def _seen(task: asyncio.Task[None]) -> None:
    """Mark a sync's error as retrieved: the lookups that waited for it have raised it."""
    if not task.cancelled():
        task.exception()


def _signature(raw: bytes | None) -> Signature:
    """A stored guard signature, as `Guards.signature` makes it (JSON turns tuples into
    lists); a record without one (from an older sidecar) is compared as having none."""
    if not raw:
        return ()
    return tuple((kind, tuple(tokens)) for kind, tokens in orjson.loads(raw))


def _new_partition(dims: int) -> _Partition:
    return _Partition(Index(ndim=dims, metric="cos", dtype="f16"))


class SemanticIndex:
    def __init__(
        self,
        redis_url: str | None = None,
        prefix: str = "llm-sidecar:",
        sync_every: float = 0.5,
        max_entries: int = 10_000,
        sync_wait: float = 0.1,
    ) -> None:
        self._parts: dict[str, _Partition] = {}
        self._redis = aioredis.from_url(redis_url, socket_timeout=1.0) if redis_url else None
        self._prefix = prefix
        self._sync_every = sync_every
        self._max_entries = max_entries
        self._sync_wait = sync_wait

    def _part(self, name: str, dims: int) -> _Partition:
        part = self._parts.get(name)
        if part is None or part.index.ndim != dims:
            part = self._parts[name] = _new_partition(dims)
        return part

    def _stream(self, name: str) -> str:
        # `cvs:`, not the `cv:` lists of earlier versions: in a rolling upgrade the two
        # layouts sit side by side instead of failing with WRONGTYPE.
        return self._prefix + "cvs:" + name

    async def search(self, name: str, vector: np.ndarray, now: float) -> list[Found]:
        """The nearest live entries, nearest first, with their guard signatures."""
        part = self._part(name, len(vector))
        if self._redis is not None:
            await self._catch_up(name, part, now)
        self._trim(part, now)
        if not part.keys or part.growing:
            return []
        found = part.index.search(vector, _NEAREST)
        out: list[Found] = []
        for ident, distance in zip(found.keys, found.distances, strict=False):
            entry = part.keys.get(int(ident))
            if entry is None:
                continue
            if entry[1] <= now:  # expired: forget it
                self._forget(part, int(ident))
                continue
            out.append((entry[0], float(1.0 - distance), entry[2]))
        return out

    def _forget(self, part: _Partition, ident: int) -> None:
        if part.keys.pop(ident, None) is not None:
            part.doomed.append(ident)

    def _trim(self, part: _Partition, now: float) -> None:
        """Forget the oldest entries while there are too many or they have expired (entries
        arrive roughly in expiry order: one TTL per cache); take the forgotten ones out of
        the index when no insert is running (usearch must not grow and remove at once)."""
        while part.order:
            ident = part.order[0]
            entry = part.keys.get(ident)
            if entry is not None and entry[1] > now and len(part.keys) <= self._max_entries:
                break
            part.order.popleft()
            self._forget(part, ident)
        if part.doomed and (part.adding is None or part.adding.done()):
            for ident in part.doomed:
                part.index.remove(ident)
            part.doomed.clear()

    async def _insert(self, part: _Partition, vectors: np.ndarray, entries: list[_Entry]) -> None:
        """Add vectors in a worker thread, one insert per partition at a time. The entries
        are registered first: a search only returns ids already in the index, and a
        cancelled caller leaves the insert to finish on its own."""
        while part.adding is not None and not part.adding.done():
            with contextlib.suppress(Exception):
                await asyncio.shield(part.adding)
        ids = np.arange(part.next_id, part.next_id + len(entries), dtype=np.uint64)
        part.next_id += len(entries)
        for ident, entry in zip(ids.tolist(), entries, strict=True):
            part.keys[ident] = entry
            part.order.append(ident)
        part.growing = len(part.index) + len(entries) > part.index.capacity
        adding = asyncio.ensure_future(asyncio.to_thread(part.index.add, ids, vectors, threads=1))
        part.adding = adding

        def done(future: asyncio.Future[Any]) -> None:
            part.growing = False
            if not future.cancelled():
                future.exception()  # seen here, whoever else waits for it

        adding.add_done_callback(done)
        await asyncio.shield(adding)
        self._trim(part, time.time())

    async def add(
        self, name: str, vector: np.ndarray, key: str, ttl: float, guards: Signature = ()
    ) -> None:
        now = time.time()
        part = self._part(name, len(vector))
        expires = now + ttl
        if self._redis is None:
            await self._insert(part, vector.reshape(1, -1), [(key, expires, guards)])
            return
        record: dict[Any, Any] = {
            "k": key,
            "e": f"{expires:.3f}",
            "v": vector.astype(np.float32).tobytes(),
            "g": orjson.dumps(guards),
        }
        stream = self._stream(name)
        try:
            pipe = self._redis.pipeline(transaction=False)
            pipe.xadd(stream, record, maxlen=self._max_entries, approximate=True)
            pipe.pexpire(stream, max(1, int(ttl * 1000)))
            await pipe.execute()
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"semantic cache: {exc.__class__.__name__}") from None
        await self._sync(name, part)

    async def _catch_up(self, name: str, part: _Partition, now: float) -> None:
        """Read what other sidecars added, at most every `sync_every` seconds, in a task
        of its own: a lookup waits for it at most `sync_wait` (a new replica may have
        thousands of vectors to load) and searches what is there by then."""
        task = part.syncing
        if (task is None or task.done()) and now - part.synced_at >= self._sync_every:
            part.synced_at = now
            task = part.syncing = asyncio.create_task(self._sync(name, part))
            task.add_done_callback(_seen)
        if task is None:
            return
        done, _ = await asyncio.wait({task}, timeout=self._sync_wait)
        if task in done:
            part.syncing = None
            task.result()  # StoreUnavailable: this lookup reports Redis being down

    async def _sync(self, name: str, part: _Partition) -> None:
        """Add the stream's records newer than the newest one this process has seen.

        Syncs of one partition can overlap (a lookup and a store, each awaiting Redis):
        a record is taken only if its id is newer than `last_seen` at that moment, so an
        overlapping read neither adds a record twice nor moves `last_seen` back."""
        assert self._redis is not None
        stream = self._stream(name)
        try:
            while True:
                ms, seq = part.last_seen
                records = await self._redis.xrange(stream, min=f"({ms}-{seq}", count=_BATCH)
                vectors: list[np.ndarray] = []
                entries: list[_Entry] = []
                for raw_id, fields in records:
                    ident = _stream_id(raw_id)
                    if ident <= part.last_seen:
                        continue
                    part.last_seen = ident
                    vector = np.frombuffer(fields[b"v"], dtype=np.float32)
                    if len(vector) == part.index.ndim:
                        vectors.append(vector)
                        key, expires = fields[b"k"].decode(), float(fields[b"e"])
                        entries.append((key, expires, _signature(fields.get(b"g"))))
                if entries:
                    await self._insert(part, np.stack(vectors), entries)
                if len(records) < _BATCH:
                    break
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"semantic cache: {exc.__class__.__name__}") from None

    async def drop(self, prefix: str) -> int:
        """Forget the partitions whose names start with `prefix`, here and in Redis."""
        doomed = [n for n in self._parts if n.startswith(prefix)]
        for n in doomed:
            del self._parts[n]
        if self._redis is not None:
            try:
                async for stream in self._redis.scan_iter(
                    match=self._stream(prefix) + "*", count=500
                ):
                    await self._redis.unlink(stream)
            except (RedisError, OSError) as exc:
                raise StoreUnavailable(f"semantic cache: {exc.__class__.__name__}") from None
        return len(doomed)

    async def close(self) -> None:
        for part in self._parts.values():
            if part.syncing is not None:
                part.syncing.cancel()
        if self._redis is not None:
            await self._redis.aclose()
