"""The short-lived index of recent answers that app feedback is attributed through.

Each answer that went out is noted in the state store under its `id` (and its trace id,
when tracing is on) for `quality.feedback.ttl`: the route, model and tier that produced it,
and who asked. In the state store, so feedback that reaches another replica finds it; an
answer served from the cache is noted again under its stored `id`, with the model that
produced it. Written in `finish` as the answer goes out, first of its books (off the app's
path: a slow store never slows an answer); feedback that arrives before the note landed
waits for it a moment (`_LATE`). One store write per answer: in an in-process store a
dict entry, at most `MAX_NOTES` of them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import orjson

from sidecar.pipeline.account import usage_rows
from sidecar.stores.state import State, StoreUnavailable, Usage
from sidecar.telemetry import quality

if TYPE_CHECKING:
    from sidecar.pipeline.context import RequestContext
    from sidecar.runtime import Snapshot

log = logging.getLogger("sidecar.feedback")

_ANTHROPIC_PREFIX = "msg_"  # an OpenAI-shaped answer's id, as Anthropic-ingress apps see it
_LATE = (0.05, 0.1, 0.2, 0.4)  # waits before looking again for an answer not noted yet


@dataclass(frozen=True, slots=True)
class Answered:
    """What an answer's feedback is counted against."""

    route: str
    model: str
    tier: str | None
    cache: str | None  # hit | semantic-hit, when it was served from the cache
    user: str | None
    team: str | None
    key: str | None


def _key(answer_id: str) -> str:
    return f"a:{answer_id}"


async def index_answer(ctx: RequestContext) -> None:
    """Note the answer the app got. Never raises: feedback is worth a log line, not more."""
    ttl = ctx.snapshot.policy.quality.feedback_ttl
    if not ttl or ctx.answer_id is None or ctx.route is None:
        return  # no feedback, or no answer went out (an error, a default)
    if ctx.answered_by is not None:
        model, tier = ctx.answered_by.name, ctx.tier
    elif ctx.hit_by is not None:
        model, tier = ctx.hit_by
    else:
        return
    value = orjson.dumps(
        [ctx.route.name, model, tier, ctx.cache, ctx.user, ctx.team, ctx.app_key]
    ).decode()
    try:
        for key in (ctx.answer_id, ctx.trace_id):
            if key:
                await ctx.snapshot.state.note(_key(key), value, ttl)
    except StoreUnavailable as exc:
        log.error("state store unavailable (%s): this answer takes no feedback", exc)
    except Exception:
        log.exception("noting the answer for feedback failed")


async def find(state: State, answer_id: str) -> Answered | None:
    """The answer `answer_id` names (its `id`, the Anthropic form of it, or its trace id);
    None when unknown or expired, after looking again a few times within a second (an
    answer's note lands just after its last byte). May raise StoreUnavailable."""
    keys = [_key(answer_id)]
    if answer_id.startswith(_ANTHROPIC_PREFIX):
        keys.append(_key(answer_id.removeprefix(_ANTHROPIC_PREFIX)))
    for wait in (0.0, *_LATE):
        await asyncio.sleep(wait)
        for key in keys:
            raw = await state.recall(key)
            if raw is not None:
                route, model, tier, cache, user, team, app_key = orjson.loads(raw)
                return Answered(route, model, tier, cache, user, team, app_key)
    return None


async def record_feedback(
    snapshot: Snapshot, answered: Answered, score: float, label: str | None
) -> None:
    """Count one feedback against the answer: its metrics, and the usage rows of who asked,
    the route and the model (a score, not a request: `requests` does not move). May raise
    StoreUnavailable."""
    values = (
        "*",
        answered.user or "(none)",
        answered.team or "(none)",
        answered.route,
        answered.model,
        answered.key or "(none)",
    )
    rows = usage_rows(int(time.time()), values)
    await snapshot.state.settle(None, rows, Usage(0, feedback=1, feedback_score=score))
    attrs = quality.attributes(answered.route, answered.model, answered.tier)
    quality.feedback(snapshot.telemetry, snapshot.policy, attrs, score, label, answered.user)
