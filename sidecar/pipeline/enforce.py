"""Stage, before dispatch: have the providers enforce the route's output schema while they
decode (`enforce: native` or `both`, the default), so weak models produce valid answers
instead of answers to repair.

The schema goes to `ctx.native`; each target's adapter renders it in its provider's dialect
(providers/structured.py), or sends nothing when its provider cannot enforce one. The
client's body is left as it is: a retry or the next target builds from it again.
A request that forces a tool needs nothing more: the tool's parameters are the schema, and
providers already enforce those.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sidecar.pipeline.context import RequestContext


def enforce(ctx: RequestContext) -> None:
    out = ctx.route.output if ctx.route else None
    if out is None or out.enforce == "validate" or forced_tool(ctx.client_body) is not None:
        return
    if out.native is not None:
        ctx.native = out.native
        return
    fmt = ctx.client_body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        spec = fmt.get("json_schema") or {}
        schema = spec.get("schema")
        if isinstance(schema, dict):
            name = spec.get("name")
            ctx.native = ctx.snapshot.stores.validators.native(
                name if isinstance(name, str) else "answer", schema
            )


def forced_tool(body: Mapping[str, Any]) -> str | None:
    """The tool a request makes the model call: a named one, or its only tool with
    `tool_choice: "required"` (LlamaIndex's `structured_predict` asks that way)."""
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        return name if isinstance(name, str) else None
    tools = body.get("tools")
    if choice == "required" and isinstance(tools, list) and len(tools) == 1:
        name = ((tools[0] or {}).get("function") or {}).get("name")
        return name if isinstance(name, str) else None
    return None
