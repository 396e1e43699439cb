"""Savings you can prove: replay one seeded workload straight at the large model and through
the sidecar with each lever, and compare what the provider billed, the answers' quality,
the latency, and the sidecar's own ledger of what each lever saved.

    python bench/savings.py [--quick] [--requests N] [--seed S] [--only ROW,ROW] [--out FILE]

The workload (bench/workload.py, bench/world.py) is a support chat application: ~2,000
requests sharing a ~1,500-token system prompt, multi-turn chats with tools, one-shot API
calls with JSON schemas, and background batches. The fake providers (bench/fake_llm.py, a
child process) bill every call at list prices, so "spend" is measured on the provider's
side. A row is a policy overlay on the base policy: adding a lever to the table is one
`Row(...)` line in ROWS (bench/README.md).

The check: the ledger's saving (its baseline minus what the sidecar paid, split by lever)
must equal the measured saving (the baseline run's bill minus this run's bill) within 1%
(`check`). The script exits 1 when a row fails it, or the baseline is not all right.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reexec import ROOT, VENV_PY, on_venv

on_venv("aiohttp", "yaml")
BENCH = ROOT / "bench"
sys.path[:0] = [str(ROOT), str(BENCH)]

import run as harness  # noqa: E402  bench/run.py: pinned children, ports, readiness
import yaml  # noqa: E402
from fake_llm import MODELS  # noqa: E402
from replay import LARGE, Replay  # noqa: E402
from workload import Workload, build  # noqa: E402
from world import accepted  # noqa: E402

OUT = harness.RESULTS / "savings.json"
TOLERANCE = 0.01  # the ledger must match the measured saving within 1% (see `check`)


@dataclass(frozen=True)
class Row:
    """A configuration: a name and what it changes in the base policy (merged in)."""

    name: str
    overlay: dict[str, Any]
    in_all: bool = True  # part of "all together"
    files: dict[str, str] = field(default_factory=dict)  # more files in the policy folder


DROP = "<drop>"  # an overlay value that removes the key from the base policy


def _selection() -> Row:
    """Issue 18: the classifier picks small or large before the call (examples from
    bench/tiers, written by tier_examples.py; unsure → large), and the small tier's answers
    are checked (empty, cut off, refusal or hedge, schema) before the app sees them."""
    tiers = {"small": {"targets": ["mini"]}, "large": {"targets": ["sonnet"]}}
    classifier = {"examples": "tiers.jsonl", "model": "embed", "k": 5, "margin": 0.2}
    route = {"targets": DROP, "select": {"tiers": tiers, "classifier": classifier}}
    route["cascade"] = {}
    examples = (BENCH / "tiers" / "examples.jsonl").read_text()
    return Row(
        "selection: tiers + cascade",
        {"routes": {"assistant": route}},
        files={"tiers.jsonl": examples},
    )


def _cache(mode: dict[str, Any]) -> dict[str, Any]:
    entry = {"scope": "global", "ttl": "1h", **mode}
    return {"cache": {"answers": entry}, "routes": {"assistant": {"cache": "answers"}}}


SHADOW = {"candidates": ["mini"], "sample": 0.1, "max_usd_per_day": 100}

ROWS = (
    Row("sidecar without levers", {}, in_all=False),
    # The documented defaults (issue 23): requests with tools and any temperature are
    # cacheable; answers that call a tool are not stored.
    Row("exact cache", _cache({"mode": "exact"}), in_all=False),  # semantic tries it first
    # The defaults before issue 23, one at a time: never with tools; temperature 0 only.
    Row("exact cache, tools: false", _cache({"mode": "exact", "tools": False}), in_all=False),
    Row(
        "exact, temperature 0 only",
        _cache({"mode": "exact", "any_temperature": False}),
        in_all=False,
    ),
    # Issue 24: guards and context by default; "no guards" shows what the guards keep out.
    Row("semantic cache", _cache({"mode": "semantic", "semantic": {"model": "embed"}})),
    Row(
        "semantic cache, no guards",
        _cache({"mode": "semantic", "semantic": {"model": "embed", "guards": []}}),
        in_all=False,
    ),
    # Static selection: everything to the small model. Not in "all together": it fails
    # the quality bar (issue 18's verified cascades replace it).
    Row("small model for all", {"routes": {"assistant": {"targets": ["mini"]}}}, False),
    # Batch lines through the provider's Message Batches API, grouped per model (issue 20).
    Row(
        "provider batches",
        {
            "routes": {"assistant": {"batch": {"mode": "provider", "max_wait": "200ms"}}},
            "jobs": {"batch_poll": "100ms"},
        },
    ),
    # Prompt economy (issue 19). Breakpoints on Anthropic requests, the sidecar's default:
    # the base policy turns it off so that the other rows show their own lever alone.
    Row("prompt cache", {"routes": {"assistant": {"prompt_cache": "auto"}}}),
    # OpenAI caches by itself; a prompt_cache_key per conversation keeps its turns on one
    # machine (fake_llm.py). Beside "small model for all", which sends none.
    Row(
        "small model, prompt_cache_key",
        {
            "providers": {"openai": {"prompt_cache_key": True}},
            "routes": {"assistant": {"targets": ["mini"], "prompt_cache": "auto"}},
        },
        in_all=False,
    ),
    Row("trim to 2,500 tokens", {"routes": {"assistant": {"prompt": {"max_input_tokens": 2500}}}}),
    Row(
        "normalise whitespace",
        {"routes": {"assistant": {"prompt": {"normalize": ["whitespace", "duplicate_system"]}}}},
    ),
    _selection(),
    # The cascade alone: everything starts on the small tier, and only what its checks
    # catch (hedges, a total that breaks the schema) is escalated. Not in "all together".
    Row(
        "cascade alone (small first)",
        {
            "routes": {
                "assistant": {
                    "targets": ["mini", "sonnet"],
                    "cascade": {},
                }
            }
        },
        in_all=False,
    ),
    # A shadow trial of the small model on a tenth of the traffic: it costs (the `shadow`
    # lever, negative) and saves nothing; the app's answers are the large model's.
    Row("shadow trial of mini", {"routes": {"assistant": {"shadow": SHADOW}}}),
)


def merged(*overlays: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for overlay in overlays:
        for key, value in overlay.items():
            if value == DROP and key in out:
                del out[key]
            elif isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = merged(out[key], value)
            else:
                out[key] = value
    return out


ALL = Row(
    "all together",
    merged(*(r.overlay for r in ROWS if r.in_all)),
    files={k: v for r in ROWS if r.in_all for k, v in r.files.items()},
)


def base_policy(fake_port: int) -> dict[str, Any]:
    def price(name: str) -> dict[str, float]:
        p = MODELS[name]
        return {
            "input": p.input,
            "output": p.output,
            "cached_input": p.cached_input,
            "cache_write": p.cache_write,
            "batch": p.batch,
        }

    fake = f"http://127.0.0.1:{fake_port}"
    return {
        "providers": {
            "openai": {"type": "openai", "base_url": f"{fake}/v1", "api_key": "bench"},
            "anthropic": {"type": "anthropic", "base_url": fake, "api_key": "bench"},
        },
        "models": {
            name: {"provider": provider, "name": upstream, "price": price(upstream)}
            for name, provider, upstream in (
                ("sonnet", "anthropic", LARGE),
                ("haiku", "anthropic", "claude-haiku-4-5"),
                ("mini", "openai", "gpt-4.1-mini"),
                ("embed", "openai", "text-embedding-3-small"),
            )
        },
        # The baseline defaults to the dearest target; said here because rows change targets.
        # Prompt caching is on by default; off here, so a row shows only its own lever.
        "routes": {
            "assistant": {"targets": ["sonnet"], "baseline": "sonnet", "prompt_cache": "off"}
        },
        "jobs": {"workers": 8, "poll_interval": "50ms"},
        "state": {"backend": "memory"},
    }


@dataclass
class Result:
    name: str
    requests: int
    spend: float  # the provider's bill, USD
    bill: dict[str, Any]
    quality: float
    latencies: list[float]
    errors: int
    hits: int = 0
    ledger: dict[str, Any] = field(default_factory=dict)  # /usage, global, total window
    sidecar_cpu: float = 0.0  # seconds per request
    shadow: str = ""  # `llm-sidecar shadow`'s report, on a row with a shadow trial

    @property
    def p50(self) -> float:
        return _pct(self.latencies, 50)

    @property
    def p95(self) -> float:
        return _pct(self.latencies, 95)


def _pct(values: list[float], p: float) -> float:
    return harness.percentile(values, p) if values else float("nan")


def _get(url: str, method: str = "GET") -> Any:
    request = urllib.request.Request(url, method=method)
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def score(name: str, workload: Workload, replay: Replay, bill: dict[str, Any]) -> Result:
    outcomes = replay.outcomes
    good = sum(accepted(r.expected, outcomes[r.index].answer, r.schema) for r in workload.requests)
    interactive = [outcomes[r.index].seconds for r in workload.requests if r.kind != "batch"]
    return Result(
        name,
        len(workload.requests),
        sum(m["usd"] for m in bill.values()),
        bill,
        good / len(workload.requests),
        [s for s in interactive if s is not None],
        sum(1 for o in outcomes.values() if o.error),
        sum(1 for o in outcomes.values() if (o.cache or "").endswith("hit")),
    )


def run_direct(workload: Workload, fake: str, concurrency: int) -> Result:
    _get(f"{fake}/reset", "POST")
    replay = Replay(workload, concurrency)
    asyncio.run(replay.direct(fake))
    return score("baseline: straight to the large model", workload, replay, _get(f"{fake}/bill"))


def run_sidecar(
    row: Row, workload: Workload, fake_port: int, concurrency: int, tmp: Path, cpu: str
) -> Result:
    fake = f"http://127.0.0.1:{fake_port}"
    _get(f"{fake}/reset", "POST")
    folder = tmp / row.name.replace(" ", "-").replace(",", "")
    (folder / "policies").mkdir(parents=True)
    policy = merged(base_policy(fake_port), row.overlay)
    (folder / "policies" / "bench.yaml").write_text(yaml.safe_dump(policy, sort_keys=False))
    for name, text in row.files.items():
        (folder / "policies" / name).write_text(text)
    port, ops = harness.free_port(), harness.free_port()
    argv = [str(VENV_PY), "-m", "sidecar", "serve", "--policies", str(folder / "policies")]
    argv += ["--port", str(port), "--ops-host", harness.HOST, "--ops-port", str(ops)]
    argv += ["--state-dir", str(folder), "--log-level", "warning"]
    sidecar = harness.Child("sidecar", cpu, argv, folder)
    try:
        harness.wait_until(
            lambda: harness.ready(ops), f"starting the sidecar ({row.name})", sidecar
        )
        replay = Replay(workload, concurrency)
        cpu_before = harness.cpu_seconds(sidecar.pid)
        asyncio.run(replay.sidecar(port))
        cpu = harness.cpu_seconds(sidecar.pid) - cpu_before
        ledger: dict[str, Any] = {}
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:  # accounting ends just after each answer
            rows = _get(f"http://{harness.HOST}:{ops}/usage?scope=global&window=total")["rows"]
            ledger = rows[0] if rows else {}
            if ledger.get("requests", 0) >= len(workload.requests) and not _shadowing(ops):
                break  # every answer accounted, and every shadow call (they come after)
            time.sleep(0.1)
        result = score(row.name, workload, replay, _get(f"{fake}/bill"))
        result.ledger, result.sidecar_cpu = ledger, cpu / len(workload.requests)
        if "shadow" in json.dumps(row.overlay):
            result.shadow = _shadow_report(ops)
        return result
    finally:
        sidecar.stop()


def _shadowing(ops: int) -> bool:
    """Shadow calls still running (a trial's calls follow their answers)."""
    metrics = _get(f"http://{harness.HOST}:{ops}/stats")["metrics"]
    return any(p["value"] for p in metrics.get("sidecar.shadow.running", {}).get("points", []))


def _shadow_report(ops: int) -> str:
    """What `llm-sidecar shadow` shows of the row's trial: the candidate judged on the bench's
    traffic (its agreement is the fake small model's, not a real one's)."""
    argv = [str(VENV_PY), "-m", "sidecar", "shadow", "--ops", f"http://{harness.HOST}:{ops}"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True).stdout


def check(result: Result, baseline: Result) -> tuple[bool, float]:
    """Does the ledger's saving match the measured one? Within 1% of the measured saving,
    or, when that is near zero (no lever saved anything), 0.1% of the baseline's spend.
    Returns (ok, the difference as a share of the measured saving or the baseline)."""
    measured = baseline.spend - result.spend
    claimed = result.ledger.get("saved_usd", 0.0)
    scale = max(abs(measured), 0.1 * baseline.spend)
    off = abs(claimed - measured) / scale
    return off <= TOLERANCE, off


def table(baseline: Result, results: list[Result]) -> str:
    head = (
        f"{'configuration':<38} {'spend USD':>10} {'saving':>7} {'quality':>8} "
        f"{'+p50 ms':>8} {'+p95 ms':>8} {'hits':>5}  ledger: saved USD by lever · check"
    )
    lines = [head, "-" * len(head)]
    lines.append(
        f"{baseline.name:<38} {baseline.spend:>10.4f} {'-':>7} {100 * baseline.quality:>7.1f}% "
        f"{baseline.p50 * 1000:>7.1f}= {baseline.p95 * 1000:>7.1f}= {'-':>5}"
    )
    for r in results:
        saving = 1 - r.spend / baseline.spend
        ok, off = check(r, baseline)
        levers = {k: v for k, v in (r.ledger.get("saved_by_lever") or {}).items() if v}
        by = " ".join(f"{k} {v:+.4f}" for k, v in levers.items()) or "none"
        verdict = f"{'ok' if ok else 'MISMATCH'} ({100 * off:.2f}%)"
        lines.append(
            f"{r.name:<38} {r.spend:>10.4f} {100 * saving:>6.1f}% {100 * r.quality:>7.1f}% "
            f"{(r.p50 - baseline.p50) * 1000:>+8.1f} {(r.p95 - baseline.p95) * 1000:>+8.1f} "
            f"{r.hits:>5}  {by} = {r.ledger.get('saved_usd', 0.0):+.4f} · {verdict}"
        )
    lines.append("")
    lines.append(
        "spend: the fake providers' bill at list prices. saving: against the baseline. "
        "quality: answers the oracle accepts. +p50/+p95: added latency of interactive "
        "requests (the baseline's own in its row, marked =). check: the ledger's saving "
        "against the measured one (baseline bill - this bill)."
    )
    return "\n".join(lines)


def accounting(baseline: Result, results: list[Result]) -> str:
    """Each side of the ledger against the provider's bill."""
    lines = [
        "",
        f"{'':<38} {'sidecar cost':>12} {'its bill':>10} {'ledger baseline':>16} "
        f"{'direct bill':>12} {'sidecar CPU/request':>20}",
    ]
    for r in results:
        cost, base = r.ledger.get("cost_usd", 0.0), r.ledger.get("baseline_usd", 0.0)
        lines.append(
            f"{r.name:<38} {cost:>12.4f} {r.spend:>10.4f} {base:>16.4f} {baseline.spend:>12.4f} "
            f"{r.sidecar_cpu * 1000:>17.2f} ms"
        )
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--quick", action="store_true", help="300 requests: a one-minute smoke run")
    p.add_argument("--requests", type=int, help="workload size (default 2000; --quick 300)")
    p.add_argument("--seed", type=int, default=17)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--only", help="comma-separated row names (the baseline always runs)")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args()
    size = args.requests or (300 if args.quick else 2000)
    rows = [*ROWS, ALL]
    if args.only:
        wanted = {n.strip() for n in args.only.split(",")}
        unknown = wanted - {r.name for r in rows}
        if unknown:
            p.error(f"no rows {sorted(unknown)}; rows: {[r.name for r in rows]}")
        rows = [r for r in rows if r.name in wanted]
    two = (os.cpu_count() or 1) >= 2
    sidecar_cpu, client_cpu = ("0", "1") if two else ("0", "0")
    if two:
        os.sched_setaffinity(0, {1})  # this client and the fake providers share CPU 1
    started = time.monotonic()
    workload = build(args.seed, size)
    print(f"workload: {json.dumps(workload.summary())}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-savings-") as tmp_name:
        tmp = Path(tmp_name)
        fake_port = harness.free_port()
        fake = harness.Child(
            "fake-llm",
            client_cpu,
            [
                str(VENV_PY),
                str(BENCH / "fake_llm.py"),
                "--port",
                str(fake_port),
                "--seed",
                str(args.seed),
            ],
            tmp,
        )
        try:
            harness.wait_until(lambda: harness.port_open(fake_port), "starting the fake LLM", fake)
            url = f"http://127.0.0.1:{fake_port}"
            baseline = run_direct(workload, url, args.concurrency)
            print(f"ran {baseline.name} ({time.monotonic() - started:.0f}s)", flush=True)
            results = []
            for row in rows:
                results.append(
                    run_sidecar(row, workload, fake_port, args.concurrency, tmp, sidecar_cpu)
                )
                print(f"ran {row.name} ({time.monotonic() - started:.0f}s)", flush=True)
        finally:
            fake.stop()
    print()
    print(table(baseline, results))
    print(accounting(baseline, results))
    for r in results:
        if r.shadow:
            print(f"\n{r.name}: llm-sidecar shadow\n{r.shadow}", end="")
    print(f"\n{size} requests, seed {args.seed}, {time.monotonic() - started:.0f}s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "workload": workload.summary(),
        "seed": args.seed,
        "baseline": baseline.__dict__ | {"p50": baseline.p50, "p95": baseline.p95},
        "rows": [
            r.__dict__ | {"p50": r.p50, "p95": r.p95, "check": check(r, baseline)} for r in results
        ],
    }
    for entry in [report["baseline"], *report["rows"]]:
        entry.pop("latencies")
    args.out.write_text(json.dumps(report, indent=2))
    failed = [r.name for r in results if not check(r, baseline)[0]]
    if failed or baseline.quality < 1.0:
        print(
            f"FAILED: the ledger does not match the bill for {failed}"
            if failed
            else "FAILED: the baseline's answers are not all right"
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
