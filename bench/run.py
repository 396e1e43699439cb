"""Measure what the sidecar costs compared with calling the upstream directly.

    python bench/run.py [--quick] [--profile SECONDS] [--strict]

Every scenario is measured in one run, with the same client, the same fake upstream and
the same machine state: straight at the upstream, through a bare aiohttp pass-through
(`passthrough.py`, the floor: what any Python proxy on this stack costs) and through the
sidecar. Sidecar minus direct is the sidecar's overhead; sidecar against the floor is the
part of it that is the sidecar's own work. To keep them from fighting over a core, the
sidecar and the pass-through are pinned to CPU 0, and the fake upstream, wrk and this
script to CPU 1.

This script uses only the standard library so any Python 3.11+ can start it; the
sidecar and the fake upstream run on the project's venv (.venv/bin/python) when it exists.
See bench/README.md for what each number means.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import hotspots

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
LUA = BENCH / "post.lua"
VENV_PY = ROOT / ".venv" / "bin" / "python"
HOST = "127.0.0.1"
PATH = "/v1/chat/completions"
SIDECAR_CPU = "0"
CLIENT_CPU = "1"  # the fake upstreams, wrk, the TTFT probe and this script
SLOW_MS = 50
WRK_HINT = "wrk is not installed; install it with:  apt-get install -y wrk"
MB = 1024 * 1024
# The absolute targets were set on a machine where the bare pass-through reached
# 5,500-6,300 req/s and added 0.56 ms at p50: 3,000 req/s and +0.8 ms there are these,
# relative to the floor measured in the same run, which carry over to any machine.
ABSOLUTE_RPS = 3000
FLOOR_RPS_SHARE = ABSOLUTE_RPS / 5900
FLOOR_P50_ROOM = 0.8 - 0.56  # ms the sidecar may add beyond what the floor adds
OTHER_CPU_LIMIT = 10.0  # % of one core used by other processes before a run is suspect

POLICY = """\
providers:
  up:
    type: openai
    base_url: http://127.0.0.1:{fast}/v1
    api_key: bench-key
    timeout: 30s
    max_connections: 512
  slow:
    type: openai
    base_url: http://127.0.0.1:{slow}/v1
    api_key: bench-key
    timeout: 30s
    max_connections: 512
models:
  m: {{provider: up, name: bench-model}}
  m-slow: {{provider: slow, name: bench-model}}
routes:
  chat:
    targets: [m]
  chat-slow:
    targets: [m-slow]
"""


# -- scenarios and results ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    label: str
    concurrency: int
    stream: bool = False
    slow: bool = False  # against the upstream that waits SLOW_MS before answering

    def body(self, model: str) -> bytes:
        body: dict[str, Any] = {
            "model": model,
            "messages": [{"role": "user", "content": "Say hello."}],
            "max_tokens": 16,
        }
        if self.stream:
            body["stream"] = True
        return json.dumps(body, separators=(",", ":")).encode()


SCENARIOS = (
    Scenario("json-c1", "JSON, c=1", 1),
    Scenario("json-c64", "JSON, c=64", 64),
    Scenario("stream-c1", "stream, c=1 (total)", 1, stream=True),
    Scenario("stream-c64", "stream, c=64 (total)", 64, stream=True),
    Scenario("json-c64-slow", f"JSON, c=64, {SLOW_MS} ms upstream", 64, slow=True),
)


@dataclass(slots=True)
class Measurement:
    """One wrk (or probe) run. Latencies in milliseconds; CPU in % of one core."""

    tool: str
    requests: int
    seconds: float
    rps: float
    p50: float
    p95: float
    p99: float
    p999: float | None = None
    mean: float | None = None
    max: float | None = None
    errors: dict[str, int] = field(default_factory=dict)
    sidecar_cpu: float | None = None
    upstream_cpu: float | None = None
    other_cpu: float | None = None  # everything else on the machine: should be ~0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


@dataclass(slots=True)
class Comparison:
    scenario: str
    label: str
    concurrency: int
    direct: Measurement
    sidecar: Measurement
    floor: Measurement | None = None  # the bare pass-through

    def runs(self) -> list[tuple[str, Measurement]]:
        out = [("direct", self.direct)]
        if self.floor is not None:
            out.append(("floor", self.floor))
        return [*out, ("sidecar", self.sidecar)]

    def overhead(self) -> dict[str, float]:
        """Latency: sidecar minus direct (ms). Throughput: sidecar / direct. With a floor,
        the same for the bare pass-through, and the sidecar's req/s over the floor's."""
        d, s, f = self.direct, self.sidecar, self.floor
        out = {
            "p50_ms": s.p50 - d.p50,
            "p95_ms": s.p95 - d.p95,
            "p99_ms": s.p99 - d.p99,
            "rps_ratio": s.rps / d.rps if d.rps else 0.0,
        }
        if f is not None:
            out["floor_p50_ms"] = f.p50 - d.p50
            out["floor_p99_ms"] = f.p99 - d.p99
            out["rps_vs_floor"] = s.rps / f.rps if f.rps else 0.0
        return out


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    measured: float
    limit: float
    unit: str
    higher_is_better: bool = False

    @property
    def ok(self) -> bool:
        return self.measured >= self.limit if self.higher_is_better else self.measured <= self.limit

    def row(self) -> dict[str, Any]:
        return {**asdict(self), "pass": self.ok}


# -- processes ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class Child:
    """A pinned subprocess whose output goes to a log file (shown if it dies)."""

    def __init__(
        self,
        name: str,
        cpu: str,
        argv: list[str],
        log_dir: Path,
        src: Path = ROOT,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log: TextIO = self.log_path.open("w")
        # taskset execs the command, so `pid` is the Python process itself.
        self.proc = subprocess.Popen(
            ["taskset", "-c", cpu, *argv],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            # Import `sidecar` from `src` only: not from the cwd, which `-m` puts first.
            cwd=log_dir,
            env={**os.environ, "PYTHONPATH": str(src), **(env or {})},
            start_new_session=True,  # Ctrl-C in the terminal reaches only this script
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 10) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._log.close()


def wait_until(check: Callable[[], bool], what: str, child: Child, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not child.alive():
            raise RuntimeError(f"{child.name} exited while {what}:\n{child.log_tail()}")
        with suppress(OSError):
            if check():
                return
        time.sleep(0.05)
    raise RuntimeError(f"timed out {what}:\n{child.log_tail()}")


def port_open(port: int) -> bool:
    with socket.create_connection((HOST, port), timeout=0.5):
        return True


def ready(ops_port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{ops_port}/readyz", timeout=1) as resp:
            return bool(resp.status == 200)
    except urllib.error.URLError:
        return False


# -- /proc -------------------------------------------------------------------------------


def proc_status(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def rss_mb(pid: int, key: str = "VmRSS") -> float:
    return int(proc_status(pid)[key].split()[0]) / 1024  # the kernel reports kB


def cpu_seconds(pid: int) -> float:
    """utime + stime, read before and after a run to get the process's CPU share."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class RssSampler(threading.Thread):
    """Samples VmRSS while load runs; VmHWM (the kernel's own peak) is read at the end."""

    def __init__(self, pid: int, every: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.every = every
        self.peak = 0.0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.every):
            with suppress(OSError, KeyError, ValueError):
                self.peak = max(self.peak, rss_mb(self.pid))

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


@contextmanager
def cpu_share(pids: dict[str, int], into: dict[str, float]) -> Iterator[None]:
    """CPU % (of one core) of each process in `pids` over the block, and under "other"
    what the rest of the machine used: anything else running (a test suite, a build)
    steals time from one side of the comparison and makes it meaningless."""
    before = {k: cpu_seconds(p) for k, p in pids.items()}
    ours_before, machine_before = own_cpu_seconds(), machine_busy_seconds()
    t0 = time.monotonic()
    yield
    wall = time.monotonic() - t0
    ours = own_cpu_seconds() - ours_before  # this script and its finished wrk runs
    for k, p in pids.items():
        used = cpu_seconds(p) - before[k]
        into[k] = 100 * used / wall
        ours += used
    into["other"] = max(0.0, 100 * (machine_busy_seconds() - machine_before - ours) / wall)


def own_cpu_seconds() -> float:
    me, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def machine_busy_seconds() -> float:
    """All CPUs' busy time from /proc/stat (user, nice, system, irq, softirq, steal)."""
    f = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (f[0] + f[1] + f[2] + f[5] + f[6] + f[7]) / os.sysconf("SC_CLK_TCK")


def background_load(seconds: float = 1.0) -> float:
    """CPU % the machine uses while we do nothing, before anything starts."""
    before, t0 = machine_busy_seconds(), time.monotonic()
    time.sleep(seconds)
    return 100 * (machine_busy_seconds() - before) / (time.monotonic() - t0)


# -- clients -----------------------------------------------------------------------------


def wrk(url: str, body: bytes, concurrency: int, seconds: int) -> dict[str, Any]:
    """One wrk run (1 thread) pinned to the client CPU; returns post.lua's result line."""
    argv = [
        "taskset",
        "-c",
        CLIENT_CPU,
        "wrk",
        "-t1",
        f"-c{concurrency}",
        f"-d{seconds}s",
        "--timeout",
        "10s",
        "-s",
        str(LUA),
        url,
    ]
    env = {**os.environ, "BENCH_BODY": body.decode()}
    done = subprocess.run(
        argv, env=env, capture_output=True, text=True, timeout=seconds + 30, check=False
    )
    for line in done.stdout.splitlines():
        if line.startswith("BENCH_RESULT "):
            return dict(json.loads(line.removeprefix("BENCH_RESULT ")))
    raise RuntimeError(f"wrk gave no result (exit {done.returncode}):\n{done.stdout}{done.stderr}")


def from_wrk(raw: dict[str, Any]) -> Measurement:
    seconds = raw["duration_us"] / 1e6
    return Measurement(
        tool="wrk",
        requests=raw["requests"],
        seconds=seconds,
        rps=raw["requests"] / seconds if seconds else 0.0,
        p50=raw["p50_us"] / 1000,
        p95=raw["p95_us"] / 1000,
        p99=raw["p99_us"] / 1000,
        p999=raw["p999_us"] / 1000,
        mean=raw["mean_us"] / 1000,
        max=raw["max_us"] / 1000,
        errors={k: v for k, v in raw["errors"].items() if v},
    )


def _request_bytes(port: int, body: bytes) -> bytes:
    head = (
        f"POST {PATH} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def ttft_probe(port: int, body: bytes, seconds: float) -> tuple[list[float], list[float]]:
    """Sequential streamed requests on one keep-alive connection. wrk only sees whole
    responses, so this raw-socket client times the first `data:` event itself: returns
    (time to first event, time to the end of the stream) in ms, one pair per request."""
    request = _request_bytes(port, body)
    first: list[float] = []
    total: list[float] = []
    with socket.create_connection((HOST, port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            t0 = time.perf_counter_ns()
            sock.sendall(request)
            buf = b""
            t_first = 0
            while not buf.endswith(b"\r\n0\r\n\r\n"):  # the last chunk of a chunked body
                data = sock.recv(65536)
                if not data:
                    raise RuntimeError("connection closed in the middle of a stream")
                buf += data
                if not t_first and b"data: " in buf:
                    t_first = time.perf_counter_ns()
            t_end = time.perf_counter_ns()
            if not buf.startswith(b"HTTP/1.1 200") or b"data: [DONE]" not in buf:
                raise RuntimeError(f"unexpected stream answer: {buf[:300]!r}")
            first.append((t_first - t0) / 1e6)
            total.append((t_end - t0) / 1e6)
    return first, total


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]


def from_probe(samples: list[float], seconds: float) -> Measurement:
    return Measurement(
        tool="ttft-probe",
        requests=len(samples),
        seconds=seconds,
        rps=len(samples) / seconds,
        p50=percentile(samples, 50),
        p95=percentile(samples, 95),
        p99=percentile(samples, 99),
        p999=percentile(samples, 99.9),
        mean=sum(samples) / len(samples),
        max=max(samples),
    )


def preflight(port: int, body: bytes, stream: bool) -> None:
    """One request before the load, so a misrouted or failing setup is caught by its
    answer, not discovered later as a wonderfully fast stream of 502s."""
    req = urllib.request.Request(
        f"http://{HOST}:{port}{PATH}", data=body, headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        text = resp.read().decode()
        kind = resp.headers.get("content-type", "")
    ok = "data: [DONE]" in text and '"error"' not in text if stream else '"choices"' in text
    if not ok or ("event-stream" in kind) != stream:
        raise RuntimeError(f"unexpected answer from port {port} ({kind}): {text[:300]}")


# -- the run -----------------------------------------------------------------------------


@dataclass(slots=True)
class Setup:
    py: str
    tmp: Path
    src: Path = ROOT  # the folder holding the `sidecar` package to run
    fast_port: int = 0
    slow_port: int = 0
    port: int = 0
    ops_port: int = 0
    floor_ports: dict[bool, int] = field(default_factory=dict)  # slow upstream? -> port
    children: list[Child] = field(default_factory=list)
    sidecar: Child | None = None
    floors: dict[bool, Child] = field(default_factory=dict)  # slow upstream? -> pass-through
    upstreams: dict[bool, Child] = field(default_factory=dict)  # slow? -> child

    def start(self) -> None:
        self.fast_port, self.slow_port = free_port(), free_port()
        self.port, self.ops_port = free_port(), free_port()
        for slow, port in ((False, self.fast_port), (True, self.slow_port)):
            argv = [self.py, str(BENCH / "fake_upstream.py"), "--port", str(port)]
            if slow:
                argv += ["--delay-ms", str(SLOW_MS)]
            child = Child("upstream-slow" if slow else "upstream", CLIENT_CPU, argv, self.tmp)
            self.children.append(child)
            self.upstreams[slow] = child
            wait_until(lambda p=port: port_open(p), "starting the fake upstream", child)
        policies = self.tmp / "policies"
        policies.mkdir()
        (policies / "bench.yaml").write_text(
            POLICY.format(fast=self.fast_port, slow=self.slow_port)
        )
        self.sidecar = Child(
            "sidecar",
            SIDECAR_CPU,
            [
                self.py,
                "-m",
                "sidecar",
                "serve",
                "--policies",
                str(policies),
                "--port",
                str(self.port),
                "--ops-host",
                HOST,
                "--ops-port",
                str(self.ops_port),
                "--drain-timeout",
                "2",
            ],
            self.tmp,
            self.src,
        )
        self.children.append(self.sidecar)
        wait_until(lambda: ready(self.ops_port), "waiting for the sidecar's /readyz", self.sidecar)
        for slow, upstream_port in ((False, self.fast_port), (True, self.slow_port)):
            port = self.floor_ports[slow] = free_port()
            argv = [self.py, str(BENCH / "passthrough.py"), "--port", str(port)]
            argv += ["--upstream", f"http://{HOST}:{upstream_port}"]
            floor = Child(
                "passthrough-slow" if slow else "passthrough", SIDECAR_CPU, argv, self.tmp
            )
            self.floors[slow] = floor
            self.children.append(floor)
            wait_until(lambda p=port: port_open(p), "starting the pass-through", floor)

    def target(self, via: str, slow: bool) -> tuple[int, str, int | None]:
        """(port, model, pid of the process on CPU 0) for a run `via` direct, floor or sidecar."""
        assert self.sidecar is not None
        if via == "sidecar":
            return self.port, "chat-slow" if slow else "chat", self.sidecar.pid
        if via == "floor":
            return self.floor_ports[slow], "bench-model", self.floors[slow].pid
        return (self.slow_port if slow else self.fast_port), "bench-model", None

    def stop(self) -> None:
        for child in reversed(self.children):
            child.stop()


def measure(setup: Setup, sc: Scenario, via: str, warmup: int, seconds: int) -> Measurement:
    upstream = setup.upstreams[sc.slow]
    port, model, proxy = setup.target(via, sc.slow)
    body = sc.body(model)
    url = f"http://{HOST}:{port}{PATH}"
    preflight(port, body, sc.stream)
    if warmup:
        wrk(url, body, sc.concurrency, warmup)
    cpu: dict[str, float] = {}
    pids = {"upstream": upstream.pid, "upstream-idle": setup.upstreams[not sc.slow].pid}
    if proxy is not None:
        pids["proxy"] = proxy
    with cpu_share(pids, cpu):
        m = from_wrk(wrk(url, body, sc.concurrency, seconds))
    m.sidecar_cpu = cpu.get("proxy")
    m.upstream_cpu = cpu["upstream"]
    m.other_cpu = cpu["other"]
    return m


def measure_ttft(setup: Setup, via: str, warmup: float, seconds: float) -> Measurement:
    port, model, proxy = setup.target(via, False)
    body = Scenario("ttft", "", 1, stream=True).body(model)
    ttft_probe(port, body, warmup)
    cpu: dict[str, float] = {}
    pids = {"upstream": setup.upstreams[False].pid, "upstream-idle": setup.upstreams[True].pid}
    if proxy is not None:
        pids["proxy"] = proxy
    with cpu_share(pids, cpu):
        first, _ = ttft_probe(port, body, seconds)
    m = from_probe(first, seconds)
    m.sidecar_cpu = cpu.get("proxy")
    m.upstream_cpu = cpu["upstream"]
    m.other_cpu = cpu["other"]
    return m


def wait_for_quiet(max_wait: float) -> float:
    """Wait (up to `max_wait` s) until the rest of the machine is idle; its last load."""
    deadline = time.monotonic() + max_wait
    load = background_load(0.5)
    while load > OTHER_CPU_LIMIT and time.monotonic() < deadline:
        load = background_load(1.0)
    return load


def compare(
    name: str,
    label: str,
    concurrency: int,
    run: Callable[[str], Measurement],
    retries: int,
    rounds: int = 1,
    floor: bool = True,
) -> Comparison:
    """Direct, then the bare pass-through (`floor`), then through the sidecar, `rounds`
    times; each keeps its best round (highest req/s), since noise from a shared machine
    only ever slows a run down. A set during which something else on the machine took CPU
    is measured again (up to `retries` times), after waiting for quiet: on a shared dev
    box a test suite starting mid-run otherwise decides the result."""
    vias = ("direct", "floor", "sidecar") if floor else ("direct", "sidecar")
    best: dict[str, Measurement] = {}
    for _ in range(rounds):
        for attempt in range(retries + 1):
            wait_for_quiet(30 if attempt else 5)
            runs: dict[str, Measurement] = {}
            for via in vias:
                print(f"  {label:<32} {via:<8}", end=" ", flush=True)
                m = run(via)
                other = f"  (other cpu {m.other_cpu:.0f}%)" if m.other_cpu else ""
                print(
                    f"{m.rps:9.0f} req/s  p50 {m.p50:.3f} ms  p99 {m.p99:.3f} ms{other}",
                    flush=True,
                )
                runs[via] = m
            result = Comparison(
                name, label, concurrency, runs["direct"], runs["sidecar"], runs.get("floor")
            )
            if not disturbed({name: result}):
                break
            if attempt < retries:
                print(f"  {label}: disturbed by other processes, measuring again", flush=True)
        for via, m in runs.items():
            if via not in best or m.rps > best[via].rps:
                best[via] = m
    return Comparison(name, label, concurrency, best["direct"], best["sidecar"], best.get("floor"))


def targets(cmp: dict[str, Comparison], rss: dict[str, float]) -> list[Target]:
    """The goals, for the scenarios that ran (`--only` may skip some)."""
    rows = []
    if c := cmp.get("json-c1"):
        o = c.overhead()
        rows.append(Target("JSON c=1: added p50 latency", o["p50_ms"], 0.8, "ms"))
        rows.append(Target("JSON c=1: added p99 latency", o["p99_ms"], 3.0, "ms"))
    if c := cmp.get("stream-c1-ttft"):
        p50 = c.overhead()["p50_ms"]
        rows.append(Target("stream c=1: added time to first event (p50)", p50, 1.0, "ms"))
    if (c := cmp.get("json-c1")) and c.floor is not None:
        o = c.overhead()
        own = o["p50_ms"] - o["floor_p50_ms"]
        rows.append(Target("JSON c=1: p50 added beyond the floor", own, FLOOR_P50_ROOM, "ms"))
    if c := cmp.get("json-c64"):
        rps = c.sidecar.rps
        name = "JSON c=64: req/s through the sidecar"
        rows.append(Target(name, rps, ABSOLUTE_RPS, "req/s", True))
        if c.floor is not None:
            share = c.overhead()["rps_vs_floor"]
            name = "JSON c=64: req/s as a share of the floor's"
            rows.append(Target(name, 100 * share, 100 * FLOOR_RPS_SHARE, "%", True))
    if c := cmp.get("json-c64-slow"):
        share = 100 * c.overhead()["rps_ratio"]
        name = f"JSON c=64, {SLOW_MS} ms upstream: sidecar/direct req/s"
        rows.append(Target(name, share, 90, "%", True))
        if c.floor is not None:
            share = 100 * c.overhead()["rps_vs_floor"]
            name = f"JSON c=64, {SLOW_MS} ms upstream: sidecar/floor req/s"
            rows.append(Target(name, share, 90, "%", True))
    rows.append(Target("idle RSS after start", rss["idle_mb"], 70, "MB"))
    rows.append(Target("peak RSS under load (VmHWM)", rss["peak_hwm_mb"], 150, "MB"))
    return rows


# -- output ------------------------------------------------------------------------------


def _ms(v: float, signed: bool = False) -> str:
    return f"{v:+8.3f}" if signed else f"{v:8.3f}"


def _pct(v: float | None, width: int) -> str:
    return f"{v:{width}.0f}" if v is not None else " " * width


def table(cmp: dict[str, Comparison]) -> str:
    head = (
        f"{'scenario':<30} {'via':<9} {'req/s':>9} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}"
        f" {'errors':>6} {'sidecar':>7} {'upstrm':>6} {'other':>5}"
    )
    sub = f"{'':<77} {'cpu %':>7} {'cpu %':>6} {'cpu %':>5}"
    lines = [head, sub, "-" * len(head)]
    for c in cmp.values():
        for via, m in c.runs():
            label = c.label if via == "direct" else ""
            lines.append(
                f"{label:<30} {via:<9} {m.rps:9.0f} {_ms(m.p50)} {_ms(m.p95)} {_ms(m.p99)}"
                f" {m.error_count:6d} {_pct(m.sidecar_cpu, 7)} {_pct(m.upstream_cpu, 6)}"
                f" {_pct(m.other_cpu, 5)}"
            )
        o = c.overhead()
        lines.append(
            f"{'':<30} {'overhead':<9} {o['rps_ratio']:8.2f}x {_ms(o['p50_ms'], True)}"
            f" {_ms(o['p95_ms'], True)} {_ms(o['p99_ms'], True)}"
        )
        if "rps_vs_floor" in o:
            lines.append(f"{'':<30} {'vs floor':<9} {o['rps_vs_floor']:8.2f}x")
    return "\n".join(lines)


def disturbed(cmp: dict[str, Comparison], limit: float = OTHER_CPU_LIMIT) -> list[str]:
    """Runs during which something else on the machine used more than `limit` % CPU."""
    return [
        f"{c.label} / {via}: {m.other_cpu:.0f}%"
        for c in cmp.values()
        for via, m in c.runs()
        if m.other_cpu is not None and m.other_cpu > limit
    ]


def target_table(rows: list[Target]) -> str:
    lines = [f"{'target':<52} {'measured':>12} {'limit':>14}  result", "-" * 88]
    for t in rows:
        limit = f"{'>=' if t.higher_is_better else '<='} {t.limit:g} {t.unit}"
        value = f"{t.measured:+.3f} {t.unit}" if t.unit == "ms" else f"{t.measured:.1f} {t.unit}"
        lines.append(f"{t.name:<52} {value:>12} {limit:>14}  {'PASS' if t.ok else 'FAIL'}")
    return "\n".join(lines)


def environment(py: str) -> dict[str, Any]:
    def out(*argv: str) -> str:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return (done.stdout or done.stderr).strip()

    cpu = next(
        (
            line.partition(":")[2].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    versions = out(
        py,
        "-c",
        "import aiohttp, uvloop, orjson, sys; print(sys.version.split()[0], "
        "aiohttp.__version__, uvloop.__version__, orjson.__version__)",
    ).split()
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": versions[0] if versions else None,
        "aiohttp": versions[1] if len(versions) > 1 else None,
        "uvloop": versions[2] if len(versions) > 2 else None,
        "orjson": versions[3] if len(versions) > 3 else None,
        "wrk": out("wrk", "-v").splitlines()[0] if out("wrk", "-v") else None,
        "git_commit": out("git", "rev-parse", "--short", "HEAD") or None,
        "git_dirty": bool(out("git", "status", "--porcelain", "--", "sidecar")),
    }


# -- main --------------------------------------------------------------------------------


def check_tools() -> None:
    if shutil.which("wrk") is None:
        print(WRK_HINT, file=sys.stderr)
        sys.exit(2)
    if shutil.which("taskset") is None:
        print("taskset is missing (package util-linux)", file=sys.stderr)
        sys.exit(2)
    if (os.cpu_count() or 1) < 2:
        print("needs 2 CPUs: the sidecar and the clients are pinned apart", file=sys.stderr)
        sys.exit(2)


def _terminated(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="sidecar overhead vs. calling the upstream directly")
    p.add_argument("--quick", action="store_true", help="short runs (a smoke test, noisy)")
    p.add_argument(
        "--profile",
        type=int,
        metavar="SECONDS",
        default=0,
        help="afterwards, sample the sidecar with py-spy under JSON and stream load at c=64",
    )
    p.add_argument(
        "--only",
        type=lambda v: v.split(","),
        metavar="NAMES",
        help=f"run only these scenarios, comma-separated: {', '.join(s.name for s in SCENARIOS)}",
    )
    p.add_argument(
        "--retries",
        type=int,
        default=2,
        metavar="N",
        help="measure a scenario again, up to N times, when other processes took CPU (default 2)",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=None,
        metavar="N",
        help="measure every scenario N times, alternating direct, floor and sidecar, and keep "
        "each one's best (default 2; 1 with --quick)",
    )
    p.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    p.add_argument("--out", type=Path, default=RESULTS / "latest.json")
    p.add_argument(
        "--sidecar-src",
        type=Path,
        default=ROOT,
        metavar="DIR",
        help="run the `sidecar` package in DIR, e.g. a `git archive` snapshot (default: this tree)",
    )
    args = p.parse_args(argv)
    check_tools()
    # SIGTERM (a CI timeout, `kill`) must still stop the children, which run in their own
    # sessions: turn it into an exception so the `finally` below runs.
    signal.signal(signal.SIGTERM, _terminated)
    warmup, seconds, ttft_seconds = (1, 2, 2.0) if args.quick else (2, 6, 5.0)
    rounds = args.rounds or (1 if args.quick else 2)
    py = str(VENV_PY) if VENV_PY.exists() else sys.executable
    os.sched_setaffinity(0, {int(CLIENT_CPU)})  # this script's own work stays off CPU 0

    started = time.time()
    background = background_load()
    if background > OTHER_CPU_LIMIT:
        print(
            f"warning: the machine is already {background:.0f}% busy (of one core) before the "
            "benchmark starts; something else is running and will blur the numbers",
            file=sys.stderr,
        )
    with tempfile.TemporaryDirectory(prefix="sidecar-bench-") as tmp:
        setup = Setup(py=py, tmp=Path(tmp), src=args.sidecar_src.resolve())
        try:
            setup.start()
            assert setup.sidecar is not None
            pid = setup.sidecar.pid
            time.sleep(1.0)  # let start-up settle before calling it idle
            idle = rss_mb(pid)
            affinity = proc_status(pid).get("Cpus_allowed_list")
            print(f"sidecar pid {pid} on CPU {affinity}, idle RSS {idle:.1f} MB", flush=True)
            sampler = RssSampler(pid)
            sampler.start()
            cmp: dict[str, Comparison] = {}
            for sc in (sc for sc in SCENARIOS if not args.only or sc.name in args.only):
                cmp[sc.name] = compare(
                    sc.name,
                    sc.label,
                    sc.concurrency,
                    lambda via, sc=sc: measure(setup, sc, via, warmup, seconds),
                    args.retries,
                    rounds,
                )
                if sc.name == "stream-c1":
                    cmp["stream-c1-ttft"] = compare(
                        "stream-c1-ttft",
                        "stream, c=1 (first event)",
                        1,
                        lambda via: measure_ttft(setup, via, float(warmup), ttft_seconds),
                        args.retries,
                        rounds,
                    )
            sampler.stop()
            time.sleep(1.0)
            rss = {
                "idle_mb": idle,
                "peak_sampled_mb": sampler.peak,
                "peak_hwm_mb": rss_mb(pid, "VmHWM"),
                "after_load_mb": rss_mb(pid),
            }
            profile = run_profile(setup, args.profile) if args.profile else None
        except BaseException:
            for child in setup.children:
                print(f"--- {child.name} log (tail) ---\n{child.log_tail()}", file=sys.stderr)
            raise
        finally:
            setup.stop()

    rows = targets(cmp, rss)
    print()
    print(table(cmp))
    print()
    print(
        f"sidecar RSS: idle {rss['idle_mb']:.1f} MB, peak {rss['peak_hwm_mb']:.1f} MB (VmHWM), "
        f"peak sampled {rss['peak_sampled_mb']:.1f} MB, after load {rss['after_load_mb']:.1f} MB"
    )
    print()
    print(target_table(rows))
    if (c := cmp.get("json-c64")) and c.floor is not None and c.floor.rps < ABSOLUTE_RPS:
        print(
            f"\nnote: the floor itself reached {c.floor.rps:.0f} req/s here, below the"
            f" absolute {ABSOLUTE_RPS} req/s target: no proxy on aiohttp's server and client"
            " can show it on this machine. The share of the floor is what carries over."
        )
    noisy = disturbed(cmp)
    if noisy:
        print(
            f"\nWARNING: other processes used more than {OTHER_CPU_LIMIT:.0f}% CPU during: "
            + "; ".join(noisy)
            + ". Those comparisons are unreliable; rerun on a quiet machine."
        )
    if profile:
        print()
        print(profile["summary"])

    result = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "duration_s": round(time.time() - started, 1),
        "mode": "quick" if args.quick else "full",
        "settings": {
            "warmup_s": warmup,
            "rounds": rounds,
            "measure_s": seconds,
            "ttft_probe_s": ttft_seconds,
            "wrk_threads": 1,
            "sidecar_cpu": SIDECAR_CPU,
            "client_cpu": CLIENT_CPU,
            "slow_upstream_ms": SLOW_MS,
            "latency_units": "ms",
        },
        "environment": {**environment(py), "sidecar_src": str(setup.src)},
        "scenarios": {
            name: {
                "label": c.label,
                "concurrency": c.concurrency,
                "direct": asdict(c.direct),
                "floor": asdict(c.floor) if c.floor else None,
                "sidecar": asdict(c.sidecar),
                "overhead": c.overhead(),
            }
            for name, c in cmp.items()
        },
        "rss": rss,
        "background_cpu_before_start": background,
        "disturbed_runs": noisy,
        "targets": [t.row() for t in rows],
        "all_targets_pass": all(t.ok for t in rows),
    }
    if profile:
        result["profile"] = {k: v for k, v in profile.items() if k != "summary"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    return 1 if args.strict and not result["all_targets_pass"] else 0


def run_profile(setup: Setup, seconds: int) -> dict[str, Any]:
    """Sample the sidecar with py-spy while wrk loads it at c=64, for JSON and for streams.
    py-spy pauses the process for each sample, so throughput here is not a measurement."""
    assert setup.sidecar is not None
    spy = shutil.which("py-spy") or str(Path(setup.py).parent / "py-spy")
    if not Path(spy).exists():
        raise RuntimeError("--profile needs py-spy: .venv/bin/pip install py-spy")
    out: dict[str, Any] = {"files": {}, "hotspots": {}}
    parts = []
    for sc in (SCENARIOS[1], SCENARIOS[3]):  # json-c64, stream-c64
        raw = RESULTS / f"profile-{sc.name}.txt"
        raw.parent.mkdir(parents=True, exist_ok=True)
        url = f"http://{HOST}:{setup.port}{PATH}"
        load = threading.Thread(target=wrk, args=(url, sc.body("chat"), 64, seconds + 3))
        load.start()
        time.sleep(1.5)
        subprocess.run(
            [
                "taskset",
                "-c",
                CLIENT_CPU,
                spy,
                "record",
                "--pid",
                str(setup.sidecar.pid),
                "--duration",
                str(seconds),
                "--rate",
                "200",
                "--format",
                "raw",
                "--full-filenames",
                "--output",
                str(raw),
            ],
            check=True,
            capture_output=True,
            timeout=seconds + 60,
        )
        load.join()
        stacks = hotspots.load(raw)
        report = hotspots.analyse(stacks, own=f"{setup.src / 'sidecar'}/")
        out["files"][sc.name] = str(raw.relative_to(ROOT))
        out["hotspots"][sc.name] = report
        parts.append(f"profile, {sc.label} ({raw.relative_to(ROOT)}):\n{hotspots.render(report)}")
    out["summary"] = "\n\n".join(parts)
    return out


if __name__ == "__main__":
    sys.exit(main())
