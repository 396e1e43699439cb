"""Native enforcement of output schemas: each provider is asked in the dialect it enforces
(fake servers that check what they receive, as the real ones do), answers are unwrapped, a
provider that ignores the schema is still caught, and what the app gets says honestly what
it cost and where it came from."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable

import anthropic
import openai
import pytest

from sidecar.app import Sidecar
from tests.integration.test_output import api
from tests.support.anthropic_upstream import FakeAnthropic
from tests.support.constrained_upstream import FakeConstrained
from tests.support.otlp import OtlpReceiver, collect
from tests.support.sidecar import Sidecars

# `note` is optional: OpenAI's strict mode needs it required and nullable.
INVOICE = {
    "type": "object",
    "required": ["total", "currency"],
    "properties": {
        "total": {"type": "number"},
        "currency": {"type": "string", "enum": ["EUR", "USD"]},
        "note": {"type": "string"},
    },
}
STRICT_INVOICE = {
    **INVOICE,
    "required": ["total", "currency", "note"],
    "properties": {**INVOICE["properties"], "note": {"type": ["string", "null"]}},
    "additionalProperties": False,
}
GOOD = {"total": 12.5, "currency": "EUR"}
BAD = {"total": "lots", "currency": "EUR"}
MESSAGES = [{"role": "user", "content": "Extract the invoice."}]


@pytest.fixture
async def constrained() -> AsyncIterator[FakeConstrained]:
    fake = await FakeConstrained().start()
    yield fake
    await fake.stop()


@pytest.fixture
def make(
    sidecars: Sidecars, constrained: FakeConstrained, upstream_anthropic: FakeAnthropic
) -> Callable[..., object]:
    """A sidecar whose `extract` route targets model `a` on provider `local` (an OpenAI
    wire with the given structured_output) then `b`, with the given output policy."""

    async def start(output: str, dialect: str = "", targets: str = "[a, b]") -> Sidecar:
        setting = f", structured_output: {dialect}" if dialect else ""
        return await sidecars.start(
            f"""
            providers:
              local: {{type: openai, base_url: "{constrained.base_url}"{setting}}}
              claude: {{type: anthropic, base_url: "{upstream_anthropic.base_url}"}}
            models:
              a: {{provider: local, name: up-a, price: {{input: 1, output: 2}}}}
              b: {{provider: local, name: up-b}}
              c: {{provider: claude, name: claude-c}}
            schemas:
              invoice: {json.dumps(INVOICE)}
            routes:
              extract:
                targets: {targets}
                output: {output}
            state: {{backend: memory}}
            """
        )

    return start


async def ask(sc: Sidecar, **kw: object) -> tuple[dict, dict[str, str]]:
    async with api(sc) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="extract", messages=MESSAGES, **kw
        )
        return json.loads(raw.text), dict(raw.headers)


def content(answer: dict) -> object:
    return json.loads(answer["choices"][0]["message"]["content"])


async def test_openai_gets_the_schema_in_strict_form_and_its_nulls_are_dropped(
    make, constrained: FakeConstrained
):
    sc = await make("{schema: invoice}")  # enforce: both, by default
    constrained.behave("up-a", candidates=[BAD, {**GOOD, "note": None}])
    answer, headers = await ask(sc)
    assert constrained.calls("up-a")[0].body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "invoice", "schema": STRICT_INVOICE, "strict": True},
    }
    assert content(answer) == GOOD  # strict mode's null for the optional `note` is gone
    assert headers["x-sidecar-output"] == "valid"
    assert headers["x-sidecar-attempts"] == "1"


async def test_llama_cpp_gets_json_object_with_a_schema(make, constrained: FakeConstrained):
    sc = await make("{schema: invoice}", dialect="json_object")
    constrained.behave("up-a", dialect="llama.cpp", candidates=[BAD, GOOD])
    answer, headers = await ask(sc)
    assert constrained.calls("up-a")[0].body["response_format"] == {
        "type": "json_object",
        "schema": INVOICE,
    }
    assert content(answer) == GOOD
    assert headers["x-sidecar-output"] == "valid"


async def test_a_server_refusing_the_dialect_is_named_in_the_502(
    make, constrained: FakeConstrained
):
    sc = await make("{schema: invoice}", targets="[a]")  # json_schema, which llama.cpp refuses
    constrained.behave("up-a", dialect="llama.cpp")
    async with api(sc) as client:
        with pytest.raises(openai.APIStatusError) as info:
            await client.chat.completions.create(model="extract", messages=MESSAGES)
    assert info.value.status_code == 502
    assert (
        'HTTP 500 (response_format type must be one of "text" or "json_object", but got: '
        "json_schema)" in info.value.message
    )


@pytest.mark.parametrize(
    ("dialect", "field", "value"),
    [
        ("guided_json", "guided_json", INVOICE),
        ("structured_outputs", "structured_outputs", {"json": INVOICE}),
    ],
)
async def test_vllm_gets_its_own_fields(
    make, constrained: FakeConstrained, dialect: str, field: str, value: dict
):
    sc = await make("{schema: invoice}", dialect=dialect)
    constrained.behave("up-a", dialect="vllm", candidates=[BAD, GOOD])
    answer, _ = await ask(sc, response_format={"type": "json_object"})
    sent = constrained.calls("up-a")[0].body
    assert sent[field] == value
    assert "response_format" not in sent
    assert content(answer) == GOOD


async def test_from_request_schemas_are_sent_in_the_providers_dialect(
    make, constrained: FakeConstrained
):
    sc = await make("{schema: from_request}", dialect="json_object")
    constrained.behave("up-a", dialect="llama.cpp", candidates=[BAD, GOOD])
    fmt = {"type": "json_schema", "json_schema": {"name": "inv", "schema": INVOICE}}
    answer, _ = await ask(sc, response_format=fmt)
    assert constrained.calls("up-a")[0].body["response_format"] == {
        "type": "json_object",
        "schema": INVOICE,
    }
    assert content(answer) == GOOD


async def test_anthropic_is_forced_to_call_a_tool_and_the_call_comes_back_as_content(
    make, upstream_anthropic: FakeAnthropic
):
    sc = await make("{schema: invoice}", targets="[c]")
    upstream_anthropic.behave("claude-c", candidates=[BAD, GOOD])
    answer, headers = await ask(sc)
    sent = upstream_anthropic.calls("claude-c")[0].body
    assert sent["tools"] == [
        {
            "name": "invoice",
            "description": "Give the answer: its input is the answer, in the required shape.",
            "input_schema": INVOICE,
        }
    ]
    assert sent["tool_choice"] == {"type": "tool", "name": "invoice"}
    assert "system" not in sent  # no prose instruction: the tool is the instruction
    message = answer["choices"][0]
    assert content(answer) == GOOD
    assert message["finish_reason"] == "stop"
    assert "tool_calls" not in message["message"]
    assert headers["x-sidecar-output"] == "valid"
    async with api(sc) as client:  # and streamed, as content deltas
        stream = await client.chat.completions.create(
            model="extract", messages=MESSAGES, stream=True
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert json.loads(text) == GOOD


async def test_a_provider_ignoring_the_schema_is_still_caught_and_the_default_says_so(
    make, constrained: FakeConstrained
):
    sc = await make(
        "{schema: invoice, on_invalid: {retries: 1, then: default},"
        " default: {total: 0, currency: USD}}",
        targets="[a]",
    )
    constrained.behave("up-a", dialect="ignore", candidates=[BAD])
    answer, headers = await ask(sc)
    assert "response_format" in constrained.calls("up-a")[0].body  # asked, and ignored
    assert len(constrained.calls("up-a")) == 2
    assert content(answer) == {"total": 0, "currency": "USD"}
    assert answer["x_sidecar_output"] == "default"
    assert headers["x-sidecar-output"] == "default"
    # both discarded answers were paid for, and the body's usage says so
    assert answer["usage"]["prompt_tokens"] == 14
    assert answer["usage"]["completion_tokens"] == 6


async def test_a_repaired_answers_usage_counts_every_call(make, constrained: FakeConstrained):
    sc = await make("{schema: invoice, enforce: validate}")
    constrained.behave("up-a", dialect="ignore", candidates=[BAD, GOOD])
    answer, headers = await ask(sc)
    assert "response_format" not in constrained.calls("up-a")[0].body  # validate: not asked
    assert headers["x-sidecar-output"] == "repaired"
    assert answer["usage"] == {
        "prompt_tokens": 14,
        "completion_tokens": 6,
        "total_tokens": 20,
        "prompt_tokens_details": {"cached_tokens": 0},
    }
    assert float(headers["x-sidecar-cost-usd"]) == pytest.approx((14 * 1 + 6 * 2) / 1e6)


async def test_enforce_native_trusts_the_provider_and_reports_what_came(
    make, constrained: FakeConstrained
):
    sc = await make("{schema: invoice, enforce: native}")
    constrained.behave("up-a", dialect="ignore", candidates=[BAD, GOOD])
    answer, headers = await ask(sc)
    assert content(answer) == BAD  # passed on as it came: no retry, no default
    assert headers["x-sidecar-output"] == "invalid"
    assert headers["x-sidecar-attempts"] == "1"


async def test_the_422_counts_the_attempts_the_header_counts(make, constrained: FakeConstrained):
    sc = await make("{schema: invoice, on_invalid: {retries: 1, then: fallback}}")
    for model in ("up-a", "up-b"):
        constrained.behave(model, dialect="ignore", candidates=[BAD])
    async with api(sc) as client:
        with pytest.raises(openai.UnprocessableEntityError) as info:
            await client.chat.completions.with_raw_response.create(
                model="extract", messages=MESSAGES
            )
    assert info.value.response.headers["x-sidecar-attempts"] == "3"  # a, a again, then b
    assert "after 3 attempt(s)" in info.value.message


async def test_anthropic_clients_get_the_output_invalid_code(make, constrained: FakeConstrained):
    sc = await make("{schema: invoice, on_invalid: {retries: 0}}", targets="[a]")
    constrained.behave("up-a", dialect="ignore", candidates=[BAD])
    async with anthropic.AsyncAnthropic(
        base_url=f"http://127.0.0.1:{sc.port}", api_key="x", max_retries=0
    ) as client:
        with pytest.raises(anthropic.UnprocessableEntityError) as info:
            await client.messages.create(model="extract", max_tokens=50, messages=MESSAGES)
    assert info.value.body["error"]["type"] == "output_invalid"
    assert "is not of type 'number'" in info.value.body["error"]["message"]


async def test_a_stream_without_usage_gets_an_estimated_usage_chunk(
    sidecars: Sidecars, constrained: FakeConstrained
):
    sc = await sidecars.start(
        f"""
        providers:
          local: {{type: openai, base_url: "{constrained.base_url}"}}
        models:
          a: {{provider: local, name: up-a}}
        state: {{backend: memory}}
        """
    )
    constrained.behave("up-a", usage=False, candidates=[GOOD])
    async with api(sc) as client:
        stream = await client.chat.completions.create(
            model="a", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
        chunks = [c async for c in stream]
    last = chunks[-1]
    assert last.usage is not None
    assert last.usage.prompt_tokens > 0
    assert last.usage.completion_tokens > 0
    assert last.model_extra["x_sidecar_usage"] == "estimated"


# -- forced tools, and the structured-output helpers of LangChain and LlamaIndex -----------

PERSON = {
    "type": "object",
    "required": ["name", "age"],
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
}
ADA = {"name": "Ada", "age": 36}

# What LlamaIndex's `OpenAILike(...).structured_predict(Person, ...)` sends (captured from
# llama-index-llms-openai-like 0.8.1): its openai<3 pin cannot share the suite's openai 3,
# so the test sends its exact request.
LLAMA_INDEX_BODY = {
    "messages": [{"role": "user", "content": "Who is Ada?"}],
    "parallel_tool_calls": False,
    "stream": False,
    "temperature": 0.1,
    "tool_choice": "required",
    "tools": [
        {
            "type": "function",
            "function": {
                "name": "Person",
                "description": "Person(*args: Any, **kwargs: Any) -> ~Model\nModel function.",
                "parameters": {
                    "properties": {
                        "name": {"title": "Name", "type": "string"},
                        "age": {"title": "Age", "type": "integer"},
                    },
                    "required": ["name", "age"],
                    "type": "object",
                    "additionalProperties": False,
                },
                "strict": False,
            },
        }
    ],
}


@pytest.fixture
def person_route(sidecars: Sidecars, constrained: FakeConstrained) -> Callable[..., object]:
    async def start(schema: str = "person") -> Sidecar:
        return await sidecars.start(
            f"""
            providers:
              local: {{type: openai, base_url: "{constrained.base_url}"}}
            models:
              a: {{provider: local, name: up-a}}
            schemas:
              person: {json.dumps(PERSON)}
            routes:
              people:
                targets: [a]
                output: {{schema: {schema}, on_invalid: {{retries: 1}}}}
            state: {{backend: memory}}
            """
        )

    return start


@pytest.mark.parametrize("schema", ["person", "from_request"])
@pytest.mark.parametrize("first", [ADA, {"name": "Ada", "age": "old"}])
async def test_llama_index_structured_predict_through_a_schema_route(
    person_route, constrained: FakeConstrained, schema: str, first: dict
):
    sc = await person_route(schema)
    constrained.behave("up-a", dialect="ignore", candidates=[first, ADA])
    async with api(sc) as client:
        raw = await client.post(
            "/chat/completions",
            body={**LLAMA_INDEX_BODY, "model": "people"},
            cast_to=openai.types.chat.ChatCompletion,
            options={"headers": {"x-test": "1"}},
        )
    call = raw.choices[0].message.tool_calls[0]
    assert json.loads(call.function.arguments) == ADA
    calls = constrained.calls("up-a")
    assert len(calls) == (1 if first == ADA else 2)
    assert "response_format" not in calls[0].body  # the forced tool is the enforcement
    if first != ADA:  # the retry quotes the tool call in the assistant turn it repeats
        turns = calls[1].body["messages"]
        assert turns[1]["tool_calls"][0]["function"]["arguments"] == json.dumps(
            first, separators=(",", ":")
        )
        assert turns[2]["role"] == "tool"
        assert "$.age: 'old' is not of type 'integer'" in turns[2]["content"]


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
@pytest.mark.parametrize("first", [ADA, {"name": "Ada"}])
async def test_langchain_with_structured_output_through_a_schema_route(
    person_route, constrained: FakeConstrained, method: str, first: dict
):
    from langchain_openai import ChatOpenAI
    from pydantic import BaseModel

    class Person(BaseModel):
        name: str
        age: int

    sc = await person_route()
    constrained.behave("up-a", dialect="ignore", candidates=[first, ADA])
    llm = ChatOpenAI(
        model="people", base_url=f"http://127.0.0.1:{sc.port}/v1", api_key="x", max_retries=0
    )
    try:
        person = await llm.with_structured_output(Person, method=method).ainvoke("Who is Ada?")
    finally:
        await llm.root_async_client.close()  # LangChain leaves its client open
    assert person == Person(**ADA)
    assert len(constrained.calls("up-a")) == (1 if first == ADA else 2)


async def test_first_try_validity_is_counted_per_route_model_and_enforcement(
    sidecars: Sidecars, constrained: FakeConstrained, otlp: OtlpReceiver
):
    sc = await sidecars.start(
        f"""
        providers:
          local: {{type: openai, base_url: "{constrained.base_url}"}}
        models:
          a: {{provider: local, name: up-a}}
        schemas:
          invoice: {json.dumps(INVOICE)}
        routes:
          "on": {{targets: [a], output: {{schema: invoice, on_invalid: {{retries: 1}}}}}}
          "off":
            targets: [a]
            output: {{schema: invoice, enforce: validate, on_invalid: {{retries: 1}}}}
        state: {{backend: memory}}
        """,
        env={"OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint},
    )
    constrained.behave("up-a", candidates=[BAD, {**GOOD, "note": None}])  # BAD unconstrained
    async with api(sc) as client:
        for route in ("on", "off"):
            await client.chat.completions.create(model=route, messages=MESSAGES)

    def count(route: str, output: str, enforce: str) -> float:
        return otlp.total(
            "sidecar.output.validations",
            **{"sidecar.route": route, "sidecar.output": output, "sidecar.enforce": enforce},
        )

    await collect(sc.telemetry, otlp, lambda: count("off", "repaired", "none") == 1)
    assert count("on", "valid", "native") == 1  # valid at the first try, enforced
    assert count("off", "invalid", "none") == 1  # the discarded first answer
    assert count("off", "valid", "none") == 0
