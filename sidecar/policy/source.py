"""Read policy files: YAML with line numbers, `${ENV}` references, a content hash.

Only plain YAML values are read: mappings, lists, strings, numbers, booleans, null and
dates. Any other tag (`!!python/object/apply:...`, `!foo`) is a problem at its line, never
something constructed: nodes are composed with a safe loader and only scalars are ever
constructed, by the safe constructor. Nesting deeper than `MAX_NESTING` is a problem too,
found before Python's own recursion limit could be.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from sidecar.policy.problems import Problem

Path_ = tuple[str | int, ...]

_MAX_NODES = 100_000
MAX_NESTING = 64  # levels of mappings and lists; an output schema rarely needs 20
# libyaml when PyYAML has it (its wheels do): five times faster, and it composes without
# Python recursion, so only our own reader below has to watch the depth.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_PLAIN_TAGS = frozenset(
    f"tag:yaml.org,2002:{t}"
    for t in ("str", "int", "float", "bool", "null", "timestamp", "map", "seq", "merge")
)
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
        nodes = list(yaml.compose_all(source.text, Loader=_LOADER))
    except RecursionError:  # PyYAML without libyaml composes recursively
        problems.append(Problem(source.name, 1, f"nested deeper than {MAX_NESTING} levels"))
        return None
    except yaml.reader.ReaderError as exc:
        line = source.text.count(b"\n", 0, exc.position) + 1
        problems.append(Problem(source.name, line, f"not text (a binary file?): {exc.reason}"))
        return None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        # libyaml puts the end of a file without a final newline on a line after the last
        line = min(mark.line + 1, source.text.count(b"\n") + 1) if mark is not None else 1
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
    if reader.unreadable:  # its values would only add noise to the problems said
        return None
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
        self.reading: set[int] = set()  # collections being read: an alias to one loops
        self.nodes = 0
        self.unreadable = False  # not plain YAML: the file is left out, as a syntax error is
        self.said: set[str] = set()

    def value(self, node: Node, path: Path_) -> Any:
        if node.tag not in _PLAIN_TAGS:
            tag = node.tag.replace("tag:yaml.org,2002:", "!!")
            line = node.start_mark.line + 1
            self._unreadable(line, f"unknown YAML tag '{tag}': only plain values are read")
            return None
        if not isinstance(node, MappingNode | SequenceNode):
            return self._value(node, path)
        if len(self.reading) >= MAX_NESTING:  # and so never a RecursionError
            line = node.start_mark.line + 1
            self._unreadable(line, f"nested deeper than {MAX_NESTING} levels", once=True)
            return None
        if id(node) in self.reading:  # `a: &x {b: *x}`: a problem, not a RecursionError
            line = self.doc.line_of(path)
            self._unreadable(line, "a YAML alias refers to a node containing it")
            return None
        self.nodes += 1
        if self.nodes > _MAX_NODES:  # aliases of aliases can expand a small file enormously
            line = self.doc.line_of(path)
            self._unreadable(line, f"more than {_MAX_NODES} values (alias bomb?)", once=True)
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
                if not isinstance(key_node, ScalarNode) or key_node.tag not in _PLAIN_TAGS:
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

    def _unreadable(self, line: int, message: str, *, once: bool = False) -> None:
        if not (once and message in self.said):
            self._problem(line, message)
        self.said.add(message)
        self.unreadable = True
