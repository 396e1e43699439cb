"""Instructions per request: the CPU cost of a change, where wall-clock numbers are noise.

    python bench/instructions.py [--seconds 30] [--stream] [--select] SRC [SRC ...]

On a shared VM req/s and CPU time drift 15-30 % from one minute to the next, so a change
worth a few percent cannot be seen with bench/run.py. Instructions executed do not drift:
for each SRC (a folder holding a `sidecar` package, e.g. `git worktree add /tmp/before
HEAD~1`), the sidecar runs under valgrind's callgrind twice, pinned like bench/run.py pins
it. Both runs warm up alike; then one sits idle for `--seconds` while the other answers
wrk's load (c=16) for as long, so background work (flushes, gauges) cancels out, and the
difference in instructions over the difference in requests is printed. The same tree
measures within about 0.1 % run to run here.

It counts work, not waiting: it says whether a change makes the sidecar do less, not how
the sidecar behaves under contention (bench/run.py does). Needs valgrind and wrk (Debian
packages) and taskset; about two minutes per SRC. The upstream is bench/fake_upstream.py.

`--select` serves the route with model selection (two tiers, four rules on the request's
features, no classifier): against a run without it on the same tree, what choosing a tier
before the call costs per request.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import run as harness  # bench/run.py: pinned children, wrk

ROOT = Path(__file__).resolve().parent.parent
VENV_PY = ROOT / ".venv" / "bin" / "python"
WARMUP_SECONDS = 5
CONCURRENCY = 16
POLICY = """\
providers:
  up: {{type: openai, base_url: "http://127.0.0.1:{port}/v1", api_key: bench-key}}
models:
  m: {{provider: up, name: bench-model}}
routes:
  chat: {{targets: [m]}}
"""
SELECT = """\
providers:
  up: {{type: openai, base_url: "http://127.0.0.1:{port}/v1", api_key: bench-key}}
models:
  m: {{provider: up, name: bench-model}}
  big: {{provider: up, name: bench-model-big}}
routes:
  chat:
    select:
      tiers: {{small: {{targets: [m]}}, large: {{targets: [big]}}}}
      default: small
      rules:
        - {{tier: large, min_input_tokens: 20000}}
        - {{tier: large, images: true}}
        - {{tier: large, min_turns: 12}}
        - {{tier: large, keywords: [step by step, prove, refactor]}}
"""


def count(
    src: Path, upstream: int, tmp: Path, body: bytes, seconds: int, load: bool, policy: str
) -> tuple[int, int]:
    """(instructions, requests) of one callgrind run of the sidecar in `src`."""
    run_dir = Path(tempfile.mkdtemp(dir=tmp))
    policies = run_dir / "policies"
    policies.mkdir()
    (policies / "bench.yaml").write_text(policy.format(port=upstream))
    port, ops_port = harness.free_port(), harness.free_port()
    argv = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"]
    argv += [str(VENV_PY), "-m", "sidecar", "serve", "--policies", str(policies)]
    argv += ["--port", str(port), "--ops-host", harness.HOST, "--ops-port", str(ops_port)]
    argv += ["--state-dir", str(run_dir / "state"), "--log-level", "warning"]
    sidecar = harness.Child("sidecar", harness.SIDECAR_CPU, argv, run_dir, src)
    try:
        harness.wait_until(
            lambda: harness.ready(ops_port), "starting the sidecar under valgrind", sidecar, 300
        )
        url = f"http://{harness.HOST}:{port}{harness.PATH}"
        requests = harness.wrk(url, body, CONCURRENCY, WARMUP_SECONDS)["requests"]
        if load:
            requests += harness.wrk(url, body, CONCURRENCY, seconds)["requests"]
        else:
            time.sleep(seconds)
    finally:
        sidecar.stop(timeout=300)  # killed, callgrind would print no total
    found = re.search(r"Collected : (\d+)", sidecar.log_path.read_text())
    if found is None:
        raise RuntimeError(f"callgrind printed no total:\n{sidecar.log_tail()}")
    return int(found.group(1)), requests


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("src", nargs="+", type=Path, help="folders holding a `sidecar` package")
    p.add_argument("--seconds", type=int, default=30, help="load time (default 30)")
    p.add_argument("--stream", action="store_true", help="streamed answers instead of JSON")
    p.add_argument("--select", action="store_true", help="a route with tiers and rules")
    args = p.parse_args()
    for tool in ("valgrind", "wrk", "taskset"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed (apt-get install -y {tool})")
    body = harness.Scenario("count", "", CONCURRENCY, stream=args.stream).body("chat")
    with tempfile.TemporaryDirectory(prefix="bench-instructions-") as tmp:
        upstream_port = harness.free_port()
        argv = [str(VENV_PY), str(harness.BENCH / "fake_upstream.py")]
        upstream = harness.Child(
            "upstream", harness.CLIENT_CPU, [*argv, "--port", str(upstream_port)], Path(tmp)
        )
        try:
            harness.wait_until(
                lambda: harness.port_open(upstream_port), "starting the upstream", upstream
            )
            kind = "stream" if args.stream else "JSON"
            for src in args.src:
                where = (src.resolve(), upstream_port, Path(tmp), body, args.seconds)
                policy = SELECT if args.select else POLICY
                idle, warm = count(*where, load=False, policy=policy)
                busy, total = count(*where, load=True, policy=policy)
                n = total - warm
                per = (busy - idle) / max(1, n)
                print(f"{src}: {per:,.0f} instructions per {kind} request ({n} requests)")
        finally:
            upstream.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
