"""Durations are strings with a unit, so a bare number is never ambiguous."""

from __future__ import annotations

import pytest

from sidecar.policy.durations import parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1.5s", 1.5),
        ("0ms", 0.0),
    ],
)
def test_a_duration_with_a_unit_is_read_in_seconds(text: str, seconds: float):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["30", "5 minutes", "1d", "", "-5s", "s", "1h30m", "30sec"])
def test_anything_else_is_refused_with_the_accepted_forms(text: str):
    with pytest.raises(ValueError, match=r"is not a duration \(use e\.g\. 250ms, 30s, 5m, 1h\)"):
        parse_duration(text)
