"""What the queue stores for provider batches: deferred lines and submissions.

A `Line` is a job that waits for a provider batch instead of running as a call: what its
pipeline took before dispatch (its budget hold, its token-rate estimates, its cache key)
and the request as its provider will get it. Lines are grouped per route, model and
operation; a `Submission` is one group's lines sent to the provider as one batch, with
the provider's batch id once it has one: the record that lets any process resume polling
it, and that keeps a line from being submitted twice.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import orjson

from sidecar.stores.state import Hold, State, StoreUnavailable, Usage

log = logging.getLogger("sidecar.jobs")

SUBMITTING = "submitting"  # lines taken, the provider not (known to be) asked yet
PENDING = "submitted"  # the provider has it: polled until it ends
DONE = "done"  # its lines landed (answered, or sent down the route's `unfinished` path)


def group_key(route: str, model: str, operation: str) -> str:
    """Policy names hold no spaces."""
    return f"{route} {model} {operation}"


@dataclass(slots=True)
class Line:
    job_id: str
    route: str
    model: str  # the policy's model (its provider and prices)
    provider: str
    operation: str  # providers.base.CHAT | EMBEDDINGS
    payload: str  # the request in the provider's own format (JSON text)
    batch_id: str | None = None  # our batch, when the job is a batch line
    added_at: float = field(default_factory=time.time)
    submission: str | None = None  # the submission holding it, once submitted
    submissions: int = 0  # how many provider batches it went into
    position: int = 0  # its line number in the submission holding it (1-based)
    hold: list[Any] | None = None  # the budget hold admission took: [id, keys, amount, expires]
    tokens: list[list[Any]] | None = None  # token-rate estimates to correct: [key, n, limit]
    cache_key: str | None = None  # where its answer is cached, on a route with a cache
    # Calls it paid for before it was deferred (a semantic cache lookup's embedding):
    # [model, input, output, cached, written, purpose], charged again when it lands.
    spent: list[list[Any]] | None = None
    reason: str | None = None  # why its last provider batch left it unfinished

    @property
    def group(self) -> str:
        return group_key(self.route, self.model, self.operation)

    def held(self) -> Hold | None:
        if self.hold is None:
            return None
        hold_id, keys, amount, expires_at = self.hold
        return Hold(hold_id, tuple(keys), float(amount), float(expires_at))

    def dump(self) -> str:
        return orjson.dumps(asdict(self)).decode()

    @classmethod
    def load(cls, doc: str | bytes) -> Line:
        return cls(**orjson.loads(doc))


@dataclass(slots=True)
class Submission:
    id: str
    route: str
    model: str
    provider: str
    operation: str
    status: str = SUBMITTING
    lines: int = 0
    created_at: float = field(default_factory=time.time)
    attempted_at: float | None = None  # a submit call started: the provider may have it
    submitted_at: float | None = None
    finished_at: float | None = None
    provider_batch_id: str | None = None
    provider_status: str | None = None  # as the provider last said
    counts: dict[str, int] = field(default_factory=dict)  # the provider's request counts
    polls: int = 0  # polls in a row that saw no progress: the backoff's exponent
    cancel_sent: bool = False  # the provider was asked to cancel it
    reason: str | None = None  # why it ended without every answer, in the provider's words
    last_error: str | None = None  # the last call to the provider that failed, for operators
    # Kept by the store apart from the record: whoever holds it now, and whether someone
    # asked to cancel it (cancelling a batch of ours whose lines are in it).
    lease: str | None = field(default=None, compare=False)
    cancel: bool = field(default=False, compare=False)

    @property
    def group(self) -> str:
        return group_key(self.route, self.model, self.operation)

    def dump(self) -> str:
        return orjson.dumps({f: getattr(self, f) for f in _DOC}).decode()

    @classmethod
    def load(cls, doc: str | bytes, lease: str | None = None, cancel: bool = False) -> Submission:
        return cls(**orjson.loads(doc), lease=lease, cancel=cancel)

    def view(self) -> dict[str, Any]:
        """What a batch object and `llm-sidecar jobs` show of it."""
        return {
            "id": self.id,
            "provider": self.provider,
            "model": self.model,
            "provider_batch_id": self.provider_batch_id,
            "status": self.provider_status or self.status,
            "lines": self.lines,
            "counts": self.counts,
            "submitted_at": self.submitted_at,
            "finished_at": self.finished_at,
            "reason": self.reason,
            "last_error": self.last_error,
        }


_DOC = tuple(f.name for f in fields(Submission) if f.name not in ("lease", "cancel"))


@dataclass(frozen=True, slots=True)
class Group:
    """Deferred lines of one group, as the submitter sees them."""

    key: str
    count: int
    oldest: float  # when its oldest line was deferred

    @property
    def parts(self) -> tuple[str, str, str]:
        route, model, operation = self.key.split(" ")
        return route, model, operation


async def release_line(state: State, line: Line) -> None:
    """Give back what admission took for a line that will not be answered through a
    provider batch (cancelled, failed, or to run as a call): its budget hold, its
    token-rate estimates."""
    try:
        hold = line.held()
        if hold is not None:
            await state.settle(hold, (), Usage(0))
        for key, n, limit in line.tokens or ():
            await state.adjust_rate(key, -float(n), float(limit), 60.0)
    except StoreUnavailable as exc:
        log.error("job %s: its hold expires on its own (%s)", line.job_id, exc)
