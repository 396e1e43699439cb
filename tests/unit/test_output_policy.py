"""Output schemas are compiled at reload: a schema that is not JSON Schema, an unknown
schema name or a default that does not match fail `check` with file and line."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from sidecar.policy.compile import load_folder
from sidecar.policy.problems import PolicyInvalid

BASE = """
providers:
  p: {type: mock}
models:
  m: {provider: p}
"""


def problems(tmp_path: Path, text: str) -> list[str]:
    (tmp_path / "p.yaml").write_text(textwrap.dedent(BASE) + textwrap.dedent(text))
    with pytest.raises(PolicyInvalid) as info:
        load_folder(tmp_path, env={})
    return [str(p) for p in info.value.problems]


def test_a_schema_that_is_not_json_schema_is_reported_at_its_line(tmp_path: Path):
    found = problems(
        tmp_path,
        """
        schemas:
          invoice:
            type: object
            properties:
              total: {type: numberish}
        """,
    )
    assert len(found) == 1
    assert found[0].startswith("p.yaml:11: schema 'invoice' is not valid JSON Schema")


def test_unknown_schema_name_and_mismatching_default(tmp_path: Path):
    found = problems(
        tmp_path,
        """
        schemas:
          invoice: {type: object, required: [total]}
        routes:
          a: {targets: [m], output: {schema: nope}}
          b:
            targets: [m]
            output: {schema: invoice, on_invalid: {then: default}, default: {other: 1}}
        """,
    )
    assert any("p.yaml:10:" in p and "schema 'nope', which is not defined" in p for p in found)
    assert any(
        "p.yaml:13:" in p and "output.default does not match schema 'invoice'" in p for p in found
    )


def test_valid_output_policy_compiles_its_validator_once(tmp_path: Path):
    (tmp_path / "p.yaml").write_text(
        textwrap.dedent(BASE)
        + textwrap.dedent(
            """
            schemas:
              invoice: {type: object, required: [total]}
            routes:
              a: {targets: [m], output: {schema: invoice, extract: lenient}}
            """
        )
    )
    route = load_folder(tmp_path, env={}).routes["a"]
    assert route.output is not None
    assert route.output.lenient
    assert route.output.validator.is_valid({"total": 1})
    assert not route.output.validator.is_valid({})
