"""The command lines of the jobs system: `llm-sidecar worker` and `llm-sidecar jobs ...`.

Kept here so `sidecar/cli.py` only registers them; nothing heavy is imported until a
command runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from sidecar import launch

COMMANDS = ("worker", "jobs")


def _sidecar_url() -> str:
    port = os.environ.get("SIDECAR_PORT", "8480")
    return os.environ.get("SIDECAR_URL", f"http://127.0.0.1:{port}")


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    worker = sub.add_parser("worker", help="run only job workers, on the policy's job queue")
    launch.add_process_options(
        worker, "folder of the sqlite job queue", "health and status port (0: none)"
    )
    worker.add_argument("--workers", type=int, help="concurrent jobs (default: jobs.workers)")
    worker.add_argument(
        "--grace",
        type=float,
        default=float(os.environ.get("SIDECAR_DRAIN_TIMEOUT", "30")),
        help="seconds jobs in flight get after SIGTERM before they go back to the queue",
    )

    jobs = sub.add_parser("jobs", help="submit batches of requests and fetch their results")
    jobs.add_argument(
        "--url", default=_sidecar_url(), help="the sidecar (default $SIDECAR_URL or :8480)"
    )
    actions = jobs.add_subparsers(dest="action", required=True)
    submit = actions.add_parser("submit", help="run a JSONL file of requests as a batch")
    submit.add_argument("file", type=Path, help="JSONL: batch-format lines, or request bodies")
    submit.add_argument("--endpoint", help="default: the lines' url, else chat completions")
    submit.add_argument("--window", default="24h", help="completion window (default 24h)")
    submit.add_argument(
        "--provider-batch",
        choices=("provider", "sync"),
        help="ask for the providers' batch APIs, or for calls (routes with `batch:` decide)",
    )
    submit.add_argument("--wait", action="store_true", help="show progress until done")
    submit.add_argument("-o", "--output", type=Path, help="with --wait: write results here")
    status = actions.add_parser("status", help="a batch (batch_...) or job (job_...)")
    status.add_argument("id", help="batch_... or job_...")
    results = actions.add_parser("results", help="the results of a finished batch or job")
    results.add_argument("id", help="batch_... or job_...")
    results.add_argument("-o", "--output", type=Path, help="default: stdout")


def run(args: argparse.Namespace) -> int:
    if args.command == "worker":
        return _worker(args)
    from sidecar.jobs import client

    try:
        if args.action == "submit":
            return asyncio.run(
                client.submit(
                    args.url,
                    args.file,
                    args.endpoint,
                    args.window,
                    args.wait,
                    args.output,
                    args.provider_batch,
                )
            )
        if args.action == "status":
            return asyncio.run(client.status(args.url, args.id))
        return asyncio.run(client.results(args.url, args.id, args.output))
    except (client.ClientError, OSError) as exc:
        print(f"llm-sidecar jobs: {exc}", file=sys.stderr)
        return 1


def _worker(args: argparse.Namespace) -> int:
    from sidecar.jobs.process import WorkerSettings, run_worker

    if not launch.policies_given("worker", args.policies):
        return 2
    settings = WorkerSettings(
        policies=args.policies,
        state_dir=args.state_dir,
        workers=args.workers,
        ops_host=args.ops_host,
        ops_port=args.ops_port,
        ops_idle_timeout=args.ops_idle_timeout,
        ops_max_connections=args.ops_max_connections,
        grace=args.grace,
    )
    launch.run(run_worker(settings), args.log_level)
    return 0
