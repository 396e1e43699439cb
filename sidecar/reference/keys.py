"""Every key a policy file may hold, walked from `policy.schema.POLICY_FILE`.

A key's path is dotted, with `<name>` for an entry of a named section (`routes.<name>.timeout`)
and `[]` for an item of a list (`routes.<name>.targets[].model`). A key that may be written
two ways (`retry.backoff`: a duration, or a mapping) is one key, with the mapping's own keys
below it. `keydocs` describes each path; the reference page and the JSON Schema's
descriptions come from both.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sidecar.policy.schema import POLICY_FILE


@dataclass(frozen=True, slots=True)
class Key:
    path: str
    rule: dict[str, Any]


def policy_keys() -> Iterator[Key]:
    for section, rule in POLICY_FILE.items():
        yield from _walk(section, rule)


def _walk(path: str, rule: dict[str, Any]) -> Iterator[Key]:
    yield Key(path, rule)
    yield from _children(path, rule)


def _children(path: str, rule: dict[str, Any]) -> Iterator[Key]:
    for alternative in rule.get("anyof", ()):
        yield from _children(path, alternative)
    values = rule.get("valuesrules")
    named = isinstance(values, dict) and isinstance(values.get("schema"), dict)
    if "keysrules" in rule and named and _is_mapping(values["schema"]):
        for name, child in values["schema"].items():
            yield from _walk(f"{path}.<name>.{name}", child)
    types = rule.get("type", ())
    types = (types,) if isinstance(types, str) else types
    schema = rule.get("schema")
    if "dict" in types and isinstance(schema, dict) and _is_mapping(schema):
        for name, child in schema.items():
            yield from _walk(f"{path}.{name}", child)
    if "list" in types and isinstance(schema, dict):
        yield from _children(f"{path}[]", schema)


def _is_mapping(schema: dict[str, Any]) -> bool:
    """A cerberus `schema` of a dict names its keys; each key's rule is itself a dict."""
    return all(isinstance(rule, dict) for rule in schema.values())
