"""The ledger's arithmetic for the levers that later features plug in (trim, batch,
escalation), by hand: each case says what it would cost at the baseline, what was paid,
and which lever the difference belongs to. The levers that exist are checked end to end
in tests/integration/test_ledger.py."""

from __future__ import annotations

from typing import Any

import pytest

from sidecar.pipeline.context import RequestContext
from sidecar.pipeline.ledger import ESCALATION, SHADOW, charge, retag, tally
from sidecar.policy.model import Model, Price, Retry, Route, Target

BIG = Model("big", "p", "big", Price(input=3.0, output=15.0, batch=0.5))
SMALL = Model("small", "p", "small", Price(input=1.0, output=4.0, cached_input=0.1, batch=0.5))


def context(baseline: Model = BIG) -> RequestContext:
    route = Route(
        "r", "r", (), (Target(SMALL, Retry()), Target(BIG, Retry())), 10.0, baseline=baseline
    )
    none: Any = None  # the snapshot: the ledger never reads it
    ctx = RequestContext("chat", {}, {}, none)
    ctx.route = route
    return ctx


def test_levers_apply_in_order_and_add_up_to_baseline_minus_actual():
    ctx = context()
    ctx.trimmed_tokens = 1000  # trimmed from 3000 input tokens: 2000 were sent
    charge(ctx, SMALL, 2000, 100, cached=1500, batch=True)
    ledger = tally(ctx)
    # baseline: big at the untrimmed 3000 in + 100 out = 9000 + 1500 (per 1M)
    assert ledger.baseline_usd == pytest.approx(10500e-6)
    by = ledger.by_lever()
    assert by["selection"] == pytest.approx((10500 - (3000 + 400)) * 1e-6)  # small's list price
    assert by["trim"] == pytest.approx(1000e-6)  # 1000 tokens at small's input price
    assert by["prompt_cache"] == pytest.approx(1500 * 0.9e-6)  # read at 0.1 instead of 1
    paid_unbatched = (500 * 1 + 1500 * 0.1 + 100 * 4) * 1e-6
    assert by["batch"] == pytest.approx(paid_unbatched / 2)
    assert ctx.cost_usd == pytest.approx(paid_unbatched / 2)
    assert ledger.saved_usd == pytest.approx(ledger.baseline_usd - ctx.cost_usd)


def test_an_escalated_cascade_step_is_spend_against_the_saving():
    """A cheap step whose answer was rejected, then the baseline model answered: selection
    saved nothing, the wasted step is the escalation lever's cost."""
    ctx = context()
    rejected = charge(ctx, SMALL, 1000, 100)
    retag(rejected, ESCALATION)
    charge(ctx, BIG, 1000, 100)
    ledger = tally(ctx)
    assert ledger.baseline_usd == pytest.approx(4500e-6)
    assert ledger.by_lever() == {"escalation": pytest.approx(-1400e-6)}
    assert ctx.cost_usd == pytest.approx(5900e-6)


def test_a_shadow_call_costs_without_changing_the_baseline():
    ctx = context()
    charge(ctx, SMALL, 1000, 100)
    charge(ctx, BIG, 1000, 100, purpose=SHADOW)
    by = tally(ctx).by_lever()
    assert by == {"selection": pytest.approx(3100e-6), "shadow": pytest.approx(-4500e-6)}


def test_one_call_to_the_baseline_at_list_price_moves_no_lever():
    ctx = context()
    charge(ctx, BIG, 1000, 100)
    ledger = tally(ctx)
    assert ledger.saved == ()
    assert ledger.baseline_usd == pytest.approx(4500e-6)
    assert ledger.saved_usd == 0.0
