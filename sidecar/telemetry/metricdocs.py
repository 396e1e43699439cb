"""What the metrics and spans carry, for the metrics reference (docs/reference/metrics.md).

Names, kinds, units and descriptions come from the instruments themselves (recorder.py);
this module adds what they cannot say: the attributes each is recorded with, and a
description where an instrument was declared without one. A test fails when an instrument
has no entry here (or an entry names no instrument), so a new metric is documented with it.
"""

from __future__ import annotations

from typing import NamedTuple


class MetricDoc(NamedTuple):
    attributes: tuple[str, ...]
    description: str = ""  # used when the instrument has none


# What an attribute holds, once for every metric and span that carries it.
ATTRIBUTES = {
    "gen_ai.operation.name": "`chat` or `embeddings`",
    "gen_ai.request.model": "the model the app asked for (`(unrouted)` in metrics when no "
    "route matched; spans say what was asked)",
    "gen_ai.response.model": "the provider's name of the model that answered",
    "gen_ai.provider.name": "the answering provider's type: `openai`, `anthropic`, `mock`",
    "gen_ai.token.type": "`input` or `output`",
    "gen_ai.usage.input_tokens": "input tokens of the answer",
    "gen_ai.usage.output_tokens": "output tokens of the answer",
    "gen_ai.response.finish_reasons": "the answer's finish reasons",
    "http.response.status_code": "the status the app got",
    "error.type": "the error code (`rate_limited`, `upstream_failed`, ...) when it failed",
    "server.address": "the provider's host",
    "server.port": "the provider's port",
    "enduser.id": "the caller (`x-sidecar-user`, else the body's `user`), with "
    "`telemetry.identity_in_spans`",
    "sidecar.route": "the route's name (`(none)` when no route matched)",
    "sidecar.model": "the policy's name of the model",
    "sidecar.provider": "the policy's name of the provider",
    "sidecar.user": "the caller, only with `telemetry.user_attribute` (at most `max_users`, "
    "then `(other)`)",
    "sidecar.team": "the caller's team, with `telemetry.identity_in_spans`",
    "sidecar.fallback_reason": "the failure class that moved the request to a later target",
    "sidecar.lever": "the savings ledger's lever: `selection`, `trim`, `prompt_cache`, "
    "`batch`, `cache`, `retry`, `hedge`, ...",
    "sidecar.limit": "the limit's name",
    "sidecar.budget": "the budget's name",
    "sidecar.budget.scope": "the budget's scope",
    "sidecar.budget.window": "the budget's window",
    "sidecar.budget.scope_value": "the scope value the spend is counted for",
    "sidecar.output": "an output check: `valid`, `repaired`, `default`, `rejected` or "
    "`invalid`; a shadow answer: `valid`, `invalid` or `unchecked`",
    "sidecar.enforce": "`native` when the provider was asked to enforce the schema, else `none`",
    "sidecar.target": "the model whose breaker it is",
    "sidecar.attempt": "the attempt's number in the request",
    "sidecar.attempts": "upstream calls made for the request",
    "sidecar.policy_version": "the policy's content hash",
    "sidecar.cost_usd": "what the request cost",
    "sidecar.baseline_usd": "what it would have cost at the route's baseline",
    "sidecar.saved_usd": "baseline minus cost",
    "sidecar.downgraded_by": "the budget that downgraded the request",
    "sidecar.job.id": "the job the request runs for",
    "sidecar.tier": "the tier of a route with `select` that answered",
    "sidecar.tier.reason": "why that tier: `rule`, `classifier`, `unsure`, `unavailable`, "
    "`default` or `sticky`",
    "sidecar.escalations": "answers a verified cascade rejected on the way",
    "sidecar.cascade.rejected": "each rejected answer as `tier:check`",
    "sidecar.check": "a cascade check: `empty`, `finish`, `refusal`, `schema` or `logprob`",
    "result": "a cache lookup: `hit`, `semantic-hit`, `miss`, `bypass`, `ineligible` or "
    "`unavailable`; a cascade check: "
    "`pass`, `fail` or `unavailable`; a verified hit: `agree`, `disagree` or `error`",
    "reason": "why a request was not a cache hit: `x-sidecar-cache`, `no-store`, `tools`, "
    "`temperature`, `guard:<kind>`, `tightened`, `store`, ...",
    "sidecar.cache": "the `cache` entry's name",
    "sidecar.signal": "a quality signal: `truncated`, `refusal` or `empty`",
    "sidecar.feedback": "`up` (a score of 0.5 or more) or `down`",
    "sidecar.label": "a `quality.feedback.labels` label, `(other)` or `(none)`",
    "sidecar.shadow.candidate": "the shadow trial's candidate model",
    "sidecar.agreement": "`agree`, `disagree` or `error` (the candidate failed)",
    "sidecar.side": "`candidate` or `primary`",
    "sidecar.reason": "why a sample was not shadowed: `limit` or `busy`",
    "outcome": "an attempt: `ok` or its failure class; a batch line: how it landed; a "
    "checked answer: `accepted` or `escalated`",
    "event": "what the budget did: `downgrade` or `alert`",
    "state": "`deferred` (waiting for a provider batch) or `submitted` (in one)",
}

_REQUEST = (
    "gen_ai.operation.name",
    "gen_ai.request.model",
    "sidecar.route",
    "http.response.status_code",
    "gen_ai.provider.name",
    "gen_ai.response.model",
    "sidecar.model",
    "error.type",
)
_BUDGET = ("sidecar.budget", "sidecar.budget.scope", "sidecar.budget.window")

METRICS: dict[str, MetricDoc] = {
    "gen_ai.client.operation.duration": MetricDoc(_REQUEST),
    "gen_ai.client.token.usage": MetricDoc(
        (
            *(a for a in _REQUEST if a != "http.response.status_code"),
            "gen_ai.token.type",
            "sidecar.user",
        )
    ),
    "gen_ai.client.operation.time_to_first_chunk": MetricDoc(_REQUEST),
    "gen_ai.server.time_to_first_token": MetricDoc(_REQUEST),
    "sidecar.requests": MetricDoc(_REQUEST, "Requests, by route, model and outcome"),
    "sidecar.upstream.attempts": MetricDoc(
        ("sidecar.model", "outcome"), "Upstream calls, by model and outcome"
    ),
    "sidecar.retries": MetricDoc(
        ("sidecar.route",), "Calls beyond the first to a model (retries, validation retries)"
    ),
    "sidecar.fallbacks": MetricDoc(
        ("sidecar.route", "sidecar.fallback_reason"), "Requests a later target answered"
    ),
    "sidecar.cost": MetricDoc(
        ("sidecar.route", "sidecar.model", "sidecar.user"), "What the requests cost"
    ),
    "sidecar.cost.saved": MetricDoc(
        ("sidecar.route", "sidecar.model", "sidecar.user", "sidecar.lever")
    ),
    "sidecar.cost.baseline": MetricDoc(("sidecar.route", "sidecar.model", "sidecar.user")),
    "sidecar.ratelimit.rejections": MetricDoc(
        ("sidecar.route", "error.type"), "Requests refused by a limit or budget"
    ),
    "sidecar.queue.wait": MetricDoc(("sidecar.limit",), "Time spent in a limit's waiting line"),
    "sidecar.budget.events": MetricDoc(
        ("sidecar.budget", "event"), "Downgrades and alerts of budgets past their limit"
    ),
    "sidecar.cache.lookups": MetricDoc(("sidecar.route", "result", "reason")),
    "sidecar.cache.saved": MetricDoc(("sidecar.route",)),
    "sidecar.output.validations": MetricDoc(
        ("sidecar.route", "sidecar.model", "sidecar.output", "sidecar.enforce", "sidecar.tier"),
        "Answers checked against a route's output schema, by verdict",
    ),
    "sidecar.batch.lines.finished": MetricDoc(("sidecar.provider", "outcome")),
    "sidecar.prompt.trimmed": MetricDoc(("sidecar.route",)),
    "sidecar.prompt.trimmed_tokens": MetricDoc(("sidecar.route",)),
    "sidecar.selection.requests": MetricDoc(
        ("sidecar.route", "sidecar.tier", "sidecar.tier.reason")
    ),
    "sidecar.cascade.answers": MetricDoc(("sidecar.route", "sidecar.tier", "outcome")),
    "sidecar.cascade.checks": MetricDoc(
        ("sidecar.route", "sidecar.tier", "sidecar.check", "result")
    ),
    "sidecar.cascade.escalation.cost": MetricDoc(("sidecar.route", "sidecar.tier")),
    "sidecar.cache.verifications": MetricDoc(("sidecar.cache", "result")),
    "sidecar.cache.agreement": MetricDoc(("sidecar.cache",)),
    "sidecar.cache.similarity": MetricDoc(("sidecar.cache",)),
    "sidecar.quality.signals": MetricDoc(
        ("sidecar.route", "sidecar.model", "sidecar.tier", "sidecar.signal")
    ),
    "sidecar.feedback": MetricDoc(
        (
            "sidecar.route",
            "sidecar.model",
            "sidecar.tier",
            "sidecar.user",
            "sidecar.feedback",
            "sidecar.label",
        )
    ),
    "sidecar.feedback.score": MetricDoc(
        ("sidecar.route", "sidecar.model", "sidecar.tier", "sidecar.user")
    ),
    "sidecar.shadow.comparisons": MetricDoc(
        ("sidecar.route", "sidecar.shadow.candidate", "sidecar.agreement", "sidecar.output")
    ),
    "sidecar.shadow.skipped": MetricDoc(
        ("sidecar.route", "sidecar.shadow.candidate", "sidecar.reason")
    ),
    "sidecar.shadow.duration": MetricDoc(
        ("sidecar.route", "sidecar.shadow.candidate", "sidecar.side")
    ),
    "sidecar.shadow.cost": MetricDoc(("sidecar.route", "sidecar.shadow.candidate", "sidecar.side")),
    "sidecar.shadow.running": MetricDoc(("sidecar.route", "sidecar.shadow.candidate")),
    "sidecar.circuit.state": MetricDoc(("sidecar.target",)),
    "sidecar.budget.spend": MetricDoc((*_BUDGET, "sidecar.budget.scope_value")),
    "sidecar.budget.remaining": MetricDoc((*_BUDGET, "sidecar.budget.scope_value")),
    "sidecar.batch.lines": MetricDoc(("state",)),
    "sidecar.batch.line.age": MetricDoc(("state",)),
}


class SpanDoc(NamedTuple):
    name: str
    kind: str
    about: str
    attributes: tuple[str, ...]


SPANS = (
    SpanDoc(
        "{operation} {model}",
        "server",
        "One per request (and per job run), continuing the app's `traceparent`; its trace id "
        "comes back in `x-sidecar-trace-id`.",
        (
            *_REQUEST,
            "sidecar.policy_version",
            "sidecar.attempts",
            "enduser.id",
            "sidecar.team",
            "gen_ai.usage.input_tokens",
            "gen_ai.usage.output_tokens",
            "sidecar.cost_usd",
            "sidecar.baseline_usd",
            "sidecar.saved_usd",
            "gen_ai.response.finish_reasons",
            "sidecar.fallback_reason",
            "sidecar.downgraded_by",
            "sidecar.job.id",
            "sidecar.tier",
            "sidecar.tier.reason",
            "sidecar.escalations",
            "sidecar.cascade.rejected",
        ),
    ),
    SpanDoc(
        "{operation} {upstream model}",
        "client",
        "One per upstream attempt (retries, hedges and validation retries included); it "
        "lasts as long as the answer's stream.",
        (
            "gen_ai.operation.name",
            "gen_ai.provider.name",
            "gen_ai.request.model",
            "server.address",
            "server.port",
            "sidecar.provider",
            "sidecar.model",
            "sidecar.attempt",
            "gen_ai.response.model",
            "gen_ai.usage.input_tokens",
            "gen_ai.usage.output_tokens",
            "http.response.status_code",
            "error.type",
        ),
    ),
    SpanDoc(
        "admission wait",
        "internal",
        "The time a request waited in a limit's line.",
        ("sidecar.limit",),
    ),
)
