"""Know what a semantic cache does to quality: for a sampled share of semantic hits
(`semantic.verify_sample`), ask the route's targets too, after the app has its answer,
and compare the two answers. Agreement per cache is a metric and on /status, and low
agreement warns and raises the cache's effective similarity (stores/agreement.py).

Off the app's path: it starts from `finish` once the request is accounted, in a task of
its own (stores/settlements.py, so shutdown waits for it a bounded time), bounded by the
route's timeout. It takes no rate-limit slot and no budget hold, but what it costs is real
money: it is recorded on the request's usage rows (not as another request) against the
savings ledger's `shadow` lever, the verification calls' lever.

Two answers agree when:
- both call tools: the same tools, in order, with JSON-equal arguments;
- they are the same text (whitespace aside), or the same JSON value;
- for other text: the same specific tokens (the cache's guards: numbers, dates, ids, ...)
  and embeddings at least the cache's `similarity` apart, by its embedding model.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson

from sidecar.errors import SidecarError
from sidecar.pipeline.account import record_extra
from sidecar.pipeline.context import RequestContext
from sidecar.pipeline.dispatch import dispatch
from sidecar.pipeline.embed import embed
from sidecar.pipeline.enforce import enforce
from sidecar.pipeline.ledger import SHADOW
from sidecar.pipeline.meter import meter
from sidecar.pipeline.similar import text_of
from sidecar.policy.model import CachePolicy
from sidecar.providers.base import CHAT

log = logging.getLogger("sidecar.cache")

_STREAMING = frozenset({"stream", "stream_options"})


class _Unverifiable(Exception):
    """The comparison could not be made (the embedder failed)."""


def start(ctx: RequestContext) -> None:
    """From `finish`: check a sampled semantic hit, detached from the request."""
    cached, ctx.cache_check = ctx.cache_check, None
    if cached is not None and ctx.route is not None and ctx.route.cache is not None:
        ctx.snapshot.stores.settlements.start(_verify(ctx, ctx.route.cache, cached))


async def _verify(ctx: RequestContext, policy: CachePolicy, cached: Any) -> None:
    assert ctx.route is not None
    agreement = ctx.snapshot.stores.caches.agreements.of(policy)
    body = {k: v for k, v in ctx.client_body.items() if k not in _STREAMING}
    check = RequestContext(
        CHAT,
        body,
        ctx.headers,
        ctx.snapshot,
        client_body=body,
        user=ctx.user,
        team=ctx.team,
        app_key=ctx.app_key,
        route=ctx.route,
        targets=ctx.targets or ctx.route.targets,
        purpose=SHADOW,
    )
    result = "error"
    try:
        async with asyncio.timeout(ctx.route.timeout):
            enforce(check)
            reply = meter(check, await dispatch(check))
            agreed = await agree(check, policy, cached, orjson.loads(reply.body))
        result = "agree" if agreed else "disagree"
        if agreement is not None:
            agreement.note(ctx.cache_similarity or policy.similarity, agreed)
    except (SidecarError, TimeoutError, _Unverifiable, orjson.JSONDecodeError) as exc:
        log.info("semantic cache %s: a hit could not be verified (%s)", policy.name, exc)
        if agreement is not None:
            agreement.failed += 1
    finally:
        _observe(check, policy, result)
        await record_extra(check)


async def agree(check: RequestContext, policy: CachePolicy, cached: Any, fresh: Any) -> bool:
    a, b = _message(cached), _message(fresh)
    calls = _calls(a), _calls(b)
    if calls[0] or calls[1]:
        return calls[0] == calls[1]
    x, y = text_of(a.get("content")), text_of(b.get("content"))
    if " ".join(x.split()) == " ".join(y.split()):
        return True
    jx, jy = _json(x), _json(y)
    if jx is not None or jy is not None:
        return jx == jy
    if policy.guards.signature(x) != policy.guards.signature(y):
        return False
    assert policy.embedding is not None
    vectors = await embed(check, policy.embedding, [x, y], SHADOW)
    if vectors is None:
        raise _Unverifiable("the embedding model failed")
    return float(vectors[0] @ vectors[1]) >= policy.similarity


def _message(answer: Any) -> dict[str, Any]:
    try:
        return dict(answer["choices"][0]["message"])
    except (KeyError, IndexError, TypeError):
        return {}


def _calls(message: dict[str, Any]) -> list[tuple[Any, Any]]:
    out = []
    for call in message.get("tool_calls") or ():
        fn = call.get("function") or {}
        arguments = fn.get("arguments")
        parsed = _json(arguments) if isinstance(arguments, str) else arguments
        out.append((fn.get("name"), arguments if parsed is None else parsed))
    return out


def _json(text: str) -> Any:
    """The JSON object or array `text` holds, else None."""
    stripped = text.strip()
    if not stripped.startswith(("{", "[")):
        return None
    try:
        return orjson.loads(stripped)
    except orjson.JSONDecodeError:
        return None


def _observe(check: RequestContext, policy: CachePolicy, result: str) -> None:
    tel = check.snapshot.telemetry
    route = check.route.name if check.route else "(none)"
    tel.cache_verifications.add(1, {"sidecar.cache": policy.name, "result": result})
    for spend in check.spend:
        attrs = {"sidecar.route": route, "sidecar.model": spend.model.name}
        tel.cost.add(spend.cost, attrs)
        tel.cost_saved.add(-spend.cost, {**attrs, "sidecar.lever": "shadow"})
