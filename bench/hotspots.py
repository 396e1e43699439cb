"""Summarise a py-spy `--format raw` profile by the sidecar's own code.

A flame graph of an aiohttp server is mostly aiohttp and the event loop; what we can
change is the sidecar's code and how it calls those libraries. So each sample is charged
to its deepest frame inside `sidecar/` (with the library call made from there), which
answers "which line of ours costs what", next to the inclusive time per function.

    python bench/hotspots.py bench/results/profile-json-c64.txt [--top 15]
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OWN = str(ROOT / "sidecar") + "/"
# py-spy frames look like `function (path/to/file.py:123)`; the line may be missing.
FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^():]+?)(?::(?P<line>\d+))?\)$")

Stack = tuple[list[tuple[str, str, int]], int]  # frames root-first (func, file, line), count


def load(path: Path) -> list[Stack]:
    stacks: list[Stack] = []
    for raw in path.read_text().splitlines():
        body, _, count = raw.rpartition(" ")
        if not body or not count.isdigit():
            continue
        frames = []
        for part in body.split(";"):
            m = FRAME.match(part)
            if m:
                frames.append((m["func"], m["file"], int(m["line"] or 0)))
        stacks.append((frames, int(count)))
    return stacks


def _short(file: str, own: str) -> str:
    if file.startswith(own):
        return "sidecar/" + file.removeprefix(own)
    for marker in ("/site-packages/", "/lib/python3."):
        if marker in file:
            tail = file.split(marker, 1)[1]
            return tail.split("/", 1)[1] if marker == "/lib/python3." else tail
    return file


LOOP_RUNNERS = (("Runner.run", "asyncio/runners.py"), ("run_forever", "asyncio/base_events.py"))


def _loop_index(frames: list[tuple[str, str, int]]) -> int | None:
    """Index of the frame that runs the event loop: what is above it is start-up code
    (`<module>`, `main`, `serve`) that every sample shares, so it must not count as ours."""
    for i in range(len(frames) - 1, -1, -1):
        func, file, _ = frames[i]
        if any(func == f and file.endswith(suffix) for f, suffix in LOOP_RUNNERS):
            return i
    return None


def analyse(stacks: list[Stack], top: int = 12, own: str = OWN) -> dict[str, Any]:
    """`own`: the path prefix of the sidecar package as py-spy saw it (--full-filenames)."""

    def short(file: str) -> str:
        return _short(file, own)

    # py-spy counts threads parked in C (the default executor's, watchfiles') as busy, so
    # percentages are of the event loop thread's samples: that thread is the one that
    # serves requests, and its busy samples are the sidecar's CPU time.
    total = sum(n for frames, n in stacks if _loop_index(frames) is not None)
    other_threads = sum(n for _, n in stacks) - total
    kinds: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    deepest: Counter[str] = Counter()
    deepest_line: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    for all_frames, n in stacks:
        at = _loop_index(all_frames)
        if at is None:
            continue
        frames = all_frames[at + 1 :]
        if not frames:
            kinds["event loop itself (uvloop's C code: polling, socket I/O, C callbacks)"] += n
            leaves["(event loop, C)"] += n
            continue
        func, file, line = frames[-1]
        leaves[f"{func} ({short(file)}:{line})"] += n
        own_at = [i for i, (_, file, _) in enumerate(frames) if file.startswith(own)]
        if not own_at:
            kinds["Python outside sidecar/ frames (aiohttp protocols, parsers, callbacks)"] += n
            continue
        kinds["under a sidecar/ frame (our code and the library calls it makes)"] += n
        for name in {f"{frames[i][0]} ({short(frames[i][1])})" for i in own_at}:
            inclusive[name] += n
        i = own_at[-1]
        func, file, line = frames[i]
        callee = frames[i + 1] if i + 1 < len(frames) else None
        via = f" -> {callee[0]} ({short(callee[1])})" if callee else " (itself)"
        deepest[f"{func} ({short(file)})"] += n
        deepest_line[f"{short(file)}:{line} {func}{via}"] += n

    def pct(c: Counter[str], limit: int | None = top) -> list[tuple[str, float]]:
        return [(k, round(100 * v / total, 1)) for k, v in c.most_common(limit)] if total else []

    return {
        "samples": total,
        "other_thread_samples": other_threads,
        "where_pct": pct(kinds, None),
        "inclusive_pct": pct(inclusive),
        "deepest_own_frame_pct": pct(deepest),
        "deepest_own_line_pct": pct(deepest_line),
        "leaf_pct": pct(leaves),
    }


def under(stacks: list[Stack], name: str, top: int = 15, own: str = OWN) -> str:
    """Where the time inside one function goes: its direct callees and the leaf frames,
    as % of the samples that include it (to look inside a library call of ours)."""
    within = 0
    callees: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    for frames, n in stacks:
        at = next((i for i, f in enumerate(frames) if f[0] == name), None)
        if at is None:
            continue
        within += n
        callee = frames[at + 1] if at + 1 < len(frames) else frames[at]
        callees[f"{callee[0]} ({_short(callee[1], own)}:{callee[2]})"] += n
        leaf = frames[-1]
        leaves[f"{leaf[0]} ({_short(leaf[1], own)}:{leaf[2]})"] += n
    if not within:
        return f"  no sample includes {name}"
    out = [f"  {within} samples include {name}; its direct callees:"]
    out += [f"    {100 * v / within:5.1f}%  {k}" for k, v in callees.most_common(top)]
    out.append("  leaf frames under it:")
    out += [f"    {100 * v / within:5.1f}%  {k}" for k, v in leaves.most_common(top)]
    return "\n".join(out)


def render(report: dict[str, Any]) -> str:
    out = [
        f"  {report['samples']} samples of the event loop thread (= 100%); "
        f"{report['other_thread_samples']} samples of parked helper threads left out"
    ]
    sections = (
        ("where the time goes", "where_pct"),
        ("inclusive time per sidecar function", "inclusive_pct"),
        ("charged to the deepest sidecar frame, by line (-> the library call made there)",
         "deepest_own_line_pct"),
        ("hottest leaf frames overall", "leaf_pct"),
    )  # fmt: skip
    for title, key in sections:
        out.append(f"  {title}:")
        out += [f"    {share:5.1f}%  {name}" for name, share in report[key]]
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("profile", type=Path, help="py-spy record --format raw output")
    p.add_argument("--top", type=int, default=15)
    p.add_argument(
        "--own", default=OWN, help="path prefix of the sidecar package (default: %(default)s)"
    )
    p.add_argument(
        "--under", metavar="FUNC", help="break down one function, e.g. ClientSession._request"
    )
    args = p.parse_args()
    stacks = load(args.profile)
    if args.under:
        print(under(stacks, args.under, args.top, args.own))
    else:
        print(render(analyse(stacks, args.top, args.own)))


if __name__ == "__main__":
    main()
