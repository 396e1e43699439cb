"""Run `llm-sidecar` the way a container runs it: the command line and environment it is given,
nothing inherited, with the container's paths mapped onto folders of the test."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

CONSOLE_SCRIPT = Path(sys.executable).with_name("llm-sidecar")


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: Mapping[str, str]
    body: bytes


def request(url: str, body: object | None = None) -> Answer:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return Answer(r.status, dict(r.headers), r.read())
    except urllib.error.HTTPError as e:
        return Answer(e.code, dict(e.headers), e.read())


def executable(command: str) -> list[str]:
    """The container's command: the console script where it is installed, like the image."""
    if command == "llm-sidecar":
        return (
            [str(CONSOLE_SCRIPT)] if CONSOLE_SCRIPT.exists() else [sys.executable, "-m", "sidecar"]
        )
    if command == "python":
        return [sys.executable]
    raise AssertionError(f"unexpected command {command!r}")


@contextmanager
def running(
    argv: Sequence[str], env: Mapping[str, str], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """The process, stopped with SIGTERM (as the kubelet stops it) when the block ends."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*executable(argv[0]), *argv[1:]], env=dict(env), stdout=out, stderr=subprocess.STDOUT
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_for(url: str, proc: subprocess.Popen[bytes], log: Path, within: float = 15) -> None:
    """Until `url` answers 200; the log is in the failure if the process exits or never does."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if request(url).status == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{url} not 200 within {within}s:\n{log.read_text()}")


def wait_until_ready(ops: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    wait_for(f"{ops}/readyz", proc, log)
