"""A cascade's acceptance checks: is a cheap tier's answer good enough to show the app?

Each check looks at what any app could: the answer has content (or a tool call); it was
not cut off (`finish_reason: length`); it does not decline or hedge (the route's refusal
patterns, a provider's `refusal` field or a content filter); it matches the route's output
schema, judged by validate's own function (`validate.conforms`); and, when the policy sets
`min_logprob`, the mean log-probability of its tokens (asked for only then) reaches it.
Every check is run and reported (the acceptance rate per check is a metric); the first
that failed, in that order, is the reason an answer was rejected.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from sidecar.pipeline.context import RequestContext
from sidecar.pipeline.synth import assemble, replay
from sidecar.pipeline.validate import conforms
from sidecar.policy.model import Acceptance
from sidecar.providers.base import Reply

CHECKS = ("empty", "finish", "refusal", "schema", "logprob")
PASS, FAIL, UNAVAILABLE = "pass", "fail", "unavailable"
_REFUSAL_SCAN = 2000  # characters of the answer the refusal patterns read


@dataclass(slots=True)
class Judgement:
    answer: dict[str, Any]  # the whole answer, a stream put back together
    buffered: list[bytes] | None  # a stream's events, to relay or charge
    results: dict[str, str] = field(default_factory=dict)  # check → pass | fail | unavailable
    logprob: float | None = None

    @property
    def failed(self) -> str | None:
        return next((c for c in CHECKS if self.results.get(c) == FAIL), None)


async def read(reply: Reply) -> Judgement:
    """The answer whole: a stream is buffered to its end (nothing has been sent yet)."""
    if reply.events is None:
        try:
            answer = orjson.loads(reply.body)
        except orjson.JSONDecodeError:
            answer = {}
        answer = answer if isinstance(answer, dict) else {}
        return Judgement(answer, None, logprob=_mean(_choice_logprobs(answer)))
    try:
        events = [event async for batch in reply.events for event in batch]
    finally:
        await reply.aclose()  # gives the connection back (read whole, it already is)
    return Judgement(assemble(events), events, logprob=_stream_logprob(events))


def judge(ctx: RequestContext, accept: Acceptance, judgement: Judgement) -> Judgement:
    results = judgement.results
    choice = _first_choice(judgement.answer)
    message = choice.get("message") or {}
    content = message.get("content")
    text = content if isinstance(content, str) else ""
    if accept.empty:
        results["empty"] = PASS if text.strip() or message.get("tool_calls") else FAIL
    if accept.finish:
        results["finish"] = FAIL if choice.get("finish_reason") == "length" else PASS
    if accept.refusal is not None:
        refused = (
            bool(message.get("refusal"))
            or choice.get("finish_reason") == "content_filter"
            or accept.refusal.search(text[:_REFUSAL_SCAN]) is not None
        )
        results["refusal"] = FAIL if refused else PASS
    if accept.schema:
        problems = conforms(ctx, judgement.answer)
        if problems is not None:
            results["schema"] = FAIL if problems else PASS
    if accept.min_logprob is not None:
        if judgement.logprob is None:
            results["logprob"] = UNAVAILABLE  # the provider sent none: not held against it
        else:
            results["logprob"] = PASS if judgement.logprob >= accept.min_logprob else FAIL
    return judgement


def _first_choice(answer: dict[str, Any]) -> dict[str, Any]:
    choices = answer.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        return choices[0]
    return {}


def _choice_logprobs(answer: dict[str, Any]) -> list[float]:
    logprobs = _first_choice(answer).get("logprobs") or {}
    return [float(t["logprob"]) for t in logprobs.get("content") or () if "logprob" in t]


def _stream_logprob(events: list[bytes]) -> float | None:
    values: list[float] = []
    for event in events:
        if event.startswith(b"data: {") and b'"logprobs"' in event:
            values += _choice_logprobs(orjson.loads(event[6:]))
    return _mean(values)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def deliver(reply: Reply, judgement: Judgement, strip: bool) -> Reply:
    """The accepted answer, to go on as if it came straight from upstream (a stream is
    replayed from what was buffered); with `strip`, the logprobs the sidecar asked for
    to judge it, and the app did not, are taken out again."""
    if judgement.buffered is None:
        if not strip:
            return reply
        for choice in judgement.answer.get("choices") or ():
            if isinstance(choice, dict):
                choice.pop("logprobs", None)
        return Reply(
            status=reply.status, body=orjson.dumps(judgement.answer), headers=reply.headers
        )
    events = judgement.buffered
    if strip:
        events = [_stripped(event) for event in events]
    return Reply(status=reply.status, events=replay(events), headers=reply.headers)


def _stripped(event: bytes) -> bytes:
    if not (event.startswith(b"data: {") and b'"logprobs"' in event):
        return event
    chunk = orjson.loads(event[6:])
    for choice in chunk.get("choices") or ():
        choice.pop("logprobs", None)
    return b"data: " + orjson.dumps(chunk) + b"\n\n"
