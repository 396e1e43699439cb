"""Batch lines and jobs through the providers' own batch APIs, at their batch prices.

The official `openai` SDK uploads a file and creates a batch against the sidecar; the
sidecar groups the lines per target model and submits them to fake OpenAI and Anthropic
batch APIs (real HTTP servers: files, batches, polling, results; tests/support/batch_apis.py),
translating an OpenAI-format line for an Anthropic model both ways. The fakes count what
was submitted, line by line, and which synchronous calls were made.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import aiohttp
import openai
import orjson
import pytest

from sidecar.app import Sidecar
from sidecar.jobs.client import at_providers
from tests.support.anthropic_upstream import FakeAnthropic
from tests.support.sidecar import Sidecars
from tests.support.upstream import FakeOpenAI
from tests.support.wait import eventually

BATCH = "{mode: provider, max_lines: 50, max_wait: 100ms}"


def policy(oai: FakeOpenAI, claude: FakeAnthropic, batch: str = BATCH, extra: str = "") -> str:
    return f"""
    providers:
      oai: {{type: openai, base_url: "{oai.base_url}", api_key: k1}}
      ant: {{type: anthropic, base_url: "{claude.base_url}", api_key: k2}}
    models:
      gpt: {{provider: oai, name: gpt-up, price: {{input: 2, output: 8, batch: 0.5}}}}
      claude:
        provider: ant
        name: claude-up
        price: {{input: 3, output: 15, batch: {{input: 1.5, output: 7.5}}}}
    routes:
      cheap: {{targets: [gpt], batch: {batch}}}
      smart: {{targets: [claude], batch: {batch}}}
    jobs: {{workers: 2, poll_interval: 50ms, batch_poll: 100ms, batch_poll_max: 200ms}}
    {extra}
    """


def line(custom_id: str, model: str, text: str) -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": text}]}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


async def submit(sdk: openai.AsyncOpenAI, lines: list[dict[str, Any]], **extra: Any) -> str:
    content = b"\n".join(orjson.dumps(x) for x in lines)
    uploaded = await sdk.files.create(file=("in.jsonl", content), purpose="batch")
    batch = await sdk.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        **extra,
    )
    return batch.id


async def finished(sdk: openai.AsyncOpenAI, batch_id: str, within: float = 15.0) -> Any:
    async def done() -> Any:
        batch = await sdk.batches.retrieve(batch_id)
        return batch if batch.status in ("completed", "cancelled", "failed") else None

    return await eventually(done, within=within)


async def outputs(sdk: openai.AsyncOpenAI, batch: Any) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for file_id in (batch.output_file_id, batch.error_file_id):
        if file_id:
            text = (await sdk.files.content(file_id)).text
            for raw in text.splitlines():
                entry = orjson.loads(raw)
                found[entry["custom_id"]] = entry
    return found


async def jobs_of(sidecar: Sidecar, batch_id: str) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{sidecar.port}/v1/jobs?limit=1000"
    async with aiohttp.ClientSession() as http, http.get(url) as r:
        listed = (await r.json())["data"]
    return [j for j in listed if j["batch_id"] == batch_id]


@pytest.fixture
async def ends_at_once(upstream: FakeOpenAI, upstream_anthropic: FakeAnthropic) -> None:
    upstream.batches.script.polls_to_end = 1
    upstream_anthropic.batches.script.polls_to_end = 1


def sdk_for(sidecar: Sidecar) -> openai.AsyncOpenAI:
    base = f"http://127.0.0.1:{sidecar.port}/v1"
    return openai.AsyncOpenAI(base_url=base, api_key="app", max_retries=0)


async def test_a_mixed_batch_goes_through_both_providers_batch_apis_at_batch_prices(
    sidecars: Sidecars,
    upstream: FakeOpenAI,
    upstream_anthropic: FakeAnthropic,
    ends_at_once: None,
) -> None:
    sidecar = await sidecars.start(policy(upstream, upstream_anthropic))
    lines = [line(f"a{n}", "cheap", f"question {n}") for n in range(3)]
    lines += [line(f"b{n}", "smart", f"question {n}") for n in range(2)]
    async with sdk_for(sidecar) as sdk:
        batch_id = await submit(sdk, lines)
        batch = await finished(sdk, batch_id)
        results = await outputs(sdk, batch)
    assert batch.status == "completed"
    assert batch.request_counts.completed == 5
    assert batch.request_counts.failed == 0
    answers = {
        k: v["response"]["body"]["choices"][0]["message"]["content"] for k, v in results.items()
    }
    assert answers == {
        **{f"a{n}": "hello from upstream" for n in range(3)},
        **{f"b{n}": "hello from claude" for n in range(2)},
    }
    # Nothing went to the synchronous endpoints; each line was submitted exactly once.
    assert not upstream.calls()
    assert not upstream_anthropic.calls()
    assert len(upstream.batches.made) == 1
    assert len(upstream_anthropic.batches.made) == 1
    jobs = {j["custom_id"]: j for j in await jobs_of(sidecar, batch_id)}
    assert set(upstream.batches.submitted.values()) == {1}
    assert set(upstream.batches.submitted) == {jobs[f"a{n}"]["id"] for n in range(3)}
    assert set(upstream_anthropic.batches.submitted) == {jobs[f"b{n}"]["id"] for n in range(2)}
    # The Anthropic lines were translated: its own params, with the upstream model name.
    (made,) = upstream_anthropic.batches.made.values()
    params = made.lines[0]["params"]
    assert params["model"] == "claude-up"
    assert params["max_tokens"] == 4096
    assert params["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "question 0"}]}
    ]
    # Usage per line, in OpenAI's shape; the cost at the batch price.
    usage = results["b0"]["response"]["body"]["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (11, 5)
    # gpt: 7 in, 3 out at half of 2 and 8 per 1M; claude: 11 in, 5 out at 1.5 and 7.5.
    assert jobs["a0"]["response_headers"]["x-sidecar-cost-usd"] == f"{(7 * 1 + 3 * 4) / 1e6:.8f}"
    assert (
        jobs["b0"]["response_headers"]["x-sidecar-cost-usd"] == f"{(11 * 1.5 + 5 * 7.5) / 1e6:.8f}"
    )
    assert jobs["b0"]["response_headers"]["x-sidecar-batch"] == made.id
    assert jobs["b0"]["response_headers"]["x-sidecar-model"] == "claude"
    # The batch object says where its lines went.
    seen = batch.model_extra["provider_batches"]
    assert sorted(b["provider"] for b in seen["batches"]) == ["ant", "oai"]
    assert {b["lines"] for b in seen["batches"]} == {2, 3}


@pytest.mark.parametrize("path", ["sync", "fail", "resubmit"])
async def test_an_expired_provider_batch_sends_its_unanswered_lines_down_the_policy_path(
    sidecars: Sidecars, upstream: FakeOpenAI, upstream_anthropic: FakeAnthropic, path: str
) -> None:
    script = upstream.batches.script
    script.polls_to_end, script.expire, script.answer_first = 1, True, 1
    batch = f"{{mode: provider, max_lines: 50, max_wait: 100ms, unfinished: {path}}}"
    sidecar = await sidecars.start(policy(upstream, upstream_anthropic, batch))
    async with sdk_for(sidecar) as sdk:
        batch_id = await submit(sdk, [line(f"a{n}", "cheap", f"q {n}") for n in range(3)])
        if path == "resubmit":  # the second provider batch completes
            await eventually(lambda: asyncio.sleep(0, len(upstream.batches.made) == 2))
            script.expire = False
        done = await finished(sdk, batch_id)
        results = await outputs(sdk, done)
    jobs = {j["custom_id"]: j for j in await jobs_of(sidecar, batch_id)}
    first = next(iter(upstream.batches.made.values()))
    assert first.status == "expired"
    answered = first.lines[0]["custom_id"]  # the one line the expired batch reached
    assert jobs[next(k for k, j in jobs.items() if j["id"] == answered)]["status"] == "succeeded"
    others = [k for k, j in jobs.items() if j["id"] != answered]
    if path == "sync":
        assert done.request_counts.completed == 3
        assert len(upstream.calls("gpt-up")) == 2  # run as calls, at full price
        for k in others:
            assert (
                jobs[k]["response_headers"]["x-sidecar-cost-usd"] == f"{(7 * 2 + 3 * 8) / 1e6:.8f}"
            )
            assert "x-sidecar-batch" not in jobs[k]["response_headers"]
    elif path == "fail":
        assert (done.request_counts.completed, done.request_counts.failed) == (1, 2)
        for k in others:
            error = results[k]["error"]
            assert error["code"] == "provider_batch_unfinished"
            assert "batch_expired" in error["message"]
        assert not upstream.calls("gpt-up")
    else:
        assert done.request_counts.completed == 3
        assert not upstream.calls("gpt-up")
        second = list(upstream.batches.made.values())[1]
        assert sorted(x["custom_id"] for x in second.lines) == sorted(jobs[k]["id"] for k in others)
        assert sorted(upstream.batches.submitted.values()) == [1, 2, 2]


async def test_cancelling_a_batch_cancels_the_providers_batch(
    sidecars: Sidecars, upstream: FakeOpenAI, upstream_anthropic: FakeAnthropic
) -> None:
    sidecar = await sidecars.start(policy(upstream, upstream_anthropic))
    async with sdk_for(sidecar) as sdk:
        batch_id = await submit(sdk, [line(f"a{n}", "cheap", f"q {n}") for n in range(3)])
        await eventually(lambda: asyncio.sleep(0, len(upstream.batches.made) == 1))
        cancelling = await sdk.batches.cancel(batch_id)
        assert cancelling.status == "cancelling"
        done = await finished(sdk, batch_id)
        results = await outputs(sdk, done)
    assert upstream.batches.cancels == 1
    assert next(iter(upstream.batches.made.values())).status == "cancelled"
    assert done.status == "cancelled"
    assert (done.request_counts.completed, done.request_counts.failed) == (0, 3)
    assert {r["error"]["code"] for r in results.values()} == {"batch_cancelled"}
    assert not upstream.calls("gpt-up")


async def test_polling_waits_out_a_429s_retry_after(
    sidecars: Sidecars, upstream: FakeOpenAI, upstream_anthropic: FakeAnthropic
) -> None:
    script = upstream.batches.script
    script.polls_to_end, script.refuse_polls, script.retry_after = 1, 1, "1"
    sidecar = await sidecars.start(policy(upstream, upstream_anthropic))
    async with sdk_for(sidecar) as sdk:
        batch_id = await submit(sdk, [line("a", "cheap", "q")])
        done = await finished(sdk, batch_id)
    assert done.status == "completed"
    refused, answered = upstream.batches.poll_times[:2]
    assert answered - refused >= 1.0  # the poll after a 429 waited its Retry-After
    assert upstream.batches.polls == 2


async def test_a_line_the_provider_refuses_fails_with_the_providers_error(
    sidecars: Sidecars, upstream: FakeOpenAI, upstream_anthropic: FakeAnthropic, ends_at_once: None
) -> None:
    upstream_anthropic.behave("claude-up", status=400)
    sidecar = await sidecars.start(policy(upstream, upstream_anthropic))
    async with sdk_for(sidecar) as sdk:
        batch_id = await submit(sdk, [line("b", "smart", "q")])
        done = await finished(sdk, batch_id)
        results = await outputs(sdk, done)
    assert done.request_counts.failed == 1
    response = results["b"]["response"]
    assert response["status_code"] == 400
    assert response["body"]["error"]["code"] == "invalid_request_error"
    assert not upstream_anthropic.calls()  # not run again as a call: it would fail again


async def test_jobs_ask_for_a_provider_batch_where_the_route_allows_it(
    sidecars: Sidecars, upstream: FakeOpenAI, upstream_anthropic: FakeAnthropic, ends_at_once: None
) -> None:
    batch = "{mode: allowed, max_wait: 100ms}"
    sidecar = await sidecars.start(policy(upstream, upstream_anthropic, batch))
    base = f"http://127.0.0.1:{sidecar.port}/v1"
    request = {"model": "cheap", "messages": [{"role": "user", "content": "q"}]}
    async with aiohttp.ClientSession() as http:
        ids = []
        for asked in ("provider", None):
            headers = {"x-sidecar-batch": asked} if asked else {}
            async with http.post(f"{base}/jobs", json={"request": request}, headers=headers) as r:
                ids.append((await r.json())["id"])

        async def all_done() -> list[dict[str, Any]] | None:
            found = []
            for job_id in ids:
                async with http.get(f"{base}/jobs/{job_id}") as r:
                    found.append(await r.json())
            return found if all(j["status"] == "succeeded" for j in found) else None

        asked_for, plain = await eventually(all_done, within=15)
    assert list(upstream.batches.submitted) == [asked_for["id"]]
    assert "x-sidecar-batch" in asked_for["response_headers"]
    assert "x-sidecar-batch" not in plain["response_headers"]
    assert len(upstream.calls("gpt-up")) == 1  # the other ran as a call


async def test_a_deferred_line_holds_its_budget_until_its_answer_lands(
    sidecars: Sidecars, upstream: FakeOpenAI, upstream_anthropic: FakeAnthropic
) -> None:
    # One line's worst case (max_tokens 1000 at 8 USD per 1M = 0.008, plus its input) fits
    # the budget once: while it waits at the provider, a second request finds no room.
    budget = """
    budgets:
      team: {scope: team, limit_usd: 0.012, window: day, on_exceed: reject}
    """
    sidecar = await sidecars.start(policy(upstream, upstream_anthropic, extra=budget))
    body = {"model": "cheap", "max_tokens": 1000, "messages": [{"role": "user", "content": "q"}]}
    headers = {"x-sidecar-team": "t"}
    async with sdk_for(sidecar) as sdk:
        batch_id = await submit(
            sdk,
            [{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": body}],
            extra_headers=headers,
        )
        await eventually(lambda: asyncio.sleep(0, len(upstream.batches.made) == 1))
        with pytest.raises(openai.RateLimitError, match="budget 'team'"):
            await sdk.chat.completions.create(**body, extra_headers=headers)
        waiting = await eventually(
            lambda: metrics(sidecar, 'sidecar_batch_lines{state="submitted"} 1')
        )
        assert 'sidecar_batch_lines{state="deferred"} 0' in waiting
        assert 'sidecar_batch_line_age_seconds{state="submitted"}' in waiting
        upstream.batches.release()
        done = await finished(sdk, batch_id)
        assert done.request_counts.completed == 1
        live = await sdk.chat.completions.with_raw_response.create(**body, extra_headers=headers)
    assert live.headers["x-sidecar-cost-usd"] == f"{(7 * 2 + 3 * 8) / 1e6:.8f}"
    async with aiohttp.ClientSession() as http:
        ops = f"http://127.0.0.1:{sidecar.ops_port}"
        async with http.get(f"{ops}/usage?scope=team&window=day") as r:
            (row,) = (await r.json())["rows"]
    # Spent: the batch line at half price, then the live call at full price.
    assert row["cost_usd"] == pytest.approx((7 * 1 + 3 * 4 + 7 * 2 + 3 * 8) / 1e6)
    assert row["requests"] == 2
    assert row["saved_by_lever"]["batch"] == pytest.approx((7 * 1 + 3 * 4) / 1e6)
    finished_line = (
        'sidecar_batch_lines_finished_total{outcome="succeeded",sidecar_provider="oai"} 1'
    )
    assert finished_line in await metrics(sidecar, finished_line)


async def metrics(sidecar: Sidecar, wanted: str) -> str | None:
    """The ops port's Prometheus text, once it holds `wanted`."""
    url = f"http://127.0.0.1:{sidecar.ops_port}/metrics"
    async with aiohttp.ClientSession() as http, http.get(url) as r:
        text = await r.text()
    return text if wanted in text else None


async def test_the_command_line_asks_for_provider_batches_and_shows_where_lines_are(
    sidecars: Sidecars, upstream: FakeOpenAI, upstream_anthropic: FakeAnthropic, tmp_path: Path
) -> None:
    upstream.batches.script.polls_to_end = 2
    batch = "{mode: allowed, max_wait: 100ms}"
    sidecar = await sidecars.start(policy(upstream, upstream_anthropic, batch))
    requests = tmp_path / "requests.jsonl"
    body = {"model": "cheap", "messages": [{"role": "user", "content": "q"}]}
    requests.write_bytes(orjson.dumps(body) + b"\n")
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "sidecar", "jobs", "--url", f"http://127.0.0.1:{sidecar.port}"),
        *("submit", str(requests), "--provider-batch", "provider", "--wait"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await proc.communicate()
    assert proc.returncode == 0, stderr.decode()
    assert "1 done, 0 failed / 1" in stderr.decode()
    assert len(upstream.batches.made) == 1
    assert not upstream.calls("gpt-up")


def test_the_progress_line_says_where_provider_batch_lines_are() -> None:
    batch = {
        "provider_batches": {
            "deferred": 3,
            "submitted": 47,
            "batches": [
                {"provider": "oai", "provider_batch_id": "batch_1", "status": "in_progress"},
                {
                    "provider": "ant",
                    "provider_batch_id": "mb_2",
                    "status": "ended",
                    "finished_at": 1.0,
                },
            ],
        }
    }
    assert at_providers(batch) == (
        "  [3 waiting for a provider batch; 47 at oai batch_1 in_progress]"
    )
    assert at_providers({"request_counts": {}}) == ""


async def test_a_batched_answer_is_cached_and_a_later_line_is_served_from_the_cache(
    sidecars: Sidecars, upstream: FakeOpenAI, upstream_anthropic: FakeAnthropic, ends_at_once: None
) -> None:
    cache = """
    cache:
      answers: {mode: exact, scope: global, ttl: 1h}
    """
    text = policy(upstream, upstream_anthropic, extra=cache).replace(
        "batch: {mode: provider, max_lines: 50, max_wait: 100ms}}",
        "batch: {mode: provider, max_lines: 50, max_wait: 100ms}, cache: answers}",
        1,
    )
    sidecar = await sidecars.start(text)
    body = {"model": "cheap", "temperature": 0, "messages": [{"role": "user", "content": "q"}]}
    entry = {"custom_id": "c", "method": "POST", "url": "/v1/chat/completions", "body": body}
    async with sdk_for(sidecar) as sdk:
        first = await finished(sdk, await submit(sdk, [entry]))
        second_id = await submit(sdk, [entry])
        second = await finished(sdk, second_id)
        answers = [(await outputs(sdk, b))["c"]["response"]["body"] for b in (first, second)]
    assert answers[0]["choices"] == answers[1]["choices"]
    assert len(upstream.batches.made) == 1  # the second line never went to the provider
    (job,) = await jobs_of(sidecar, second_id)
    assert job["response_headers"]["x-sidecar-cache"] == "hit"


async def test_a_provider_batch_that_fails_validation_fails_the_lines_it_names(
    sidecars: Sidecars, upstream: FakeOpenAI, upstream_anthropic: FakeAnthropic, ends_at_once: None
) -> None:
    upstream.batches.script.fail_lines = {2: "max_tokens is too large"}
    sidecar = await sidecars.start(policy(upstream, upstream_anthropic))
    async with sdk_for(sidecar) as sdk:
        batch_id = await submit(sdk, [line(f"a{n}", "cheap", f"q {n}") for n in range(3)])
        done = await finished(sdk, batch_id)
        results = await outputs(sdk, done)
    (made,) = upstream.batches.made.values()
    jobs = {j["id"]: j["custom_id"] for j in await jobs_of(sidecar, batch_id)}
    named = jobs[made.lines[1]["custom_id"]]  # line 2 of the file the provider refused
    assert results[named]["response"]["status_code"] == 400
    assert "max_tokens is too large" in results[named]["response"]["body"]["error"]["message"]
    # The others were not at fault: they ran as calls (`unfinished: sync`, the default).
    assert (done.request_counts.completed, done.request_counts.failed) == (2, 1)
    assert len(upstream.calls("gpt-up")) == 2


async def test_embeddings_lines_go_through_openais_batch_api_too(
    sidecars: Sidecars, upstream: FakeOpenAI, upstream_anthropic: FakeAnthropic, ends_at_once: None
) -> None:
    sidecar = await sidecars.start(policy(upstream, upstream_anthropic))
    entries = [
        {
            "custom_id": f"e{n}",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": "cheap", "input": ["x" * (n + 1)]},
        }
        for n in range(2)
    ]
    async with sdk_for(sidecar) as sdk:
        content = b"\n".join(orjson.dumps(x) for x in entries)
        uploaded = await sdk.files.create(file=("in.jsonl", content), purpose="batch")
        batch = await sdk.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h"
        )
        done = await finished(sdk, batch.id)
        results = await outputs(sdk, done)
    (made,) = upstream.batches.made.values()
    assert made.endpoint == "/v1/embeddings"
    assert {x["url"] for x in made.lines} == {"/v1/embeddings"}
    vectors = {k: v["response"]["body"]["data"][0]["embedding"] for k, v in results.items()}
    assert vectors == {"e0": [1.0, 1.0, 0.0], "e1": [2.0, 1.0, 0.0]}
    assert not upstream.calls()
