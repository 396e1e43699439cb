"""What a shadow trial costs the app: its latency with and without a slow shadow candidate.

    .venv/bin/python bench/shadow.py [--requests 3000] [--concurrency 8] [--candidate-ms 1000]

One sidecar (pinned to CPU 0) with two routes to the same primary model (a fake upstream
answering in 20 ms): `plain`, and `shadowed`, whose every request (`sample: 1.0`) is copied
to a candidate that takes `--candidate-ms` to answer (another fake upstream). The client
(this script, CPU 1, with the fakes) keeps `--concurrency` requests in flight, alternating
the two routes request by request, JSON and streamed, so both see the same machine at the
same moments; each latency is measured at the client, from sending to the last byte.
Reports p50/p95/p99 per route and kind, the ratio shadowed/plain, and how many shadow
calls ran, were skipped as busy (`max_concurrent` running) and were still running at the
end; writes bench/results/shadow.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as harness  # bench/run.py: pinned children, ports, readiness

OUT = harness.RESULTS / "shadow.json"
PRIMARY_MS = 20.0
MAX_CONCURRENT = 64

POLICY = """\
providers:
  primary: {{type: openai, base_url: "http://127.0.0.1:{primary}/v1", api_key: bench}}
  candidate: {{type: openai, base_url: "http://127.0.0.1:{candidate}/v1", api_key: bench}}
models:
  big: {{provider: primary, name: bench-model, price: {{input: 3, output: 15}}}}
  small: {{provider: candidate, name: bench-model, price: {{input: 0.15, output: 0.6}}}}
routes:
  plain: {{targets: [big]}}
  shadowed:
    targets: [big]
    shadow: {{candidates: [small], sample: 1.0, max_usd_per_day: 1000,
              max_concurrent: {max_concurrent}, timeout: 60s}}
state: {{backend: memory}}
"""


async def drive(port: int, requests: int, concurrency: int) -> dict[str, list[float]]:
    """Latencies in seconds by `route kind`, alternating routes and kinds."""
    url = f"http://{harness.HOST}:{port}/v1/chat/completions"
    plan = [
        (("plain", "shadowed")[i % 2], ("json", "stream")[(i // 2) % 2]) for i in range(requests)
    ]
    out: dict[str, list[float]] = {
        f"{r} {k}": [] for r in ("plain", "shadowed") for k in ("json", "stream")
    }
    queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
    for item in plan:
        queue.put_nowait(item)

    async def worker(session: aiohttp.ClientSession) -> None:
        while not queue.empty():
            route, kind = queue.get_nowait()
            body = {"model": route, "messages": [{"role": "user", "content": "hello"}]}
            if kind == "stream":
                body["stream"] = True
            began = time.perf_counter()
            async with session.post(url, json=body) as response:
                await response.read()
                assert response.status == 200, response.status
            out[f"{route} {kind}"].append(time.perf_counter() - began)

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return out


def shadow_counts(ops: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://{harness.HOST}:{ops}/stats", timeout=10) as response:
        metrics = json.load(response)["metrics"]

    def total(name: str, **where: str) -> float:
        points = metrics.get(name, {}).get("points", [])
        return sum(
            p["value"] for p in points if all(p["attributes"].get(k) == v for k, v in where.items())
        )

    return {
        "compared": total("sidecar.shadow.comparisons"),
        "skipped_busy": total("sidecar.shadow.skipped", **{"sidecar.reason": "busy"}),
        "running": total("sidecar.shadow.running"),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=3000)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--candidate-ms", type=float, default=1000.0)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-shadow-"))
    children: list[harness.Child] = []
    try:
        ports = {name: harness.free_port() for name in ("primary", "candidate", "proxy", "ops")}
        for name, delay in (("primary", PRIMARY_MS), ("candidate", args.candidate_ms)):
            argv = [str(harness.VENV_PY), str(harness.BENCH / "fake_upstream.py")]
            argv += ["--port", str(ports[name]), "--delay-ms", str(delay)]
            child = harness.Child(name, harness.CLIENT_CPU, argv, tmp)
            children.append(child)
            harness.wait_until(
                lambda n=name: harness.port_open(ports[n]), f"starting {name}", child
            )
        (tmp / "policies").mkdir()
        policy = POLICY.format(
            primary=ports["primary"], candidate=ports["candidate"], max_concurrent=MAX_CONCURRENT
        )
        (tmp / "policies" / "bench.yaml").write_text(policy)
        argv = [str(harness.VENV_PY), "-m", "sidecar", "serve", "--policies", str(tmp / "policies")]
        argv += ["--port", str(ports["proxy"]), "--ops-host", harness.HOST]
        argv += ["--ops-port", str(ports["ops"]), "--state-dir", str(tmp), "--log-level", "warning"]
        sidecar = harness.Child("sidecar", harness.SIDECAR_CPU, argv, tmp)
        children.append(sidecar)
        harness.wait_until(lambda: harness.ready(ports["ops"]), "starting the sidecar", sidecar)
        asyncio.run(drive(ports["proxy"], 200, args.concurrency))  # warm up connections
        before = shadow_counts(ports["ops"])
        cpu = harness.cpu_seconds(sidecar.pid)
        began = time.monotonic()
        latencies = asyncio.run(drive(ports["proxy"], args.requests, args.concurrency))
        seconds = time.monotonic() - began
        cpu = harness.cpu_seconds(sidecar.pid) - cpu
        after = shadow_counts(ports["ops"])
    finally:
        for child in reversed(children):
            child.stop()
    shadows = {k: after[k] - before[k] for k in ("compared", "skipped_busy")}
    shadows["running_at_end"] = after["running"]
    rows = {}
    for name, values in latencies.items():
        rows[name] = {f"p{q}": harness.percentile(values, q) for q in (50, 95, 99)}
        rows[name]["n"] = len(values)
    print(
        f"bench/shadow.py: {args.requests} requests, {args.concurrency} in flight, "
        f"{seconds:.1f} s, sidecar CPU {1000 * cpu / args.requests:.2f} ms/request; primary "
        f"{PRIMARY_MS:g} ms, candidate {args.candidate_ms:g} ms, max_concurrent {MAX_CONCURRENT}"
    )
    print(
        f"shadow calls: {shadows['compared']:.0f} compared, {shadows['skipped_busy']:.0f} "
        f"skipped as busy, {shadows['running_at_end']:.0f} still running at the end"
    )
    print()
    print(f"{'route':<18} {'n':>5} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}")
    for name, row in rows.items():
        print(
            f"{name:<18} {row['n']:>5} {1000 * row['p50']:>8.2f} {1000 * row['p95']:>8.2f} "
            f"{1000 * row['p99']:>8.2f}"
        )
    print()
    ratios = {}
    for kind in ("json", "stream"):
        plain, shadowed = rows[f"plain {kind}"], rows[f"shadowed {kind}"]
        ratios[kind] = {q: shadowed[q] / plain[q] for q in ("p50", "p95", "p99")}
        print(
            f"shadowed / plain, {kind}: "
            + "  ".join(f"{q} {ratios[kind][q]:.3f}" for q in ("p50", "p95", "p99"))
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "requests": args.requests,
                "concurrency": args.concurrency,
                "candidate_ms": args.candidate_ms,
                "primary_ms": PRIMARY_MS,
                "seconds": seconds,
                "sidecar_cpu_ms_per_request": 1000 * cpu / args.requests,
                "shadows": shadows,
                "latency_s": rows,
                "ratio": ratios,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
