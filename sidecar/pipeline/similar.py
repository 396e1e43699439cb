"""The semantic half of a cache lookup: what is embedded, what else a hit must share, and
which neighbour (if any) may answer.

A semantic hit needs, besides `similarity`:
- the same partition: route, scope value, every request parameter that can change the
  answer (model alias, temperature, tools offered, response_format, ...), the system prompt
  (by hash) and, with `input: last_user`, the rest of the conversation (by hash: the turns
  before the last user message and any after it); `input: conversation` embeds those turns
  instead, so a follow-up may match a paraphrased conversation;
- the same guard signature (policy/guards.py): the specific tokens of the embedded text
  (numbers, amounts, dates, ids, quoted strings, e-mails, URLs, names if asked), read once
  here and stored with the entry;
- a similarity at or above the cache's effective threshold, which verification may have
  raised above the policy's (stores/agreement.py).

Neighbours are tried nearest first: a near miss refused by a guard does not hide a true
paraphrase behind it. When none may answer, the first refusal is the miss's reason.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from sidecar.pipeline.context import RequestContext
from sidecar.pipeline.embed import embed
from sidecar.pipeline.ledger import EMBED
from sidecar.policy.guards import Signature, mismatch
from sidecar.policy.model import CachePolicy

if TYPE_CHECKING:  # numpy and usearch load only when a policy has a semantic cache
    from sidecar.stores.answers import Answers
    from sidecar.stores.semantic import SemanticIndex

_SYSTEM = frozenset({"system", "developer"})


@dataclass(frozen=True, slots=True)
class Probe:
    """A semantic lookup's work, kept to store the answer under: computed once."""

    partition: str
    vector: Any  # a unit numpy vector
    guards: Signature


def digest(value: Any) -> str:
    return hashlib.sha256(orjson.dumps(value, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]


def text_of(content: Any) -> str:
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return str(content or "")


def _turn(message: Any) -> str:
    text = text_of(message.get("content"))
    for call in message.get("tool_calls") or ():
        fn = call.get("function") or {}
        text += f" {fn.get('name')}({fn.get('arguments')})"
    return f"{message.get('role')}: {text}"


def split(messages: list[Any], whole: bool) -> tuple[str, Any]:
    """(the text to embed, the context a hit must share besides the parameters)."""
    system = [m for m in messages if m.get("role") in _SYSTEM]
    turns = [m for m in messages if m.get("role") not in _SYSTEM]
    if whole:
        return "\n".join(_turn(m) for m in turns), [system]
    last = next((i for i in range(len(turns) - 1, -1, -1) if turns[i].get("role") == "user"), -1)
    if last < 0:
        return "", [system, turns]
    return text_of(turns[last].get("content")), [system, turns[:last], turns[last + 1 :]]


async def probe(
    ctx: RequestContext, policy: CachePolicy, prefix: str, params: dict[str, Any]
) -> Probe | None:
    """Embed the request's text; None when the embedder failed (exact lookup only)."""
    assert policy.embedding is not None
    text, context = split(ctx.client_body.get("messages") or [], policy.whole_conversation)
    vectors = await embed(ctx, policy.embedding, [text], EMBED)
    if vectors is None:
        return None
    partition = prefix + digest([params, context, policy.guards.kinds])
    return Probe(partition, vectors[0], policy.guards.signature(text))


async def nearest(
    ctx: RequestContext,
    policy: CachePolicy,
    index: SemanticIndex,
    answers: Answers,
    found: Probe,
) -> tuple[bytes, float] | None:
    """The stored entry of the nearest neighbour that may answer, with its similarity;
    else None, with the reason of the first refusal in `ctx.cache_reason`."""
    threshold = ctx.snapshot.stores.caches.agreements.threshold(policy)
    refused: str | None = None
    for key, similarity, guards in await index.search(found.partition, found.vector, time.time()):
        if similarity < policy.similarity:
            break
        kind = mismatch(found.guards, guards)
        if kind is not None:
            refused = refused or f"guard:{kind}"
            continue
        if similarity < threshold:
            refused = refused or "tightened"
            continue
        raw = await answers.get(key)
        if raw is not None:
            return raw, similarity
    ctx.cache_reason = refused
    return None
