"""Stage: never trust the output. Check the answer against the route's schema; on failure
ask again with a correction, then fall back, answer the policy's default, or refuse (422).

What is checked is the assistant's content, or the arguments of the tool call the request
forced. `extract: lenient` accepts JSON inside ```json fences or surrounded by prose and
hands the client the clean JSON. A stream is buffered and checked before any of it is
released (`stream_mode: validate`, the default: the client waits for the whole answer but
never sees an invalid one), or passed through and judged at its end
(`stream_mode: passthrough`: first tokens arrive at once, and the verdict comes in a last
chunk's `x_sidecar_output` field, before [DONE]).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import orjson

from sidecar.errors import OutputInvalid, TargetsExhausted
from sidecar.pipeline.context import RequestContext
from sidecar.pipeline.dispatch import dispatch
from sidecar.pipeline.enforce import forced_tool
from sidecar.pipeline.ledger import RETRY
from sidecar.pipeline.meter import charge_answer, charge_events
from sidecar.pipeline.synth import assemble, completion, events_from_completion, replay
from sidecar.policy.model import OutputPolicy
from sidecar.policy.native import Nulls, strip_nulls
from sidecar.providers.base import Events, Reply

_FENCE = re.compile(r"```(?:json)?\s*\n?(.*?)```", re.DOTALL)
_MAX_ERRORS = 5
_MAX_CORRECTION = 1200


@dataclass(slots=True)
class Verdict:
    ok: bool
    value: Any = None
    extracted: bool = False  # found inside fences or prose
    cleaned: bool = False  # strict mode's nulls for optional properties dropped
    errors: list[str] = field(default_factory=list)


async def validate(ctx: RequestContext, reply: Reply) -> Reply:
    out = ctx.route.output if ctx.route else None
    if out is None:
        return reply
    validator, tool = _validator_for(ctx, out)
    if validator is None:
        return reply  # from_request, and the request carries no schema: nothing to check
    nulls = out.native.nulls if out.native is not None and tool is None else None
    trusted = out.enforce == "native"  # the provider's decoding is the only enforcement
    if reply.events is not None and (trusted or not out.stream_validate):
        reply.events = _judged(ctx, reply.events, validator, tool, out.lenient)
        return reply
    original = ctx.body
    verdict = Verdict(False)
    for round_ in range(out.retries + 1):
        answer, text, buffered = await _read(reply, tool)
        verdict = _check(text, validator, out.lenient, nulls)
        if trusted and not verdict.ok:  # reported, passed on as it came
            ctx.output = "invalid"
            ctx.snapshot.telemetry.outputs.add(1, _attrs(ctx, ctx.output))
            return reply
        if verdict.ok:
            ctx.output = "repaired" if round_ or verdict.extracted else "valid"
            return _deliver(ctx, reply, answer, buffered, verdict, tool)
        _discard(ctx, reply, buffered)
        if round_ == out.retries:
            break
        ctx.body = _refined(ctx.body, answer, text, verdict.errors, tool)
        if out.retry_next:
            ctx.targets = _after(ctx)
            if not ctx.targets:
                break
        reply = await dispatch(ctx)
    ctx.body = original
    if out.then == "fallback":
        for target in _after(ctx):
            ctx.targets = (target,)
            try:
                reply = await dispatch(ctx)
            except TargetsExhausted:
                continue
            answer, text, buffered = await _read(reply, tool)
            verdict = _check(text, validator, out.lenient, nulls)
            if verdict.ok:
                ctx.output = "repaired"
                return _deliver(ctx, reply, answer, buffered, verdict, tool)
            _discard(ctx, reply, buffered)
    if out.then == "default" and out.default is not None:
        ctx.output = "default"
        ctx.snapshot.telemetry.outputs.add(1, _attrs(ctx, "default"))
        model = ctx.answered_by.upstream if ctx.answered_by else ""
        answer = completion(model, out.default)
        answer["x_sidecar_output"] = "default"  # in the body too: the app may not read headers
        if ctx.stream:
            return Reply(events=replay(events_from_completion(answer, True)))
        return Reply(body=orjson.dumps(answer))
    ctx.output = "invalid"
    ctx.snapshot.telemetry.outputs.add(1, _attrs(ctx, "rejected"))  # the 422
    raise OutputInvalid(
        f"the answer did not match schema '{out.schema_name}' after {ctx.attempts} "
        f"attempt(s): " + "; ".join(verdict.errors),
        errors=verdict.errors,
    )


def conforms(ctx: RequestContext, answer: dict[str, Any]) -> list[str] | None:
    """What is wrong with `answer` under the route's output schema, as this stage would
    judge it ([] when nothing); None when the route checks no schema for this request.
    A cascade's acceptance check (pipeline/accept.py) asks this before it spares the next
    tier, so a cheap answer is held to the same schema as the one the app gets."""
    out = ctx.route.output if ctx.route else None
    if out is None:
        return None
    validator, tool = _validator_for(ctx, out)
    if validator is None:
        return None
    nulls = out.native.nulls if out.native is not None and tool is None else None
    return _check(_text(answer, tool), validator, out.lenient, nulls).errors


def _validator_for(ctx: RequestContext, out: OutputPolicy) -> tuple[Any, str | None]:
    """The validator, and the forced tool's name when tool arguments are what is checked."""
    body = ctx.client_body
    tool = forced_tool(body)
    if out.validator is not None:
        return out.validator, tool
    schema: Any = None
    if tool is not None:
        for t in body.get("tools") or ():
            if (t.get("function") or {}).get("name") == tool:
                schema = (t.get("function") or {}).get("parameters")
    else:
        fmt = body.get("response_format") or {}
        if fmt.get("type") == "json_schema":
            schema = (fmt.get("json_schema") or {}).get("schema")
    if not isinstance(schema, dict):
        return None, tool
    return ctx.snapshot.stores.validators.get(schema), tool


async def _read(reply: Reply, tool: str | None) -> tuple[dict[str, Any], str, list[bytes] | None]:
    """The answer as a completion dict and the text to check; a stream is buffered whole."""
    if reply.events is None:
        answer = orjson.loads(reply.body)
        return answer, _text(answer, tool), None
    events = [event async for batch in reply.events for event in batch]
    answer = assemble(events)
    return answer, _text(answer, tool), events


def _text(answer: dict[str, Any], tool: str | None) -> str:
    try:
        message = answer["choices"][0]["message"]
    except (KeyError, IndexError, TypeError):
        return ""
    if tool is not None:
        for call in message.get("tool_calls") or ():
            if (call.get("function") or {}).get("name") == tool:
                return str(call["function"].get("arguments") or "")
        return ""
    return str(message.get("content") or "")


def _check(text: str, validator: Any, lenient: bool, nulls: Nulls | None = None) -> Verdict:
    value, extracted = parse_json(text, lenient)
    if value is NOTHING:
        return Verdict(
            False, errors=["$: the answer is not JSON" + (" (none found)" if lenient else "")]
        )
    cleaned = strip_nulls(value, nulls)
    errors = sorted(validator.iter_errors(value), key=lambda e: list(e.absolute_path))
    if errors:
        problems = [_describe(e) for e in errors[:_MAX_ERRORS]]
        return Verdict(False, value, extracted, cleaned, problems)
    return Verdict(True, value, extracted, cleaned)


NOTHING = object()


def parse_json(text: str, lenient: bool) -> tuple[Any, bool]:
    try:
        return orjson.loads(text), False
    except orjson.JSONDecodeError:
        if not lenient:
            return NOTHING, False
    for candidate in [m.group(1) for m in _FENCE.finditer(text)] + _spans(text):
        try:
            return orjson.loads(candidate), True
        except orjson.JSONDecodeError:
            continue
    return NOTHING, False


def _spans(text: str) -> list[str]:
    """The first `{…}` or `[…]` span that decodes, found with the JSON decoder itself."""
    decoder = json.JSONDecoder()
    for i, ch in enumerate(text):
        if ch in "{[":
            try:
                _, end = decoder.raw_decode(text, i)
            except json.JSONDecodeError:
                continue
            return [text[i:end]]
    return []


def _describe(error: Any) -> str:
    path = "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
    return f"{path}: {error.message}"[:300]


def _refined(
    body: Any, answer: dict[str, Any], text: str, errors: list[str], tool: str | None
) -> dict[str, Any]:
    """The conversation so far, the bad answer, and a short correction that quotes what is
    wrong. A new dict: the client's body is never changed."""
    listed = "\n".join(f"- {e}" for e in errors)
    correction = (
        "Your previous answer did not match the required JSON schema.\n"
        f"Problems:\n{listed}\n"
        + (
            "Call the tool again with corrected arguments."
            if tool
            else "Answer again with only the corrected JSON, no prose and no code fences."
        )
    )[:_MAX_CORRECTION]
    messages = list(body.get("messages") or [])
    try:
        message = answer["choices"][0]["message"]
    except (KeyError, IndexError, TypeError):
        message = {"role": "assistant", "content": text}
    if tool is not None and message.get("tool_calls"):
        call = next(
            c for c in message["tool_calls"] if (c.get("function") or {}).get("name") == tool
        )
        messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        messages.append({"role": "tool", "tool_call_id": call.get("id", ""), "content": correction})
    else:
        messages.append({"role": "assistant", "content": text})
        messages.append({"role": "user", "content": correction})
    return {**body, "messages": messages}


def _after(ctx: RequestContext) -> tuple[Any, ...]:
    """The route's targets after the one that answered last."""
    route_targets = ctx.route.targets if ctx.route else ()
    names = [t.model.name for t in route_targets]
    if ctx.answered_by is None or ctx.answered_by.name not in names:
        return tuple(route_targets)
    return tuple(route_targets[names.index(ctx.answered_by.name) + 1 :])


def _discard(ctx: RequestContext, reply: Reply, buffered: list[bytes] | None) -> None:
    if buffered is None:
        charge_answer(ctx, reply.body)
    else:
        charge_events(ctx, buffered)
    ctx.purpose = RETRY  # any call after this one exists because the sidecar asked again
    ctx.snapshot.telemetry.outputs.add(1, _attrs(ctx, "invalid"))


def _deliver(
    ctx: RequestContext,
    reply: Reply,
    answer: dict[str, Any],
    buffered: list[bytes] | None,
    verdict: Verdict,
    tool: str | None,
) -> Reply:
    ctx.snapshot.telemetry.outputs.add(1, _attrs(ctx, ctx.output or "valid"))
    if (verdict.extracted or verdict.cleaned) and tool is None:
        answer["choices"][0]["message"]["content"] = orjson.dumps(verdict.value).decode()
        if buffered is None:
            return Reply(body=orjson.dumps(answer), headers=reply.headers)
        return Reply(events=replay(events_from_completion(answer, True)))
    if buffered is not None:
        return Reply(events=replay(buffered))
    return reply


def _attrs(ctx: RequestContext, result: str) -> dict[str, str]:
    """`sidecar.enforce` says whether the answering provider was asked to enforce the schema
    itself (native) or not (none), so first-try validity can be compared with it on and off."""
    model = ctx.answered_by
    native = ctx.native is not None and model is not None
    if native and model is not None:
        native = ctx.snapshot.policy.providers[model.provider].structured_output != "none"
    attrs = {
        "sidecar.route": ctx.route.name if ctx.route else "(none)",
        "sidecar.model": model.name if model else "(none)",
        "sidecar.output": result,
        "sidecar.enforce": "native" if native else "none",
    }
    if ctx.tier is not None:
        attrs["sidecar.tier"] = ctx.tier
    return attrs


async def _judged(
    ctx: RequestContext,
    events: Events,
    validator: Any,
    tool: str | None,
    lenient: bool,
) -> Events:
    """Passthrough: relay as it comes; judge the whole at the end, before [DONE]."""
    seen: list[bytes] = []
    async for batch in events:
        out: list[bytes] = []
        for event in batch:
            if event.startswith(b"data: [DONE]"):
                answer = assemble(seen)
                verdict = _check(_text(answer, tool), validator, lenient)
                ctx.output = "valid" if verdict.ok else "invalid"
                ctx.snapshot.telemetry.outputs.add(1, _attrs(ctx, ctx.output))
                chunk = {
                    "id": answer.get("id"),
                    "object": "chat.completion.chunk",
                    "choices": [],
                    "model": answer.get("model"),
                    "x_sidecar_output": ctx.output,
                    "x_sidecar_output_errors": verdict.errors,
                }
                out.append(b"data: " + orjson.dumps(chunk) + b"\n\n")
            elif event.startswith(b"data: {"):
                seen.append(event)
            out.append(event)
        yield out
