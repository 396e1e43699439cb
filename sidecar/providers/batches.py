"""The seam to a provider's batch API: submit many requests at once, poll, fetch results.

OpenAI's Batch API (a JSONL file, a batch over it, output and error files) and Anthropic's
Message Batches API (the requests inline, results as JSONL) are both about half price for
work that may take up to a day. An adapter (providers/batch_openai.py, batch_anthropic.py)
speaks one of them; the jobs system (jobs/provider_batches.py) groups deferred lines,
submits, polls and lands the results. Lines go out as the provider's own request bodies
(`HttpProvider.payload`, translated like a synchronous call) and their answers come back
raw, for `HttpProvider.answer` to translate to OpenAI's shape.

Failures raise `UpstreamError`, classified like a call's (a 429 keeps its Retry-After;
`connect` and `timeout` leave a submission in doubt: it may have been created).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from sidecar.providers.base import Call


@dataclass(frozen=True, slots=True)
class BatchState:
    """What a poll found."""

    status: str  # the provider's own word (in_progress, completed, expired, ended, ...)
    ended: bool  # nothing more will happen: fetch the results
    counts: dict[str, int] = field(default_factory=dict)  # the provider's request counts
    reason: str | None = None  # why it ended without every answer (failed, expired, ...)
    line_errors: tuple[tuple[int, str], ...] = ()  # (1-based line, message): refused lines
    where: tuple[str, ...] = ()  # what `results` reads: file ids, or the results URL


@dataclass(frozen=True, slots=True)
class LineResult:
    """One line's outcome. `status` 200 with `body` the provider's answer (raw, its own
    format); another status with `error` an OpenAI-shaped error object (the request was
    refused, or failed at the provider); None when it was not run, `reason` says why."""

    custom_id: str
    status: int | None
    body: bytes | None = None
    error: dict[str, Any] | None = None
    reason: str | None = None


class BatchApi(Protocol):
    operations: frozenset[str]  # what it batches: providers.base.CHAT, EMBEDDINGS

    def payload(self, call: Call) -> bytes:
        """One line's request in the provider's format, as a synchronous call would send
        it (an `UpstreamError` for what cannot be translated)."""
        ...

    def answer(self, raw: bytes, call: Call) -> bytes:
        """One line's answer in OpenAI's shape, as a synchronous call's would be."""
        ...

    async def submit(self, tag: str, operation: str, lines: Sequence[tuple[str, bytes]]) -> str:
        """Create a batch of (custom_id, request body) lines; its provider id. `tag` is
        ours for it: `find` looks for it after a submission whose outcome is unknown."""
        ...

    async def find(self, tag: str, since: float, count: int) -> str | None:
        """The id of a batch created for `tag` (at or after `since`, of `count` lines), if
        the provider has one: a submission cut off mid-call may have been created."""
        ...

    async def poll(self, batch_id: str) -> BatchState: ...

    async def results(self, batch_id: str, state: BatchState) -> list[LineResult]:
        """Every line the provider reports on (an ended batch's; lines it never ran too)."""
        ...

    async def cancel(self, batch_id: str) -> None: ...


def openai_error(message: str, code: str, kind: str = "invalid_request_error") -> dict[str, Any]:
    return {"message": message, "type": kind, "code": code}
