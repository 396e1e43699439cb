"""The arithmetic of shadow trials and quality signals: agreement by method, the Wilson
interval, latency quantiles from bucket counts, and what reads as cut off, refused or
empty."""

from __future__ import annotations

import random
from typing import Any

import pytest

from sidecar.pipeline.judge import signals
from sidecar.policy.model import QualityConfig, refusal_pattern
from sidecar.shadow.compare import compare, cosine, said, structured
from sidecar.shadow.results import BOUNDS, compared, quantile, sums, wilson


def answer(content: str | None = None, calls: list[tuple[str, str]] | None = None) -> Any:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = [
            {"id": f"c{i}", "type": "function", "function": {"name": n, "arguments": a}}
            for i, (n, a) in enumerate(calls)
        ]
    return {"choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}


def agree(a: Any, b: Any, is_structured: bool = False, similarity: float | None = None) -> Any:
    return compare(said(a, is_structured), said(b, is_structured), is_structured, similarity, 0.9)


def test_text_agrees_exactly_whitespace_aside_or_when_close_enough():
    assert agree(answer("Hello  world\n"), answer("Hello world")).exact
    assert not agree(answer("Hello world"), answer("Hello, world")).agree
    close = agree(answer("Hello world"), answer("Hi world"), similarity=0.93)
    assert (close.agree, close.exact, close.similarity) == (True, False, 0.93)
    assert not agree(answer("Hello world"), answer("Bye"), similarity=0.5).agree


def test_structured_output_agrees_on_equal_json_only():
    a = answer('{"id": 7, "tags": ["x"]}')
    same = agree(a, answer('Here it is:\n```json\n{"tags":["x"],"id":7}\n```'), True)
    assert (same.agree, same.json_equal, same.exact) == (True, True, False)
    other = agree(a, answer('{"id": 8, "tags": ["x"]}'), True, similarity=0.99)
    assert (other.agree, other.json_equal) == (False, False)  # close text is not equal JSON
    prose = agree(a, answer("id 7, tag x"), True)
    assert (prose.agree, prose.json_equal) == (False, False)
    # A primary that is not JSON leaves nothing for JSON to decide: text rules apply.
    assert agree(answer("no json"), answer("no json"), True).json_equal is None


def test_tool_calls_compare_by_name_and_arguments():
    a = answer(calls=[("lookup", '{"order": 7, "full": true}')])
    assert agree(a, answer(calls=[("lookup", '{"full":true,"order":7}')]), True).agree
    assert not agree(a, answer(calls=[("refund", '{"order": 7, "full": true}')]), True).agree
    assert agree(a, answer(calls=[("lookup", '{"order": 7, "full": true}')])).exact


def test_what_counts_as_structured_output():
    assert structured({}, route_checks=True)
    assert structured({"response_format": {"type": "json_object"}}, False)
    assert structured({"tool_choice": {"type": "function", "function": {"name": "f"}}}, False)
    assert not structured({"response_format": {"type": "text"}}, False)


def test_cosine():
    assert cosine([1, 0], [1, 0]) == pytest.approx(1.0)
    assert cosine([1, 0], [0, 2]) == pytest.approx(0.0)
    assert cosine([0, 0], [1, 1]) == 0.0


@pytest.mark.parametrize(
    ("agreed", "n", "low", "high"),
    [
        # Published values (Newcombe 1998, table I; z = 1.96)
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (20, 20, 0.8389, 1.0),
    ],
)
def test_the_wilson_interval_matches_published_values(agreed, n, low, high):
    got = wilson(agreed, n)
    assert got == (pytest.approx(low, abs=1e-4), pytest.approx(high, abs=1e-4))


def test_latency_quantiles_from_buckets_land_within_a_bucket_of_the_truth():
    rng = random.Random(7)
    seconds = [rng.lognormvariate(-1.0, 0.8) for _ in range(2000)]
    row: dict[str, float] = {}
    for s in seconds:
        for k, v in compared(agree(answer("a"), answer("a")), None, s, 0.1, 0.0, 0.0).items():
            row[k] = row.get(k, 0.0) + v
    ordered = sorted(seconds)
    for q in (0.5, 0.95):
        true = ordered[int(q * len(ordered))]
        assert quantile(row, "c", q) == pytest.approx(true, rel=0.1)
    assert quantile(row, "p", 0.5) == pytest.approx(0.1, rel=0.2)
    assert quantile({}, "c", 0.5) is None
    assert BOUNDS[0] == 0.005


def test_rows_add_up_per_route_and_candidate_over_the_days_asked():
    rows = {
        "s|chat|mini|2026-12-01": {"n": 2, "agree": 1},
        "s|chat|mini|2026-12-02": {"n": 3, "agree": 3},
        "s|chat|mini|2026-11-01": {"n": 50, "agree": 0},  # outside the window
        "s|a:b/c|m@x|2026-12-02": {"n": 1},  # names with the policy's other characters
    }
    assert sums(rows, ["2026-12-01", "2026-12-02"]) == {
        ("chat", "mini"): {"n": 5, "agree": 4},
        ("a:b/c", "m@x"): {"n": 1},
    }


QUALITY = QualityConfig()


@pytest.mark.parametrize(
    ("text", "tools", "refusal", "finish", "expected"),
    [
        ("Sure, here it is.", False, False, ["stop"], ()),
        ("Sure, here it", False, False, ["length"], ("truncated",)),
        ("", False, False, ["length"], ("truncated", "empty")),
        ("   \n", False, False, ["stop"], ("empty",)),
        ("", True, False, ["tool_calls"], ()),  # a tool call is an answer
        ("I'm sorry, but I can't help with that.", False, False, ["stop"], ("refusal",)),
        ("I can\u2019t assist with that request.", False, False, ["stop"], ("refusal",)),
        ("", False, True, ["stop"], ("refusal",)),  # OpenAI's refusal field
        ("", False, False, ["content_filter"], ("refusal",)),  # and Anthropic's refusal stop
        ("The customer said: I can't help it.", False, False, ["stop"], ()),
    ],
)
def test_signals(text, tools, refusal, finish, expected):
    assert signals(QUALITY, text, tools, refusal, finish) == expected


def test_refusal_patterns_look_only_at_the_start_of_long_answers():
    quality = QualityConfig(refusal=refusal_pattern(("cannot comply",)))
    assert signals(quality, "x" * 100 + " cannot comply", False, False, []) == ("refusal",)
    assert signals(quality, "x" * 400 + " cannot comply", False, False, []) == ()
