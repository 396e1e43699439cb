"""The OpenAI SDK, pointed at the sidecar, reaches a real upstream through a route."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import openai
import pytest

from sidecar.app import Sidecar
from tests.support.sidecar import start_sidecar, write_policy
from tests.support.upstream import FakeOpenAI

KEY = "fake-test-SECRET-0123456789abcdef"


@pytest.fixture
async def sidecar(tmp_path: Path, upstream: FakeOpenAI) -> AsyncIterator[Sidecar]:
    write_policy(
        tmp_path / "policies",
        "main.yaml",
        f"""
        providers:
          primary:
            type: openai
            base_url: {upstream.base_url}
            api_key: ${{PRIMARY_KEY}}
            timeout: 2s
          backup:
            type: openai
            base_url: {upstream.base_url}
            api_key: backup-key
        models:
          fast: {{provider: primary, name: up-fast}}
          spare: {{provider: backup, name: up-spare}}
          emb: {{provider: primary, name: up-emb}}
        routes:
          chat:
            targets: [fast, spare]
            timeout: 5s
          embed:
            targets: [emb]
        """,
    )
    sc = await start_sidecar(tmp_path / "policies", env={"PRIMARY_KEY": KEY})
    yield sc
    await sc.stop()


@pytest.fixture
async def api(sidecar: Sidecar) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{sidecar.port}/v1",
        api_key="app-key-not-for-upstream",
        max_retries=0,
    ) as client:
        yield client


async def test_chat_reaches_first_target_with_provider_key(
    api: openai.AsyncOpenAI, sidecar: Sidecar, upstream: FakeOpenAI
):
    raw = await api.chat.completions.with_raw_response.create(
        model="chat", messages=[{"role": "user", "content": "hi"}]
    )
    answer = raw.parse()
    assert answer.choices[0].message.content == "hello from upstream"
    assert raw.headers["x-sidecar-route"] == "chat"
    assert raw.headers["x-sidecar-provider"] == "primary"
    assert raw.headers["x-sidecar-model"] == "fast"
    assert raw.headers["x-sidecar-attempts"] == "1"
    assert len(raw.headers["x-sidecar-policy-version"]) == 12
    (seen,) = upstream.calls()
    assert seen.body["model"] == "up-fast"  # the upstream's own name for the model
    assert seen.headers["Authorization"] == f"Bearer {KEY}"  # the app's key never leaves


async def test_streaming_relays_events_and_usage(
    api: openai.AsyncOpenAI, sidecar: Sidecar, upstream: FakeOpenAI
):
    upstream.behave("up-fast", reply="one two three four")
    stream = await api.chat.completions.create(
        model="chat",
        messages=[{"role": "user", "content": "count"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    text, usage = "", None
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        if chunk.usage:
            usage = chunk.usage
    assert text == "one two three four"
    assert usage is not None
    assert usage.total_tokens == 10


async def test_stream_events_reach_the_app_as_the_upstream_sends_them(
    api: openai.AsyncOpenAI, sidecar: Sidecar, upstream: FakeOpenAI
):
    # Events that arrive together leave together; none waits for a later one.
    upstream.behave("up-fast", reply="one two three", chunk_delay=0.3)
    loop = asyncio.get_running_loop()
    stream = await api.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "count"}], stream=True
    )
    arrivals = [
        (loop.time(), chunk.choices[0].delta.content)
        async for chunk in stream
        if chunk.choices and chunk.choices[0].delta.content
    ]
    assert [word for _, word in arrivals] == ["one", " two", " three"]
    assert arrivals[-1][0] - arrivals[0][0] >= 0.45  # two pauses of 0.3 s in between


@pytest.mark.parametrize(
    ("fault", "kind"),
    [({"status": 503}, "5xx"), ({"drop": True}, "connect"), ({"delay": 3.0}, "timeout")],
)
async def test_failed_target_falls_back_to_next(
    api: openai.AsyncOpenAI, sidecar: Sidecar, upstream: FakeOpenAI, fault, kind
):
    upstream.behave("up-fast", **fault)
    upstream.behave("up-spare", reply="from the spare")
    raw = await api.chat.completions.with_raw_response.create(
        model="chat", messages=[{"role": "user", "content": "hi"}]
    )
    assert raw.parse().choices[0].message.content == "from the spare"
    assert raw.headers["x-sidecar-model"] == "spare"
    assert raw.headers["x-sidecar-attempts"] == "2"
    assert raw.headers["x-sidecar-fallback-reason"] == kind
    assert upstream.calls("up-spare")[0].headers["Authorization"] == "Bearer backup-key"


async def test_stream_that_fails_before_first_event_falls_back(
    api: openai.AsyncOpenAI, sidecar: Sidecar, upstream: FakeOpenAI
):
    upstream.behave("up-fast", cut_after=0)
    upstream.behave("up-spare", reply="spare stream")
    stream = await api.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "spare stream"


async def test_stream_cut_midway_ends_with_an_error_the_sdk_raises(
    api: openai.AsyncOpenAI, sidecar: Sidecar, upstream: FakeOpenAI
):
    upstream.behave("up-fast", reply="a b c d e f", cut_after=3)
    stream = await api.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    received: list[str] = []

    async def read_all() -> None:
        async for chunk in stream:
            if chunk.choices:
                received.append(chunk.choices[0].delta.content or "")

    with pytest.raises(openai.APIError, match="incomplete"):
        await read_all()
    assert "".join(received) == "a b"  # what arrived was relayed; it is not presented as complete


async def test_all_targets_failing_is_a_502_naming_each_attempt(
    api: openai.AsyncOpenAI, sidecar: Sidecar, upstream: FakeOpenAI
):
    upstream.behave("up-fast", status=500)
    upstream.behave("up-spare", status=503)
    with pytest.raises(openai.APIStatusError) as info:
        await api.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "hi"}]
        )
    err = info.value
    assert err.status_code == 502
    assert err.code == "upstream_failed"
    assert "fast@primary: HTTP 500" in err.message
    assert "spare@backup: HTTP 503" in err.message
    assert KEY not in err.message


async def test_all_targets_timing_out_is_a_504(
    api: openai.AsyncOpenAI, sidecar: Sidecar, upstream: FakeOpenAI
):
    upstream.behave("up-fast", delay=3.0)
    upstream.behave("up-spare", delay=10.0)
    with pytest.raises(openai.APIStatusError) as info:
        await api.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "hi"}]
        )
    assert info.value.status_code == 504


async def test_request_error_from_upstream_is_passed_back_not_retried(
    api: openai.AsyncOpenAI, sidecar: Sidecar, upstream: FakeOpenAI
):
    upstream.behave(
        "up-fast",
        status=400,
        error_body={
            "error": {
                "message": f"bad request, key {KEY}",
                "type": "invalid_request_error",
                "code": "x",
            }
        },
    )
    with pytest.raises(openai.BadRequestError) as info:
        await api.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "hi"}]
        )
    assert "bad request" in info.value.message
    assert KEY not in str(info.value.body)  # the provider's key is redacted from its echo
    assert upstream.calls("up-spare") == []


async def test_upstream_401_is_our_problem_and_never_echoes_the_key(
    api: openai.AsyncOpenAI, sidecar: Sidecar, upstream: FakeOpenAI
):
    upstream.behave(
        "up-fast",
        status=401,
        error_body={"error": {"message": f"Incorrect API key provided: {KEY[:8]}***", "type": "x"}},
    )
    upstream.behave("up-spare", status=401)
    with pytest.raises(openai.APIStatusError) as info:
        await api.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "hi"}]
        )
    assert info.value.status_code == 502
    assert "rejected the sidecar's credentials" in info.value.message
    assert KEY[:8] not in str(info.value.body)


async def test_unknown_model_is_404_listing_what_exists(api: openai.AsyncOpenAI, sidecar: Sidecar):
    with pytest.raises(openai.NotFoundError) as info:
        await api.chat.completions.create(
            model="gpt-9", messages=[{"role": "user", "content": "hi"}]
        )
    assert info.value.code == "model_not_found"
    assert "chat, embed, fast, spare, emb" in info.value.message


async def test_a_model_can_be_addressed_directly(
    api: openai.AsyncOpenAI, sidecar: Sidecar, upstream: FakeOpenAI
):
    raw = await api.chat.completions.with_raw_response.create(
        model="spare", messages=[{"role": "user", "content": "hi"}]
    )
    assert raw.headers["x-sidecar-model"] == "spare"
    assert upstream.calls()[0].body["model"] == "up-spare"


async def test_embeddings_and_models(
    api: openai.AsyncOpenAI, sidecar: Sidecar, upstream: FakeOpenAI
):
    c = api
    result = await c.embeddings.create(model="embed", input=["abc", "hello"])
    assert [d.embedding[0] for d in result.data] == [3.0, 5.0]
    assert upstream.calls()[0].path == "/v1/embeddings"
    listed = [m.id async for m in c.models.list()]
    assert listed == ["chat", "embed", "fast", "spare", "emb"]


async def test_malformed_json_is_a_400_in_openai_shape(api: openai.AsyncOpenAI, sidecar: Sidecar):
    import aiohttp

    async with (
        aiohttp.ClientSession() as s,
        s.post(
            f"http://127.0.0.1:{sidecar.port}/v1/chat/completions", data=b'{"model": "chat",'
        ) as r,
    ):
        assert r.status == 400
        body = await r.json()
    assert body["error"]["code"] == "invalid_json"
    assert body["error"]["type"] == "invalid_request_error"
    assert "line 1" in body["error"]["message"]
