"""The policy format as a JSON Schema (draft 2020-12), generated from `schema`'s cerberus rules.

Editors use it while people type policy files (VS Code's YAML extension reads a
`# yaml-language-server: $schema=...` comment); `llm-sidecar schema` prints it and
`schemas/policy.schema.json` is that output, kept equal by a test. The rules themselves live
only in `schema`: this module knows how each cerberus rule reads in JSON Schema, and refuses
a rule it does not know, so a new kind of rule cannot be dropped from the schema silently.

The schema describes one file as written. `llm-sidecar check` stays the authority: it also
checks references between entries and files (a target naming a model), duplicate names, and
the values that `${NAME}` references take — which is why a field with a format (a duration, a
URL) also accepts a value holding a `${NAME}` reference here.
"""

from __future__ import annotations

from typing import Any

from sidecar.policy.keydocs import key_doc
from sidecar.policy.schema import POLICY_FILE

DURATION_PATTERN = r"^\d+(\.\d+)?(ms|s|m|h)$"
ENV_REFERENCE_PATTERN = r"\$\{[A-Za-z_][A-Za-z0-9_]*(:-[^}]*)?\}"
URL_PATTERN = r"^https?://[^/\s]+"

_TYPES = {
    "string": "string",
    "integer": "integer",
    "float": "number",  # cerberus' float accepts integers too
    "number": "number",
    "boolean": "boolean",
    "dict": "object",
    "list": "array",
}

# `check_with` names from schema's validator, each a definition below.
_CHECKS = {"duration": "duration", "url": "url"}

_DEFINITIONS: dict[str, Any] = {
    "envReference": {
        "description": "A value taken from the environment when the policy loads: "
        "${NAME} or ${NAME:-default}.",
        "type": "string",
        "pattern": ENV_REFERENCE_PATTERN,
    },
    "duration": {
        "description": "A duration with a unit: 250ms, 30s, 5m, 1h.",
        "anyOf": [
            {"type": "string", "pattern": DURATION_PATTERN},
            {"$ref": "#/$defs/envReference"},
        ],
    },
    "url": {
        "description": "An http(s) URL.",
        "anyOf": [
            {"type": "string", "pattern": URL_PATTERN},
            {"$ref": "#/$defs/envReference"},
        ],
    },
}

# Every cerberus rule this module maps; anything else is an error (see the docstring).
_KNOWN = {
    "type",
    "required",
    "nullable",
    "allowed",
    "min",
    "max",
    "minlength",
    "maxlength",
    "empty",
    "regex",
    "check_with",
    "schema",
    "keysrules",
    "valuesrules",
    "anyof",
    "excludes",  # with `required` on both sides: exactly one of two keys (see `_mapping`)
}


def policy_schema() -> dict[str, Any]:
    """The JSON Schema of one policy file."""
    properties = {section: _rule(rule, path=section) for section, rule in POLICY_FILE.items()}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "llm-sidecar policy file",
        "description": "One file of an llm-sidecar policy folder. Generated from the "
        "sidecar's own definitions by `llm-sidecar schema`; `llm-sidecar check` also checks "
        "references between entries and files.",
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
        "$defs": _DEFINITIONS,
    }


def _rule(rule: dict[str, Any], env_ok: bool = True, path: str = "") -> dict[str, Any]:
    """One cerberus field rule as a JSON Schema, with the description of the key at `path`
    (see keydocs) that editors show on hover. `env_ok`: a `${NAME}` value is allowed
    where a pattern applies (false for names, which are never substituted)."""
    doc = key_doc(path) if path else None
    shape = _shape(rule, env_ok, path)
    return {"description": doc.description, **shape} if doc is not None else shape


def _shape(rule: dict[str, Any], env_ok: bool, path: str) -> dict[str, Any]:
    unknown = set(rule) - _KNOWN
    if unknown:
        raise ValueError(f"no JSON Schema mapping for cerberus rule(s) {sorted(unknown)}")
    if "anyof" in rule:
        base = {k: v for k, v in rule.items() if k != "anyof"}
        return {"anyOf": [_shape({**base, **alt}, env_ok, path) for alt in rule["anyof"]]}

    types = rule.get("type", [])
    types = [types] if isinstance(types, str) else list(types)
    out: dict[str, Any] = {}
    check = rule.get("check_with")
    if check is not None:
        if check not in _CHECKS:
            raise ValueError(f"no JSON Schema mapping for check_with '{check}'")
        out["$ref"] = f"#/$defs/{_CHECKS[check]}"
        types = [t for t in types if t != "string"]  # the definition says string
    json_types = [_TYPES[t] for t in types]
    if json_types:
        if rule.get("nullable"):
            json_types.append("null")
        out["type"] = json_types[0] if len(json_types) == 1 else json_types
    elif rule.get("nullable") and "$ref" in out:
        return {"anyOf": [out, {"type": "null"}]}

    if "allowed" in rule:
        out["enum"] = list(rule["allowed"])
    if "min" in rule:
        out["minimum"] = rule["min"]
    if "max" in rule:
        out["maximum"] = rule["max"]
    _sizes(rule, types, out)
    if "regex" in rule:
        pattern = f"^(?:{rule['regex']})$"  # cerberus matches the whole value
        if env_ok:
            out["anyOf"] = [{"pattern": pattern}, {"$ref": "#/$defs/envReference"}]
        else:
            out["pattern"] = pattern

    if "schema" in rule:
        if "dict" in types:
            out.update(_mapping(rule["schema"], path))
        if "list" in types:
            out["items"] = _shape(rule["schema"], True, f"{path}[]")
    if "keysrules" in rule:
        out["propertyNames"] = _rule(rule["keysrules"], env_ok=False)
    if "valuesrules" in rule:
        out["additionalProperties"] = _shape(rule["valuesrules"], True, f"{path}.<name>")
    return out


def _mapping(fields: dict[str, dict[str, Any]], path: str) -> dict[str, Any]:
    """A cerberus `schema` for a dict: known keys only (cerberus rejects unknown ones)."""
    out: dict[str, Any] = {
        "properties": {name: _rule(r, path=f"{path}.{name}") for name, r in fields.items()}
    }
    required = [n for n, r in fields.items() if r.get("required") and "excludes" not in r]
    if required:
        out["required"] = required
    one_of = [n for n, r in fields.items() if r.get("required") and "excludes" in r]
    if one_of:
        out["oneOf"] = [{"required": [n]} for n in one_of]
    out["additionalProperties"] = False
    return out


def _sizes(rule: dict[str, Any], types: list[str], out: dict[str, Any]) -> None:
    """`minlength`/`maxlength`/`empty` apply to whichever sized type the value has."""
    low = rule.get("minlength")
    if rule.get("empty") is False:
        low = max(low or 0, 1)
    high = rule.get("maxlength")
    for kind, (low_key, high_key) in (
        ("string", ("minLength", "maxLength")),
        ("list", ("minItems", "maxItems")),
        ("dict", ("minProperties", "maxProperties")),
    ):
        if kind in types and low is not None:
            out[low_key] = low
        if kind in types and high is not None:
            out[high_key] = high
