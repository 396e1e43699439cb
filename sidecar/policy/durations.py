"""Durations in policy files are strings with a unit, so a bare number is never ambiguous."""

from __future__ import annotations

import re

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*$")
_SCALE = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Seconds in `text` ('250ms', '30s', '5m', '1h'); ValueError says what is accepted."""
    m = _DURATION.match(text) if isinstance(text, str) else None
    if m is None:
        raise ValueError(f"'{text}' is not a duration (use e.g. 250ms, 30s, 5m, 1h)")
    return float(m.group(1)) * _SCALE[m.group(2)]
