"""Quality metrics: what the app could see was wrong with an answer, what it said of the
answer afterwards, and how shadow candidates compared. Per route, model and (when the route
selects one) tier, so a move to a cheaper model shows what it did to quality.

Attributes stay bounded: route, model and tier names come from the policy, a feedback
label only when `quality.feedback.labels` lists it (else `(other)`), and the user only as
`telemetry.user_attribute` allows, capped as for every other metric.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sidecar.policy.model import Policy

if TYPE_CHECKING:
    from sidecar.telemetry.recorder import Telemetry

ROUTE, MODEL, TIER = "sidecar.route", "sidecar.model", "sidecar.tier"
CANDIDATE = "sidecar.shadow.candidate"


def attributes(route: str, model: str, tier: str | None) -> dict[str, Any]:
    attrs: dict[str, Any] = {ROUTE: route, MODEL: model}
    if tier is not None:
        attrs[TIER] = tier
    return attrs


def signals(
    tel: Telemetry, route: str, model: str, tier: str | None, found: tuple[str, ...]
) -> None:
    """An answer's signals (pipeline/judge.py), once per answer the app got."""
    attrs = attributes(route, model, tier)
    for signal in found:
        tel.signals.add(1, {**attrs, "sidecar.signal": signal})


def feedback(
    tel: Telemetry,
    policy: Policy,
    attrs: dict[str, Any],
    score: float,
    label: str | None,
    user: str | None,
) -> None:
    """One feedback, attributed to the answer's route, model and tier (`attrs`)."""
    labels = policy.quality.labels
    counted = dict(attrs)
    if policy.telemetry.user_attribute:
        counted["sidecar.user"] = tel.user_attribute(user, policy.telemetry.max_users)
    tel.feedback_score.record(score, counted)
    kind = "up" if score >= 0.5 else "down"
    named = label if label is None or label in labels else "(other)"
    tel.feedback.add(1, {**counted, "sidecar.feedback": kind, "sidecar.label": named or "(none)"})


def shadow_pair(
    tel: Telemetry,
    route: str,
    candidate: str,
    agreement: str,
    output: str,
    seconds: tuple[float, float] | None = None,
    cost: tuple[float, float] = (0.0, 0.0),
) -> None:
    """One shadow comparison: `agreement` agree | disagree | error (the candidate failed),
    `output` valid | invalid | unchecked (the route checks no schema); `seconds` and `cost`
    are (candidate, primary)."""
    attrs = {ROUTE: route, CANDIDATE: candidate}
    tel.shadow_pairs.add(1, {**attrs, "sidecar.agreement": agreement, "sidecar.output": output})
    if seconds is not None:
        tel.shadow_duration.record(seconds[0], {**attrs, "sidecar.side": "candidate"})
        tel.shadow_duration.record(seconds[1], {**attrs, "sidecar.side": "primary"})
        tel.shadow_cost.add(cost[0], {**attrs, "sidecar.side": "candidate"})
        tel.shadow_cost.add(cost[1], {**attrs, "sidecar.side": "primary"})
