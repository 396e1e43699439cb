"""`/metrics` on the ops port as Prometheus scrapes it: real traffic through a sidecar (the
official OpenAI SDK, a real fake upstream), then a scrape parsed with prometheus_client's
own parsers. The Grafana dashboard's queries are checked against the scrape, and the Helm
chart's monitors against where the sidecar serves it.

The fake upstream always reports 7 prompt and 3 completion tokens.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from sidecar.app import Sidecar
from tests.deploy.charts import CHART, container, pod_spec, render
from tests.support.sidecar import Sidecars
from tests.support.upstream import FakeOpenAI
from tests.support.wait import eventually

ROOT = Path(__file__).resolve().parents[2]
MESSAGES: Any = [{"role": "user", "content": "hi"}]
SECRET = "fake-live-TESTSECRET-9c1d"
APP_KEY = "app-token-TESTSECRET-31be"
POD = "checkout-7d9f6b-xk2p4"
PRICE_IN, PRICE_OUT = 1000, 2000  # USD per 1M tokens, every model
COST = (7 * PRICE_IN + 3 * PRICE_OUT) / 1e6
DURATION_BOUNDS = [0.01 * 2**i for i in range(14)]


def policy(upstream: FakeOpenAI, telemetry: str) -> str:
    models = "\n".join(
        f"  {m}: {{provider: main, name: up-{m}, price: {{input: {PRICE_IN}, output: {PRICE_OUT}}}"
        + (", circuit: {consecutive_failures: 5}" if m == "a" else "")
        + "}"
        for m in "abcd"
    )
    return f"""\
providers:
  main: {{type: openai, base_url: {upstream.base_url}, api_key: "${{OPENAI_API_KEY}}"}}
models:
{models}
schemas:
  obj: {{type: object, required: [x]}}
cache:
  answers: {{mode: exact}}
routes:
  r: {{targets: [a, b], retry: {{attempts: 1}}}}
  retrying: {{targets: [c], retry: {{attempts: 3, backoff: 10ms}}}}
  cached: {{targets: [b], cache: answers}}
  limited: {{targets: [b]}}
  queued: {{targets: [c]}}
  checked: {{targets: [d], output: {{schema: obj}}}}
  tiered:
    select: {{tiers: {{low: {{targets: [d]}}, high: {{targets: [b]}}}}, default: low}}
    cascade: {{}}
  shadowed:
    targets: [b]
    shadow: {{candidates: [c, d], sample: 1.0, max_usd_per_day: 1, max_concurrent: 1}}
limits:
  once: {{scope: route, routes: [limited], requests_per_minute: 1}}
  one-at-a-time: {{scope: route, routes: [queued], max_concurrent: 1, queue: {{max_wait: 5s}}}}
budgets:
  watch: {{scope: team, limit_usd: 0.000001, window: day, on_exceed: alert}}
telemetry: {telemetry}
"""


async def start(sidecars: Sidecars, upstream: FakeOpenAI, telemetry: str = "{}") -> Sidecar:
    return await sidecars.start(
        policy(upstream, telemetry),
        env={"OPENAI_API_KEY": SECRET, "K8S_POD_NAME": POD, "K8S_NAMESPACE_NAME": "shop"},
    )


def client(sc: Sidecar) -> openai.AsyncOpenAI:
    headers = {"x-sidecar-team": "shop", "x-sidecar-user": "ann"}
    return openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{sc.port}/v1",
        api_key=APP_KEY,
        max_retries=0,
        default_headers=headers,
    )


async def traffic(sc: Sidecar, upstream: FakeOpenAI) -> None:
    """Something for every panel of the dashboard: a fallback, retries, a stream, a cache
    miss and hit, a rate-limit rejection, a queue wait, a checked output, budget alerts, a
    cascade that escalates, a truncated answer, app feedback, a shadow comparison and a
    skipped shadow call."""
    upstream.behave("up-a", status=500)  # r falls back to b
    # retrying: two retries, then an answer cut off (finish reason length)
    upstream.behave("up-c", status=503, fail_times=2, finish_reason="length")
    upstream.behave("up-d", reply='{"x": 1}')
    async with client(sc) as api:
        await api.chat.completions.create(model="r", messages=MESSAGES)
        stream = await api.chat.completions.create(model="r", messages=MESSAGES, stream=True)
        async for _chunk in stream:
            pass
        await api.chat.completions.create(model="retrying", messages=MESSAGES)
        for _ in range(2):
            await api.chat.completions.create(model="cached", messages=MESSAGES, temperature=0)
        await api.chat.completions.create(model="limited", messages=MESSAGES)
        with pytest.raises(openai.RateLimitError):
            await api.chat.completions.create(model="limited", messages=MESSAGES)
        upstream.behave("up-c", delay=0.1)
        await asyncio.gather(
            *(api.chat.completions.create(model="queued", messages=MESSAGES) for _ in range(2))
        )
        await api.chat.completions.create(model="checked", messages=MESSAGES)
        upstream.behave("up-d", reply="I'm sorry, I can't help with that.")
        await api.chat.completions.create(model="tiered", messages=MESSAGES)  # escalated
        # A shadow trial: c compared, d skipped (max_concurrent 1 is taken by c's call).
        answer = await api.chat.completions.create(model="shadowed", messages=MESSAGES)
        await api.post("/feedback", body={"id": answer.id, "score": "up"}, cast_to=object)

    async def landed() -> bool:  # c's sixth call: three for retrying, two queued, the shadow
        return len(upstream.calls("up-c")) == 6 and not sc.holder.stores.shadows.running("shadowed")

    await eventually(landed)  # the shadow call comes after the answer


async def scrape(sc: Sidecar, accept: str | None = None) -> tuple[str, str]:
    headers = {"Accept": accept} if accept else {}
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{sc.ops_port}/metrics", headers=headers) as response,
    ):
        assert response.status == 200
        return await response.text(), response.headers["Content-Type"]


def samples(families: Iterable[Metric]) -> dict[str, list[Sample]]:
    """Samples by their own name (`..._total`, `..._bucket`), as PromQL sees them."""
    out: dict[str, list[Sample]] = defaultdict(list)
    for family in families:
        for sample in family.samples:
            out[sample.name].append(sample)
    return out


def value(found: dict[str, list[Sample]], name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`."""
    return sum(s.value for s in found[name] if all(s.labels.get(k) == v for k, v in labels.items()))


async def test_a_scrape_counts_requests_latency_and_cache_as_they_happened(
    sidecars: Sidecars, upstream: FakeOpenAI
):
    sc = await start(sidecars, upstream)
    await traffic(sc, upstream)
    text, content_type = await scrape(sc)
    assert content_type.startswith("text/plain; version=0.0.4")
    families = list(text_string_to_metric_families(text))
    found = samples(families)
    types = {f.name: f.type for f in families}
    assert types["sidecar_requests"] == "counter"
    assert types["gen_ai_client_operation_duration_seconds"] == "histogram"

    # Requests by route and status, as sent.
    assert value(found, "sidecar_requests_total", sidecar_route="r") == 2
    assert value(found, "sidecar_requests_total", sidecar_route="limited") == 2
    rejected = value(found, "sidecar_requests_total", http_response_status_code="429")
    assert rejected == 1
    assert sum(s.value for s in found["sidecar_requests_total"]) == 12
    # The latency histogram: the conventions' buckets, cumulative, counting every request.
    buckets = [
        s
        for s in found["gen_ai_client_operation_duration_seconds_bucket"]
        if s.labels["sidecar_route"] == "queued"
    ]
    assert [float(s.labels["le"]) for s in buckets] == [*DURATION_BOUNDS, float("inf")]
    counts = [s.value for s in buckets]
    assert counts == sorted(counts)
    assert counts[-1] == 2
    assert counts[DURATION_BOUNDS.index(0.08)] == 0  # each waited for the 100 ms upstream
    total = value(found, "gen_ai_client_operation_duration_seconds_count", sidecar_route="queued")
    assert total == 2
    assert (
        value(found, "gen_ai_client_operation_duration_seconds_sum", sidecar_route="queued") > 0.2
    )
    # The cache, and what its hit saved.
    assert value(found, "sidecar_cache_lookups_total", result="miss") == 1
    assert value(found, "sidecar_cache_lookups_total", result="hit") == 1
    assert value(found, "sidecar_cache_saved_USD_total", sidecar_route="cached") == pytest.approx(
        COST
    )
    # The pod, as the dashboard filters it; the rest of the resource on target_info.
    assert {s.labels["k8s_pod_name"] for s in found["sidecar_requests_total"]} == {POD}
    [info] = found["target_info"]
    assert info.labels["service_name"] == "llm-sidecar"
    # Nothing secret, and no user without the policy's telemetry.user_attribute.
    assert SECRET not in text
    assert APP_KEY not in text
    assert "TESTSECRET" not in text
    assert "ann" not in {v for s in families for x in s.samples for v in x.labels.values()}

    # A scraper that asks for OpenMetrics gets it, with the same series.
    text, content_type = await scrape(sc, "application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text; version=1.0.0")
    open_found = samples(openmetrics_families(text))
    assert value(open_found, "sidecar_requests_total", sidecar_route="r") == 2
    assert value(open_found, "sidecar_cache_lookups_total", result="hit") == 1


def dashboard_queries() -> list[str]:
    dashboard = json.loads((ROOT / "deploy/observability/grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return exprs


# Labels Prometheus adds to every scraped series itself.
TARGET_LABELS = {"job", "instance"}


async def test_every_query_of_the_dashboard_finds_its_series_and_labels_in_a_scrape(
    sidecars: Sidecars, upstream: FakeOpenAI
):
    sc = await start(sidecars, upstream, "{user_attribute: true, max_users: 5}")
    await traffic(sc, upstream)
    found = samples(text_string_to_metric_families((await scrape(sc))[0]))
    checked = 0
    for expr in dashboard_queries():
        # Each `by (...)` groups the series of the first metric after it.
        grouped: dict[str, set[str]] = defaultdict(set)
        for clause, name in re.findall(r"by \(([^)]*)\)[^{]*?([a-zA-Z_:][a-zA-Z0-9_:]*)\{", expr):
            grouped[name] |= {label.strip() for label in clause.split(",")}
        for name, selector in re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^}]*)\}", expr):
            assert found.get(name), f"{name} is not in a scrape ({expr})"
            matchers = set(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*[=!]~?", selector))
            labels = {k for s in found[name] for k in s.labels}
            missing = (matchers | grouped[name]) - labels - TARGET_LABELS
            assert not missing, f"{name} has no {missing} ({expr})"
            checked += 1
        for name in re.findall(r"label_values\((\w+)", expr):  # template variables
            assert found.get(name), name
    assert checked > 25


def test_the_charts_monitors_scrape_the_ops_listener_at_metrics():
    """The PodMonitor and ServiceMonitor point at the port the sidecar's ops listener binds
    (SIDECAR_OPS_PORT), at the path it serves (ops_app's routes)."""
    from sidecar.app import ops_app
    from sidecar.runtime import Runtime

    served = {
        r.resource.canonical
        for r in ops_app(Runtime(ROOT / "policies"), {}, "").router.routes()
        if r.method == "GET" and r.resource is not None
    }
    out = render(CHART, {"metrics": {"podMonitor": {"enabled": True}}})
    c = container(pod_spec(out.one("Deployment")))
    ops_port = int(next(e["value"] for e in c["env"] if e["name"] == "SIDECAR_OPS_PORT"))
    [endpoint] = out.one("PodMonitor")["spec"]["podMetricsEndpoints"]
    [port] = [p for p in c["ports"] if p["name"] == endpoint["port"]]
    assert port["containerPort"] == ops_port
    assert endpoint["path"] in served

    out = render(CHART, {"metrics": {"serviceMonitor": {"enabled": True}}})
    [endpoint] = out.one("ServiceMonitor")["spec"]["endpoints"]
    [port] = [p for p in out.one("Service")["spec"]["ports"] if p["name"] == endpoint["port"]]
    assert port["targetPort"] == "sidecar-ops"
    assert port["port"] == ops_port
    assert endpoint["path"] in served
