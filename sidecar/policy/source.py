"""Read a policy folder: YAML with line numbers, `${ENV}` references, a content hash.

Kubernetes mounts a ConfigMap as `..data -> ..2024_01_01_xx/` plus one symlink per key;
an update swaps `..data` atomically and leaves mtimes alone. So the folder is read as the
set of visible `*.yaml`/`*.yml` files (names starting with `.` are skipped, which skips
the `..` folders), and a change is a change of the content hash, never of a timestamp.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from sidecar.policy.problems import Problem

Path_ = tuple[str | int, ...]

_MAX_NODES = 100_000
_ENV_REF = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass(frozen=True, slots=True)
class SourceFile:
    name: str  # relative to the folder, as printed in problems
    text: bytes


@dataclass(slots=True)
class Document:
    """One file's top-level mapping, with the line of every key and list item."""

    file: str
    data: dict[str, Any]
    lines: dict[Path_, int] = field(default_factory=dict)

    def line_of(self, path: Path_) -> int:
        """The line of `path`, or of its nearest ancestor that has one."""
        while path:
            line = self.lines.get(path)
            if line is not None:
                return line
            path = path[:-1]
        return 1


def read_folder(folder: Path) -> list[SourceFile]:
    files: list[SourceFile] = []
    for root, dirs, names in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if name.startswith(".") or not name.endswith((".yaml", ".yml")):
                continue
            path = Path(root, name)
            try:
                text = path.read_bytes()
            except FileNotFoundError:  # removed while we walked: the next event re-reads
                continue
            files.append(SourceFile(path.relative_to(folder).as_posix(), text))
    return files


def content_hash(files: list[SourceFile]) -> str:
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.name.encode())
        digest.update(b"\0")
        digest.update(hashlib.sha256(f.text).digest())
    return digest.hexdigest()[:12]


def parse(source: SourceFile, env: Mapping[str, str], problems: list[Problem]) -> Document | None:
    """The file's top-level mapping, or None after adding what is wrong with it to `problems`."""
    try:
        nodes = list(yaml.compose_all(source.text, Loader=yaml.SafeLoader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        problems.append(Problem(source.name, line, f"not valid YAML: {_yaml_reason(exc)}"))
        return None
    nodes = [n for n in nodes if n is not None]
    if not nodes:
        return Document(source.name, {})
    if len(nodes) > 1:
        line = nodes[1].start_mark.line + 1
        problems.append(Problem(source.name, line, "one YAML document per file, found several"))
        return None
    doc = Document(source.name, {})
    reader = _NodeReader(doc, env, problems)
    data = reader.value(nodes[0], ())
    if not isinstance(data, dict):
        line = nodes[0].start_mark.line + 1
        problems.append(Problem(source.name, line, "a policy file must be a mapping of sections"))
        return None
    doc.data = data
    return doc


def _yaml_reason(exc: yaml.YAMLError) -> str:
    problem = getattr(exc, "problem", None)
    context = getattr(exc, "context", None)
    return ", ".join(p for p in (context, problem) if p) or exc.__class__.__name__


class _NodeReader:
    """Turns composed YAML nodes into plain values, noting lines and resolving `${ENV}`."""

    def __init__(self, doc: Document, env: Mapping[str, str], problems: list[Problem]) -> None:
        self.doc = doc
        self.env = env
        self.problems = problems
        self.scalars = SafeConstructor()
        self.reading: set[int] = set()
        self.nodes = 0  # collections being read: an alias to one loops

    def value(self, node: Node, path: Path_) -> Any:
        if not isinstance(node, MappingNode | SequenceNode):
            return self._value(node, path)
        if id(node) in self.reading:  # `a: &x {b: *x}`: a problem, not a RecursionError
            self._problem(self.doc.line_of(path), "a YAML alias refers to a node containing it")
            return None
        self.nodes += 1
        if self.nodes > _MAX_NODES:  # aliases of aliases can expand a small file enormously
            if self.nodes == _MAX_NODES + 1:
                self._problem(
                    self.doc.line_of(path), f"more than {_MAX_NODES} values (alias bomb?)"
                )
            return None
        self.reading.add(id(node))
        try:
            return self._value(node, path)
        finally:
            self.reading.discard(id(node))

    def _value(self, node: Node, path: Path_) -> Any:
        if isinstance(node, MappingNode):
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                line = key_node.start_mark.line + 1
                if not isinstance(key_node, ScalarNode):
                    self._problem(line, "mapping keys must be plain scalars")
                    continue
                # Keys are names, taken as written: YAML 1.1 would read `on:` as True.
                key = key_node.value
                if key in out:
                    self._problem(line, f"duplicate key '{key}'")
                    continue
                self.doc.lines[(*path, key)] = line
                out[key] = self.value(value_node, (*path, key))
            return out
        if isinstance(node, SequenceNode):
            items = []
            for i, item in enumerate(node.value):
                self.doc.lines[(*path, i)] = item.start_mark.line + 1
                items.append(self.value(item, (*path, i)))
            return items
        assert isinstance(node, ScalarNode)
        try:
            scalar = self.scalars.construct_object(node)
        except ConstructorError as exc:
            self._problem(node.start_mark.line + 1, f"bad value: {exc.problem}")
            return None
        if isinstance(scalar, str) and "$" in scalar:
            return self._substitute(scalar, node.start_mark.line + 1)
        return scalar

    def _substitute(self, text: str, line: int) -> str:
        def one(m: re.Match[str]) -> str:
            if m.group(0) == "$$":
                return "$"
            name, default = m.group(1), m.group(2)
            value = self.env.get(name)
            if value is None or (value == "" and default is not None):
                if default is None:
                    self._problem(line, f"environment variable ${{{name}}} is not set")
                    return ""
                return default
            return value

        return _ENV_REF.sub(one, text)

    def _problem(self, line: int, message: str) -> None:
        self.problems.append(Problem(self.doc.file, line, message))
