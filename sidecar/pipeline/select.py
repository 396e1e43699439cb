"""Stage, after the cache lookup: choose the route's tier for this request, before any call.

In order: the route's rules (features of the request: estimated input tokens, turns,
tools, images, a response format, keywords or a regular expression on the last user
message), first match wins; else the tier classifier (the k nearest labelled examples
vote, and only a clear winner counts); else the route's default tier. A sticky route then
keeps a conversation on the highest tier it reached (state store: shared by replicas).

Everything the rules test was compiled at reload; what they read from the request is
computed only when a rule asks for it. The classifier costs one embedding call through
our own provider layer, charged to the request against the `selection` lever, or nothing
when the same text was embedded a moment ago. A classifier or store that fails never fails
the request: it gets the default tier (or keeps its own), and says why in its reason.

A budget that downgraded the request (admit) has already chosen its model: no tier then.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping
from typing import Any

from sidecar.errors import UpstreamError
from sidecar.pipeline.context import RequestContext
from sidecar.pipeline.ledger import CLASSIFY, charge
from sidecar.policy.model import Selection, TierRule
from sidecar.providers.embed import embed
from sidecar.stores.state import StoreUnavailable
from sidecar.tokens import estimate_request

log = logging.getLogger("sidecar.select")

SESSION_HEADER = "x-sidecar-session"
_SCANNED = 8192  # characters of the last user message that rules and the classifier read
_IMAGES = frozenset({"image_url", "input_image", "image"})


async def select(ctx: RequestContext) -> None:
    route = ctx.route
    chosen = route.select if route is not None else None
    if chosen is None or ctx.downgraded_by is not None:
        return
    rank: int | None = None
    reason = "default"
    features = _Features(ctx.body)
    for rule in chosen.rules:
        if _matches(rule, features, ctx):
            rank, reason = rule.rank, "rule"
            break
    if rank is None and chosen.classifier is not None:
        rank, reason = await _classify(ctx, chosen, features.text)
    if rank is None:
        rank = chosen.default
    if chosen.sticky is not None:
        rank, reason = await _stick(ctx, chosen.sticky, rank, reason, features)
    ctx.tier_rank, ctx.tier, ctx.tier_reason = rank, chosen.tiers[rank].name, reason
    ctx.targets = chosen.tiers[rank].targets  # a job line handed to a provider batch goes there


class _Features:
    """What the rules read from a request, each worked out once, when first asked for."""

    __slots__ = ("_text", "body", "messages")

    def __init__(self, body: Mapping[str, Any]) -> None:
        self.body = body
        messages = body.get("messages")
        self.messages: list[Any] = messages if isinstance(messages, list) else []
        self._text: str | None = None

    @property
    def text(self) -> str:
        """The last user message, as text (its first `_SCANNED` characters)."""
        if self._text is None:
            self._text = ""
            for m in reversed(self.messages):
                if isinstance(m, dict) and m.get("role") == "user":
                    self._text = _plain(m.get("content"))[:_SCANNED]
                    break
        return self._text

    def turns(self) -> int:
        return sum(1 for m in self.messages if isinstance(m, dict) and m.get("role") == "user")

    def images(self) -> bool:
        for m in self.messages:
            content = m.get("content") if isinstance(m, dict) else None
            if isinstance(content, list) and any(
                isinstance(p, dict) and p.get("type") in _IMAGES for p in content
            ):
                return True
        return False


def _matches(rule: TierRule, f: _Features, ctx: RequestContext) -> bool:
    body = f.body
    if rule.tools is not None and bool(body.get("tools")) != rule.tools:
        return False
    if rule.response_format is not None:
        fmt = body.get("response_format")
        asked = isinstance(fmt, dict) and fmt.get("type", "text") != "text"
        if asked != rule.response_format:
            return False
    if rule.min_turns is not None or rule.max_turns is not None:
        turns = f.turns()
        if (rule.min_turns is not None and turns < rule.min_turns) or (
            rule.max_turns is not None and turns > rule.max_turns
        ):
            return False
    if rule.min_input_tokens is not None or rule.max_input_tokens is not None:
        if not ctx.estimate_in:
            ctx.estimate_in = estimate_request(body)
        tokens = ctx.estimate_in
        if (rule.min_input_tokens is not None and tokens < rule.min_input_tokens) or (
            rule.max_input_tokens is not None and tokens > rule.max_input_tokens
        ):
            return False
    if rule.images is not None and f.images() != rule.images:
        return False
    return all(p.search(f.text) for p in rule.patterns)


async def _classify(ctx: RequestContext, chosen: Selection, text: str) -> tuple[int | None, str]:
    assert ctx.route is not None
    stores = ctx.snapshot.stores.classifiers
    classifier = stores.get(ctx.route.name)
    if classifier is None:
        return None, "unavailable"
    if not text.strip():
        return None, "unsure"
    vector = stores.recent(classifier.key, text)
    if vector is None:
        model = classifier.model
        provider = ctx.snapshot.providers.get(model.provider)
        config = ctx.snapshot.policy.providers.get(model.provider)
        if provider is None or config is None:
            return None, "unavailable"
        wait = max(0.0, min(config.timeout, ctx.deadline - time.monotonic()))
        try:
            vectors, tokens = await embed(provider, model.upstream, [text], wait)
        except UpstreamError as exc:
            log.warning("route %s: classifier embedding failed (%s)", ctx.route.name, exc.message)
            return None, "unavailable"
        charge(ctx, model, tokens, 0, purpose=CLASSIFY)
        vector = vectors[0]
        stores.remember(classifier.key, text, vector)
    rank, _ = classifier.vote(vector)
    if rank is None or rank >= len(chosen.tiers):  # unsure, or voted with older tiers
        return None, "unsure"
    return rank, "classifier"


async def _stick(
    ctx: RequestContext, ttl: float, rank: int, reason: str, f: _Features
) -> tuple[int, str]:
    key = _conversation(ctx, f)
    if key is None:
        return rank, reason
    ctx.conversation = key
    try:
        held = await ctx.snapshot.state.stick(key, rank, ttl)
    except StoreUnavailable as exc:
        log.error("state store unavailable (%s): the conversation's tier is not kept", exc)
        return rank, reason
    return (held, "sticky") if held > rank else (rank, reason)


def _conversation(ctx: RequestContext, f: _Features) -> str | None:
    """The conversation's key: the app's `x-sidecar-session`, else a hash of its system
    prompt and first user message, with the caller's identity (two users who both open
    with "hello" are two conversations)."""
    assert ctx.route is not None
    session = ctx.headers.get(SESSION_HEADER)
    digest = hashlib.sha256(f"{ctx.user}\0{ctx.team}\0{ctx.app_key}\0".encode())
    if session:
        digest.update(b"s\0" + session.encode())
    else:
        first = system = None
        for m in f.messages:
            if not isinstance(m, dict):
                continue
            if m.get("role") in ("system", "developer") and system is None:
                system = _plain(m.get("content"))
            elif m.get("role") == "user":
                first = _plain(m.get("content"))
                break
        if first is None:
            return None
        digest.update(f"c\0{system or ''}\0{first}".encode())
    return f"tier:{ctx.route.name}:{digest.hexdigest()[:32]}"


def _plain(content: Any) -> str:
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""
