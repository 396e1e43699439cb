"""The one reference to the policy in force, and how a reload replaces it.

A reload reads and compiles off the event loop, hands the compiled policy to `build` (the
runtime puts its live parts around it: sidecar/runtime.py), then swaps `current` in one
assignment. A request takes `current` once and keeps it to its end, so a reload never
changes a request half-way. A reload that fails, in compiling or in building, changes
nothing but `status`, whatever it fails with.

A reload reads the folder until two reads agree (`folder.read_stable`), and refuses a
policy that would leave no routes, models or providers where there were some, unless a
file says so with `routes: {}` (or `models: {}`, `providers: {}`): an editor saving a file
in place empties it for a moment, and a moment without routes is an outage.

This layer only reads, checks, compiles and swaps: what is built around a policy (provider
clients, state backends, caches) is the runtime's to open and close.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from sidecar.policy.compile import compile_folder, refuse_emptying
from sidecar.policy.folder import read_stable
from sidecar.policy.model import Policy
from sidecar.policy.problems import PolicyInvalid, Problem

log = logging.getLogger("sidecar.policy")


class InForce(Protocol):
    """What a reload puts in force: the compiled policy and what was built around it."""

    @property
    def policy(self) -> Policy: ...

    @property
    def loaded_at(self) -> float: ...


S = TypeVar("S", bound=InForce)


@dataclass(slots=True)
class ReloadStatus:
    at: float | None = None
    ok: bool = False
    version: str | None = None  # of what was tried
    problems: list[Problem] = field(default_factory=list)
    reloads: int = 0
    failures: int = 0


class PolicyHolder(Generic[S]):
    def __init__(
        self,
        folder: Path,
        build: Callable[[Policy], Awaitable[S]],
        env: Mapping[str, str] | None = None,
    ) -> None:
        """`build` makes what goes in force from a compiled policy; it raises
        `PolicyInvalid` when it cannot (a state store that does not answer)."""
        self.folder = folder
        self.env = env if env is not None else os.environ
        self.current: S | None = None
        self.last = ReloadStatus()
        self._build = build
        self._tried: str | None = None  # FolderRead.key of the last attempt
        self._lock = asyncio.Lock()
        self.watcher = "not started"  # what the watcher task is doing, for /status

    async def reload(self) -> bool:
        """Re-read the folder; swap in its policy if it changed and compiles. True if swapped.
        Never raises (but cancellation): the watcher calls it for the life of the process."""
        try:
            return await self._reload()
        except Exception as exc:
            # A bug, not a policy problem: the traceback goes to the log, the type to /status
            # (a message could quote a value), and the next change or rescan tries again.
            log.exception("policy reload failed")
            self._tried = None
            problem = f"reload failed: {type(exc).__name__} (see the log)"
            self._failed(None, [Problem(str(self.folder), 0, problem)])
            return False

    async def _reload(self) -> bool:
        async with self._lock:
            read = await read_stable(self.folder, self._tried)
            if read.key == self._tried:
                return False  # same as the last attempt: nothing to do
            self._tried = read.key
            version = read.version if read.files else None
            try:
                policy = await asyncio.to_thread(compile_folder, self.folder, read, self.env)
                if self.current is not None:
                    refuse_emptying(self.folder, self.current.policy, policy)
                built = await self._build(policy)
            except PolicyInvalid as exc:
                self._failed(version, exc.problems)
                return False
            previous = self.current
            self.current = built
            self.last = ReloadStatus(
                time.time(), True, policy.version, [], self.last.reloads + 1, self.last.failures
            )
            log.info(
                "policy %s loaded from %d file(s)%s",
                policy.version,
                len(policy.files),
                f" (was {previous.policy.version})" if previous else "",
            )
            return True

    def _failed(self, version: str | None, problems: list[Problem]) -> None:
        self.last = ReloadStatus(
            time.time(), False, version, problems, self.last.reloads + 1, self.last.failures + 1
        )
        keeping = f"; still serving {self.current.policy.version}" if self.current else ""
        log.error("policy rejected%s:\n  %s", keeping, "\n  ".join(str(p) for p in problems))

    def status(self) -> dict[str, Any]:
        now = self.current
        return {
            "ready": now is not None,
            "policy": {
                "version": now.policy.version if now else None,
                "folder": str(self.folder),
                "files": list(now.policy.files) if now else [],
                "loaded_at": now.loaded_at if now else None,
                "routes": sorted(now.policy.routes) if now else [],
            },
            "last_reload": {
                "at": self.last.at,
                "ok": self.last.ok,
                "version": self.last.version,
                "errors": [str(p) for p in self.last.problems],
                "reloads": self.last.reloads,
                "failures": self.last.failures,
            },
            "watcher": self.watcher,
        }
