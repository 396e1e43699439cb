"""Stage: answer from the cache when the same question (or, in semantic mode, a similar
enough one in the same context: pipeline/similar.py) was answered before; otherwise
remember the answer once it is complete.

Exact keys hash the normalised request: the model alias, the messages and every parameter
that can change the answer, in sorted-key canonical JSON — not `user`, stream flags or
request metadata — so key order and whitespace never cause a miss. Keys are scoped to the
user or team unless the cache says `scope: global`. What may be cached and kept (tools,
temperature, the app's controls) is pipeline/cacheable.py's. Only complete, successful
answers are stored (never an error, a `length` cut, an invalid output, a broken stream or a
tool call the policy does not let replay). Concurrent identical misses wait for the first
one's answer. A sampled share of semantic hits is checked against the upstream after the
answer went out (pipeline/verify.py).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Any

import orjson

from sidecar.errors import SidecarError
from sidecar.pipeline import similar
from sidecar.pipeline.cacheable import INELIGIBLE, UNAVAILABLE, control, ineligible, unstorable
from sidecar.pipeline.context import RequestContext
from sidecar.pipeline.ledger import answer_tokens
from sidecar.pipeline.synth import assemble, events_from_completion, replay
from sidecar.policy.model import CachePolicy
from sidecar.providers.base import Events, Reply
from sidecar.stores.state import StoreUnavailable

log = logging.getLogger("sidecar.cache")

# Request fields that do not change the answer.
# Not in the key: who asks and how the answer travels or is billed, never what it says.
_IGNORED = frozenset(
    {"user", "safety_identifier", "prompt_cache_key", "stream", "stream_options", "metadata"}
    | {"store", "service_tier"}
)


class CacheMiss(SidecarError):
    status = 504
    type = "server_error"
    code = "cache_miss"


def _scope(ctx: RequestContext, policy: CachePolicy) -> str:
    if policy.scope == "global":
        return "*"
    value = ctx.user if policy.scope == "user" else ctx.team
    return f"{policy.scope}={value or '(none)'}"


async def lookup(ctx: RequestContext) -> Reply | None:
    policy = ctx.route.cache if ctx.route else None
    if policy is None:
        return None
    asked, why = control(ctx)
    refused = asked if why is not None else INELIGIBLE
    why = why or ineligible(ctx, policy)
    if why is not None:
        ctx.cache, ctx.cache_reason = refused, why
        if asked == "only-if-cached":
            raise CacheMiss(f"not cacheable ({why}), and the request asked for only-if-cached")
        return None
    answers, index = ctx.snapshot.stores.caches.get(policy)
    body = {k: v for k, v in ctx.client_body.items() if k not in _IGNORED}
    params = {k: v for k, v in body.items() if k != "messages"}
    assert ctx.route is not None
    prefix = f"c:{policy.name}:{ctx.route.name}:{_scope(ctx, policy)}:"
    ctx.cache_key = prefix + similar.digest(body)
    try:
        if asked != "refresh":
            hit = await answers.get(ctx.cache_key)
            if hit is not None:
                return _serve(ctx, hit, "hit")
        probe = await similar.probe(ctx, policy, prefix, params) if index is not None else None
        if probe is not None:  # also on refresh, so the fresh answer is findable
            assert index is not None
            ctx.cache_probe = probe
            found = None
            if asked != "refresh":
                found = await similar.nearest(ctx, policy, index, answers, probe)
            if found is not None:
                ctx.cache_similarity = found[1]
                verify = policy.verify is not None and random.random() < policy.verify.sample
                return _serve(ctx, found[0], "semantic-hit", verify)
        if asked == "only-if-cached":
            raise CacheMiss("no cached answer for this request (only-if-cached)")
        ctx.cache = "miss"
        return await _join_flight(ctx, answers)
    except StoreUnavailable as exc:
        log.error("cache unavailable (%s); asking the provider", exc)
        ctx.cache, ctx.cache_reason = UNAVAILABLE, "store"
        return None


async def _join_flight(ctx: RequestContext, answers: Any) -> Reply | None:
    """The first miss for a key asks upstream (it leads the flight); the others wait for how
    it lands: its answer is theirs, and so is its failure. A leader that leaves without an
    outcome (its app went away, which cancels its call) hands the lead to the first waiter,
    and the rest wait on that one: the herd makes one upstream call at a time."""
    assert ctx.cache_key is not None
    flights = ctx.snapshot.stores.caches.flights
    while True:
        flight = flights.get(ctx.cache_key)
        if flight is None:
            flights[ctx.cache_key] = asyncio.get_running_loop().create_future()
            ctx.cache_leader = True
            return None
        try:
            async with asyncio.timeout(max(0.0, ctx.deadline - time.monotonic())):
                landed = await asyncio.shield(flight)
        except TimeoutError:
            return None
        if isinstance(landed, bytes):
            return _serve(ctx, landed, "hit")
        if isinstance(landed, SidecarError):
            raise landed.with_traceback(None)  # one failure, told to every waiter
        if landed is ALONE:
            return None  # an answer that cannot be shared: each asks for its own, at once


ALONE = "alone"  # the leader's answer cannot be shared (cut, invalid): waiters ask themselves


def land(ctx: RequestContext, outcome: bytes | SidecarError | str | None = None) -> None:
    """End this request's flight with its outcome: the answer as cached (bytes), its
    failure, `ALONE`, or None when it has none (the next waiter leads). Once per flight;
    `store` calls it in any case, from `finish`."""
    if ctx.cache_leader and ctx.cache_key is not None:
        ctx.cache_leader = False
        future = ctx.snapshot.stores.caches.flights.pop(ctx.cache_key, None)
        if future is not None and not future.done():
            future.set_result(outcome)


def _serve(ctx: RequestContext, raw: bytes, how: str, verify: bool = False) -> Reply:
    entry = orjson.loads(raw)
    answer = entry["answer"]
    ctx.cache = how
    if verify:
        ctx.cache_check = answer
    ctx.hit_tokens = _tokens(entry)
    ctx.answer_id = str(answer.get("id") or "")
    by = entry.get("by")  # entries from before feedback do not say
    ctx.hit_by = (str(by[0]), by[1]) if by else None
    if ctx.stream:
        include_usage = bool((ctx.client_body.get("stream_options") or {}).get("include_usage"))
        return Reply(events=replay(events_from_completion(answer, include_usage)))
    return Reply(body=orjson.dumps(answer))


def _tokens(entry: dict[str, Any]) -> tuple[int, int] | None:
    """The stored answer's token counts, which the ledger prices a hit at (entries from
    before the ledger have only the answer's usage)."""
    tokens = entry.get("tokens")
    if tokens is None:
        usage = entry["answer"].get("usage") or {}
        tokens = (usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0)
    return int(tokens[0]), int(tokens[1])


def remember(ctx: RequestContext, reply: Reply) -> Reply:
    """Store the answer once it is complete: now for JSON, at the stream's end for SSE."""
    if ctx.cache != "miss" or ctx.cache_key is None:
        return reply
    if (ctx.output or "valid") in ("invalid", "default"):
        land(ctx, ALONE)
        return reply
    if reply.events is None:
        _keep(ctx, orjson.loads(reply.body))
        return reply
    reply.events = _collect(ctx, reply.events)
    return reply


async def _collect(ctx: RequestContext, events: Events) -> Events:
    seen: list[bytes] = []
    async for batch in events:
        seen += batch
        yield batch
    if seen and seen[-1].startswith(b"data: [DONE]"):
        # A passthrough stream's verdict came with its end, just now.
        if (ctx.output or "valid") in ("invalid", "default"):
            land(ctx, ALONE)
        else:
            _keep(ctx, assemble(seen))


def _keep(ctx: RequestContext, answer: Any) -> None:
    """Keep a complete answer for `store`, unless it calls a tool the policy does not
    let replay; the requests waiting on it then ask for their own."""
    policy = ctx.route.cache if ctx.route else None
    why = unstorable(policy, answer) if policy is not None and _complete(answer) else "cut"
    if why is None:
        ctx.cache_store = answer
        return
    if why != "cut":
        ctx.cache_reason = why
    land(ctx, ALONE)


def _complete(answer: Any) -> bool:
    try:
        return all(c.get("finish_reason") in ("stop", "tool_calls") for c in answer["choices"])
    except (KeyError, TypeError, AttributeError):
        return False


async def store(ctx: RequestContext) -> None:
    """From `finish`: write what `remember` kept, with what it cost (a hit saves that), and
    give it to the requests waiting on this one."""
    policy = ctx.route.cache if ctx.route else None
    answer, ctx.cache_store = ctx.cache_store, None
    entry = None
    try:
        if policy is not None and answer is not None and ctx.cache_key is not None:
            by = [ctx.answered_by.name, ctx.tier] if ctx.answered_by else None
            entry = orjson.dumps(
                {
                    "answer": answer,
                    "cost": ctx.cost_usd or 0.0,
                    "tokens": answer_tokens(ctx),
                    "by": by,
                }
            )
            answers, index = ctx.snapshot.stores.caches.get(policy)
            await answers.put(ctx.cache_key, entry, policy.ttl)
            probe = ctx.cache_probe
            if index is not None and probe is not None:
                await index.add(
                    probe.partition, probe.vector, ctx.cache_key, policy.ttl, probe.guards
                )
    except StoreUnavailable as exc:
        log.error("cache unavailable (%s); answer not stored", exc)
    finally:
        land(ctx, entry)


async def purge(stores: Any, policy: CachePolicy, route: str) -> int:
    """Drop a route's cached answers. The route's cache is opened first: a sidecar that has
    not served the route yet still reaches a shared (Redis) store."""
    stores.caches.get(policy)
    removed = 0
    for answers, index in stores.caches.by_name(policy.name):
        removed += await answers.purge(f"c:{policy.name}:{route}:")
        if index is not None:
            await index.drop(f"c:{policy.name}:{route}:")
    return removed
