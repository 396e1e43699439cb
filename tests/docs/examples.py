"""The code blocks of the docs (docs/**/*.md and README.md), with the marker before each.

Conventions, written where a reader sees them (docs/operations/development.md):

- a ```yaml block is a whole policy and must pass `llm-sidecar check`, with a placeholder
  for every `${NAME}` it reads, as CI gives;
- `<!-- check: fails "TEXT" -->` before it: it must fail, with a problem containing TEXT;
- `<!-- check: fragment -->`: a piece of a policy, checked merged over fragment_base.yaml
  (the providers and models the guides name);
- `<!-- check: fragment "NAME.jsonl" -->` (or `check: policy "NAME.jsonl"`): the policy reads
  a data file of the folder; the page's next ```jsonl block is that file;
- `<!-- check: not a policy -->`: other YAML (Helm values, CI files), not checked;
- `<!-- run: mock -->` before a ```sh or ```python block: run against a sidecar on the
  example policies (the mock provider), ports rewritten to the test's.

The generated policy reference (docs/reference/policy.md) has no blocks: its examples are
checked against the JSON Schema, key by key (test_reference.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FENCE = re.compile(r"^```(\w*)\s*$")
MARKER = re.compile(r"^<!-- (check|run): ([^\"]*?)(?: \"(.*)\")? -->$")
CHECKED_MARKS = {"", "policy", "fails", "fragment", "not a policy"}


@dataclass(frozen=True)
class Block:
    file: Path
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    mark: str  # "" | fails | fragment | not a policy | run: mock
    expect: str | None  # the problem a `fails` block must show, or a data file's name
    data: str | None = None  # that data file's text: the page's next block in its format

    def __str__(self) -> str:
        return f"{self.file.relative_to(ROOT)}:{self.line}"


def pages() -> list[Path]:
    return [*sorted((ROOT / "docs").rglob("*.md")), ROOT / "README.md"]


def blocks(files: list[Path] | None = None) -> list[Block]:
    found = []
    for path in files if files is not None else pages():
        lines = path.read_text().split("\n")
        i = 0
        while i < len(lines):
            opening = FENCE.match(lines[i])
            if opening is None:
                i += 1
                continue
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            mark, expect = _marker(lines, i)
            text = "\n".join(lines[i + 1 : end]) + "\n"
            found.append(Block(path, i + 1, opening.group(1), text, mark, expect))
            i = end + 1
    return [_with_data(b, found) for b in found]


def _with_data(block: Block, page: list[Block]) -> Block:
    if block.mark not in ("policy", "fragment") or not block.expect:
        return block
    kind = block.expect.rsplit(".", 1)[-1]
    after = [b for b in page if b.file == block.file and b.line > block.line and b.lang == kind]
    if not after:
        raise LookupError(f"{block}: no ```{kind} block after it for {block.expect}")
    return replace(block, data=after[0].text)


def _marker(lines: list[str], fence: int) -> tuple[str, str | None]:
    before = fence - 1
    if before < 0:
        return "", None
    found = MARKER.match(lines[before].strip())
    if found is None:
        return "", None
    kind, what, expect = found.groups()
    return (f"run: {what}" if kind == "run" else what), expect
