"""Stage: answer from the cache when the same question (or, in semantic mode, a similar
enough one) was answered before; otherwise remember the answer once it is complete.

Exact keys hash the normalised request: the model alias, the messages and every parameter
that can change the answer, in sorted-key canonical JSON — not `user`, stream flags or
request metadata — so key order and whitespace never cause a miss. Keys are scoped to the
user or team unless the cache says `scope: global`. Cacheable by default: requests with
`temperature: 0` and no tools (tools may act; a cached answer would skip the action).
Only complete, successful answers are stored (never an error, a `length` cut, an invalid
output or a broken stream). Concurrent identical misses wait for the first one's answer.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from typing import Any

import orjson

from sidecar.errors import SidecarError, UpstreamError
from sidecar.pipeline.context import RequestContext
from sidecar.pipeline.ledger import EMBED, answer_tokens, charge
from sidecar.pipeline.synth import assemble, events_from_completion, replay
from sidecar.policy.model import CachePolicy
from sidecar.providers.base import EMBEDDINGS, Call, Events, Reply
from sidecar.stores.state import StoreUnavailable

log = logging.getLogger("sidecar.cache")

# Request fields that do not change the answer.
_IGNORED = frozenset({"user", "stream", "stream_options", "metadata", "store", "service_tier"})


class CacheMiss(SidecarError):
    status = 504
    type = "server_error"
    code = "cache_miss"


def _control(ctx: RequestContext) -> str:
    control = (ctx.headers.get("x-sidecar-cache") or "").lower()
    if "no-store" in (ctx.headers.get("cache-control") or "").lower():
        return "bypass"
    return control


def _cacheable(ctx: RequestContext, policy: CachePolicy) -> bool:
    body = ctx.client_body
    if body.get("tools") and not policy.tools:
        return False
    return policy.any_temperature or body.get("temperature") == 0


def _scope(ctx: RequestContext, policy: CachePolicy) -> str:
    if policy.scope == "global":
        return "*"
    value = ctx.user if policy.scope == "user" else ctx.team
    return f"{policy.scope}={value or '(none)'}"


def _digest(value: Any) -> str:
    return hashlib.sha256(orjson.dumps(value, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]


async def lookup(ctx: RequestContext) -> Reply | None:
    policy = ctx.route.cache if ctx.route else None
    if policy is None:
        return None
    control = _control(ctx)
    if control == "bypass" or not _cacheable(ctx, policy):
        ctx.cache = "bypass"
        if control == "only-if-cached":
            raise CacheMiss("not cacheable, and the request asked for only-if-cached")
        return None
    answers, index = ctx.snapshot.stores.caches.get(policy)
    body = {k: v for k, v in ctx.client_body.items() if k not in _IGNORED}
    params = {k: v for k, v in body.items() if k != "messages"}
    assert ctx.route is not None
    prefix = f"c:{policy.name}:{ctx.route.name}:{_scope(ctx, policy)}:"
    ctx.cache_key = prefix + _digest(body)
    try:
        if control != "refresh":
            hit = await answers.get(ctx.cache_key)
            if hit is not None:
                return _serve(ctx, hit, "hit")
        vector = await _embed(ctx, policy) if index is not None else None
        if vector is not None:  # also on refresh, so the fresh answer is findable
            assert index is not None
            ctx.cache_vector = (prefix + _digest(params), vector)
            if control != "refresh":
                found = await index.search(ctx.cache_vector[0], vector, time.time())
                if found is not None and found[1] >= policy.similarity:
                    hit = await answers.get(found[0])
                    if hit is not None:
                        ctx.cache_similarity = found[1]
                        return _serve(ctx, hit, "semantic-hit")
        if control == "only-if-cached":
            raise CacheMiss("no cached answer for this request (only-if-cached)")
        ctx.cache = "miss"
        return await _join_flight(ctx, answers)
    except StoreUnavailable as exc:
        log.error("cache unavailable (%s); asking the provider", exc)
        ctx.cache = "bypass"
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


def _serve(ctx: RequestContext, raw: bytes, how: str) -> Reply:
    entry = orjson.loads(raw)
    answer = entry["answer"]
    ctx.cache = how
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


async def _embed(ctx: RequestContext, policy: CachePolicy) -> Any:
    """The prompt's embedding, through our own provider layer; its cost is the request's.
    None when the embedding model fails: the cache is an optimisation, so the request goes
    on with the exact key only instead of failing with the embedder."""
    import numpy as np  # only semantic caches need it

    model = policy.embedding
    assert model is not None
    messages = ctx.client_body.get("messages") or []
    if policy.whole_conversation:
        text = "\n".join(f"{m.get('role')}: {_text(m.get('content'))}" for m in messages)
    else:
        text = next(
            (_text(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), ""
        )
    provider = ctx.snapshot.providers[model.provider]
    # Providers leave a JSON call's deadline to their caller, as dispatch does.
    timeout = ctx.snapshot.policy.providers[model.provider].timeout
    timeout = max(0.0, min(timeout, ctx.deadline - time.monotonic()))
    try:
        async with asyncio.timeout(timeout):
            call = Call(EMBEDDINGS, {"input": text}, model.upstream, False)
            if model.embeddings is None:
                reply = await provider.send(call)
            else:  # with other requests' lookups, as one call
                reply = await ctx.snapshot.stores.micro_batches.send(
                    provider, call, model.embeddings
                )
        answer = orjson.loads(reply.body)
        raw = answer["data"][0]["embedding"]
    except TimeoutError:
        return _no_vector(f"no answer within {timeout:g}s")
    except UpstreamError as exc:
        return _no_vector(exc.message)
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError) as exc:
        return _no_vector(exc.__class__.__name__)
    tokens = int((answer.get("usage") or {}).get("prompt_tokens") or 0)
    charge(ctx, model, tokens, 0, purpose=EMBED)
    vector = np.asarray(raw, dtype=np.float32)
    norm = float(np.linalg.norm(vector)) or 1.0
    return vector / norm


def _no_vector(why: str) -> None:
    log.warning("semantic cache: embedding failed (%s); exact lookup only", why)


def _text(content: Any) -> str:
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return str(content or "")


def remember(ctx: RequestContext, reply: Reply) -> Reply:
    """Store the answer once it is complete: now for JSON, at the stream's end for SSE."""
    if ctx.cache != "miss" or ctx.cache_key is None:
        return reply
    if (ctx.output or "valid") in ("invalid", "default"):
        land(ctx, ALONE)
        return reply
    if reply.events is None:
        answer = orjson.loads(reply.body)
        if _complete(answer):
            ctx.cache_store = answer
        else:
            land(ctx, ALONE)
        return reply
    reply.events = _collect(ctx, reply.events)
    return reply


async def _collect(ctx: RequestContext, events: Events) -> Events:
    seen: list[bytes] = []
    async for batch in events:
        seen += batch
        yield batch
    if seen and seen[-1].startswith(b"data: [DONE]"):
        answer = assemble(seen)
        # A passthrough stream's verdict came with its end, just now.
        if _complete(answer) and (ctx.output or "valid") not in ("invalid", "default"):
            ctx.cache_store = answer
        else:
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
            if index is not None and ctx.cache_vector is not None:
                partition, vector = ctx.cache_vector
                await index.add(partition, vector, ctx.cache_key, policy.ttl)
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
