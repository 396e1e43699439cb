"""The `quality:` section and a route's `shadow:` trial: what they compile into, what `check`
says of them (with `FILE:LINE:`), and what `diff` shows of a change to them."""

from __future__ import annotations

from pathlib import Path

from sidecar.policy import diff as policy_diff
from sidecar.policy.compile import load_folder
from sidecar.policy.model import DEFAULT_REFUSALS, refusal_pattern
from tests.unit.policy_files import problems, write

MODELS = """\
providers:
  p: {type: mock}
models:
  big: {provider: p}
  small: {provider: p}
  tiny: {provider: p}
  emb: {provider: p}
"""


def test_a_shadow_trial_compiles_with_its_defaults(tmp_path: Path):
    write(
        tmp_path,
        {
            "p.yaml": MODELS
            + """\
routes:
  chat:
    targets: [big]
    timeout: 30s
    shadow: {candidates: [small, tiny, small], max_usd_per_day: 5}
  checked:
    targets: [big]
    shadow:
      candidates: [small]
      sample: 0.5
      max_usd_per_day: 0
      max_concurrent: 2
      timeout: 10s
      compare: {embedding: emb, similarity: 0.8}
"""
        },
    )
    routes = load_folder(tmp_path).routes
    chat, checked = routes["chat"].shadow, routes["checked"].shadow
    assert chat is not None
    assert checked is not None
    assert [m.name for m in chat.candidates] == ["small", "tiny"]  # named twice: once
    assert (chat.sample, chat.max_usd_per_day, chat.max_concurrent) == (0.05, 5.0, 4)
    assert (chat.timeout, chat.embedding) == (30.0, None)  # the route's timeout
    assert (checked.sample, checked.max_concurrent, checked.timeout) == (0.5, 2, 10.0)
    assert checked.embedding is not None
    assert checked.embedding.name == "emb"
    assert checked.similarity == 0.8


def test_on_a_route_with_tiers_any_tiers_model_may_be_a_candidate(tmp_path: Path):
    write(
        tmp_path,
        {
            "p.yaml": MODELS
            + """\
routes:
  chat:
    select: {tiers: {low: {targets: [small]}, high: {targets: [big]}}, default: low}
    shadow: {candidates: [small, tiny], max_usd_per_day: 1}
"""
        },
    )
    shadow = load_folder(tmp_path).routes["chat"].shadow
    assert shadow is not None
    assert [m.name for m in shadow.candidates] == ["small", "tiny"]


def test_shadow_problems_name_file_and_line(tmp_path: Path):
    write(
        tmp_path,
        {
            "p.yaml": MODELS
            + """\
routes:
  chat:
    targets: [big]
    shadow:
      candidates: [big, nope]
      max_usd_per_day: 1
      compare: {embedding: nada}
  loose:
    targets: [big]
    shadow: {candidates: [small], sample: 2}
"""
        },
    )
    assert problems(tmp_path) == [
        "p.yaml:12: route 'chat': shadow candidate 'big' is the route's first target, which "
        "answers already; a trial compares another model",
        "p.yaml:12: route 'chat' shadows model 'nope', which is not defined "
        "(models: big, emb, small, tiny)",
        "p.yaml:14: route 'chat': shadow compares with embedding model 'nada', which is not "
        "defined (models: big, emb, small, tiny)",
        "p.yaml:17: 'routes.loose.shadow.max_usd_per_day' is required",
        "p.yaml:17: routes.loose.shadow.sample: max value is 1.0",
    ]


def test_the_quality_section_compiles_refusal_patterns_once(tmp_path: Path):
    assert load_folder(write(tmp_path / "none", {"p.yaml": MODELS})).quality.refusal == (
        refusal_pattern(DEFAULT_REFUSALS)
    )
    folder = write(
        tmp_path / "own",
        {
            "p.yaml": MODELS
            + """\
quality:
  refusals: ["^Ich kann", "non posso"]
  feedback: {ttl: 10m, labels: [wrong, slow]}
"""
        },
    )
    quality = load_folder(folder).quality
    assert quality.refusal is not None
    assert quality.refusal.search("ich kann das nicht")  # case-insensitive
    assert not quality.refusal.search("I'm sorry, but I can't")  # the defaults are replaced
    assert (quality.feedback_ttl, quality.labels) == (600.0, frozenset({"wrong", "slow"}))
    off = write(tmp_path / "off", {"p.yaml": MODELS + "quality: {refusals: []}\n"})
    assert load_folder(off).quality.refusal is None


def test_a_refusal_pattern_that_is_not_a_regular_expression_is_a_problem(tmp_path: Path):
    write(tmp_path, {"p.yaml": MODELS + 'quality:\n  refusals: ["fine", "(unclosed"]\n'})
    [problem] = problems(tmp_path)
    assert problem.startswith(
        "p.yaml:9: quality.refusals[1] is not a regular expression: missing ), unterminated"
    )


def test_diff_shows_a_shadow_trial_and_the_quality_section(tmp_path: Path):
    route = "routes:\n  chat:\n    targets: [big]\n"
    trial = "    shadow: {candidates: [small], max_usd_per_day: 5}\n"
    old = write(tmp_path / "old", {"p.yaml": MODELS + route})
    new = write(
        tmp_path / "new",
        {"p.yaml": MODELS + route + trial + "quality: {feedback: {ttl: 5m}}\n"},
    )
    lines = policy_diff.text(policy_diff.compare(old, new)).splitlines()
    assert "      shadow.candidates: (unset) → [small]" in lines
    assert "      shadow.max_usd_per_day: (unset) → 5" in lines
    assert "  + quality (added, p.yaml:12)" in lines
    assert "      feedback.ttl: 5m" in lines


def test_a_global_flag_inside_a_refusal_pattern_is_a_problem_not_a_crash(tmp_path: Path):
    write(tmp_path, {"p.yaml": MODELS + 'quality:\n  refusals: ["(?i)non posso"]\n'})
    assert problems(tmp_path) == [
        "p.yaml:9: quality.refusals[0] is not a regular expression: global flags not at the "
        "start of the expression at position 3"
    ]
