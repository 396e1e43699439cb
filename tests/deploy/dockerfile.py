"""Just enough of a Dockerfile parser to check what the image runs: instructions per stage,
line continuations, exec-form (JSON) arguments and `ENV`/`LABEL` key=value pairs."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Instruction:
    keyword: str  # upper case
    text: str  # the arguments, continuations joined

    def exec_form(self) -> list[str]:
        words = json.loads(self.text)
        assert isinstance(words, list)
        assert all(isinstance(w, str) for w in words)
        return words

    def pairs(self) -> dict[str, str]:
        """`KEY=value KEY2="value 2"` (ENV, LABEL, ARG)."""
        return dict(word.partition("=")[::2] for word in shlex.split(self.text))


@dataclass(slots=True)
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction:
        found = self.all(keyword)
        assert found, f"no {keyword} in stage {self.name or self.base}"
        return found[-1]

    def env(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for i in self.all("ENV"):
            out.update(i.pairs())
        return out


@dataclass(frozen=True, slots=True)
class Dockerfile:
    args: dict[str, str]  # ARGs before the first FROM, with their defaults
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]


def parse(path: Path) -> Dockerfile:
    logical: list[str] = []
    current = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, text = line.partition(" ")
        instruction = Instruction(keyword.upper(), re.sub(r"\s+", " ", text).strip())
        if instruction.keyword == "FROM":
            words = instruction.text.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], name))
        elif not stages and instruction.keyword == "ARG":
            args.update(instruction.pairs())
        else:
            stages[-1].instructions.append(instruction)
    return Dockerfile(args, stages)
