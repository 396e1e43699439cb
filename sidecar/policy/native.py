"""A route's output schema as providers enforce it while they decode (`enforce: native|both`).

Prepared once per reload for a named schema, and once per distinct client schema for
`from_request` (cached in `stores.validators`). The provider adapters render it in their own
dialect (providers/structured.py); this module only decides what the schema may be sent as.

OpenAI's strict mode (`json_schema` with `strict: true`) accepts a subset of JSON Schema:
every object lists all its properties in `required` and has `additionalProperties: false`,
the root is an object, and some keywords are refused. A schema is transformed into that
form where the meaning survives: a missing `additionalProperties` becomes false (an answer
without extra keys is valid under the original), and an optional property becomes required
but nullable. The model may then answer `null` for it, which the original schema may not
allow: `strip_nulls` removes those keys again before the answer is checked and delivered.
A schema that cannot be put in that form is sent with `strict: false`, and `why_not`
says why (`llm-sidecar check` reports it where the policy asked for enforcement explicitly).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# Keywords OpenAI's strict mode refuses (its structured-outputs guide, "supported schemas").
_REFUSED = (
    "allOf",
    "not",
    "if",
    "then",
    "else",
    "dependentRequired",
    "dependentSchemas",
    "patternProperties",
    "unevaluatedProperties",
    "unevaluatedItems",
    "propertyNames",
)
_NAME = re.compile(r"[^A-Za-z0-9_-]")

# Where `null` answers for optional properties are dropped: per property, (drop its null,
# the plan inside it); and the plan for an array's items.
Nulls = tuple[Mapping[str, tuple[bool, "Nulls | None"]], "Nulls | None"]


@dataclass(frozen=True, slots=True)
class NativeSchema:
    name: str  # a tool or schema name providers accept: [A-Za-z0-9_-]{1,64}
    schema: Mapping[str, Any] = field(repr=False)  # as written
    strict: Mapping[str, Any] | None = field(repr=False)  # OpenAI's strict form, when possible
    why_not: str | None = None  # why there is no strict form
    nulls: Nulls | None = field(default=None, repr=False, compare=False)
    from_client: bool = False  # the client's own response_format schema (from_request)


class _NotStrict(Exception):
    pass


def native_schema(name: str, schema: Mapping[str, Any], from_client: bool = False) -> NativeSchema:
    clean = _NAME.sub("_", name)[:64] or "answer"
    try:
        if schema.get("type") != "object":
            raise _NotStrict("$: the root must be an object (`type: object`)")
        strict, nulls = _node(schema, "$")
        for defs in ("$defs", "definitions"):
            if isinstance(schema.get(defs), dict):
                strict[defs] = {k: _node(v, f"$.{defs}.{k}")[0] for k, v in schema[defs].items()}
    except _NotStrict as exc:
        return NativeSchema(clean, schema, None, str(exc), None, from_client)
    return NativeSchema(clean, schema, strict, None, nulls, from_client)


def strip_nulls(value: Any, nulls: Nulls | None) -> bool:
    """Drop, in place, the `null`s strict mode made the model write for optional properties
    whose own schema does not allow null. True when something was dropped."""
    if nulls is None:
        return False
    props, items = nulls
    changed = False
    if isinstance(value, dict):
        for name, (drop, inner) in props.items():
            if name not in value:
                continue
            if value[name] is None and drop:
                del value[name]
                changed = True
            else:
                changed = strip_nulls(value[name], inner) or changed
    elif isinstance(value, list) and items is not None:
        for item in value:
            changed = strip_nulls(item, items) or changed
    return changed


def _node(node: Any, path: str) -> tuple[dict[str, Any], Nulls | None]:
    if not isinstance(node, dict):
        raise _NotStrict(f"{path}: a boolean schema has no strict form")
    for key in _REFUSED:
        if key in node:
            raise _NotStrict(f"{path}: strict mode does not support `{key}`")
    out = dict(node)
    props_plan: dict[str, tuple[bool, Nulls | None]] = {}
    items_plan: Nulls | None = None
    if "anyOf" in node:
        out["anyOf"] = [_node(b, f"{path}.anyOf[{i}]")[0] for i, b in enumerate(node["anyOf"])]
    if _types(node) & {"object"} or "properties" in node:
        extra = node.get("additionalProperties", False)
        if extra is not False:
            raise _NotStrict(
                f"{path}: additionalProperties must be false (strict mode allows no other keys)"
            )
        props = node.get("properties") or {}
        if not props:
            raise _NotStrict(f"{path}: an object without `properties` has no strict form")
        required = set(node.get("required") or ())
        new_props = {}
        for name, sub in props.items():
            new_sub, inner = _node(sub, f"{path}.{name}")
            drop = False
            if name not in required:
                drop = not _allows_null(sub)
                new_sub = _nullable(new_sub)
            new_props[name] = new_sub
            if drop or inner is not None:
                props_plan[name] = (drop, inner)
        out.update(properties=new_props, required=list(props), additionalProperties=False)
    if isinstance(node.get("items"), dict):
        out["items"], items_plan = _node(node["items"], f"{path}[]")
    if props_plan or items_plan is not None:
        return out, (props_plan, items_plan)
    return out, None


def _types(node: Mapping[str, Any]) -> set[str]:
    kind = node.get("type")
    return {kind} if isinstance(kind, str) else set(kind or ())


def _allows_null(node: Any) -> bool:
    if not isinstance(node, dict):
        return node is True
    if "null" in _types(node) or node.get("const", 0) is None or None in node.get("enum", ()):
        return True
    return any(_allows_null(b) for b in node.get("anyOf") or ())


def _nullable(node: dict[str, Any]) -> dict[str, Any]:
    if _allows_null(node):
        return node
    if "type" in node and "anyOf" not in node:
        out = {**node, "type": [*sorted(_types(node)), "null"]}
        if "enum" in node:
            out["enum"] = [*node["enum"], None]
        return out
    return {"anyOf": [node, {"type": "null"}]}
