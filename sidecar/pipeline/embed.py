"""Embeddings a request needs for itself (a semantic cache lookup, a verification's
comparison), through our own provider layer, charged to the request with a purpose.

A failure is not the request's: the cache is an optimisation, so the caller goes on
without vectors (None) instead of failing with the embedder.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

import orjson

from sidecar.errors import UpstreamError
from sidecar.pipeline.ledger import charge
from sidecar.policy.model import Model
from sidecar.providers.base import EMBEDDINGS, Call

if TYPE_CHECKING:
    import numpy as np

    from sidecar.pipeline.context import RequestContext

log = logging.getLogger("sidecar.cache")


async def embed(
    ctx: RequestContext, model: Model, texts: list[str], purpose: str
) -> np.ndarray | None:
    """Unit vectors, one row per text; None when the embedding model fails. Waits at most
    the model's provider timeout and what is left of the request's deadline."""
    import numpy as np  # only semantic caches need it

    provider = ctx.snapshot.providers[model.provider]
    # Providers leave a JSON call's deadline to their caller, as dispatch does.
    timeout = ctx.snapshot.policy.providers[model.provider].timeout
    timeout = max(0.0, min(timeout, ctx.deadline - time.monotonic()))
    body: dict[str, Any] = {"input": texts[0] if len(texts) == 1 else texts}
    try:
        async with asyncio.timeout(timeout):
            call = Call(EMBEDDINGS, body, model.upstream, False)
            if model.embeddings is None:
                reply = await provider.send(call)
            else:  # with other requests' lookups, as one call (stores/micro_batches.py)
                reply = await ctx.snapshot.stores.micro_batches.send(
                    provider, call, model.embeddings
                )
        answer = orjson.loads(reply.body)
        rows = sorted(answer["data"], key=lambda d: d.get("index", 0))
        raw = [row["embedding"] for row in rows]
        vectors = np.asarray(raw, dtype=np.float32).reshape(len(texts), -1)
    except TimeoutError:
        return _none(f"no answer within {timeout:g}s")
    except UpstreamError as exc:
        return _none(exc.message)
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, ValueError) as exc:
        return _none(exc.__class__.__name__)
    tokens = int((answer.get("usage") or {}).get("prompt_tokens") or 0)
    charge(ctx, model, tokens, 0, purpose=purpose)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return vectors / norms


def _none(why: str) -> None:
    log.warning("semantic cache: embedding failed (%s)", why)
