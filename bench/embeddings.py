"""Embeddings micro-batches: upstream calls saved and latency added.

    python bench/embeddings.py [--requests N] [--concurrency C] [--windows 2ms,5ms,10ms]

`C` clients each send `/v1/embeddings` requests of one short text, one after another, to
a sidecar (CPU 0) in front of a fake embeddings provider (CPU 1, with the clients) that
answers each call after 8 ms plus 0.02 ms per input, like a hosted model seen from nearby,
and counts the calls and inputs it got. The same workload runs without micro-batching and
with each window; the table gives the provider's calls, how many the windows saved, and
the latency the clients saw (added: against the run without batching). Every answer is
checked: one vector, the caller's own (the fake's vector encodes the text's number).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
VENV_PY = ROOT / ".venv" / "bin" / "python"
try:
    import aiohttp
    import yaml
    from aiohttp import web
except ImportError:  # started with a Python that lacks the project's packages
    if VENV_PY.exists() and Path(sys.executable) != VENV_PY:
        os.execv(VENV_PY, [str(VENV_PY), *sys.argv])
    raise
sys.path[:0] = [str(ROOT), str(BENCH)]

import run as harness  # noqa: E402  bench/run.py: pinned children, ports, readiness

OUT = harness.RESULTS / "embeddings.json"
BASE_MS, PER_INPUT_MS = 8.0, 0.02


# -- the fake provider (a child process) ------------------------------------------------


def serve(port: int) -> None:
    counts = {"calls": 0, "inputs": 0}

    async def embeddings(request: web.Request) -> web.Response:
        body = await request.json()
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        counts["calls"] += 1
        counts["inputs"] += len(inputs)
        await asyncio.sleep((BASE_MS + PER_INPUT_MS * len(inputs)) / 1000)
        data = [
            {"object": "embedding", "index": i, "embedding": [float(text.split()[-1]), 1.0]}
            for i, text in enumerate(inputs)
        ]
        usage = {"prompt_tokens": 3 * len(inputs), "total_tokens": 3 * len(inputs)}
        return web.json_response({"object": "list", "data": data, "model": "e", "usage": usage})

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(counts)

    async def reset(request: web.Request) -> web.Response:
        counts.update(calls=0, inputs=0)
        return web.json_response(counts)

    app = web.Application()
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_get("/stats", stats)
    app.router.add_post("/reset", reset)
    web.run_app(app, host=harness.HOST, port=port, print=None)


def _get(url: str, method: str = "GET") -> Any:
    with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=10) as r:
        return json.load(r)


# -- one configuration ----------------------------------------------------------------


def policy(upstream: int, window: str | None) -> dict[str, Any]:
    model: dict[str, Any] = {"provider": "up", "name": "e"}
    if window is not None:
        model["embeddings"] = {"batch_window": window, "max_inputs": 256}
    return {
        "providers": {
            "up": {
                "type": "openai",
                "base_url": f"http://{harness.HOST}:{upstream}/v1",
                "api_key": "bench",
            }
        },
        "models": {"e": model},
        "routes": {"vectors": {"targets": ["e"]}},
        "state": {"backend": "memory"},
    }


async def clients(port: int, requests: int, concurrency: int) -> list[float]:
    latencies: list[float] = []
    counter = iter(range(requests))
    url = f"http://{harness.HOST}:{port}/v1/embeddings"

    async def client(session: aiohttp.ClientSession) -> None:
        for n in counter:
            body = {"model": "vectors", "input": f"text number {n}"}
            started = time.perf_counter()
            async with session.post(url, json=body) as r:
                answer = await r.json()
            latencies.append(time.perf_counter() - started)
            (item,) = answer["data"]
            if r.status != 200 or item["embedding"][0] != float(n):
                raise RuntimeError(f"request {n} got someone else's answer: {answer}")

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
    return latencies


def run_one(
    window: str | None, upstream: int, requests: int, concurrency: int, tmp: Path, cpu: str
) -> dict[str, Any]:
    name = f"window-{window or 'off'}"
    folder = tmp / name
    (folder / "policies").mkdir(parents=True)
    text = yaml.safe_dump(policy(upstream, window))
    (folder / "policies" / "bench.yaml").write_text(text)
    port, ops = harness.free_port(), harness.free_port()
    argv = [str(VENV_PY), "-m", "sidecar", "serve", "--policies", str(folder / "policies")]
    argv += ["--port", str(port), "--ops-host", harness.HOST, "--ops-port", str(ops)]
    argv += ["--state-dir", str(folder), "--log-level", "warning"]
    sidecar = harness.Child("sidecar", cpu, argv, folder)
    try:
        harness.wait_until(lambda: harness.ready(ops), f"starting the sidecar ({name})", sidecar)
        asyncio.run(clients(port, 50, concurrency))  # warm up
        _get(f"http://{harness.HOST}:{upstream}/reset", "POST")
        started = time.perf_counter()
        latencies = asyncio.run(clients(port, requests, concurrency))
        seconds = time.perf_counter() - started
        seen = _get(f"http://{harness.HOST}:{upstream}/stats")
    finally:
        sidecar.stop()
    return {
        "window": window or "off",
        "requests": requests,
        "upstream_calls": seen["calls"],
        "inputs": seen["inputs"],
        "per_call": seen["inputs"] / max(1, seen["calls"]),
        "rps": requests / seconds,
        "p50_ms": harness.percentile(latencies, 50) * 1000,
        "p95_ms": harness.percentile(latencies, 95) * 1000,
    }


def table(rows: list[dict[str, Any]]) -> str:
    off = rows[0]
    head = (
        f"{'window':<8} {'upstream calls':>15} {'saved':>7} {'inputs/call':>12} {'req/s':>8} "
        f"{'p50 ms':>8} {'p95 ms':>8} {'+p50 ms':>8} {'+p95 ms':>8}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        saved = 1 - r["upstream_calls"] / off["upstream_calls"]
        lines.append(
            f"{r['window']:<8} {r['upstream_calls']:>15} {100 * saved:>6.1f}% "
            f"{r['per_call']:>12.1f} {r['rps']:>8.0f} {r['p50_ms']:>8.1f} {r['p95_ms']:>8.1f} "
            f"{r['p50_ms'] - off['p50_ms']:>+8.1f} {r['p95_ms'] - off['p95_ms']:>+8.1f}"
        )
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--requests", type=int, default=3000)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--windows", default="2ms,5ms,10ms")
    p.add_argument("--upstream", type=int, help=argparse.SUPPRESS)  # the child's own mode
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args()
    if args.upstream:
        serve(args.upstream)
        return 0
    two = (os.cpu_count() or 1) >= 2
    sidecar_cpu, client_cpu = ("0", "1") if two else ("0", "0")
    if two:
        os.sched_setaffinity(0, {1})
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-embeddings-") as tmp_name:
        tmp = Path(tmp_name)
        port = harness.free_port()
        argv = [str(VENV_PY), str(Path(__file__).resolve()), "--upstream", str(port)]
        fake = harness.Child("fake-embeddings", client_cpu, argv, tmp)
        try:
            harness.wait_until(lambda: harness.port_open(port), "starting the fake", fake)
            for window in [None, *args.windows.split(",")]:
                rows.append(
                    run_one(window, port, args.requests, args.concurrency, tmp, sidecar_cpu)
                )
                print(f"ran window {window or 'off'}", flush=True)
        finally:
            fake.stop()
    print()
    print(table(rows))
    print(
        f"\n{args.requests} requests of one input from {args.concurrency} clients; the fake "
        f"answers in {BASE_MS:g} ms + {PER_INPUT_MS:g} ms per input."
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
