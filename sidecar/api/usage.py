"""`GET /usage` on the ops port: spend, tokens, savings and app feedback per scope value,
and budget headroom.

The ops port listens on the pod IP for the kubelet, so this endpoint asks for a bearer
token when `SIDECAR_USAGE_TOKEN` is set (and should be, anywhere but a laptop).
"""

from __future__ import annotations

import hmac
import time
from typing import Any

import orjson
from aiohttp import web

from sidecar.api.keys import HOLDER, USAGE_TOKEN
from sidecar.api.proxy import JSON
from sidecar.pipeline.cache import purge
from sidecar.policy.schema import USAGE_SCOPES
from sidecar.stores import keys
from sidecar.stores.state import LEVER_FIELDS, LEVERS, StoreUnavailable, Usage


def error(status: int, message: str) -> web.Response:
    body = {"error": {"message": message, "type": "invalid_request_error", "code": status}}
    return web.Response(body=orjson.dumps(body), status=status, content_type=JSON)


def refused(request: web.Request) -> web.Response | None:
    """A 401 unless the request carries `SIDECAR_USAGE_TOKEN` (when it is set)."""
    token = request.app[USAGE_TOKEN]
    if token:
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), token.encode()):
            return error(401, "a bearer token is required (SIDECAR_USAGE_TOKEN)")
    return None


async def usage(request: web.Request) -> web.Response:
    if (refusal := refused(request)) is not None:
        return refusal
    snapshot = request.app[HOLDER].current
    if snapshot is None:
        return error(503, "no valid policy is loaded yet")
    scope = request.query.get("scope", "team")
    window = request.query.get("window", "day")
    if scope not in USAGE_SCOPES:
        return error(400, f"scope must be one of {', '.join(USAGE_SCOPES)}")
    if window not in keys.WINDOWS:
        return error(400, f"window must be one of {', '.join(keys.WINDOWS)}")
    now = time.time()
    bucket, _ = keys.bucket(window, now)
    bucket = request.query.get("bucket", bucket)
    prefix = f"u:{window}:{bucket}:{scope}:"
    try:
        rows = await snapshot.state.usage(prefix)
    except StoreUnavailable as exc:
        return error(503, f"state store unavailable ({exc})")
    budgets = [
        b for b in snapshot.policy.budgets.values() if b.scope == scope and b.window == window
    ]
    out: list[dict[str, Any]] = []
    for key, row in sorted(rows.items(), key=lambda kv: -kv[1].get("cost_usd", 0.0)):
        value = key[len(prefix) :]
        entry = _entry(value, row)
        applicable = [b for b in budgets if b.values is None or value in b.values]
        if applicable:
            entry["budgets"] = [
                {
                    "name": b.name,
                    "limit_usd": b.limit_usd,
                    "remaining_usd": max(0.0, b.limit_usd - row.get("cost_usd", 0.0)),
                    "on_exceed": b.on_exceed,
                }
                for b in applicable
            ]
        out.append(entry)
    body = {"scope": scope, "window": window, "bucket": bucket, "rows": out}
    return web.Response(body=orjson.dumps(body), content_type=JSON)


def _entry(value: str, row: dict[str, float]) -> dict[str, Any]:
    """One row as the API shows it: the counters, what the requests would have cost at
    their routes' baselines, and the saving by lever (pipeline/ledger.py)."""
    entry: dict[str, Any] = {"value": value}
    entry.update((f, row.get(f, 0.0)) for f in Usage.BASE)
    entry["baseline_usd"] = entry["cost_usd"] + entry["saved_usd"]
    entry["saved_by_lever"] = {
        lever: row.get(f, 0.0) for lever, f in zip(LEVERS, LEVER_FIELDS, strict=True)
    }
    scored = row.get("feedback", 0.0)
    entry["feedback"] = {
        "count": int(scored),
        "mean_score": row.get("feedback_score", 0.0) / scored if scored else None,
    }
    return entry


async def purge_cache(request: web.Request) -> web.Response:
    """`POST /cache/purge?route=NAME`: drop the route's cached answers (all scopes)."""
    if (refusal := refused(request)) is not None:
        return refusal
    holder = request.app[HOLDER]
    snapshot = holder.current
    name = request.query.get("route", "")
    route = snapshot.policy.routes.get(name) if snapshot else None
    if route is None or route.cache is None:
        return error(404, f"route '{name}' does not exist or has no cache")
    try:
        removed = await purge(holder.stores, route.cache, route.name)
    except StoreUnavailable as exc:
        return error(503, f"cache store unavailable ({exc})")
    return web.Response(
        body=orjson.dumps({"route": name, "cache": route.cache.name, "removed": removed}),
        content_type=JSON,
    )
