"""Walk a policy folder and read its files, bounded, and wait until it holds still.

The folder is operator input, and sometimes hostile by accident: a symlink that points at
itself or at an ancestor, a mount of something huge, a FIFO or a device named `x.yaml`, a
file an editor is still writing. Reading must end quickly whatever is there, so the walk
remembers every folder it entered (device and inode, which names the real folder behind
any chain of symlinks), stops at fixed limits, opens only regular files, and turns each of
these into a problem the operator can act on instead of an exception.

Kubernetes mounts a ConfigMap as `..data -> ..2024_01_01_xx/` plus one symlink per key;
an update swaps `..data` atomically and leaves mtimes alone. So the folder is read as the
set of visible `*.yaml`/`*.yml` files (names starting with `.` are skipped, which skips
the `..` folders), and a change is a change of the content hash, never of a timestamp.

Beside the policy files, `*.jsonl` files are read as data the policy may name (a tier
classifier's labelled examples): under limits of their own, in the same hash, so editing
one is a change like any other.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from sidecar.policy.problems import Problem
from sidecar.policy.source import SourceFile, content_hash

MAX_DEPTH = 8  # folders below the policy folder
MAX_ENTRIES = 10_000  # names looked at, all folders together
MAX_FILES = 500  # policy files
MAX_FILE_BYTES = 256 * 1024
MAX_TOTAL_BYTES = 1024 * 1024  # parsing 1 MiB of YAML takes about 1 s and 150 MiB at worst
MAX_DATA_BYTES = 4 * 1024 * 1024  # data files (*.jsonl), all together: a few 10k examples
DATA_SUFFIX = ".jsonl"

STABLE_INTERVAL = 0.1  # seconds between the two reads that must agree
STABLE_READS = 20  # reads before giving up on a folder that keeps changing (about 2 s)


@dataclass(frozen=True, slots=True)
class FolderRead:
    """What one walk found: the files it could read and what stopped it reading others."""

    files: list[SourceFile]
    problems: list[Problem]
    data: list[SourceFile] = field(default_factory=list)  # *.jsonl, parsed by who names them

    @property
    def version(self) -> str:
        """The content hash of everything the policy is made of."""
        return content_hash([*self.files, *self.data])

    @property
    def key(self) -> str:
        """Changes when anything the walk saw changes, problems included: a fixed symlink
        loop leaves the files as they were, and must still count as a change."""
        digest = hashlib.sha256(self.version.encode())
        for p in self.problems:
            digest.update(f"\0{p}".encode())
        return digest.hexdigest()[:12]


def read_folder(folder: Path) -> FolderRead:
    """Every policy file under `folder`, in a stable order, within the limits above."""
    walk = _Walk(folder)
    try:
        top = os.stat(folder)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return FolderRead([], [Problem(str(folder), 0, "policy folder does not exist")])
        return FolderRead([], [Problem(str(folder), 0, f"cannot read: {_reason(exc)}")])
    if not stat.S_ISDIR(top.st_mode):
        return FolderRead([], [Problem(str(folder), 0, "policy folder is not a folder")])
    walk.folder_at(Path(), top, 0)
    return FolderRead(walk.files, walk.problems, walk.data)


async def read_stable(
    folder: Path, known: str | None, *, interval: float = STABLE_INTERVAL, reads: int = STABLE_READS
) -> FolderRead:
    """The folder once two reads `interval` apart agree, so a file an editor is still
    writing in place is not compiled half-written. A first read equal to `known` (what
    the last reload tried) is taken at once: nothing changed, nothing to wait for. A folder
    that never holds still gives a problem; the next change or rescan tries again."""
    read = await asyncio.to_thread(read_folder, folder)
    if read.key == known:
        return read
    for _ in range(reads - 1):
        await asyncio.sleep(interval)
        again = await asyncio.to_thread(read_folder, folder)
        if again.key == read.key:
            return again
        read = again
    waited = interval * (reads - 1)
    problem = Problem(str(folder), 0, f"policy files still changing after {waited:.1f}s")
    return FolderRead(read.files, [*read.problems, problem], read.data)


class _Walk:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.files: list[SourceFile] = []
        self.data: list[SourceFile] = []
        self.data_bytes = 0
        self.problems: list[Problem] = []
        self.seen: dict[tuple[int, int], Path] = {}  # (device, inode) of folders entered
        self.entries = 0
        self.bytes = 0
        self.stopped = False

    def problem(self, rel: Path, message: str) -> None:
        self.problems.append(Problem(rel.as_posix(), 0, message))

    def folder_at(self, rel: Path, st: os.stat_result, depth: int) -> None:
        real = (st.st_dev, st.st_ino)
        if real in self.seen:
            first = self.seen[real]
            where = "the policy folder" if first == Path() else f"{first.as_posix()}/"
            if rel.is_relative_to(first):
                self.problem(rel, f"symlink loop: leads back to {where}; not read")
            else:
                self.problem(rel, f"same folder as {where} (a symlink); read once")
            return
        if depth > MAX_DEPTH:
            self.problem(rel, f"folders nested deeper than {MAX_DEPTH} levels; not read")
            return
        self.seen[real] = rel
        try:
            names = sorted(os.listdir(self.root / rel))
        except OSError as exc:
            self.problem(rel, f"cannot read folder: {_reason(exc)}")
            return
        for name in names:
            if self.stopped:
                return
            self.entries += 1
            if self.entries > MAX_ENTRIES:
                self.problem(rel, f"more than {MAX_ENTRIES} names under the folder; stopped")
                self.stopped = True
                return
            if not name.startswith("."):
                self.entry(rel / name, depth)

    def entry(self, rel: Path, depth: int) -> None:
        policy_file = rel.name.endswith((".yaml", ".yml"))
        try:
            st = os.stat(self.root / rel)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return  # removed while we walked, or a link to nothing: the next read sees
            if policy_file or exc.errno == errno.ELOOP:
                self.problem(rel, f"cannot read: {_reason(exc)}")
            return
        if stat.S_ISDIR(st.st_mode):
            self.folder_at(rel, st, depth + 1)
        elif policy_file:
            self.file(rel)
        elif rel.name.endswith(DATA_SUFFIX):
            self.data_file(rel)

    def read(self, rel: Path, budget: int) -> bytes | None:
        """Up to `budget` + 1 bytes of a regular file; None (and a problem) otherwise."""
        try:
            text = _read_regular(self.root / rel, budget + 1)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                self.problem(rel, f"cannot read: {_reason(exc)}")
            return None
        if text is None:
            self.problem(rel, "not a regular file; not read")
        return text

    def data_file(self, rel: Path) -> None:
        budget = MAX_DATA_BYTES - self.data_bytes
        text = self.read(rel, budget)
        if text is None:
            return
        if len(text) > budget:
            limit = MAX_DATA_BYTES // 2**20
            self.problem(rel, f"too large: data files may hold {limit} MiB in all")
            return
        self.data_bytes += len(text)
        self.data.append(SourceFile(rel.as_posix(), text))

    def file(self, rel: Path) -> None:
        if len(self.files) >= MAX_FILES:
            self.problem(rel, f"more than {MAX_FILES} policy files; stopped")
            self.stopped = True
            return
        budget = min(MAX_FILE_BYTES, MAX_TOTAL_BYTES - self.bytes)
        text = self.read(rel, budget)
        if text is None:
            return
        if len(text) > budget:
            if budget < MAX_FILE_BYTES:
                limit = f"policy files may hold {MAX_TOTAL_BYTES // 1024} KiB in all"
            else:
                limit = f"a policy file may hold {MAX_FILE_BYTES // 1024} KiB"
            self.problem(rel, f"too large: {limit}")
            self.stopped = budget < MAX_FILE_BYTES
            return
        self.bytes += len(text)
        self.files.append(SourceFile(rel.as_posix(), text))


def _read_regular(path: Path, at_most: int) -> bytes | None:
    """Up to `at_most` bytes of `path`, or None when it is not a regular file. Opened
    non-blocking and checked on the open descriptor: a FIFO named `x.yaml` must not block
    the open, and a device must not be read forever."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        chunks: list[bytes] = []
        left = at_most
        while left > 0:
            chunk = os.read(fd, min(left, 65536))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _reason(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "symlink loop (too many levels of symbolic links)"
    return (exc.strerror or type(exc).__name__).lower()
