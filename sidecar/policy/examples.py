"""Read a tier classifier's labelled examples: a JSONL file in the policy folder, one
`{"text": ..., "tier": ...}` object a line.

The file comes from the folder walk (policy/folder.py, bounded like every policy file) and
is checked here as strictly as YAML is: every bad line is a problem at its line, so
`llm-sidecar check` names it; a policy whose examples do not read does not load.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import orjson

from sidecar.policy.problems import Problem
from sidecar.policy.source import SourceFile

MAX_EXAMPLES = 20_000
MAX_TEXT = 4_000  # characters: an example is a request's last user message, not a document


@dataclass(frozen=True, slots=True)
class Examples:
    texts: tuple[str, ...]
    labels: tuple[int, ...]  # tier ranks


def read_examples(
    source: SourceFile, tiers: Mapping[str, int], problems: list[Problem]
) -> Examples | None:
    """The examples of `source` labelled with `tiers` (name → rank); None after adding
    what is wrong to `problems`. The same text twice with one tier counts once; with two
    tiers it is a problem (the vote would be a coin toss)."""
    found = len(problems)
    seen: dict[str, tuple[int, int]] = {}  # text → (rank, line)
    texts: list[str] = []
    labels: list[int] = []

    def problem(line: int, message: str) -> None:
        problems.append(Problem(source.name, line, message))

    for number, raw in enumerate(source.text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            item = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            problem(number, f"not JSON: {str(exc).split(':', 1)[0]}")
            continue
        if not isinstance(item, dict):
            problem(number, 'an example is an object: {"text": ..., "tier": ...}')
            continue
        unknown = sorted(set(item) - {"text", "tier"})
        if unknown:
            problem(number, f"unknown key '{unknown[0]}': an example has only text and tier")
            continue
        text, tier = item.get("text"), item.get("tier")
        if not isinstance(text, str) or not text.strip():
            problem(number, "'text' must be a non-empty string")
            continue
        if len(text) > MAX_TEXT:
            problem(number, f"'text' is longer than {MAX_TEXT} characters")
            continue
        if not isinstance(tier, str) or tier not in tiers:
            known = ", ".join(tiers)
            problem(number, f"unknown tier {orjson.dumps(tier).decode()} (tiers: {known})")
            continue
        rank = tiers[tier]
        first = seen.get(text)
        if first is not None:
            if first[0] != rank:
                problem(number, f"the same text as line {first[1]}, with another tier")
            continue
        seen[text] = (rank, number)
        texts.append(text)
        labels.append(rank)
        if len(texts) > MAX_EXAMPLES:
            problem(number, f"more than {MAX_EXAMPLES} examples")
            return None
    if len(problems) > found:
        return None
    if not texts:
        problem(1, "no examples: write one JSON object a line")
        return None
    return Examples(tuple(texts), tuple(labels))
