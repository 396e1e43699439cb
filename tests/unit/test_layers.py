"""Each layer uses only the ones below it: the policy layer reads, checks, compiles and swaps
policies and knows nothing of what runs them (provider clients, stores, telemetry), and the
job queue's seam does not import its backends. Read from the source, lazy imports included,
since an import inside a function is a dependency all the same."""

from __future__ import annotations

import ast
from pathlib import Path

SIDECAR = Path(__file__).resolve().parents[2] / "sidecar"


def imported(path: Path) -> set[str]:
    """The sidecar modules (or names in them) a file imports, anywhere in it."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out |= {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
    return {name for name in out if name.startswith("sidecar.")}


def test_the_policy_layer_imports_nothing_outside_itself():
    outside = {
        f"{path.name}: {name}"
        for path in (SIDECAR / "policy").glob("*.py")
        for name in imported(path)
        if not name.startswith("sidecar.policy.")
    }
    assert not outside, sorted(outside)


def test_the_job_queue_seam_imports_no_backend():
    assert not {name for name in imported(SIDECAR / "jobs" / "queue.py") if "queue_" in name}, (
        "jobs/queue.py is what the backends import; jobs/backends.py opens them"
    )
