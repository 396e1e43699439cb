"""Every example in the docs and the README does what the page says: policy blocks pass
`llm-sidecar check` (or fail with the problem they show), and the tour's commands run
against a real sidecar on the example policies. Conventions: examples.py."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from sidecar.policy.compile import load_folder
from sidecar.policy.problems import PolicyInvalid
from sidecar.policy.schema import POLICY_FILE, SECTIONS
from sidecar.telemetry.metricdocs import METRICS
from tests.docs.examples import CHECKED_MARKS, ROOT, Block, blocks
from tests.support.sidecar import SidecarProcess

BLOCKS = blocks()
POLICIES = [b for b in BLOCKS if b.lang == "yaml"]
RUNS = [b for b in BLOCKS if b.mark.startswith("run: ")]
BASE = yaml.safe_load((Path(__file__).parent / "fragment_base.yaml").read_text())
ENV_NAMES = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)|_env:\s*([A-Za-z_][A-Za-z0-9_]*)")


def check(text: str, folder: Path, data: tuple[str, str] | None = None) -> list[str]:
    """What `llm-sidecar check` says of a folder holding `text` (and a data file): its
    problems, or none. CI passes a placeholder for each key; so does this, for every
    variable the text names."""
    folder.mkdir()
    (folder / "policy.yaml").write_text(text)
    if data is not None:
        (folder / data[0]).write_text(data[1])
    env = {a or b: "placeholder" for a, b in ENV_NAMES.findall(text)}
    try:
        load_folder(folder, env)
    except PolicyInvalid as exc:
        return [str(p) for p in exc.problems]
    return []


def merged(fragment: dict[str, Any]) -> dict[str, Any]:
    """A fragment over the base: named entries replace the base's of the same name."""
    out = {section: dict(entries) for section, entries in BASE.items()}
    for section, value in fragment.items():
        if section in SECTIONS and isinstance(value, dict):
            out.setdefault(section, {}).update(value)
        else:
            out[section] = value
    return out


@pytest.mark.parametrize("block", POLICIES, ids=str)
def test_a_policy_example_passes_check_or_fails_as_it_says(block: Block, tmp_path: Path):
    assert block.mark in CHECKED_MARKS, f"{block}: unknown marker '{block.mark}'"
    if block.mark == "not a policy":
        return
    text = block.text
    if block.mark == "fragment":
        text = yaml.safe_dump(merged(yaml.safe_load(text)), sort_keys=False)
    else:
        keys = set(yaml.safe_load(text) or {})
        assert keys & set(POLICY_FILE), (
            f"{block}: YAML with no policy section ({sorted(keys)}): mark it "
            "<!-- check: not a policy --> if it is not one"
        )
    data = (block.expect, block.data) if block.data is not None and block.expect else None
    problems = check(text, tmp_path / "policy", data)
    if block.mark == "fails":
        assert problems, f"{block} is meant to fail `check` but passes"
        assert any(block.expect in p for p in problems), (
            f"{block} fails, but not with '{block.expect}': {problems}"
        )
    else:
        assert problems == [], f"{block} fails `check`:\n" + "\n".join(problems)


def test_the_docs_hold_examples_of_every_kind():
    """The counts the closing note reports; a marker typo would drop a block silently."""
    kinds = {mark: sum(b.mark == mark for b in POLICIES) for mark in CHECKED_MARKS}
    kinds[""] += kinds.pop("policy")
    assert kinds[""] >= 6, kinds
    assert kinds["fails"] >= 3, kinds
    assert kinds["fragment"] >= 4, kinds
    assert len(RUNS) >= 2


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory):
    """`python3 dev.py run`'s sidecar: the example policies, the mock provider."""
    folder = tmp_path_factory.mktemp("demo") / "policies"
    shutil.copytree(ROOT / "policies", folder)
    sidecar = SidecarProcess(folder)
    asyncio.run(sidecar.wait_ready())
    yield sidecar
    sidecar.stop()


def _ported(text: str, sidecar: SidecarProcess) -> str:
    return (
        re.sub(r"(localhost|127\.0\.0\.1):8481", f"127.0.0.1:{sidecar.ops_port}", text)
        .replace(":8480", f":{sidecar.port}")
        .replace("localhost:", "127.0.0.1:")
    )


@pytest.mark.parametrize("block", RUNS, ids=str)
async def test_a_runnable_example_runs_against_the_mock_provider(block: Block, demo):
    assert block.mark == "run: mock", block
    assert block.lang in ("sh", "python"), block
    text = _ported(block.text, demo)
    if block.lang == "python":
        out = await _run([sys.executable, "-c", text])
        # `print(...)  # what it prints`: the page's comment is what the reader will see
        for expected in re.findall(r"^print\(.*#\s*(.+?)\s*$", block.text, re.M):
            assert expected in out, f"{block}: printed {out!r}, the page says {expected!r}"
        return
    for command in text.replace("\\\n", " ").splitlines():
        if command.strip().startswith("curl"):
            # any status but 2xx fails the example; pipes as the reader's shell runs them
            curl = command.replace("curl", "curl --fail-with-body --max-time 10", 1)
            await _run(["bash", "-o", "pipefail", "-c", curl])


async def _run(argv: list[str]) -> str:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    text = out.decode(errors="replace")
    assert proc.returncode == 0, f"{' '.join(argv)[:200]} exited {proc.returncode}:\n{text}"
    return text


async def test_the_metrics_reference_names_every_attribute_a_request_records(demo):
    """The attributes in metricdocs.py are written by hand: what a sidecar on the example
    policies records for JSON, streamed, cached, failed and embeddings requests must be
    among them, or the metrics reference would miss a label people can query."""
    chat = '{"model":"chat","messages":[{"role":"user","content":"hi"}]}'
    cached = '{"model":"smart","temperature":0,"messages":[{"role":"user","content":"hi"}]}'
    stream = '{"model":"chat","stream":true,"messages":[{"role":"user","content":"hi"}]}'
    embed = '{"model":"embed","input":"hi"}'
    proxy = f"http://127.0.0.1:{demo.port}/v1"
    missed = cached.replace('"hi"', '"not cached"')
    for path, body, header in (
        ("chat/completions", chat, "x-sidecar-team: research"),
        ("chat/completions", cached, "x-sidecar-user: alice"),
        ("chat/completions", cached, "x-sidecar-user: alice"),
        ("chat/completions", missed, "x-sidecar-cache: only-if-cached"),  # 504: error.type
        ("chat/completions", stream, "x-sidecar-user: bob"),
        ("embeddings", embed, "x-sidecar-user: bob"),
    ):
        await _run(["curl", "-s", f"{proxy}/{path}", "-H", header, "-d", body])
    stats = json.loads(await _run(["curl", "-s", f"http://127.0.0.1:{demo.ops_port}/stats"]))
    seen = stats["metrics"]
    assert {"sidecar.requests", "sidecar.cache.lookups", "gen_ai.client.token.usage"} <= set(seen)
    for name, metric in seen.items():
        keys = {k for point in metric["points"] for k in point["attributes"]}
        extra = keys - set(METRICS[name].attributes)
        assert not extra, f"{name} records {sorted(extra)}: add them to metricdocs.METRICS"
