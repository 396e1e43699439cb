"""`select:` and `cascade:` as `llm-sidecar check` and the compiler see them: tiers ranked
cheapest first, rules and patterns compiled, the examples file read line by line, and every
mistake a `FILE:LINE` problem, all in one run."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sidecar.policy.compile import load_folder
from sidecar.policy.diff import compare
from sidecar.policy.diff import text as diff_text

POLICY = """
providers:
  main: {type: openai, base_url: "http://127.0.0.1:9/v1"}
  anth: {type: anthropic, api_key: k}
models:
  mini: {provider: main, price: {input: 0.4, output: 1.6}}
  big: {provider: main, price: {input: 3, output: 15}}
  embed: {provider: main}
  claude: {provider: anth}
routes:
  chat:
    select:
      tiers:
        small: {targets: [mini]}
        large: {targets: [big, mini]}
      default: small
      rules:
        - {tier: large, min_input_tokens: 4000}
        - {tier: large, keywords: [refund, "step by step"], tools: false}
      classifier: {examples: EXAMPLES, model: embed, k: 3}
      sticky: 30m
    cascade: {min_logprob: -0.7, refusal: ["^no\\\\b"]}
  ladder:
    targets: [mini, big]
    cascade: {schema: false}
"""
GOOD = (
    '{"text": "where is my order", "tier": "small"}\n'
    '{"text": "compute my refund", "tier": "large"}\n'
)


def folder(tmp_path: Path, policy: str = POLICY, examples: str | None = GOOD) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "p.yaml").write_text(textwrap.dedent(policy).replace("EXAMPLES", "tiers.jsonl"))
    if examples is not None:
        (tmp_path / "tiers.jsonl").write_text(examples)
    return tmp_path


def problems(path: Path) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-m", "sidecar", "check", str(path)],
        env={},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == (1 if done.stdout.strip() and "ok:" not in done.stdout else 0)
    return done.stdout.splitlines()


def test_a_good_selection_compiles_into_a_ladder(tmp_path: Path):
    policy = load_folder(folder(tmp_path), env={})
    chat = policy.routes["chat"]
    assert chat.select is not None
    tiers = chat.select.tiers
    assert [(t.name, t.rank, [x.model.name for x in t.targets]) for t in tiers] == [
        ("small", 0, ["mini"]),
        ("large", 1, ["big", "mini"]),
    ]
    assert [t.model.name for t in chat.targets] == ["mini", "big"]  # every tier's, in order
    assert chat.baseline is not None
    assert chat.baseline.name == "big"
    assert tiers[0].accept is not None
    assert tiers[0].accept.min_logprob == -0.7
    assert tiers[1].accept is None  # the top tier: nothing to escalate to
    assert chat.select.default == 0
    assert chat.select.sticky == 1800.0
    rule = chat.select.rules[1]
    assert rule.rank == 1
    assert rule.tools is False
    assert rule.patterns[0].search("a REFUND please")
    assert not rule.patterns[0].search("refunds")
    spec = chat.select.classifier
    assert spec is not None
    assert spec.texts == ("where is my order", "compute my refund")
    assert spec.labels == (0, 1)
    assert spec.k == 3
    ladder = policy.routes["ladder"].select
    assert ladder is not None
    assert [t.name for t in ladder.tiers] == ["mini", "big"]  # a cascade without tiers
    assert ladder.tiers[0].accept is not None
    assert ladder.tiers[0].accept.schema is False


def test_the_examples_file_is_in_the_policy_s_version(tmp_path: Path):
    path = folder(tmp_path)
    before = load_folder(path, env={}).version
    (path / "tiers.jsonl").write_text(GOOD + '{"text": "hello", "tier": "small"}\n')
    assert load_folder(path, env={}).version != before


@pytest.mark.parametrize(
    ("examples", "expected"),
    [
        (
            None,
            [
                "p.yaml:20: route 'chat': examples file 'tiers.jsonl' is not in the policy "
                "folder (data files: none)"
            ],
        ),
        ("", ["tiers.jsonl:1: no examples: write one JSON object a line"]),
        ("\n\n", ["tiers.jsonl:1: no examples: write one JSON object a line"]),
        (
            GOOD + '{"text": "x", "tier": "medium"}\n{"text": "y"}\n{"text": "where is my '
            'order", "tier": "large"}\n{oops\n["a"]\n{"text": "z", "tier": "small", "w": 1}\n',
            [
                'tiers.jsonl:3: unknown tier "medium" (tiers: small, large)',
                "tiers.jsonl:4: unknown tier null (tiers: small, large)",
                "tiers.jsonl:5: the same text as line 1, with another tier",
                "tiers.jsonl:6: not JSON: unexpected character, expected a string key",
                'tiers.jsonl:7: an example is an object: {"text": ..., "tier": ...}',
                "tiers.jsonl:8: unknown key 'w': an example has only text and tier",
            ],
        ),
    ],
)
def test_check_names_each_bad_example_at_its_line(
    tmp_path: Path, examples: str | None, expected: list[str]
):
    assert problems(folder(tmp_path, examples=examples)) == expected


def test_check_reports_every_selection_mistake_in_one_run(tmp_path: Path):
    bad = (
        POLICY.replace("default: small", "default: smal")
        .replace("{tier: large, min_input_tokens: 4000}", "{tier: huge, regex: '(x'}")
        .replace("model: embed, k: 3", "model: claude")
        .replace("targets: [mini, big]", "targets: [claude, big]")
        .replace("cascade: {schema: false}", "cascade: {min_logprob: -1}")
        .replace("large: {targets: [big, mini]}", "large: {targets: [big, mini], cascade: {}}")
    )
    assert problems(folder(tmp_path, bad)) == [
        "p.yaml:15: route 'chat': tier 'large' is the top tier; its answers have no tier to "
        "escalate to, so a cascade there checks nothing",
        "p.yaml:16: route 'chat': no tier 'smal' (tiers: small, large)",
        "p.yaml:18: route 'chat': no tier 'huge' (tiers: small, large)",
        "p.yaml:18: route 'chat': rule 1: bad regex (missing ), unterminated subpattern at "
        "position 0)",
        "p.yaml:20: route 'chat': the classifier needs an embeddings model; 'claude' is an "
        "Anthropic model, which serves none",
        "p.yaml:25: route 'ladder': tier 'claude' checks min_logprob, but 'claude' is an "
        "Anthropic model, which returns no logprobs; drop min_logprob for this tier "
        "(cascade: {...} on it)",
    ]


def test_a_route_has_targets_or_select_and_tier_cascades_are_checked(tmp_path: Path):
    bad = POLICY.replace("small: {targets: [mini]}", "small: {targets: [mini], cascade: true}")
    bad += "  both: {targets: [mini], select: {tiers: {a: {targets: [mini]}}}}\n"
    bad += "  neither: {timeout: 5s}\n"
    assert problems(folder(tmp_path, bad)) == [
        "p.yaml:14: routes.chat.select.tiers.small.cascade: no definitions validate",
        "p.yaml:26: routes.both.select: 'targets' must not be present with 'select'",
        "p.yaml:26: routes.both.targets: 'select' must not be present with 'targets'",
        "p.yaml:27: 'routes.neither.select' is required",
        "p.yaml:27: 'routes.neither.targets' is required",
    ]


def test_diff_shows_tier_cascade_and_example_changes(tmp_path: Path):
    old = folder(tmp_path / "old")
    new = folder(
        tmp_path / "new",
        POLICY.replace("sticky: 30m", "sticky: 1h").replace("min_logprob: -0.7", "min_logprob: -1"),
        '{"text": "where is my order", "tier": "large"}\n{"text": "hi", "tier": "small"}\n',
    )
    lines = diff_text(compare(old, new)).splitlines()
    assert "      select.sticky: 30m → 1h" in lines
    assert "      cascade.min_logprob: -0.7 → -1" in lines
    assert "  ~ tiers.jsonl (changed, tiers.jsonl:1)" in lines
    assert "      tiers: {large: 1, small: 1} → {large: 1, small: 1}" in lines
    assert "      added: [] → [hi]" in lines
    assert "      removed: [] → [compute my refund]" in lines
    assert "      relabelled: [] → [where is my order (small → large)]" in lines
