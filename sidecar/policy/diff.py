"""`llm-sidecar diff OLD NEW`: what a policy change changes, entry by entry, for PR review.

A reviewer of a GitOps pull request sees a text diff of YAML files; this says what it means:
which routes, models, providers, limits and budgets were added, removed or changed, and how
(`targets: [a, b] → [b]`), with the entries merged across files by name as the loader merges
them — so moving a route to another file, reformatting or editing comments is no change.

Values are compared as written: `${NAME}` references stay references (the environment is never
read, so no key can be printed), and a provider key or Redis URL written out in full is shown
as `<redacted>`. Only YAML is read here; `llm-sidecar check` validates.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sidecar.policy.diff_examples import SECTION as EXAMPLES
from sidecar.policy.diff_examples import changes as examples_changes
from sidecar.policy.folder import FolderRead, read_folder
from sidecar.policy.problems import PolicyInvalid, Problem
from sidecar.policy.schema import SECTIONS, SINGLE_SECTIONS
from sidecar.policy.source import SourceFile, parse

ORDER = (*SECTIONS, *SINGLE_SECTIONS)
# Fields that may hold a credential: shown only when they are `${NAME}` references.
_SECRET_FIELDS = {
    ("providers", "api_key"),
    ("providers", "headers"),
    ("state", "url"),
    ("cache", "url"),
}
_ONLY_REFERENCES = re.compile(r"^(\$\{[A-Za-z_][A-Za-z0-9_]*(:-[^}]*)?\})+$")
_URL_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")
REDACTED = "<redacted>"


class _Unset:
    def __repr__(self) -> str:
        return "(unset)"


UNSET: Any = _Unset()


@dataclass(frozen=True, slots=True)
class FieldChange:
    path: str  # dotted, inside the entry: `retry.attempts`
    old: Any  # UNSET when the field was not written
    new: Any


@dataclass(frozen=True, slots=True)
class EntryChange:
    section: str
    name: str
    change: str  # added | removed | changed
    location: str  # FILE:LINE, in the new folder (the old one for a removed entry)
    fields: tuple[FieldChange, ...]
    used_by: tuple[str, ...] = ()  # entries of the new policy that refer to this one


@dataclass(frozen=True, slots=True)
class PolicyDiff:
    old: str
    new: str
    old_version: str
    new_version: str
    changes: tuple[EntryChange, ...] = field(default=())


@dataclass(frozen=True, slots=True)
class _Entry:
    body: Any
    location: str


def compare(old: Path, new: Path) -> PolicyDiff:
    """Raises PolicyInvalid when a folder is missing or a file is not readable YAML."""
    old_read, new_read = _read(old), _read(new)
    old_files, new_files = old_read.files, new_read.files
    before, after = _entries(old_files), _entries(new_files)
    changes = []
    for section in ORDER:
        a, b = before[section], after[section]
        for name in [*a, *(n for n in b if n not in a)]:
            change = _entry_change(section, name, a.get(name), b.get(name), after)
            if change is not None:
                changes.append(change)
    for name, change, fields in examples_changes(old_read.data, new_read.data):
        where = f"{name}:1"
        shown = tuple(FieldChange(p, UNSET if a is None else a, b) for p, a, b in fields)
        changes.append(EntryChange(EXAMPLES, name, change, where, shown))
    return PolicyDiff(str(old), str(new), old_read.version, new_read.version, tuple(changes))


def _read(folder: Path) -> FolderRead:
    read = read_folder(folder)
    if read.problems:
        raise PolicyInvalid(read.problems)
    return read


def _entries(files: list[SourceFile]) -> dict[str, dict[str, _Entry]]:
    """Named entries merged across files; a name defined twice keeps its first definition,
    as the loader does (`check` reports the duplicate)."""
    problems: list[Problem] = []
    out: dict[str, dict[str, _Entry]] = {s: {} for s in ORDER}
    for f in files:
        # `$` doubled: the loader's `$$` escape then gives back every value as written.
        doc = parse(SourceFile(f.name, f.text.replace(b"$", b"$$")), {}, problems)
        if doc is None:
            continue
        for section in ORDER:
            if section not in doc.data:
                continue
            body = doc.data[section]
            named = {section: body} if section in SINGLE_SECTIONS else body
            if not isinstance(named, dict):
                continue
            for name, value in named.items():
                path = (section,) if section in SINGLE_SECTIONS else (section, name)
                out[section].setdefault(name, _Entry(value, f"{f.name}:{doc.line_of(path)}"))
    if problems:
        raise PolicyInvalid(problems)
    return out


def _entry_change(
    section: str,
    name: str,
    old: _Entry | None,
    new: _Entry | None,
    after: Mapping[str, Mapping[str, _Entry]],
) -> EntryChange | None:
    used_by = _used_by(section, name, after)
    if old is None and new is not None:
        fields = [FieldChange(p, UNSET, v) for p, v in _flatten(new.body).items()]
        return EntryChange(section, name, "added", new.location, _shown(section, fields), used_by)
    if new is None and old is not None:
        return EntryChange(section, name, "removed", old.location, (), used_by)
    assert old is not None
    assert new is not None
    a, b = _flatten(old.body), _flatten(new.body)
    fields = [
        FieldChange(p, a.get(p, UNSET), b.get(p, UNSET))
        for p in [*a, *(p for p in b if p not in a)]
        if a.get(p, UNSET) != b.get(p, UNSET)
    ]
    if not fields:
        return None
    return EntryChange(section, name, "changed", new.location, _shown(section, fields), used_by)


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted paths; lists and scalars are leaves, compared whole."""
    if not isinstance(value, dict) or not value:
        return {prefix or "(value)": value}
    out: dict[str, Any] = {}
    for key, item in value.items():
        out.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _shown(section: str, fields: list[FieldChange]) -> tuple[FieldChange, ...]:
    return tuple(
        FieldChange(f.path, _safe(section, f.path, f.old), _safe(section, f.path, f.new))
        for f in fields
    )


def _safe(section: str, path: str, value: Any) -> Any:
    if not isinstance(value, str):
        return value
    if (section, path.split(".")[0]) in _SECRET_FIELDS and not _ONLY_REFERENCES.match(value):
        return REDACTED
    return _URL_USERINFO.sub("***@", value)


def _used_by(section: str, name: str, after: Mapping[str, Mapping[str, _Entry]]) -> tuple[str, ...]:
    """Which entries of the new policy refer to this provider or model: the reach of a change
    (and, for a removed one, a reference `check` will reject)."""
    users: list[str] = []
    if section == "providers":
        users = [
            f"model {m}"
            for m, e in after["models"].items()
            if isinstance(e.body, dict) and e.body.get("provider") == name
        ]
    elif section == "models":
        for r, e in after["routes"].items():
            targets = e.body.get("targets") if isinstance(e.body, dict) else None
            names = [t.get("model") if isinstance(t, dict) else t for t in targets or []]
            if name in names:
                users.append(f"route {r}")
            elif isinstance(e.body, dict) and e.body.get("baseline") == name:
                users.append(f"route {r} (baseline)")
        users += [
            f"budget {b}"
            for b, e in after["budgets"].items()
            if isinstance(e.body, dict) and e.body.get("downgrade_to") == name
        ]
    return tuple(users)


def show(value: Any) -> str:
    """A value as a reader would write it in YAML flow style."""
    if value is UNSET:
        return "(unset)"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(show(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {show(v)}" for k, v in value.items()) + "}"
    return str(value)


def text(diff: PolicyDiff) -> str:
    lines = [f"policy diff: {diff.old} → {diff.new}"]
    if diff.old_version == diff.new_version:
        lines.append(f"version {diff.new_version}: the files are identical")
    else:
        lines.append(f"version {diff.old_version} → {diff.new_version}")
    section = None
    marks = {"added": "+", "removed": "-", "changed": "~"}
    for c in diff.changes:
        if c.section != section:
            section = c.section
            lines.append(f"{section}:")
        where = f"was {c.location}" if c.change == "removed" else c.location
        head = f"  {marks[c.change]} {c.name} ({c.change}, {where})"
        if c.used_by:
            head += ("; still referred to by " if c.change == "removed" else "; used by ") + (
                ", ".join(c.used_by)
            )
        lines.append(head)
        for f in c.fields:
            if c.change == "added":
                lines.append(f"      {f.path}: {show(f.new)}")
            else:
                lines.append(f"      {f.path}: {show(f.old)} → {show(f.new)}")
    if not diff.changes:
        lines.append(
            "no changes: the same entries with the same values"
            + (
                " (only comments, formatting or file placement differ)"
                if diff.old_version != diff.new_version
                else ""
            )
        )
    else:
        counts = {k: sum(c.change == k for c in diff.changes) for k in marks}
        lines.append(
            f"{len(diff.changes)} change(s): {counts['added']} added, "
            f"{counts['removed']} removed, {counts['changed']} changed"
        )
    return "\n".join(lines)


def as_json(diff: PolicyDiff) -> dict[str, Any]:
    """For bots: unset values are left out of a field change rather than shown as null."""

    def one(f: FieldChange) -> dict[str, Any]:
        out: dict[str, Any] = {"path": f.path}
        if f.old is not UNSET:
            out["old"] = f.old
        if f.new is not UNSET:
            out["new"] = f.new
        return out

    return {
        "old": {"folder": diff.old, "version": diff.old_version},
        "new": {"folder": diff.new, "version": diff.new_version},
        "changes": [
            {
                "section": c.section,
                "name": c.name,
                "change": c.change,
                "location": c.location,
                "fields": [one(f) for f in c.fields],
                "used_by": list(c.used_by),
            }
            for c in diff.changes
        ],
    }
