"""The device store: every session on disk from its first sample until the broker has it.

Layout under ``storage.dir`` (a session's state is the directory its manifest is in)::

    recording/{id}.mcap  {id}.json   being written; the JSON holds what is known at start
    outbox/{id}.mcap     {id}.json   complete, waiting to be published
    published/{id}.mcap  {id}.json   acknowledged by the broker; kept for local lookup

Every state change is a rename followed by a directory fsync. Published sessions are
deleted oldest first when ``storage.max_bytes`` needs the room; unpublished ones never
are: a full store refuses new sessions instead.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from pathlib import Path
from typing import Any

from edge_recorder.documents import Manifest, file_fields_added
from edge_recorder.errors import StoreFull
from edge_recorder.fsutil import move_durable, write_json_atomic

log = logging.getLogger(__name__)

RECORDING, OUTBOX, PUBLISHED = "recording", "outbox", "published"


def file_digest(path: Path) -> tuple[int, str]:
    """Size in bytes and sha256 hex of a file."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()


class DeviceStore:
    def __init__(self, root: Path, max_bytes: int, *, part_bytes: int = 131072) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.part_bytes = part_bytes
        self.refused = 0
        for state in (RECORDING, OUTBOX, PUBLISHED):
            (root / state).mkdir(parents=True, exist_ok=True)

    def path(self, state: str, session_id: str, suffix: str = ".mcap") -> Path:
        return self.root / state / f"{session_id}{suffix}"

    # --- recording -> outbox -> published ---------------------------------------------
    def begin(self, session_id: str, header: dict[str, Any], reserve_bytes: int = 0) -> Path:
        """Reserve room and record that a session started; return the path to write it to."""
        self.make_room(reserve_bytes)
        write_json_atomic(self.path(RECORDING, session_id, ".json"), header)
        return self.path(RECORDING, session_id)

    def complete(self, session_id: str, manifest: dict[str, Any]) -> dict[str, Any]:
        """The session file is finished: add size, sha256 and part count; queue it.

        The manifest is validated (:class:`Manifest`) before the file moves: a session whose
        manifest the collector would refuse never reaches the outbox."""
        src = self.path(RECORDING, session_id)
        size, digest = file_digest(src)
        checked = file_fields_added(manifest, nbytes=size, sha256=digest,
                                    parts=max(1, math.ceil(size / self.part_bytes)))
        move_durable(src, self.path(OUTBOX, session_id))
        write_json_atomic(self.path(OUTBOX, session_id, ".json"), checked.to_dict())
        self.path(RECORDING, session_id, ".json").unlink(missing_ok=True)
        return checked.to_dict()

    def replacement_path(self, session_id: str) -> Path:
        """Where a rewritten (re-stamped) outbox file is prepared before :meth:`replace_file`."""
        return self.path(OUTBOX, session_id, ".mcap.new")

    def replace_file(self, session_id: str, manifest: dict[str, Any]) -> dict[str, Any]:
        """Swap the prepared rewrite into the outbox: the manifest with its new size and
        sha256 is written first (the commit point), then the file renamed over the old one.
        :meth:`settle_replacement` completes or undoes one a crash cut short."""
        new = self.replacement_path(session_id)
        size, digest = file_digest(new)
        checked = file_fields_added(manifest, nbytes=size, sha256=digest,
                                    parts=max(1, math.ceil(size / self.part_bytes)))
        write_json_atomic(self.path(OUTBOX, session_id, ".json"), checked.to_dict())
        move_durable(new, self.path(OUTBOX, session_id))
        return checked.to_dict()

    def settle_replacement(self, session_id: str) -> None:
        """A rewrite left by a crash: renamed in if its manifest was committed, else dropped."""
        new = self.replacement_path(session_id)
        if not new.exists():
            return
        if self.manifest(session_id).get("sha256") == file_digest(new)[1]:
            move_durable(new, self.path(OUTBOX, session_id))
        else:
            new.unlink()

    def pending(self) -> list[str]:
        """Session ids waiting to be published, oldest first."""
        return sorted(p.stem for p in (self.root / OUTBOX).glob("*.json"))

    def manifest(self, session_id: str, state: str = OUTBOX) -> dict[str, Any]:
        """The session's manifest, validated (DocumentError, a ValueError, if it is not)."""
        return Manifest.from_json(self.path(state, session_id, ".json").read_bytes()).to_dict()

    def note_parts_sent(self, session_id: str, parts: int) -> None:
        """Parts ``0 .. parts-1`` are acknowledged: a restarted publish can begin after them.

        Not fsync'd: losing it only means sending those parts again (same bytes, same
        topics; the collector ignores what it already has)."""
        self.path(OUTBOX, session_id, ".sent").write_text(f"{parts}\n")

    def parts_sent(self, session_id: str) -> int:
        try:
            return int(self.path(OUTBOX, session_id, ".sent").read_text())
        except (OSError, ValueError):
            return 0

    def mark_published(self, session_id: str) -> None:
        self.path(OUTBOX, session_id, ".sent").unlink(missing_ok=True)
        move_durable(self.path(OUTBOX, session_id), self.path(PUBLISHED, session_id))
        move_durable(self.path(OUTBOX, session_id, ".json"),
                     self.path(PUBLISHED, session_id, ".json"))

    def unfinished(self) -> list[str]:
        """Sessions that were recording when the daemon last stopped."""
        return sorted(p.stem for p in (self.root / RECORDING).glob("*.json"))

    # --- room ---------------------------------------------------------------------------
    def _sizes(self, state: str) -> dict[Path, int]:
        """Size of every file in a state folder. Other threads move files between folders
        while this runs (the publisher, the recorder): a file gone by the time it is
        looked at is simply no longer here."""
        sizes = {}
        with os.scandir(self.root / state) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                try:
                    sizes[Path(entry.path)] = entry.stat().st_size
                except FileNotFoundError:
                    continue
        return sizes

    def used_bytes(self) -> int:
        return sum(sum(self._sizes(s).values()) for s in (RECORDING, OUTBOX, PUBLISHED))

    def backlog(self) -> dict[str, int]:
        files = {p: n for p, n in self._sizes(OUTBOX).items() if p.suffix == ".mcap"}
        return {"sessions": len(files), "bytes": sum(files.values())}

    def make_room(self, need_bytes: int) -> None:
        """Delete published sessions, oldest first, until ``need_bytes`` fit; else StoreFull."""
        used = self.used_bytes()
        published = sorted({p.stem for p in self._sizes(PUBLISHED)})
        while used + need_bytes > self.max_bytes and published:
            sid = published.pop(0)
            for suffix in (".json", ".mcap"):
                p = self.path(PUBLISHED, sid, suffix)
                if p.exists():
                    used -= p.stat().st_size
                    p.unlink()
            log.info("store: deleted published session %s to make room", sid)
        if used + need_bytes > self.max_bytes:
            self.refused += 1
            raise StoreFull(
                f"storage is full: {used} of {self.max_bytes} bytes hold sessions not yet "
                "published; new sessions are refused until the broker takes them "
                "(or raise storage.max_bytes)")
