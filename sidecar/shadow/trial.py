"""A sampled request's shadow calls, run once its answer is out (see the package's doc).

Per candidate, in a task of its own (stores/shadows.py bounds them per route):

1. hold the call's estimated cost against the route's shadow spend of the day, as a budget
   holds (`state.reserve`, all replicas): no room, and the sample is skipped and counted;
2. call the candidate as a JSON request: the request the primary model got, without
   streaming, with the same native schema; through the provider layer, no admission;
3. compare (compare.py), check the route's schema on its answer, and embed both answers
   when the trial compares semantically (that call is the trial's spend too);
4. book it: the spend in the usage rows of scope `shadow` (the route), `model` (the
   candidate) and `global`, the hold settled into it; the ledger counts the spend as the
   `shadow` lever, against the saving; the comparison in the trial's result row; metrics.

A candidate that fails or times out is counted as an error (a timed-out call is charged
its input, the least a provider bills for a call it started; a cancelled one at shutdown
too). Nothing here can reach the app: its answer went out before any of it started.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

import orjson

from sidecar.errors import UpstreamError
from sidecar.pipeline.context import RequestContext
from sidecar.pipeline.ledger import SHADOW, answer_tokens, charge, tally
from sidecar.pipeline.meter import charge_unused
from sidecar.pipeline.pricing import cost_usd
from sidecar.pipeline.validate import NOTHING, conforms
from sidecar.policy.model import Model, ShadowPolicy
from sidecar.providers.base import CHAT, EMBEDDINGS, Call
from sidecar.shadow import results
from sidecar.shadow.compare import Said, compare, cosine, said, structured
from sidecar.shadow.sample import Capture
from sidecar.stores import keys
from sidecar.stores.state import Hold, StoreUnavailable, Usage
from sidecar.telemetry import quality
from sidecar.tokens import estimate_request

log = logging.getLogger("sidecar.shadow")

SCOPE = "shadow"  # the usage scope of trial spend; its value is the route
_LIMIT_PAUSE = 60.0  # a route found at its limit is not asked again for this long
_STREAMING = ("stream", "stream_options")


def launch(ctx: RequestContext) -> None:
    """From the handler, after the answer's last byte and its books: start the sampled
    request's shadow calls. Returns at once."""
    capture = ctx.shadow
    route = ctx.route
    if not isinstance(capture, Capture) or route is None or route.shadow is None:
        return
    if ctx.answered_by is None or ctx.output in ("default", "invalid"):
        return  # no model's answer to compare with
    primary = capture.answer()
    if primary is None:
        return
    shadows = ctx.snapshot.stores.shadows
    if shadows.paused(route.name):
        for candidate in route.shadow.candidates:
            _skipped(ctx, candidate, "limit")
        return
    primary_seconds = max(0.0, capture.ended - ctx.started)
    for candidate in route.shadow.candidates:
        if candidate.name == ctx.answered_by.name:
            continue  # it answered this one itself (a fallback, a tier): nothing to compare
        work = _trial(ctx, route.shadow, candidate, primary, primary_seconds)
        if not shadows.start(route.name, route.shadow.max_concurrent, work):
            _skipped(ctx, candidate, "busy")


def _skipped(ctx: RequestContext, candidate: Model, why: str) -> None:
    attrs = {quality.ROUTE: ctx.route.name if ctx.route else "", quality.CANDIDATE: candidate.name}
    ctx.snapshot.telemetry.shadow_skipped.add(1, {**attrs, "sidecar.reason": why})


def _estimate(model: Model, tokens: tuple[int, int]) -> float:
    """What to hold: the candidate's price at the primary's input and twice its output
    (a candidate may say more); at least one cent's millionth, so a hold always holds."""
    return max(1e-6, cost_usd(model.price, tokens[0], 2 * max(tokens[1], 16), 0))


async def _trial(
    ctx: RequestContext,
    shadow: ShadowPolicy,
    candidate: Model,
    primary: dict[str, Any],
    primary_seconds: float,
) -> None:
    route = ctx.route
    assert route is not None
    snapshot = ctx.snapshot
    now = time.time()
    limit_key, day_end, _ = keys.row("day", SCOPE, route.name, now)
    row, row_expires = results.key(route.name, candidate.name, now)
    body = {k: v for k, v in ctx.body.items() if k not in _STREAMING}
    trial = RequestContext(CHAT, body, ctx.headers, snapshot, client_body=ctx.client_body)
    trial.route, trial.user, trial.team, trial.app_key = route, ctx.user, ctx.team, ctx.app_key
    trial.estimate_in = ctx.estimate_in or estimate_request(body)
    tokens = answer_tokens(ctx) or (trial.estimate_in, 0)
    estimate = _estimate(candidate, tokens)
    hold = Hold(uuid.uuid4().hex, (limit_key,), estimate, now + shadow.timeout + 60)
    try:
        if await snapshot.state.reserve(hold, (shadow.max_usd_per_day,)) != -1:
            snapshot.stores.shadows.pause(route.name, min(_LIMIT_PAUSE, day_end - now))
            _skipped(ctx, candidate, "limit")
            await snapshot.state.tally(row, {"skipped_limit": 1}, row_expires)
            return
    except StoreUnavailable as exc:
        log.error("shadow: state store unavailable (%s); sample skipped", exc)
        return
    attrs = {quality.ROUTE: route.name, quality.CANDIDATE: candidate.name}
    snapshot.telemetry.shadow_running.add(1, attrs)
    try:
        if snapshot.providers[candidate.provider].full:
            _skipped(ctx, candidate, "busy")
            return
        answer, seconds = await _call(trial, shadow, candidate, ctx.native)
        if answer is None:
            await snapshot.state.tally(row, {"errors": 1}, row_expires)
            quality.shadow_pair(
                snapshot.telemetry, route.name, candidate.name, "error", "unchecked"
            )
            return
        await _compare(ctx, trial, shadow, candidate, (primary, answer), (primary_seconds, seconds))
    except StoreUnavailable as exc:
        log.error("shadow: state store unavailable (%s); a comparison is lost", exc)
    finally:
        snapshot.telemetry.shadow_running.add(-1, attrs)
        await _book(trial, candidate, hold, now)


async def _call(
    trial: RequestContext, shadow: ShadowPolicy, candidate: Model, native: Any
) -> tuple[dict[str, Any] | None, float]:
    """The candidate's answer (None when it failed) and how long it took, charged to the
    trial at its usage; a call cut short (timed out, or cancelled at shutdown) at its
    input, the least a provider bills for a call it started."""
    provider = trial.snapshot.providers[candidate.provider]
    started = time.monotonic()
    try:
        async with asyncio.timeout(shadow.timeout):
            reply = await provider.send(Call(CHAT, trial.body, candidate.upstream, False, native))
        seconds = time.monotonic() - started
        answer = orjson.loads(reply.body)
        charge_unused(trial, candidate, reply.body, SHADOW)
    except TimeoutError:
        charge_unused(trial, candidate, None, SHADOW)
        return None, 0.0
    except (UpstreamError, orjson.JSONDecodeError) as exc:
        route = trial.route.name if trial.route else "?"
        log.info("shadow: %s on route %s failed (%s)", candidate.name, route, exc)
        return None, 0.0
    except asyncio.CancelledError:
        charge_unused(trial, candidate, None, SHADOW)
        raise
    return (answer if isinstance(answer, dict) else None), seconds


async def _compare(
    ctx: RequestContext,
    trial: RequestContext,
    shadow: ShadowPolicy,
    candidate: Model,
    answers: tuple[dict[str, Any], dict[str, Any]],
    seconds: tuple[float, float],
) -> None:
    """Compare the candidate's answer with the primary's; record the result row and the
    metrics. `answers` and `seconds` are (primary, candidate)."""
    route = trial.route
    assert route is not None
    # What the route would pay with the candidate: its call, not the trial's extras.
    cost = trial.spend[0].cost if trial.spend else 0.0
    primary_cost = ctx.cost_usd or 0.0
    is_structured = structured(ctx.client_body, route.output is not None)
    ours, theirs = said(answers[0], is_structured), said(answers[1], is_structured)
    similarity = await _similarity(trial, shadow, ours, theirs, is_structured)
    agreement = compare(ours, theirs, is_structured, similarity, shadow.similarity)
    problems = conforms(trial, answers[1])
    valid = None if problems is None else not problems
    row, row_expires = results.key(route.name, candidate.name, time.time())
    fields = results.compared(agreement, valid, seconds[1], seconds[0], cost, primary_cost)
    await trial.snapshot.state.tally(row, fields, row_expires)
    quality.shadow_pair(
        trial.snapshot.telemetry,
        route.name,
        candidate.name,
        "agree" if agreement.agree else "disagree",
        "unchecked" if valid is None else ("valid" if valid else "invalid"),
        (seconds[1], seconds[0]),
        (cost, primary_cost),
    )


async def _similarity(
    trial: RequestContext, shadow: ShadowPolicy, ours: Said, theirs: Said, is_structured: bool
) -> float | None:
    """The two answers' cosine similarity, by the trial's embedding model; None when it has
    none, when JSON-equality decides, or when the embedding fails (it is an extra)."""
    model = shadow.embedding
    if model is None or (is_structured and ours.value is not NOTHING):
        return None
    if " ".join(ours.text.split()) == " ".join(theirs.text.split()):
        return 1.0
    provider = trial.snapshot.providers[model.provider]
    try:
        async with asyncio.timeout(shadow.timeout):
            reply = await provider.send(
                Call(EMBEDDINGS, {"input": [ours.text, theirs.text]}, model.upstream, False)
            )
        answer = orjson.loads(reply.body)
        data = sorted(answer["data"], key=lambda d: d.get("index", 0))
        first, second = data[0]["embedding"], data[1]["embedding"]
    except (TimeoutError, UpstreamError, orjson.JSONDecodeError, KeyError, IndexError, TypeError):
        log.info("shadow: embedding with %s failed; no semantic comparison", model.name)
        return None
    tokens = int((answer.get("usage") or {}).get("prompt_tokens") or 0)
    charge(trial, model, tokens, 0, purpose=SHADOW)
    return cosine(first, second)


async def _book(trial: RequestContext, candidate: Model, hold: Hold, now: float) -> None:
    """Settle the hold into what the trial spent (nothing, when it made no call): usage
    rows of the trial's route (scope `shadow`), the candidate (`model`) and `global` — the
    app's own rows and budgets never see it — and the ledger's `shadow` lever; and the
    cost metrics, as a request's."""
    route = trial.route
    assert route is not None
    state = trial.snapshot.state
    usage, rows = Usage(0), ()
    ledger = tally(trial) if trial.spend else None
    if ledger is not None:
        first = trial.spend[0]
        cost = trial.cost_usd or 0.0
        usage = Usage(
            0,
            first.input_tokens,
            first.output_tokens,
            first.cached,
            cost,
            ledger.saved_usd,
            ledger.saved,
        )
        rows = _rows(route.name, candidate.name, now)
    try:
        await state.settle(hold, rows, usage)
    except StoreUnavailable as exc:
        log.error("shadow: state store unavailable (%s); a shadow call's spend is lost", exc)
    if ledger is not None:
        tel = trial.snapshot.telemetry
        attrs = {"sidecar.route": route.name, "sidecar.model": candidate.name}
        tel.cost.add(trial.cost_usd or 0.0, attrs)
        for lever, usd in ledger.by_lever().items():
            tel.cost_saved.add(usd, {**attrs, "sidecar.lever": lever})


def _rows(route: str, candidate: str, now: float) -> tuple[tuple[str, float], ...]:
    scopes = (("global", "*"), ("model", candidate), (SCOPE, route))
    return tuple(
        (key, expires)
        for scope, value in scopes
        for window in keys.WINDOWS
        for key, _, expires in (keys.row(window, scope, value, now),)
    )
