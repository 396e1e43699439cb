"""What admission and accounting add to a request, per state backend.

Runs the admit stage and the finish stage (settle, usage rows, rate correction) of the
real pipeline in-process, for a request under one rate limit (requests and tokens per
minute, max_concurrent) and one `reject` budget, and reports p50/p99 of the two together
against the same request on a route with no limits or budgets. In-process on purpose:
the HTTP path is measured by bench/run.py; this isolates the stages the issue budgets
0.3 ms for. Usage: python bench/admission.py [--n 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import textwrap
import time
from pathlib import Path

from sidecar.pipeline.admit import admit
from sidecar.pipeline.context import RequestContext
from sidecar.pipeline.identify import identify
from sidecar.pipeline.route import route
from sidecar.pipeline.run import finish
from sidecar.runtime import Runtime

POLICY = """
providers:
  p: {type: mock}
models:
  m: {provider: p, price: {input: 0.15, output: 0.6}}
routes:
  limited: {targets: [m]}
  free: {targets: [m]}
state: {backend: BACKEND, path: state.db}
limits:
  per-user:
    scope: user
    routes: [limited]
    requests_per_minute: 100000000
    tokens_per_minute: 100000000000
    max_concurrent: 1000
budgets:
  per-team:
    scope: team
    routes: [limited]
    limit_usd: 100000000
    window: day
"""

BODY = {
    "messages": [{"role": "user", "content": "Summarise this paragraph. " * 20}],
    "max_tokens": 200,
}
HEADERS = {"x-sidecar-user": "alice", "x-sidecar-team": "research", "authorization": "Bearer app"}


async def measure(holder: Runtime, model: str, n: int) -> list[float]:
    snapshot = holder.current
    assert snapshot is not None
    samples = []
    for _ in range(n):
        ctx = RequestContext("chat", {**BODY, "model": model}, HEADERS, snapshot, client_body=BODY)
        identify(ctx)
        route(ctx)
        t0 = time.perf_counter()
        await admit(ctx)
        ctx.answered_by = ctx.targets[0].model
        ctx.attempts, ctx.input_tokens, ctx.output_tokens, ctx.cost_usd = 1, 120, 80, 0.0001
        await finish(ctx).done
        samples.append((time.perf_counter() - t0) * 1e3)
    return samples


def write_policy(tmp: Path, backend: str) -> Path:
    folder = tmp / "p"
    folder.mkdir()
    (folder / "p.yaml").write_text(textwrap.dedent(POLICY).replace("BACKEND", backend))
    return folder


async def main(n: int) -> None:
    print(f"admit + finish, {n} requests each, in-process (ms)")
    print(f"{'backend':8} {'route':8} {'p50':>7} {'p99':>7}")
    for backend in ("memory", "sqlite"):
        with tempfile.TemporaryDirectory() as tmp:
            folder = write_policy(Path(tmp), backend)
            holder = Runtime(folder, {}, Path(tmp))
            assert await holder.reload(), holder.policy.last.problems
            for model in ("free", "limited"):
                await measure(holder, model, 500)  # warm up
                s = sorted(await measure(holder, model, n))
                p50, p99 = statistics.median(s), s[int(len(s) * 0.99)]
                print(f"{backend:8} {model:8} {p50:7.3f} {p99:7.3f}")
            await holder.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=20000)
    asyncio.run(main(parser.parse_args().n))
