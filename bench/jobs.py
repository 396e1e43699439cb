"""Throughput of the job queue: jobs/s enqueued and completed, on SQLite and Redis.

    .venv/bin/python bench/jobs.py [--jobs 1000] [--lines 5000] [--workers 8] [--concurrency 32]

The sidecar runs as `python -m sidecar serve` pinned to CPU 0 (this script and
redis-server on CPU 1), with an instant upstream: the `mock` provider, so every job still
goes through the whole pipeline (route, admission, cache lookup, dispatch, accounting) but
no network call. Per backend:

1. enqueue: `POST /v1/jobs` one job per request, `--concurrency` in flight, no workers
   running (jobs/s accepted, p50/p99 of the 202).
2. complete: the policy is reloaded with `--workers` workers, which drain those jobs
   (jobs/s from the first job started to the last finished, from the jobs' own timings).
3. batch: one OpenAI batch of `--lines` lines, uploaded and created (lines/s enqueued),
   then run to `completed` by the same workers (lines/s, wall clock, polled every 20 ms).

Prints a table; writes bench/results/jobs.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson

BENCH = Path(__file__).resolve().parent
OUT = BENCH / "results" / "jobs.json"
PYTHON = BENCH.parent / ".venv" / "bin" / "python"

POLICY = """\
providers:
  p: {{type: mock, mock: {{reply: done}}}}
models:
  m: {{provider: p}}
routes:
  chat: {{targets: [m]}}
jobs: {{{backend}, workers: {workers}, poll_interval: 50ms}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pin(cpu: str) -> list[str]:
    return (
        ["taskset", "-c", cpu]
        if shutil.which("taskset") and os.cpu_count() and os.cpu_count() > 1
        else []
    )  # type: ignore[operator]


def body(n: int) -> dict[str, Any]:
    return {"model": "chat", "messages": [{"role": "user", "content": f"summarise document {n}"}]}


async def wait_ready(
    session: aiohttp.ClientSession, ops: int, proc: asyncio.subprocess.Process
) -> None:
    for _ in range(300):
        if proc.returncode is not None:
            raise RuntimeError("the sidecar exited")
        try:
            async with session.get(f"http://127.0.0.1:{ops}/readyz") as r:
                if r.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.05)
    raise TimeoutError("the sidecar did not become ready")


async def enqueue(
    session: aiohttp.ClientSession, base: str, n: int, concurrency: int
) -> dict[str, float]:
    latencies: list[float] = []
    counter = iter(range(n))

    async def client() -> None:
        for i in counter:
            t0 = time.perf_counter()
            async with session.post(f"{base}/jobs", json={"request": body(i)}) as r:
                assert r.status == 202, await r.text()
                await r.read()
            latencies.append((time.perf_counter() - t0) * 1e3)

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    elapsed = time.perf_counter() - t0
    latencies.sort()
    return {
        "jobs_per_s": n / elapsed,
        "p50_ms": statistics.median(latencies),
        "p99_ms": latencies[int(len(latencies) * 0.99)],
    }


async def drained(session: aiohttp.ClientSession, base: str, n: int) -> dict[str, float]:
    while True:
        async with session.get(f"{base}/jobs?status=succeeded&limit={n}") as r:
            done = (await r.json())["data"]
        if len(done) >= n:
            break
        await asyncio.sleep(0.25)
    started = min(j["timings"]["started_at"] for j in done)
    finished = max(j["timings"]["finished_at"] for j in done)
    runs = sorted(j["timings"]["run_seconds"] * 1e3 for j in done)
    return {"jobs_per_s": n / (finished - started), "run_p50_ms": statistics.median(runs)}


async def batch(session: aiohttp.ClientSession, base: str, lines: int) -> dict[str, float]:
    content = b"".join(
        orjson.dumps(
            {"custom_id": f"l{i}", "method": "POST", "url": "/v1/chat/completions", "body": body(i)}
        )
        + b"\n"
        for i in range(lines)
    )
    t0 = time.perf_counter()
    form = aiohttp.FormData()
    form.add_field("purpose", "batch")
    form.add_field("file", content, filename="in.jsonl")
    async with session.post(f"{base}/files", data=form) as r:
        file_id = (await r.json())["id"]
    async with session.post(
        f"{base}/batches", json={"input_file_id": file_id, "endpoint": "/v1/chat/completions"}
    ) as r:
        batch_id = (await r.json())["id"]
    created = time.perf_counter()
    while True:
        async with session.get(f"{base}/batches/{batch_id}") as r:
            state = await r.json()
        if state["status"] == "completed":
            break
        await asyncio.sleep(0.02)
    done = time.perf_counter()
    assert state["request_counts"]["completed"] == lines, state["request_counts"]
    return {
        "enqueue_lines_per_s": lines / (created - t0),
        "complete_lines_per_s": lines / (done - created),
    }


async def run_backend(
    name: str, backend: str, args: argparse.Namespace, tmp: Path
) -> dict[str, Any]:
    folder = tmp / name / "policies"
    folder.mkdir(parents=True)
    policy = folder / "p.yaml"
    policy.write_text(POLICY.format(backend=backend, workers=0))
    port, ops = free_port(), free_port()
    argv = [
        *pin("0"),
        str(PYTHON),
        *("-m", "sidecar", "serve", "--policies", str(folder), "--state-dir", str(folder.parent)),
        *("--port", str(port), "--ops-host", "127.0.0.1", "--ops-port", str(ops)),
        *("--log-level", "warning", "--drain-timeout", "2"),
    ]
    proc = await asyncio.create_subprocess_exec(*argv, cwd=BENCH.parent)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        connector = aiohttp.TCPConnector(limit=args.concurrency)
        async with aiohttp.ClientSession(connector=connector) as session:
            await wait_ready(session, ops, proc)
            await enqueue(session, base, 100, args.concurrency)  # warm up (they run later)
            result: dict[str, Any] = {
                "enqueue": await enqueue(session, base, args.jobs, args.concurrency)
            }
            policy.write_text(POLICY.format(backend=backend, workers=args.workers))
            result["complete"] = await drained(session, base, args.jobs + 100)
            result["batch"] = await batch(session, base, args.lines)
            return result
    finally:
        proc.terminate()
        await proc.wait()


async def measure(args: argparse.Namespace, tmp: Path, redis_url: str) -> dict[str, Any]:
    results: dict[str, Any] = {"args": vars(args), "cpus": os.cpu_count()}
    results["sqlite"] = await run_backend("sqlite", "backend: sqlite", args, tmp)
    redis = f'backend: redis, url: "{redis_url}"'
    results["redis"] = await run_backend("redis", redis, args, tmp)
    return results


def main(args: argparse.Namespace) -> None:
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {1})
    with tempfile.TemporaryDirectory() as tmp:
        redis_port = free_port()
        redis = subprocess.Popen(
            [
                *(*pin("1"), "redis-server", "--port", str(redis_port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--dir", tmp),
            ],
            stdout=subprocess.DEVNULL,
        )
        try:
            time.sleep(0.3)
            url = f"redis://127.0.0.1:{redis_port}/0"
            results = asyncio.run(measure(args, Path(tmp), url))
        finally:
            redis.kill()
            redis.wait()
    print(f"{args.jobs} single jobs, a batch of {args.lines} lines, {args.workers} workers, mock")
    print(
        f"{'backend':8} {'enqueue/s':>10} {'p50 ms':>7} {'p99 ms':>7} {'complete/s':>11} "
        f"{'batch in/s':>11} {'batch done/s':>13}"
    )
    for name in ("sqlite", "redis"):
        r = results[name]
        print(
            f"{name:8} {r['enqueue']['jobs_per_s']:10.0f} {r['enqueue']['p50_ms']:7.2f} "
            f"{r['enqueue']['p99_ms']:7.2f} {r['complete']['jobs_per_s']:11.0f} "
            f"{r['batch']['enqueue_lines_per_s']:11.0f} {r['batch']['complete_lines_per_s']:13.0f}"
        )
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=900, help="single jobs (at most 900)")
    parser.add_argument("--lines", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=32)
    parsed = parser.parse_args()
    parsed.jobs = min(parsed.jobs, 900)  # the list API returns at most 1000 (warm-up included)
    main(parsed)
