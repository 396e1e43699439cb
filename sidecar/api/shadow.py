"""`GET /shadow[?route=R][&days=N]` on the ops port: how the shadow trials compare, from the
state store (every replica's samples; sidecar/shadow/results.py), as `llm-sidecar shadow`
shows it. Behind `SIDECAR_USAGE_TOKEN`, as `/usage` is: it tells what routes spend.

Per route: its trial's settings, its shadow spend today against the daily limit, and what
the route itself spent per day over the window (for the projected saving); per candidate,
`results.candidate_report`. Routes whose policy has a trial are listed even before their
first sample; routes that had one earlier in the window stay listed.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from aiohttp import web

from sidecar.api.keys import HOLDER
from sidecar.api.proxy import JSON
from sidecar.api.usage import error, refused
from sidecar.runtime import Snapshot
from sidecar.shadow import results
from sidecar.shadow.trial import SCOPE
from sidecar.stores import keys
from sidecar.stores.state import StoreUnavailable

MAX_DAYS = results.KEEP_DAYS


async def shadow(request: web.Request) -> web.Response:
    if (refusal := refused(request)) is not None:
        return refusal
    snapshot = request.app[HOLDER].current
    if snapshot is None:
        return error(503, "no valid policy is loaded yet")
    only = request.query.get("route")
    try:
        days = int(request.query.get("days", "7"))
    except ValueError:
        days = 0
    if not 1 <= days <= MAX_DAYS:
        return error(400, f"days must be a whole number from 1 to {MAX_DAYS}")
    try:
        body = await report(snapshot, only, days, time.time())
    except StoreUnavailable as exc:
        return error(503, f"state store unavailable ({exc})")
    if only is not None and not body["routes"]:
        return error(404, f"route '{only}' has no shadow trial (and had none in {days} days)")
    return web.Response(body=orjson.dumps(body), content_type=JSON)


async def report(snapshot: Snapshot, only: str | None, days: int, now: float) -> dict[str, Any]:
    state = snapshot.state
    within = results.days(now, days)
    prefix = results.PREFIX + (f"{only}|" if only is not None else "")
    totals = results.sums(await state.tallies(prefix), within)
    configured = {
        name: route.shadow
        for name, route in snapshot.policy.routes.items()
        if route.shadow is not None and (only is None or name == only)
    }
    routes: dict[str, Any] = {}
    for name in sorted({*configured, *(route for route, _ in totals)}):
        trial = configured.get(name)
        per_day = await _route_spend(snapshot, name, within)
        today, _, _ = keys.row("day", SCOPE, name, now)
        spent, held = await state.spent(today)
        candidates = [c.name for c in trial.candidates] if trial else []
        candidates += sorted({c for r, c in totals if r == name} - set(candidates))
        routes[name] = {
            "configured": trial is not None,
            "sample": trial.sample if trial else None,
            "max_usd_per_day": trial.max_usd_per_day if trial else None,
            "spent_today_usd": spent,
            "held_usd": held,
            "route_usd_per_day": per_day,
            "candidates": [
                results.candidate_report(name, c, totals.get((name, c), {}), per_day)
                for c in candidates
            ],
        }
    return {"days": within, "routes": routes}


async def _route_spend(snapshot: Snapshot, route: str, within: list[str]) -> float | None:
    """The route's own spend per day over the days it had any."""
    spent: list[float] = []
    for day in within:
        key = f"u:day:{day}:route:{route}"
        row = (await snapshot.state.usage(key)).get(key)
        if row is not None:
            spent.append(row.get("cost_usd", 0.0))
    return sum(spent) / len(spent) if spent else None
