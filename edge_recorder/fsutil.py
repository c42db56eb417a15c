"""Durable file operations: write-then-rename, directory fsync, one owner per directory."""

from __future__ import annotations

import fcntl
import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from edge_recorder.errors import EdgeRecorderError

LOCK_NAME = ".lock"


class DirectoryInUse(EdgeRecorderError):
    """Another process holds the directory (:func:`owned_directory`)."""


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves either the old or the new file.

    The temporary name is unique to this writer, so two processes writing the same file
    of a shared store (collectors in a ``--share`` group) never rename each other's."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_json_atomic(path: Path, doc: Any) -> None:
    write_atomic(path, (json.dumps(doc, indent=1, sort_keys=False) + "\n").encode())


def move_durable(src: Path, dst: Path) -> None:
    """Rename across directories of one file system and make both directories durable."""
    os.replace(src, dst)
    fsync_dir(dst.parent)
    if src.parent != dst.parent:
        fsync_dir(src.parent)


@contextmanager
def owned_directory(path: Path, what: str) -> Iterator[None]:
    """Own ``path`` while the block runs: an exclusive ``flock`` on ``path/.lock``, which
    holds the owner's pid. A second owner is refused with :class:`DirectoryInUse` before it
    touches anything. The kernel drops the lock when its process ends, however it ends, so a
    crash leaves nothing to clean up. ``what`` names the directory in the error."""
    path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
            raise DirectoryInUse(f"{what} {path} is in use by another edge-recorder (pid "
                                 f"{owner}); stop it first (systemctl stop edge-recorder)"
                                 ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def directory_owner(path: Path) -> str | None:
    """The pid of the process that owns ``path`` (:func:`owned_directory`), or None: not
    owned, or not ours to look at (no lock file, no permission). Takes nothing."""
    try:
        fd = os.open(path / LOCK_NAME, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
