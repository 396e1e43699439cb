"""The prompt economy's policy keys (issue 19): what they compile into, what `check`
reports, what `diff` shows; and the pure parts of trimming and normalising."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.pipeline.normalize import collapse
from sidecar.pipeline.trim import TooLong, trim
from sidecar.policy.compile import load_folder
from sidecar.policy.diff import compare, text
from sidecar.policy.model import PromptCache, PromptPolicy
from tests.unit.policy_files import problems, write

POLICY = """\
providers:
  anth: {type: anthropic, api_key: k}
  openai: {type: openai, api_key: k}
  vllm: {type: openai, base_url: "http://vllm:8000/v1"}
models:
  sonnet: {provider: anth, name: claude-sonnet-4-5}
  haiku: {provider: anth, name: claude-haiku-4-5-20251001}
  tuned: {provider: anth, name: claude-x, prompt_cache: {min_tokens: 2048}}
  quiet: {provider: anth, name: claude-y, prompt_cache: "off"}
  gpt: {provider: openai, name: gpt-4.1}
  local: {provider: vllm, name: qwen}
routes:
  chat:
    targets: [sonnet, haiku, tuned, quiet, gpt, local]
    prompt_cache: {ttl: 1h}
    prompt: {max_input_tokens: 8000, strategy: keep_first, normalize: [whitespace]}
    max_output_tokens: {limit: 512, mode: default}
  off: {targets: [sonnet, gpt], prompt_cache: "off", max_output_tokens: 1024}
"""


def test_prompt_keys_compile_per_target_and_route(tmp_path: Path) -> None:
    policy = load_folder(write(tmp_path, {"p.yaml": POLICY}), env={})
    chat = policy.routes["chat"]
    caches = {t.model.name: t.prompt_cache for t in chat.targets}
    assert caches == {
        "sonnet": PromptCache("chat", 1024, "1h"),
        "haiku": PromptCache("chat", 4096, "1h"),  # Anthropic's minimum for Haiku 4.5
        "tuned": PromptCache("chat", 2048, "1h"),
        "quiet": None,  # off on the model
        "gpt": PromptCache("chat", key=True),  # api.openai.com takes prompt_cache_key
        "local": None,  # another OpenAI-compatible server: not unless its provider says
    }
    assert chat.prompt == PromptPolicy(
        max_input_tokens=8000,
        keep_first=True,
        whitespace=True,
        max_output_tokens=512,
        output_mode="default",
    )
    off = policy.routes["off"]
    assert [t.prompt_cache for t in off.targets] == [None, None]
    assert off.prompt == PromptPolicy(max_output_tokens=1024)
    # A model addressed directly caches by default too.
    (implicit,) = policy.by_model["sonnet"].default.targets  # type: ignore[union-attr]
    assert implicit.prompt_cache == PromptCache("sonnet", 1024)


def test_check_reports_bad_prompt_keys_and_an_unpriced_hour_long_cache(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "p.yaml": """\
                providers:
                  anth: {type: anthropic, api_key: k}
                models:
                  sonnet: {provider: anth, price: {input: 3, output: 15, cache_write: 3.75}}
                routes:
                  a: {targets: [sonnet], prompt_cache: {ttl: 1h}}
                  b: {targets: [sonnet], prompt_cache: sometimes}
                  c: {targets: [sonnet], prompt: {max_input_tokens: 0, strategy: random}}
                  d: {targets: [sonnet], max_output_tokens: {mode: cap}}
                """
        },
    )
    assert sorted(problems(tmp_path)) == sorted(
        [
            "p.yaml:6: route 'a': prompt_cache ttl 1h, but model 'sonnet' has no "
            "price.cache_write_1h (Anthropic bills hour-long cache writes at twice the "
            "input price)",
            "p.yaml:7: routes.b.prompt_cache: no definitions validate",
            "p.yaml:8: routes.c.prompt.max_input_tokens: min value is 1",
            "p.yaml:8: routes.c.prompt.strategy: unallowed value random",
            "p.yaml:9: routes.d.max_output_tokens: no definitions validate",
        ]
    )


def test_diff_shows_the_prompt_keys(tmp_path: Path) -> None:
    old = write(tmp_path / "old", {"p.yaml": POLICY})
    new = write(
        tmp_path / "new",
        {
            "p.yaml": POLICY.replace("max_input_tokens: 8000", "max_input_tokens: 6000").replace(
                'prompt_cache: "off", max_output_tokens: 1024', "max_output_tokens: 2048"
            )
        },
    )
    lines = text(compare(old, new)).splitlines()
    assert "      prompt.max_input_tokens: 8000 → 6000" in lines
    assert "      prompt_cache: off → (unset)" in lines
    assert "      max_output_tokens: 1024 → 2048" in lines


def message(role: str, content: str, **extra: object) -> dict[str, object]:
    return {"role": role, "content": content, **extra}


def test_trimming_keeps_system_messages_and_the_newest_turn_whole() -> None:
    long = "x" * 400  # 104 estimated tokens as a message
    messages = [
        message("assistant", "Hello, how can I help?"),  # a greeting: a turn of its own
        message("system", "Rules."),
        message("user", long),
        message("assistant", long),
        message("user", "now"),
    ]
    trimmed = trim(messages, 150, 3, keep_first=False)
    assert trimmed is not None
    assert trimmed.messages == [messages[1], messages[4]]
    assert (trimmed.dropped, trimmed.chars) == (3, 22 + 800)
    assert trim(messages, 10_000, 3, keep_first=False) is None
    with pytest.raises(TooLong):
        trim([*messages, message("user", long * 2)], 150, 3, keep_first=False)


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ("a  b\t\tc", "a b c"),
        ("line  \nnext", "line\nnext"),
        ("one\n\n\n\ntwo", "one\n\ntwo"),
        ("  - nested  item", "  - nested item"),  # indentation kept
        ("run `a  b` and\n```py\nx  =  1\n```", "run `a  b` and\n```py\nx  =  1\n```"),
    ],
)
def test_whitespace_collapses_outside_code(before: str, after: str) -> None:
    assert collapse(before) == after
