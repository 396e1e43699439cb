"""Entry points: `llm-sidecar serve`, the GitOps tools `check`, `diff` and `schema`, and
the views of a running sidecar (`usage`, `shadow`, `top`)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from sidecar import launch
from sidecar.policy.compile import load_folder
from sidecar.policy.problems import PolicyInvalid


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llm-sidecar", description="An LLM gateway beside your app.")
    sub = p.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the sidecar")
    launch.add_process_options(serve, "folder for the sqlite state file")
    serve.add_argument(
        "--host",
        default=os.environ.get("SIDECAR_HOST", "127.0.0.1"),
        help="proxy address (default $SIDECAR_HOST or loopback: only the pod's own app)",
    )
    serve.add_argument(
        "--port",
        type=int,
        default=launch.env_int("SIDECAR_PORT", 8480),
        help="proxy port (default $SIDECAR_PORT or 8480)",
    )
    serve.add_argument(
        "--drain-timeout",
        type=float,
        default=float(os.environ.get("SIDECAR_DRAIN_TIMEOUT", "30")),
        help="seconds requests in flight get to finish after SIGTERM (default 30)",
    )
    serve.add_argument(
        "--idle-timeout",
        type=float,
        default=launch.env_float("SIDECAR_IDLE_TIMEOUT", 30.0),
        help="seconds a proxy connection may stay open without a complete request header,"
        " idle between requests or sending one (default 30)",
    )
    serve.add_argument(
        "--body-timeout",
        type=float,
        default=launch.env_float("SIDECAR_BODY_TIMEOUT", 30.0),
        help="seconds from a request's header to the end of its body; later: 408 (default 30)",
    )

    check = sub.add_parser(
        "check", help="validate a policy folder (exit 1 with FILE:LINE: problems)"
    )
    check.add_argument("folder", type=Path, help="the policy folder")
    check.add_argument(
        "--format", choices=("text", "json"), default="text", help="json: {ok, version, problems}"
    )

    diff = sub.add_parser("diff", help="what changes from one policy folder to another")
    diff.add_argument("old", type=Path, help="the policy folder before the change")
    diff.add_argument("new", type=Path, help="the policy folder after it")
    diff.add_argument("--format", choices=("text", "json"), default="text", help="json: for bots")

    sub.add_parser("schema", help="print the policy file format as JSON Schema (draft 2020-12)")

    usage = sub.add_parser("usage", help="spend and tokens per scope, from a running sidecar")
    usage.add_argument("--scope", default="team", help="global|user|team|route|model|key|shadow")
    usage.add_argument("--window", default="day", help="hour|day|week|month|total")
    usage.add_argument("--bucket", help="a past window, e.g. 2026-11-25 (default: the current)")
    _ops_option(usage)
    usage.add_argument("--json", action="store_true", help="print the JSON as served")

    shadow = sub.add_parser(
        "shadow", help="how shadow trials' candidates compare, from a running sidecar"
    )
    shadow.add_argument("--route", help="one route (default: every route with a trial)")
    shadow.add_argument("--days", type=int, default=7, help="the last N UTC days (default 7)")
    _ops_option(shadow)
    shadow.add_argument("--json", action="store_true", help="print the JSON as served")

    top = sub.add_parser("top", help="a live view of a running sidecar (like htop)")
    _ops_option(top)
    top.add_argument("-n", "--interval", type=float, default=2.0, help="seconds between polls")
    top.add_argument("--once", action="store_true", help="print one snapshot and exit")

    from sidecar.jobs import cli as jobs_cli  # `worker` and `jobs submit|status|results`

    jobs_cli.add_parsers(sub)
    return p


def _ops_option(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--ops",
        default=os.environ.get(
            "SIDECAR_OPS_URL", f"http://127.0.0.1:{launch.env_int('SIDECAR_OPS_PORT', 8481)}"
        ),
        help="the sidecar's ops URL (default $SIDECAR_OPS_URL or http://127.0.0.1:8481)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "check":
        return check(args.folder, args.format)
    if args.command == "diff":
        return diff(args.old, args.new, args.format)
    if args.command == "schema":
        from sidecar.policy.jsonschema import policy_schema

        print(json.dumps(policy_schema(), indent=2))
        return 0
    if args.command == "usage":
        from sidecar.usage_table import show

        return show(args.ops, args.scope, args.window, args.bucket, args.json)
    if args.command == "shadow":
        from sidecar.shadow.table import show as show_shadow

        return show_shadow(args.ops, args.route, args.days, args.json)
    if args.command == "top":
        from sidecar.top import run as top

        return top(args.ops, args.interval, args.once)
    if args.command in ("worker", "jobs"):
        from sidecar.jobs import cli as jobs_cli

        return jobs_cli.run(args)
    return serve(args)


def check(folder: Path, fmt: str = "text") -> int:
    try:
        policy = load_folder(folder)
    except PolicyInvalid as exc:
        if fmt == "json":
            problems = [
                {"file": p.file, "line": p.line, "message": p.message} for p in exc.problems
            ]
            print(json.dumps({"ok": False, "version": None, "problems": problems}))
            return 1
        for problem in exc.problems:
            print(problem)
        return 1
    if fmt == "json":
        print(json.dumps({"ok": True, "version": policy.version, "problems": []}))
        return 0
    print(
        f"ok: {len(policy.files)} file(s), {len(policy.routes)} route(s), "
        f"{len(policy.models)} model(s), {len(policy.providers)} provider(s); "
        f"version {policy.version}"
    )
    return 0


def diff(old: Path, new: Path, fmt: str) -> int:
    """Exit 0 with the changes (none is a result too), 2 when a folder cannot be read."""
    from sidecar.policy import diff as policy_diff

    try:
        result = policy_diff.compare(old, new)
    except PolicyInvalid as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 2
    if fmt == "json":
        print(json.dumps(policy_diff.as_json(result), indent=2))
    else:
        print(policy_diff.text(result))
    return 0


def serve(args: argparse.Namespace) -> int:
    from sidecar.app import Settings, Sidecar  # the server stack is not needed by `check`

    if not launch.policies_given("serve", args.policies):
        return 2
    settings = Settings(
        policies=args.policies,
        host=args.host,
        port=args.port,
        ops_host=args.ops_host,
        ops_port=args.ops_port,
        drain_timeout=args.drain_timeout,
        idle_timeout=args.idle_timeout,
        body_timeout=args.body_timeout,
        ops_idle_timeout=args.ops_idle_timeout,
        ops_max_connections=args.ops_max_connections,
        state_dir=args.state_dir,
        usage_token=os.environ.get("SIDECAR_USAGE_TOKEN", ""),
    )
    launch.run(Sidecar(settings).run_until_signalled(), args.log_level)
    return 0
