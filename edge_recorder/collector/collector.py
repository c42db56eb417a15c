"""``edge-recorder collect``: subscribe to published sessions and store each one once.

A session is identified by **(device, session id)**, the device taken from the topic; both
must match the one id pattern (:data:`edge_recorder.documents.ID_RE`) before any path is
built from them, and a manifest naming another device than its topic is refused. The
store::

    sessions/{device}/{id}.mcap  {id}.json   stored: verified against the manifest, indexed
    incoming/{device}/{id}/                  parts and manifest of a session still arriving
    rejected/{device}/{id}/                  quarantined: what arrived, and reason.json

The MQTT session is persistent (fixed client id, no clean start, long expiry, QoS 1), so
the broker queues what is published while the collector is down. A message is acknowledged
only after it is durably written (manual acknowledgement): a collector that cannot write
(a full disk) says so, does not acknowledge, and the broker delivers the message again.
When the manifest and every part are present the file is assembled, its size and sha256
checked, and only then moved into ``sessions/``, indexed, and a **receipt** published on
``{prefix}/{device}/sessions/{id}/stored`` (also for a duplicate of a stored session).

A stream whose size differs from its manifest (a truncated file on the device) cannot be
mended by resending it: it is quarantined at once. A checksum mismatch is retried by
asking for every part again, at most :data:`MAX_ASSEMBLY_ATTEMPTS` times. A session still
incomplete :data:`INCOMPLETE_EXPIRY_S` after its first message is quarantined; until then
the collector asks its device for what is missing, less and less often. Bookkeeping per
arriving part is O(1) (an in-memory set per session, rebuilt from disk at start-up), and so
is the bound on what parts may occupy before their manifest comes: at most
:data:`MAX_INCOMING_BYTES_PER_DEVICE` for one device, :data:`MAX_INCOMING_BYTES_TOTAL` in all.

Scale-out (``collect --share GROUP``): with ``$share/GROUP/`` subscriptions the broker
spreads messages over the group's members, so the parts of one session can land on
different collectors. The members share one store (a network file system in production)
and one index (``--index postgresql://…``): each arrival also takes in what the other
members wrote into the session's folder, one member assembles it under an atomic ``claim/``
(mkdir; a dead member's claim is broken after :data:`CLAIM_STALE_S`), temporary files are
unique per writer, and a member that dies leaves no queue at the broker (members start
clean): what it held unacknowledged comes back through the devices' receipt timeouts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_recorder.config import MAX_PAYLOAD_BYTES, MqttConfig
from edge_recorder.delivery.mqtt import Message, MqttLink, NotTaken
from edge_recorder.documents import (
    MAX_PARTS,
    DocumentError,
    Manifest,
    Receipt,
    receipt_topic,
    valid_id,
)
from edge_recorder.errors import EdgeRecorderError
from edge_recorder.fsutil import fsync_dir, move_durable, write_atomic, write_json_atomic
from edge_recorder.query.index import Index, SessionIndex, open_index

log = logging.getLogger(__name__)

PERSISTENT_SESSION_S = 7 * 24 * 3600
INCOMPLETE_EXPIRY_S = 24 * 3600  # from the first message of a session; never refreshed
RESEND_AFTER_S = 3.0  # an incomplete session this quiet gets a resend request
RESEND_EVERY_S = 30.0  # the first repeat; each further one waits twice as long...
RESEND_EVERY_MAX_S = 3600.0  # ...up to this
MAX_ASSEMBLY_ATTEMPTS = 3  # checksum mismatches before a session is quarantined
CLAIM_STALE_S = 60.0  # a shared-store assembly claim this old belongs to a dead member
MAX_INCOMING_PER_DEVICE = 256  # sessions of one device being received at once
MAX_PART_BYTES = MAX_PAYLOAD_BYTES  # no device may publish a larger part (config.py's bound)
# Bytes of parts held in incoming/ — counted before a part is written, because parts come
# before their manifest. Far above what an honest device has in flight (one session at a
# time; the device's whole store is 1 GiB by default), far below a full disk. A part refused
# for them is asked for again by the resend requests once completed sessions free room.
MAX_INCOMING_BYTES_PER_DEVICE = 4 << 30  # 4 GiB
MAX_INCOMING_BYTES_TOTAL = 64 << 30  # 64 GiB, all devices together
MAX_RESEND_PARTS = 100_000  # part numbers in one resend command (the device's limit)
PART_DIGITS = 7  # part numbers are at most MAX_PARTS - 1 (7 decimal digits)
STATUS_LOG_EVERY_S = 60.0
MAX_REFUSALS_LOGGED = 20  # refusals logged one by one per minute; the rest are summed up


class Refused(EdgeRecorderError, ValueError):
    """A message the collector will not take (bad id, bad manifest, wrong device, absurd
    count). It is acknowledged — sending it again would not change it — logged and counted."""


@dataclass
class Incoming:
    """A session still arriving: what is known of it, kept in memory for O(1) bookkeeping."""

    folder: Path
    first_seen: float  # monotonic time of the first message: the expiry counts from here
    last_seen: float  # monotonic time of the latest message
    manifest: Manifest | None = None
    have: set[int] = field(default_factory=set)
    sizes: dict[int, int] = field(default_factory=dict)  # bytes of each part counted here
    held_bytes: int = 0  # sum(sizes.values()), kept as it changes
    attempts: int = 0  # checksum mismatches so far
    asked_at: float | None = None  # monotonic time of the last resend request
    asked_every_s: float = RESEND_EVERY_S

    def complete(self) -> bool:
        return self.manifest is not None and len(self.have) == self.manifest.parts


@dataclass(frozen=True)
class Rejected:
    """A quarantined item in ``rejected/``."""

    device_id: str
    session_id: str
    reason: str
    rejected_at: str
    path: Path


class CollectorStore:
    """The collector's store: stored sessions, sessions arriving, and the quarantine."""

    def __init__(self, root: Path, *, index: Callable[[CollectorStore], Index] | None = None,
                 shared: bool = False) -> None:
        """``shared``: other collectors (a ``--share`` group) write into the same store, so
        a session's parts may arrive at several members: each arrival also takes in what
        the others wrote, and one member at a time assembles a session (an atomic claim)."""
        self.root = root
        self.shared = shared
        self.member = f"{socket.gethostname()}-{os.getpid()}"
        self.sessions = root / "sessions"
        self.incoming = root / "incoming"
        self.rejected_dir = root / "rejected"
        for folder in (self.sessions, self.incoming, self.rejected_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self.stored = 0
        self.duplicates = 0
        self.refused = 0  # messages refused (bad ids, manifests, devices, counts)
        self.quarantined = 0  # items moved to rejected/ by this process
        self.mismatches = 0  # assemblies that did not match their manifest
        self._lock = threading.RLock()
        self._incoming: dict[tuple[str, str], Incoming] = {}
        # bytes of parts in incoming/ this process counted, by device and in all
        self._held: dict[str, int] = {}
        self._held_total = 0
        # sessions quarantined because their bytes cannot match their manifest, by the
        # manifest's sha256: the same delivery again is refused, not quarantined again
        self._bad: dict[tuple[str, str], str] = {}
        self._migrate_flat_layout()
        self.index: Index = index(self) if index is not None else SessionIndex(
            root, check_same_thread=False, on_damaged=self._quarantine_stored)
        self.index.sync()
        self._load_bad()
        self._load_incoming()

    # --- paths: built only from validated ids -------------------------------------------
    def session_path(self, device_id: str, session_id: str, suffix: str = ".mcap") -> Path:
        _require_ids(device_id, session_id)
        return self.sessions / device_id / f"{session_id}{suffix}"

    def has(self, device_id: str, session_id: str) -> bool:
        return self.session_path(device_id, session_id, ".json").exists()

    def stored_manifest(self, device_id: str, session_id: str) -> Manifest:
        return Manifest.from_json(self.session_path(device_id, session_id, ".json").read_bytes())

    # --- arrivals -------------------------------------------------------------------------
    def add_part(self, device_id: str, session_id: str, n: int, data: bytes) -> None:
        """Store part ``n``; assemble the session when it completes it. Refused for bad ids
        or part numbers; OSError when it cannot be written (then it must not be acked)."""
        _require_ids(device_id, session_id)
        if not 0 <= n < MAX_PARTS:
            raise Refused(f"part {n} of {device_id}/{session_id}: part numbers are 0.."
                          f"{MAX_PARTS - 1}")
        if len(data) > MAX_PART_BYTES:
            raise Refused(f"part {n} of {device_id}/{session_id}: {len(data)} bytes, more "
                          f"than any part may have ({MAX_PART_BYTES})")
        with self._lock:
            if self.has(device_id, session_id):
                self.duplicates += 1
                return
            if (device_id, session_id) in self._bad and \
                    (device_id, session_id) not in self._incoming:
                raise Refused(f"part {n} of {device_id}/{session_id}: this session was "
                              "quarantined in rejected/ (its bytes do not match its manifest)")
            known = self._incoming.get((device_id, session_id))
            if known is not None and known.manifest is not None:
                if n >= known.manifest.parts:
                    raise Refused(f"part {n} of {device_id}/{session_id}: its manifest has "
                                  f"only {known.manifest.parts} parts")
                if len(data) > known.manifest.bytes:
                    raise Refused(f"part {n} of {device_id}/{session_id}: {len(data)} bytes, "
                                  f"more than the whole session's {known.manifest.bytes}")
            growth = len(data) - (0 if known is None else known.sizes.get(n, 0))
            self._check_room(device_id, f"part {n} of {device_id}/{session_id}", growth)
            entry = self._entry(device_id, session_id)
            written = self._write(device_id, session_id, entry, f"part-{n:0{PART_DIGITS}d}",
                                  data)
            if written is None:
                return
            entry = written
            entry.have.add(n)
            self._count(device_id, entry, n, len(data))
            entry.last_seen = time.monotonic()
            self._refresh(entry)
            self._try_assemble(device_id, session_id, entry)

    def add_manifest(self, device_id: str, session_id: str, payload: bytes) -> Receipt | None:
        """Take a manifest; the receipt to publish when the session is (or already was)
        stored, else None. Refused when it does not validate or does not match its topic."""
        _require_ids(device_id, session_id)
        try:
            manifest = Manifest.from_json(payload)
        except DocumentError as exc:
            raise Refused(f"manifest of {device_id}/{session_id}: {exc}") from None
        if manifest.session_id != session_id:
            raise Refused(f"manifest of {device_id}/{session_id} names session "
                          f"{manifest.session_id!r}")
        if manifest.device_id != device_id:
            raise Refused(f"manifest of {device_id}/{session_id} names device "
                          f"{manifest.device_id!r}, not the device it was published by; a "
                          "device may only deliver its own sessions")
        with self._lock:
            if self.has(device_id, session_id):
                self.duplicates += 1
                log.debug("session %s/%s already stored; duplicate answered with a receipt",
                          device_id, session_id)
                return Receipt.for_manifest(self.stored_manifest(device_id, session_id),
                                            duplicate=True)
            if self._bad.get((device_id, session_id)) == manifest.sha256:
                entry = self._drop(device_id, session_id)
                if entry is not None:
                    _remove_tree(entry.folder)
                raise Refused(f"manifest of {device_id}/{session_id}: this session (sha256 "
                              f"{manifest.sha256[:12]}…) was quarantined in rejected/ because "
                              "its bytes do not match it; the same delivery cannot either")
            self._bad.pop((device_id, session_id), None)  # a different file: try it
            entry = self._entry(device_id, session_id)
            if entry.manifest is not None and entry.manifest != manifest:
                log.warning("session %s/%s: a different manifest replaces the one received "
                            "before", device_id, session_id)
            beyond = {n for n in entry.have if n >= manifest.parts}
            for n in beyond:
                (entry.folder / f"part-{n:0{PART_DIGITS}d}").unlink(missing_ok=True)
                self._count(device_id, entry, n, 0)
            entry.have -= beyond
            written = self._write(device_id, session_id, entry, "manifest.json",
                                  manifest.to_json())
            if written is None:
                return Receipt.for_manifest(self.stored_manifest(device_id, session_id),
                                            duplicate=True)
            entry = written
            entry.manifest = manifest
            entry.last_seen = time.monotonic()
            self._refresh(entry)
            return self._try_assemble(device_id, session_id, entry)

    def _write(self, device_id: str, session_id: str, entry: Incoming, name: str,
               data: bytes) -> Incoming | None:
        """Write one file of an arriving session durably; the entry it went to, or None
        when another member of a shared store stored the session meanwhile (a duplicate)."""
        try:
            write_atomic(entry.folder / name, data)
            return entry
        except FileNotFoundError:
            if not self.shared:
                raise
        # another member assembled the session and removed its folder while we wrote
        self._drop(device_id, session_id)
        if self.has(device_id, session_id):
            self.duplicates += 1
            return None
        entry = self._entry(device_id, session_id)
        write_atomic(entry.folder / name, data)
        return entry

    def _entry(self, device_id: str, session_id: str) -> Incoming:
        key = (device_id, session_id)
        entry = self._incoming.get(key)
        if entry is not None:
            return entry
        if sum(1 for d, _ in self._incoming if d == device_id) >= MAX_INCOMING_PER_DEVICE:
            raise Refused(f"{device_id} already has {MAX_INCOMING_PER_DEVICE} sessions being "
                          f"received; {session_id} is refused for now (its device publishes "
                          "it again when no receipt comes)")
        folder = self.incoming / device_id / session_id
        folder.mkdir(parents=True, exist_ok=True)
        fsync_dir(folder.parent)
        # the expiry outlives a restart: the wall clock in the file, monotonic in memory
        write_atomic(folder / "first_seen", f"{time.time():.3f}\n".encode())
        now = time.monotonic()
        entry = self._incoming[key] = Incoming(folder, now, now)
        return entry

    def _check_room(self, device_id: str, what: str, growth: int) -> None:
        """Refuse ``growth`` more bytes of parts beyond the incoming/ limits (per device and
        in all), before anything is written: parts arrive before the manifest bounds them."""
        held = self._held.get(device_id, 0)
        if growth > 0 and held + growth > MAX_INCOMING_BYTES_PER_DEVICE:
            raise Refused(f"{what}: {device_id} already has {held} bytes of parts held in "
                          f"incoming/, at most {MAX_INCOMING_BYTES_PER_DEVICE}; refused for now "
                          "(asked for again when a session of it completes or expires)")
        if growth > 0 and self._held_total + growth > MAX_INCOMING_BYTES_TOTAL:
            raise Refused(f"{what}: {self._held_total} bytes of parts held in incoming/ for "
                          f"all devices, at most {MAX_INCOMING_BYTES_TOTAL}; refused for now "
                          "(asked for again when sessions complete or expire)")

    def _count(self, device_id: str, entry: Incoming, n: int, size: int) -> None:
        """Part ``n`` of ``entry`` now holds ``size`` bytes (0: removed); O(1)."""
        delta = size - (entry.sizes.pop(n, 0) if size == 0 else entry.sizes.get(n, 0))
        if size:
            entry.sizes[n] = size
        entry.held_bytes += delta
        self._add_held(device_id, delta)

    def _add_held(self, device_id: str, delta: int) -> None:
        held = self._held.get(device_id, 0) + delta
        if held:
            self._held[device_id] = held
        else:
            self._held.pop(device_id, None)
        self._held_total += delta

    def _drop(self, device_id: str, session_id: str) -> Incoming | None:
        """Forget an arriving session's bookkeeping (its folder went or goes): every way
        out of ``_incoming`` passes here, so the bytes it held are no longer counted."""
        entry = self._incoming.pop((device_id, session_id), None)
        if entry is not None:
            self._add_held(device_id, -entry.held_bytes)
        return entry

    def _refresh(self, entry: Incoming) -> None:
        """On a shared store, take in the manifest and parts other members wrote into this
        session's folder (a directory listing: parts arrive in any member's hands)."""
        if not self.shared:
            return
        try:
            if entry.manifest is None and (entry.folder / "manifest.json").exists():
                entry.manifest = Manifest.from_json((entry.folder / "manifest.json").read_bytes())
            if entry.manifest is not None and len(entry.have) < entry.manifest.parts:
                for name in os.listdir(entry.folder):
                    number = name[5:]
                    if name.startswith("part-") and number.isdigit() and \
                            len(number) == PART_DIGITS and int(number) < entry.manifest.parts:
                        entry.have.add(int(number))
        except FileNotFoundError:
            return  # assembled (or quarantined) by another member meanwhile
        except (OSError, DocumentError) as exc:  # its writer deals with it
            log.debug("session folder %s: %s: %s", entry.folder, type(exc).__name__, exc)

    def _claim(self, entry: Incoming) -> bool:
        """One member assembles a session: whoever creates ``claim/`` (mkdir is atomic, on
        NFS too). A claim older than CLAIM_STALE_S belongs to a member that died; it is
        broken by renaming it away (atomic: of two breakers one wins)."""
        if not self.shared:
            return True
        claim = entry.folder / "claim"
        for _ in range(2):
            try:
                claim.mkdir()
                write_atomic(claim / "owner", f"{self.member}\n".encode())
                return True
            except FileExistsError:
                try:
                    age_s = time.time() - claim.stat().st_mtime
                except FileNotFoundError:
                    continue  # released meanwhile: try again
                if age_s < CLAIM_STALE_S:
                    return False  # another member is assembling it
                stale = entry.folder / f"stale-claim-{self.member}"
                try:
                    claim.rename(stale)
                except OSError:
                    return False  # another member broke it first
                log.warning("session folder %s: breaking a claim %.0f s old (its collector "
                            "died while assembling)", entry.folder, age_s)
                _remove_tree(stale)
            except FileNotFoundError:
                return False  # the folder is gone: stored or quarantined by another member
        return False

    def _release(self, entry: Incoming) -> None:
        if self.shared:
            _remove_tree(entry.folder / "claim")

    def _try_assemble(self, device_id: str, session_id: str, entry: Incoming) -> Receipt | None:
        if not entry.complete():
            return None
        if not self._claim(entry):
            return None
        try:
            return self._assemble(device_id, session_id, entry)
        finally:
            if (device_id, session_id) in self._incoming:  # not stored nor quarantined
                self._release(entry)

    def _assemble(self, device_id: str, session_id: str, entry: Incoming) -> Receipt | None:
        if self.has(device_id, session_id):  # another member stored it meanwhile
            self._forget(device_id, session_id)
            return Receipt.for_manifest(self.stored_manifest(device_id, session_id),
                                        duplicate=True)
        manifest = entry.manifest
        assert manifest is not None
        parts = [entry.folder / f"part-{n:0{PART_DIGITS}d}" for n in range(manifest.parts)]
        size = sum(p.stat().st_size for p in parts)
        if size != manifest.bytes:  # a resend would bring the same bytes: nothing to retry
            self.mismatches += 1
            self._quarantine_incoming(
                device_id, session_id,
                f"the {manifest.parts} parts hold {size} bytes, the manifest says "
                f"{manifest.bytes}: the file on the device does not match its manifest "
                "(truncated?)", mismatch_sha256=manifest.sha256)
            return None
        tmp = entry.folder / f"assembled-{self.member}.mcap"
        digest = hashlib.sha256()
        with open(tmp, "wb") as out:
            for p in parts:
                data = p.read_bytes()
                digest.update(data)
                out.write(data)
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != manifest.sha256:
            self.mismatches += 1
            entry.attempts += 1
            if entry.attempts >= MAX_ASSEMBLY_ATTEMPTS:
                tmp.unlink(missing_ok=True)
                self._quarantine_incoming(
                    device_id, session_id,
                    f"sha256 {digest.hexdigest()} does not match the manifest's "
                    f"{manifest.sha256} after {entry.attempts} attempts",
                    mismatch_sha256=manifest.sha256)
                return None
            log.error("session %s/%s: reassembled file does not match its manifest (sha256 "
                      "%s…, expected %s…); parts discarded, asking for a resend (attempt %d "
                      "of %d)", device_id, session_id, digest.hexdigest()[:12],
                      manifest.sha256[:12], entry.attempts, MAX_ASSEMBLY_ATTEMPTS)
            for p in [*parts, tmp]:
                p.unlink(missing_ok=True)
            for n in range(manifest.parts):
                self._count(device_id, entry, n, 0)
            entry.have.clear()
            entry.asked_at = None  # ask at once
            return None
        target = self.session_path(device_id, session_id)
        target.parent.mkdir(exist_ok=True)
        fsync_dir(self.sessions)
        move_durable(tmp, target)
        manifest_path = self.session_path(device_id, session_id, ".json")
        write_atomic(manifest_path, manifest.to_json())  # stored: the commit point
        self._forget(device_id, session_id)
        self.stored += 1
        log.info("stored session %s from %s (%d bytes, labels [%s], journey %s)", session_id,
                 device_id, size, ", ".join(manifest.labels), manifest.journey_id)
        self.index.add(manifest_path, None, manifest)  # derived: a re-sync mends a failure
        return Receipt.for_manifest(manifest, duplicate=False)

    def _forget(self, device_id: str, session_id: str) -> None:
        """The session is stored: drop its bookkeeping and its ``incoming/`` folder."""
        entry = self._drop(device_id, session_id)
        if entry is not None:
            _remove_tree(entry.folder)

    # --- housekeeping ----------------------------------------------------------------------
    def catch_up(self) -> list[Receipt]:
        """Shared store: settle sessions other members finished or left behind — drop the
        ones stored meanwhile, take in parts they wrote, assemble what is now complete
        (e.g. after a member died holding the last part). Receipts for what it stored."""
        receipts = []
        with self._lock:
            for (device_id, session_id), entry in list(self._incoming.items()):
                if self.has(device_id, session_id):
                    self._forget(device_id, session_id)
                    continue
                if not self.shared:
                    continue
                self._refresh(entry)
                receipt = self._try_assemble(device_id, session_id, entry)
                if receipt is not None:
                    receipts.append(receipt)
            if self.shared:
                self._adopt_new_folders()
        return receipts

    def _adopt_new_folders(self) -> None:
        """Sessions another member began (and perhaps died with) become known here too."""
        for device_dir in self.incoming.iterdir():
            if not device_dir.is_dir() or not valid_id(device_dir.name):
                continue
            for folder in device_dir.iterdir():
                key = (device_dir.name, folder.name)
                if key not in self._incoming and folder.is_dir() and valid_id(folder.name):
                    try:
                        self._load_one(device_dir.name, folder.name, folder)
                    except FileNotFoundError:
                        self._drop(*key)  # stored by its member meanwhile

    def incomplete(self, quiet_for_s: float) -> list[tuple[str, str, list[int] | None]]:
        """Sessions quiet for ``quiet_for_s``: (device, id, missing parts, or None for all
        when the manifest never came)."""
        with self._lock:
            return [(d, s, self._missing(e)) for (d, s), e in self._quiet(quiet_for_s)]

    def due_for_resend(self, quiet_for_s: float) -> list[tuple[str, str, list[int] | None]]:
        """Like :meth:`incomplete`, limited to those whose next request is due (each request
        doubles the wait for the next one, up to RESEND_EVERY_MAX_S)."""
        now = time.monotonic()
        due = []
        with self._lock:
            for (device_id, session_id), entry in self._quiet(quiet_for_s):
                if entry.asked_at is not None:
                    if now - entry.asked_at < entry.asked_every_s:
                        continue
                    entry.asked_every_s = min(entry.asked_every_s * 2, RESEND_EVERY_MAX_S)
                entry.asked_at = now
                due.append((device_id, session_id, self._missing(entry)))
        return due

    def _quiet(self, quiet_for_s: float) -> list[tuple[tuple[str, str], Incoming]]:
        cutoff = time.monotonic() - quiet_for_s
        return [(key, e) for key, e in self._incoming.items() if e.last_seen <= cutoff]

    @staticmethod
    def _missing(entry: Incoming) -> list[int] | None:
        if entry.manifest is None:
            return None
        missing = []
        for n in range(entry.manifest.parts):
            if n not in entry.have:
                missing.append(n)
                if len(missing) == MAX_RESEND_PARTS:
                    break
        return missing

    def expire(self, older_than_s: float = INCOMPLETE_EXPIRY_S) -> None:
        """Quarantine sessions still incomplete ``older_than_s`` after their first message."""
        cutoff = time.monotonic() - older_than_s
        with self._lock:
            for (device_id, session_id), entry in list(self._incoming.items()):
                if entry.first_seen >= cutoff:
                    continue
                total = "?" if entry.manifest is None else str(entry.manifest.parts)
                self._quarantine_incoming(
                    device_id, session_id,
                    f"incomplete {older_than_s / 3600:.1f} h after its first message: "
                    f"{len(entry.have)} of {total} parts, manifest "
                    f"{'present' if entry.manifest else 'missing'}")

    def resync(self) -> None:
        """Bring the index in step with the manifests (and quarantine damaged ones), under
        the store's lock: the network thread indexes new sessions through the same index."""
        with self._lock:
            self.index.sync()

    def status(self) -> dict[str, int]:
        with self._lock:
            incoming = len(self._incoming)
        return {"stored": self.stored, "duplicates": self.duplicates, "refused": self.refused,
                "quarantined": self.quarantined, "mismatches": self.mismatches,
                "incoming": incoming, "incoming_bytes": self._held_total,
                "rejected_total": sum(1 for _ in self.rejected())}

    # --- the quarantine -------------------------------------------------------------------
    def rejected(self) -> list[Rejected]:
        """Everything in ``rejected/``, oldest first."""
        return list_rejected(self.root)

    def _quarantine_dir(self, device_id: str, name: str) -> Path:
        folder = self.rejected_dir / device_id
        folder.mkdir(parents=True, exist_ok=True)
        target, n = folder / name, 1
        while target.exists():
            n += 1
            target = folder / f"{name}~{n}"
        return target

    def _record_reason(self, target: Path, device_id: str, session_id: str, reason: str,
                       mismatch_sha256: str | None = None) -> None:
        doc = {"device_id": device_id, "session_id": session_id, "reason": reason,
               "rejected_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        if mismatch_sha256 is not None:
            doc["mismatch_sha256"] = mismatch_sha256
        write_json_atomic(target / "reason.json", doc)
        fsync_dir(target.parent)
        self.quarantined += 1

    def _quarantine_incoming(self, device_id: str, session_id: str, reason: str,
                             mismatch_sha256: str | None = None) -> None:
        """Move an arriving session to ``rejected/``. ``mismatch_sha256``: its bytes cannot
        match the manifest with this sha256, so the same delivery again is refused."""
        entry = self._incoming[(device_id, session_id)]
        self._drop(device_id, session_id)
        target = self._quarantine_dir(device_id, session_id)
        move_durable(entry.folder, target)
        self._record_reason(target, device_id, session_id, reason, mismatch_sha256)
        if mismatch_sha256 is not None:
            self._bad[(device_id, session_id)] = mismatch_sha256
        log.error("session %s from %s quarantined in %s: %s", session_id, device_id, target,
                  reason)

    def _quarantine_stored(self, manifest_path: Path, reason: str) -> None:
        """A stored manifest that no longer validates: move it and its file out of the way."""
        device = manifest_path.parent.name if manifest_path.parent != self.sessions \
            else "_unknown"
        target = self._quarantine_dir(device if valid_id(device) else "_unknown",
                                      manifest_path.stem)
        target.mkdir()
        for path in (manifest_path, manifest_path.with_suffix(".mcap")):
            if path.exists():
                move_durable(path, target / path.name)
        self._record_reason(target, device, manifest_path.stem, f"stored manifest: {reason}")
        log.error("stored session %s quarantined in %s: %s", manifest_path, target, reason)

    # --- start-up ---------------------------------------------------------------------------
    def _load_bad(self) -> None:
        for reason_file in self.rejected_dir.glob("*/*/reason.json"):
            try:
                doc = json.loads(reason_file.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(doc, dict) and isinstance(doc.get("mismatch_sha256"), str) and \
                    valid_id(doc.get("device_id")) and valid_id(doc.get("session_id")):
                self._bad[(doc["device_id"], doc["session_id"])] = doc["mismatch_sha256"]

    def _load_incoming(self) -> None:
        """Rebuild the in-memory bookkeeping from ``incoming/``; assemble what is complete."""
        for device_dir in sorted(self.incoming.iterdir()):
            if not device_dir.is_dir() or not valid_id(device_dir.name):
                continue
            for folder in sorted(device_dir.iterdir()):
                if folder.is_dir() and valid_id(folder.name):
                    self._load_one(device_dir.name, folder.name, folder)

    def _load_one(self, device_id: str, session_id: str, folder: Path) -> None:
        try:
            first = float((folder / "first_seen").read_text())
        except (OSError, ValueError):
            first = folder.stat().st_mtime
        entry = Incoming(folder, _monotonic_since(first), _monotonic_since(folder.stat().st_mtime))
        for part in folder.glob("part-*"):
            suffix = part.name[5:]
            if suffix.isdigit() and len(suffix) <= PART_DIGITS:
                entry.have.add(int(suffix))
                entry.sizes[int(suffix)] = part.stat().st_size
        entry.held_bytes = sum(entry.sizes.values())
        manifest_path = folder / "manifest.json"
        self._incoming[(device_id, session_id)] = entry
        self._add_held(device_id, entry.held_bytes)
        if manifest_path.exists():
            try:
                entry.manifest = Manifest.from_json(manifest_path.read_bytes())
            except (OSError, DocumentError) as exc:
                self._quarantine_incoming(device_id, session_id,
                                          f"manifest unreadable ({type(exc).__name__}: {exc})")
                return
            entry.have = {n for n in entry.have if n < entry.manifest.parts}
            if not self.shared:  # a shared folder's assembly may be another member's
                for leftover in folder.glob("assembled*.mcap"):
                    leftover.unlink(missing_ok=True)
            with self._lock:
                self._try_assemble(device_id, session_id, entry)

    def _migrate_flat_layout(self) -> None:
        """Stores written before sessions were keyed by device: ``sessions/{id}.json`` and
        ``incoming/{id}/`` (with a ``device`` file) move under their device's folder."""
        for manifest_path in sorted(self.sessions.glob("*.json")):
            try:
                m = Manifest.from_json(manifest_path.read_bytes())
            except (OSError, DocumentError):
                continue  # left for the index's sync, which quarantines it
            (self.sessions / m.device_id).mkdir(exist_ok=True)
            mcap = manifest_path.with_suffix(".mcap")
            if mcap.exists():
                move_durable(mcap, self.session_path(m.device_id, m.session_id))
            move_durable(manifest_path, self.session_path(m.device_id, m.session_id, ".json"))
            log.info("store: moved session %s under sessions/%s/", m.session_id, m.device_id)
        for folder in sorted(self.incoming.iterdir()):
            device_file = folder / "device"
            if not folder.is_dir() or not (device_file.exists()
                                           or (folder / "manifest.json").exists()
                                           or any(folder.glob("part-*"))):
                continue
            try:
                device = device_file.read_text().strip()
            except OSError:
                device = ""
            if valid_id(device) and valid_id(folder.name):
                target = self.incoming / device / folder.name
                target.parent.mkdir(exist_ok=True)
                device_file.unlink()
                for part in folder.glob("part-*"):  # part-NNNNNN -> part-NNNNNNN
                    if part.name[5:].isdigit():
                        part.rename(folder / f"part-{int(part.name[5:]):0{PART_DIGITS}d}")
                move_durable(folder, target)
            else:
                target = self._quarantine_dir("_unknown", folder.name)
                move_durable(folder, target)
                self._record_reason(target, device or "?", folder.name,
                                    "incomplete session from before sessions were keyed by "
                                    "device, without a readable device")


def list_rejected(root: Path) -> list[Rejected]:
    """Everything quarantined in ``{root}/rejected/``, oldest first (read only)."""
    out = []
    for reason_file in (root / "rejected").glob("*/*/reason.json"):
        try:
            doc = json.loads(reason_file.read_text())
            out.append(Rejected(str(doc.get("device_id")), str(doc.get("session_id")),
                                str(doc.get("reason")), str(doc.get("rejected_at")),
                                reason_file.parent))
        except (OSError, ValueError):
            out.append(Rejected(reason_file.parent.parent.name, reason_file.parent.name,
                                "reason.json unreadable", "", reason_file.parent))
    return sorted(out, key=lambda r: (r.rejected_at, str(r.path)))


def _require_ids(device_id: str, session_id: str) -> None:
    """Refuse before any path is built: only ids matching ID_RE reach the file system."""
    if not valid_id(device_id):
        raise Refused(f"device id {device_id[:80]!r} is not a valid id")
    if not valid_id(session_id):
        raise Refused(f"session id {session_id[:80]!r} is not a valid id")


def _monotonic_since(wall_s: float) -> float:
    """The monotonic time of a wall-clock instant persisted before a restart (its age
    clamped at 0: a clock that was ahead counts as now)."""
    return time.monotonic() - max(0.0, time.time() - wall_s)


def _remove_tree(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    try:
        fsync_dir(folder.parent)
    except OSError:
        pass


class Collector:
    def __init__(self, mqtt: MqttConfig, store_dir: Path, *, topic_prefix: str = "edge-recorder",
                 client_id: str = "edge-recorder-collector", index_url: str | None = None,
                 share_group: str | None = None) -> None:
        """``index_url``: a ``postgresql://`` index instead of the store's SQLite file.
        ``share_group``: subscribe as a member of an MQTT 5 shared subscription group, so
        the broker spreads the sessions over the group (all members on one store)."""
        self.store = CollectorStore(store_dir, shared=share_group is not None,
                                    index=None if index_url is None else (
            lambda s: open_index(s.root, index_url, check_same_thread=False,
                                 on_damaged=s._quarantine_stored)))
        self.topic_prefix = topic_prefix
        self.store_errors = 0  # messages not acknowledged because they could not be stored
        self.handler_errors = 0  # messages a bug failed on (acknowledged, logged)
        # Alone, the collector keeps a persistent session: the broker queues what arrives
        # while it is down. In a --share group a member that dies must not keep a queue the
        # others never see, so members start clean: the broker routes only to live members,
        # and what a dead member held unacknowledged comes back through the devices'
        # receipt timeouts (and the part-level resend).
        self.link = MqttLink(mqtt, client_id,
                             persistent_session_s=PERSISTENT_SESSION_S if share_group is None
                             else None,
                             name="collector", manual_ack=True, unreachable_hint=(
                                 "is the broker running? check collect --host and --port; "
                                 "nothing is lost meanwhile: devices keep their sessions "
                                 "until a collector stores them"))
        # narrowly: never our own receipts (…/stored) nor anything else under a device
        share = "" if share_group is None else f"$share/{share_group}/"
        self.link.subscribe(f"{share}{topic_prefix}/+/sessions/+/part/+", self.on_message, qos=1)
        self.link.subscribe(f"{share}{topic_prefix}/+/sessions/+/manifest", self.on_message,
                            qos=1)
        self._last_status: dict[str, int] = {}
        self._refusals_window_start = time.monotonic()
        self._refusals_logged = self._refusals_unlogged = 0

    def on_message(self, message: Message) -> None:
        """Handle one message; raise NotTaken when it could not be stored (not acked).

        Refused content and bugs are acknowledged (sending the message again would not
        change the outcome, and an endless redelivery would hold up everything behind it);
        only a failure to write (OSError: a full disk, a read-only mount) is not."""
        try:
            receipt = self.handle(message.topic, message.payload)
        except Refused as exc:
            self.store.refused += 1
            self._log_refusal(message.topic, exc)
            return
        except OSError as exc:
            self.store_errors += 1
            raise NotTaken(f"cannot store it: {type(exc).__name__}: {exc}") from exc
        except Exception as exc:  # a bug: redelivering the message would only repeat it
            self.handler_errors += 1
            log.error("collector: %s failed (%s: %s); acknowledged so it cannot block the "
                      "others — its device publishes the session again while no receipt "
                      "comes", message.topic[:200], type(exc).__name__, exc,
                      exc_info=log.isEnabledFor(logging.DEBUG))
            return
        if receipt is not None:
            self.publish_receipt(receipt)

    def handle(self, topic: str, payload: bytes) -> Receipt | None:
        """Route a session message by its topic; Refused for anything not a session message."""
        prefix = f"{self.topic_prefix}/"
        if not topic.startswith(prefix):
            raise Refused("not under the topic prefix")
        rest = topic[len(prefix):].split("/")
        # {device}/sessions/{id}/part/{n} or {device}/sessions/{id}/manifest
        if len(rest) not in (4, 5) or rest[1] != "sessions":
            raise Refused("not a session topic")
        device_id, session_id = rest[0], rest[2]
        _require_ids(device_id, session_id)
        if len(rest) == 5 and rest[3] == "part":
            n = rest[4]
            if not (n.isascii() and n.isdigit() and len(n) <= PART_DIGITS):
                raise Refused(f"part number {n[:20]!r} is not 0..{MAX_PARTS - 1}")
            self.store.add_part(device_id, session_id, int(n), payload)
            return None
        if len(rest) == 4 and rest[3] == "manifest":
            return self.store.add_manifest(device_id, session_id, payload)
        raise Refused("not a session topic")

    def publish_receipt(self, receipt: Receipt) -> None:
        """Tell the device its session is stored (QoS 1, not retained)."""
        self.link.publish(receipt_topic(self.topic_prefix, receipt.device_id, receipt.session_id),
                          receipt.to_json(), qos=1)

    def status(self) -> dict[str, Any]:
        return {**self.store.status(), "store_errors": self.store_errors,
                "handler_errors": self.handler_errors, "not_acknowledged": self.link.not_acked}

    def _log_refusal(self, topic: str, exc: Refused) -> None:
        """Each refusal is logged, up to MAX_REFUSALS_LOGGED a minute (a flood of them
        must not flood the journal); the rest are counted and summed up once a minute."""
        now = time.monotonic()
        if now - self._refusals_window_start >= 60.0:
            if self._refusals_unlogged:
                log.warning("collector: %d more message(s) refused in the last minute "
                            "(not logged one by one)", self._refusals_unlogged)
            self._refusals_window_start, self._refusals_logged = now, 0
            self._refusals_unlogged = 0
        if self._refusals_logged < MAX_REFUSALS_LOGGED:
            self._refusals_logged += 1
            log.warning("collector: refused %s: %s", topic[:200], exc)
        else:
            self._refusals_unlogged += 1

    def log_status(self, force: bool = False) -> None:
        status = self.status()
        if force or status != self._last_status:
            log.info("collector: %s", ", ".join(f"{k} {v}" for k, v in status.items()))
            self._last_status = status

    def run(self, stop: threading.Event) -> None:
        self.link.start()
        log.info("collecting %s/+/sessions/+/{part/+,manifest} from %s:%d into %s",
                 self.topic_prefix, self.link.settings.host, self.link.settings.port,
                 self.store.root)
        rejected = self.store.rejected()
        if rejected:
            log.warning("collector: %d quarantined item(s) in %s (sessions list --state failed)",
                        len(rejected), self.store.rejected_dir)
        next_expiry = next_status = 0.0
        while not stop.wait(1.0):
            try:
                for receipt in self.store.catch_up():
                    self.publish_receipt(receipt)
                if self.link.connected.is_set():
                    self.ask_for_missing()
                now = time.monotonic()
                if now >= next_expiry:
                    self.store.expire()
                    self.store.resync()  # quarantines a stored manifest damaged meanwhile
                    next_expiry = now + 600
                if now >= next_status:
                    self.log_status()
                    next_status = now + STATUS_LOG_EVERY_S
            except Exception as exc:  # housekeeping must not end collecting
                log.error("collector: housekeeping failed (%s: %s); carrying on",
                          type(exc).__name__, exc, exc_info=log.isEnabledFor(logging.DEBUG))
        self.link.close()
        self.log_status(force=True)

    def ask_for_missing(self) -> None:
        """Ask devices to resend what a broker lost (backing off per session)."""
        for device_id, session_id, missing in self.store.due_for_resend(RESEND_AFTER_S):
            what = "all parts" if missing is None else f"{len(missing)} part(s)"
            log.warning("session %s from %s is incomplete; asking for %s again", session_id,
                        device_id, what)
            command: dict[str, Any] = {"cmd": "resend", "session_id": session_id,
                                       "request_id": f"collector-resend-{session_id}"}
            if missing is not None:
                command["parts"] = missing
            self.link.publish(f"{self.topic_prefix}/{device_id}/cmd",
                              json.dumps(command).encode(), qos=1)
