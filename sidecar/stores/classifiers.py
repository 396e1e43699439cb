"""The tier classifiers of this process: per route, the last good one, and the work of
building the next when a reload brings new examples (policy/examples.py).

A build embeds the examples through the policy's own embedding model (providers/embed.py)
off the event loop's critical path: hashing, disk reads and writes and the matrix run in a
worker thread; only the provider call is on the loop, as any call is. Vectors are kept on
disk under the state directory by content hash (one file per embedding model), so a
restart, or a reload that changes nothing in the examples, embeds nothing, and an edit that
adds one example embeds that one.

An embedder that is down keeps the last good classifier for the route (its /status entry
says so) and is tried again with a growing pause; with none yet, the route's requests get
its default tier until the first build succeeds. A request never waits for a build.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cachetools import LRUCache

from sidecar.errors import UpstreamError
from sidecar.policy.model import ClassifierSpec, Model, Policy
from sidecar.providers.base import Provider
from sidecar.providers.embed import embed

log = logging.getLogger("sidecar.select")

RETRY_FIRST, RETRY_MAX = 2.0, 300.0  # seconds between attempts of a build that failed
MAX_KEPT = 100_000  # vectors kept per embedding model file

Record = Callable[[ClassifierSpec, int], Awaitable[None]]  # (spec, tokens billed)


@dataclass(frozen=True, slots=True)
class Classifier:
    """Labelled example vectors; a request's vector is voted on by its k nearest."""

    model: Model  # what the request's text must be embedded with (these vectors' space)
    vectors: Any = field(repr=False)  # float32 (n, d), unit rows
    labels: Any = field(repr=False)  # int (n,), tier ranks
    tiers: int
    k: int
    margin: float
    key: str
    built_at: float

    def vote(self, vector: Any) -> tuple[int | None, float]:
        """(tier rank, confidence): the winner's share of the similarity-weighted vote of
        the k nearest examples, less the runner-up's. None when that is under `margin`."""
        import numpy as np

        if vector.shape[0] != self.vectors.shape[1]:
            return None, 0.0
        sims = self.vectors @ vector
        k = min(self.k, sims.shape[0])
        near = np.argpartition(-sims, k - 1)[:k] if k < sims.shape[0] else np.arange(k)
        weights = np.clip(sims[near], 0.0, None)
        votes = np.bincount(self.labels[near], weights=weights, minlength=self.tiers)
        total = float(votes.sum())
        if total <= 0.0:
            return None, 0.0
        order = np.argsort(-votes)
        lead = float(votes[order[0]] - (votes[order[1]] if len(order) > 1 else 0.0)) / total
        return (int(order[0]) if lead >= self.margin else None), lead


@dataclass(slots=True)
class _Slot:
    spec: ClassifierSpec
    classifier: Classifier | None = None  # the last good one (perhaps of an older spec)
    state: str = "embedding"  # embedding | ready | failed
    error: str | None = None
    attempts: int = 0
    task: asyncio.Task[None] | None = None
    tried: asyncio.Event = field(default_factory=asyncio.Event)  # the first attempt ended


class Classifiers:
    def __init__(self, recent: int = 4096) -> None:
        self.folder: Path | None = None  # where vectors are kept; None: not kept
        self._slots: dict[str, _Slot] = {}
        # Requests' vectors, by classifier and text: the same question asked again (a
        # retry, a popular first message) costs no embedding call.
        self._recent: LRUCache[tuple[str, str], Any] = LRUCache(recent)

    def get(self, route: str) -> Classifier | None:
        slot = self._slots.get(route)
        return slot.classifier if slot is not None else None

    def recent(self, key: str, text: str) -> Any:
        return self._recent.get((key, text))

    def remember(self, key: str, text: str, vector: Any) -> None:
        self._recent[(key, text)] = vector

    async def update(
        self,
        policy: Policy,
        providers: Mapping[str, Provider],
        record: Record,
        wait: float = 10.0,
    ) -> None:
        """Start building what `policy` asks for that is not built yet, and give the first
        attempts up to `wait` seconds, so a reload usually swaps in ready classifiers."""
        wanted = {
            r.name: r.select.classifier
            for r in policy.routes.values()
            if r.select is not None and r.select.classifier is not None
        }
        for route in [r for r in self._slots if r not in wanted]:
            self._stop(self._slots.pop(route))
        started: list[_Slot] = []
        for route, spec in wanted.items():
            slot = self._slots.get(route)
            if slot is not None and slot.spec.key == spec.key and slot.state != "failed":
                slot.spec = spec  # the same examples and model; other settings may differ
                continue
            keep = slot.classifier if slot is not None else None
            if slot is not None:
                self._stop(slot)
            slot = self._slots[route] = _Slot(spec, keep)
            config = policy.providers[spec.model.provider]
            identity = f"{config.base_url}\0{spec.model.upstream}"  # what the vectors depend on
            slot.task = asyncio.create_task(
                self._build(slot, providers[spec.model.provider], config.timeout, identity, record)
            )
            started.append(slot)
        if started:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    for slot in started:
                        await slot.tried.wait()

    async def _build(
        self, slot: _Slot, provider: Provider, per_call: float, identity: str, record: Record
    ) -> None:
        spec = slot.spec
        pause = RETRY_FIRST
        while True:
            slot.attempts += 1
            try:
                slot.classifier = await self._embedded(spec, provider, per_call, identity, record)
                slot.state, slot.error = "ready", None
                log.info(
                    "route %s: tier classifier ready (%d examples)", spec.route, len(spec.texts)
                )
                slot.tried.set()
                return
            except Exception as exc:  # an embedder down, a bad answer, a full disk
                slot.state = "failed"
                if isinstance(exc, UpstreamError):
                    slot.error = exc.message
                else:
                    log.exception("route %s: building the tier classifier failed", spec.route)
                    slot.error = f"{type(exc).__name__} (see the log)"
                keeping = (
                    "keeping the last good classifier"
                    if slot.classifier
                    else "its requests get the default tier"
                )
                log.warning(
                    "route %s: cannot embed the tier examples (%s); %s; trying again in %gs",
                    spec.route,
                    slot.error,
                    keeping,
                    pause,
                )
            slot.tried.set()
            await asyncio.sleep(pause)
            pause = min(RETRY_MAX, pause * 2)

    async def _embedded(
        self,
        spec: ClassifierSpec,
        provider: Provider,
        per_call: float,
        identity: str,
        record: Record,
    ) -> Classifier:
        import numpy as np

        file = self._file(identity)
        hashes, kept = await asyncio.to_thread(_load, file, spec.texts)
        missing = [i for i, h in enumerate(hashes) if h not in kept]
        if missing:
            vectors, tokens = await embed(
                provider, spec.model.upstream, [spec.texts[i] for i in missing], per_call
            )
            await record(spec, tokens)
            for i, row in zip(missing, vectors, strict=True):
                kept[hashes[i]] = row
            if file is not None:
                await asyncio.to_thread(_save, file, kept)

        def matrix() -> Any:
            return np.stack([kept[h] for h in hashes]).astype(np.float32)

        vectors = await asyncio.to_thread(matrix)
        labels = np.asarray(spec.labels, dtype=np.int64)
        return Classifier(
            spec.model,
            vectors,
            labels,
            int(labels.max()) + 1,
            spec.k,
            spec.margin,
            spec.key,
            time.time(),
        )

    def _file(self, identity: str) -> Path | None:
        if self.folder is None:
            return None
        name = hashlib.sha256(identity.encode()).hexdigest()[:16]
        return self.folder / f"{name}.npz"

    def _stop(self, slot: _Slot) -> None:
        if slot.task is not None and not slot.task.done():
            slot.task.cancel()

    def describe(self) -> dict[str, Any]:
        """For /status: per route, what its requests are classified with."""
        out: dict[str, Any] = {}
        for route, slot in sorted(self._slots.items()):
            ready = slot.classifier
            if slot.state == "ready":
                using = "this policy's examples"
            elif ready is not None:
                using = "the last good classifier (older examples)"
            else:
                using = "none: requests get the route's default tier"
            out[route] = {
                "state": slot.state,
                "examples": len(slot.spec.texts),
                "file": slot.spec.file,
                "model": slot.spec.model.name,
                "using": using,
                "built_at": ready.built_at if ready else None,
                "attempts": slot.attempts,
                "error": slot.error,
            }
        return out

    async def close(self) -> None:
        tasks = [s.task for s in self._slots.values() if s.task is not None]
        for slot in self._slots.values():
            self._stop(slot)
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._slots.clear()


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


def _load(file: Path | None, texts: tuple[str, ...]) -> tuple[list[bytes], dict[bytes, Any]]:
    """The texts' hashes, and every vector kept for this embedding model."""
    import numpy as np

    hashes = [_digest(t) for t in texts]
    kept: dict[bytes, Any] = {}
    if file is not None and file.exists():
        try:
            with np.load(file) as data:
                kept = dict(zip((bytes(k) for k in data["keys"]), data["vectors"], strict=True))
        except (OSError, ValueError, KeyError) as exc:  # a torn or foreign file: start over
            log.warning("tier classifier: ignoring %s (%s)", file, exc)
    return hashes, kept


def _save(file: Path, kept: dict[bytes, Any]) -> None:
    """Written whole, then renamed over the old file: a reader never sees half of it."""
    import numpy as np

    items = list(kept.items())[-MAX_KEPT:]
    file.parent.mkdir(parents=True, exist_ok=True)
    temporary = file.with_suffix(f".{os.getpid()}.tmp")
    with temporary.open("wb") as out:
        np.savez(
            out,
            keys=np.asarray([k for k, _ in items], dtype="S32"),
            vectors=np.stack([v for _, v in items]).astype(np.float32),
        )
    temporary.replace(file)
