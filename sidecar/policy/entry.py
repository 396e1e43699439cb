"""A named policy entry with where it was written, and small readers of raw values
shared by the compilers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sidecar.policy.durations import parse_duration
from sidecar.policy.problems import Problem
from sidecar.policy.source import Document


@dataclass(frozen=True, slots=True)
class Entry:
    """A named entry of a section, with where it was written."""

    name: str
    body: dict[str, Any]
    doc: Document
    path: tuple[str, str]

    def line(self, *sub: str | int) -> int:
        return self.doc.line_of((*self.path, *sub))

    def problem(self, message: str, *sub: str | int) -> Problem:
        return Problem(self.doc.file, self.line(*sub), message)


def values(v: str | list[str]) -> frozenset[str]:
    return frozenset([v] if isinstance(v, str) else v)


def seconds(text: str | None, default: float) -> float:
    return default if text is None else parse_duration(text)


def names(d: Mapping[str, Any]) -> str:
    return ", ".join(sorted(d)) or "none"
