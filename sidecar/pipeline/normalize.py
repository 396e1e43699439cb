"""Normalising a prompt without changing what it says (`prompt.normalize`, off by default).

- `whitespace`: in system, user and assistant text, outside code (fenced blocks and inline
  spans), runs of spaces and tabs between words become one space, trailing spaces go, and
  three or more line breaks become two. Indentation at the start of a line is kept (it
  nests lists), and tool messages and tool call arguments are left alone (their spaces may
  be data).
- `duplicate_system`: a system message equal to the one right before it is dropped (apps
  that assemble prompts from parts send the same instructions twice).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sidecar.pipeline.trim import SYSTEM_ROLES, message_chars
from sidecar.tokens import estimate_message

_CODE = re.compile(r"(```.*?```|~~~.*?~~~|`[^`\n]+`)", re.S)
_RUNS = re.compile(r"(?<=\S)[ \t]{2,}(?=\S)")
_TRAILING = re.compile(r"[ \t]+(?=\n)")
_BLANK_LINES = re.compile(r"\n{3,}")
_TEXT_ROLES = frozenset({"system", "developer", "user", "assistant"})


@dataclass(frozen=True, slots=True)
class Normalized:
    messages: list[Any]
    dropped: int  # duplicate system messages removed
    tokens: int  # estimated tokens removed
    chars: int  # characters removed


def collapse(text: str) -> str:
    parts = _CODE.split(text)
    for i in range(0, len(parts), 2):  # the even parts are outside code
        part = _TRAILING.sub("", _RUNS.sub(" ", parts[i]))
        if i == len(parts) - 1:
            part = part.rstrip(" \t")
        parts[i] = _BLANK_LINES.sub("\n\n", part)
    return "".join(parts)


def normalize(messages: Sequence[Any], whitespace: bool, duplicates: bool) -> Normalized | None:
    """The messages normalised (new where they changed), or None when nothing changed."""
    out: list[Any] = []
    dropped = 0
    before = after = 0
    changed = False
    previous: Any = None
    for m in messages:
        if not isinstance(m, dict):
            out.append(m)
            previous = m
            continue
        role = m.get("role")
        repeated = m == previous
        previous = m
        if duplicates and role in SYSTEM_ROLES and repeated:
            dropped += 1
            before += estimate_message(m)
            changed = True
            continue
        if whitespace and role in _TEXT_ROLES:
            tidy = _collapsed(m)
            if tidy is not m:
                before += estimate_message(m)
                after += estimate_message(tidy)
                changed = True
                m = tidy
        out.append(m)
    if not changed:
        return None
    chars = sum(message_chars(m) for m in messages) - sum(message_chars(m) for m in out)
    return Normalized(out, dropped, before - after, chars)


def _collapsed(m: dict[str, Any]) -> dict[str, Any]:
    content = m.get("content")
    if isinstance(content, str):
        tidy = collapse(content)
        return m if tidy == content else {**m, "content": tidy}
    if not isinstance(content, list):
        return m
    parts = []
    for part in content:
        if (
            isinstance(part, dict)
            and part.get("type") == "text"
            and isinstance(part.get("text"), str)
        ):
            text = collapse(part["text"])
            if text != part["text"]:
                part = {**part, "text": text}
        parts.append(part)
    return (
        m if all(a is b for a, b in zip(parts, content, strict=True)) else {**m, "content": parts}
    )
