"""bench/savings.py cannot rot: its quick mode runs on a tiny workload, the ledger adds up to
what the fake providers billed, and every row's policy is one the sidecar accepts."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sidecar.policy.compile import load_folder

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "bench")]

import savings  # noqa: E402


@pytest.mark.parametrize("row", [*savings.ROWS, savings.ALL], ids=lambda r: r.name)
def test_every_row_is_a_valid_policy(row: savings.Row, tmp_path: Path):
    policy = savings.merged(savings.base_policy(9), row.overlay)
    (tmp_path / "bench.yaml").write_text(yaml.safe_dump(policy))
    for name, text in row.files.items():
        (tmp_path / name).write_text(text)
    compiled = load_folder(tmp_path, env={})
    assert compiled.routes["assistant"].baseline is compiled.models["sonnet"]


@pytest.mark.skipif(shutil.which("taskset") is None, reason="the bench pins its processes")
def test_a_tiny_run_prints_the_table_and_its_ledger_matches_the_bill(tmp_path: Path):
    out = tmp_path / "savings.json"
    rows = "all together,small model for all"  # every lever there is, two sidecar starts
    argv = ["bench/savings.py", "--quick", "--requests", "30", "--only", rows, "--out", str(out)]
    proc = subprocess.run(
        [sys.executable, *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "baseline: straight to the large model" in proc.stdout
    report = json.loads(out.read_text())
    assert report["workload"]["requests"] == 30
    assert report["baseline"]["quality"] == 1.0
    by_name = {row["name"]: row for row in report["rows"]}
    assert set(by_name) == {"all together", "small model for all"}
    for row in by_name.values():
        ok, _ = row["check"]
        assert ok, row
        assert row["errors"] == 0
        # the sidecar's own cost is what the provider billed it
        assert row["ledger"]["cost_usd"] == pytest.approx(row["spend"], rel=1e-6)
    small = by_name["small model for all"]
    assert small["ledger"]["saved_by_lever"]["selection"] > 0
    assert small["quality"] < 1.0  # the small model fails the complex tasks, visibly
    together = by_name["all together"]  # issue 18's verified selection is in it
    assert together["ledger"]["saved_by_lever"]["selection"] > 0
    assert together["quality"] > small["quality"]
