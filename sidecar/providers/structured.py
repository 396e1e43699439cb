"""Asking a provider for schema-shaped output in the dialect it enforces while decoding.

Each provider's `structured_output` names its dialect (the wire format's default otherwise):

    json_schema          OpenAI: response_format json_schema, `strict` when the schema has
                         a strict form (policy/native.py)
    json_object          llama.cpp's server (and llama-cpp-python's): response_format
                         json_object with a `schema` field; they refuse json_schema
    guided_json          vLLM before 0.12: a top-level `guided_json` schema
    structured_outputs   vLLM 0.10 and later: `structured_outputs: {json: schema}`
    tool                 Anthropic: a forced tool whose input_schema is the schema; the
                         answer's tool call is unwrapped back into content
    none                 not asked; the sidecar's validation is all there is

The adapters call these when they build a payload; the client's body is never changed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sidecar.policy.native import NativeSchema


def openai_body(body: Mapping[str, Any], native: NativeSchema, dialect: str) -> dict[str, Any]:
    """The request for an OpenAI-compatible server, with the schema in its dialect."""
    out = dict(body)
    if dialect == "none":
        return out
    if dialect == "json_schema":
        if native.from_client:
            return out  # the client's own response_format is already this dialect
        strict = native.strict is not None
        out["response_format"] = {
            "type": "json_schema",
            "json_schema": {
                "name": native.name,
                "schema": native.strict if strict else native.schema,
                "strict": strict,
            },
        }
        return out
    if dialect == "json_object":
        out["response_format"] = {"type": "json_object", "schema": native.schema}
        return out
    out.pop("response_format", None)
    if dialect == "guided_json":
        out["guided_json"] = native.schema
    elif dialect == "structured_outputs":
        out["structured_outputs"] = {"json": native.schema}
    return out


def forced_tool(body: Mapping[str, Any], native: NativeSchema | None) -> str | None:
    """The name of the tool an Anthropic request is forced to call for the schema, or None
    when the schema cannot go that way: the client offers tools of its own (forcing ours
    would take them away), or the schema's root is not an object (input_schema must be)."""
    if native is None or body.get("tools") or native.schema.get("type") != "object":
        return None
    return native.name


def anthropic_tool(native: NativeSchema) -> dict[str, Any]:
    return {
        "name": native.name,
        "description": "Give the answer: its input is the answer, in the required shape.",
        "input_schema": native.schema,
    }
