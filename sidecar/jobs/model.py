"""One job as the queues store it, and as `GET /v1/jobs/{id}` shows it.

A job is a request body (chat completion or embeddings) plus what the pipeline needs to
treat it as its caller's request later: identity headers (never a credential: the app's
bearer token is kept only as the hash `identify` would make of it) and routing headers.
"""

from __future__ import annotations

import itertools
import secrets
import time
from dataclasses import dataclass, field, fields
from typing import Any

import orjson

QUEUED = "queued"
RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"  # the request itself was refused (4xx): retrying would not help
DEAD = "dead"  # retryable failures until max_attempts: the dead letter
CANCELLED = "cancelled"  # its batch was cancelled before it started
# A line waiting for a provider batch (jobs/provider_batches.py): admitted, then held until
# its group is submitted, then in the provider's batch until its answer lands.
DEFERRED = "deferred"
SUBMITTED = "submitted"
STATUSES = (QUEUED, RUNNING, DEFERRED, SUBMITTED, SUCCEEDED, FAILED, DEAD, CANCELLED)
TERMINAL = frozenset({SUCCEEDED, FAILED, DEAD, CANCELLED})
UNFINISHED = (QUEUED, RUNNING, DEFERRED, SUBMITTED)

PRIORITIES = {"high": 0, "normal": 1, "low": 2}  # order in the queue; all run below live traffic
PRIORITY_NAMES = {v: k for k, v in PRIORITIES.items()}

CHAT_ENDPOINT = "/v1/chat/completions"
EMBEDDINGS_ENDPOINT = "/v1/embeddings"
ENDPOINTS = (CHAT_ENDPOINT, EMBEDDINGS_ENDPOINT)

_JSON = ("request", "headers", "metadata", "result", "error", "webhook", "response_headers")
_INT = ("priority", "attempts", "status_code")
_FLOAT = ("deadline", "created_at", "started_at", "finished_at")


def new_id(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(12)}"


_LEASES = itertools.count()
_PROCESS = secrets.token_hex(8)  # one random draw per process: leases are claimed per job


def new_lease() -> str:
    """Unique across processes and restarts; not a secret (it only fences writes)."""
    return f"lease_{_PROCESS}_{next(_LEASES)}"


@dataclass(slots=True)
class Job:
    id: str
    endpoint: str
    request: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    app_key: str | None = None
    priority: int = 1
    callback_url: str | None = None
    metadata: dict[str, Any] | None = None
    deadline: float | None = None  # not started by then: failed, deadline_exceeded
    batch_id: str | None = None
    custom_id: str | None = None
    status: str = QUEUED
    attempts: int = 0  # claims so far (a claim returned at shutdown is given back)
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    status_code: int | None = None  # of the last answer
    result: Any = None  # the answer body, when succeeded
    error: dict[str, Any] | None = None  # the last failure: {message, type, code}
    response_headers: dict[str, str] | None = None  # x-sidecar-route, -cache, -cost-usd, ...
    lease: str | None = None  # the current claim; result writes must present it
    worker: str | None = None  # who holds (or last held) the claim
    webhook: dict[str, Any] | None = None  # delivery state: {status, attempts, last_status}

    def to_row(self) -> dict[str, str | int | float | None]:
        """Flat values for a table row or a Redis hash (JSON fields as text)."""
        row: dict[str, str | int | float | None] = {}
        for name in FIELDS:
            value = getattr(self, name)
            if name in _JSON and value is not None:
                value = orjson.dumps(value).decode()
            row[name] = value
        return row

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Job:
        """The inverse of `to_row`; accepts Redis's all-string hashes too."""
        values: dict[str, Any] = {}
        for name in FIELDS:
            value = row.get(name)
            if value is None or value == "":
                if name in ("id", "endpoint", "request", "status"):
                    value = {"request": {}, "status": QUEUED}.get(name, "")
                else:
                    continue
            elif name in _JSON:
                value = orjson.loads(value)
            elif name in _INT:
                value = int(value)
            elif name in _FLOAT:
                value = float(value)
            values[name] = value
        return cls(**values)

    def view(self, *, with_result: bool = True) -> dict[str, Any]:
        """The public shape: what polling and webhooks show."""
        started, finished = self.started_at, self.finished_at
        out: dict[str, Any] = {
            "id": self.id,
            "object": "job",
            "status": self.status,
            "endpoint": self.endpoint,
            "model": self.request.get("model"),
            "priority": PRIORITY_NAMES.get(self.priority, "normal"),
            "attempts": self.attempts,
            "worker": self.worker,
            "metadata": self.metadata,
            "callback_url": self.callback_url,
            "deadline": self.deadline,
            "batch_id": self.batch_id,
            "custom_id": self.custom_id,
            "status_code": self.status_code,
            "error": self.error,
            "response_headers": self.response_headers,
            "webhook": self.webhook,
            "timings": {
                "created_at": self.created_at,
                "started_at": started,
                "finished_at": finished,
                "queued_seconds": round(started - self.created_at, 6) if started else None,
                "run_seconds": round(finished - started, 6) if finished and started else None,
            },
        }
        if with_result:
            out["result"] = self.result
        return out


FIELDS = tuple(f.name for f in fields(Job))  # column order of a stored job
