"""The ops listener: health for the kubelet, status for people, metrics for Prometheus.
Nothing sensitive here: it listens on all interfaces so the kubelet can reach it on the pod
IP. Metrics carry policy names, counts and costs; users only when the policy's
`telemetry.user_attribute` allows it (capped), as over OTLP."""

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


async def metrics(request: web.Request) -> web.Response:
    """The same metrics in Prometheus' exposition format (or OpenMetrics, when the scraper
    asks for it), for the chart's PodMonitor and ServiceMonitor. Names are the OTLP →
    Prometheus mapping's, as a Collector's Prometheus exporter writes them."""
    holder = request.app[HOLDER]
    await holder.refresh_budget_gauges()
    accept = request.headers.get("Accept", "")
    body, content_type = await asyncio.to_thread(holder.telemetry.scrape, accept)
    response = web.Response(body=body, headers={"Content-Type": content_type})
    response.enable_compression()  # when the scraper accepts it (Prometheus does)
    return response


async def status(request: web.Request) -> web.Response:
    body = request.app[HOLDER].status()
    body["draining"] = request.app[LIFECYCLE]["draining"]
    return web.Response(body=orjson.dumps(body, option=orjson.OPT_INDENT_2), content_type=JSON)
