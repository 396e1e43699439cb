"""The published JSON Schema of the policy format: generated from the cerberus definitions,
committed as schemas/policy.schema.json, and agreeing with `check` on what a file may hold."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator

from sidecar.policy.jsonschema import policy_schema
from sidecar.policy.problems import Problem
from sidecar.policy.schema import structure_errors
from sidecar.policy.source import SourceFile, parse
from tests.deploy.charts import ROOT

PUBLISHED = ROOT / "schemas" / "policy.schema.json"
VALIDATOR = Draft202012Validator(json.loads(PUBLISHED.read_text()))
MODELINE = re.compile(r"^# yaml-language-server: \$schema=(\S+)$")


def errors(doc: Any) -> list[str]:
    return [
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in VALIDATOR.iter_errors(doc)
    ]


def load(text: str) -> Any:
    """As the sidecar reads it: keys as written (YAML 1.1 would make `on:` True, editors'
    YAML 1.2 and the sidecar do not), values as YAML scalars."""
    problems: list[Problem] = []
    doc = parse(SourceFile("case.yaml", textwrap.dedent(text).encode()), {}, problems)
    assert problems == []
    assert doc is not None
    return doc.data


def test_the_published_schema_is_what_the_cli_generates():
    done = subprocess.run(
        [sys.executable, "-m", "sidecar", "schema"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        env={},
    )
    assert done.stdout == PUBLISHED.read_text(), (
        "schemas/policy.schema.json is stale: run `llm-sidecar schema > schemas/policy.schema.json`"
    )
    assert json.loads(done.stdout) == policy_schema()


def test_it_is_a_valid_draft_2020_12_schema():
    schema = policy_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)


@pytest.mark.parametrize("path", sorted((ROOT / "policies").glob("*.yaml")), ids=lambda p: p.name)
def test_the_example_policies_are_valid_and_point_editors_at_it(path: Path):
    first = path.read_text().splitlines()[0]
    match = MODELINE.match(first)
    assert match, f"{path.name} should start with a yaml-language-server modeline"
    assert (path.parent / match.group(1)).resolve() == PUBLISHED
    assert errors(yaml.safe_load(path.read_text())) == []


# Documents on which the schema and cerberus (what `check` runs) must agree.
AGREE = {
    "minimal": ("valid", "providers: {p: {type: mock}}\nmodels: {m: {provider: p}}\n"),
    "full-route": (
        "valid",
        """\
        routes:
          chat:
            match: {model: chat, team: [research, ml], headers: {x-tenant: acme}}
            targets: [a, {model: b, retry: {attempts: 3, on: [5xx, timeout]}}]
            retry: {attempts: 2, backoff: {base: 250ms, max: 5s, jitter: true}}
            timeout: 1.5m
            first_token_timeout: 3s
            hedge: {after: 2s, max: 1}
            output: {schema: invoice, on_invalid: {retries: 2, then: default}, default: {a: 1}}
        """,
    ),
    "limits-budgets-state": (
        "valid",
        """\
        state: {backend: redis, url: "redis://cache:6379/0", on_error: closed}
        limits:
          per-user: {scope: user, requests_per_minute: 60, queue: {max_wait: 5s, max_size: 10}}
        budgets:
          month: {scope: global, limit_usd: 2000, window: month, on_exceed: downgrade,
                  downgrade_to: small, warn_at: 0.8}
        schemas:
          invoice: {type: object, required: [total]}
        telemetry: {capture_content: false, max_users: 50}
        """,
    ),
    "empty-section": ("valid", "providers:\n  # all commented out\n"),
    "unknown-top-level": ("invalid", "route: {chat: {targets: [m]}}"),
    "unknown-nested": ("invalid", "providers: {p: {type: openai, tiemout: 30s}}"),
    "bad-duration": ("invalid", "providers: {p: {type: mock, timeout: 5 minutes}}"),
    "duration-number": ("invalid", "providers: {p: {type: mock, timeout: 30}}"),
    "duration-unit": ("invalid", "models: {m: {provider: p, circuit: {window: 1d}}}"),
    "bad-enum": ("invalid", "providers: {p: {type: gemini}}"),
    "missing-required": ("invalid", "routes: {chat: {timeout: 20s}}"),
    "empty-targets": ("invalid", "routes: {chat: {targets: []}}"),
    "bad-target": ("invalid", "routes: {chat: {targets: [{retry: {attempts: 2}}]}}"),
    "too-many-attempts": ("invalid", "routes: {chat: {targets: [m], retry: {attempts: 11}}}"),
    "bad-name": ("invalid", "routes: {-chat: {targets: [m]}}"),
    "negative-price": ("invalid", "models: {m: {provider: p, price: {input: -1}}}"),
    "bool-not-number": ("invalid", "budgets: {b: {scope: team, limit_usd: true, window: day}}"),
    "bad-url": ("invalid", "providers: {p: {type: openai, base_url: api.openai.com}}"),
    "redis-url": ("invalid", "state: {url: 'http://cache:6379'}"),
    "null-single-section": ("invalid", "state:\n"),
}


@pytest.mark.parametrize(("verdict", "text"), AGREE.values(), ids=list(AGREE))
def test_it_agrees_with_check(verdict: str, text: str):
    doc = load(text)
    assert (errors(doc) == []) == (structure_errors(doc) == []) == (verdict == "valid"), (
        errors(doc),
        structure_errors(doc),
    )


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("providers: {p: {type: openai, tiemout: 30s}}", "providers.p"),
        ("routes: {chat: {targets: [m], timeout: 20 s}}", "routes.chat.timeout"),
        ("routes: {chat: {targets: [m], retry: {backoff: fast}}}", "routes.chat.retry.backoff"),
    ],
)
def test_editors_are_pointed_at_the_wrong_field(text: str, where: str):
    found = errors(load(text))
    assert found
    assert all(e.startswith(where) for e in found), found


def test_environment_references_are_accepted_where_check_resolves_them_first():
    """`check` substitutes ${NAME} before it validates: a reference in a duration or URL field
    is fine as written. The schema cannot know the value, so it accepts the reference."""
    doc = """\
        providers:
          vllm: {type: openai, base_url: "${VLLM_URL}", timeout: "${LLM_TIMEOUT:-30s}"}
        state: {url: "${REDIS_URL}"}
        """
    assert errors(yaml.safe_load(textwrap.dedent(doc))) == []
    assert errors(yaml.safe_load("providers: {p: {type: mock, timeout: $LLM_TIMEOUT}}")) != []


def test_a_cerberus_rule_without_a_mapping_stops_the_generation(monkeypatch: pytest.MonkeyPatch):
    """A rule added to schema.py that this generator cannot express must not vanish silently
    from the published schema."""
    import sidecar.policy.jsonschema as generator

    sections = {**generator.POLICY_FILE, "extra": {"type": "string", "coerce": str.lower}}
    monkeypatch.setattr(generator, "POLICY_FILE", sections)
    with pytest.raises(ValueError, match="coerce"):
        generator.policy_schema()
