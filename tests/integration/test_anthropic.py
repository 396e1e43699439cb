"""Anthropic's wire format on both sides of the sidecar, driven by the official SDKs.

- the OpenAI SDK → sidecar → an Anthropic upstream (egress translation);
- the Anthropic SDK → sidecar (`POST /v1/messages`) → an OpenAI or Anthropic upstream
  (ingress translation, and both at once);
- fallback between targets that speak different wire formats.

Upstreams are real HTTP servers on 127.0.0.1 (FakeAnthropic, FakeOpenAI).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import openai
import orjson
import pytest
from aiohttp import web
from anthropic.types import ToolParam
from openai.types.chat import ChatCompletionFunctionToolParam

from sidecar.app import Sidecar
from tests.support.anthropic_upstream import FakeAnthropic
from tests.support.sidecar import start_sidecar, write_policy
from tests.support.upstream import FakeOpenAI

KEY = "fake-ant-test-SECRET-0123456789abcdef"
OPENAI_KEY = "fake-oai-test-SECRET-fedcba9876543210"
APP_KEY = "app-key-not-for-upstream"
VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 321

WEATHER_SCHEMA: dict[str, object] = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
    "required": ["city"],
}
WEATHER_TOOL: ChatCompletionFunctionToolParam = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": WEATHER_SCHEMA,
    },
}
WEATHER_TOOL_ANTHROPIC: ToolParam = {
    "name": "get_weather",
    "description": "Weather for a city",
    "input_schema": WEATHER_SCHEMA,
}


class ToolCallingOpenAI(FakeOpenAI):
    """FakeOpenAI that answers models named in `tool_calls` with one tool call (JSON or
    streamed in pieces), as OpenAI does; everything else as FakeOpenAI."""

    def __init__(self) -> None:
        super().__init__()
        self.tool_calls: dict[str, tuple[str, dict[str, Any]]] = {}

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        model = (await request.json()).get("model")
        if model not in self.tool_calls:
            return await super()._chat(request)
        body, _, early = await self._common(request)
        if early is not None:
            return early
        name, arguments = self.tool_calls[model]
        args = orjson.dumps(arguments).decode()
        call = {"id": "call_fake_1", "type": "function", "function": {"name": name}}
        usage = {"prompt_tokens": 20, "completion_tokens": 9, "total_tokens": 29}
        if not body.get("stream"):
            message = {
                "role": "assistant",
                "content": None,
                "tool_calls": [{**call, "function": {"name": name, "arguments": args}}],
            }
            choice = {"index": 0, "message": message, "finish_reason": "tool_calls"}
            return web.json_response(_completion(model, [choice], usage=usage))
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        half = len(args) // 2
        deltas: list[dict[str, Any]] = [
            {"role": "assistant", "content": None},
            {"tool_calls": [{"index": 0, **call, "function": {"name": name, "arguments": ""}}]},
            {"tool_calls": [{"index": 0, "function": {"arguments": args[:half]}}]},
            {"tool_calls": [{"index": 0, "function": {"arguments": args[half:]}}]},
        ]
        for delta in deltas:
            choice = {"index": 0, "delta": delta, "finish_reason": None}
            await response.write(_event(_completion(model, [choice], chunk=True)))
        finish = {"index": 0, "delta": {}, "finish_reason": "tool_calls"}
        await response.write(_event(_completion(model, [finish], chunk=True)))
        if (body.get("stream_options") or {}).get("include_usage"):
            await response.write(_event(_completion(model, [], chunk=True, usage=usage)))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


def _completion(
    model: str, choices: list[dict[str, Any]], *, chunk: bool = False, **extra: Any
) -> dict[str, Any]:
    kind = "chat.completion.chunk" if chunk else "chat.completion"
    return {
        "id": "chatcmpl-tools",
        "object": kind,
        "created": 1700000000,
        "model": model,
        "choices": choices,
        **extra,
    }


def _event(data: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


@pytest.fixture
async def openai_up() -> AsyncIterator[ToolCallingOpenAI]:
    fake = ToolCallingOpenAI()
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def sidecar(
    tmp_path: Path, upstream_anthropic: FakeAnthropic, openai_up: ToolCallingOpenAI
) -> AsyncIterator[Sidecar]:
    write_policy(
        tmp_path / "policies",
        "main.yaml",
        f"""
        providers:
          claude:
            type: anthropic
            base_url: {upstream_anthropic.base_url}
            api_key: ${{ANTHROPIC_KEY}}
            anthropic_version: "{VERSION}"
            max_tokens: {DEFAULT_MAX_TOKENS}
            timeout: 2s
          oai:
            type: openai
            base_url: {openai_up.base_url}
            api_key: ${{OPENAI_KEY}}
            timeout: 2s
        models:
          haiku: {{provider: claude, name: claude-haiku-up}}
          sonnet: {{provider: claude, name: claude-sonnet-up}}
          gpt: {{provider: oai, name: up-gpt}}
        routes:
          claude-first:
            targets: [sonnet, gpt]
          gpt-first:
            targets: [gpt, haiku]
        """,
    )
    sc = await start_sidecar(
        tmp_path / "policies", env={"ANTHROPIC_KEY": KEY, "OPENAI_KEY": OPENAI_KEY}
    )
    yield sc
    await sc.stop()


@pytest.fixture
async def api(sidecar: Sidecar) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{sidecar.port}/v1", api_key=APP_KEY, max_retries=0
    ) as client:
        yield client


@pytest.fixture
async def claude(sidecar: Sidecar) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(
        base_url=f"http://127.0.0.1:{sidecar.port}", api_key=APP_KEY, max_retries=0
    ) as client:
        yield client


def only_call(fake: FakeAnthropic) -> dict[str, Any]:
    (seen,) = fake.calls()
    return seen.body


# --- OpenAI SDK → sidecar → Anthropic upstream ---------------------------------------------


async def test_chat_becomes_a_messages_request_with_the_provider_key(
    api: openai.AsyncOpenAI, upstream_anthropic: FakeAnthropic
) -> None:
    raw = await api.chat.completions.with_raw_response.create(
        model="haiku", messages=[{"role": "user", "content": "hi"}]
    )
    answer = raw.parse()
    assert answer.choices[0].message.content == "hello from claude"
    assert answer.choices[0].finish_reason == "stop"
    assert answer.object == "chat.completion"
    assert raw.headers["x-sidecar-provider"] == "claude"
    (seen,) = upstream_anthropic.calls()
    assert seen.path == "/v1/messages"
    assert seen.header("x-api-key") == KEY
    assert seen.header("anthropic-version") == VERSION
    assert seen.header("authorization") is None
    assert all(APP_KEY not in value for value in seen.headers.values())
    assert seen.body["model"] == "claude-haiku-up"
    assert seen.body["messages"] == [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    assert seen.body["max_tokens"] == DEFAULT_MAX_TOKENS  # the policy's default: none was sent
    assert "stream" not in seen.body


async def test_system_messages_are_hoisted_and_images_become_source_blocks(
    api: openai.AsyncOpenAI, upstream_anthropic: FakeAnthropic
) -> None:
    await api.chat.completions.create(
        model="haiku",
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Use French."}]},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Compare these."},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
                    {
                        "type": "image_url",
                        "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQSkZJRg=="},
                    },
                ],
            },
        ],
    )
    body = only_call(upstream_anthropic)
    assert body["system"] == [
        {"type": "text", "text": "Be brief."},
        {"type": "text", "text": "Use French."},
    ]
    assert body["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Compare these."},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}},
                {
                    "type": "image",
                    "source": {
                        "type": "base64",
                        "media_type": "image/jpeg",
                        "data": "/9j/4AAQSkZJRg==",
                    },
                },
            ],
        }
    ]


@pytest.mark.parametrize(
    ("max_tokens", "max_completion_tokens", "expected"),
    [(50, None, 50), (None, 60, 60)],
)
async def test_max_tokens_and_sampling_parameters_are_passed(
    api: openai.AsyncOpenAI,
    upstream_anthropic: FakeAnthropic,
    max_tokens: int | None,
    max_completion_tokens: int | None,
    expected: int,
) -> None:
    await api.chat.completions.create(
        model="haiku",
        messages=[{"role": "user", "content": "hi"}],
        temperature=0.25,
        top_p=0.9,
        stop=["END", "STOP"],
        max_tokens=max_tokens if max_tokens is not None else openai.omit,
        max_completion_tokens=(
            max_completion_tokens if max_completion_tokens is not None else openai.omit
        ),
    )
    body = only_call(upstream_anthropic)
    assert body["max_tokens"] == expected
    assert body["temperature"] == 0.25
    assert body["top_p"] == 0.9
    assert body["stop_sequences"] == ["END", "STOP"]


async def test_a_single_stop_string_becomes_a_list(
    api: openai.AsyncOpenAI, upstream_anthropic: FakeAnthropic
) -> None:
    await api.chat.completions.create(
        model="haiku", messages=[{"role": "user", "content": "hi"}], stop="END"
    )
    assert only_call(upstream_anthropic)["stop_sequences"] == ["END"]


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("required", {"type": "any"}),
        ("auto", {"type": "auto"}),
        ("none", {"type": "none"}),
        (
            {"type": "function", "function": {"name": "get_weather"}},
            {"type": "tool", "name": "get_weather"},
        ),
    ],
)
async def test_tools_and_tool_choice_translate(
    api: openai.AsyncOpenAI,
    upstream_anthropic: FakeAnthropic,
    choice: Any,
    expected: dict[str, Any],
) -> None:
    await api.chat.completions.create(
        model="haiku",
        messages=[{"role": "user", "content": "weather in Paris?"}],
        tools=[WEATHER_TOOL],
        tool_choice=choice,
    )
    body = only_call(upstream_anthropic)
    assert body["tools"] == [WEATHER_TOOL_ANTHROPIC]
    assert body["tool_choice"] == expected


async def test_parallel_tool_calls_false_disables_parallel_tool_use(
    api: openai.AsyncOpenAI, upstream_anthropic: FakeAnthropic
) -> None:
    await api.chat.completions.create(
        model="haiku",
        messages=[{"role": "user", "content": "weather?"}],
        tools=[WEATHER_TOOL],
        parallel_tool_calls=False,
    )
    assert only_call(upstream_anthropic)["tool_choice"] == {
        "type": "auto",
        "disable_parallel_tool_use": True,
    }


async def test_tool_use_answer_becomes_tool_calls(
    api: openai.AsyncOpenAI, upstream_anthropic: FakeAnthropic
) -> None:
    upstream_anthropic.behave(
        "claude-haiku-up", reply="", tool_name="get_weather", tool_input={"city": "Paris"}
    )
    answer = await api.chat.completions.create(
        model="haiku",
        messages=[{"role": "user", "content": "weather in Paris?"}],
        tools=[WEATHER_TOOL],
        tool_choice="required",
    )
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert call.type == "function"
    assert call.id == "toolu_claude-haiku-up_01"
    assert call.function.name == "get_weather"
    assert orjson.loads(call.function.arguments) == {"city": "Paris"}


async def test_text_and_tool_use_in_one_answer_keep_both(
    api: openai.AsyncOpenAI, upstream_anthropic: FakeAnthropic
) -> None:
    upstream_anthropic.behave(
        "claude-haiku-up",
        reply="Let me check.",
        tool_name="get_weather",
        tool_input={"city": "Oslo", "days": 2},
    )
    answer = await api.chat.completions.create(
        model="haiku",
        messages=[{"role": "user", "content": "weather?"}],
        tools=[WEATHER_TOOL],
    )
    message = answer.choices[0].message
    assert message.content == "Let me check."
    calls = [c.function for c in message.tool_calls or [] if c.type == "function"]
    assert [orjson.loads(f.arguments) for f in calls] == [{"city": "Oslo", "days": 2}]


async def test_tool_results_become_tool_result_blocks_in_alternating_turns(
    api: openai.AsyncOpenAI, upstream_anthropic: FakeAnthropic
) -> None:
    paris, oslo = {"city": "Paris"}, {"city": "Oslo"}
    await api.chat.completions.create(
        model="haiku",
        tools=[WEATHER_TOOL],
        messages=[
            {"role": "system", "content": "You are a forecaster."},
            {"role": "user", "content": "Weather in Paris and Oslo?"},
            {"role": "user", "content": "Be quick."},
            {
                "role": "assistant",
                "content": "Checking both.",
                "tool_calls": [
                    {
                        "id": "toolu_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    },
                    {
                        "id": "toolu_2",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "toolu_1", "content": "18C, sunny"},
            {
                "role": "tool",
                "tool_call_id": "toolu_2",
                "content": [{"type": "text", "text": "4C, snow"}],
            },
            {"role": "user", "content": "Which is warmer?"},
        ],
    )
    body = only_call(upstream_anthropic)
    assert body["system"] == [{"type": "text", "text": "You are a forecaster."}]
    assert body["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Weather in Paris and Oslo?"},
                {"type": "text", "text": "Be quick."},
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Checking both."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": paris},
                {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": oslo},
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_1",
                    "content": [{"type": "text", "text": "18C, sunny"}],
                },
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_2",
                    "content": [{"type": "text", "text": "4C, snow"}],
                },
                {"type": "text", "text": "Which is warmer?"},
            ],
        },
    ]


async def test_json_response_format_adds_an_instruction_to_system(
    api: openai.AsyncOpenAI, upstream_anthropic: FakeAnthropic
) -> None:
    await api.chat.completions.create(
        model="haiku",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
        response_format={"type": "json_object"},
    )
    system = only_call(upstream_anthropic)["system"]
    assert system[0] == {"type": "text", "text": "Be brief."}
    assert "JSON" in system[1]["text"]


async def test_json_schema_response_format_puts_the_schema_in_system(
    api: openai.AsyncOpenAI, upstream_anthropic: FakeAnthropic
) -> None:
    schema: dict[str, object] = {"type": "object", "properties": {"answer": {"type": "string"}}}
    await api.chat.completions.create(
        model="haiku",
        messages=[{"role": "user", "content": "hi"}],
        response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}},
    )
    (hint,) = only_call(upstream_anthropic)["system"]
    assert orjson.dumps(schema).decode() in hint["text"]


async def test_usage_counts_cache_reads_and_writes_as_prompt_tokens(
    api: openai.AsyncOpenAI, upstream_anthropic: FakeAnthropic
) -> None:
    upstream_anthropic.behave(
        "claude-haiku-up",
        input_tokens=10,
        output_tokens=7,
        cache_read_input_tokens=100,
        cache_creation_input_tokens=20,
    )
    answer = await api.chat.completions.create(
        model="haiku", messages=[{"role": "user", "content": "hi"}]
    )
    usage = answer.usage
    assert usage is not None
    assert usage.prompt_tokens == 130
    assert usage.completion_tokens == 7
    assert usage.total_tokens == 137
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 100


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("refusal", "content_filter"),
    ],
)
async def test_stop_reason_maps_to_finish_reason(
    api: openai.AsyncOpenAI,
    upstream_anthropic: FakeAnthropic,
    stop_reason: str,
    finish_reason: str,
) -> None:
    upstream_anthropic.behave("claude-haiku-up", stop_reason=stop_reason)
    answer = await api.chat.completions.create(
        model="haiku", messages=[{"role": "user", "content": "hi"}]
    )
    assert answer.choices[0].finish_reason == finish_reason


async def test_streaming_text_with_usage(
    api: openai.AsyncOpenAI, upstream_anthropic: FakeAnthropic
) -> None:
    upstream_anthropic.behave(
        "claude-haiku-up",
        reply="The quick brown fox jumps over the lazy dog.",
        stop_reason="max_tokens",
        input_tokens=12,
        output_tokens=10,
        cache_read_input_tokens=3,
    )
    stream = await api.chat.completions.create(
        model="haiku",
        messages=[{"role": "user", "content": "a sentence"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces: list[str] = []
    finish: list[str] = []
    usage: list[openai.types.CompletionUsage] = []
    async for chunk in stream:
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
            if choice.finish_reason:
                finish.append(choice.finish_reason)
        if chunk.usage is not None:
            usage.append(chunk.usage)
    assert "".join(pieces) == "The quick brown fox jumps over the lazy dog."
    assert len(pieces) > 1  # relayed as it arrived, not in one lump
    assert finish == ["length"]
    (total,) = usage
    assert (total.prompt_tokens, total.completion_tokens, total.total_tokens) == (15, 10, 25)
    assert total.prompt_tokens_details is not None
    assert total.prompt_tokens_details.cached_tokens == 3
    assert only_call(upstream_anthropic)["stream"] is True


async def test_streaming_without_include_usage_sends_no_usage_chunk(
    api: openai.AsyncOpenAI, upstream_anthropic: FakeAnthropic
) -> None:
    stream = await api.chat.completions.create(
        model="haiku", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    chunks = [chunk async for chunk in stream]
    assert all(chunk.usage is None for chunk in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "hello from claude"


async def test_streaming_tool_call_arguments_are_assembled_by_the_sdk(
    api: openai.AsyncOpenAI, upstream_anthropic: FakeAnthropic
) -> None:
    arguments = {"city": "San Francisco", "days": 3, "units": "metric"}
    upstream_anthropic.behave(
        "claude-haiku-up", reply="Looking.", tool_name="get_weather", tool_input=arguments
    )
    async with api.chat.completions.stream(
        model="haiku",
        messages=[{"role": "user", "content": "weather?"}],
        tools=[WEATHER_TOOL],
        stream_options={"include_usage": True},
    ) as stream:
        async for _ in stream:
            pass
        final = await stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Looking."
    (call,) = choice.message.tool_calls or []
    assert call.id == "toolu_claude-haiku-up_01"
    assert call.function.name == "get_weather"
    assert orjson.loads(call.function.arguments) == arguments
    assert final.usage is not None
    assert final.usage.completion_tokens == 5


async def test_anthropic_400_is_a_bad_request_with_the_providers_message(
    api: openai.AsyncOpenAI, upstream_anthropic: FakeAnthropic
) -> None:
    upstream_anthropic.behave(
        "claude-sonnet-up",
        status=400,
        error_message="messages: roles must alternate between user and assistant",
    )
    with pytest.raises(openai.BadRequestError) as info:
        await api.chat.completions.create(
            model="claude-first", messages=[{"role": "user", "content": "hi"}]
        )
    assert "roles must alternate" in info.value.message
    assert info.value.code == "invalid_request_error"
    assert len(upstream_anthropic.calls()) == 1  # the request's own fault: no fallback


async def test_anthropic_429_is_passed_on_with_retry_after(
    api: openai.AsyncOpenAI, upstream_anthropic: FakeAnthropic
) -> None:
    upstream_anthropic.behave("claude-haiku-up", status=429, retry_after="7")
    with pytest.raises(openai.RateLimitError) as info:
        await api.chat.completions.create(
            model="haiku", messages=[{"role": "user", "content": "hi"}]
        )
    assert info.value.response.headers["retry-after"] == "7"


async def test_error_event_mid_stream_is_raised_by_the_sdk(
    api: openai.AsyncOpenAI, upstream_anthropic: FakeAnthropic
) -> None:
    upstream_anthropic.behave("claude-haiku-up", reply="one two three", stream_error_after=4)
    stream = await api.chat.completions.create(
        model="haiku", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    received: list[str] = []

    async def drain() -> None:
        async for chunk in stream:
            received.extend(c.delta.content or "" for c in chunk.choices)

    with pytest.raises(openai.APIError, match="overloaded_error"):
        await drain()
    assert "".join(received) == "one t"  # the first piece was relayed, and no more


@pytest.mark.parametrize(
    ("extra", "content", "feature"),
    [
        ({"logprobs": True}, "hi", "logprobs"),
        ({"n": 2}, "hi", "n > 1"),
        (
            {},
            [{"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}],
            "content part 'input_audio'",
        ),
    ],
)
async def test_untranslatable_features_are_a_400_naming_the_feature(
    api: openai.AsyncOpenAI,
    upstream_anthropic: FakeAnthropic,
    extra: dict[str, Any],
    content: Any,
    feature: str,
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        await api.chat.completions.create(
            model="haiku",
            messages=[{"role": "user", "content": content}],
            **extra,
        )
    assert feature in info.value.message
    assert "Anthropic" in info.value.message
    assert upstream_anthropic.calls() == []


# --- Anthropic SDK → sidecar → OpenAI / Anthropic upstream -------------------------------


async def test_anthropic_sdk_to_openai_upstream(
    claude: anthropic.AsyncAnthropic, openai_up: ToolCallingOpenAI
) -> None:
    raw = await claude.messages.with_raw_response.create(
        model="gpt",
        max_tokens=100,
        system="Be brief.",
        messages=[{"role": "user", "content": "hi"}],
        stop_sequences=["END"],
        # Older SDKs' sampling parameters (this SDK sends them only as extra fields).
        extra_body={"temperature": 0.5, "top_p": 0.8, "top_k": 5},
    )
    message = await raw.parse()
    assert raw.headers["x-sidecar-model"] == "gpt"
    assert message.type == "message"
    assert message.role == "assistant"
    assert message.id.startswith("msg_")
    assert [(b.type, getattr(b, "text", None)) for b in message.content] == [
        ("text", "hello from upstream")
    ]
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (7, 3)
    (seen,) = openai_up.calls()
    assert seen.headers["Authorization"] == f"Bearer {OPENAI_KEY}"
    assert seen.body["model"] == "up-gpt"
    assert seen.body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
    ]
    assert seen.body["max_tokens"] == 100
    assert seen.body["temperature"] == 0.5
    assert seen.body["top_p"] == 0.8
    assert seen.body["stop"] == ["END"]
    assert "x_anthropic" not in seen.body  # Anthropic-only fields never reach OpenAI
    assert "top_k" not in seen.body


async def test_anthropic_sdk_streams_from_openai_upstream(
    claude: anthropic.AsyncAnthropic, openai_up: ToolCallingOpenAI
) -> None:
    openai_up.behave("up-gpt", reply="one two three four")
    async with claude.messages.stream(
        model="gpt", max_tokens=50, messages=[{"role": "user", "content": "count"}]
    ) as stream:
        pieces = [text async for text in stream.text_stream]
        final = await stream.get_final_message()
    assert "".join(pieces) == "one two three four"
    assert len(pieces) == 4
    assert final.stop_reason == "end_turn"
    assert [getattr(b, "text", None) for b in final.content] == ["one two three four"]
    assert (final.usage.input_tokens, final.usage.output_tokens) == (7, 3)
    assert openai_up.calls()[0].body["stream_options"] == {"include_usage": True}


async def test_anthropic_sdk_tool_round_trip_through_openai_upstream(
    claude: anthropic.AsyncAnthropic, openai_up: ToolCallingOpenAI
) -> None:
    openai_up.tool_calls["up-gpt"] = ("get_weather", {"city": "Paris"})
    first = await claude.messages.create(
        model="gpt",
        max_tokens=100,
        tools=[WEATHER_TOOL_ANTHROPIC],
        tool_choice={"type": "any"},
        messages=[{"role": "user", "content": "weather in Paris?"}],
    )
    assert first.stop_reason == "tool_use"
    (block,) = first.content
    assert block.type == "tool_use"
    assert (block.id, block.name, block.input) == ("call_fake_1", "get_weather", {"city": "Paris"})
    assert (first.usage.input_tokens, first.usage.output_tokens) == (20, 9)
    sent = openai_up.calls()[0].body
    assert sent["tools"] == [WEATHER_TOOL]
    assert sent["tool_choice"] == "required"

    del openai_up.tool_calls["up-gpt"]
    openai_up.behave("up-gpt", reply="It is sunny.")
    second = await claude.messages.create(
        model="gpt",
        max_tokens=100,
        tools=[WEATHER_TOOL_ANTHROPIC],
        messages=[
            {"role": "user", "content": "weather in Paris?"},
            {"role": "assistant", "content": first.content},
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": block.id, "content": "18C, sunny"},
                    {"type": "text", "text": "Summarise."},
                ],
            },
        ],
    )
    assert [getattr(b, "text", None) for b in second.content] == ["It is sunny."]
    assert openai_up.calls()[1].body["messages"] == [
        {"role": "user", "content": "weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_fake_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_fake_1", "content": "18C, sunny"},
        {"role": "user", "content": [{"type": "text", "text": "Summarise."}]},
    ]


async def test_anthropic_sdk_streams_a_tool_call_from_openai_upstream(
    claude: anthropic.AsyncAnthropic, openai_up: ToolCallingOpenAI
) -> None:
    openai_up.tool_calls["up-gpt"] = ("get_weather", {"city": "Paris", "days": 3})
    async with claude.messages.stream(
        model="gpt",
        max_tokens=100,
        tools=[WEATHER_TOOL_ANTHROPIC],
        messages=[{"role": "user", "content": "weather?"}],
    ) as stream:
        final = await stream.get_final_message()
    assert final.stop_reason == "tool_use"
    (block,) = final.content
    assert block.type == "tool_use"
    assert (block.name, block.input) == ("get_weather", {"city": "Paris", "days": 3})
    assert (final.usage.input_tokens, final.usage.output_tokens) == (20, 9)


async def test_anthropic_sdk_to_anthropic_upstream(
    claude: anthropic.AsyncAnthropic, upstream_anthropic: FakeAnthropic
) -> None:
    upstream_anthropic.behave(
        "claude-haiku-up",
        input_tokens=10,
        output_tokens=4,
        cache_read_input_tokens=100,
        cache_creation_input_tokens=20,
    )
    message = await claude.messages.create(
        model="haiku",
        max_tokens=64,
        system=[{"type": "text", "text": "Be brief."}],
        messages=[{"role": "user", "content": "hi"}],
        metadata={"user_id": "u-42"},
        extra_body={"temperature": 0.2, "top_k": 5},
    )
    assert [getattr(b, "text", None) for b in message.content] == ["hello from claude"]
    assert message.stop_reason == "end_turn"
    usage = message.usage
    assert (usage.input_tokens, usage.output_tokens) == (10, 4)
    assert usage.cache_read_input_tokens == 100
    assert usage.cache_creation_input_tokens == 20
    (seen,) = upstream_anthropic.calls()
    assert seen.header("x-api-key") == KEY  # the sidecar's key, not the app's
    assert seen.header("anthropic-version") == VERSION
    assert seen.body["system"] == [{"type": "text", "text": "Be brief."}]
    assert seen.body["messages"] == [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    assert seen.body["max_tokens"] == 64
    assert seen.body["temperature"] == 0.2
    assert seen.body["top_k"] == 5  # Anthropic-only fields survive an Anthropic→Anthropic trip
    assert seen.body["metadata"] == {"user_id": "u-42"}


async def test_anthropic_sdk_streams_from_anthropic_upstream(
    claude: anthropic.AsyncAnthropic, upstream_anthropic: FakeAnthropic
) -> None:
    upstream_anthropic.behave(
        "claude-haiku-up", reply="Streaming through two translations.", output_tokens=6
    )
    async with claude.messages.stream(
        model="haiku", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        pieces = [text async for text in stream.text_stream]
        final = await stream.get_final_message()
    assert "".join(pieces) == "Streaming through two translations."
    assert len(pieces) == 3
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (11, 6)


async def test_anthropic_sdk_tool_round_trip_through_anthropic_upstream(
    claude: anthropic.AsyncAnthropic, upstream_anthropic: FakeAnthropic
) -> None:
    upstream_anthropic.behave(
        "claude-haiku-up",
        reply="I'll look.",
        tool_name="get_weather",
        tool_input={"city": "Oslo", "days": 2},
    )
    async with claude.messages.stream(
        model="haiku",
        max_tokens=100,
        tools=[WEATHER_TOOL_ANTHROPIC],
        tool_choice={"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
        messages=[{"role": "user", "content": "weather in Oslo?"}],
    ) as stream:
        first = await stream.get_final_message()
    assert first.stop_reason == "tool_use"
    text, tool = first.content
    assert text.type == "text"
    assert text.text == "I'll look."
    assert tool.type == "tool_use"
    assert (tool.id, tool.name, tool.input) == (
        "toolu_claude-haiku-up_01",
        "get_weather",
        {"city": "Oslo", "days": 2},
    )
    sent = upstream_anthropic.calls()[0].body
    assert sent["tools"] == [WEATHER_TOOL_ANTHROPIC]
    assert sent["tool_choice"] == {
        "type": "tool",
        "name": "get_weather",
        "disable_parallel_tool_use": True,
    }

    upstream_anthropic.behave("claude-haiku-up", reply="Cold.")
    second = await claude.messages.create(
        model="haiku",
        max_tokens=100,
        tools=[WEATHER_TOOL_ANTHROPIC],
        messages=[
            {"role": "user", "content": "weather in Oslo?"},
            {"role": "assistant", "content": first.content},
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": tool.id,
                        "content": [{"type": "text", "text": "-4C"}],
                    }
                ],
            },
        ],
    )
    assert [getattr(b, "text", None) for b in second.content] == ["Cold."]
    assert upstream_anthropic.calls()[1].body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "weather in Oslo?"}]},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "I'll look."},
                {
                    "type": "tool_use",
                    "id": "toolu_claude-haiku-up_01",
                    "name": "get_weather",
                    "input": {"city": "Oslo", "days": 2},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_claude-haiku-up_01",
                    "content": [{"type": "text", "text": "-4C"}],
                }
            ],
        },
    ]


async def test_anthropic_sdk_sends_images_through(
    claude: anthropic.AsyncAnthropic, upstream_anthropic: FakeAnthropic
) -> None:
    await claude.messages.create(
        model="haiku",
        max_tokens=10,
        messages=[
            {
                "role": "user",
                "content": [
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"},
                    },
                    {"type": "image", "source": {"type": "url", "url": "https://e.x/a.gif"}},
                    {"type": "text", "text": "What is this?"},
                ],
            }
        ],
    )
    (message,) = upstream_anthropic.calls()[0].body["messages"]
    assert message["content"] == [
        {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"},
        },
        {"type": "image", "source": {"type": "url", "url": "https://e.x/a.gif"}},
        {"type": "text", "text": "What is this?"},
    ]


async def test_anthropic_sdk_unknown_model_is_not_found(
    claude: anthropic.AsyncAnthropic,
) -> None:
    with pytest.raises(anthropic.NotFoundError) as info:
        await claude.messages.create(
            model="claude-9", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )
    assert "claude-9" in info.value.message
    assert info.value.body == {
        "type": "error",
        "error": {"type": "not_found_error", "message": info.value.body["error"]["message"]},  # type: ignore[index]
    }


@pytest.mark.parametrize("stream", [False, True])
async def test_anthropic_sdk_all_targets_failing_is_a_502(
    claude: anthropic.AsyncAnthropic,
    upstream_anthropic: FakeAnthropic,
    openai_up: ToolCallingOpenAI,
    stream: bool,
) -> None:
    openai_up.behave("up-gpt", status=500)
    upstream_anthropic.behave("claude-haiku-up", status=529)
    with pytest.raises(anthropic.APIStatusError) as info:
        await claude.messages.create(
            model="gpt-first",
            max_tokens=10,
            messages=[{"role": "user", "content": "hi"}],
            stream=stream,
        )
    assert info.value.status_code == 502
    assert "gpt@oai: HTTP 500" in info.value.message
    assert "haiku@claude: HTTP 529 (overloaded)" in info.value.message
    assert KEY not in str(info.value.body)


@pytest.mark.parametrize(("model", "relayed"), [("haiku", "one t"), ("gpt", "one")])
async def test_anthropic_sdk_raises_when_a_stream_breaks_off(
    claude: anthropic.AsyncAnthropic,
    upstream_anthropic: FakeAnthropic,
    openai_up: ToolCallingOpenAI,
    model: str,
    relayed: str,
) -> None:
    upstream_anthropic.behave("claude-haiku-up", reply="one two three", stream_error_after=4)
    openai_up.behave("up-gpt", reply="one two three", cut_after=2)
    received: list[str] = []

    async def drain() -> None:
        async with claude.messages.stream(
            model=model, max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        ) as stream:
            async for text in stream.text_stream:
                received.append(text)

    with pytest.raises(anthropic.APIStatusError, match="incomplete"):
        await drain()
    assert "".join(received) == relayed  # what arrived was relayed; not presented as complete


async def test_anthropic_sdk_gets_the_providers_400_in_anthropic_shape(
    claude: anthropic.AsyncAnthropic, upstream_anthropic: FakeAnthropic
) -> None:
    upstream_anthropic.behave(
        "claude-haiku-up", status=400, error_message="max_tokens: must be at most 8192"
    )
    with pytest.raises(anthropic.BadRequestError) as info:
        await claude.messages.create(
            model="haiku", max_tokens=10000, messages=[{"role": "user", "content": "hi"}]
        )
    assert info.value.body == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "max_tokens: must be at most 8192"},
    }


@pytest.mark.parametrize(
    "body",
    [
        {"model": "haiku", "max_tokens": 10, "messages": "hi"},
        {"model": "haiku", "max_tokens": 10, "messages": ["hi"]},
        {"model": "haiku", "max_tokens": 10, "messages": [{"role": "user", "content": 5}]},
        {"model": "haiku", "max_tokens": 10, "messages": [], "tools": [{"description": "x"}]},
        {"model": "haiku", "messages": []},
    ],
)
async def test_malformed_messages_request_is_a_400_in_anthropic_shape(
    sidecar: Sidecar, upstream_anthropic: FakeAnthropic, body: dict[str, Any]
) -> None:
    url = f"http://127.0.0.1:{sidecar.port}/v1/messages"
    async with aiohttp.ClientSession() as session, session.post(url, json=body) as response:
        assert response.status == 400
        answer = await response.json()
    assert answer["type"] == "error"
    assert answer["error"]["type"] == "invalid_request_error"
    assert upstream_anthropic.calls() == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"model": "haiku", "messages": "hi"}, "messages"),
        (
            {"model": "haiku", "messages": [{"role": "user", "content": ["hi"]}]},
            "messages[0].content[0]",
        ),
        ({"model": "haiku", "messages": [{"role": "user", "content": "hi"}], "stop": 5}, "stop"),
    ],
)
async def test_malformed_chat_request_to_anthropic_is_a_400_in_openai_shape(
    sidecar: Sidecar, upstream_anthropic: FakeAnthropic, body: dict[str, Any], field: str
) -> None:
    url = f"http://127.0.0.1:{sidecar.port}/v1/chat/completions"
    async with aiohttp.ClientSession() as session, session.post(url, json=body) as response:
        assert response.status == 400
        answer = await response.json()
    assert answer["error"]["type"] == "invalid_request_error"
    assert answer["error"]["param"] == field
    assert answer["error"]["message"].startswith(f"{field}: expected ")
    assert upstream_anthropic.calls() == []


# --- fallback across wire formats --------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_overloaded_anthropic_falls_back_to_openai(
    api: openai.AsyncOpenAI,
    upstream_anthropic: FakeAnthropic,
    openai_up: ToolCallingOpenAI,
    stream: bool,
) -> None:
    upstream_anthropic.behave("claude-sonnet-up", status=529)
    openai_up.behave("up-gpt", reply="from openai")
    raw = await api.chat.completions.with_raw_response.create(
        model="claude-first", messages=[{"role": "user", "content": "hi"}], stream=stream
    )
    parsed = raw.parse()
    if isinstance(parsed, openai.AsyncStream):
        text = "".join([c.choices[0].delta.content or "" async for c in parsed if c.choices])
    else:
        text = parsed.choices[0].message.content or ""
    assert text == "from openai"
    assert raw.headers["x-sidecar-fallback-reason"] == "overloaded"
    assert raw.headers["x-sidecar-model"] == "gpt"
    assert raw.headers["x-sidecar-provider"] == "oai"
    assert raw.headers["x-sidecar-attempts"] == "2"
    assert len(upstream_anthropic.calls()) == 1
    assert openai_up.calls()[0].headers["Authorization"] == f"Bearer {OPENAI_KEY}"


@pytest.mark.parametrize("stream", [False, True])
async def test_failing_openai_falls_back_to_anthropic(
    api: openai.AsyncOpenAI,
    upstream_anthropic: FakeAnthropic,
    openai_up: ToolCallingOpenAI,
    stream: bool,
) -> None:
    openai_up.behave("up-gpt", status=500)
    upstream_anthropic.behave("claude-haiku-up", reply="from claude")
    raw = await api.chat.completions.with_raw_response.create(
        model="gpt-first", messages=[{"role": "user", "content": "hi"}], stream=stream
    )
    parsed = raw.parse()
    if isinstance(parsed, openai.AsyncStream):
        text = "".join([c.choices[0].delta.content or "" async for c in parsed if c.choices])
    else:
        text = parsed.choices[0].message.content or ""
    assert text == "from claude"
    assert raw.headers["x-sidecar-fallback-reason"] == "5xx"
    assert raw.headers["x-sidecar-model"] == "haiku"
    assert raw.headers["x-sidecar-provider"] == "claude"
    assert upstream_anthropic.calls()[0].header("x-api-key") == KEY


async def test_anthropic_sdk_falls_back_from_overloaded_anthropic_to_openai(
    claude: anthropic.AsyncAnthropic,
    upstream_anthropic: FakeAnthropic,
    openai_up: ToolCallingOpenAI,
) -> None:
    upstream_anthropic.behave("claude-sonnet-up", status=529)
    openai_up.behave("up-gpt", reply="from openai")
    async with claude.messages.stream(
        model="claude-first", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        text = await stream.get_final_text()
    assert text == "from openai"
    assert stream.response.headers["x-sidecar-fallback-reason"] == "overloaded"
