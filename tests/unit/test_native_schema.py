"""Schemas as providers enforce them: OpenAI's strict form, made at reload where the meaning
survives, and `check` errors that say why not where the policy asked for enforcement."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from sidecar.policy.compile import load_folder
from sidecar.policy.native import native_schema, strip_nulls
from sidecar.policy.problems import PolicyInvalid

ITEMS = {
    "type": "object",
    "required": ["items"],
    "properties": {
        "items": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["sku"],
                "properties": {
                    "sku": {"type": "string"},
                    "size": {"type": "string", "enum": ["S", "M"]},
                    "gift": {"type": ["boolean", "null"]},
                },
            },
        }
    },
}


def test_optional_properties_become_required_and_nullable_and_their_nulls_are_dropped():
    native = native_schema("order items", ITEMS)
    assert native.name == "order_items"
    assert native.why_not is None
    item = native.strict["properties"]["items"]["items"]
    assert item["required"] == ["sku", "size", "gift"]
    assert item["additionalProperties"] is False
    assert item["properties"]["size"] == {"type": ["string", "null"], "enum": ["S", "M", None]}
    assert item["properties"]["gift"] == {"type": ["boolean", "null"]}  # already nullable
    answer = {"items": [{"sku": "a", "size": None, "gift": None}, {"sku": "b", "size": "M"}]}
    assert strip_nulls(answer, native.nulls)
    # `gift` allows null, so its null is an answer; `size` does not, so it goes
    assert answer == {"items": [{"sku": "a", "gift": None}, {"sku": "b", "size": "M"}]}
    assert not strip_nulls(answer, native.nulls)


@pytest.mark.parametrize(
    ("schema", "why"),
    [
        ({"type": "array"}, "$: the root must be an object"),
        (
            {"type": "object", "properties": {"a": {}}, "additionalProperties": True},
            "$: additionalProperties must be false",
        ),
        (
            {"type": "object", "properties": {"a": {"allOf": [{"type": "string"}]}}},
            "$.a: strict mode does not support `allOf`",
        ),
        ({"type": "object"}, "$: an object without `properties` has no strict form"),
    ],
)
def test_schemas_without_a_strict_form_say_why(schema: dict, why: str):
    native = native_schema("x", schema)
    assert native.strict is None
    assert native.why_not is not None
    assert native.why_not.startswith(why)


POLICY = """
providers:
  openai: {type: openai, api_key: k}
  local: {type: openai, base_url: "http://127.0.0.1:1/v1", structured_output: none}
models:
  gpt: {provider: openai}
  small: {provider: local}
schemas:
  loose: {type: object, properties: {a: {type: string}}, additionalProperties: true}
routes:
"""


def problems(tmp_path: Path, routes: str) -> list[str]:
    text = textwrap.dedent(POLICY) + textwrap.indent(textwrap.dedent(routes), "  ")
    (tmp_path / "p.yaml").write_text(text)
    try:
        load_folder(tmp_path, env={})
    except PolicyInvalid as exc:
        return [str(p) for p in exc.problems]
    return []


def test_explicit_enforcement_that_cannot_be_kept_fails_check_with_the_reason(tmp_path: Path):
    found = problems(
        tmp_path,
        """
          strict:
            targets: [gpt]
            output: {schema: loose, enforce: both}
          native:
            targets: [small]
            output: {schema: loose, enforce: native}
        """,
    )
    assert len(found) == 2
    assert found[0].startswith("p.yaml:14: route 'strict': schema 'loose' cannot be sent")
    assert "additionalProperties must be false" in found[0]
    assert found[1].startswith("p.yaml:17: route 'native': enforce native, but target 'small'")


def test_by_default_such_a_schema_is_sent_without_strict(tmp_path: Path):
    assert problems(tmp_path, "r: {targets: [gpt, small], output: {schema: loose}}\n") == []


def test_a_dialect_must_fit_the_wire_format(tmp_path: Path):
    (tmp_path / "p.yaml").write_text(
        "providers:\n  p: {type: openai, api_key: k, structured_output: tool}\n"
    )
    with pytest.raises(PolicyInvalid) as info:
        load_folder(tmp_path, env={})
    assert "structured_output tool does not fit type openai" in str(info.value.problems[0])
