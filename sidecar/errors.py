"""The one error tree of the sidecar, and how each error looks on the wire.

    SidecarError                  an answer to the client: status, OpenAI type/code, Retry-After
    ├── InvalidRequest            400  the request itself is wrong (bad JSON, a field of the
    │   │                              wrong type; 415 an unknown encoding, 408 a body that
    │   │                              did not arrive in time)
    │   └── BodyTooLarge          413  the body (or an uploaded file) is above the endpoint's limit
    ├── ModelNotFound             404  no route and no model by that name; lists what exists
    ├── NotReady                  503  no valid policy loaded yet, or shutting down
    ├── RateLimited               429  a limit is full and its queue too (or the wait ran out)
    ├── BudgetExceeded            429  a `reject` budget has no room for this request
    ├── StateUnavailable          503  the state store is down and `on_error: closed`
    ├── OutputInvalid             422  the answer never matched the route's output schema
    ├── UpstreamRejected          4xx  the provider refused the request itself; its body, redacted
    ├── TargetsExhausted          502/504  every target failed; names each attempt, in order
    └── Internal                  500  our bug: an exception no handler expected (api/guard.py
                                       logs it once, with its traceback)

    UpstreamError                 one attempt's failure, classified by `kind`; dispatch decides
                                  whether the next target is tried. It never reaches the client
                                  as such: it is folded into one of the errors above.

Messages name routes, models and providers, never keys, headers or environment values.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import orjson


class SidecarError(Exception):
    status = 500
    type = "server_error"
    code = "internal_error"

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after

    def body(self) -> bytes:
        return orjson.dumps(
            {"error": {"message": self.message, "type": self.type, "code": self.code}}
        )


class InvalidRequest(SidecarError):
    status = 400
    type = "invalid_request_error"

    def __init__(
        self,
        message: str,
        *,
        code: str = "invalid_request",
        param: str | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        if status is not None:
            self.status = status
        self.param = param  # the body field at fault (`messages[2].content`), as OpenAI says

    def body(self) -> bytes:
        error = {"message": self.message, "type": self.type, "code": self.code}
        if self.param is not None:
            error["param"] = self.param
        return orjson.dumps({"error": error})


class BodyTooLarge(InvalidRequest):
    status = 413

    def __init__(self, message: str) -> None:
        super().__init__(message, code="body_too_large")


class ModelNotFound(SidecarError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class NotReady(SidecarError):
    status = 503
    type = "server_error"
    code = "not_ready"


class RateLimited(SidecarError):
    status = 429
    type = "rate_limit_error"

    def __init__(self, message: str, *, retry_after: float, code: str = "rate_limited") -> None:
        super().__init__(message, retry_after=retry_after)
        self.code = code


class BudgetExceeded(SidecarError):
    status = 429
    type = "rate_limit_error"
    code = "budget_exceeded"


class StateUnavailable(SidecarError):
    status = 503
    type = "server_error"
    code = "state_unavailable"


class OutputInvalid(SidecarError):
    """The answer never matched the route's schema and the policy says `then: error`."""

    status = 422
    type = "invalid_response_error"
    code = "output_invalid"

    def __init__(self, message: str, *, errors: list[str]) -> None:
        super().__init__(message)
        self.errors = errors


class UpstreamRejected(SidecarError):
    """A 4xx that is the request's fault: passed on with the provider's own body."""

    type = "invalid_request_error"
    code = "upstream_rejected"

    def __init__(self, status: int, raw_body: bytes, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.raw_body = raw_body

    def body(self) -> bytes:
        return self.raw_body or super().body()


class Internal(SidecarError):
    """What the client sees of an exception nothing expected: never its text or traceback
    (they may hold request data); those go to the log, once."""

    def __init__(self) -> None:
        super().__init__("the sidecar failed on this request (an internal error, logged)")


# Failure classes of one upstream attempt. Later stages (retry policy `on:`) name these.
CONNECT = "connect"
TIMEOUT = "timeout"
HTTP_5XX = "5xx"
HTTP_429 = "429"
OVERLOADED = "overloaded"  # Anthropic's 529
BUSY = "busy"  # the provider's max_concurrency is reached: ours, not the provider's fault
CIRCUIT_OPEN = "circuit_open"  # skipped without a call
AUTH = "auth"
PROTOCOL = "protocol"
CLIENT = "4xx"  # the request's own fault: not retried, not failed over

FAILOVER_KINDS = frozenset(
    {CONNECT, TIMEOUT, HTTP_5XX, HTTP_429, OVERLOADED, AUTH, PROTOCOL, BUSY, CIRCUIT_OPEN}
)
# What counts against a target's circuit breaker (busy and circuit_open are our own doing).
BREAKER_KINDS = frozenset({CONNECT, TIMEOUT, HTTP_5XX, HTTP_429, OVERLOADED, AUTH, PROTOCOL})


class UpstreamError(Exception):
    def __init__(
        self,
        kind: str,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        raw_body: bytes = b"",
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status
        self.retry_after = retry_after
        self.raw_body = raw_body

    @property
    def fails_over(self) -> bool:
        return self.kind in FAILOVER_KINDS


@dataclass(frozen=True, slots=True)
class FailedAttempt:
    model: str
    provider: str
    error: UpstreamError

    def describe(self) -> str:
        return f"{self.model}@{self.provider}: {self.error.message}"


class TargetsExhausted(SidecarError):
    type = "server_error"

    def __init__(self, route: str, attempts: Sequence[FailedAttempt], why: str = "") -> None:
        tried = "; ".join(a.describe() for a in attempts) or "no attempt could start"
        super().__init__(f"route '{route}': all targets failed{why} ({tried})")
        self.attempts = tuple(attempts)
        last = attempts[-1].error if attempts else None
        timed_out = last is None or last.kind == TIMEOUT
        self.status = 504 if timed_out else 502
        self.code = "upstream_timeout" if timed_out else "upstream_failed"
        if last is not None and last.kind == HTTP_429:
            # Every target is rate limited: pass the limit on, with the provider's hint.
            self.status, self.type, self.code = 429, "rate_limit_error", "rate_limited"
            self.retry_after = last.retry_after or 1.0
