"""Do two answers to one request agree?

- exact: the same text, whitespace aside (or the same tool calls);
- JSON-equal: on structured output (the route checks a schema, the request asks for JSON,
  or it forces a tool call), both parse to the same value: key order and spacing aside;
- semantic: when the trial names an embedding model, the cosine similarity of the two
  texts' embeddings, agreement from the trial's `similarity` on.

A pair agrees by the strongest method that applies: structured output by JSON-equality
(two objects that differ in one field disagree, however alike they read); other text
when it is exact, or else semantically close enough.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from sidecar.pipeline.enforce import forced_tool
from sidecar.pipeline.validate import NOTHING, parse_json


@dataclass(frozen=True, slots=True)
class Agreement:
    agree: bool
    exact: bool
    json_equal: bool | None  # None: not structured output (or one side is not JSON)
    similarity: float | None  # None: no embedding model, or the embedding failed


@dataclass(frozen=True, slots=True)
class Said:
    """What is compared of one answer."""

    text: str  # its text, or its tool calls (names and arguments) as JSON text
    value: Any  # its JSON value (tool calls: names and parsed arguments); NOTHING if none


def said(answer: Mapping[str, Any], is_structured: bool) -> Said:
    """`value` is read only for structured output (JSON is looked for inside prose too)."""
    try:
        message = answer["choices"][0].get("message") or {}
    except (KeyError, IndexError, TypeError, AttributeError):
        return Said("", NOTHING)
    calls = message.get("tool_calls")
    if calls:
        pairs = [(c.get("function") or {}) for c in calls if isinstance(c, dict)]
        named = [[f.get("name"), f.get("arguments")] for f in pairs]
        value: Any = NOTHING
        if is_structured:
            parsed = [[name, parse_json(str(args or ""), True)[0]] for name, args in named]
            value = NOTHING if any(v is NOTHING for _, v in parsed) else parsed
        return Said(orjson.dumps(named).decode(), value)
    content = message.get("content")
    text = content if isinstance(content, str) else ""
    return Said(text, parse_json(text, True)[0] if is_structured else NOTHING)


def structured(request: Mapping[str, Any], route_checks: bool) -> bool:
    fmt = request.get("response_format") or {}
    return (
        route_checks
        or fmt.get("type") in ("json_object", "json_schema")
        or forced_tool(request) is not None
    )


def compare(
    primary: Said, candidate: Said, is_structured: bool, similarity: float | None, threshold: float
) -> Agreement:
    exact = " ".join(primary.text.split()) == " ".join(candidate.text.split())
    json_equal: bool | None = None
    if is_structured and primary.value is not NOTHING:
        # The primary is JSON: the candidate must be the same JSON.
        json_equal = candidate.value is not NOTHING and primary.value == candidate.value
    if json_equal is not None:
        agree = json_equal
    else:
        agree = exact or (similarity is not None and similarity >= threshold)
    return Agreement(agree, exact, json_equal, similarity)


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=False))
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / norm if norm else 0.0
