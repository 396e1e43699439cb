"""The circuit breaker's state machine and the retry backoff, with a controlled clock."""

from __future__ import annotations

from sidecar.policy.model import Circuit, Retry
from sidecar.stores.breakers import CLOSED, HALF_OPEN, OPEN, Breaker

CONSECUTIVE = Circuit(consecutive_failures=3, cooldown=10.0)


def test_opens_after_consecutive_failures_and_a_success_resets_the_count():
    b = Breaker()
    for failed in (True, True, False, True, True):
        assert b.allow(CONSECUTIVE, 0.0)
        b.record(CONSECUTIVE, failed, 0.0)
    assert b.state == CLOSED
    b.record(CONSECUTIVE, True, 1.0)
    assert b.state == OPEN
    assert not b.allow(CONSECUTIVE, 5.0)


def test_half_open_lets_exactly_one_probe_through():
    b = Breaker()
    for _ in range(3):
        b.record(CONSECUTIVE, True, 0.0)
    assert b.allow(CONSECUTIVE, 10.0)  # cooldown over: the probe
    assert b.state == HALF_OPEN
    assert not b.allow(CONSECUTIVE, 10.1)  # everyone else still skips
    b.record(CONSECUTIVE, False, 10.2)
    assert b.state == CLOSED
    assert b.allow(CONSECUTIVE, 10.3)


def test_failed_probe_reopens_for_a_new_cooldown():
    b = Breaker()
    for _ in range(3):
        b.record(CONSECUTIVE, True, 0.0)
    assert b.allow(CONSECUTIVE, 10.0)
    b.record(CONSECUTIVE, True, 10.0)
    assert b.state == OPEN
    assert not b.allow(CONSECUTIVE, 19.0)
    assert b.allow(CONSECUTIVE, 20.0)


def test_abandoned_probe_frees_the_slot_for_another():
    b = Breaker()
    for _ in range(3):
        b.record(CONSECUTIVE, True, 0.0)
    assert b.allow(CONSECUTIVE, 10.0)
    b.record(CONSECUTIVE, None, 10.0)  # cancelled: says nothing
    assert b.state == HALF_OPEN
    assert b.allow(CONSECUTIVE, 10.1)


def test_failure_ratio_needs_min_calls_inside_the_window():
    ratio = Circuit(consecutive_failures=None, failure_ratio=0.5, min_calls=4, window=10.0)
    b = Breaker()
    for t, failed in ((0.0, True), (1.0, False), (2.0, True)):
        b.record(ratio, failed, t)
    assert b.state == CLOSED  # three calls: too few to judge
    b.record(ratio, False, 20.0)  # the old calls left the window
    assert b.state == CLOSED
    for t in (21.0, 22.0):
        b.record(ratio, True, t)
    b.record(ratio, False, 23.0)
    assert b.state == OPEN  # 2 of the 4 calls in the window failed


def test_backoff_doubles_up_to_its_cap_and_jitter_stays_within_half():
    retry = Retry(attempts=6, backoff=0.1, backoff_max=0.5, jitter=False)
    assert [retry.pause(n, 0.0) for n in range(1, 6)] == [0.1, 0.2, 0.4, 0.5, 0.5]
    jittered = Retry(backoff=1.0, backoff_max=10.0, jitter=True)
    assert jittered.pause(1, 0.0) == 0.5
    assert jittered.pause(1, 0.999) < 1.0


def test_an_open_circuit_is_seen_half_open_once_its_cooldown_is_over():
    b = Breaker()
    for _ in range(3):
        b.record(CONSECUTIVE, True, 0.0)
    assert b.seen_at(9.9) == OPEN
    assert b.seen_at(10.0) == HALF_OPEN  # before anyone asks
    assert b.state == OPEN  # looking changes nothing
    assert b.allow(CONSECUTIVE, 10.0)
