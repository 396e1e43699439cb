"""Run the sidecar for a test: in-process on random loopback ports, or as a real process."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Mapping
from pathlib import Path

import aiohttp
import openai

from sidecar.app import Settings, Sidecar


def write_policy(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


async def start_sidecar(
    folder: Path, env: Mapping[str, str] | None = None, **settings: object
) -> Sidecar:
    settings.setdefault("state_dir", folder.parent)  # a sqlite state file per test
    sidecar = Sidecar(
        Settings(policies=folder, port=0, ops_host="127.0.0.1", ops_port=0, **settings),  # type: ignore[arg-type]
        env=env if env is not None else {},
    )
    await sidecar.start()
    return sidecar


class Sidecars:
    """In-process sidecars for one test, each on a policy folder of its own under `root`
    (sharing `root` as their state directory, as restarts of one sidecar would); the
    `sidecars` fixture stops them all when the test ends."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.started: list[Sidecar] = []

    async def start(
        self, policy: str, env: Mapping[str, str] | None = None, **settings: object
    ) -> Sidecar:
        folder = self.root / f"policies-{len(self.started)}"
        write_policy(folder, "policy.yaml", policy)
        sidecar = await start_sidecar(folder, env, **settings)
        self.started.append(sidecar)
        return sidecar

    async def stop(self) -> None:
        for sidecar in self.started:
            await sidecar.stop()


def openai_client(sidecar: Sidecar) -> openai.AsyncOpenAI:
    """The `openai` SDK pointed at `sidecar`, without retries (a test sees every answer)."""
    return openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{sidecar.port}/v1", api_key="app", max_retries=0
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ChildProcess:
    """A `python -m sidecar ...` child process with an ops port, logging to a file.

    Ports are picked free and handed to the child, which binds them a moment later; in
    between another process can take one (an outgoing connection's ephemeral port, say).
    The child then exits with EADDRINUSE, and `wait_ready` starts it again on new ports:
    read the ports after `wait_ready`."""

    RESPAWNS = 3

    def __init__(
        self,
        kind: str,
        argv: list[str],
        log_dir: Path,
        env: Mapping[str, str],
        cwd: Path | None = None,
    ) -> None:
        self.kind = kind
        self._argv, self._env, self._cwd = argv, {**os.environ, **env}, cwd
        self.log_path = log_dir / f"{kind}-{uuid.uuid4().hex[:8]}.log"
        self._log = self.log_path.open("wb")
        self._respawns = 0
        self._spawn()

    def listen_args(self) -> list[str]:
        self.ops_port = free_port()
        return ["--ops-host", "127.0.0.1", "--ops-port", str(self.ops_port)]

    def _spawn(self) -> None:
        self._log.flush()
        self._log_from = self.log_path.stat().st_size
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sidecar", *self._argv, *self.listen_args()],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self._env,
            cwd=self._cwd,
        )

    async def wait_ready(self, within: float = 15.0) -> None:
        deadline = time.monotonic() + within
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    if self._port_taken() and self._respawns < self.RESPAWNS:
                        self._respawns += 1
                        self._spawn()
                        continue
                    raise RuntimeError(
                        f"{self.kind} exited with {self.proc.returncode}:\n{self.log()}"
                    )
                try:
                    async with session.get(f"http://127.0.0.1:{self.ops_port}/readyz") as r:
                        if r.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
        raise TimeoutError(f"{self.kind} not ready in {within}s:\n{self.log()}")

    def _port_taken(self) -> bool:
        self._log.flush()
        return b"Address already in use" in self.log_path.read_bytes()[self._log_from :]

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def terminate(self) -> None:
        self.proc.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


class SidecarProcess(ChildProcess):
    """`llm-sidecar serve` as a child process, as a user (or Kubernetes) runs it."""

    def __init__(self, folder: Path, env: Mapping[str, str] | None = None, *args: str) -> None:
        argv = ["serve", "--policies", str(folder), "--state-dir", str(folder.parent), *args]
        super().__init__("sidecar", argv, folder.parent, env or {})

    def listen_args(self) -> list[str]:
        self.port = free_port()
        return [*super().listen_args(), "--port", str(self.port)]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"


class WorkerProcess(ChildProcess):
    """`llm-sidecar worker` as a dedicated worker deployment runs it."""

    def __init__(self, folder: Path, workers: int) -> None:
        argv = ["worker", "--policies", str(folder), "--state-dir", str(folder.parent)]
        super().__init__(
            "worker", [*argv, "--workers", str(workers), "--grace", "0.5"], folder.parent, {}
        )
