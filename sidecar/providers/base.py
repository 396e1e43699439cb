"""The seam between the pipeline and a provider: one `send` per upstream attempt.

Requests and answers inside the sidecar are OpenAI-shaped (chat completions, embeddings):
an adapter for another wire format translates both ways at this seam, so ingress and egress
formats meet in one place instead of N-by-N converters.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from sidecar.errors import BUSY, PROTOCOL, UpstreamError
from sidecar.policy.model import PromptCache
from sidecar.policy.native import NativeSchema
from sidecar.providers.batches import BatchApi

CHAT = "chat"
EMBEDDINGS = "embeddings"

Events = AsyncIterator[list[bytes]]
"""A streamed answer. Each item is the SSE events (each a complete `data: …\\n\\n`) that
arrived together, never an empty list: what the provider sent in one burst leaves in one
write, where a write per event cost the sidecar about a seventh of its CPU on a stream."""

# What reading data of the wrong shape raises: an upstream's answer that trips a translator.
MALFORMED = (AttributeError, IndexError, KeyError, TypeError, ValueError)


async def translated(events: Events, what: str) -> Events:
    """`events` passed on, except that a translator tripping over malformed data ends them
    with a `protocol` failure (which every consumer turns into an error event or the next
    target), never with another exception that would cut the connection silently."""
    try:
        async for batch in events:
            yield batch
    except MALFORMED as exc:
        raise UpstreamError(PROTOCOL, f"malformed {what} ({exc.__class__.__name__})") from None
    finally:
        await events.aclose()  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class Call:
    """One attempt's input. `body` is the client's request and is never mutated: a retry or
    the next target reuses it, so adapters build a new payload from it."""

    operation: str
    body: Mapping[str, Any]
    model: str  # the provider's name for the model
    stream: bool
    native: NativeSchema | None = None  # a schema to have the provider enforce, if it can
    prompt_cache: PromptCache | None = None  # how to ask for the prompt prefix to be cached


@dataclass(slots=True)
class Reply:
    """A successful answer: a JSON body, or a stream of SSE event batches (`Events`)."""

    status: int = 200
    body: bytes = b""
    events: Events | None = None
    headers: dict[str, str] = field(default_factory=dict)
    on_close: Callable[[], None] | None = None

    async def aclose(self) -> None:
        """Give the connection back (or drop it, mid-stream). Safe to call twice."""
        if self.events is not None and hasattr(self.events, "aclose"):
            await self.events.aclose()
        if self.on_close is not None:
            on_close, self.on_close = self.on_close, None
            on_close()


class Provider(Protocol):
    name: str
    batches: BatchApi | None  # its batch API, when it has one (providers/batches.py)

    async def send(self, call: Call) -> Reply:
        """Raise `UpstreamError` (classified) for any failure, never anything else."""
        ...

    @property
    def busy(self) -> bool:
        """True while some call is in flight, so a retired provider closes only when idle."""
        ...

    @property
    def full(self) -> bool:
        """True while `max_concurrency` calls are in flight: a shadow call then stays out,
        so it never takes a slot the app would wait for."""
        ...

    async def close(self) -> None: ...


class Leases:
    """Counts calls in flight on a provider: a provider retired by a reload is closed only
    after its last call (a long stream, say) is done, and `max_concurrency` caps them so one
    slow provider cannot hold every connection; a call that finds no slot within `wait`
    fails with `busy`, and dispatch moves on to the next target."""

    __slots__ = ("_slots", "count", "idle", "limit", "wait")

    def __init__(self, limit: int | None = None, wait: float = 0.1) -> None:
        self.count = 0
        self.idle: Callable[[], None] | None = None
        self.limit = limit
        self.wait = wait
        self._slots: asyncio.Semaphore | None = None

    @property
    def full(self) -> bool:
        return self.limit is not None and self.count >= self.limit

    async def acquire(self) -> Callable[[], None]:
        slots = self._slots
        if self.limit is not None:
            if slots is None:
                slots = self._slots = asyncio.Semaphore(self.limit)
            if slots.locked():
                try:
                    async with asyncio.timeout(self.wait):
                        await slots.acquire()
                except TimeoutError:
                    raise UpstreamError(
                        BUSY, f"{self.limit} calls already in flight (max_concurrency)"
                    ) from None
            else:
                await slots.acquire()
        self.count += 1
        done = False

        def give_back() -> None:
            nonlocal done
            if not done:
                done = True
                self.count -= 1
                if slots is not None:
                    slots.release()
                if self.count == 0 and self.idle is not None:
                    self.idle()

        return give_back
