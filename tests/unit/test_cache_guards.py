"""The cache's policy keys of issues 23 and 24 (what they compile into, what `check`
reports), the guards on the labelled set the tests ship (tests/data/semantic_pairs.jsonl)
and how low agreement raises a cache's effective similarity."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sidecar.policy.compile import load_folder
from sidecar.policy.guards import DEFAULT_GUARDS, KINDS, compile_guards, mismatch
from sidecar.policy.model import Verify
from sidecar.stores.agreement import OFF, Agreement
from tests.unit.policy_files import problems, write

PAIRS = [
    json.loads(line)
    for line in (Path(__file__).parents[1] / "data" / "semantic_pairs.jsonl")
    .read_text()
    .splitlines()
    if line.strip()
]
ALL_GUARDS = compile_guards(list(KINDS))
# Paraphrases the guards refuse, knowingly: a token written another way that is not
# normalised (a day-first-or-month-first date; "half a dozen") or a capitalised word that
# is a name in one and absent in the other. A miss, never a wrong answer.
REFUSED_PARAPHRASES = {
    "Is the store open on December 24, 2024?": "dates",
    "How long do I boil 6 eggs?": "numbers",
    "How many euros is 100 USD?": "names",
}

POLICY = """\
providers:
  p: {type: openai, api_key: k}
models:
  a: {provider: p}
  emb: {provider: p}
cache:
  plain: {mode: exact}
  never: {mode: exact, tools: false, any_temperature: false}
  all: {mode: exact, tools: true}
  some: {mode: exact, tools: [lookup_order, get_weather]}
  sem:
    mode: semantic
    semantic:
      model: emb
      guards: [numbers, names]
      verify_sample: 0.05
      on_low_agreement: alert
routes:
  plain: {targets: [a], cache: plain}
  never: {targets: [a], cache: never}
  all: {targets: [a], cache: all}
  some: {targets: [a], cache: some}
  sem: {targets: [a], cache: sem}
"""


def test_cache_keys_compile(tmp_path: Path) -> None:
    routes = load_folder(write(tmp_path, {"p.yaml": POLICY}), env={}).routes
    caches = {name: route.cache for name, route in routes.items() if route.cache}
    plain = caches["plain"]
    assert (plain.tools, plain.replay_tools, plain.any_temperature) == ("text", frozenset(), True)
    assert plain.guards.kinds == KINDS[:-1]  # every kind but names
    assert plain.verify is None
    assert (caches["never"].tools, caches["never"].any_temperature) == ("never", False)
    assert caches["all"].tools == "always"
    some = caches["some"]
    assert (some.tools, some.replay_tools) == ("text", {"lookup_order", "get_weather"})
    sem = caches["sem"]
    assert sem.guards.kinds == ("numbers", "names")
    assert sem.verify == Verify(0.05, 0.9, 100, tighten=False)


def test_check_reports_bad_cache_keys(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "p.yaml": """\
                providers:
                  p: {type: openai, api_key: k}
                models:
                  emb: {provider: p}
                cache:
                  a: {mode: exact, tools: sometimes}
                  b: {mode: semantic, semantic: {model: emb, guards: [zipcodes]}}
                  c: {mode: semantic, semantic: {model: emb, verify_sample: 2}}
                """
        },
    )
    assert sorted(problems(tmp_path)) == [
        "p.yaml:6: cache.a.tools: no definitions validate",
        "p.yaml:7: cache.b.semantic.guards.0: unallowed value zipcodes",
        "p.yaml:8: cache.c.semantic.verify_sample: max value is 1.0",
    ]


@pytest.mark.parametrize(
    "pair",
    [p for p in PAIRS if p["label"] == "near_miss" and p["kind"] != "wording"],
    ids=lambda p: p["kind"],
)
def test_every_near_miss_in_the_labelled_set_is_refused_by_its_kind(pair: dict) -> None:
    cached, asked = ALL_GUARDS.signature(pair["cached"]), ALL_GUARDS.signature(pair["asked"])
    assert mismatch(asked, cached) == pair["kind"]


def test_paraphrases_pass_the_guards_but_for_the_known_few() -> None:
    refused = {}
    for pair in PAIRS:
        if pair["label"] == "paraphrase":
            kind = mismatch(
                ALL_GUARDS.signature(pair["asked"]), ALL_GUARDS.signature(pair["cached"])
            )
            if kind is not None:
                refused[pair["asked"]] = kind
    assert refused == REFUSED_PARAPHRASES


def test_tokens_are_normalised_where_two_spellings_surely_mean_the_same() -> None:
    same = [
        ("Refund $1,200 for order 10233.", "Refund 1200 dollars for order 10233."),
        ("Calories in two eggs?", "Calories in 2 eggs?"),
        ("What happened on 2024-03-05?", "What happened on March 5, 2024?"),
        ("Meet on 5 March", "meet on march 5th"),
    ]
    for a, b in same:
        assert DEFAULT_GUARDS.signature(a) == DEFAULT_GUARDS.signature(b), (a, b)
    # Order counts: from A to B is not from B to A.
    a, b = "Move 3 units from bin 12 to bin 40", "Move 3 units from bin 40 to bin 12"
    assert mismatch(DEFAULT_GUARDS.signature(a), DEFAULT_GUARDS.signature(b)) == "numbers"
    assert DEFAULT_GUARDS.signature('Is "x1" in https://a.example/b?') == (
        ("quoted", ('"x1"',)),
        ("urls", ("https://a.example/b?",)),
    )


def test_low_agreement_raises_the_similarity_a_hit_needs_and_recovers() -> None:
    record = Agreement("sem", 0.9, Verify(1.0, min_agreement=0.8, window=10))
    for similarity in (0.99, 0.98, 0.97, 0.96, 0.95):
        record.note(similarity, True)
    for similarity in (0.94, 0.93, 0.92, 0.91, 0.90):
        record.note(similarity, False)
    # Half agree; the checks from 0.94 up agree 5 times in 6: hits below it are not served.
    assert (record.rate, record.low, record.threshold) == (0.5, True, 0.94)
    for _ in range(5):
        record.note(0.99, False)  # now even the closest disagree
    assert record.threshold == OFF
    for _ in range(10):
        record.note(0.99, True)  # the disagreements age out of the window
    assert (record.low, record.threshold) == (False, 0.9)
    alert = Agreement("sem", 0.9, Verify(1.0, min_agreement=0.8, window=10, tighten=False))
    for _ in range(10):
        alert.note(0.95, False)
    assert (alert.low, alert.threshold) == (True, 0.9)  # warned, not tightened
