"""`${NAME}`, `${NAME:-default}` and `$$` in policy files, and keys kept out of sight."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.policy.compile import load_folder
from tests.unit.policy_files import problems, write

SECRET = "fake-live-4f9c2b7e1d8a6f3e0b5c"  # looks like a key; must never be printed

TWO_PROVIDERS = """\
providers:
  openai:
    type: openai
    api_key: ${OPENAI_API_KEY}
  anthropic:
    type: openai
    base_url: https://api.anthropic.example/v1
    api_key: ${ANTHROPIC_API_KEY}
"""


def test_a_missing_variable_is_named_and_no_other_value_is_shown(tmp_path: Path):
    write(tmp_path, {"providers.yaml": TWO_PROVIDERS})
    found = problems(tmp_path, env={"ANTHROPIC_API_KEY": SECRET})
    assert found == ["providers.yaml:4: environment variable ${OPENAI_API_KEY} is not set"]
    assert SECRET not in "\n".join(found)


def test_variables_that_are_set_are_substituted(tmp_path: Path):
    write(tmp_path, {"providers.yaml": TWO_PROVIDERS})
    policy = load_folder(tmp_path, env={"OPENAI_API_KEY": "sk-a", "ANTHROPIC_API_KEY": SECRET})
    assert policy.providers["openai"].api_key.reveal() == "sk-a"
    assert policy.providers["anthropic"].api_key.reveal() == SECRET


@pytest.mark.parametrize(
    ("env", "base_url", "timeout"),
    [
        pytest.param({}, "https://api.openai.com/v1", 30.0, id="unset"),
        pytest.param({"OPENAI_TIMEOUT": ""}, "https://api.openai.com/v1", 30.0, id="empty"),
        pytest.param(
            {"OPENAI_BASE_URL": "http://127.0.0.1:9000/v1", "OPENAI_TIMEOUT": "5s"},
            "http://127.0.0.1:9000/v1",
            5.0,
            id="set",
        ),
    ],
)
def test_a_default_is_used_when_the_variable_is_unset_or_empty(
    tmp_path: Path, env: dict[str, str], base_url: str, timeout: float
):
    write(
        tmp_path,
        {
            "providers.yaml": """\
                providers:
                  openai:
                    type: openai
                    base_url: ${OPENAI_BASE_URL:-https://api.openai.com/v1}
                    api_key: ${OPENAI_API_KEY:-}
                    timeout: ${OPENAI_TIMEOUT:-30s}
                """
        },
    )
    openai = load_folder(tmp_path, env=env).providers["openai"]
    assert (openai.base_url, openai.timeout) == (base_url, timeout)
    assert not openai.api_key  # `${NAME:-}`: optional, empty


def test_double_dollar_is_a_literal_dollar_and_values_are_not_expanded_again(tmp_path: Path):
    write(
        tmp_path,
        {
            "providers.yaml": """\
                providers:
                  p:
                    type: mock
                    headers:
                      x-price: $$5
                      x-template: "$${OPENAI_API_KEY}"
                      x-four: "$$$${OPENAI_API_KEY}"
                      x-plain: a$b$
                      x-nested: ${NESTED}
                """
        },
    )
    env = {"OPENAI_API_KEY": SECRET, "NESTED": "${OPENAI_API_KEY}"}
    headers = dict(load_folder(tmp_path, env=env).providers["p"].headers)
    assert headers == {
        "x-price": "$5",
        "x-template": "${OPENAI_API_KEY}",
        "x-four": "$${OPENAI_API_KEY}",
        "x-plain": "a$b$",
        "x-nested": "${OPENAI_API_KEY}",
    }


def test_a_value_from_the_environment_is_not_echoed_in_a_problem(tmp_path: Path):
    # A key pasted where a URL belongs: the message shows the reference, never the value.
    write(
        tmp_path,
        {
            "providers.yaml": """\
                providers:
                  openai:
                    type: openai
                    base_url: ${OPENAI_API_KEY}
                """
        },
    )
    found = problems(tmp_path, env={"OPENAI_API_KEY": SECRET})
    assert found == [
        "providers.yaml:4: providers.openai.base_url: '${OPENAI_API_KEY}' is not an http(s) URL"
    ]


def test_the_api_key_is_not_in_the_repr_of_the_compiled_policy(tmp_path: Path):
    write(tmp_path, {"providers.yaml": TWO_PROVIDERS})
    policy = load_folder(tmp_path, env={"OPENAI_API_KEY": SECRET, "ANTHROPIC_API_KEY": SECRET})
    assert policy.providers["openai"].api_key.reveal() == SECRET  # it is there, only hidden
    for text in (repr(policy), str(policy), repr(policy.providers), str(policy.providers)):
        assert SECRET not in text
        assert "***" in text
