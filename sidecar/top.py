"""`llm-sidecar top`: a live view of a running sidecar, like `htop`, read from the ops
port's `/stats` (the process's cumulative metrics, histograms with their buckets).

Each refresh compares two polls: requests/s, error rate, retries and p50/p95/p99 describe
the interval between them. Percentiles come from the difference of the histograms' bucket
counts, interpolated linearly inside the bucket that holds the rank (what Prometheus'
`histogram_quantile` does), never from averages. Tokens, cost and savings are totals since
the sidecar started. `--once` prints one snapshot covering everything since the start.

Standard library only (ANSI clear and redraw): the view is one table of text, and a
dashboard tool should not add a runtime dependency to a sidecar's image.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

DURATION = "gen_ai.client.operation.duration"
TOKENS = "gen_ai.client.token.usage"
FIRST_CHUNK = "gen_ai.client.operation.time_to_first_chunk"
COST = "sidecar.cost"
BASELINE, SAVED = "sidecar.cost.baseline", "sidecar.cost.saved"
QUEUE_WAIT = "sidecar.queue.wait"
ROUTE = "sidecar.route"
MODEL, TIER = "sidecar.model", "sidecar.tier"
USER = "sidecar.user"
SIGNALS, OUTPUTS = "sidecar.quality.signals", "sidecar.output.validations"
FEEDBACK_SCORE, SHADOW_PAIRS = "sidecar.feedback.score", "sidecar.shadow.comparisons"
MAX_ROWS = 12  # routes and users shown, busiest first
SPEND, REMAINING = "sidecar.budget.spend", "sidecar.budget.remaining"
# Current values, or sums that may go down: never differenced.
GAUGES = frozenset({"sidecar.circuit.state", SPEND, REMAINING, SAVED, "sidecar.shadow.running"})

_CLEAR = "\x1b[H\x1b[2J"
_ALT_ON, _ALT_OFF = "\x1b[?1049h\x1b[?25l", "\x1b[?25h\x1b[?1049l"


# -- histograms ----------------------------------------------------------------------------


@dataclass
class Histogram:
    bounds: tuple[float, ...] = ()
    buckets: list[int] = field(default_factory=list)  # len(bounds) + 1; the last is > bounds[-1]

    @property
    def count(self) -> int:
        return sum(self.buckets)

    def add(self, bounds: Iterable[float], buckets: Iterable[int], sign: int = 1) -> None:
        bounds = tuple(bounds)
        if not self.buckets:
            self.bounds, self.buckets = bounds, [0] * (len(bounds) + 1)
        if bounds != self.bounds:
            return  # another layout (a changed view): not comparable, leave it out
        for i, n in enumerate(buckets):
            self.buckets[i] += sign * n

    def quantile(self, q: float) -> float | None:
        """The q-quantile, interpolated within its bucket; None without observations.
        Ranks beyond the last bound report the last bound (there is no upper edge)."""
        total = self.count
        if total <= 0:
            return None
        rank = q * total
        seen = 0
        for i, n in enumerate(self.buckets):
            if n > 0 and seen + n >= rank:
                if i == len(self.bounds):
                    return self.bounds[-1] if self.bounds else None
                lower = self.bounds[i - 1] if i > 0 else 0.0
                return lower + (self.bounds[i] - lower) * (rank - seen) / n
            seen += n
        return self.bounds[-1] if self.bounds else None


# -- snapshots -----------------------------------------------------------------------------


def _key(attributes: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, str(v)) for k, v in attributes.items()))


def window(current: dict[str, Any], previous: dict[str, Any] | None) -> dict[str, Any]:
    """`current`'s metrics minus `previous`'s, point by point (same attributes). A point
    that shrank means the sidecar restarted: its whole current value counts."""
    if previous is None:
        return current["metrics"]
    out: dict[str, Any] = {}
    for name, metric in current["metrics"].items():
        before = {
            _key(p["attributes"]): p for p in previous["metrics"].get(name, {}).get("points", [])
        }
        points = []
        for p in metric["points"]:
            old = before.get(_key(p["attributes"]))
            if "buckets" in p:
                q = dict(p)
                if (
                    old is not None
                    and old.get("count", 0) <= p["count"]
                    and (old["bounds"] == p["bounds"])
                ):
                    pairs = zip(p["buckets"], old["buckets"], strict=True)
                    q["buckets"] = [a - b for a, b in pairs]
                    q["count"] = p["count"] - old["count"]
                    q["sum"] = p["sum"] - old["sum"]
                points.append(q)
            else:
                value = p["value"]
                if old is not None and old["value"] <= value and name not in GAUGES:
                    value -= old["value"]
                points.append({**p, "value": value})
        out[name] = {**metric, "points": points}
    return out


def points(metrics: Mapping[str, Any], name: str) -> list[dict[str, Any]]:
    return list(metrics.get(name, {}).get("points", []))


def histogram(metrics: Mapping[str, Any], name: str, **where: str) -> Histogram:
    h = Histogram()
    for p in points(metrics, name):
        if all(str(p["attributes"].get(k)) == v for k, v in where.items()):
            h.add(p["bounds"], p["buckets"])
    return h


def total(metrics: Mapping[str, Any], name: str, by: str | None = None) -> dict[str, float]:
    """Counter values (or histogram sums) added up per value of attribute `by`."""
    out: dict[str, float] = {}
    for p in points(metrics, name):
        key = str(p["attributes"].get(by, "")) if by else ""
        out[key] = out.get(key, 0.0) + (p["sum"] if "buckets" in p else p["value"])
    return out


# -- the view ------------------------------------------------------------------------------


def ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 0.001:
        return f"{seconds * 1000:.2f}ms"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    return f"{seconds:.2f}s"


def _num(n: float) -> str:
    return f"{n:,.0f}"


def aligned(header: list[str], rows: list[list[str]]) -> list[str]:
    """Columns padded to their widest cell: the first to the left, the others right."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for r in [header, *rows]:
        pairs = enumerate(zip(r, widths, strict=True))
        cells = [c.rjust(w) if i else c.ljust(w) for i, (c, w) in pairs]
        lines.append("  ".join(cells).rstrip())
    return lines


def render(
    current: dict[str, Any], previous: dict[str, Any] | None, ops: str, interval: float | None
) -> str:
    now = current["metrics"]
    win = window(current, previous)
    since = previous["at"] if previous else current.get("started_at", current["at"])
    seconds = max(current["at"] - since, 1e-9)
    span = f"last {seconds:.1f}s" if previous else f"since start ({seconds:.0f}s)"

    requests = histogram(win, DURATION)
    failed = sum(p["count"] for p in points(win, DURATION) if "error.type" in p["attributes"])
    err = f"{100 * failed / requests.count:.1f}%" if requests.count else "-"
    retries = sum(total(win, "sidecar.retries").values())
    fallbacks = sum(total(win, "sidecar.fallbacks").values())
    rejected = sum(total(win, "sidecar.ratelimit.rejections").values())
    queued_now = sum((current.get("queues") or {}).values())
    first_chunk = histogram(win, FIRST_CHUNK)
    lookups = total(win, "sidecar.cache.lookups", by="result")
    found = lookups.get("hit", 0) + lookups.get("semantic-hit", 0)
    looked = found + lookups.get("miss", 0)  # a bypass looked nothing up
    hits = f"{100 * found / looked:.0f}% of {_num(looked)}" if looked else "-"
    saved = sum(total(win, "sidecar.cache.saved").values())
    outputs = total(win, "sidecar.output.validations", by="sidecar.output")

    policy = str(current.get("policy_version") or "-")[:12]
    every = f"every {interval:g}s · " if interval else ""
    clock = time.strftime("%H:%M:%S", time.localtime(current["at"]))
    lines = [
        f"llm-sidecar top · {ops} · policy {policy} · {every}{clock}   [{span}]",
        "",
        f"requests  {requests.count / seconds:.1f}/s ({_num(requests.count)})   errors {err}"
        f"   retries {_num(retries)}   fallbacks {_num(fallbacks)}"
        f"   rate-limited {_num(rejected)}   queued now {queued_now}",
        f"latency   p50 {ms(requests.quantile(0.5))}   p95 {ms(requests.quantile(0.95))}"
        f"   p99 {ms(requests.quantile(0.99))}      first chunk p50 {ms(first_chunk.quantile(0.5))}"
        f"   p95 {ms(first_chunk.quantile(0.95))}",
        f"cache     hits {hits} (semantic {_num(lookups.get('semantic-hit', 0))})"
        f"   bypassed {_num(lookups.get('bypass', 0))}"
        f"   ineligible {_num(lookups.get('ineligible', 0))}   saved {saved:.6f} USD",
        "outputs   " + (", ".join(f"{k} {_num(v)}" for k, v in sorted(outputs.items())) or "-"),
        _tiers(win),
        _quality_line(win),
        _savings(now),
        "",
    ]

    # Per route: rates and latency over the window; tokens and cost since the start.
    routes = sorted(
        {str(p["attributes"].get(ROUTE, "(none)")) for p in points(now, DURATION)},
        key=lambda r: -histogram(now, DURATION, **{ROUTE: r}).count,
    )
    tokens_in = _by(now, TOKENS, ROUTE, "input")
    tokens_out = _by(now, TOKENS, ROUTE, "output")
    cost = total(now, COST, by=ROUTE)
    saved = total(now, SAVED, by=ROUTE)
    rows = []
    for route in routes[:MAX_ROWS]:
        h = histogram(win, DURATION, **{ROUTE: route})
        bad = sum(
            p["count"]
            for p in points(win, DURATION)
            if str(p["attributes"].get(ROUTE)) == route and "error.type" in p["attributes"]
        )
        rows.append(
            [
                route,
                f"{h.count / seconds:.1f}",
                f"{100 * bad / h.count:.1f}%" if h.count else "-",
                ms(h.quantile(0.5)),
                ms(h.quantile(0.95)),
                ms(h.quantile(0.99)),
                _num(histogram(now, DURATION, **{ROUTE: route}).count),
                _num(tokens_in.get(route, 0)),
                _num(tokens_out.get(route, 0)),
                f"{cost.get(route, 0.0):.6f}",
                f"{saved.get(route, 0.0):.6f}",
            ]
        )
    header = ["ROUTE", "REQ/S", "ERR%", "P50", "P95", "P99", "REQUESTS", "TOK IN", "TOK OUT"]
    header += ["COST USD", "SAVED USD"]
    lines += aligned(header, rows) if rows else ["(no requests yet)"]

    users = sorted(
        {str(p["attributes"][USER]) for p in points(now, TOKENS) if USER in p["attributes"]}
    )
    if users:
        u_in, u_out = _by(now, TOKENS, USER, "input"), _by(now, TOKENS, USER, "output")
        u_cost = total(now, COST, by=USER)
        users.sort(key=lambda u: -(u_in.get(u, 0) + u_out.get(u, 0)))
        rows = [
            [u, _num(u_in.get(u, 0)), _num(u_out.get(u, 0)), f"{u_cost.get(u, 0.0):.6f}"]
            for u in users[:MAX_ROWS]
        ]
        lines += ["", *aligned(["USER", "TOK IN", "TOK OUT", "COST USD"], rows)]

    lines += _quality_table(now)

    circuits = current.get("circuits") or {}
    if circuits:
        rows = [
            [name, c["state"], str(c["consecutive_failures"]), str(c["trips"])]
            for name, c in sorted(circuits.items())
        ]
        lines += ["", *aligned(["CIRCUIT", "STATE", "FAILURES", "TRIPS"], rows)]

    left = {_budget(p["attributes"]): p["value"] for p in points(now, REMAINING)}
    if left:
        spent = {_budget(p["attributes"]): p["value"] for p in points(now, SPEND)}
        rows = [
            [*key, f"{spent.get(key, 0.0):.6f}", f"{value:.6f}"]
            for key, value in sorted(left.items(), key=lambda kv: kv[1])[:MAX_ROWS]
        ]
        header = ["BUDGET", "SCOPE", "WINDOW", "SPENT USD", "LEFT USD"]
        lines += ["", *aligned(header, rows)]

    limits = sorted(
        {str(p["attributes"].get("sidecar.limit")) for p in points(now, QUEUE_WAIT)}
        | set(current.get("queues") or {})
    )
    if limits:
        waiting = current.get("queues") or {}
        rows = []
        for limit in limits:
            h = histogram(win, QUEUE_WAIT, **{"sidecar.limit": limit})
            now_waiting = sum(n for k, n in waiting.items() if k.split(":", 1)[0] == limit)
            rows.append([limit, str(now_waiting), _num(h.count), ms(h.quantile(0.95))])
        lines += ["", *aligned(["QUEUE", "WAITING", "WAITED", "WAIT P95"], rows)]
    return "\n".join(lines)


def _savings(metrics: Mapping[str, Any]) -> str:
    """The savings ledger since the start: what the requests would have cost at their
    routes' baselines, what was saved, and by which lever (a negative one cost more)."""
    would = sum(total(metrics, BASELINE).values())
    levers = {k: v for k, v in total(metrics, SAVED, by="sidecar.lever").items() if v}
    saved = sum(levers.values())
    share = f" ({100 * saved / would:.1f}%)" if would else ""
    by = "   ".join(f"{k} {v:.6f}" for k, v in sorted(levers.items(), key=lambda kv: -kv[1]))
    return f"savings   would have cost {would:.6f} USD, saved {saved:.6f}{share}   {by}".rstrip()


def _tiers(metrics: Mapping[str, Any]) -> str:
    """Model selection over the window: requests answered per tier, the share of each
    checked tier's answers its cascade accepted, the checks that failed, and what the
    rejected answers cost."""
    answered = total(metrics, "sidecar.selection.requests", by="sidecar.tier")
    if not any(answered.values()):
        return "tiers     -"
    outcomes: dict[str, dict[str, float]] = {}
    for p in points(metrics, "sidecar.cascade.answers"):
        a = p["attributes"]
        tier = outcomes.setdefault(str(a.get("sidecar.tier")), {})
        tier[str(a.get("outcome"))] = tier.get(str(a.get("outcome")), 0.0) + p["value"]
    parts = []
    for tier, n in sorted(answered.items(), key=lambda kv: -kv[1]):
        seen = outcomes.get(tier, {})
        judged = seen.get("accepted", 0.0) + seen.get("escalated", 0.0)
        rate = f" (accepted {100 * seen.get('accepted', 0.0) / judged:.0f}%)" if judged else ""
        parts.append(f"{tier} {_num(n)}{rate}")
    failed: dict[str, float] = {}
    for p in points(metrics, "sidecar.cascade.checks"):
        if p["attributes"].get("result") == "fail":
            check = str(p["attributes"].get("sidecar.check"))
            failed[check] = failed.get(check, 0.0) + p["value"]
    cost = sum(total(metrics, "sidecar.cascade.escalation.cost").values())
    escalated = sum(o.get("escalated", 0.0) for o in outcomes.values())
    line = "tiers     " + "   ".join(parts) + f"   escalations {_num(escalated)}"
    if escalated:
        reasons = ", ".join(
            f"{k} {_num(v)}" for k, v in sorted(failed.items(), key=lambda kv: -kv[1])
        )
        line += f" ({reasons}) cost {cost:.6f} USD"
    return line


def _quality_line(metrics: Mapping[str, Any]) -> str:
    """Over the window: what the app could see was wrong, what it said, how shadows agree."""
    found = total(metrics, SIGNALS, by="sidecar.signal")
    scores = histogram(metrics, FEEDBACK_SCORE)
    mean = sum(total(metrics, FEEDBACK_SCORE).values()) / scores.count if scores.count else None
    pairs = total(metrics, SHADOW_PAIRS, by="sidecar.agreement")
    compared = pairs.get("agree", 0) + pairs.get("disagree", 0)
    shadow = (
        f"{_num(compared)} compared, {100 * pairs.get('agree', 0) / compared:.1f}% agree"
        if compared
        else "-"
    )
    return (
        f"quality   truncated {_num(found.get('truncated', 0))}   refused "
        f"{_num(found.get('refusal', 0))}   empty {_num(found.get('empty', 0))}   feedback "
        f"{_num(scores.count)}"
        + (f" (mean {mean:.2f})" if mean is not None else "")
        + f"   shadow {shadow}"
    )


def _quality_table(metrics: Mapping[str, Any]) -> list[str]:
    """Since the start, per route, model and tier: answers, their validity, what was wrong
    with them (as shares of the answers), and the app's feedback."""

    def by(name: str, attr: str | None = None) -> dict[tuple[str, ...], list[float]]:
        """[count, sum] per (route, model, tier[, attr])."""
        out: dict[tuple[str, ...], list[float]] = {}
        for p in points(metrics, name):
            a = p["attributes"]
            key: tuple[str, ...] = (str(a.get(ROUTE)), str(a.get(MODEL)), str(a.get(TIER, "-")))
            if attr is not None:
                key += (str(a.get(attr)),)
            found = out.setdefault(key, [0.0, 0.0])
            found[0] += p["count"] if "buckets" in p else p["value"]
            found[1] += p["sum"] if "buckets" in p else p["value"]
        return out

    answers = {k: v[0] for k, v in by(DURATION).items() if k[1] != "None"}
    signals, outputs = by(SIGNALS, "sidecar.signal"), by(OUTPUTS, "sidecar.output")
    feedback = by(FEEDBACK_SCORE)
    rows = []
    for key, n in sorted(answers.items(), key=lambda kv: -kv[1])[:MAX_ROWS]:
        counted = [outputs.get((*key, o), [0.0])[0] for o in ("valid", "repaired", "default")]
        shares = [
            f"{100 * signals.get((*key, signal), [0.0])[0] / n:.1f}%"
            for signal in ("truncated", "refusal", "empty")
        ]
        scored, score_sum = feedback.get(key, [0.0, 0.0])
        rows.append(
            [
                *key,
                _num(n),
                *(_num(c) for c in counted),
                _num(outputs.get((*key, "rejected"), [0.0])[0]),
                *shares,
                _num(scored),
                f"{score_sum / scored:.2f}" if scored else "-",
            ]
        )
    if not rows:
        return []
    header = ["QUALITY", "MODEL", "TIER", "REQUESTS", "VALID", "REPAIRED", "DEFAULT", "422"]
    header += ["TRUNC", "REFUSED", "EMPTY", "FEEDBACK", "SCORE"]
    return ["", *aligned(header, rows)]


def _budget(attributes: Mapping[str, Any]) -> tuple[str, str, str]:
    scope = (
        f"{attributes.get('sidecar.budget.scope')} {attributes.get('sidecar.budget.scope_value')}"
    )
    return (
        str(attributes.get("sidecar.budget")),
        scope,
        str(attributes.get("sidecar.budget.window")),
    )


def _by(metrics: Mapping[str, Any], name: str, by: str, token_type: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for p in points(metrics, name):
        attrs = p["attributes"]
        if attrs.get("gen_ai.token.type") == token_type:
            key = str(attrs.get(by, "(none)"))
            out[key] = out.get(key, 0.0) + p["sum"]
    return out


# -- the loop ------------------------------------------------------------------------------


def fetch(ops: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{ops.rstrip('/')}/stats", timeout=5) as response:
        return dict(json.load(response))


def run(ops: str, interval: float, once: bool) -> int:
    if once:
        try:
            print(render(fetch(ops), None, ops, None))
        except (urllib.error.URLError, OSError, ValueError) as exc:
            print(f"llm-sidecar top: cannot read {ops}/stats ({exc})", file=sys.stderr)
            return 1
        return 0
    tty = sys.stdout.isatty()
    previous: dict[str, Any] | None = None
    if tty:
        sys.stdout.write(_ALT_ON)
    try:
        while True:
            try:
                current = fetch(ops)
                text = render(current, previous, ops, interval)
                previous = current
            except (urllib.error.URLError, OSError, ValueError) as exc:
                text = f"llm-sidecar top: cannot read {ops}/stats ({exc}); retrying"
            rows = shutil.get_terminal_size().lines
            sys.stdout.write(_CLEAR + "\n".join(text.splitlines()[: rows - 1]) + "\n")
            sys.stdout.flush()
            time.sleep(interval)
    except KeyboardInterrupt:
        return 0
    finally:
        if tty:
            sys.stdout.write(_ALT_OFF)
            sys.stdout.flush()
