"""`python -m sidecar.reference [--check]`: write the generated reference pages into
docs/reference/ (`python3 dev.py docs-gen`), or with --check list the stale ones, exit 1."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from sidecar.reference import cli_page, metrics_page, policy_page

ROOT = Path(__file__).resolve().parents[2]
PAGES: dict[str, Callable[[], str]] = {
    "docs/reference/policy.md": policy_page.render,
    "docs/reference/cli.md": cli_page.render,
    "docs/reference/metrics.md": metrics_page.render,
}


def stale(root: Path = ROOT) -> list[str]:
    """The pages whose committed text differs from what the code makes now."""
    out = []
    for name, render in PAGES.items():
        page = root / name
        if not page.exists() or page.read_text() != render():
            out.append(name)
    return out


def main(argv: list[str]) -> int:
    if argv == ["--check"]:
        found = stale()
        for name in found:
            print(f"{name} is stale: run `python3 dev.py docs-gen`")
        return 1 if found else 0
    for name, render in PAGES.items():
        (ROOT / name).parent.mkdir(parents=True, exist_ok=True)
        (ROOT / name).write_text(render())
        print(f"wrote {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
