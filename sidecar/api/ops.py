"""The ops listener: health for the kubelet, status for people. Nothing sensitive here:
it listens on all interfaces so the kubelet can reach it on the pod IP."""

from __future__ import annotations

import asyncio

import orjson
from aiohttp import web

from sidecar.api.keys import HOLDER, LIFECYCLE
from sidecar.api.proxy import JSON


async def healthz(request: web.Request) -> web.Response:
    return web.Response(body=b'{"status":"ok"}', content_type=JSON)


async def readyz(request: web.Request) -> web.Response:
    holder = request.app[HOLDER]
    if request.app[LIFECYCLE]["draining"]:
        return web.Response(body=b'{"status":"draining"}', status=503, content_type=JSON)
    if holder.current is None:
        return web.Response(body=b'{"status":"no valid policy"}', status=503, content_type=JSON)
    return web.Response(body=b'{"status":"ready"}', content_type=JSON)


async def stats(request: web.Request) -> web.Response:
    """Cumulative metrics of this process (what `llm-sidecar top` reads): counters and
    histograms with their buckets, so percentiles come from real distributions."""
    holder = request.app[HOLDER]
    await holder.refresh_budget_gauges()
    body = await asyncio.to_thread(holder.telemetry.stats)
    body["circuits"] = holder.stores.breakers.describe()
    body["queues"] = holder.stores.lines.waiting()
    body["policy_version"] = holder.current.version if holder.current else None
    return web.Response(body=orjson.dumps(body), content_type=JSON)


async def status(request: web.Request) -> web.Response:
    body = request.app[HOLDER].status()
    body["draining"] = request.app[LIFECYCLE]["draining"]
    return web.Response(body=orjson.dumps(body, option=orjson.OPT_INDENT_2), content_type=JSON)
