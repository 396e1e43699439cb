"""A named policy entry with where it was written, what was left out of the cross-checks,
and small readers of raw values shared by the compilers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sidecar.policy.durations import parse_duration
from sidecar.policy.problems import Problem
from sidecar.policy.schema import SECTIONS, SINGLE_SECTIONS
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


class LeftOut:
    """What failed its structure check, taken out of the documents before they merge, so
    cross-checks only see entries of the right shape; and which references that leaves
    unanswerable."""

    def __init__(self, *, partial: bool) -> None:
        self.partial = partial  # a file could not be read at all
        self.names: dict[str, set[str]] = {}  # section -> names left out; "*": all of it

    def remove(self, doc: Document, path: tuple[Any, ...]) -> None:
        section = path[0] if path else None
        if section not in doc.data:
            return
        if section in SINGLE_SECTIONS or len(path) == 1 or not isinstance(doc.data[section], dict):
            del doc.data[section]  # an unknown section, or one of the wrong type
            if section in SECTIONS or section in SINGLE_SECTIONS:
                self.names.setdefault(section, set()).add("*")
            return
        doc.data[section].pop(path[1], None)
        self.names.setdefault(section, set()).add(path[1])

    def excuses(self, section: str, name: str) -> bool:
        """True when `name` may be missing from `section` only because it was left out."""
        left = self.names.get(section, ())
        return self.partial or "*" in left or name in left


def values(v: str | list[str]) -> frozenset[str]:
    return frozenset([v] if isinstance(v, str) else v)


def seconds(text: str | None, default: float) -> float:
    return default if text is None else parse_duration(text)


def names(d: Mapping[str, Any]) -> str:
    return ", ".join(sorted(d)) or "none"
