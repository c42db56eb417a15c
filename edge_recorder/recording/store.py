"""The device store: every session on disk from its first sample until the collector has it.

Layout under ``storage.dir`` (a session's state is the directory its manifest is in)::

    recording/{id}.mcap  {id}.json   being written; the JSON holds what is known at start
    outbox/{id}.mcap     {id}.json   complete, waiting to be published
    published/{id}.mcap  {id}.json   acknowledged by the broker; awaiting the collector's receipt
    stored/{id}.mcap     {id}.json   the collector's receipt came: stored at the other end
    failed/{id}.*        {id}.reason damaged (unreadable manifest, missing or truncated file):
                                     quarantined, never retried, kept for a human to look at

This module is the only one that changes a session's state or builds its paths; the others
ask it (:meth:`find`, :meth:`mark_stored`, :meth:`quarantine`, ...). Every state change is a
rename followed by a directory fsync, so the state survives a crash or power cut, and is
made under one lock, so two threads (the recorder making room, the publisher moving or
quarantining) never interleave their changes to one session.

With ``delivery.require_receipt: false`` a broker's acknowledgement is the end of the road:
``published/`` is then terminal, as it was before receipts existed.

Room (``storage.max_bytes``, or a disk that is really full): stored sessions go first, oldest
first; then quarantined ones; then published ones still awaiting a receipt, each with a
WARNING naming it. Sessions not yet published are never deleted: a full store refuses new
sessions instead (:class:`StoreFull`).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import math
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from edge_recorder.documents import Manifest, file_fields_added, valid_id
from edge_recorder.errors import StoreFull
from edge_recorder.fsutil import fsync_dir, move_durable, write_atomic, write_json_atomic
from edge_recorder.log import describe

log = logging.getLogger(__name__)

RECORDING, OUTBOX, PUBLISHED, STORED, FAILED = (
    "recording", "outbox", "published", "stored", "failed")
STATES = (RECORDING, OUTBOX, PUBLISHED, STORED, FAILED)
DISK_MARGIN_BYTES = 4 << 20  # when the disk itself is full, free at least this much
SALVAGE_SUFFIX = ".recovered.mcap"  # recovery's copy of a torn file, in recording/


def file_digest(path: Path) -> tuple[int, str]:
    """Size in bytes and sha256 hex of a file."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()


def is_disk_full(exc: BaseException) -> bool:
    """An OSError that means the file system has no room (ENOSPC, EDQUOT)."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def cannot_write(exc: BaseException) -> bool:
    """An OSError that says nothing about a session's files, only that nothing can be
    written now: the disk is full (ENOSPC, EDQUOT) or read-only (EROFS)."""
    return is_disk_full(exc) or (isinstance(exc, OSError) and exc.errno == errno.EROFS)


# a session's own files are unreadable: these (and DamagedSession) count towards quarantine
UNREADABLE_ERRNOS = frozenset({errno.EIO, errno.ENOENT, errno.EISDIR, errno.ENOTDIR,
                               errno.EBADMSG, errno.EUCLEAN})


def is_unreadable(exc: BaseException) -> bool:
    """An OSError that means a session's files cannot be read (damage, not a full disk)."""
    return isinstance(exc, OSError) and exc.errno in UNREADABLE_ERRNOS


class DamagedSession(ValueError):
    """A session in the outbox that can never be published as it is (the reason says why)."""


class DeviceStore:
    def __init__(self, root: Path, max_bytes: int, *, part_bytes: int = 131072,
                 require_receipt: bool = True) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.part_bytes = part_bytes
        self.require_receipt = require_receipt
        self.refused = 0
        self.quarantined = 0  # by this run; ``count(FAILED)`` is the total on disk
        self._alive_paths: dict[str, str] = {}  # note_alive's target per open session
        # Held by every change of a session's state (a move, a quarantine, a deletion): the
        # recorder's thread makes room while the publisher's moves and quarantines, and a
        # session half-way through one must not be half-way through another.
        self._lock = threading.RLock()
        self._dirs = {state: str(root / state) for state in STATES}  # scanned often
        for state in STATES:
            (root / state).mkdir(parents=True, exist_ok=True)

    def path(self, state: str, session_id: str, suffix: str = ".mcap") -> Path:
        if state not in STATES or not valid_id(session_id):
            raise ValueError(f"not a session state and id: {state!r}, {session_id!r}")
        return self.root / state / f"{session_id}{suffix}"

    # --- questions other modules ask ----------------------------------------------------
    def find(self, session_id: str) -> str | None:
        """The state a session is in, or None (unknown here, or not a valid id)."""
        if not valid_id(session_id):
            return None
        for state in (OUTBOX, PUBLISHED, STORED, FAILED, RECORDING):
            if self.path(state, session_id, ".json").exists():
                return state
        return None

    def ids(self, state: str) -> list[str]:
        """Session ids in ``state``, oldest first (ids sort by start time)."""
        return sorted(name[:-5] for name in os.listdir(self._dirs[state])
                      if name.endswith(".json") and valid_id(name[:-5]))

    def count(self, state: str) -> int:
        return len(self.ids(state))

    def since(self, state: str, session_id: str) -> float:
        """When the session entered ``state`` (UNIX seconds): its manifest's mtime, which the
        move that put it there sets."""
        return self.path(state, session_id, ".json").stat().st_mtime

    # --- recording -> outbox -> published -> stored --------------------------------------
    def begin(self, session_id: str, header: dict[str, Any], reserve_bytes: int = 0) -> Path:
        """Reserve room and record that a session started; return the path to write it to.

        StoreFull when there is no room, by ``storage.max_bytes`` or because the disk is full.
        """
        self.make_room(reserve_bytes)
        # compact: the C encoder (an indented dump is pure Python, ~10x the CPU at a start)
        data = json.dumps(header, separators=(",", ":")).encode()
        try:
            write_atomic(self.path(RECORDING, session_id, ".json"), data)
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            self.make_room(reserve_bytes, disk_full=True)
            write_atomic(self.path(RECORDING, session_id, ".json"), data)
        return self.path(RECORDING, session_id)

    def complete(self, session_id: str, manifest: dict[str, Any]) -> dict[str, Any]:
        """The session file is finished: add size, sha256 and part count; queue it.

        The manifest is validated (:class:`Manifest`) before the file moves: a session whose
        manifest the collector would refuse never reaches the outbox."""
        src = self.path(RECORDING, session_id)
        size, digest = file_digest(src)
        checked = file_fields_added(manifest, nbytes=size, sha256=digest,
                                    parts=max(1, math.ceil(size / self.part_bytes)))
        with self._lock:
            move_durable(src, self.path(OUTBOX, session_id))
            write_json_atomic(self.path(OUTBOX, session_id, ".json"), checked.to_dict())
            self.path(RECORDING, session_id, ".json").unlink(missing_ok=True)
        self._alive_paths.pop(session_id, None)
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
        return self.ids(OUTBOX)

    def manifest(self, session_id: str, state: str = OUTBOX) -> dict[str, Any]:
        """The session's manifest, validated (DocumentError, a ValueError, if it is not)."""
        return Manifest.from_json(self.path(state, session_id, ".json").read_bytes()).to_dict()

    def checked_manifest(self, session_id: str, state: str = OUTBOX) -> dict[str, Any]:
        """The manifest of a session about to be sent, after checking the session can be
        sent at all: DamagedSession says why not (the caller quarantines it)."""
        try:
            manifest = Manifest.from_json(
                self.path(state, session_id, ".json").read_bytes()).to_dict()
        except ValueError as exc:  # DocumentError names the field
            raise DamagedSession(f"its manifest is not valid: {describe(exc)}") from exc
        if manifest.get("session_id") != session_id:
            raise DamagedSession(f"its manifest names session {manifest.get('session_id')!r}")
        for key in ("parts", "bytes", "sha256"):
            if manifest.get(key) is None:
                raise DamagedSession(f"its manifest has no {key!r}")
        try:
            size = self.path(state, session_id).stat().st_size
        except FileNotFoundError:
            raise DamagedSession(f"its session file {session_id}.mcap is missing") from None
        if size != manifest["bytes"]:
            raise DamagedSession(f"its session file has {size} bytes, the manifest says "
                                 f"{manifest['bytes']} (truncated or overwritten)")
        parts = max(1, math.ceil(size / self.part_bytes))
        if manifest["parts"] != parts:  # mqtt.max_payload_bytes changed since it was queued
            log.warning("store: session %s was cut into %d parts; with mqtt.max_payload_bytes "
                        "%d it is %d parts now: manifest updated", session_id,
                        manifest["parts"], self.part_bytes, parts)
            manifest["parts"] = parts
            with self._lock:  # not brought back if room was made with it meanwhile
                if not self.path(state, session_id, ".json").exists():
                    raise FileNotFoundError(f"session {session_id} left {state}/")
                write_json_atomic(self.path(state, session_id, ".json"), manifest)
                self.path(state, session_id, ".sent").unlink(missing_ok=True)  # parts moved
        return manifest

    def note_parts_sent(self, session_id: str, parts: int) -> None:
        """Parts ``0 .. parts-1`` are acknowledged: a restarted publish can begin after them.

        Not fsync'd: losing it only means sending those parts again (same bytes, same
        topics; the collector ignores what it already has), so a full disk does not stop it."""
        try:
            self.path(OUTBOX, session_id, ".sent").write_text(f"{parts}\n")
        except OSError as exc:
            log.debug("store: resume point of %s not noted: %s", session_id, describe(exc))

    def parts_sent(self, session_id: str) -> int:
        try:
            return int(self.path(OUTBOX, session_id, ".sent").read_text())
        except (OSError, ValueError):
            return 0

    def mark_published(self, session_id: str) -> None:
        """The broker acknowledged every part and the manifest."""
        self.path(OUTBOX, session_id, ".sent").unlink(missing_ok=True)
        self._move(session_id, OUTBOX, PUBLISHED)

    def mark_stored(self, session_id: str) -> str:
        """The collector's receipt came. Moves the session from ``published/`` (or from the
        outbox, when the receipt beat the broker's last acknowledgement) to ``stored/``;
        returns the state it was in."""
        with self._lock:
            state = self.find(session_id)
            if state not in (OUTBOX, PUBLISHED):
                raise ValueError(f"session {session_id} is {state or 'not here'}, "
                                 "not awaiting a receipt")
            self.path(OUTBOX, session_id, ".sent").unlink(missing_ok=True)
            self._move(session_id, state, STORED)
            return state

    def _move(self, session_id: str, src: str, dst: str) -> None:
        """File first, manifest last: the manifest's folder is the state, so a crash between
        the two leaves the old state with its file already moved (recovery finishes it)."""
        with self._lock:
            if self.path(src, session_id).exists():
                move_durable(self.path(src, session_id), self.path(dst, session_id))
            move_durable(self.path(src, session_id, ".json"),
                         self.path(dst, session_id, ".json"))
            os.utime(self.path(dst, session_id, ".json"))  # when it entered ``dst``: since()

    def finish_moves(self) -> None:
        """Complete moves a crash interrupted (the file moved, its manifest not yet), a
        quarantine's included: one whose reason or file is in ``failed/`` already."""
        for state in (RECORDING, OUTBOX, PUBLISHED, STORED):
            for sid in self.ids(state):
                if self.path(FAILED, sid, ".reason").exists() or (
                        self.path(FAILED, sid).exists() and not self.path(state, sid).exists()):
                    reason = self.failure_reason(sid) or "its quarantine was cut short"
                    self.quarantine(sid, state, f"{reason} (finished after a restart)")
        for src, dst in ((OUTBOX, PUBLISHED), (OUTBOX, STORED), (PUBLISHED, STORED)):
            for sid in self.ids(src):
                if not self.path(src, sid).exists() and self.path(dst, sid).exists():
                    self._move(sid, src, dst)

    def quarantine(self, session_id: str, state: str, reason: str) -> None:
        """Move a damaged session's files to ``failed/`` with a ``.reason`` file; never retried.

        The reason first and the manifest last: the manifest's folder is the state, so whoever
        sees the session failed finds its reason there (and a crash part-way leaves it in
        ``state`` with its reason or file in ``failed/``: :meth:`finish_moves` completes it).
        A reason that cannot be written (a full disk) is in the log only: the session still
        goes, or it would be first in the outbox again and again, ahead of the rest.
        Nothing of it left in ``state`` (room was made, a receipt moved it, meanwhile): no
        change."""
        with self._lock:
            files = sorted((self.root / state).glob(f"{session_id}.*"))  # ids have no dots
            if not files:
                log.info("store: session %s is no longer in %s/; not quarantined (%s)",
                         session_id, state, reason)
                return
            try:
                write_atomic(self.path(FAILED, session_id, ".reason"),
                             (reason + "\n").encode())
            except OSError as exc:
                log.error("store: cannot write the reason session %s is quarantined for (%s)",
                          session_id, describe(exc))
            manifest = self.path(state, session_id, ".json")
            for p in files:
                if p != manifest:
                    move_durable(p, self.root / FAILED / p.name)
            if manifest.exists():
                move_durable(manifest, self.path(FAILED, session_id, ".json"))
            else:  # listed even without one
                write_json_atomic(self.path(FAILED, session_id, ".json"),
                                  {"session_id": session_id})
            self.quarantined += 1
        log.error("store: session %s quarantined to %s: %s", session_id, self.root / FAILED,
                  reason)

    def failure_reason(self, session_id: str) -> str:
        try:
            return self.path(FAILED, session_id, ".reason").read_text().strip()
        except OSError:
            return ""

    def reopen(self, session_id: str) -> None:
        """Recovery: a session whose file reached the outbox without its manifest goes back
        to ``recording/`` to be completed again."""
        move_durable(self.path(OUTBOX, session_id), self.path(RECORDING, session_id))

    def discard_recording(self, session_id: str) -> None:
        """Forget a session's files in ``recording/``: one that could not even start, one
        that never wrote a file, or the header left behind by a completed session whose
        clean-up a crash cut short. Durable (directory fsync'd)."""
        self._alive_paths.pop(session_id, None)
        for suffix in (".mcap", ".json", SALVAGE_SUFFIX):
            self.path(RECORDING, session_id, suffix).unlink(missing_ok=True)
        fsync_dir(self.root / RECORDING)

    def salvage_path(self, session_id: str) -> Path:
        """Where recovery writes a crashed session's salvaged copy (any leftover of an
        earlier, interrupted attempt removed first) before :meth:`replace_salvaged`."""
        tmp = self.path(RECORDING, session_id, SALVAGE_SUFFIX)
        if tmp.exists():
            tmp.unlink()
            fsync_dir(self.root / RECORDING)
        return tmp

    def replace_salvaged(self, session_id: str) -> None:
        """The salvaged copy, finished, takes the torn file's place, durably."""
        move_durable(self.path(RECORDING, session_id, SALVAGE_SUFFIX),
                     self.path(RECORDING, session_id))

    def note_alive(self, session_id: str, t_ns: int) -> None:
        """The recorder is alive and has handled this session up to ``t_ns`` (its clock):
        kept as the mtime of ``recording/{id}.json``, so recovery can say up to when a
        crashed session was recording. One ``utime`` call on a path built once per session
        (the recorder calls this ten times a second); not fsync'd (a power cut may lose it,
        a crashed daemon does not)."""
        path = self._alive_paths.get(session_id)
        if path is None:
            path = self._alive_paths[session_id] = str(self.path(RECORDING, session_id, ".json"))
        try:
            os.utime(path, ns=(t_ns, t_ns))
        except OSError:
            pass  # only the estimate of a crash's loss suffers

    def last_alive_ns(self, session_id: str) -> int:
        """The last instant the recorder was known to be recording this session."""
        return self.path(RECORDING, session_id, ".json").stat().st_mtime_ns

    def unfinished(self) -> list[str]:
        """Sessions that were recording when the daemon last stopped."""
        return self.ids(RECORDING)

    # --- room ---------------------------------------------------------------------------
    def _sizes(self, state: str, suffix: str = "") -> tuple[int, int]:
        """How many files (ending in ``suffix``) a state folder holds, and their bytes.
        Other threads move files between folders while this runs (the publisher, the
        recorder): a file gone by the time it is looked at is simply no longer here."""
        count = total = 0
        with os.scandir(self._dirs[state]) as entries:
            for entry in entries:
                if entry.name.startswith(".") or not entry.name.endswith(suffix):
                    continue
                try:
                    total += entry.stat().st_size
                except FileNotFoundError:
                    continue
                count += 1
        return count, total

    def used_bytes(self) -> int:
        """Bytes of every file in the store. A recording session's file counts with the
        zeros its writer keeps ahead of the data (up to a step, 256 KiB): disk in use."""
        return sum(self._sizes(s)[1] for s in STATES)

    def backlog(self) -> dict[str, int]:
        sessions, nbytes = self._sizes(OUTBOX, ".mcap")
        return {"sessions": sessions, "bytes": nbytes}

    def _disk_free(self) -> int:
        return shutil.disk_usage(self.root).free

    def make_room(self, need_bytes: int, *, disk_full: bool = False) -> None:
        """Delete sessions, least needed first, until ``need_bytes`` fit in
        ``storage.max_bytes`` (and, with ``disk_full``, on the disk too); else StoreFull.

        Each deletion is made under the store's lock, the session's state checked again
        there: none is deleted half-way through a move, and no other thread waits for more
        than one deletion (a full disk may take every session, a directory fsync each). A
        session that changed state meanwhile is looked for again in a second round."""
        used = self.used_bytes()
        disk_need = need_bytes + DISK_MARGIN_BYTES if disk_full else 0
        freed = 0

        def short() -> bool:
            return used + need_bytes > self.max_bytes or \
                (disk_full and self._disk_free() < disk_need)

        # published is last while it awaits a receipt; without receipts it is terminal
        order = (STORED, FAILED, PUBLISHED) if self.require_receipt else \
            (STORED, PUBLISHED, FAILED)
        for _round in range(2):
            moved = False
            for state in order:
                if not short():
                    break  # the usual case: nothing to list, nothing to delete
                for sid in self.ids(state):
                    if not short():
                        break
                    with self._lock:
                        if self.find(sid) != state:
                            moved = True
                            continue
                        size = self._delete(state, sid)
                    used -= size
                    freed += size
                    time.sleep(0)  # a thread waiting for the lock gets it between two
            if not moved or not short():
                break
        if short():
            self.refused += 1
            why = "the disk is full" if disk_full and self._disk_free() < disk_need else \
                f"{used} of {self.max_bytes} bytes (storage.max_bytes) hold sessions"
            raise StoreFull(
                f"storage is full: {why}; every session left is not yet published, so new "
                "sessions are refused until the broker takes them (or raise storage.max_bytes, "
                "or free disk space)")

    def _delete(self, state: str, session_id: str) -> int:
        reason = self.failure_reason(session_id) if state == FAILED else ""
        size = 0
        for p in (self.root / state).glob(f"{session_id}.*"):
            try:
                size += p.stat().st_size
                p.unlink()
            except FileNotFoundError:
                continue
        try:
            fsync_dir(self.root / state)
        except OSError:
            pass  # the deletion may come back after a crash; nothing is lost by that
        if state == STORED or (state == PUBLISHED and not self.require_receipt):
            log.info("store: deleted %s session %s to make room", state, session_id)
        elif state == PUBLISHED:
            log.warning("store: deleted session %s to make room although the collector has "
                        "not confirmed storing it (no receipt yet)", session_id)
        else:
            log.error("store: deleted quarantined session %s to make room; it was damaged "
                      "(%s) and is gone now", session_id, reason or "no reason recorded")
        return size

