"""Everything one request carries through the pipeline, from handler to response."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sidecar.errors import FailedAttempt
from sidecar.pipeline.ledger import ANSWER, HITS, Ledger, Spend, saved_header
from sidecar.policy.model import Model, Route, Target
from sidecar.policy.native import NativeSchema
from sidecar.runtime import Snapshot
from sidecar.stores.state import Hold


@dataclass(slots=True)
class RequestContext:
    operation: str  # providers.base.CHAT | EMBEDDINGS
    body: Mapping[str, Any]  # the client's request; never mutated
    headers: Mapping[str, str]  # the client's request headers (case-insensitive)
    snapshot: Snapshot  # the policy this request started with, kept to its end
    started: float = field(default_factory=time.monotonic)
    stream: bool = False
    client_body: Mapping[str, Any] = field(default_factory=dict)  # before the sidecar's additions
    # identify
    user: str | None = None
    team: str | None = None
    app_key: str | None = None  # a hash of the app's own bearer token, never the token
    priority: int = 1
    # route
    route: Route | None = None
    targets: tuple[Target, ...] = ()
    # admit
    estimate_in: int = 0
    taken: list[tuple[str, str, float, float]] = field(default_factory=list)  # kind, key, n, limit
    hold: Hold | None = None
    downgraded_by: str | None = None
    # account
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    usage_known: bool = False  # the provider reported usage (else: estimated)
    answers: int = 0  # answers paid for (validation retries add to the first)
    cost_usd: float | None = None
    finish_reasons: list[str] = field(default_factory=list)
    output: str | None = None  # validity: valid | repaired | default | invalid
    # cache
    cache: str | None = None  # hit | semantic-hit | miss | bypass | ineligible | unavailable
    cache_reason: str | None = None  # why not a hit, when there is one (pipeline/cacheable.py)
    cache_key: str | None = None
    cache_similarity: float | None = None
    hit_tokens: tuple[int, int] | None = None  # a hit: the stored answer's (input, output)
    cache_leader: bool = False  # this request's miss is the one the others wait for
    cache_probe: Any = None  # a semantic miss's partition, vector and guards, to store with
    cache_check: Any = None  # a semantic hit's answer, sampled to verify (pipeline/verify.py)
    cache_store: Any = None  # the complete answer, kept for `finish` to store
    first_chunk_at: float | None = None  # streams: when the first event went to the client
    # enforce, dispatch
    native: NativeSchema | None = None  # the schema the providers are asked to enforce
    attempts: int = 0
    answered_by: Model | None = None
    failures: list[FailedAttempt] = field(default_factory=list)
    # select, escalate (model selection: pipeline/select.py, escalate.py)
    tier: str | None = None  # the tier that answered (chosen before the call, or escalated to)
    tier_rank: int = -1  # its place on the route's ladder; -1: no selection
    tier_reason: str | None = None  # rule | classifier | unsure | unavailable | default | sticky
    escalations: int = 0  # answers a cascade rejected (never shown to the app)
    rejected: list[str] = field(default_factory=list)  # "tier:check" of each
    conversation: str | None = None  # the sticky key of this conversation
    # the savings ledger (pipeline/ledger.py)
    spend: list[Spend] = field(default_factory=list)  # every call paid for, in order
    purpose: str = ANSWER  # what the next call charged is for (after a discard: a retry)
    trimmed_tokens: int = 0  # input tokens removed before sending
    ledger: Ledger | None = None  # tallied in `finish`
    # provider batches (jobs/defer.py, jobs/land.py)
    hold_for: float | None = None  # how long a budget hold must last, when not the route's
    batched: bool = False  # the next answer charged came through a provider batch
    # prepare (pipeline/prepare.py)
    trimmed_messages: int = 0  # x-sidecar-trimmed
    trim_chars: tuple[int, int] | None = None  # characters (removed, sent), to price the trim
    output_capped: bool = False  # max_tokens is the route's max_output_tokens
    # quality (pipeline/judge.py, pipeline/recent.py, sidecar/shadow)
    signals: tuple[str, ...] = ()  # truncated | refusal | empty: the answer the app got
    answer_id: str | None = None  # the answer's `id` ("" if none) once it went out
    trace_id: str | None = None  # x-sidecar-trace-id, when tracing is on
    hit_by: tuple[str, str | None] | None = None  # a hit: the (model, tier) that answered
    shadow: Any = None  # a request sampled for its route's shadow trial: its capture

    @property
    def deadline(self) -> float:
        assert self.route is not None
        return self.started + self.route.timeout

    def response_headers(self) -> dict[str, str]:
        headers = {"x-sidecar-policy-version": self.snapshot.version}
        if self.route is not None:
            headers["x-sidecar-route"] = self.route.name
            headers["x-sidecar-attempts"] = str(self.attempts)
        if self.answered_by is not None:
            headers["x-sidecar-provider"] = self.answered_by.provider
            headers["x-sidecar-model"] = self.answered_by.name
            if self.failures:
                headers["x-sidecar-fallback-reason"] = self.failures[-1].error.kind
        if self.cost_usd is not None:
            headers["x-sidecar-cost-usd"] = f"{self.cost_usd:.8f}"
            if not self.usage_known:
                headers["x-sidecar-usage"] = "estimated"
        if self.cache in HITS or (self.spend and not self.stream):
            # Known only once every call is charged: not for a stream relayed from upstream.
            headers["x-sidecar-saved-usd"] = saved_header(self)
        if self.cache is not None:
            headers["x-sidecar-cache"] = self.cache
            if self.cache_similarity is not None:
                headers["x-sidecar-cache-similarity"] = f"{self.cache_similarity:.4f}"
            if self.cache_reason is not None:
                headers["x-sidecar-cache-reason"] = self.cache_reason
        if self.output is not None:
            headers["x-sidecar-output"] = self.output
        if self.downgraded_by is not None:
            headers["x-sidecar-downgraded"] = self.downgraded_by
        if self.trimmed_messages:
            headers["x-sidecar-trimmed"] = str(self.trimmed_messages)
        if self.tier is not None:
            headers["x-sidecar-tier"] = self.tier
            headers["x-sidecar-escalations"] = str(self.escalations)
        return headers
