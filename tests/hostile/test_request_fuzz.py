"""A seeded fuzzer over every field of the chat, messages, embeddings and jobs bodies, and
over broken JSON, encodings and headers: each request gets a documented status in its
ingress format's error shape — never a 500 or a plain-text page — no traceback reaches
the log for a client's mistake, and the sidecar still answers afterwards.

Hypothesis runs derandomized (a fixed seed per test) with a bounded number of examples,
in a worker thread, while the sidecar under test serves on the test's event loop.
"""

from __future__ import annotations

import asyncio
import copy
import gzip
import json
import logging
import zlib
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.app import Sidecar
from tests.support.anthropic_upstream import FakeAnthropic
from tests.support.raw_client import Answer, error_shape_problem, send
from tests.support.sidecar import Sidecars
from tests.support.upstream import FakeOpenAI

# Routes for every stage a field can reach: a budget (max_tokens sizes the hold), an exact
# cache (the body is hashed), an output schema from the request, the mock provider, and
# the OpenAI and Anthropic wire formats (the body is translated and re-encoded).
POLICY = """
providers:
  mock: {{type: mock}}
  oa: {{type: openai, base_url: "{openai}", api_key: sk-fuzz-openai-key-0001}}
  an: {{type: anthropic, base_url: "{anthropic}", api_key: sk-ant-fuzz-key-0002}}
models:
  m: {{provider: mock, price: {{input: 1, output: 2}}}}
  o: {{provider: oa, name: up-o, price: {{input: 1, output: 2}}}}
  c: {{provider: an, name: claude-fuzz}}
  e: {{provider: mock}}
routes:
  chat: {{targets: [m], cache: answers}}
  gpt: {{targets: [o]}}
  claude: {{targets: [c]}}
  typed: {{targets: [m], output: {{schema: from_request, on_invalid: {{retries: 0, then: error}}}}}}
  embed: {{targets: [e]}}
budgets:
  all: {{scope: global, limit_usd: 1000, window: day, on_exceed: reject}}
cache:
  answers: {{mode: exact, ttl: 1m, any_temperature: true}}
jobs: {{workers: 0}}
state: {{backend: memory}}
"""

CHAT_MODELS = ["chat", "gpt", "claude", "typed"]
CHAT_BODY: dict[str, Any] = {
    "model": "chat",
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "ok"},
        {"role": "user", "content": "go on"},
    ],
    "max_tokens": 20,
    "temperature": 0,
    "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
}
CHAT_FIELDS = [
    ("model",),
    ("messages",),
    ("messages", 0),
    ("messages", 0, "role"),
    ("messages", 0, "content"),
    ("messages", 1, "content"),
    ("messages", 1, "content", 0),
    ("messages", 1, "content", 0, "type"),
    ("messages", 1, "content", 0, "text"),
    ("messages", 1, "content", 0, "image_url"),
    ("messages", 1, "content", 0, "image_url", "url"),
    ("messages", 2, "tool_calls"),
    ("messages", 2, "tool_calls", 0),
    ("messages", 2, "tool_calls", 0, "function"),
    ("messages", 2, "tool_calls", 0, "function", "arguments"),
    ("messages", 2, "tool_calls", 0, "function", "name"),
    ("messages", 3, "tool_call_id"),
    ("messages", 4, "name"),
    ("stream",),
    ("stream_options",),
    ("stream_options", "include_usage"),
    ("max_tokens",),
    ("max_completion_tokens",),
    ("n",),
    ("temperature",),
    ("top_p",),
    ("stop",),
    ("tools",),
    ("tools", 0),
    ("tools", 0, "type"),
    ("tools", 0, "function"),
    ("tools", 0, "function", "name"),
    ("tools", 0, "function", "parameters"),
    ("tool_choice",),
    ("tool_choice", "function"),
    ("parallel_tool_calls",),
    ("response_format",),
    ("response_format", "type"),
    ("response_format", "json_schema"),
    ("response_format", "json_schema", "schema"),
    ("user",),
    ("x_anthropic",),
    ("logprobs",),
    ("seed",),
    ("logit_bias",),
    ("metadata",),
]
MESSAGES_BODY: dict[str, Any] = {
    "model": "claude",
    "max_tokens": 20,
    "system": [{"type": "text", "text": "Be brief."}],
    "messages": [
        {"role": "user", "content": "hi"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "calling"},
                {"type": "tool_use", "id": "t1", "name": "f", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "t1", "content": "ok"},
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/png", "data": "AA=="},
                },
            ],
        },
    ],
    "tools": [{"name": "f", "input_schema": {"type": "object"}}],
}
MESSAGES_FIELDS = [
    ("model",),
    ("max_tokens",),
    ("messages",),
    ("messages", 0),
    ("messages", 0, "role"),
    ("messages", 0, "content"),
    ("messages", 1, "content"),
    ("messages", 1, "content", 1),
    ("messages", 1, "content", 1, "type"),
    ("messages", 1, "content", 1, "id"),
    ("messages", 1, "content", 1, "name"),
    ("messages", 1, "content", 1, "input"),
    ("messages", 2, "content", 0),
    ("messages", 2, "content", 0, "tool_use_id"),
    ("messages", 2, "content", 0, "content"),
    ("messages", 2, "content", 1, "source"),
    ("messages", 2, "content", 1, "source", "type"),
    ("messages", 2, "content", 1, "source", "data"),
    ("system",),
    ("system", 0),
    ("system", 0, "text"),
    ("stop_sequences",),
    ("stream",),
    ("temperature",),
    ("top_p",),
    ("top_k",),
    ("metadata",),
    ("metadata", "user_id"),
    ("tools",),
    ("tools", 0),
    ("tools", 0, "name"),
    ("tools", 0, "input_schema"),
    ("tool_choice",),
    ("tool_choice", "type"),
    ("tool_choice", "name"),
    ("thinking",),
]
EMBEDDINGS_BODY: dict[str, Any] = {"model": "embed", "input": ["abc", "de"]}
EMBEDDINGS_FIELDS = [
    ("model",),
    ("input",),
    ("input", 0),
    ("dimensions",),
    ("encoding_format",),
    ("user",),
    ("x_anthropic",),
]
JOB_BODY: dict[str, Any] = {"request": CHAT_BODY, "metadata": {"k": "v"}, "priority": "low"}
JOB_FIELDS = [
    ("request",),
    ("endpoint",),
    ("callback_url",),
    ("metadata",),
    ("priority",),
    ("deadline",),
    *[("request", *f) for f in CHAT_FIELDS],
]
ENDPOINTS = {
    "/v1/chat/completions": (CHAT_BODY, CHAT_FIELDS),
    "/v1/messages": (MESSAGES_BODY, MESSAGES_FIELDS),
    "/v1/embeddings": (EMBEDDINGS_BODY, EMBEDDINGS_FIELDS),
    "/v1/jobs": (JOB_BODY, JOB_FIELDS),
}
# Statuses the docs (docs/reference/errors.md) document for a client's request against these routes.
DOCUMENTED = {200, 202, 400, 404, 413, 415, 422, 429}


def nested(depth: int) -> Any:
    value: Any = []
    for _ in range(depth):
        value = [value]
    return value


LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.sampled_from(["", "\u0000", "chat", "claude", "embed", "x" * 5000, "data:,", "{"]),
)
VALUES = st.one_of(
    st.recursive(
        LEAVES,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
        max_leaves=6,
    ),
    st.sampled_from([nested(300), nested(250), {"type": "text", "text": 1}, [{}], [[]], {}]),
)
DELETE = object()


def mutate(body: dict[str, Any], edits: list[tuple[tuple[str | int, ...], Any]]) -> Any:
    out = copy.deepcopy(body)
    for where, value in edits:
        parent: Any = out
        for key in where[:-1]:
            try:
                parent = parent[key]
            except (KeyError, IndexError, TypeError):
                parent = None
                break
        last = where[-1]
        if isinstance(parent, dict) or (isinstance(parent, list) and isinstance(last, int)):
            if value is DELETE:
                if isinstance(parent, dict):
                    parent.pop(last, None)
                elif last < len(parent):
                    del parent[last]
            elif isinstance(parent, dict) or last < len(parent):
                parent[last] = value
    return out


@st.composite
def field_cases(draw: st.DrawFn) -> tuple[str, bytes, dict[str, str]]:
    path = draw(st.sampled_from(sorted(ENDPOINTS)))
    base, fields = ENDPOINTS[path]
    base = copy.deepcopy(base)
    if path == "/v1/chat/completions":
        base["model"] = draw(st.sampled_from(CHAT_MODELS))
        base["stream"] = draw(st.booleans())
    elif path == "/v1/messages":
        base["stream"] = draw(st.booleans())
    elif path == "/v1/jobs" and draw(st.booleans()):
        base = {"request": EMBEDDINGS_BODY, "endpoint": "/v1/embeddings"}
    edits = draw(
        st.lists(
            st.tuples(st.sampled_from(fields), VALUES | st.just(DELETE)), min_size=1, max_size=3
        )
    )
    body = json.dumps(mutate(base, edits)).encode()
    return path, body, {"content-type": "application/json"}


def compress(kind: str, raw: bytes) -> bytes:
    if kind == "gzip":
        return gzip.compress(raw)
    if kind == "deflate":
        return zlib.compress(raw)
    deflater = zlib.compressobj(wbits=-zlib.MAX_WBITS)  # raw deflate, as some clients send it
    return deflater.compress(raw) + deflater.flush()


@st.composite
def wire_cases(draw: st.DrawFn) -> tuple[str, bytes, dict[str, str]]:
    """Broken JSON, encodings and headers around otherwise valid bodies."""
    path = draw(st.sampled_from(sorted(ENDPOINTS)))
    valid = json.dumps(ENDPOINTS[path][0]).encode()
    headers = {"content-type": draw(st.sampled_from(["application/json", "text/plain", "", "x"]))}
    kind = draw(
        st.sampled_from(
            ["garbage", "truncated", "not-object", "encoded", "corrupt", "unknown-encoding"]
        )
    )
    if kind == "garbage":
        body = draw(st.binary(max_size=64))
    elif kind == "truncated":
        body = valid[: draw(st.integers(min_value=0, max_value=len(valid) - 1))]
    elif kind == "not-object":
        body = json.dumps(draw(VALUES.filter(lambda v: not isinstance(v, dict)))).encode()
    elif kind == "encoded":
        coding = draw(st.sampled_from(["gzip", "deflate", "raw-deflate"]))
        body = compress(coding, valid)
        headers["content-encoding"] = "deflate" if coding == "raw-deflate" else coding
    elif kind == "corrupt":
        coding = draw(st.sampled_from(["gzip", "deflate"]))
        packed = compress(coding, valid)
        cut = draw(st.integers(min_value=0, max_value=len(packed) - 1))
        body = packed[:cut] + draw(st.binary(max_size=8))
        headers["content-encoding"] = coding
    else:
        body = valid
        headers["content-encoding"] = draw(
            st.sampled_from(["br", "zstd", "gzip, gzip", "compress", "x-unknown", "gzip, br"])
        )
    for name in ("x-sidecar-user", "x-sidecar-team", "x-sidecar-priority", "x-sidecar-cache"):
        if draw(st.booleans()):
            headers[name] = draw(st.text(st.characters(min_codepoint=32, max_codepoint=126)))
    return path, body, headers


def expect_documented(path: str, answer: Answer) -> None:
    assert answer.status in DOCUMENTED, (path, answer.status, answer.body[:300])
    if answer.status >= 400:
        problem = error_shape_problem(path, answer)
        assert problem is None, (path, answer.status, problem)
    elif answer.headers.get("content-type", "").startswith("text/event-stream"):
        tail = answer.body.rstrip()
        ended = (b"data: [DONE]", b"event: message_stop", b"event: error", b'"error"')
        assert any(e in tail[-400:] for e in ended), (path, tail[-300:])
    else:
        json.loads(answer.body)


@pytest.fixture
async def target(
    sidecars: Sidecars, upstream: FakeOpenAI, upstream_anthropic: FakeAnthropic
) -> Sidecar:
    return await sidecars.start(
        POLICY.format(openai=upstream.base_url, anthropic=upstream_anthropic.base_url)
    )


def fuzz(
    port: int, cases: st.SearchStrategy[tuple[str, bytes, dict[str, str]]], examples: int
) -> Counter[tuple[str, int]]:
    seen: Counter[tuple[str, int]] = Counter()

    @settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=cases)
    def run(case: tuple[str, bytes, dict[str, str]]) -> None:
        path, body, headers = case
        answer = send(port, "POST", path, body, headers)
        seen[(path, answer.status)] += 1
        expect_documented(path, answer)

    run()
    return seen


async def still_serves(sidecar: Sidecar) -> None:
    body = json.dumps({"model": "chat", "messages": [{"role": "user", "content": "ok?"}]})
    answer = await asyncio.to_thread(
        send, sidecar.port, "POST", "/v1/chat/completions", body.encode()
    )
    assert answer.status == 200
    health = await asyncio.to_thread(send, sidecar.ops_port, "GET", "/healthz")
    assert health.status == 200


def no_tracebacks(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        f"{r.name}: {r.getMessage()}"
        for r in caplog.records
        if r.exc_info is not None or r.levelno >= logging.ERROR
    ]


def report(name: str, seen: Counter[tuple[str, int]]) -> None:
    statuses = Counter(status for _, status in seen.elements())
    print(f"\n{name}: {sum(seen.values())} cases; statuses {dict(sorted(statuses.items()))}")
    for (path, status), n in sorted(seen.items()):
        print(f"  {path} {status}: {n}")


@pytest.mark.parametrize(
    ("name", "cases", "examples"),
    [("fields", field_cases, 1000), ("wire", wire_cases, 250)],
)
async def test_every_request_gets_a_documented_answer_and_the_sidecar_lives_on(
    target: Sidecar,
    caplog: pytest.LogCaptureFixture,
    name: str,
    cases: Callable[[], st.SearchStrategy[tuple[str, bytes, dict[str, str]]]],
    examples: int,
):
    caplog.set_level(logging.INFO)
    seen = await asyncio.to_thread(fuzz, target.port, cases(), examples)
    report(name, seen)
    assert no_tracebacks(caplog) == []
    await still_serves(target)
