"""Upstreams that misbehave, with canary keys: a provider's key, configured as its api_key
and echoed back by the fake upstream, and another provider's header value. Whatever the
upstream says — a 200 that is not JSON, an error in a stream, a stream that is not JSON —
the canaries appear in no answer body, header or stream event, no log line, no exported
span and no ops page; a malformed answer is a `protocol` failure that falls over to the
next target and counts in the circuit breaker; a broken stream ends with the sidecar's
own error event.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import pytest

from sidecar.app import Sidecar
from tests.support.anthropic_upstream import FakeAnthropic, sse
from tests.support.fake_server import ECHO
from tests.support.otlp import OtlpReceiver, collect
from tests.support.sidecar import Sidecars
from tests.support.upstream import FakeOpenAI, completion, stream_events

CANARY = "sk-canary-Zq8Xw3Lm5Rt7Vb2Nc4Kd6Hj9"  # the OpenAI-format provider's key
CANARY_ANT = "sk-ant-canary-Pf3Gh8Jk2Ls5Qw7Er1Ty4"  # the Anthropic provider's key
CANARY_HEADER = "hdr-canary-Mn6Bv9Cx2Za5Sd8Fg"  # a header value of a provider never called
CANARIES = (CANARY, CANARY_ANT, CANARY_HEADER)

POLICY = """
providers:
  bad: {{type: openai, base_url: "{openai}", api_key: {key}, timeout: 5s}}
  ant: {{type: anthropic, base_url: "{anthropic}", api_key: {ant_key}, timeout: 5s}}
  other:
    type: openai
    base_url: "{openai}"
    headers: {{x-tenant-token: {header}}}
  good: {{type: mock}}
models:
  b: {{provider: bad, name: up-bad}}
  b2: {{provider: bad, name: up-tripping, circuit: {{consecutive_failures: 2, cooldown: 60s}}}}
  a: {{provider: ant, name: claude-bad}}
  g: {{provider: good}}
routes:
  openai-first: {{targets: [b, g], retry: {{attempts: 1}}}}
  openai-only: {{targets: [b], retry: {{attempts: 1}}}}
  tripping: {{targets: [b2], retry: {{attempts: 1}}}}
  claude-first: {{targets: [a, g], retry: {{attempts: 1}}}}
  claude-only: {{targets: [a], retry: {{attempts: 1}}}}
state: {{backend: memory}}
"""
TELLS = b"key " + ECHO + b" / " + CANARY_HEADER.encode()  # what a chatty upstream says
OPENAI_ERROR = b'data: {"error": {"message": "invalid key ' + TELLS + b'", "type": "x"}}\n\n'
ANTHROPIC_ERROR = sse(
    "error", {"type": "error", "error": {"type": "overloaded_error", "message": TELLS.decode()}}
)


def chunk(text: str) -> bytes:
    return stream_events("up-bad", text, False)[1]


def anthropic_start() -> list[bytes]:
    message = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-bad"}
    message |= {"content": [], "usage": {"input_tokens": 3, "output_tokens": 1}}
    block = {"type": "content_block_start", "index": 0, "content_block": {"type": "text"}}
    delta = {"type": "content_block_delta", "index": 0}
    delta["delta"] = {"type": "text_delta", "text": "Hi"}
    return [
        sse("message_start", {"type": "message_start", "message": message}),
        sse("content_block_start", block),
        sse("content_block_delta", delta),
    ]


@dataclass(frozen=True)
class Case:
    name: str
    route: str
    upstream: str  # openai | anthropic
    behaviour: dict[str, Any]
    stream: bool = False
    path: str = "/v1/chat/completions"
    model: str = ""  # the upstream model the fake plays, when not the route's usual one


FALLS_OVER = [
    Case("200 that is HTML", "openai-first", "openai", {"raw_body": b"<h1>" + TELLS + b"</h1>"}),
    Case("200 with an error body", "openai-first", "openai", {"raw_body": OPENAI_ERROR[6:-2]}),
    Case("200 without choices", "openai-first", "openai", {"raw_body": b'{"id": "' + ECHO + b'"}'}),
    Case("stream: error first", "openai-first", "openai", {"raw_events": [OPENAI_ERROR]}, True),
    Case("anthropic 200 not JSON", "claude-first", "anthropic", {"raw_body": TELLS}),
    Case(
        "anthropic stream: wrong shape first",
        "claude-first",
        "anthropic",
        {
            "raw_events": [
                sse("message_start", {"type": "message_start", "message": [TELLS.decode()]})
            ]
        },
        True,
    ),
]
BREAKS_OFF = [
    Case(
        "stream: error event",
        "openai-only",
        "openai",
        {"raw_events": [chunk("Hi"), OPENAI_ERROR]},
        True,
    ),
    Case(
        "stream: event not JSON",
        "openai-only",
        "openai",
        {"raw_events": [chunk("Hi"), b"data: {" + TELLS + b"\n\n"]},
        True,
    ),
    Case(
        "anthropic stream: error event",
        "claude-only",
        "anthropic",
        {"raw_events": [*anthropic_start(), ANTHROPIC_ERROR]},
        True,
    ),
    Case(
        "anthropic stream: event not JSON",
        "claude-only",
        "anthropic",
        {
            "raw_events": [
                *anthropic_start(),
                b"event: content_block_delta\ndata: {" + TELLS + b"\n\n",
            ]
        },
        True,
    ),
    Case(
        "anthropic stream: error event, Anthropic ingress",
        "claude-only",
        "anthropic",
        {"raw_events": [*anthropic_start(), ANTHROPIC_ERROR]},
        True,
        "/v1/messages",
    ),
]


@pytest.fixture(autouse=True)
def fast_export(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "200")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_always_on")


@pytest.fixture
async def sidecar(
    otlp: OtlpReceiver, sidecars: Sidecars, upstream: FakeOpenAI, upstream_anthropic: FakeAnthropic
) -> Sidecar:
    policy = POLICY.format(
        openai=upstream.base_url,
        anthropic=upstream_anthropic.base_url,
        key=CANARY,
        ant_key=CANARY_ANT,
        header=CANARY_HEADER,
    )
    return await sidecars.start(policy, env={"OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint})


def leaks(blob: bytes | str) -> list[str]:
    text = blob.decode(errors="replace") if isinstance(blob, bytes) else blob
    return [c for c in CANARIES if c in text]


@dataclass
class Bench:
    """The sidecar, its misbehaving upstreams, and every place a leak would show."""

    sidecar: Sidecar
    upstream: FakeOpenAI
    upstream_anthropic: FakeAnthropic
    otlp: OtlpReceiver
    http: aiohttp.ClientSession
    caplog: pytest.LogCaptureFixture

    async def run(self, case: Case) -> tuple[int, dict[str, str], bytes]:
        """Script the upstream as `case` says, then ask the sidecar."""
        if case.upstream == "openai":
            self.upstream.behave(case.model or "up-bad", **case.behaviour)
        else:
            self.upstream_anthropic.behave("claude-bad", **case.behaviour)
        body: dict[str, Any] = {
            "model": case.route,
            "messages": [{"role": "user", "content": "hi"}],
        }
        if case.path == "/v1/messages":
            body["max_tokens"] = 50
        if case.stream:
            body["stream"] = True
        url = f"http://127.0.0.1:{self.sidecar.port}{case.path}"
        async with self.http.post(url, json=body) as response:
            headers = {str(k): v for k, v in response.headers.items()}
            return response.status, headers, await response.read()

    async def nothing_leaked(self, *answers: bytes) -> None:
        for answer in answers:
            assert leaks(answer) == [], answer[-500:]
        for page in ("/status", "/stats", "/usage", "/readyz", "/healthz"):
            async with self.http.get(f"http://127.0.0.1:{self.sidecar.ops_port}{page}") as r:
                assert leaks(await r.read()) == [], page
        otlp = self.otlp
        await collect(
            self.sidecar.telemetry, otlp, lambda: any(s.kind == "CLIENT" for s in otlp.spans)
        )
        assert all(leaks(raw) == [] for raw in otlp.raw)
        logged = self.caplog.text + "".join(str(r.args) for r in self.caplog.records)
        assert leaks(logged) == [], logged[-2000:]


@pytest.fixture
async def bench(
    sidecar: Sidecar,
    upstream: FakeOpenAI,
    upstream_anthropic: FakeAnthropic,
    otlp: OtlpReceiver,
    caplog: pytest.LogCaptureFixture,
) -> AsyncIterator[Bench]:
    caplog.set_level(logging.DEBUG)
    async with aiohttp.ClientSession() as http:
        yield Bench(sidecar, upstream, upstream_anthropic, otlp, http, caplog)


@pytest.mark.parametrize("case", FALLS_OVER, ids=lambda c: c.name)
async def test_a_malformed_answer_falls_over_to_the_next_target_and_leaks_nothing(
    case: Case, bench: Bench
):
    status, headers, body = await bench.run(case)
    assert status == 200, body
    assert headers["x-sidecar-model"] == "g"
    assert headers["x-sidecar-fallback-reason"] == "protocol"
    assert b'"model":"g"' in body  # the spare's answer, whole
    assert body.rstrip().endswith(b"data: [DONE]" if case.stream else b"}")
    await bench.nothing_leaked(body, orjson.dumps(headers))


@pytest.mark.parametrize("case", BREAKS_OFF, ids=lambda c: c.name)
async def test_a_stream_that_breaks_ends_with_the_sidecars_error_event_and_leaks_nothing(
    case: Case, bench: Bench
):
    status, headers, body = await bench.run(case)
    assert status == 200
    events = [e for e in body.split(b"\n\n") if e.strip()]
    assert b"Hi" in b"".join(events[:-1])  # what came before the break reached the app
    last = events[-1]
    if case.path == "/v1/messages":
        assert last.startswith(b"event: error\n")
        assert b"broke off" in last
    else:
        error = orjson.loads(last.removeprefix(b"data: "))["error"]
        assert error["code"] == "upstream_stream_failed"
        assert "broke off" in error["message"]
    await bench.nothing_leaked(body, orjson.dumps(headers))


async def test_with_no_other_target_a_malformed_answer_is_a_502_without_the_key(bench: Bench):
    behaviour = {"raw_body": b"not json: " + TELLS, "raw_type": "text/plain"}
    status, headers, body = await bench.run(Case("", "openai-only", "openai", behaviour))
    assert status == 502
    error = orjson.loads(body)["error"]
    assert error["code"] == "upstream_failed"
    assert "not JSON" in error["message"]
    await bench.nothing_leaked(body, orjson.dumps(headers))


async def test_keys_an_upstream_quotes_in_an_answer_or_a_refusal_are_redacted(bench: Bench):
    answer = completion("up-bad", "your key is KEY and theirs HDR")
    raw = orjson.dumps(answer).replace(b"KEY", ECHO).replace(b"HDR", CANARY_HEADER.encode())
    status, _, body = await bench.run(Case("", "openai-only", "openai", {"raw_body": raw}))
    assert status == 200
    assert orjson.loads(body)["choices"][0]["message"]["content"] == (
        "your key is [redacted] and theirs [redacted]"
    )
    masked = {"error": {"message": f"bad: {CANARY[:12]}****{CANARY[-4:]}", "type": "x"}}
    refusal = Case("", "openai-only", "openai", {"status": 400, "error_body": masked})
    status, headers, refused = await bench.run(refusal)
    assert status == 400
    assert "[redacted]" in orjson.loads(refused)["error"]["message"]
    assert CANARY[-4:] not in refused.decode()
    await bench.nothing_leaked(body, refused, orjson.dumps(headers))


async def test_malformed_answers_count_in_the_circuit_breaker(bench: Bench):
    behaviour = {"raw_body": b"<html>busy</html>", "raw_type": "text/html"}
    case = Case("", "tripping", "openai", behaviour, model="up-tripping")
    for _ in range(3):
        status, _, body = await bench.run(case)
        assert status == 502
    assert len(bench.upstream.calls("up-tripping")) == 2  # the third found the circuit open
    assert b"circuit open" in body
    async with bench.http.get(f"http://127.0.0.1:{bench.sidecar.ops_port}/stats") as response:
        assert (await response.json())["circuits"]["b2"]["state"] == "open"


async def test_a_bug_of_ours_mid_stream_still_ends_it_with_an_error_event(
    sidecars: Sidecars, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    """Fault injection into our own metering stage (not a stand-in for a component): the
    app must learn that its stream is cut, as it does when an upstream breaks it."""
    from sidecar.pipeline import meter

    async def broken(ctx: Any, events: Any) -> Any:
        async for batch in events:
            yield batch
            raise RuntimeError("a bug in a stage")

    monkeypatch.setattr(meter, "_metered", broken)
    sc = await sidecars.start(
        "providers: {m: {type: mock, mock: {chunk_delay: 20ms}}}\nmodels: {small: {provider: m}}\n"
        "routes: {chat: {targets: [small]}}\nstate: {backend: memory}\n"
    )
    body = {"model": "chat", "stream": True, "messages": [{"role": "user", "content": "a b c"}]}
    with caplog.at_level(logging.ERROR):
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"http://127.0.0.1:{sc.port}/v1/chat/completions", json=body) as r,
        ):
            text = await r.text()
    events = [e for e in text.split("\n\n") if e.strip()]
    assert events[0].startswith("data: {")
    assert '"error"' not in events[0]
    assert "internal_error" in events[-1]
    assert "incomplete" in events[-1]
    assert "data: [DONE]" not in text
    assert [r.message for r in caplog.records if r.exc_info] == ["stream relay failed"]
