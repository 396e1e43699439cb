"""What `llm-sidecar diff` says about labelled examples files (*.jsonl, a tier
classifier's): how many there are per tier, and which were added, removed or given another
tier. Lines that do not read are skipped here; `check` reports them."""

from __future__ import annotations

from collections import Counter
from typing import Any

import orjson

from sidecar.policy.source import SourceFile

SECTION = "examples"
_SHOWN = 10  # texts listed per kind of change; the rest are counted


def changes(old: list[SourceFile], new: list[SourceFile]) -> list[tuple[str, str, list[Any]]]:
    """(file, added | removed | changed, [(field, old, new), ...]) per examples file."""
    before = {f.name: _labels(f) for f in old}
    after = {f.name: _labels(f) for f in new}
    out: list[tuple[str, str, list[Any]]] = []
    for name in [*before, *(n for n in after if n not in before)]:
        a, b = before.get(name), after.get(name)
        if a == b:
            continue
        fields: list[Any] = [("examples", len(a) if a is not None else None, len(b or {}))]
        fields.append(("tiers", _per_tier(a or {}), _per_tier(b or {})))
        if a is not None and b is not None:
            moved = [f"{t} ({a[t]} → {b[t]})" for t in a if t in b and a[t] != b[t]]
            for label, texts in (
                ("added", [t for t in b if t not in a]),
                ("removed", [t for t in a if t not in b]),
                ("relabelled", moved),
            ):
                if texts:
                    fields.append((label, [], _few(texts)))
        change = "added" if a is None else "removed" if b is None else "changed"
        out.append((name, change, fields if b is not None else []))
    return out


def _labels(source: SourceFile) -> dict[str, str]:
    labels: dict[str, str] = {}
    for raw in source.text.splitlines():
        try:
            item = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        if isinstance(item, dict) and isinstance(item.get("text"), str):
            labels.setdefault(item["text"], str(item.get("tier")))
    return labels


def _per_tier(labels: dict[str, str]) -> dict[str, int]:
    return dict(sorted(Counter(labels.values()).items()))


def _few(texts: list[str]) -> list[str]:
    shown = [t if len(t) <= 60 else t[:57] + "..." for t in texts[:_SHOWN]]
    return shown + ([f"... and {len(texts) - _SHOWN} more"] if len(texts) > _SHOWN else [])
