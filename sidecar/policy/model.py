"""The compiled policy: frozen, slotted, fully resolved, safe to share between requests.

Every lookup a request makes is a dict access or a walk over a handful of conditions
prepared here; nothing on the request path parses a duration or scans a list of routes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from sidecar.policy.secret import Secret


@dataclass(frozen=True, slots=True)
class MockSettings:
    reply: str | None = None
    latency: float = 0.0
    chunk_delay: float = 0.0
    embedding_dims: int = 16


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    name: str
    type: str
    base_url: str
    api_key: Secret = field(default_factory=lambda: Secret(""))
    timeout: float = 60.0
    headers: tuple[tuple[str, str], ...] = ()
    max_connections: int = 256
    anthropic_version: str = "2023-06-01"
    max_tokens: int = 4096  # Anthropic requires max_tokens: used when the request has none
    mock: MockSettings = field(default_factory=MockSettings)


@dataclass(frozen=True, slots=True)
class Price:
    """USD per one million tokens."""

    input: float = 0.0
    output: float = 0.0
    cached_input: float | None = None


@dataclass(frozen=True, slots=True)
class Model:
    name: str  # the policy's name for it
    provider: str
    upstream: str  # the provider's name for it
    price: Price = field(default_factory=Price)


@dataclass(frozen=True, slots=True)
class Condition:
    """One `match` condition: the caller's header/user/team must be one of `values`."""

    kind: str  # "header" | "user" | "team"
    key: str  # header name, lower-cased; "" for user and team
    values: frozenset[str]


@dataclass(frozen=True, slots=True)
class Retry:
    attempts: int = 1  # per target, the first try included
    backoff: float = 0.25


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    model: str  # what the app puts in `model`
    conditions: tuple[Condition, ...]
    targets: tuple[Model, ...]
    retry: Retry
    timeout: float
    implicit: bool = False  # a model addressed directly, with no route of its own


@dataclass(frozen=True, slots=True)
class RouteSet:
    """The routes for one `model` value: conditional ones are disjoint, at most one default."""

    conditional: tuple[Route, ...]
    default: Route | None


@dataclass(frozen=True, slots=True)
class Policy:
    version: str
    files: tuple[str, ...]
    providers: Mapping[str, ProviderConfig]
    models: Mapping[str, Model]
    routes: Mapping[str, Route]
    by_model: Mapping[str, RouteSet]
    public_models: tuple[str, ...]  # what GET /v1/models lists, in policy order
