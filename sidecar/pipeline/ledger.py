"""The savings ledger: what a request cost, what it would have cost without the sidecar,
and which lever made the difference. Fed as calls are charged; tallied once, in `finish`.

Baseline: the route's `baseline` model (default: its dearest target) at the request's own
token counts (the input before any trimming, the answer's output), uncached, unbatched, one
call. Actual: every call the request paid for, each a `Spend` recorded by `charge`. The
difference is split by lever in a fixed order, each step priced on what the one before
left, so the levers always add up to baseline - actual:

    the answer's tokens at the baseline model's prices                    = baseline
      - selection     the answering model's prices instead, same tokens
      - trim          the input tokens removed before sending, not paid for
      - prompt_cache  cached reads at `cached_input`, writes at `cache_write` (a write
                      dearer than input makes this negative)
      - batch         the provider batch discount
                                                                          = the answer's cost
      - every other call, whole, against the lever that made it:
        a semantic lookup's embedding → cache, a tier classifier's → selection,
        a refined validation retry → retry,
        a losing hedge → hedge, a rejected cascade step → escalation, a sampled
        verification call → shadow

A cache hit makes no answering call: the `cache` lever is the baseline at the stored
answer's token counts (less the lookup's embedding, as above).

How a lever plugs in (model selection, prompt economy, batching, caching):
- A lever that changes how the answer is priced says so where it acts: trimming adds the
  tokens it removed to `ctx.trimmed_tokens`; a provider batch call is charged with
  `batch=True` (priced with the model's `price.batch` share). Selection needs nothing: a
  cheaper model answering is seen in the answer's `Spend`.
- A lever that makes calls beyond the answer marks them with its purpose: set
  `ctx.purpose` before dispatching them (validation retries do), pass `purpose=` to
  `charge`, or `retag` a call whose answer it threw away (a cascade's rejected step:
  `retag(spend, ESCALATION)`; the first ANSWER left is the answer).
- A new lever name goes at the end of `stores.state.LEVERS`, a new purpose into `AGAINST`:
  usage rows in every backend, /usage, `llm-sidecar usage`, `top`, the metric and
  bench/savings.py's table follow from those.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sidecar.pipeline.pricing import cost_usd
from sidecar.policy.model import Model
from sidecar.stores.state import LEVERS, Usage

if TYPE_CHECKING:
    from sidecar.pipeline.context import RequestContext

ANSWER = "answer"
RETRY = "retry"
HEDGE = "hedge"
ESCALATION = "escalation"
SHADOW = "shadow"
EMBED = "embed"
CLASSIFY = "classify"  # the request's embedding for the tier classifier
# The lever each kind of extra call counts against.
AGAINST = {RETRY: "retry", HEDGE: "hedge", ESCALATION: "escalation", SHADOW: "shadow"}
AGAINST[EMBED] = "cache"
AGAINST[CLASSIFY] = "selection"
HITS = frozenset({"hit", "semantic-hit"})

_AT = {name: i for i, name in enumerate(LEVERS)}
_CACHE, _SELECTION, _TRIM = _AT["cache"], _AT["selection"], _AT["trim"]
_PROMPT_CACHE, _BATCH = _AT["prompt_cache"], _AT["batch"]


@dataclass(slots=True)
class Spend:
    """One call the request paid for."""

    model: Model
    input_tokens: int  # every input token, cached reads and cache writes included
    output_tokens: int
    cached: int  # input tokens read from the provider's prompt cache
    written: int  # input tokens written to it
    purpose: str  # ANSWER, or what the extra call was for
    batch: bool  # sent through the provider's batch API
    cost: float  # USD, as charged
    written_1h: int = 0  # of `written`, to Anthropic's hour-long cache


@dataclass(slots=True)
class Ledger:
    baseline_usd: float
    saved: tuple[float, ...]  # USD per lever, in LEVERS order, signed; () when none moved

    @property
    def saved_usd(self) -> float:
        return sum(self.saved, 0.0)

    def lever(self, name: str) -> float:
        return self.saved[_AT[name]] if self.saved else 0.0

    def by_lever(self) -> dict[str, float]:
        """The levers that moved, by name."""
        return {name: usd for name, usd in zip(LEVERS, self.saved, strict=False) if usd}


def charge(
    ctx: RequestContext,
    model: Model,
    input_tokens: int,
    output_tokens: int,
    cached: int = 0,
    written: int = 0,
    *,
    purpose: str | None = None,
    batch: bool = False,
    written_1h: int = 0,
) -> Spend:
    """Record one paid call and add its cost to the request's."""
    cost = cost_usd(model.price, input_tokens, output_tokens, cached, written, batch, written_1h)
    spend = Spend(
        model,
        input_tokens,
        output_tokens,
        cached,
        written,
        purpose or ctx.purpose,
        batch,
        cost,
        written_1h,
    )
    ctx.spend.append(spend)
    ctx.cost_usd = cost if ctx.cost_usd is None else ctx.cost_usd + cost
    return spend


def retag(spend: Spend, purpose: str) -> None:
    """A call first charged as the answer turned out to be extra (its answer was not used)."""
    spend.purpose = purpose


def answer_tokens(ctx: RequestContext) -> tuple[int, int] | None:
    """The request's own (input before trimming, output) token counts: what a cache entry
    keeps, so a hit can be priced at the baseline."""
    for spend in ctx.spend:
        if spend.purpose == ANSWER:
            return spend.input_tokens + ctx.trimmed_tokens, spend.output_tokens
    return None


def _plain(ctx: RequestContext) -> Spend | None:
    """The common case, kept cheap: one call, to the baseline, at list price. No lever."""
    spent = ctx.spend
    if len(spent) != 1 or ctx.route is None or ctx.cache in HITS:
        return None
    only = spent[0]
    if (
        only.model is not ctx.route.baseline
        or only.purpose != ANSWER
        or only.cached
        or only.written
        or only.batch
        or ctx.trimmed_tokens
    ):
        return None
    return only


def saved_header(ctx: RequestContext) -> str:
    """`x-sidecar-saved-usd`."""
    return "0.00000000" if _plain(ctx) else f"{tally(ctx).saved_usd:.8f}"


def tally(ctx: RequestContext) -> Ledger:
    plain = _plain(ctx)
    if plain is not None:
        return Ledger(plain.cost, ())
    saved = [0.0] * len(LEVERS)
    moved = False
    answer: Spend | None = None
    for spend in ctx.spend:
        if spend.purpose == ANSWER and answer is None:
            answer = spend
        elif spend.cost:
            saved[_AT[AGAINST.get(spend.purpose, "retry")]] -= spend.cost
            moved = True
    reference = ctx.route.baseline if ctx.route is not None else None
    baseline = 0.0
    if ctx.cache in HITS:
        if reference is not None and ctx.hit_tokens is not None:
            baseline = _listed(reference, *ctx.hit_tokens)
        saved[_CACHE] += baseline
        moved = moved or baseline != 0.0
    elif answer is not None:
        price = answer.model.price
        tokens_in, tokens_out = answer.input_tokens, answer.output_tokens
        untrimmed = tokens_in + ctx.trimmed_tokens
        listed = baseline = _listed(answer.model, untrimmed, tokens_out)
        if reference is not None and reference is not answer.model:
            baseline = _listed(reference, untrimmed, tokens_out)
            saved[_SELECTION] = baseline - listed
        if ctx.trimmed_tokens:
            saved[_TRIM] = ctx.trimmed_tokens * price.input / 1e6
            listed -= saved[_TRIM]
        unbatched = listed
        if answer.cached or answer.written:
            unbatched = cost_usd(
                price,
                tokens_in,
                tokens_out,
                answer.cached,
                answer.written,
                written_1h=answer.written_1h,
            )
            saved[_PROMPT_CACHE] = listed - unbatched
        if answer.batch:
            saved[_BATCH] = unbatched - answer.cost
        moved = moved or any(saved)
    return Ledger(baseline, tuple(saved) if moved else ())


def _listed(model: Model, tokens_in: int, tokens_out: int) -> float:
    """At list price: no cached input, no batch discount."""
    return (tokens_in * model.price.input + tokens_out * model.price.output) / 1e6


def usage(ctx: RequestContext) -> Usage:
    """The request's usage row contribution, its ledger tallied (and kept for telemetry)."""
    ledger = ctx.ledger = tally(ctx)
    return Usage(
        1,
        ctx.input_tokens,
        ctx.output_tokens,
        ctx.cached_tokens,
        ctx.cost_usd or 0.0,
        ledger.saved_usd,
        ledger.saved,
    )
