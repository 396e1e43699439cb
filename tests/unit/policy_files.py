"""Policy folders for the tests: files written from dedented text, problems as `check` prints them.

Policy text in the tests opens with a backslash after the quotes, so line 1 of the text is
line 1 of the file and the expected `FILE:LINE:` can be read off the test.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from pathlib import Path

import pytest

from sidecar.policy.compile import load_folder
from sidecar.policy.problems import PolicyInvalid

# One provider `p` with one model `m`: what most cases need around the part they test.
BASE = """\
providers:
  p:
    type: mock
models:
  m:
    provider: p
"""


def write(folder: Path, files: Mapping[str, str]) -> Path:
    """Write each `name: text` (dedented) under `folder`, subfolders included."""
    for name, text in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return folder


def problems(folder: Path, env: Mapping[str, str] | None = None) -> list[str]:
    """The `FILE:LINE: message` lines loading `folder` fails with, in the order reported."""
    with pytest.raises(PolicyInvalid) as info:
        load_folder(folder, env={} if env is None else env)
    return [str(p) for p in info.value.problems]
