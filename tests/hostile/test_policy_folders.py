"""Policy folders a careless operator (or a broken mount) produces: symlink loops, deep
nesting, binary and huge files, FIFOs, foreign YAML tags, half-written and empty folders.

Each case runs twice, as it meets users: `llm-sidecar check` as a real process (exit code,
`FILE:LINE: message`, no traceback), and a running sidecar on a good policy that is then
broken the same way: it must keep serving the last good policy, say why on /status, and
pick up the fix without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from sidecar.app import Sidecar
from tests.support.sidecar import SidecarProcess, start_sidecar, write_policy
from tests.support.wait import eventually
from tests.unit.test_check_cli import check

WITHIN = 3.0  # seconds a reload may take to show: debounce, the stability wait, compile


def policy(reply: str, routes: str = "chat: {targets: [m]}") -> str:
    return f"""\
providers:
  p: {{type: mock, mock: {{reply: {reply}}}}}
models:
  m: {{provider: p}}
routes:
  {routes}
"""


BASE = "providers:\n  p: {type: mock, mock: {reply: good}}\nmodels:\n  m: {provider: p}\n"
ROUTES = "routes:\n  chat: {targets: [m]}\n  other: {targets: [m]}\n"


# What each hostile change does to the folder, and the problem it must give.
Breaker = Callable[[Path], None]


def file_symlink_loop(folder: Path) -> None:
    (folder / "loop.yaml").symlink_to("loop.yaml")


def directory_loops(folder: Path) -> None:
    (folder / "a").mkdir()
    (folder / "a" / "up").symlink_to("..")  # back to the policy folder
    (folder / "a" / "again").symlink_to("../a")  # back to a/ itself


def deep_yaml(folder: Path) -> None:
    (folder / "deep.yaml").write_text("x: " + "[" * 5000 + "]" * 5000 + "\n")


def deep_block_yaml(folder: Path) -> None:
    text = "x:\n" + "".join("  " * i + "k:\n" for i in range(1, 101))
    (folder / "deep.yaml").write_text(text)


def python_tag(folder: Path) -> None:
    canary = folder.parent / "canary"
    (folder / "tag.yaml").write_text(
        f"routes:\n  evil:\n    targets: [!!python/object/apply:os.system ['touch {canary}']]\n"
    )


def local_tag(folder: Path) -> None:
    (folder / "tag.yaml").write_text("routes:\n  other:\n    targets: [!foo m]\n")


def binary_file(folder: Path) -> None:
    (folder / "bin.yaml").write_bytes(b"routes:\n  x: \xff\xfe\x00\x01\x02\n")


def huge_file(folder: Path) -> None:
    (folder / "huge.yaml").write_text("# padding\n" * 30_000)  # 300 kB of comments


def fifo(folder: Path) -> None:
    os.mkfifo(folder / "pipe.yaml")


def deep_folders(folder: Path) -> None:
    deep = folder.joinpath(*"abcdefghij")
    deep.mkdir(parents=True)
    (deep / "more.yaml").write_text("routes: {}\n")


def truncated_yaml(folder: Path) -> None:
    (folder / "policy.yaml").write_text(policy("broken")[:-12])  # cut inside the route


CASES: dict[str, tuple[Breaker, list[str]]] = {
    "file-symlink-loop": (file_symlink_loop, ["loop.yaml:0: cannot read: symlink loop"]),
    "directory-loops": (
        directory_loops,
        ["a/again:0: symlink loop: leads back to a/", "a/up:0: symlink loop: leads back to"],
    ),
    "deep-flow-yaml": (deep_yaml, ["deep.yaml:1: not valid YAML"]),
    "deep-block-yaml": (deep_block_yaml, ["deep.yaml:65: nested deeper than 64 levels"]),
    "python-tag": (
        python_tag,
        ["tag.yaml:3: unknown YAML tag '!!python/object/apply:os.system'"],
    ),
    "local-tag": (local_tag, ["tag.yaml:3: unknown YAML tag '!foo'"]),
    "binary-file": (binary_file, ["bin.yaml:2: not text (a binary file?)"]),
    "huge-file": (huge_file, ["huge.yaml:0: too large: a policy file may hold 256 KiB"]),
    "fifo": (fifo, ["pipe.yaml:0: not a regular file"]),
    "deep-folders": (deep_folders, ["a/b/c/d/e/f/g/h/i:0: folders nested deeper than 8"]),
    "truncated-yaml": (truncated_yaml, ["policy.yaml:6: not valid YAML"]),
}


def matches(lines: list[str], expected: list[str]) -> bool:
    """Each expected problem starts one line, and no line is anything else."""
    return len(lines) == len(expected) and all(
        any(line.startswith(e) for line in lines) for e in expected
    )


@pytest.mark.parametrize("case", list(CASES))
def test_check_reports_each_hostile_folder_as_file_line_problems(tmp_path: Path, case: str):
    folder = tmp_path / "policies"
    write_policy(folder, "policy.yaml", policy("good"))
    breaker, expected = CASES[case]
    breaker(folder)
    run = check(folder)
    assert run.code == 1, run
    assert run.stderr == ""  # no traceback
    assert matches(run.lines, expected), run.lines
    assert not (tmp_path / "canary").exists()  # no tag was ever constructed


def test_check_of_an_empty_or_missing_folder_fails(tmp_path: Path):
    empty = tmp_path / "empty"
    (empty / "notes").mkdir(parents=True)
    (empty / "README.md").write_text("policies go here\n")
    run = check(empty)
    assert (run.code, run.stderr) == (1, "")
    assert run.lines == [f"{empty}:0: no policy files (*.yaml, *.yml) in the folder"]

    run = check(tmp_path / "missing")
    assert (run.code, run.stderr) == (1, "")
    assert run.lines == [f"{tmp_path / 'missing'}:0: policy folder does not exist"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_check_reports_an_unreadable_file(tmp_path: Path):
    write_policy(tmp_path, "policy.yaml", policy("good"))
    secret = write_policy(tmp_path, "secret.yaml", "routes: {}\n")
    secret.chmod(0)
    run = check(tmp_path)
    assert (run.code, run.stderr) == (1, "")
    assert run.lines == ["secret.yaml:0: cannot read: permission denied"]


def test_check_reports_structure_and_references_in_one_run(tmp_path: Path):
    """A bad duration in one file, an undefined model in another: both in one run. The
    model whose price is malformed is left out of the cross-checks, so the route using it
    is not also reported as targeting an undefined model."""
    write_policy(
        tmp_path,
        "providers.yaml",
        """\
        providers:
          p: {type: mock, timeout: 5 minutes}
          q: {type: mock}
        models:
          m: {provider: p, price: {input: cheap}}
          n: {provider: q}
        """,
    )
    write_policy(
        tmp_path,
        "routes.yaml",
        """\
        routes:
          chat: {targets: [m, n]}
          other: {targets: [n, gpt-5]}
        """,
    )
    run = check(tmp_path)
    assert (run.code, run.stderr) == (1, "")
    assert run.lines == [
        "providers.yaml:2: providers.p.timeout: '5 minutes' is not a duration "
        "(use e.g. 250ms, 30s, 5m, 1h)",
        "providers.yaml:5: models.m.price.input: must be of number type",
        "routes.yaml:3: route 'other' targets model 'gpt-5', which is not defined (models: n)",
    ]


# A running sidecar ------------------------------------------------------------------------


async def ops(sidecar: Sidecar, path: str) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{sidecar.ops_port}{path}") as r,
    ):
        return r.status, await r.json()


async def ask(sidecar: Sidecar, model: str = "chat") -> str:
    async with openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{sidecar.port}/v1", api_key="app", max_retries=0
    ) as api:
        reply = await api.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}]
        )
        return reply.choices[0].message.content or ""


async def rejected(sidecar: Sidecar, failures: int) -> dict[str, Any]:
    """/status once a reload after the `failures` counted so far has failed."""

    async def failed() -> dict[str, Any] | None:
        _, status = await ops(sidecar, "/status")
        return status if status["last_reload"]["failures"] > failures else None

    return await eventually(failed, within=WITHIN)


async def answers(sidecar: Sidecar, text: str) -> None:
    async def now() -> bool:
        try:
            return await ask(sidecar) == text
        except openai.APIError:
            return False

    await eventually(now, within=WITHIN)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return tmp_path / "policies"


@pytest.fixture
async def sidecar(folder: Path) -> AsyncIterator[Sidecar]:
    write_policy(folder, "policy.yaml", policy("good"))
    sc = await start_sidecar(folder)
    yield sc
    await sc.stop()
    assert sc.holder.status()["watcher"] == "stopped"


@pytest.mark.parametrize("case", list(CASES))
async def test_a_running_sidecar_keeps_the_last_good_policy_and_takes_the_fix(
    sidecar: Sidecar, folder: Path, case: str
):
    _, before = await ops(sidecar, "/status")
    good = before["policy"]["version"]
    breaker, expected = CASES[case]
    breaker(folder)

    status = await rejected(sidecar, before["last_reload"]["failures"])
    assert matches(status["last_reload"]["errors"], expected), status["last_reload"]
    assert status["policy"]["version"] == good
    assert status["watcher"] == "watching"
    assert (await ops(sidecar, "/readyz"))[0] == 200
    assert await ask(sidecar) == "good"
    assert not (folder.parent / "canary").exists()

    for name in ("loop.yaml", "deep.yaml", "tag.yaml", "bin.yaml", "huge.yaml", "pipe.yaml"):
        (folder / name).unlink(missing_ok=True)
    shutil.rmtree(folder / "a", ignore_errors=True)
    write_policy(folder, "policy.yaml", policy("fixed"))
    await answers(sidecar, "fixed")
    _, status = await ops(sidecar, "/status")
    assert status["last_reload"]["ok"] is True
    assert status["last_reload"]["errors"] == []


async def test_a_reload_reports_structure_and_references_in_one_run(sidecar: Sidecar, folder: Path):
    _, before = await ops(sidecar, "/status")
    write_policy(folder, "more.yaml", "models:\n  n: {provider: p, price: {input: cheap}}\n")
    write_policy(folder, "policy.yaml", policy("good", "chat: {targets: [m, gpt-5]}"))
    status = await rejected(sidecar, before["last_reload"]["failures"])
    assert status["last_reload"]["errors"] == [
        "more.yaml:2: models.n.price.input: must be of number type",
        "policy.yaml:6: route 'chat' targets model 'gpt-5', which is not defined (models: m)",
    ]
    assert await ask(sidecar) == "good"


async def test_a_file_written_in_place_is_not_loaded_half_written(tmp_path: Path):
    """An editor writing `routes.yaml` in place: truncated, then written in two parts a
    moment apart. The first part alone is a valid policy without route `other`; no
    request for `other` may fail while the file is being written."""
    folder = tmp_path / "policies"
    write_policy(folder, "base.yaml", BASE)
    write_policy(folder, "routes.yaml", ROUTES)
    sc = await start_sidecar(folder)
    statuses: list[int] = []
    writing = True

    async def keep_asking() -> None:
        async with aiohttp.ClientSession() as session:
            while writing:
                async with session.post(
                    f"http://127.0.0.1:{sc.port}/v1/chat/completions",
                    json={"model": "other", "messages": [{"role": "user", "content": "hi"}]},
                ) as r:
                    statuses.append(r.status)
                await asyncio.sleep(0.003)

    async def loaded(route: str) -> bool:
        snap = sc.holder.current
        return snap is not None and route in snap.policy.routes

    asker = asyncio.create_task(keep_asking())
    try:
        # A first edit, seen through: the watcher is up before the one that matters.
        write_policy(folder, "routes.yaml", ROUTES + "  warm: {targets: [m]}\n")
        await eventually(lambda: loaded("warm"), within=WITHIN)
        reloads = sc.holder.policy.last.reloads
        new = ROUTES + "  third: {targets: [m]}\n"
        first, rest = new.split("  other:")
        with (folder / "routes.yaml").open("w") as f:  # truncates: no rename
            f.write(first)
            f.flush()
            await asyncio.sleep(0.09)  # past the watcher's 20 ms step, within 100 ms
            f.write("  other:" + rest)
        await eventually(lambda: loaded("third"), within=WITHIN)
        await asyncio.sleep(0.05)
    finally:
        writing = False
        await asker
        await sc.stop()
    assert statuses
    assert set(statuses) == {200}, f"{statuses.count(404)} of {len(statuses)} answered 404"
    assert sc.holder.policy.last.reloads == reloads + 1  # the whole file once, never the half


async def test_emptying_the_routes_is_refused_unless_written_as_empty(folder: Path):
    write_policy(folder, "base.yaml", BASE)
    write_policy(folder, "routes.yaml", ROUTES)
    sc = await start_sidecar(folder)
    try:
        _, before = await ops(sc, "/status")
        (folder / "routes.yaml").write_text("")  # an editor's save, caught half-way, and kept
        status = await rejected(sc, before["last_reload"]["failures"])
        assert status["last_reload"]["errors"] == [
            f"{folder}:0: refused: this change leaves no routes, as a half-written file "
            "would; to mean it, write `routes: {}` in a policy file"
        ]
        assert status["policy"]["routes"] == ["chat", "other"]
        assert await ask(sc) == "good"

        (folder / "routes.yaml").write_text("routes: {}\n")  # meant: no routes

        async def no_routes() -> bool:
            _, status = await ops(sc, "/status")
            return status["last_reload"]["ok"] and status["policy"]["routes"] == []

        await eventually(no_routes, within=WITHIN)
        with pytest.raises(openai.NotFoundError):
            await ask(sc)
        assert await ask(sc, "m") == "good"  # the model itself still answers
    finally:
        await sc.stop()


async def test_an_emptied_folder_keeps_the_last_good_policy(sidecar: Sidecar, folder: Path):
    _, before = await ops(sidecar, "/status")
    (folder / "policy.yaml").unlink()
    status = await rejected(sidecar, before["last_reload"]["failures"])
    assert status["last_reload"]["errors"] == [
        f"{folder}:0: no policy files (*.yaml, *.yml) in the folder"
    ]
    assert (await ops(sidecar, "/readyz"))[0] == 200
    assert await ask(sidecar) == "good"
    write_policy(folder, "policy.yaml", policy("back"))
    await answers(sidecar, "back")


async def test_serve_on_an_empty_folder_is_not_ready_until_a_policy_arrives(tmp_path: Path):
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "README.md").write_text("the ConfigMap is not mounted yet\n")
    sc = await start_sidecar(folder)
    try:
        assert (await ops(sc, "/readyz"))[0] == 503
        _, status = await ops(sc, "/status")
        assert status["ready"] is False
        assert status["last_reload"]["errors"] == [
            f"{folder}:0: no policy files (*.yaml, *.yml) in the folder"
        ]
        write_policy(folder, "policy.yaml", policy("arrived"))
        await answers(sc, "arrived")
        assert (await ops(sc, "/readyz"))[0] == 200
    finally:
        await sc.stop()


async def test_sigterm_stops_a_sidecar_whose_folder_loops(tmp_path: Path):
    """Two directory loops made the walk exponential: the reload never ended and the
    process ignored SIGTERM. Now the reload ends with problems and SIGTERM stops it."""
    folder = tmp_path / "policies"
    write_policy(folder, "policy.yaml", policy("good"))
    child = SidecarProcess(folder)
    try:
        await child.wait_ready()
        directory_loops(folder)

        async def rejected_in_log() -> bool:
            return "a/up:0: symlink loop" in child.log()

        with contextlib.suppress(AssertionError):  # SIGTERM after that reload, or after 3 s
            await eventually(rejected_in_log, within=WITHIN)
        started = time.monotonic()
        child.proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(child.proc.wait, 10) == 0
        assert time.monotonic() - started < 5
        log = child.log()
        assert "a/up:0: symlink loop: leads back to the policy folder; not read" in log
        assert "a/again:0: symlink loop: leads back to a/; not read" in log
        assert "Traceback" not in log
    finally:
        child.stop()
