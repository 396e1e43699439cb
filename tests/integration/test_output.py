"""Output schemas: refined retries, lenient extraction, fallback, default and 422, with the
OpenAI SDK against a fake upstream that answers what the test scripts."""

from __future__ import annotations

import json
from collections.abc import Callable

import openai
import pytest

from sidecar.app import Sidecar
from tests.support.sidecar import Sidecars
from tests.support.upstream import FakeOpenAI

INVOICE = {"total": 12.5, "currency": "EUR"}
MESSAGES = [{"role": "user", "content": "Extract the invoice."}]


@pytest.fixture
def make(sidecars: Sidecars, upstream: FakeOpenAI) -> Callable[..., object]:

    async def start(output: str) -> Sidecar:
        return await sidecars.start(
            f"""
            providers:
              main: {{type: openai, base_url: "{upstream.base_url}"}}
            models:
              a: {{provider: main, name: up-a, price: {{input: 1, output: 2}}}}
              b: {{provider: main, name: up-b}}
            schemas:
              invoice:
                type: object
                required: [total, currency]
                properties:
                  total: {{type: number}}
                  currency: {{type: string, enum: [EUR, USD]}}
                additionalProperties: false
            cache:
              answers: {{mode: exact}}  # only temperature-0 requests are cached
            routes:
              extract:
                targets: [a, b]
                output: {output}
                cache: answers
            state: {{backend: memory}}
            """,
        )

    return start


def api(sc: Sidecar) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{sc.port}/v1", api_key="x", max_retries=0)


async def ask(sc: Sidecar, **kw: object) -> tuple[str, dict[str, str]]:
    async with api(sc) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="extract", messages=MESSAGES, **kw
        )
        return raw.parse().choices[0].message.content or "", dict(raw.headers)


async def test_valid_answer_passes_untouched(make, upstream: FakeOpenAI):
    sc = await make("{schema: invoice}")
    upstream.behave("up-a", reply=json.dumps(INVOICE))
    text, headers = await ask(sc)
    assert json.loads(text) == INVOICE
    assert headers["x-sidecar-output"] == "valid"
    assert headers["x-sidecar-attempts"] == "1"


async def test_invalid_answer_is_retried_with_a_correction_quoting_the_errors(
    make, upstream: FakeOpenAI
):
    sc = await make("{schema: invoice, on_invalid: {retries: 2, then: error}}")
    upstream.behave(
        "up-a", replies=[json.dumps({"total": "lots", "currency": "EUR"}), json.dumps(INVOICE)]
    )
    text, headers = await ask(sc)
    assert json.loads(text) == INVOICE  # the client sees only the final, valid answer
    assert headers["x-sidecar-output"] == "repaired"
    assert headers["x-sidecar-attempts"] == "2"
    retry = upstream.calls("up-a")[1].body["messages"]
    assert retry[:1] == MESSAGES
    assert retry[1] == {
        "role": "assistant",
        "content": json.dumps({"total": "lots", "currency": "EUR"}),
    }
    assert retry[2]["role"] == "user"
    assert "$.total: 'lots' is not of type 'number'" in retry[2]["content"]
    # Both answers were paid for: the cost header counts the discarded one too.
    assert float(headers["x-sidecar-cost-usd"]) == pytest.approx(2 * (7 * 1 + 3 * 2) / 1e6)


async def test_lenient_extraction_hands_back_clean_json(make, upstream: FakeOpenAI):
    sc = await make("{schema: invoice, extract: lenient}")
    upstream.behave(
        "up-a", reply="Sure! Here it is:\n```json\n" + json.dumps(INVOICE) + "\n```\nAnything else?"
    )
    text, headers = await ask(sc)
    assert json.loads(text) == INVOICE
    assert headers["x-sidecar-output"] == "repaired"


async def test_strict_extraction_refuses_prose(make, upstream: FakeOpenAI):
    sc = await make("{schema: invoice, on_invalid: {retries: 0, then: error}}")
    upstream.behave("up-a", reply="The total is 12.5 EUR.")
    async with api(sc) as client:
        with pytest.raises(openai.UnprocessableEntityError) as info:
            await client.chat.completions.create(model="extract", messages=MESSAGES)
    assert info.value.code == "output_invalid"
    assert "not JSON" in info.value.message


async def test_fallback_moves_to_the_next_target(make, upstream: FakeOpenAI):
    sc = await make("{schema: invoice, on_invalid: {retries: 1, then: fallback}}")
    upstream.behave("up-a", reply="{}")
    upstream.behave("up-b", reply=json.dumps(INVOICE))
    text, headers = await ask(sc)
    assert json.loads(text) == INVOICE
    assert headers["x-sidecar-model"] == "b"
    assert len(upstream.calls("up-a")) == 2
    assert upstream.calls("up-b")[0].body["messages"] == MESSAGES  # the original question


async def test_default_answers_with_the_policy_object(make, upstream: FakeOpenAI):
    sc = await make(
        "{schema: invoice, on_invalid: {retries: 1, then: default},"
        " default: {total: 0, currency: USD}}"
    )
    upstream.behave("up-a", reply="[]")
    text, headers = await ask(sc)
    assert json.loads(text) == {"total": 0, "currency": "USD"}
    assert headers["x-sidecar-output"] == "default"


async def test_streams_are_validated_before_release(make, upstream: FakeOpenAI):
    sc = await make("{schema: invoice, on_invalid: {retries: 1, then: error}}")
    upstream.behave("up-a", replies=["not json at all", json.dumps(INVOICE)])
    async with api(sc) as client:
        stream = await client.chat.completions.create(
            model="extract", messages=MESSAGES, stream=True
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert json.loads(text) == INVOICE  # never a word of the invalid first answer


async def test_passthrough_streams_report_validity_at_the_end(make, upstream: FakeOpenAI):
    sc = await make("{schema: invoice, stream_mode: passthrough}")
    upstream.behave("up-a", reply="not json")
    async with api(sc) as client:
        stream = await client.chat.completions.create(
            model="extract", messages=MESSAGES, stream=True
        )
        chunks = [c async for c in stream]
    verdicts = [c.model_extra.get("x_sidecar_output") for c in chunks if c.model_extra]
    assert "invalid" in verdicts


async def test_a_passthrough_stream_found_invalid_at_its_end_is_not_cached(
    make, upstream: FakeOpenAI
):
    sc = await make("{schema: invoice, stream_mode: passthrough}")
    upstream.behave("up-a", replies=["not json", json.dumps(INVOICE)])
    async with api(sc) as client:
        for _ in range(2):
            stream = await client.chat.completions.create(
                model="extract", messages=MESSAGES, stream=True, temperature=0
            )
            chunks = [c async for c in stream]
    verdicts = [c.model_extra.get("x_sidecar_output") for c in chunks if c.model_extra]
    assert "valid" in verdicts  # the second answer, not the first one replayed from the cache
    assert len(upstream.calls("up-a")) == 2


async def test_from_request_validates_against_the_clients_schema(make, upstream: FakeOpenAI):
    sc = await make("{schema: from_request, on_invalid: {retries: 0, then: error}}")
    upstream.behave("up-a", reply=json.dumps({"name": 5}))
    schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    async with api(sc) as client:
        with pytest.raises(openai.UnprocessableEntityError) as info:
            await client.chat.completions.create(
                model="extract",
                messages=MESSAGES,
                response_format={
                    "type": "json_schema",
                    "json_schema": {"name": "n", "schema": schema},
                },
            )
    assert "$.name: 5 is not of type 'string'" in info.value.message


async def test_forced_tool_arguments_are_what_is_checked(make, upstream: FakeOpenAI):
    sc = await make("{schema: from_request, on_invalid: {retries: 0, then: error}}")
    upstream.behave("up-a", reply="ignored")
    tool = {
        "type": "function",
        "function": {"name": "save", "parameters": {"type": "object", "required": ["id"]}},
    }
    async with api(sc) as client:
        with pytest.raises(openai.UnprocessableEntityError):
            await client.chat.completions.create(
                model="extract",
                messages=MESSAGES,
                tools=[tool],
                tool_choice={"type": "function", "function": {"name": "save"}},
            )


async def test_enforce_native_asks_the_provider_for_structured_output(make, upstream: FakeOpenAI):
    sc = await make("{schema: invoice, enforce: native}")
    upstream.behave("up-a", reply=json.dumps(INVOICE))
    await ask(sc)
    fmt = upstream.calls("up-a")[0].body["response_format"]
    assert fmt["type"] == "json_schema"
    assert fmt["json_schema"]["schema"]["required"] == ["total", "currency"]
