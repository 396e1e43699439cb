#!/usr/bin/env python3
"""The README's two commands, needing nothing but Python 3.11+ (no make, no apt):

    python3 dev.py run     the sidecar on the example policies (a mock provider: no keys)
    python3 dev.py test    lint, `llm-sidecar check policies`, then pytest (what CI runs)

and the docs site's (docs/, built with Zensical from mkdocs.yml):

    python3 dev.py docs        build it into site/, failing on any warning (a broken link)
    python3 dev.py docs-serve  preview it at http://localhost:8000, rebuilt as you edit
    python3 dev.py docs-gen    rewrite the generated reference pages (docs/reference/)

All create `.venv/` on first use and reinstall when pyproject.toml changes. Arguments
after `test` go to pytest (`python3 dev.py test -n 2 -k cache`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".installed-stamp"


def ensure_venv() -> None:
    project = ROOT / "pyproject.toml"
    if STAMP.exists() and STAMP.stat().st_mtime >= project.stat().st_mtime:
        return
    if not (BIN / "python").exists():
        venv.create(VENV, with_pip=True)
    pip = [str(BIN / "python"), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "-U", "pip"], check=True)
    subprocess.run([*pip, "-e", f"{ROOT}[test]"], check=True)
    STAMP.touch()


def run(*command: str) -> None:
    done = subprocess.run(command, cwd=ROOT)
    if done.returncode != 0:
        sys.exit(done.returncode)


COMMANDS = ("run", "test", "docs", "docs-serve", "docs-gen")


def main(argv: list[str]) -> None:
    if not argv or argv[0] not in COMMANDS:
        sys.exit(__doc__)
    ensure_venv()
    if argv[0] == "run":
        os.execv(BIN / "llm-sidecar", ["llm-sidecar", "serve", "--policies", "policies"])
    if argv[0] == "docs":
        run(str(BIN / "zensical"), "build", "--strict")
        return
    if argv[0] == "docs-serve":
        run(str(BIN / "zensical"), "serve", *argv[1:])
        return
    if argv[0] == "docs-gen":
        run(str(BIN / "python"), "-m", "sidecar.reference")
        return
    run(str(BIN / "ruff"), "check", ".")
    run(str(BIN / "llm-sidecar"), "check", "policies")
    run(str(BIN / "pytest"), *argv[1:])


if __name__ == "__main__":
    main(sys.argv[1:])
