"""Async jobs and batches through a real sidecar: the official `openai` SDK's Files and
Batch API end to end, `POST /v1/jobs` with polling, signed webhooks retried until the
receiver takes them, dead letters, and hosts the policy does not allow refused at submit.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import io
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from aiohttp import web

from sidecar.app import Sidecar
from sidecar.jobs import runtime
from sidecar.jobs.backends import open_queue
from sidecar.jobs.model import CHAT_ENDPOINT, Job
from sidecar.policy.compile import load_folder
from sidecar.policy.model import JobsConfig
from sidecar.policy.problems import PolicyInvalid
from tests.support.sidecar import Sidecars, write_policy
from tests.support.upstream import FakeOpenAI
from tests.support.wait import eventually

SECRET = "whsec-test-5b1f0c9e"
ENV = {"HOOK_SECRET": SECRET}
Start = Callable[..., Awaitable[Sidecar]]


def policy(upstream: FakeOpenAI, jobs: str = "") -> str:
    return f"""
    providers:
      up: {{type: openai, base_url: {upstream.base_url}, api_key: k, timeout: 5s}}
    models:
      m: {{provider: up, name: up-m}}
      broken: {{provider: up, name: up-broken}}
      refused: {{provider: up, name: up-refused}}
      emb: {{provider: up, name: up-emb}}
    routes:
      chat: {{targets: [m]}}
      chat-broken: {{targets: [broken], retry: {{attempts: 1}}}}
      chat-refused: {{targets: [refused]}}
      embed: {{targets: [emb]}}
    {jobs}
    """


JOBS = """
    jobs:
      workers: 2
      max_attempts: 3
      retry_backoff: 20ms
      visibility_timeout: 5s
      poll_interval: 50ms
      webhook_allow: ["127.0.0.1:*", "hooks.example.com"]
      webhook_secret_env: HOOK_SECRET
    """


@pytest.fixture
def start(sidecars: Sidecars, upstream: FakeOpenAI) -> Start:
    async def run(jobs: str = JOBS) -> Sidecar:
        return await sidecars.start(policy(upstream, jobs), ENV, drain_timeout=1.0)

    return run


SDK = Callable[[Sidecar], openai.AsyncOpenAI]


@pytest.fixture
async def sdk() -> AsyncIterator[SDK]:
    """The official client, as an app would point it at its sidecar."""
    made: list[openai.AsyncOpenAI] = []

    def make(sidecar: Sidecar) -> openai.AsyncOpenAI:
        made.append(openai.AsyncOpenAI(base_url=base(sidecar), api_key="app-key", max_retries=0))
        return made[-1]

    yield make
    for client in made:
        await client.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def base(sidecar: Sidecar) -> str:
    return f"http://127.0.0.1:{sidecar.port}/v1"


def chat(text: str, model: str = "chat") -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}]}


async def submit(
    http: aiohttp.ClientSession, sidecar: Sidecar, body: dict[str, Any], **headers: str
) -> tuple[int, dict[str, Any]]:
    async with http.post(f"{base(sidecar)}/jobs", json=body, headers=headers) as r:
        return r.status, await r.json()


async def finished(http: aiohttp.ClientSession, sidecar: Sidecar, job_id: str) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        async with http.get(f"{base(sidecar)}/jobs/{job_id}") as r:
            job = await r.json()
        return job if job["status"] not in ("queued", "running") else None

    return await eventually(check)


# --- the `jobs:` section ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("jobs", "problem"),
    [
        ("jobs: {backend: redis}", "jobs: backend redis needs a url (or state.url)"),
        ('jobs: {webhook_allow: ["a.example"]}', "webhook_allow needs webhook_secret_env"),
        ("jobs: {webhook_secret_env: HOOKS}", "environment variable 'HOOKS' is not set"),
        ("jobs: {workers: -1}", "min value is 0"),
        ("jobs: {visibility_timeout: 5x}", "is not a duration"),
    ],
)
def test_a_wrong_jobs_section_is_refused_with_its_line(
    tmp_path: Path, jobs: str, problem: str
) -> None:
    folder = tmp_path / "p"
    write_policy(
        folder,
        "jobs.yaml",
        f"models: {{m: {{provider: p}}}}\nproviders: {{p: {{type: mock}}}}\n{jobs}\n",
    )
    with pytest.raises(PolicyInvalid) as caught:
        load_folder(folder, {})
    assert any(
        problem in str(p) and str(p).startswith("jobs.yaml:3:") for p in caught.value.problems
    ), caught.value.problems


def test_the_jobs_section_compiles_with_defaults(tmp_path: Path) -> None:
    folder = tmp_path / "p"
    write_policy(
        folder,
        "jobs.yaml",
        "state: {backend: redis, url: 'redis://r:6379/0'}\njobs: {backend: redis}\n",
    )
    config = load_folder(folder, {}).jobs
    assert config == JobsConfig(backend="redis", url="redis://r:6379/0")
    write_policy(folder, "jobs.yaml", "jobs:\n")
    assert load_folder(folder, {}).jobs == JobsConfig()
    assert JobsConfig().retention == 7 * 24 * 3600  # a week, unless the policy says
    write_policy(folder, "jobs.yaml", "jobs: {retention: 30m}\n")
    assert load_folder(folder, {}).jobs == JobsConfig(retention=1800.0)


# --- the OpenAI SDK, unchanged ---------------------------------------------------------------


async def test_the_openai_sdk_runs_a_batch_end_to_end(
    start: Start, upstream: FakeOpenAI, sdk: SDK
) -> None:
    sidecar = await start()
    upstream.behave("up-m", reply="the answer")
    lines = [
        {
            "custom_id": f"req-{n}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": chat(f"q{n}"),
        }
        for n in range(5)
    ]
    lines.append(
        {
            "custom_id": "req-missing",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": chat("q", "nope"),
        }
    )
    content = b"".join(orjson.dumps(line) + b"\n" for line in lines)
    client = sdk(sidecar)
    uploaded = await client.files.create(file=("input.jsonl", content), purpose="batch")
    assert (uploaded.purpose, uploaded.bytes, uploaded.filename) == (
        "batch",
        len(content),
        "input.jsonl",
    )
    assert (await client.files.retrieve(uploaded.id)).id == uploaded.id
    batch = await client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"project": "docs"},
    )
    assert batch.status == "in_progress"
    assert batch.request_counts.total == 6

    async def done() -> openai.types.Batch | None:
        b = await client.batches.retrieve(batch.id)
        return b if b.status == "completed" else None

    final = await eventually(done)
    assert (final.request_counts.completed, final.request_counts.failed) == (5, 1)
    assert final.metadata == {"project": "docs"}
    assert final.completed_at is not None
    assert final.output_file_id
    assert final.error_file_id
    output = (await client.files.content(final.output_file_id)).content
    results = [orjson.loads(line) for line in output.splitlines()]
    assert sorted(r["custom_id"] for r in results) == [f"req-{n}" for n in range(5)]
    for r in results:
        assert r["response"]["status_code"] == 200
        assert r["error"] is None
        assert r["response"]["body"]["choices"][0]["message"]["content"] == "the answer"
    errors = [
        orjson.loads(line)
        for line in (await client.files.content(final.error_file_id)).content.splitlines()
    ]
    assert [(e["custom_id"], e["response"]["status_code"]) for e in errors] == [
        ("req-missing", 404)
    ]
    assert errors[0]["response"]["body"]["error"]["code"] == "model_not_found"
    assert len(upstream.calls("up-m")) == 5
    assert final.usage is not None
    assert final.usage.input_tokens == 35
    assert [b.id async for b in client.batches.list()] == [batch.id]
    assert (await client.files.delete(uploaded.id)).deleted
    with pytest.raises(openai.NotFoundError):
        await client.files.retrieve(uploaded.id)


async def test_a_malformed_input_file_fails_the_batch_with_line_numbers(
    start: Start, sdk: SDK
) -> None:
    sidecar = await start()
    client = sdk(sidecar)
    good = orjson.dumps(
        {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": chat("x")}
    )
    uploaded = await client.files.create(
        file=("in.jsonl", good + b"\n{not json\n" + good + b"\n"), purpose="batch"
    )
    batch = await client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert batch.status == "failed"
    assert batch.errors is not None
    assert batch.errors.data is not None
    assert [(e.code, e.line) for e in batch.errors.data] == [
        ("invalid_json_line", 2),
        ("duplicate_custom_id", 3),
    ]


async def test_files_have_their_own_size_limit_refused_in_the_error_shape(
    sidecars: Sidecars, upstream: FakeOpenAI, sdk: SDK, http: aiohttp.ClientSession
) -> None:
    """jobs.max_file_bytes bounds uploads; request bodies keep theirs (here 1 MB)."""
    jobs = "jobs: {workers: 0, max_file_bytes: 2000000}"
    sidecar = await sidecars.start(policy(upstream, jobs), ENV, max_body=1_000_000)
    client = sdk(sidecar)
    line = orjson.dumps(
        {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": chat("x")}
    )
    big = (line + b"\n") * (1_500_000 // len(line))  # above the body limit, within the file's
    uploaded = await client.files.create(file=("in.jsonl", big), purpose="batch")
    assert uploaded.bytes == len(big)
    with pytest.raises(openai.APIStatusError) as info:
        await client.files.create(file=("in.jsonl", big * 2), purpose="batch")
    assert (info.value.status_code, info.value.code) == (413, "body_too_large")
    assert "jobs.max_file_bytes" in info.value.message
    huge_chat = io.BytesIO(orjson.dumps(chat("x" * 1_500_000)))
    headers = {"content-type": "application/json"}
    async with http.post(f"{base(sidecar)}/chat/completions", data=huge_chat, headers=headers) as r:
        assert r.status == 413
        assert (await r.json())["error"]["code"] == "body_too_large"


async def test_cancelling_a_batch_stops_lines_not_yet_started(
    start: Start, upstream: FakeOpenAI, sdk: SDK
) -> None:
    sidecar = await start()
    upstream.behave("up-m", delay=0.3)
    client = sdk(sidecar)
    lines = [
        {
            "custom_id": f"c{n}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": chat(f"{n}"),
        }
        for n in range(8)
    ]
    uploaded = await client.files.create(
        file=("in.jsonl", b"\n".join(orjson.dumps(line) for line in lines)), purpose="batch"
    )
    batch = await client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    await eventually(lambda: asyncio.sleep(0, upstream.calls("up-m")))  # two lines running
    cancelling = await client.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled")

    async def cancelled() -> openai.types.Batch | None:
        b = await client.batches.retrieve(batch.id)
        return b if b.status == "cancelled" else None

    final = await eventually(cancelled)
    counts = final.request_counts
    assert counts is not None
    assert counts.total == 8
    assert counts.completed == len(upstream.calls("up-m"))
    assert counts.completed + counts.failed == 8
    assert counts.failed >= 4  # two workers: at most a few lines started before the cancel
    assert final.error_file_id is not None
    errors = (await client.files.content(final.error_file_id)).content.splitlines()
    assert {orjson.loads(e)["error"]["code"] for e in errors} == {"batch_cancelled"}


# --- POST /v1/jobs and polling ---------------------------------------------------------------


async def test_a_job_is_accepted_at_once_and_polled_to_its_result(
    start: Start, upstream: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    sidecar = await start()
    upstream.behave("up-m", reply="done later", delay=0.5)
    began = time.monotonic()
    status, job = await submit(
        http,
        sidecar,
        {"request": chat("summarize"), "metadata": {"doc": "a.pdf"}},
        **{"x-sidecar-user": "alice", "authorization": "Bearer app-secret-key-1"},
    )
    assert status == 202
    assert time.monotonic() - began < 0.5  # answered before the upstream could have
    assert job["status"] == "queued"
    assert job["id"].startswith("job_")
    done = await finished(http, sidecar, job["id"])
    assert done["status"] == "succeeded"
    assert done["attempts"] == 1
    assert done["result"]["choices"][0]["message"]["content"] == "done later"
    assert done["metadata"] == {"doc": "a.pdf"}
    assert done["status_code"] == 200
    assert done["response_headers"]["x-sidecar-route"] == "chat"
    timings = done["timings"]
    assert timings["run_seconds"] >= 0.5
    assert timings["queued_seconds"] >= 0
    # The job was the caller's request: accounted to alice, with no credential stored.
    async with http.get(f"http://127.0.0.1:{sidecar.ops_port}/usage?scope=user") as r:
        rows = {row["value"]: row for row in (await r.json())["rows"]}
    assert rows["alice"]["requests"] == 1
    stored = (tmp := sidecar.settings.state_dir / "llm-sidecar-jobs.db").read_bytes()
    assert tmp.exists()
    assert b"app-secret-key-1" not in stored
    async with http.get(f"{base(sidecar)}/jobs?status=succeeded") as r:
        listing = await r.json()
    assert [j["id"] for j in listing["data"]] == [job["id"]]
    assert "result" not in listing["data"][0]


async def test_a_finished_job_is_deleted_after_its_retention(
    start: Start, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runtime, "SWEEP_EVERY", 0.0)  # sweep every second, not every 30
    sidecar = await start(JOBS + "  retention: 500ms\n")
    _, job = await submit(http, sidecar, {"request": chat("short-lived")})
    assert (await finished(http, sidecar, job["id"]))["status"] == "succeeded"

    async def gone() -> bool:
        async with http.get(f"{base(sidecar)}/jobs/{job['id']}") as r:
            return r.status == 404

    await eventually(gone, within=5.0)


async def test_embeddings_run_as_jobs_too(start: Start, http: aiohttp.ClientSession) -> None:
    sidecar = await start()
    status, job = await submit(
        http, sidecar, {"endpoint": "/v1/embeddings", "request": {"model": "embed", "input": "abc"}}
    )
    assert status == 202
    done = await finished(http, sidecar, job["id"])
    assert done["status"] == "succeeded"
    assert done["result"]["data"][0]["embedding"] == [
        3.0,
        1.0,
        0.0,
    ]


async def test_retryable_failures_retry_then_dead_letter(
    start: Start, upstream: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    sidecar = await start()
    upstream.behave("up-broken", status=503)
    _, job = await submit(http, sidecar, {"request": chat("x", "chat-broken")})
    dead = await finished(http, sidecar, job["id"])
    assert dead["status"] == "dead"
    assert dead["attempts"] == 3
    assert dead["status_code"] == 502
    assert dead["error"]["code"] == "upstream_failed"
    assert len(upstream.calls("up-broken")) == 3
    # A failure that passes: one retry, then the answer.
    upstream.behave("up-broken", status=503, fail_times=1)
    _, job = await submit(http, sidecar, {"request": chat("y", "chat-broken")})
    done = await finished(http, sidecar, job["id"])
    assert (done["status"], done["attempts"]) == ("succeeded", 2)


async def test_a_request_the_provider_refuses_fails_without_retries(
    start: Start, upstream: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    sidecar = await start()
    upstream.behave("up-refused", status=400)
    _, job = await submit(http, sidecar, {"request": chat("x", "chat-refused")})
    failed = await finished(http, sidecar, job["id"])
    assert (failed["status"], failed["attempts"], failed["status_code"]) == ("failed", 1, 400)
    assert len(upstream.calls("up-refused")) == 1


async def test_mistakes_are_refused_at_submit(start: Start, http: aiohttp.ClientSession) -> None:
    sidecar = await start()
    for body, status, code in [
        (
            {"request": chat("x"), "callback_url": "http://169.254.169.254/latest"},
            400,
            "webhook_host_denied",
        ),
        (
            {"request": chat("x"), "callback_url": "http://evil.example.net/hook"},
            400,
            "webhook_host_denied",
        ),
        ({"request": chat("x"), "callback_url": "file:///etc/passwd"}, 400, "webhook_host_denied"),
        ({"request": chat("x", "no-such-model")}, 404, "model_not_found"),
        ({"request": {**chat("x"), "stream": True}}, 400, "invalid_job"),
        ({"request": chat("x"), "endpoint": "/v1/messages"}, 400, "invalid_endpoint"),
        ({"request": chat("x"), "deadline": "soon"}, 400, "invalid_deadline"),
    ]:
        got, answer = await submit(http, sidecar, body)
        assert (got, answer["error"]["code"]) == (status, code), body
    async with http.get(f"{base(sidecar)}/jobs") as r:
        assert (await r.json())["data"] == []  # nothing was queued
    ok, _ = await submit(
        http, sidecar, {"request": chat("x"), "callback_url": "https://hooks.example.com/a"}
    )
    assert ok == 202


async def test_without_a_jobs_section_the_api_is_off(
    start: Start, http: aiohttp.ClientSession
) -> None:
    sidecar = await start(jobs="")
    status, answer = await submit(http, sidecar, {"request": chat("x")})
    assert (status, answer["error"]["code"]) == (404, "jobs_disabled")
    assert not (sidecar.settings.state_dir / "llm-sidecar-jobs.db").exists()


async def test_a_job_past_its_deadline_is_not_run(
    start: Start, upstream: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    sidecar = await start()
    _, job = await submit(http, sidecar, {"request": chat("late"), "deadline": time.time() - 1})
    failed = await finished(http, sidecar, job["id"])
    assert (failed["status"], failed["error"]["code"]) == ("failed", "deadline_exceeded")
    assert upstream.calls("up-m") == []


LIMITED = (
    JOBS
    + """
    limits:
      one-at-a-time: {scope: global, max_concurrent: 1, queue: {max_wait: 5s}}
    """
)


async def test_a_job_waits_behind_live_requests_in_a_limit_line(
    start: Start, upstream: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    sidecar = await start(LIMITED)
    upstream.behave("up-m", delay=0.3)

    async def live(text: str) -> int:
        async with http.post(f"{base(sidecar)}/chat/completions", json=chat(text)) as r:
            return r.status

    first = asyncio.create_task(live("live-1"))
    await eventually(lambda: asyncio.sleep(0, upstream.calls("up-m")))  # holds the one slot
    _, job = await submit(http, sidecar, {"request": chat("the-job")})
    lines = sidecar.holder.stores.lines
    await eventually(lambda: asyncio.sleep(0, lines.waiting()))  # the job waits in line
    second = asyncio.create_task(live("live-2"))  # arrives after the job...
    assert await asyncio.gather(first, second) == [200, 200]
    done = await finished(http, sidecar, job["id"])
    assert done["status"] == "succeeded"
    order = [seen.body["messages"][-1]["content"] for seen in upstream.calls("up-m")]
    assert order == ["live-1", "live-2", "the-job"]  # ...and goes first: jobs ask at low


# --- webhooks ---------------------------------------------------------------------------------


class Receiver:
    """An app's webhook endpoint: answers 500 to the first `fail` deliveries."""

    def __init__(self, fail: int) -> None:
        self.fail = fail
        self.seen: list[tuple[dict[str, str], bytes]] = []
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        sock = socket.create_server(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()
        return self

    async def _hook(self, request: web.Request) -> web.Response:
        self.seen.append((dict(request.headers), await request.read()))
        return web.Response(status=500 if len(self.seen) <= self.fail else 204)

    async def stop(self) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


def verified(headers: dict[str, str], body: bytes) -> bool:
    """The receiver's check, written from the jobs guide's description, not the sidecar's code."""
    fields = dict(part.split("=", 1) for part in headers["x-sidecar-signature"].split(","))
    mac = hmac.new(SECRET.encode(), f"{fields['t']}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(mac, fields["v1"]) and abs(time.time() - int(fields["t"])) < 300


async def test_a_signed_webhook_is_retried_until_the_receiver_takes_it(
    start: Start, http: aiohttp.ClientSession
) -> None:
    sidecar = await start()
    receiver = await Receiver(fail=2).start()
    try:
        url = f"http://127.0.0.1:{receiver.port}/hook?token=abc"
        _, job = await submit(http, sidecar, {"request": chat("notify me"), "callback_url": url})
        await eventually(lambda: asyncio.sleep(0, len(receiver.seen) >= 3))
        for headers, body in receiver.seen:
            assert verified(headers, body)
            assert headers["x-sidecar-job-id"] == job["id"]
        event = orjson.loads(receiver.seen[-1][1])
        assert event["type"] == "job.succeeded"
        assert event["data"]["id"] == job["id"]
        assert event["data"]["result"]["choices"][0]["message"]["content"] == "hello from upstream"
        tampered = receiver.seen[-1][1].replace(b"succeeded", b"failed")
        assert not verified(receiver.seen[-1][0], tampered)

        async def delivered() -> dict[str, Any] | None:
            async with http.get(f"{base(sidecar)}/jobs/{job['id']}") as r:
                polled = await r.json()
            return polled if (polled["webhook"] or {}).get("status") == "delivered" else None

        polled = await eventually(delivered)
        assert polled["webhook"] == {"status": "delivered", "attempts": 3, "last_status": 204}
        await asyncio.sleep(0.1)
        assert len(receiver.seen) == 3  # delivered once taken: no more
    finally:
        await receiver.stop()


async def test_a_failed_job_is_notified_too(
    start: Start, upstream: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    sidecar = await start()
    upstream.behave("up-refused", status=400)
    receiver = await Receiver(fail=0).start()
    try:
        url = f"http://127.0.0.1:{receiver.port}/hook"
        _, _job = await submit(
            http, sidecar, {"request": chat("x", "chat-refused"), "callback_url": url}
        )
        await eventually(lambda: asyncio.sleep(0, receiver.seen))
        headers, body = receiver.seen[0]
        assert verified(headers, body)
        event = orjson.loads(body)
        assert event["type"] == "job.failed"
        assert event["data"]["status_code"] == 400
    finally:
        await receiver.stop()


async def test_a_webhook_left_pending_by_a_stopped_process_is_sent_by_the_next(
    start: Start, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    receiver = await Receiver(fail=0).start()
    try:
        # A process settled this job and stopped before its webhook went out.
        queue = await open_queue(JobsConfig(), tmp_path)
        url = f"http://127.0.0.1:{receiver.port}/hook"
        await queue.submit(
            [Job(id="job_orphan", endpoint=CHAT_ENDPOINT, request=chat("x"), callback_url=url)]
        )
        job = await queue.claim("gone", 60)
        assert job is not None
        job.status, job.result, job.webhook = "succeeded", {"ok": True}, {"status": "pending"}
        assert await queue.settle(job)
        await queue.close()
        monkeypatch.setattr(runtime, "STALE_WEBHOOK", 0.0)  # instead of two minutes
        await start()
        await eventually(lambda: asyncio.sleep(0, receiver.seen))
        headers, body = receiver.seen[0]
        assert verified(headers, body)
        assert orjson.loads(body)["data"]["id"] == "job_orphan"
    finally:
        await receiver.stop()


# --- the command line --------------------------------------------------------------------------


async def test_jobs_submit_waits_with_progress_and_writes_results(
    start: Start, tmp_path: Path, upstream: FakeOpenAI
) -> None:
    sidecar = await start()
    upstream.behave("up-m", reply="cli answer")
    requests = tmp_path / "requests.jsonl"
    requests.write_bytes(b"".join(orjson.dumps(chat(f"q{n}")) + b"\n" for n in range(6)))
    out = tmp_path / "out.jsonl"
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "sidecar", "jobs", "--url", f"http://127.0.0.1:{sidecar.port}"),
        *("submit", str(requests), "--wait", "-o", str(out)),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await proc.communicate()
    assert proc.returncode == 0, stderr.decode()
    batch_id = stdout.decode().strip()
    assert batch_id.startswith("batch_")
    assert "6 done, 0 failed / 6" in stderr.decode()
    assert "/s" in stderr.decode()
    results = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert sorted(r["custom_id"] for r in results) == [f"line-{n}" for n in range(1, 7)]
    assert {r["response"]["body"]["choices"][0]["message"]["content"] for r in results} == {
        "cli answer"
    }
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "sidecar", "jobs", "--url", f"http://127.0.0.1:{sidecar.port}"),
        *("status", batch_id),
        stdout=asyncio.subprocess.PIPE,
    )
    stdout, _ = await proc.communicate()
    assert orjson.loads(stdout)["request_counts"] == {"total": 6, "completed": 6, "failed": 0}
    again = tmp_path / "again.jsonl"
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "sidecar", "jobs", "--url", f"http://127.0.0.1:{sidecar.port}"),
        *("results", batch_id, "-o", str(again)),
    )
    assert await proc.wait() == 0
    assert sorted(again.read_bytes().splitlines()) == sorted(out.read_bytes().splitlines())
