"""`llm-sidecar usage`: the ops port's /usage as a table for people."""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from sidecar.stores.state import LEVERS

COUNTS = ("requests", "input_tokens", "output_tokens", "cached_tokens")
MONEY = ("cost_usd", "baseline_usd", "saved_usd")


def read_ops(ops: str, path: str, query: dict[str, str], command: str) -> Any:
    """GET a protected ops endpoint (with `SIDECAR_USAGE_TOKEN`, when set) as JSON; None
    after saying on stderr why not."""
    request = urllib.request.Request(f"{ops.rstrip('/')}{path}?{urllib.parse.urlencode(query)}")
    token = os.environ.get("SIDECAR_USAGE_TOKEN")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)
    except urllib.error.HTTPError as exc:
        detail = json.loads(exc.read() or b"{}").get("error", {}).get("message", exc.reason)
        print(f"llm-sidecar {command}: {exc.code} {detail}", file=sys.stderr)
    except (urllib.error.URLError, OSError) as exc:
        print(f"llm-sidecar {command}: cannot reach {ops} ({exc})", file=sys.stderr)
    return None


def show(ops: str, scope: str, window: str, bucket: str | None, as_json: bool) -> int:
    query = {"scope": scope, "window": window, **({"bucket": bucket} if bucket else {})}
    body = read_ops(ops, "/usage", query, "usage")
    if body is None:
        return 1
    if as_json:
        print(json.dumps(body, indent=2))
        return 0
    print(table(body))
    return 0


def table(body: dict[str, Any]) -> str:
    """One line per scope value. Savings by lever get a column each, for the levers that
    moved in this window (a negative one cost more than it saved)."""
    levers = [
        lever
        for lever in LEVERS
        if any((row.get("saved_by_lever") or {}).get(lever) for row in body["rows"])
    ]
    header = ["value", *COUNTS, *MONEY, *(f"saved_{lever}" for lever in levers)]
    header.append("budget_remaining_usd")
    rows = [header]
    for row in body["rows"]:
        budgets = row.get("budgets") or []
        remaining = min((b["remaining_usd"] for b in budgets), default=None)
        rows.append(
            [
                str(row["value"]),
                *(f"{row[c]:.0f}" for c in COUNTS),
                *(f"{row[c]:.6f}" for c in MONEY),
                *(f"{row['saved_by_lever'][lever]:.6f}" for lever in levers),
                "-" if remaining is None else f"{remaining:.6f}",
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    title = f"{body['scope']} usage, {body['window']} {body['bucket']}"
    lines = [title, ""]
    for n, r in enumerate(rows):
        lines.append(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    if len(rows) == 1:
        lines.append("(no usage recorded in this window)")
    return "\n".join(lines)
