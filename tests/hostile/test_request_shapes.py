"""Each request body is checked against its API's shape before any stage touches it: the
requests that used to end in plain-text 500s get a 400 naming the field and the problem, in
the ingress format's error shape; fields the sidecar does not know pass through; and an
exception nobody expected becomes a JSON 500, logged once with its traceback."""

from __future__ import annotations

import asyncio
from typing import Any

import openai
import orjson
import pytest

from sidecar.app import Sidecar
from sidecar.pipeline import run as pipeline
from tests.support.raw_client import error_shape_problem, send
from tests.support.sidecar import Sidecars
from tests.support.upstream import FakeOpenAI

POLICY = """
providers:
  mock: {{type: mock}}
  up: {{type: openai, base_url: "{openai}", api_key: sk-shapes-test-key-0001}}
models:
  m: {{provider: mock, price: {{input: 1, output: 2}}}}
  o: {{provider: up, name: up-o}}
routes:
  chat: {{targets: [m]}}
  gpt: {{targets: [o]}}
  typed: {{targets: [m], output: {{schema: from_request, on_invalid: {{retries: 0, then: error}}}}}}
budgets:
  all: {{scope: global, limit_usd: 100, window: day, on_exceed: reject}}
jobs: {{workers: 0}}
state: {{backend: memory}}
"""
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture
async def sidecar(sidecars: Sidecars, upstream: FakeOpenAI) -> Sidecar:
    return await sidecars.start(POLICY.format(openai=upstream.base_url))


async def post(sidecar: Sidecar, path: str, body: Any) -> tuple[int, Any]:
    answer = await asyncio.to_thread(send, sidecar.port, "POST", path, orjson.dumps(body))
    assert error_shape_problem(path, answer) is None or answer.status < 400, answer.body
    return answer.status, answer.json()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"model": "chat", "messages": 5}, "messages: expected array, got integer"),
        (
            {"model": "chat", "messages": HI, "stream": True, "stream_options": 1},
            "stream_options: expected object, got integer",
        ),
        ({"model": "chat", "messages": HI, "max_tokens": [1]}, "max_tokens: expected integer"),
        ({"model": "chat", "messages": HI, "max_tokens": {}}, "max_tokens: expected integer"),
        ({"model": "chat", "messages": HI, "max_tokens": -5}, "max_tokens: must be at least 1"),
        (
            {"model": "typed", "messages": HI, "response_format": "json"},
            "response_format: expected object, got string",
        ),
        ({"model": "chat", "messages": ["hi"]}, "messages[0]: expected object, got string"),
        (
            {"model": "chat", "messages": [{"role": "user", "content": 7}]},
            "messages[0].content: expected string or array, got integer",
        ),
        ({"model": "chat", "messages": [{"content": "hi"}]}, "messages[0].role: is required"),
        ({"messages": HI}, "model: is required"),
        (
            {"model": "gpt", "messages": HI, "x_anthropic": {"model": "claude-opus"}},
            "x_anthropic: is the sidecar's own field and cannot be sent",
        ),
    ],
)
async def test_a_chat_body_of_the_wrong_shape_is_a_400_naming_the_field(
    sidecar: Sidecar, upstream: FakeOpenAI, body: dict[str, Any], message: str
):
    status, answer = await post(sidecar, "/v1/chat/completions", body)
    assert status == 400
    assert answer["error"]["code"] == "invalid_request"
    assert answer["error"]["message"].startswith(message)
    assert answer["error"]["param"] == message.split(":")[0]
    assert upstream.calls() == []


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"model": "chat", "max_tokens": 5, "messages": 5}, "messages: expected array"),
        ({"model": "chat", "max_tokens": "5", "messages": HI}, "max_tokens: expected integer"),
        (
            {"model": "chat", "max_tokens": 5, "messages": [{"role": "user", "content": [5]}]},
            "messages[0].content[0]: expected object",
        ),
        (
            {
                "model": "chat",
                "max_tokens": 5,
                "messages": [{"role": "assistant", "content": [{"type": "tool_use"}]}],
            },
            "messages[0].content[0].id: is required",
        ),
        ({"model": "chat", "max_tokens": 5, "messages": HI, "system": 1}, "system: expected"),
    ],
)
async def test_a_messages_body_of_the_wrong_shape_is_a_400_in_anthropic_shape(
    sidecar: Sidecar, body: dict[str, Any], message: str
):
    status, answer = await post(sidecar, "/v1/messages", body)
    assert status == 400
    assert answer["type"] == "error"
    assert answer["error"]["type"] == "invalid_request_error"
    assert answer["error"]["message"].startswith(message)


async def test_json_nested_deeper_than_it_can_be_sent_on_is_a_400(sidecar: Sidecar):
    deep: Any = "x"
    for _ in range(300):
        deep = [deep]
    raw = (
        orjson.dumps({"model": "gpt", "messages": HI})[:-1]
        + b',"extra":'
        + str(deep).replace("'", '"').encode()
        + b"}"
    )
    answer = await asyncio.to_thread(send, sidecar.port, "POST", "/v1/chat/completions", raw)
    assert answer.status == 400
    assert answer.json()["error"]["code"] == "invalid_json"
    assert "nested deeper than 254" in answer.json()["error"]["message"]


async def test_fields_the_sidecar_does_not_know_reach_the_provider(
    sidecar: Sidecar, upstream: FakeOpenAI
):
    extra = {"reasoning_effort": "low", "service_tier": {"any": ["shape", 1]}, "seed": 7}
    status, _ = await post(
        sidecar, "/v1/chat/completions", {"model": "gpt", "messages": HI, **extra}
    )
    assert status == 200
    sent = upstream.calls()[0].body
    assert {k: sent[k] for k in extra} == extra


async def test_a_job_is_checked_as_the_endpoint_it_names(sidecar: Sidecar):
    bad_chat = {"request": {"model": "chat", "messages": 5}}
    status, answer = await post(sidecar, "/v1/jobs", bad_chat)
    assert (status, answer["error"]["param"]) == (400, "request.messages")
    bad_embedding = {"endpoint": "/v1/embeddings", "request": {"model": "chat", "input": {}}}
    status, answer = await post(sidecar, "/v1/jobs", bad_embedding)
    assert (status, answer["error"]["param"]) == (400, "request.input")


async def test_batch_lines_are_checked_with_the_same_shapes(sidecar: Sidecar):
    line = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions"}
    lines = [
        {**line, "body": {"model": "chat", "messages": HI}},
        {**line, "custom_id": "b", "body": {"model": "chat", "messages": [{"role": 1}]}},
    ]
    async with openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{sidecar.port}/v1", api_key="x", max_retries=0
    ) as client:
        uploaded = await client.files.create(
            file=("in.jsonl", b"\n".join(orjson.dumps(x) for x in lines)), purpose="batch"
        )
        batch = await client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
    assert batch.status == "failed"
    assert batch.errors is not None
    assert batch.errors.data is not None
    [error] = batch.errors.data
    assert (error.line, error.message) == (
        2,
        "line 2: messages[0].role: expected string, got integer",
    )


async def test_an_unexpected_exception_is_a_json_500_logged_once_with_its_traceback(
    sidecar: Sidecar, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    def broken(ctx: object) -> None:
        raise RuntimeError("a bug with request data in its text")

    monkeypatch.setattr(pipeline, "route", broken)  # a bug in a stage, as one would be
    for path, body in (
        ("/v1/chat/completions", {"model": "chat", "messages": HI}),
        ("/v1/messages", {"model": "chat", "max_tokens": 5, "messages": HI}),
    ):
        caplog.clear()
        answer = await asyncio.to_thread(send, sidecar.port, "POST", path, orjson.dumps(body))
        assert answer.status == 500
        assert error_shape_problem(path, answer) is None
        assert b"request data" not in answer.body  # the text stays in the log
        logged = [r for r in caplog.records if r.exc_info is not None]
        assert len(logged) == 1
        assert "a bug with request data" in caplog.text
    assert answer.json()["error"]["type"] == "api_error"
    status, openai_shape = await post(
        sidecar, "/v1/chat/completions", {"model": "x", "messages": HI}
    )
    assert (status, openai_shape["error"]["code"]) == (500, "internal_error")
