"""The seam between the pipeline and a provider: one `send` per upstream attempt.

Requests and answers inside the sidecar are OpenAI-shaped (chat completions, embeddings):
an adapter for another wire format translates both ways at this seam, so ingress and egress
formats meet in one place instead of N-by-N converters.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

CHAT = "chat"
EMBEDDINGS = "embeddings"


@dataclass(frozen=True, slots=True)
class Call:
    """One attempt's input. `body` is the client's request and is never mutated: a retry or
    the next target reuses it, so adapters build a new payload from it."""

    operation: str
    body: Mapping[str, Any]
    model: str  # the provider's name for the model
    stream: bool


@dataclass(slots=True)
class Reply:
    """A successful answer: a JSON body, or SSE events (each a complete `data: …\\n\\n`)."""

    status: int = 200
    body: bytes = b""
    events: AsyncIterator[bytes] | None = None
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

    async def send(self, call: Call) -> Reply:
        """Raise `UpstreamError` (classified) for any failure, never anything else."""
        ...

    @property
    def busy(self) -> bool:
        """True while some call is in flight, so a retired provider closes only when idle."""
        ...

    async def close(self) -> None: ...


class Leases:
    """Counts calls in flight on a provider, so a provider retired by a reload is closed
    only after its last request (a long stream, say) has finished."""

    __slots__ = ("count", "idle")

    def __init__(self) -> None:
        self.count = 0
        self.idle: Callable[[], None] | None = None

    def take(self) -> Callable[[], None]:
        self.count += 1
        done = False

        def give_back() -> None:
            nonlocal done
            if not done:
                done = True
                self.count -= 1
                if self.count == 0 and self.idle is not None:
                    self.idle()

        return give_back
