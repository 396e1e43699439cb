"""Loading a policy folder: what compiles into what, and the `FILE:LINE:` of what does not.

Each problem is asserted as the exact line `llm-sidecar check` prints for it (`str(Problem)`);
test_check_cli.py runs the real command over folders that mix these cases.
"""

from __future__ import annotations

from pathlib import Path
from textwrap import dedent

import pytest

from sidecar.policy.compile import load_folder
from sidecar.policy.model import Condition, Price
from tests.unit.policy_files import BASE, problems, write

SECRET = "fake-live-4f9c2b7e1d8a6f3e0b5c"  # looks like a key; must never be printed


# --- a valid folder ------------------------------------------------------------------------------


def test_a_folder_of_several_files_compiles_into_resolved_routes(tmp_path: Path):
    write(
        tmp_path,
        {
            "providers.yaml": """\
                providers:
                  openai:
                    type: openai
                    base_url: https://api.example.test/v1/
                    api_key: ${OPENAI_API_KEY}
                    timeout: 30s
                  local:
                    type: mock
                    mock: {latency: 250ms}
                """,
            "models.yml": """\
                models:
                  gpt-4o-mini:
                    provider: openai
                    price: {input: 0.15, output: 0.60, cached_input: 0.075}
                  fast:
                    provider: openai
                    name: gpt-4o-mini-2024-07-18
                    price: {input: 1, output: 2}
                  echo:
                    provider: local
                """,
            "routes.yaml": """\
                routes:
                  chat:
                    targets: [gpt-4o-mini, echo]
                    retry: {attempts: 2, backoff: 250ms}
                    timeout: 5m
                  chat-for-research:
                    match: {model: chat, team: research, headers: {X-Tier: [gold, silver]}}
                    targets: [fast]
                    timeout: 1h
                """,
        },
    )
    policy = load_folder(tmp_path, env={"OPENAI_API_KEY": SECRET})

    assert policy.files == ("models.yml", "providers.yaml", "routes.yaml")
    openai, local = policy.providers["openai"], policy.providers["local"]
    assert (openai.type, openai.base_url, openai.timeout) == (
        "openai",
        "https://api.example.test/v1",
        30.0,
    )
    assert openai.api_key.reveal() == SECRET
    assert (local.type, local.mock.latency) == ("mock", 0.25)

    models = policy.models
    assert models["gpt-4o-mini"].upstream == "gpt-4o-mini"  # defaults to the key
    assert models["fast"].upstream == "gpt-4o-mini-2024-07-18"
    assert [m.provider for m in models.values()] == ["openai", "openai", "local"]
    assert models["gpt-4o-mini"].price == Price(input=0.15, output=0.60, cached_input=0.075)
    assert models["fast"].price == Price(input=1.0, output=2.0, cached_input=None)
    assert models["echo"].price == Price(input=0.0, output=0.0, cached_input=None)

    chat = policy.routes["chat"]
    assert chat.model == "chat"  # a route without `match.model` answers to its own name
    assert chat.conditions == ()
    assert [t.model for t in chat.targets] == [models["gpt-4o-mini"], models["echo"]]
    assert [(t.retry.attempts, t.retry.backoff) for t in chat.targets] == [(2, 0.25)] * 2
    assert chat.timeout == 300.0

    research = policy.routes["chat-for-research"]
    assert research.model == "chat"
    assert set(research.conditions) == {
        Condition("team", "", frozenset({"research"})),
        Condition("header", "x-tier", frozenset({"gold", "silver"})),  # header names lower-cased
    }
    assert [t.model.upstream for t in research.targets] == ["gpt-4o-mini-2024-07-18"]
    assert research.timeout == 3600.0

    assert policy.by_model["chat"].default == chat
    assert policy.by_model["chat"].conditional == (research,)
    direct = policy.by_model["echo"].default  # a model named in a request goes straight to it
    assert direct is not None
    assert direct.implicit
    assert [t.model for t in direct.targets] == [models["echo"]]
    assert policy.public_models == ("chat", "gpt-4o-mini", "fast", "echo")


def test_the_example_policies_compile():
    policy = load_folder(Path(__file__).parents[2] / "policies", env={})
    assert policy.routes
    assert all(t.model.name in policy.models for r in policy.routes.values() for t in r.targets)


# --- structure: unknown keys, types, required fields ---------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            """\
            route:
              chat:
                targets: [m]
            """,
            ["case.yaml:1: unknown key 'route' at route"],
            id="top-level",
        ),
        pytest.param(
            """\
            providers:
              q:
                type: mock
                mock: {latnecy: 20ms}
            models:
              n:
                provider: q
                price: {inptu: 1}
            routes:
              chat:
                targets: [m]
                match:
                  model: chat
                  teams: [a]
                retry:
                  attempts: 2
                  backof: 1s
            """,
            [
                "case.yaml:4: unknown key 'latnecy' at providers.q.mock.latnecy",
                "case.yaml:8: unknown key 'inptu' at models.n.price.inptu",
                "case.yaml:14: unknown key 'teams' at routes.chat.match.teams",
                "case.yaml:17: unknown key 'backof' at routes.chat.retry.backof",
            ],
            id="nested",
        ),
    ],
)
def test_unknown_keys_are_reported_at_any_depth(tmp_path: Path, text: str, expected: list[str]):
    write(tmp_path, {"base.yaml": BASE, "case.yaml": text})
    assert sorted(problems(tmp_path)) == sorted(expected)


def test_wrong_types_are_reported_on_their_line(tmp_path: Path):
    write(
        tmp_path,
        {
            "case.yaml": """\
                providers:
                  q:
                    type: mock
                    max_connections: lots
                models:
                  n:
                    provider: q
                    price: {input: cheap}
                routes:
                  chat:
                    targets: n
                """
        },
    )
    assert sorted(problems(tmp_path)) == [
        "case.yaml:11: routes.chat.targets: must be of list type",
        "case.yaml:4: providers.q.max_connections: must be of integer type",
        "case.yaml:8: models.n.price.input: must be of number type",
    ]


def test_a_missing_required_key_and_an_unknown_provider_type_are_reported(tmp_path: Path):
    write(
        tmp_path,
        {
            "case.yaml": """\
                providers:
                  q:
                    type: openia
                models:
                  n:
                    price: {input: 1}
                """
        },
    )
    assert sorted(problems(tmp_path)) == [
        "case.yaml:3: providers.q.type: unallowed value openia",
        "case.yaml:5: 'models.n.provider' is required",
    ]


def test_bad_durations_are_reported_with_the_accepted_forms(tmp_path: Path):
    write(
        tmp_path,
        {
            "case.yaml": """\
                providers:
                  q:
                    type: mock
                    timeout: 30
                    mock:
                      latency: 5 minutes
                      chunk_delay: 1d
                routes:
                  chat:
                    targets: [m]
                    timeout: "30"
                """
        },
    )
    hint = "is not a duration (use e.g. 250ms, 30s, 5m, 1h)"
    assert sorted(problems(tmp_path)) == [
        f"case.yaml:11: routes.chat.timeout: '30' {hint}",
        "case.yaml:4: providers.q.timeout: must be of string type",
        f"case.yaml:6: providers.q.mock.latency: '5 minutes' {hint}",
        f"case.yaml:7: providers.q.mock.chunk_delay: '1d' {hint}",
    ]


# --- YAML itself ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            """\
            routes:
              chat:
                targets: [m]
               timeout: 20s
            """,
            "case.yaml:4: not valid YAML: while parsing a block mapping, did not find expected key",
            id="indentation",
        ),
        pytest.param(
            """\
            routes:
              chat:
                targets: [m]
              chat:
                targets: [m]
            """,
            "case.yaml:4: duplicate key 'chat'",
            id="duplicate-key",
        ),
        pytest.param(
            """\
            - routes
            - models
            """,
            "case.yaml:1: a policy file must be a mapping of sections",
            id="not-a-mapping",
        ),
        pytest.param(
            """\
            routes:
              chat:
                targets: [m]
            ---
            routes: {}
            """,
            "case.yaml:5: one YAML document per file, found several",
            id="two-documents",
        ),
        pytest.param(
            """\
            routes:
              chat: &loop
                targets: [m]
                retry: *loop
            """,
            "case.yaml:4: a YAML alias refers to a node containing it",
            id="recursive-alias",
        ),
    ],
)
def test_yaml_problems_name_the_file_and_line(tmp_path: Path, text: str, expected: str):
    write(tmp_path, {"base.yaml": BASE, "case.yaml": text})
    assert expected in problems(tmp_path)


def test_an_empty_file_and_a_file_of_comments_are_fine(tmp_path: Path):
    write(tmp_path, {"base.yaml": BASE, "empty.yaml": "", "notes.yaml": "# nothing yet\n"})
    assert set(load_folder(tmp_path, env={}).models) == {"m"}


# --- references between sections -----------------------------------------------------------------


def test_a_route_target_naming_an_undefined_model_is_reported(tmp_path: Path):
    write(
        tmp_path,
        {
            "base.yaml": BASE,
            "case.yaml": """\
                routes:
                  chat:
                    targets:
                      - m
                      - gpt-5-turbo
                """,
        },
    )
    assert problems(tmp_path) == [
        "case.yaml:5: route 'chat' targets model 'gpt-5-turbo', which is not defined (models: m)"
    ]


def test_a_model_naming_an_undefined_provider_is_reported(tmp_path: Path):
    write(
        tmp_path,
        {
            "base.yaml": BASE,
            "case.yaml": """\
                models:
                  claude:
                    price: {input: 3}
                    provider: anthropic
                """,
        },
    )
    assert problems(tmp_path) == [
        "case.yaml:4: model 'claude' uses provider 'anthropic', which is not defined (providers: p)"
    ]


def test_a_name_defined_in_two_files_names_both(tmp_path: Path):
    write(
        tmp_path,
        {
            "a.yaml": BASE
            + dedent(
                """\
                routes:
                  chat:
                    targets: [m]
                """
            ),
            "team/b.yaml": """\
                # the research team's copy
                routes:
                  chat:
                    targets: [m]
                models:
                  m:
                    provider: p
                providers:
                  p:
                    type: mock
                """,
        },
    )
    assert sorted(problems(tmp_path)) == [
        "team/b.yaml:3: routes 'chat' is defined twice: in a.yaml:8 and team/b.yaml:3",
        "team/b.yaml:6: models 'm' is defined twice: in a.yaml:5 and team/b.yaml:6",
        "team/b.yaml:9: providers 'p' is defined twice: in a.yaml:2 and team/b.yaml:9",
    ]


# --- ambiguous routes ----------------------------------------------------------------------------


def test_two_unconditional_routes_for_one_model_are_ambiguous(tmp_path: Path):
    write(
        tmp_path,
        {
            "base.yaml": BASE,
            "case.yaml": """\
                routes:
                  chat:
                    targets: [m]
                  chat-too:
                    match: {model: chat}
                    targets: [m]
                """,
        },
    )
    assert problems(tmp_path) == [
        "case.yaml:4: routes 'chat' (case.yaml:2) and 'chat-too' both match model 'chat' and "
        "neither has match conditions: give them disjoint conditions on a shared header, "
        "user or team"
    ]


@pytest.mark.parametrize(
    ("first", "second"),
    [
        pytest.param("{team: research}", "{team: [ml, research]}", id="a-shared-value"),
        pytest.param("{team: research}", "{user: alice}", id="different-keys"),
        pytest.param(
            "{headers: {X-Tier: gold}}", "{headers: {x-tier: gold}}", id="header-name-case"
        ),
    ],
)
def test_routes_whose_conditions_overlap_are_ambiguous(tmp_path: Path, first: str, second: str):
    write(
        tmp_path,
        {
            "base.yaml": BASE,
            "case.yaml": f"""\
                routes:
                  one:
                    match: {{model: chat, {first[1:-1]}}}
                    targets: [m]
                  two:
                    match: {{model: chat, {second[1:-1]}}}
                    targets: [m]
                """,
        },
    )
    assert problems(tmp_path) == [
        "case.yaml:5: routes 'one' (case.yaml:2) and 'two' both match model 'chat' and their "
        "conditions overlap: give them disjoint conditions on a shared header, user or team"
    ]


def test_disjoint_conditions_and_one_default_are_allowed(tmp_path: Path):
    write(
        tmp_path,
        {
            "base.yaml": BASE,
            "case.yaml": """\
                routes:
                  chat:
                    targets: [m]
                  chat-research:
                    match: {model: chat, team: research, user: alice}
                    targets: [m]
                  chat-ml:
                    match: {model: chat, team: [ml, infra]}
                    targets: [m]
                  fast-gold:
                    match: {model: fast, headers: {X-Tier: gold}}
                    targets: [m]
                  fast-silver:
                    match: {model: fast, headers: {x-tier: silver}}
                    targets: [m]
                """,
        },
    )
    policy = load_folder(tmp_path, env={})
    chat, fast = policy.by_model["chat"], policy.by_model["fast"]
    assert chat.default is not None
    assert chat.default.name == "chat"
    assert {r.name for r in chat.conditional} == {"chat-research", "chat-ml"}
    assert fast.default is None
    assert {r.name for r in fast.conditional} == {"fast-gold", "fast-silver"}


# --- several problems in one run -----------------------------------------------------------------


def test_every_structural_problem_in_every_file_is_reported_in_one_run(tmp_path: Path):
    write(
        tmp_path,
        {
            "a.yaml": """\
                providers:
                  p:
                    type: mock
                    timeout: soon
                """,
            "b.yaml": """\
                models:
                  m:
                    provider: p
                    prize: {input: 1}
                """,
            "c.yaml": "routes: [\n",
            "d.yaml": """\
                routes:
                  chat:
                    targets: [m]
                    timeout: ${ROUTE_TIMEOUT}
                """,
        },
    )
    found = problems(tmp_path)
    assert (
        "a.yaml:4: providers.p.timeout: 'soon' is not a duration (use e.g. 250ms, 30s, 5m, 1h)"
        in found
    )
    assert "b.yaml:4: unknown key 'prize' at models.m.prize" in found
    assert any(p.startswith("c.yaml:2: not valid YAML: ") for p in found)
    assert "d.yaml:4: environment variable ${ROUTE_TIMEOUT} is not set" in found


def test_every_reference_problem_is_reported_in_one_run(tmp_path: Path):
    write(
        tmp_path,
        {
            "a.yaml": """\
                providers:
                  p:
                    type: mock
                models:
                  m:
                    provider: p
                  n:
                    provider: q
                routes:
                  chat:
                    targets: [m, x]
                  chat-too:
                    match: {model: chat}
                    targets: [y]
                """,
        },
    )
    assert sorted(problems(tmp_path)) == [
        "a.yaml:11: route 'chat' targets model 'x', which is not defined (models: m, n)",
        "a.yaml:12: routes 'chat' (a.yaml:10) and 'chat-too' both match model 'chat' and "
        "neither has match conditions: give them disjoint conditions on a shared header, "
        "user or team",
        "a.yaml:14: route 'chat-too' targets model 'y', which is not defined (models: m, n)",
        "a.yaml:8: model 'n' uses provider 'q', which is not defined (providers: p)",
    ]
