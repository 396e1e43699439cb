"""Traces and metrics as a collector receives them: the sidecar exports over real OTLP
(HTTP/protobuf, and gRPC once) to a receiver in the test, which decodes them with
opentelemetry-proto. Clients are the official OpenAI SDK; upstreams are real fake servers.

The fake upstream always reports 7 prompt and 3 completion tokens.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from opentelemetry.sdk.trace.sampling import TraceIdRatioBased

from sidecar.app import Sidecar
from tests.support.otlp import OtlpReceiver, ReceivedSpan, collect
from tests.support.sidecar import SidecarProcess, Sidecars, free_port, start_sidecar, write_policy
from tests.support.upstream import FakeOpenAI

MESSAGES = [{"role": "user", "content": "hi"}]
SECRET = "fake-live-TESTSECRET-4f9a8b7c6d5e"
APP_KEY = "app-token-TESTSECRET-77aa"
POD = "checkout-7d9f6b-xk2p4"
IN, OUT = 7, 3
PRICES = {"a": (1000, 2000), "b": (3000, 5000), "c": (100, 200)}

# The GenAI semantic conventions' advice for these histograms.
DURATION_BOUNDS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48)
DURATION_BOUNDS += (40.96, 81.92)
TOKEN_BOUNDS = tuple(float(4**i) for i in range(14))  # 1, 4, 16, ... 67108864
TTFT_BOUNDS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5)
TTFT_BOUNDS += (5.0, 7.5, 10.0)


def cost(model: str) -> float:
    price_in, price_out = PRICES[model]
    return (IN * price_in + OUT * price_out) / 1e6


Make = Callable[..., Any]


@pytest.fixture(autouse=True)
def fast_export(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDK reads these from os.environ itself (not from the env given to the sidecar)."""
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "200")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_always_on")  # every request


@pytest.fixture
def make(otlp: OtlpReceiver, upstream: FakeOpenAI, sidecars: Sidecars) -> Make:
    """Start a sidecar exporting to `otlp`; `extra` is appended to the policy, `env` to
    the environment it is given. `otlp` is set up first, so it is torn down after the
    sidecars: their last export at stop finds it there instead of waiting out a timeout."""

    async def start(
        extra: str = "", env: Mapping[str, str] | None = None, routes: str = ""
    ) -> Sidecar:
        models = "\n".join(
            f"  {m}: {{provider: main, name: up-{m}, price: {{input: {i}, output: {o}}}}}"
            for m, (i, o) in PRICES.items()
        )
        return await sidecars.start(
            f"""\
providers:
  main: {{type: openai, base_url: {upstream.base_url}, api_key: "${{OPENAI_API_KEY}}"}}
models:
{models}
routes:
  r: {{targets: [a, b], retry: {{attempts: 1}}}}
  retrying: {{targets: [c], retry: {{attempts: 3, backoff: 10ms}}}}
  cached: {{targets: [a], cache: answers}}
{routes}
cache:
  answers: {{mode: exact}}
{extra}
""",
            env={
                "OPENAI_API_KEY": SECRET,
                "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint,
                "K8S_POD_NAME": POD,
                "K8S_NAMESPACE_NAME": "shop",
                **(env or {}),
            },
        )

    return start


def api(sc: Sidecar) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{sc.port}/v1", api_key=APP_KEY, max_retries=0, timeout=10
    )


async def ask(sc: Sidecar, model: str = "r", **kw: Any) -> dict[str, str]:
    async with api(sc) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model=model, messages=MESSAGES, **kw
        )
        raw.parse()
        return dict(raw.headers)


def server_spans(otlp: OtlpReceiver) -> list[ReceivedSpan]:
    return [s for s in otlp.spans if s.kind == "SERVER"]


# -- traces ------------------------------------------------------------------------------


async def test_a_fallback_is_one_server_span_continuing_the_apps_trace_with_two_attempts(
    make: Make, upstream: FakeOpenAI, otlp: OtlpReceiver
):
    sc = await make()
    upstream.behave("up-a", status=500)
    trace_id, app_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    headers = await ask(sc, extra_headers={"traceparent": f"00-{trace_id}-{app_span}-01"})
    assert headers["x-sidecar-trace-id"] == trace_id
    await collect(sc.telemetry, otlp, lambda: len(otlp.trace(trace_id)) == 3)

    [server] = [s for s in otlp.trace(trace_id) if s.kind == "SERVER"]
    assert server.name == "chat r"
    assert server.parent_span_id == app_span  # inside the app's own trace
    assert server.status == "UNSET"
    assert server.attributes == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "r",
        "gen_ai.response.model": "up-b",
        "gen_ai.usage.input_tokens": IN,
        "gen_ai.usage.output_tokens": OUT,
        "gen_ai.response.finish_reasons": ["stop"],
        "http.response.status_code": 200,
        "sidecar.route": "r",
        "sidecar.model": "b",
        "sidecar.attempts": 2,
        "sidecar.cost_usd": pytest.approx(cost("b")),
        "sidecar.baseline_usd": pytest.approx(cost("b")),  # b is the route's dearest target
        "sidecar.saved_usd": 0.0,
        "sidecar.fallback_reason": "5xx",
        "sidecar.policy_version": headers["x-sidecar-policy-version"],
    }
    assert float(headers["x-sidecar-cost-usd"]) == pytest.approx(cost("b"))

    first, second = otlp.children(server)
    assert (first.kind, first.name, second.kind, second.name) == (
        "CLIENT",
        "chat up-a",
        "CLIENT",
        "chat up-b",
    )
    assert first.status == "ERROR"
    assert first.attributes["error.type"] == "5xx"
    assert first.attributes["http.response.status_code"] == 500
    assert second.status == "UNSET"
    assert "error.type" not in second.attributes
    for n, attempt in enumerate((first, second), start=1):
        assert attempt.trace_id == trace_id
        assert attempt.attributes["gen_ai.operation.name"] == "chat"
        assert attempt.attributes["gen_ai.provider.name"] == "openai"
        assert attempt.attributes["sidecar.provider"] == "main"
        assert attempt.attributes["sidecar.attempt"] == n
        # where the call went: the provider's host and port, not the sidecar's
        assert attempt.attributes["server.address"] == "127.0.0.1"
        assert attempt.attributes["server.port"] == upstream.port
        assert server.start_ns <= attempt.start_ns <= attempt.end_ns <= server.end_ns
    assert first.attributes["gen_ai.request.model"] == "up-a"
    assert second.attributes["gen_ai.request.model"] == "up-b"
    # The attempt that answered says which model did and what the provider counted; the
    # failed one has no answer to describe.
    assert second.attributes["gen_ai.response.model"] == "up-b"
    assert second.attributes["gen_ai.usage.input_tokens"] == IN
    assert second.attributes["gen_ai.usage.output_tokens"] == OUT
    for absent in ("gen_ai.response.model", "gen_ai.usage.input_tokens"):
        assert absent not in first.attributes

    assert server.resource["service.name"] == "llm-sidecar"
    assert server.resource["k8s.pod.name"] == POD
    assert server.resource["k8s.namespace.name"] == "shop"


async def test_the_apps_sampling_decision_is_followed_for_every_span_of_the_request(
    make: Make, upstream: FakeOpenAI, otlp: OtlpReceiver
):
    sc = await make()
    upstream.behave("up-a", status=500)  # two attempts: two client spans when sampled
    unsampled, sampled = "1" * 32, "2" * 32
    await ask(sc, extra_headers={"traceparent": f"00-{unsampled}-00f067aa0ba902b7-00"})
    await ask(sc, extra_headers={"traceparent": f"00-{sampled}-00f067aa0ba902b7-01"})
    await collect(sc.telemetry, otlp, lambda: len(otlp.trace(sampled)) == 3)
    assert otlp.trace(unsampled) == []


def sampled_by_ratio(trace_ids: list[str], ratio: float) -> set[str]:
    """The trace ids the SDK's ratio sampler keeps: its decision is a function of the id."""
    bound = TraceIdRatioBased(ratio).bound
    return {t for t in trace_ids if int(t, 16) & (2**64 - 1) < bound}


def traced(otlp: OtlpReceiver, trace_ids: list[str]) -> set[str]:
    return {t for t in trace_ids if otlp.trace(t)}


async def test_by_default_the_apps_sampled_traces_are_kept_and_a_tenth_of_the_rest(
    make: Make, otlp: OtlpReceiver, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.delenv("OTEL_TRACES_SAMPLER")
    sc = await make()
    apps = "3" * 32
    await ask(sc, extra_headers={"traceparent": f"00-{apps}-00f067aa0ba902b7-01"})
    ids = [(await ask(sc))["x-sidecar-trace-id"] for _ in range(100)]
    assert len(set(ids)) == 100  # every request has its trace id, traced or not
    # The decision is the trace id's: exactly those below the SDK's 10 % bound are traced.
    expected = sampled_by_ratio(ids, 0.1)
    assert 0 < len(expected) < 100
    await collect(sc.telemetry, otlp, lambda: len(otlp.trace(apps)) == 2)
    await collect(sc.telemetry, otlp, lambda: traced(otlp, ids) == expected)
    await collect(sc.telemetry, otlp, lambda: otlp.total("sidecar.requests") == 101)
    assert traced(otlp, ids) == expected


async def test_with_a_ratio_sampler_a_sampled_request_keeps_all_its_spans(
    make: Make, otlp: OtlpReceiver, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "traceidratio")  # the SDK reads os.environ
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.5")
    sc = await make()
    ids = [(await ask(sc))["x-sidecar-trace-id"] for _ in range(40)]
    expected = sampled_by_ratio(ids, 0.5)
    assert 0 < len(expected) < 40
    await collect(sc.telemetry, otlp, lambda: traced(otlp, ids) == expected)
    await collect(sc.telemetry, otlp, lambda: otlp.total("sidecar.requests") == 40)
    assert traced(otlp, ids) == expected
    for t in expected:
        assert sorted(s.kind for s in otlp.trace(t)) == ["CLIENT", "SERVER"]


async def test_without_traceparent_a_new_trace_starts_and_its_id_is_returned(
    make: Make, otlp: OtlpReceiver
):
    sc = await make()
    headers = await ask(sc, extra_headers={"x-sidecar-user": "ann"})
    trace_id = headers["x-sidecar-trace-id"]
    await collect(sc.telemetry, otlp, lambda: len(otlp.trace(trace_id)) == 2)
    [server] = [s for s in otlp.trace(trace_id) if s.kind == "SERVER"]
    assert server.parent_span_id == ""
    assert server.attributes["enduser.id"] == "ann"
    assert "sidecar.fallback_reason" not in server.attributes
    assert len(trace_id) == 32


async def test_a_failed_request_has_error_type_on_its_span(make: Make, otlp: OtlpReceiver):
    sc = await make()
    async with api(sc) as client:
        with pytest.raises(openai.NotFoundError) as info:
            await client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    trace_id = info.value.response.headers["x-sidecar-trace-id"]
    await collect(sc.telemetry, otlp, lambda: bool(otlp.trace(trace_id)))
    [server] = otlp.trace(trace_id)
    assert server.status == "ERROR"
    assert server.attributes["error.type"] == "model_not_found"
    assert server.attributes["http.response.status_code"] == 404
    assert server.attributes["gen_ai.request.model"] == "no-such-model"  # spans: as asked
    await collect(sc.telemetry, otlp, lambda: otlp.total("sidecar.requests") == 1)
    [point] = otlp.latest("sidecar.requests")
    # Metrics: a client may ask for any name; that must not become a new series each time.
    assert point.attributes["gen_ai.request.model"] == "(unrouted)"
    assert point.attributes["error.type"] == "model_not_found"


# -- metrics -----------------------------------------------------------------------------


async def test_duration_tokens_ttft_and_counts_are_exported_with_convention_buckets(
    make: Make, otlp: OtlpReceiver
):
    sc = await make()
    for _ in range(3):
        await ask(sc)
    async with api(sc) as client:
        stream = await client.chat.completions.create(model="r", messages=MESSAGES, stream=True)
        async for _chunk in stream:
            pass
    await collect(sc.telemetry, otlp, lambda: otlp.total("sidecar.requests") == 4)

    [duration] = otlp.latest("gen_ai.client.operation.duration")
    assert (duration.unit, duration.kind, duration.temporality) == ("s", "histogram", "CUMULATIVE")
    assert duration.bounds == DURATION_BOUNDS
    assert duration.count == 4
    assert sum(duration.buckets) == 4
    assert 0 < duration.sum < 4 * 0.5
    assert duration.attributes == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "r",
        "gen_ai.response.model": "up-a",
        "sidecar.route": "r",
        "sidecar.model": "a",
        "http.response.status_code": 200,
    }

    usage = otlp.latest("gen_ai.client.token.usage")
    tokens = {p.attributes["gen_ai.token.type"]: p for p in usage}
    assert set(tokens) == {"input", "output"}
    for kind, per_request in (("input", IN), ("output", OUT)):
        p = tokens[kind]
        assert (p.unit, p.bounds, p.count, p.sum) == ("{token}", TOKEN_BOUNDS, 4, 4 * per_request)
        assert "sidecar.user" not in p.attributes  # not without the policy's permission
    # 7 tokens fall in (4, 16], 3 in (1, 4]
    assert tokens["input"].buckets[2] == 4
    assert tokens["output"].buckets[1] == 4

    # The sidecar is a client of the provider: the client convention, with its buckets.
    [first_chunk] = otlp.latest("gen_ai.client.operation.time_to_first_chunk")
    assert (first_chunk.unit, first_chunk.bounds, first_chunk.count) == ("s", DURATION_BOUNDS, 1)
    assert first_chunk.attributes == duration.attributes
    assert 0 < first_chunk.sum < duration.sum
    # The model-server name exported before stays alongside, unless opted out (below).
    [ttft] = otlp.latest("gen_ai.server.time_to_first_token")
    assert (ttft.unit, ttft.bounds, ttft.count) == ("s", TTFT_BOUNDS, 1)

    [requests] = otlp.latest("sidecar.requests")
    assert (requests.kind, requests.monotonic, requests.value) == ("sum", True, 4)
    assert requests.attributes["sidecar.route"] == "r"
    assert requests.attributes["http.response.status_code"] == 200

    [spent] = otlp.latest("sidecar.cost")
    assert spent.unit == "USD"
    assert spent.value == pytest.approx(4 * cost("a"))
    assert duration.resource["k8s.pod.name"] == POD
    assert otlp.exports.get("metrics/http", 0) >= 1


async def test_cache_lookups_and_what_hits_saved_are_counted(make: Make, otlp: OtlpReceiver):
    sc = await make()
    results = [(await ask(sc, "cached", temperature=0))["x-sidecar-cache"] for _ in range(2)]
    async with api(sc) as client:  # the answer again, as a stream: a hit too
        stream = await client.chat.completions.with_raw_response.create(
            model="cached", messages=MESSAGES, temperature=0, stream=True
        )
        results.append(stream.headers["x-sidecar-cache"])
        async for _chunk in stream.parse():
            pass
    bypass = {"x-sidecar-cache": "bypass"}
    results.append(
        (await ask(sc, "cached", temperature=0, extra_headers=bypass))["x-sidecar-cache"]
    )
    assert results == ["miss", "hit", "hit", "bypass"]  # what the app was told
    await collect(sc.telemetry, otlp, lambda: otlp.total("sidecar.requests") == 4)

    lookups = otlp.latest("sidecar.cache.lookups")
    assert {p.attributes["result"]: p.value for p in lookups} == {"miss": 1, "hit": 2, "bypass": 1}
    [bypassed] = [p for p in lookups if p.attributes["result"] == "bypass"]
    assert bypassed.attributes["reason"] == "x-sidecar-cache"  # the app's own, not the policy's
    assert {p.attributes["sidecar.route"] for p in lookups} == {"cached"}
    assert {(p.kind, p.monotonic, p.unit) for p in lookups} == {("sum", True, "{lookup}")}
    [saved] = otlp.latest("sidecar.cache.saved")
    assert (saved.unit, saved.attributes) == ("USD", {"sidecar.route": "cached"})
    assert saved.value == pytest.approx(2 * cost("a"))  # each hit saved the first answer's cost
    # /stats (what `llm-sidecar top` reads) serves the same counters.
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{sc.ops_port}/stats") as response,
    ):
        stats = (await response.json())["metrics"]
    counted = {
        p["attributes"]["result"]: p["value"] for p in stats["sidecar.cache.lookups"]["points"]
    }
    assert counted == {"miss": 1, "hit": 2, "bypass": 1}
    assert stats["sidecar.cache.saved"]["points"][0]["value"] == pytest.approx(2 * cost("a"))


async def test_with_the_latest_genai_conventions_opted_in_only_their_names_are_exported(
    make: Make, otlp: OtlpReceiver
):
    sc = await make(env={"OTEL_SEMCONV_STABILITY_OPT_IN": "http, gen_ai_latest_experimental"})
    async with api(sc) as client:
        stream = await client.chat.completions.create(model="r", messages=MESSAGES, stream=True)
        async for _chunk in stream:
            pass
    await collect(
        sc.telemetry,
        otlp,
        lambda: otlp.total("gen_ai.client.operation.time_to_first_chunk") == 1,
    )
    assert otlp.latest("gen_ai.server.time_to_first_token") == []
    exported = {p.metric for p in otlp.points}
    assert "gen_ai.server.time_to_first_token" not in exported
    assert "gen_ai.client.operation.duration" in exported


async def test_a_streamed_attempts_span_covers_the_stream_and_carries_its_usage(
    make: Make, upstream: FakeOpenAI, otlp: OtlpReceiver
):
    sc = await make()
    # The provider names a dated version of the model it was asked for.
    upstream.behave("up-a", answered_by="up-a-2025-01-01", chunk_delay=0.02)
    async with api(sc) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="r", messages=MESSAGES, stream=True
        )
        async for _chunk in raw.parse():
            pass
    trace_id = raw.headers["x-sidecar-trace-id"]
    await collect(sc.telemetry, otlp, lambda: len(otlp.trace(trace_id)) == 2)
    [server] = server_spans(otlp)
    [attempt] = otlp.children(server)
    assert attempt.kind == "CLIENT"
    assert attempt.attributes["gen_ai.request.model"] == "up-a"
    assert attempt.attributes["gen_ai.response.model"] == "up-a-2025-01-01"
    assert attempt.attributes["gen_ai.usage.input_tokens"] == IN  # from the usage chunk
    assert attempt.attributes["gen_ai.usage.output_tokens"] == OUT
    assert attempt.attributes["server.port"] == upstream.port
    first = attempt.attributes["gen_ai.response.time_to_first_chunk"]
    # "hello from upstream": six more events after the first, 20 ms apart: the span lasts
    # until the last one, well past the first chunk.
    assert 0 < first < (attempt.end_ns - attempt.start_ns) / 1e9 - 0.05
    assert attempt.end_ns <= server.end_ns


async def test_retries_and_fallbacks_are_counted_apart(
    make: Make, upstream: FakeOpenAI, otlp: OtlpReceiver
):
    sc = await make()
    upstream.behave("up-c", status=503, fail_times=2)
    headers = await ask(sc, model="retrying")
    assert headers["x-sidecar-attempts"] == "3"
    upstream.behave("up-a", status=500)
    headers = await ask(sc, model="r")
    assert headers["x-sidecar-model"] == "b"
    await collect(sc.telemetry, otlp, lambda: otlp.total("sidecar.requests") == 2)

    assert otlp.total("sidecar.retries", sidecar__route="retrying") == 2
    assert otlp.total("sidecar.retries", sidecar__route="r") == 0  # a fallback is no retry
    [fallback] = otlp.latest("sidecar.fallbacks")
    assert fallback.attributes == {"sidecar.route": "r", "sidecar.fallback_reason": "5xx"}
    assert fallback.value == 1
    outcomes = {
        (p.attributes["sidecar.model"], p.attributes["outcome"]): p.value
        for p in otlp.latest("sidecar.upstream.attempts")
    }
    assert outcomes == {("c", "5xx"): 2, ("c", "ok"): 1, ("a", "5xx"): 1, ("b", "ok"): 1}


async def test_rejections_and_queue_waits_are_counted_and_traced(
    make: Make, upstream: FakeOpenAI, otlp: OtlpReceiver
):
    sc = await make(
        """\
limits:
  per-user: {scope: user, routes: [r], requests_per_minute: 1}
  one-at-a-time: {scope: route, routes: [retrying], max_concurrent: 1, queue: {max_wait: 5s}}
"""
    )
    await ask(sc, extra_headers={"x-sidecar-user": "ann"})
    async with api(sc) as client:
        with pytest.raises(openai.RateLimitError) as info:
            await client.chat.completions.create(
                model="r", messages=MESSAGES, extra_headers={"x-sidecar-user": "ann"}
            )
    rejected_trace = info.value.response.headers["x-sidecar-trace-id"]
    upstream.behave("up-c", delay=0.2)
    await asyncio.gather(*(ask(sc, model="retrying") for _ in range(2)))
    await collect(sc.telemetry, otlp, lambda: otlp.total("sidecar.requests") == 4)

    [rejection] = otlp.latest("sidecar.ratelimit.rejections")
    assert rejection.attributes == {"sidecar.route": "r", "error.type": "rate_limited"}
    assert rejection.value == 1
    [server] = otlp.trace(rejected_trace)
    assert (server.status, server.attributes["error.type"]) == ("ERROR", "rate_limited")
    assert server.attributes["http.response.status_code"] == 429

    [wait] = otlp.latest("sidecar.queue.wait")
    assert (wait.unit, wait.count, wait.attributes) == ("s", 1, {"sidecar.limit": "one-at-a-time"})
    assert 0.1 < wait.sum < 1.0  # the second request waited for the first
    [queued] = otlp.named("admission wait")
    parent = next(s for s in otlp.spans if s.span_id == queued.parent_span_id)
    assert (parent.kind, parent.name) == ("SERVER", "chat retrying")
    assert queued.attributes == {"sidecar.limit": "one-at-a-time"}


async def test_user_becomes_a_metric_attribute_only_when_allowed_and_capped(
    make: Make, otlp: OtlpReceiver
):
    sc = await make("telemetry: {user_attribute: true, max_users: 2}")
    for user in ("ann", "bob", "cat", "dan", "ann"):
        await ask(sc, extra_headers={"x-sidecar-user": user})
    await collect(sc.telemetry, otlp, lambda: otlp.total("sidecar.requests") == 5)

    inputs = {
        p.attributes["sidecar.user"]: p.count
        for p in otlp.latest("gen_ai.client.token.usage")
        if p.attributes["gen_ai.token.type"] == "input"
    }
    assert inputs == {"ann": 2, "bob": 1, "(other)": 2}
    spent = {p.attributes["sidecar.user"]: p.value for p in otlp.latest("sidecar.cost")}
    assert spent == pytest.approx(
        {"ann": 2 * cost("a"), "bob": cost("a"), "(other)": 2 * cost("a")}
    )
    # Request counts and durations never carry the user.
    for name in ("sidecar.requests", "gen_ai.client.operation.duration"):
        assert all("sidecar.user" not in p.attributes for p in otlp.latest(name))


BUDGETS = """\
budgets:
  team-day: {scope: team, limit_usd: 1, window: day}
  user-day: {scope: user, limit_usd: 0.5, window: day, on_exceed: alert}
"""


def budget_gauges(otlp: OtlpReceiver, metric: str) -> dict[tuple[str, str], float]:
    return {
        (p.attributes["sidecar.budget"], p.attributes["sidecar.budget.scope_value"]): p.value
        for p in otlp.latest(metric)
    }


async def test_budget_spend_and_remaining_are_gauges_per_team_but_not_per_user_by_default(
    make: Make, otlp: OtlpReceiver
):
    sc = await make(BUDGETS)
    for team, user in (("shop", "ann"), ("shop", "bob"), ("ads", "cat")):
        await ask(sc, max_tokens=10, extra_headers={"x-sidecar-team": team, "x-sidecar-user": user})
    # A request is settled just after its answer went out: wait for a reading of all three.
    await collect(
        sc.telemetry,
        otlp,
        lambda: (
            budget_gauges(otlp, "sidecar.budget.spend").get(("team-day", "shop")) == 2 * cost("a")
            and budget_gauges(otlp, "sidecar.budget.spend").get(("team-day", "ads")) == cost("a")
        ),
    )
    spend = budget_gauges(otlp, "sidecar.budget.spend")
    remaining = budget_gauges(otlp, "sidecar.budget.remaining")
    # Users are not metric attributes unless the policy says so: no per-user gauges.
    assert spend == pytest.approx(
        {("team-day", "shop"): 2 * cost("a"), ("team-day", "ads"): cost("a")}
    )
    assert remaining == pytest.approx(
        {("team-day", "shop"): 1 - 2 * cost("a"), ("team-day", "ads"): 1 - cost("a")}
    )
    [point, *_] = otlp.latest("sidecar.budget.remaining")
    assert point.unit == "USD"
    assert point.attributes["sidecar.budget.scope"] == "team"
    assert point.attributes["sidecar.budget.window"] == "day"
    # `llm-sidecar top` reads the same readings from /stats.
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{sc.ops_port}/stats") as response,
    ):
        stats = await response.json()
    points = stats["metrics"]["sidecar.budget.spend"]["points"]
    assert sorted(p["attributes"]["sidecar.budget.scope_value"] for p in points) == ["ads", "shop"]


async def test_budget_gauges_name_users_only_when_allowed_and_within_the_cap(
    make: Make, otlp: OtlpReceiver
):
    sc = await make(BUDGETS + "telemetry: {user_attribute: true, max_users: 1}\n")
    for user in ("ann", "bob", "ann"):
        await ask(
            sc, max_tokens=10, extra_headers={"x-sidecar-team": "shop", "x-sidecar-user": user}
        )
    await collect(
        sc.telemetry,
        otlp,
        lambda: (
            budget_gauges(otlp, "sidecar.budget.spend").get(("user-day", "ann")) == 2 * cost("a")
        ),
    )
    assert budget_gauges(otlp, "sidecar.budget.remaining") == pytest.approx(
        {("team-day", "shop"): 1 - 3 * cost("a"), ("user-day", "ann"): 0.5 - 2 * cost("a")}
    )


async def test_export_is_batched_in_the_background_without_any_flush(
    make: Make, otlp: OtlpReceiver
):
    sc = await make()  # the fixture set a 50 ms span batch delay, 200 ms metric interval
    headers = await ask(sc)
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        # Two spans: the attempt's ends first and may leave in an earlier batch.
        if len(otlp.trace(headers["x-sidecar-trace-id"])) == 2 and otlp.total("sidecar.requests"):
            break
        await asyncio.sleep(0.05)
    assert len(otlp.trace(headers["x-sidecar-trace-id"])) == 2
    assert otlp.total("sidecar.requests") == 1
    assert otlp.exports["metrics/http"] >= 1


# -- what must never happen --------------------------------------------------------------


async def test_no_key_in_any_span_metric_or_resource(
    make: Make, upstream: FakeOpenAI, otlp: OtlpReceiver
):
    sc = await make()
    upstream.behave("up-a", status=401, fail_times=1)  # an auth failure, then a fallback
    await ask(sc)
    await ask(sc, extra_headers={"traceparent": "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"})
    await collect(
        sc.telemetry,
        otlp,
        lambda: otlp.total("sidecar.requests") == 2 and len(server_spans(otlp)) == 2,
    )
    assert upstream.calls()[0].headers["Authorization"] == f"Bearer {SECRET}"  # it was used
    assert otlp.raw
    for blob in otlp.raw:
        assert SECRET.encode() not in blob
        assert b"TESTSECRET" not in blob
        assert APP_KEY.encode() not in blob


async def test_a_collector_that_is_down_costs_the_requests_nothing(
    tmp_path: Path, upstream: FakeOpenAI
):
    write_policy(
        tmp_path / "p",
        "p.yaml",
        f"""\
        providers:
          main: {{type: openai, base_url: {upstream.base_url}}}
        models:
          a: {{provider: main, name: up-a}}
        routes:
          r: {{targets: [a]}}
        """,
    )
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    sc = await start_sidecar(tmp_path / "p", env={"OTEL_EXPORTER_OTLP_ENDPOINT": closed})
    try:
        async with api(sc) as client:
            began = time.monotonic()
            for _ in range(50):
                raw = await client.chat.completions.with_raw_response.create(
                    model="r", messages=MESSAGES
                )
                assert raw.http_response.status_code == 200
                assert raw.parse().choices[0].message.content == "hello from upstream"
            took = time.monotonic() - began
        assert took < 3.0, f"50 requests took {took:.2f}s with the collector down"
        await asyncio.sleep(0.3)  # a few failed export rounds while serving
        async with api(sc) as client:
            began = time.monotonic()
            await client.chat.completions.create(model="r", messages=MESSAGES)
            assert time.monotonic() - began < 0.5
    finally:
        began = time.monotonic()
        await sc.stop()
        stopped = time.monotonic() - began
    # The SDK alone would wait out its 10 s export retries (and 30 s joins) here.
    assert stopped < 4.0, f"stop took {stopped:.1f}s with the collector down"


async def test_sdk_disabled_exports_nothing_and_stats_still_count(
    tmp_path: Path, upstream: FakeOpenAI, otlp: OtlpReceiver
):
    """A real process, since the SDK reads OTEL_SDK_DISABLED from os.environ itself."""
    write_policy(
        tmp_path / "p",
        "p.yaml",
        f"""\
        providers:
          main: {{type: openai, base_url: {upstream.base_url}}}
        models:
          a: {{provider: main, name: up-a}}
        routes:
          r: {{targets: [a]}}
        """,
    )
    env = {"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint}
    proc = SidecarProcess(tmp_path / "p", env)
    try:
        await proc.wait_ready()
        async with openai.AsyncOpenAI(base_url=proc.base_url, api_key="x", max_retries=0) as client:
            raw = await client.chat.completions.with_raw_response.create(
                model="r", messages=MESSAGES
            )
        assert raw.http_response.status_code == 200
        assert "x-sidecar-trace-id" not in raw.headers
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{proc.ops_port}/stats") as response,
        ):
            stats = await response.json()
        # /stats (and `llm-sidecar top`) come from the in-process reader: still counting
        assert stats["metrics"]["sidecar.requests"]["points"][0]["value"] == 1
    finally:
        assert proc.stop() == 0
    assert otlp.spans == []
    assert otlp.points == []


@pytest.fixture
async def otlp_grpc() -> AsyncIterator[OtlpReceiver]:
    receiver = await OtlpReceiver(grpc=True).start()
    yield receiver
    await receiver.stop()


async def test_grpc_export_and_service_name_from_the_environment(
    otlp_grpc: OtlpReceiver, make: Make
):
    receiver = otlp_grpc  # set up before `make`, so it outlives the sidecar's last flush
    sc = await make(
        env={
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.grpc_endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            "OTEL_SERVICE_NAME": "checkout-llm",
            "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment.name=test,team=pay%20ments",
        }
    )
    headers = await ask(sc)
    trace_id = headers["x-sidecar-trace-id"]
    await collect(
        sc.telemetry,
        receiver,
        lambda: len(receiver.trace(trace_id)) == 2 and receiver.total("sidecar.requests") == 1,
    )
    assert receiver.exports.get("traces/grpc", 0) >= 1
    assert receiver.exports.get("metrics/grpc", 0) >= 1
    assert "traces/http" not in receiver.exports
    [server] = [s for s in receiver.trace(trace_id) if s.kind == "SERVER"]
    assert server.resource["service.name"] == "checkout-llm"  # OTEL_SERVICE_NAME wins
    assert server.resource["deployment.environment.name"] == "test"
    assert server.resource["team"] == "pay ments"
    assert server.resource["k8s.pod.name"] == POD


def test_bucket_constants_are_the_conventions() -> None:
    from sidecar.telemetry.setup import DURATION_BUCKETS, TOKEN_BUCKETS, TTFT_BUCKETS

    assert DURATION_BUCKETS == DURATION_BOUNDS
    assert tuple(float(b) for b in TOKEN_BUCKETS) == TOKEN_BOUNDS
    assert TTFT_BUCKETS == TTFT_BOUNDS
    assert math.isclose(DURATION_BOUNDS[-1], 0.01 * 2**13)


async def test_an_escalated_request_s_span_says_its_tier_and_what_was_rejected(
    make: Make, upstream: FakeOpenAI, otlp: OtlpReceiver
):
    sc = await make(
        routes="  tiered:\n"
        "    select: {tiers: {low: {targets: [a]}, high: {targets: [b]}}, default: low}\n"
        "    cascade: {}\n"
    )
    upstream.behave("up-a", reply="I'm sorry, I can't help with that.")
    headers = await ask(sc, "tiered")
    trace_id = headers["x-sidecar-trace-id"]
    await collect(sc.telemetry, otlp, lambda: len(otlp.trace(trace_id)) == 3)
    [server] = [s for s in otlp.trace(trace_id) if s.kind == "SERVER"]
    attributes = server.attributes
    assert attributes["sidecar.tier"] == "high"
    assert attributes["sidecar.tier.reason"] == "default"
    assert attributes["sidecar.escalations"] == 1
    assert attributes["sidecar.cascade.rejected"] == ["low:refusal"]
    assert attributes["sidecar.model"] == "b"
    assert [c.name for c in otlp.children(server)] == ["chat up-a", "chat up-b"]
    await collect(sc.telemetry, otlp, lambda: otlp.total("sidecar.cascade.answers") == 1)
    [point] = otlp.latest("sidecar.selection.requests")
    assert point.attributes == {
        "sidecar.route": "tiered",
        "sidecar.tier": "high",
        "sidecar.tier.reason": "default",
    }
