"""The GitOps commands as CI runs them, real processes: `check --format json` for machines,
`diff OLD NEW` for pull-request review, and the pre-commit hook definition."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from sidecar.cli import parser
from sidecar.policy.compile import load_folder
from tests.deploy.charts import ROOT
from tests.unit.policy_files import write

EXAMPLES = ROOT / "policies"
KEY = "fake-live-7f3a9c2e5b1d8f4a6c0e"  # looks like a key: must never be printed


@dataclass(frozen=True, slots=True)
class Run:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def cli(*args: str | Path, env: dict[str, str] | None = None) -> Run:
    done = subprocess.run(
        [sys.executable, "-m", "sidecar", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env=env or {},
        cwd=ROOT,
    )
    return Run(done.returncode, done.stdout, done.stderr)


def test_check_json_for_a_valid_folder():
    run = cli("check", "--format", "json", EXAMPLES)
    assert (run.code, run.err) == (0, "")
    assert run.json() == {
        "ok": True,
        "version": load_folder(EXAMPLES, env={}).version,
        "problems": [],
    }


def test_check_json_lists_every_problem_with_its_place(tmp_path: Path):
    write(
        tmp_path,
        {
            "providers.yaml": """\
                providers:
                  p:
                    type: mock
                    timeout: 5 minutes
                models:
                  m: {provider: p}
                """,
            "routes.yaml": """\
                routes:
                  chat:
                    targets: [m, gpt-5]
                """,
        },
    )
    run = cli("check", "--format", "json", tmp_path)
    assert run.code == 1
    result = run.json()
    assert result["ok"] is False
    assert result["version"] is None
    # One run reports both: the structure problem, and the reference among the parts that
    # could be read (provider `p` is left out of the cross-checks, so model `m` is not
    # reported as using an undefined provider).
    assert result["problems"] == [
        {
            "file": "providers.yaml",
            "line": 4,
            "message": "providers.p.timeout: '5 minutes' is not a duration "
            "(use e.g. 250ms, 30s, 5m, 1h)",
        },
        {
            "file": "routes.yaml",
            "line": 3,
            "message": "route 'chat' targets model 'gpt-5', which is not defined (models: m)",
        },
    ]
    text = cli("check", tmp_path)
    assert text.out.splitlines() == [
        f"{p['file']}:{p['line']}: {p['message']}" for p in result["problems"]
    ]


def test_check_json_never_prints_a_variables_value(tmp_path: Path):
    write(tmp_path, {"p.yaml": "providers: {p: {type: openai, base_url: '${KEY}'}}\n"})
    run = cli("check", "--format", "json", tmp_path, env={"KEY": KEY})
    assert run.code == 1
    assert KEY not in run.out + run.err
    assert "${KEY}" in run.json()["problems"][0]["message"]


OLD = {
    "providers.yaml": """\
        # Providers: where requests go.
        providers:
          local-mock:
            type: mock
            mock:
              latency: 20ms          # how long each answer takes
              chunk_delay: 10ms

        models:
          mock-small:
            provider: local-mock
            price: {input: 0.15, output: 0.60}
          mock-large:
            provider: local-mock
            price: {input: 2.50, output: 10.00}
        """,
    "routes.yaml": """\
        routes:
          chat:
            targets: [mock-small, mock-large]
            retry: {attempts: 2, backoff: 250ms}
            timeout: 20s
          smart:
            targets: [mock-large]
          embed:
            targets: [mock-small]
        budgets:
          daily: {scope: team, limit_usd: 5, window: day, on_exceed: downgrade,
                  downgrade_to: mock-small}
        """,
}

NEW = {
    # Reformatted, a comment dropped: no change there. One price changed, and an OpenAI
    # provider added, its key from the environment and a header key written out in full.
    "providers.yaml": f"""\
        providers:
          local-mock: {{type: mock, mock: {{latency: 20ms, chunk_delay: 10ms}}}}
          openai:
            type: openai
            api_key: ${{OPENAI_API_KEY}}
            headers: {{x-org-key: {KEY}}}
        models:
          mock-small: {{provider: local-mock, price: {{input: 0.20, output: 0.60}}}}
          mock-large:
            provider: local-mock
            price: {{input: 2.50, output: 10.00}}
        """,
    # `embed` moved to a file of its own: no change.
    "embed.yaml": "routes:\n  embed:\n    targets: [mock-small]\n",
    "routes.yaml": """\
        routes:
          chat:
            targets: [mock-large]
            retry: {attempts: 3, backoff: 250ms}
        budgets:
          daily: {scope: team, limit_usd: 5, window: day, on_exceed: downgrade,
                  downgrade_to: mock-small}
        limits:
          per-team: {scope: team, requests_per_minute: 600}
        """,
}


@pytest.fixture
def change(tmp_path: Path) -> tuple[Path, Path]:
    """A pull request: one of each kind of change, and changes that are none."""
    return write(tmp_path / "old", OLD), write(tmp_path / "new", NEW)


def test_diff_explains_a_policy_change(change: tuple[Path, Path]):
    old, new = change
    run = cli("diff", old, new)
    assert (run.code, run.err) == (0, "")
    before = load_folder(old, env={}).version
    after = load_folder(new, env={"OPENAI_API_KEY": "x"}).version
    assert run.out.splitlines() == [
        f"policy diff: {old} → {new}",
        f"version {before} → {after}",
        "providers:",
        "  + openai (added, providers.yaml:3)",
        "      type: openai",
        "      api_key: ${OPENAI_API_KEY}",
        "      headers.x-org-key: <redacted>",
        "models:",
        "  ~ mock-small (changed, providers.yaml:8); used by route embed, budget daily",
        "      price.input: 0.15 → 0.2",
        "routes:",
        "  ~ chat (changed, routes.yaml:2)",
        "      targets: [mock-small, mock-large] → [mock-large]",
        "      retry.attempts: 2 → 3",
        "      timeout: 20s → (unset)",
        "  - smart (removed, was routes.yaml:6)",
        "limits:",
        "  + per-team (added, routes.yaml:9)",
        "      scope: team",
        "      requests_per_minute: 600",
        "5 change(s): 2 added, 1 removed, 2 changed",
    ]
    assert KEY not in run.out


def test_diff_json_for_bots(change: tuple[Path, Path]):
    old, new = change
    result = cli("diff", "--format", "json", old, new).json()
    assert result["old"] == {"folder": str(old), "version": load_folder(old, env={}).version}
    by_name = {(c["section"], c["name"]): c for c in result["changes"]}
    assert list(by_name) == [
        ("providers", "openai"),
        ("models", "mock-small"),
        ("routes", "chat"),
        ("routes", "smart"),
        ("limits", "per-team"),
    ]
    assert by_name["routes", "chat"]["fields"] == [
        {"path": "targets", "old": ["mock-small", "mock-large"], "new": ["mock-large"]},
        {"path": "retry.attempts", "old": 2, "new": 3},
        {"path": "timeout", "old": "20s"},
    ]
    assert by_name["models", "mock-small"]["used_by"] == ["route embed", "budget daily"]
    assert by_name["routes", "smart"] == {
        "section": "routes",
        "name": "smart",
        "change": "removed",
        "location": "routes.yaml:6",
        "fields": [],
        "used_by": [],
    }
    assert KEY not in json.dumps(result)


def test_diff_names_what_depends_on_a_change(tmp_path: Path):
    old = write(
        tmp_path / "old",
        {
            "p.yaml": "providers: {p: {type: mock}}\nmodels: {m: {provider: p}}\n"
            "routes: {chat: {targets: [m]}, fast: {targets: [{model: m}]}}\n"
        },
    )
    new = write(
        tmp_path / "new",
        {
            "p.yaml": "providers: {p: {type: mock, timeout: 5s}}\n"
            "routes: {chat: {targets: [m]}, fast: {targets: [{model: m}]}}\n"
        },
    )
    lines = cli("diff", old, new).out.splitlines()
    assert "  ~ p (changed, p.yaml:1)" in lines
    assert "  - m (removed, was p.yaml:2); still referred to by route chat, route fast" in lines


def test_diff_of_equal_policies(tmp_path: Path):
    shutil.copytree(EXAMPLES, tmp_path / "a")
    run = cli("diff", EXAMPLES, tmp_path / "a")
    assert run.out.splitlines()[-1] == "no changes: the same entries with the same values"
    (tmp_path / "a" / "routes.yaml").write_text(
        (EXAMPLES / "routes.yaml").read_text().replace("# the app sends", "# apps send")
    )
    run = cli("diff", EXAMPLES, tmp_path / "a")
    assert run.out.splitlines()[-1] == (
        "no changes: the same entries with the same values "
        "(only comments, formatting or file placement differ)"
    )


def test_diff_refuses_what_it_cannot_read(tmp_path: Path):
    write(tmp_path / "bad", {"routes.yaml": "routes:\n  chat:\n    targets: [m\n"})
    run = cli("diff", EXAMPLES, tmp_path / "bad")
    assert run.code == 2
    assert run.out == ""
    assert run.err.startswith("routes.yaml:")
    run = cli("diff", tmp_path / "missing", EXAMPLES)
    assert (run.code, run.err.strip()) == (
        2,
        f"{tmp_path / 'missing'}:0: policy folder does not exist",
    )


def test_the_pre_commit_hook_runs_check_on_the_policy_folder():
    (hook,) = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
    assert hook["id"] == "llm-sidecar-check"
    assert hook["language"] == "python"
    assert hook["pass_filenames"] is False
    argv = shlex.split(hook["entry"]) + hook["args"]
    assert argv[0] == "llm-sidecar"
    assert parser().parse_args(argv[1:]).command == "check"
    assert cli(*argv[1:]).code == 0  # run from the repository root, as pre-commit does
