"""A fake OpenAI-compatible server that decodes under constraints, in one of the dialects
real servers speak: a real HTTP server on 127.0.0.1 that checks the enforcement parameters
it receives as the real one would, and answers accordingly.

The "model" has a list of candidate answers: unconstrained, it says them in turn (the last
one repeats). Asked to enforce a schema it understands, it answers the first candidate that
matches that schema (constrained decoding); asked in a form it does not know, it refuses
(llama.cpp's server answers 500 to `json_schema`) or ignores it (a server without
structured output). A request that forces a tool gets a call of it with the candidate as
its arguments (constrained when the tool says `strict: true`). Dialects, per model:

    openai        response_format json_schema; with `strict: true` the schema must be in
                  strict form (every property required, additionalProperties false) or 400
    llama.cpp     response_format json_object with a `schema`; json_schema → 500
    vllm          a top-level `guided_json`, or `structured_outputs: {json: schema}`
    ignore        enforces nothing: always the first candidate
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from jsonschema import Draft202012Validator

from tests.support.fake_server import FakeServer
from tests.support.upstream import completion, stream_events


@dataclass
class Behaviour:
    dialect: str = "openai"
    candidates: list[Any] = field(default_factory=lambda: [{"answer": 42}])
    usage: bool = True  # streams: send the usage chunk when asked (llama.cpp often does not)
    said: int = 0  # unconstrained answers given so far


class FakeConstrained(FakeServer[Behaviour]):
    behaviour = Behaviour

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self) -> FakeConstrained:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        await self.serve(app)
        return self

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.record(request, body)
        b = self.behaviour_of(str(body.get("model", "")))
        try:
            schema = _schema(body, b.dialect)
        except _Refused as exc:
            return web.json_response({"error": exc.error}, status=exc.status)
        tool = _forced(body)
        if tool is not None and tool.get("strict") is True:
            schema = tool.get("parameters")
        answer = b.candidates[min(b.said, len(b.candidates) - 1)]
        if schema is not None:
            validator = Draft202012Validator(schema)
            answer = next((c for c in b.candidates if validator.is_valid(c)), answer)
        else:
            b.said += 1
        text = orjson.dumps(answer).decode()
        if tool is not None:
            return web.json_response(_tool_call(body["model"], tool["name"], text))
        if not body.get("stream"):
            return web.json_response(completion(body["model"], text))
        include = bool((body.get("stream_options") or {}).get("include_usage")) and b.usage
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        for event in stream_events(body["model"], text, include):
            await response.write(event)
        await response.write_eof()
        return response


def _forced(body: dict[str, Any]) -> dict[str, Any] | None:
    choice = body.get("tool_choice")
    tools = [t["function"] for t in body.get("tools") or ()]
    if isinstance(choice, dict):
        return next(t for t in tools if t["name"] == choice["function"]["name"])
    return tools[0] if choice == "required" and tools else None


def _tool_call(model: str, name: str, arguments: str) -> dict[str, Any]:
    answer = completion(model, "")
    call = {
        "id": f"call_{name}",
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }
    answer["choices"][0].update(
        message={"role": "assistant", "content": None, "tool_calls": [call]},
        finish_reason="tool_calls",
    )
    return answer


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        kind = "server_error" if status >= 500 else "invalid_request_error"
        self.error = {"message": message, "type": kind, "code": status}


def _schema(body: dict[str, Any], dialect: str) -> dict[str, Any] | None:
    """The schema this server would enforce for `body`, or _Refused."""
    fmt = body.get("response_format") or {}
    kind = fmt.get("type")
    if dialect == "openai" and kind == "json_schema":
        spec = fmt["json_schema"]
        if spec.get("strict") is True:
            problem = _not_strict(spec["schema"], "")
            if problem:
                raise _Refused(
                    400, f"Invalid schema for response_format '{spec['name']}': {problem}"
                )
        return spec["schema"]
    if dialect == "llama.cpp":
        if kind not in (None, "text", "json_object"):
            # what llama.cpp's server says (and why the sidecar's 502 must pass it on)
            raise _Refused(
                500, f'response_format type must be one of "text" or "json_object", but got: {kind}'
            )
        return fmt.get("schema") if kind == "json_object" else None
    if dialect == "vllm":  # guided_json before 0.12, structured_outputs since 0.10
        return body.get("guided_json") or (body.get("structured_outputs") or {}).get("json")
    return None


def _not_strict(node: Any, path: str) -> str | None:
    if not isinstance(node, dict):
        return None
    if node.get("type") == "object" or "properties" in node:
        props = node.get("properties") or {}
        if node.get("additionalProperties") is not False:
            return f"In context={path or '()'}, 'additionalProperties' is required to be false"
        missing = [p for p in props if p not in (node.get("required") or [])]
        if missing:
            return f"In context={path or '()'}, 'required' is missing {missing}"
        for name, sub in props.items():
            found = _not_strict(sub, f"{path}.{name}")
            if found:
                return found
    for sub in [node.get("items"), *(node.get("anyOf") or [])]:
        found = _not_strict(sub, f"{path}[]")
        if found:
            return found
    return None
