"""The answer lengths budget holds are sized from: a high percentile, per route."""

from __future__ import annotations

from sidecar.stores.answer_sizes import KEPT, AnswerSizes


def test_the_95th_percentile_of_recent_answers_per_route():
    sizes = AnswerSizes()
    assert sizes.high("chat") is None  # no answers yet: the caller's default
    for tokens in range(1, 101):  # 1..100 tokens
        sizes.note("chat", tokens)
    assert sizes.high("chat") == 95
    sizes.note("chat", 10_000)  # one long answer moves it by one rank, not to 10,000
    assert sizes.high("chat") == 96
    assert sizes.high("other") is None


def test_only_recent_answers_count():
    sizes = AnswerSizes()
    for _ in range(KEPT):
        sizes.note("chat", 4000)
    for _ in range(KEPT):
        sizes.note("chat", 20)  # the route's answers got short
    assert sizes.high("chat") == 20
