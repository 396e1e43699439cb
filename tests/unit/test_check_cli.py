"""`llm-sidecar check DIR`, run as GitOps CI runs it: a real process, its output and exit code.

Every case here mixes several problems, so each run also shows that one run reports them all.
The child gets only the environment a test gives it: `${NAME}` handling depends on it.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sidecar.policy.compile import load_folder
from tests.unit.policy_files import BASE, write

EXAMPLES = Path(__file__).parents[2] / "policies"
SECRET = "fake-live-4f9c2b7e1d8a6f3e0b5c"  # looks like a key; must never be printed
DURATION_HINT = "is not a duration (use e.g. 250ms, 30s, 5m, 1h)"


@dataclass(frozen=True, slots=True)
class Run:
    code: int
    lines: list[str]  # stdout
    stderr: str


def check(folder: Path, env: Mapping[str, str] | None = None) -> Run:
    done = subprocess.run(
        [sys.executable, "-m", "sidecar", "check", str(folder)],
        env=dict(env or {}),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return Run(done.returncode, done.stdout.splitlines(), done.stderr)


def test_the_example_policies_pass():
    run = check(EXAMPLES)
    version = load_folder(EXAMPLES, env={}).version
    assert (run.code, run.stderr) == (0, "")
    assert len(run.lines) == 1
    files = len(list(EXAMPLES.glob("*.yaml")))
    assert run.lines[0].startswith(f"ok: {files} file(s), ")
    assert run.lines[0].endswith(f"; version {version}")


def test_a_valid_folder_prints_what_it_holds(tmp_path: Path):
    write(
        tmp_path,
        {
            "base.yaml": BASE,
            "teams/routes.yml": """\
                routes:
                  chat:
                    targets: [m]
                  chat-research:
                    match: {model: chat, team: research}
                    targets: [m]
                  chat-ml:
                    match: {model: chat, team: [ml, infra]}
                    targets: [m]
                """,
        },
    )
    run = check(tmp_path)
    version = load_folder(tmp_path, env={}).version
    assert (run.code, run.stderr) == (0, "")
    assert run.lines == [f"ok: 2 file(s), 3 route(s), 1 model(s), 1 provider(s); version {version}"]


def test_structural_problems_in_several_files_are_all_reported(tmp_path: Path):
    write(
        tmp_path,
        {
            "providers.yaml": """\
                providers:
                  mock:
                    type: mock
                    timeout: 30
                    mock: {latency: 5 minutes, chunk_delay: 250ms}
                  openai:
                    type: openai
                    base_url: https://api.example.test/v1
                    tiemout: 30s
                """,
            "models/main.yml": """\
                models:
                  small:
                    provider: mock
                    price: {input: cheap, output: 0.6}
                    circuit:
                      window: 1d
                """,
            "routes.yaml": """\
                routes:
                  chat:
                    targets: [small]
                   timeout: 20s
                """,
        },
    )
    run = check(tmp_path)
    assert (run.code, run.stderr) == (1, "")
    assert sorted(run.lines) == [
        "models/main.yml:4: models.small.price.input: must be of number type",
        f"models/main.yml:6: models.small.circuit.window: '1d' {DURATION_HINT}",
        "providers.yaml:4: providers.mock.timeout: must be of string type",
        f"providers.yaml:5: providers.mock.mock.latency: '5 minutes' {DURATION_HINT}",
        "providers.yaml:9: unknown key 'tiemout' at providers.openai.tiemout",
        "routes.yaml:4: not valid YAML: while parsing a block mapping, did not find expected key",
    ]


def test_reference_problems_across_files_are_all_reported(tmp_path: Path):
    write(
        tmp_path,
        {
            "base.yaml": BASE,
            "models.yaml": """\
                models:
                  claude:
                    provider: anthropic
                """,
            "routes.yaml": """\
                routes:
                  chat:
                    targets: [m, gpt-5]
                  chat-research:
                    match: {model: chat, team: research}
                    targets: [m]
                  chat-alice:
                    match: {model: chat, user: alice}
                    targets: [claude]
                """,
            "team/routes.yaml": """\
                models:
                  m:
                    provider: p
                routes:
                  smart:
                    targets: [m]
                  clever:
                    match: {model: smart}
                    targets: [m]
                """,
        },
    )
    run = check(tmp_path)
    assert (run.code, run.stderr) == (1, "")
    assert sorted(run.lines) == [
        "models.yaml:3: model 'claude' uses provider 'anthropic', which is not defined "
        "(providers: p)",
        "routes.yaml:3: route 'chat' targets model 'gpt-5', which is not defined "
        "(models: claude, m)",
        "routes.yaml:7: routes 'chat-research' (routes.yaml:4) and 'chat-alice' both match "
        "model 'chat' and their conditions overlap: give them disjoint conditions on a shared "
        "header, user or team",
        "team/routes.yaml:2: models 'm' is defined twice: in base.yaml:5 and team/routes.yaml:2",
        "team/routes.yaml:7: routes 'smart' (team/routes.yaml:5) and 'clever' both match model "
        "'smart' and neither has match conditions: give them disjoint conditions on a shared "
        "header, user or team",
    ]


def test_a_missing_variable_is_named_and_no_value_is_printed(tmp_path: Path):
    write(
        tmp_path,
        {
            "providers.yaml": """\
                providers:
                  openai:
                    type: openai
                    api_key: ${OPENAI_API_KEY}
                  anthropic:
                    type: openai
                    base_url: ${ANTHROPIC_API_KEY}
                    api_key: ${ANTHROPIC_API_KEY}
                """,
        },
    )
    run = check(tmp_path, env={"ANTHROPIC_API_KEY": SECRET})
    assert run.code == 1
    assert sorted(run.lines) == [
        "providers.yaml:4: environment variable ${OPENAI_API_KEY} is not set",
        "providers.yaml:7: providers.anthropic.base_url: '${ANTHROPIC_API_KEY}' is not an "
        "http(s) URL",
    ]
    assert SECRET not in run.stderr
    assert SECRET not in "\n".join(run.lines)


def test_a_folder_that_does_not_exist_fails(tmp_path: Path):
    run = check(tmp_path / "policies")
    assert run.code == 1
    assert run.lines == [f"{tmp_path / 'policies'}:0: policy folder does not exist"]


def test_a_recursive_yaml_alias_is_a_problem_not_a_crash(tmp_path: Path):
    write(
        tmp_path,
        {
            "base.yaml": BASE,
            "routes.yaml": """\
                routes: &all
                  chat:
                    targets: [m]
                  loop: *all
                """,
        },
    )
    run = check(tmp_path)
    assert (run.code, run.stderr) == (1, "")
    assert "routes.yaml:4: a YAML alias refers to a node containing it" in run.lines
