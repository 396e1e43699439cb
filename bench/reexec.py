"""Bench scripts run on the project's virtualenv: started with another Python (`python
bench/x.py`), a script that lacks the project's packages runs itself again on .venv's."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_PY = ROOT / ".venv" / "bin" / "python"


def on_venv(*modules: str) -> None:
    """Import `modules`, or re-run this script on .venv's Python when one is missing."""
    try:
        for name in modules:
            importlib.import_module(name)
    except ImportError:
        if VENV_PY.exists() and Path(sys.executable) != VENV_PY:
            os.execv(VENV_PY, [str(VENV_PY), *sys.argv])
        raise
