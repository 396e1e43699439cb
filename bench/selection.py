"""Model selection, measured: the tier classifier's accuracy on a held-out set, and what the
select stage costs a request, in process.

    .venv/bin/python bench/selection.py [--iterations 20000]

Accuracy: bench/tiers/examples.jsonl (labelled) is embedded with the savings bench's
embedder (bench/fake_llm.py: a deterministic bag of concepts, the same vectors its fake
provider serves) and voted on by the sidecar's own classifier (k=5, margin 0.2, as the
savings row uses) for every line of bench/tiers/held_out.jsonl: tasks asked in words no
example used. An unsure vote gets the route's default tier (large): right for a complex
task, a lost saving for a simple one. A real embedding model would place paraphrases by
meaning rather than shared words; this embedder is the one the savings numbers come from.

Overhead: the select stage alone (`sidecar.pipeline.select.select`) on the savings
workload's requests, through a real policy snapshot: rules only (no classifier), rules with
a sticky conversation (memory state store), and the classifier with its vector cached (a
repeated question) or embedded by one call to a fake provider on loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path[:0] = [str(ROOT), str(BENCH)]

import numpy as np  # noqa: E402
from aiohttp import web  # noqa: E402
from fake_llm import FakeLLM, embed  # noqa: E402
from workload import build  # noqa: E402

from sidecar.pipeline.context import RequestContext  # noqa: E402
from sidecar.pipeline.select import select  # noqa: E402
from sidecar.runtime import Runtime  # noqa: E402
from sidecar.stores.classifiers import Classifier  # noqa: E402

TIERS = BENCH / "tiers"
RANK = {"small": 0, "large": 1}
K, MARGIN = 5, 0.2


def read(name: str) -> list[tuple[str, int]]:
    rows = [json.loads(line) for line in (TIERS / name).read_text().splitlines() if line]
    return [(r["text"], RANK[r["tier"]]) for r in rows]


def accuracy() -> dict[str, Any]:
    examples, held_out = read("examples.jsonl"), read("held_out.jsonl")
    vectors = np.asarray([embed(t) for t, _ in examples], dtype=np.float32)
    labels = np.asarray([r for _, r in examples])
    classifier = Classifier(None, vectors, labels, 2, K, MARGIN, "bench", 0.0)  # type: ignore[arg-type]
    right = unsure = wrong = 0
    unsure_simple = wrong_simple = 0
    for text, truth in held_out:
        rank, _ = classifier.vote(np.asarray(embed(text), dtype=np.float32))
        if rank is None:
            unsure += 1
            unsure_simple += truth == 0
        elif rank == truth:
            right += 1
        else:
            wrong += 1
            wrong_simple += truth == 0
    n = len(held_out)
    return {
        "examples": len(examples),
        "held_out": n,
        "right": right,
        "unsure": unsure,
        "wrong": wrong,
        "accuracy": right / n,
        "with_default": (right + unsure - unsure_simple) / n,
        "complex_sent_small": wrong - wrong_simple,
    }


POLICY = """\
providers:
  fake: {{type: openai, base_url: "http://127.0.0.1:{port}/v1", api_key: k}}
models:
  mini: {{provider: fake, name: gpt-4.1-mini}}
  sonnet: {{provider: fake, name: claude-sonnet-4-5}}
  embed: {{provider: fake, name: text-embedding-3-small}}
routes:
  rules:
    select:
      tiers: {{small: {{targets: [mini]}}, large: {{targets: [sonnet]}}}}
      default: small
      rules:
        - {{tier: large, min_input_tokens: 20000}}
        - {{tier: large, images: true}}
        - {{tier: large, keywords: [step by step, prove, refactor]}}
  sticky:
    select:
      tiers: {{small: {{targets: [mini]}}, large: {{targets: [sonnet]}}}}
      default: small
      rules: [{{tier: large, keywords: [step by step, prove, refactor]}}]
      sticky: 30m
  classified:
    select:
      tiers: {{small: {{targets: [mini]}}, large: {{targets: [sonnet]}}}}
      classifier: {{examples: examples.jsonl, model: embed, k: {k}, margin: {margin}}}
state: {{backend: memory}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def overhead(iterations: int) -> dict[str, float]:
    """Microseconds per call of the select stage, by configuration."""
    port = free_port()
    runner = web.AppRunner(FakeLLM(17).app())
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    bodies = [dict(r.body, model="") for r in build(17, 400).requests if r.kind != "batch"]
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "policies"
        folder.mkdir()
        (folder / "bench.yaml").write_text(POLICY.format(port=port, k=K, margin=MARGIN))
        (folder / "examples.jsonl").write_text((TIERS / "examples.jsonl").read_text())
        runtime = Runtime(folder, {}, Path(tmp))
        try:
            assert await runtime.reload(), runtime.status()
            snapshot = runtime.current
            assert snapshot is not None

            async def run(route: str, n: int, fresh: bool = False) -> float:
                target = snapshot.policy.routes[route]
                contexts = []
                for i in range(n):
                    body = bodies[i % len(bodies)]
                    if fresh:  # a question not asked before: its vector is not cached
                        messages = [*body["messages"][:-1], {"role": "user", "content": f"q{i}"}]
                        body = {**body, "messages": messages}
                    ctx = RequestContext("chat", body, {}, snapshot)
                    ctx.route = target
                    contexts.append(ctx)
                started = time.perf_counter()
                for ctx in contexts:
                    await select(ctx)
                return (time.perf_counter() - started) / n * 1e6

            for route in ("rules", "sticky"):
                await run(route, iterations // 4)  # warm up
                out[route] = min([await run(route, iterations) for _ in range(3)])
            await run("classified", len(bodies))  # every workload question embedded once
            out["classifier, vector cached"] = min(
                [await run("classified", iterations // 4) for _ in range(3)]
            )
            out["classifier, one embedding call"] = await run("classified", 300, fresh=True)
            out["no select (routes without it)"] = 0.0
        finally:
            await runtime.close()
            await runner.cleanup()
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--iterations", type=int, default=20000)
    args = p.parse_args()
    result = accuracy()
    print(
        f"classifier: {result['examples']} examples, {result['held_out']} held out "
        f"(unseen wordings), k={K}, margin={MARGIN}"
    )
    print(
        f"  right {result['right']}, unsure {result['unsure']} (→ default tier large), "
        f"wrong {result['wrong']}: accuracy {100 * result['accuracy']:.1f}%, "
        f"tiers right with the default {100 * result['with_default']:.1f}%, "
        f"complex tasks sent to small {result['complex_sent_small']}"
    )
    print("select stage, µs per request (in process, one core):")
    for name, us in asyncio.run(overhead(args.iterations)).items():
        if us:
            print(f"  {name:<34} {us:>9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
