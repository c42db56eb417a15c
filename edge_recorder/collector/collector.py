"""``edge-recorder collect``: subscribe to published sessions and store each one once.

The MQTT session is persistent (fixed client id, no clean start, long expiry, QoS 1),
so the broker queues what is published while the collector is down. Parts are written
to ``incoming/{id}/`` before they are acknowledged (paho acks after the handler
returns), so a collector crash loses nothing either. When the manifest and every part
are present, the file is assembled, its size and sha256 checked against the manifest,
and only then moved into ``sessions/`` with its manifest beside it. A mismatch is
logged and the parts discarded. A session left incomplete (a mismatch, or parts a
crashed broker lost after acknowledging them) gets a ``resend`` command to its device
for what is missing. Sessions already stored are ignored (duplicates are expected
after a publisher reconnect).

Scale-out: with ``$share/group/`` subscriptions the broker spreads messages over the
group's members, so parts of one session can land on different collectors. Sharing
therefore needs a store all members see (a shared directory: ``incoming/`` is keyed by
session id and writes are atomic renames) — or one collector per device prefix.

Stored sessions are also indexed in ``index.sqlite`` (labels, journey, device, times, stop
reason) for ``sessions list``; the index is derived from the manifests and rebuilt from
them whenever it is missing or behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from edge_recorder.config import MqttConfig
from edge_recorder.delivery.mqtt import Message, MqttLink
from edge_recorder.fsutil import move_durable, write_atomic, write_json_atomic
from edge_recorder.query.index import SessionIndex

log = logging.getLogger(__name__)

SESSION_ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
PERSISTENT_SESSION_S = 7 * 24 * 3600
INCOMPLETE_EXPIRY_S = 24 * 3600
RESEND_AFTER_S = 3.0  # an incomplete session this quiet gets a resend request
RESEND_EVERY_S = 30.0  # and at most one request per session this often


class CollectorStore:
    """``sessions/{id}.mcap`` + ``{id}.json`` for stored sessions; ``incoming/`` for parts."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.sessions = root / "sessions"
        self.incoming = root / "incoming"
        self.sessions.mkdir(parents=True, exist_ok=True)
        self.incoming.mkdir(parents=True, exist_ok=True)
        self.index = SessionIndex(root, check_same_thread=False)
        self.index.sync()
        self.stored = 0
        self.rejected = 0
        self.duplicates = 0
        self._lock = threading.Lock()

    def has(self, session_id: str) -> bool:
        return (self.sessions / f"{session_id}.json").exists()

    def _folder(self, session_id: str, device_id: str | None) -> Path:
        folder = self.incoming / session_id
        if not folder.is_dir():
            folder.mkdir(exist_ok=True)
            if device_id is not None:
                (folder / "device").write_text(device_id)
        return folder

    def add_part(self, session_id: str, n: int, data: bytes, device_id: str | None = None) -> None:
        if self.has(session_id):
            self.duplicates += 1
            return
        folder = self._folder(session_id, device_id)
        write_atomic(folder / f"part-{n:06d}", data)
        self.try_assemble(session_id)

    def add_manifest(self, session_id: str, payload: bytes, device_id: str | None = None) -> None:
        if self.has(session_id):
            self.duplicates += 1
            log.debug("session %s already stored; duplicate ignored", session_id)
            return
        try:
            manifest = json.loads(payload)
            if manifest.get("session_id") != session_id or int(manifest["parts"]) < 1 \
                    or not isinstance(manifest["sha256"], str):
                raise ValueError("fields do not match the topic")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            self.rejected += 1
            log.error("session %s: unusable manifest (%s); ignored", session_id, exc)
            return
        folder = self._folder(session_id, device_id)
        write_json_atomic(folder / "manifest.json", manifest)
        self.try_assemble(session_id)

    def try_assemble(self, session_id: str) -> bool:
        with self._lock:
            folder = self.incoming / session_id
            manifest_path = folder / "manifest.json"
            if self.has(session_id) or not manifest_path.exists():
                return False
            manifest: dict[str, Any] = json.loads(manifest_path.read_text())
            parts = [folder / f"part-{n:06d}" for n in range(int(manifest["parts"]))]
            if not all(p.exists() for p in parts):
                return False
            tmp = folder / "assembled.mcap"
            digest = hashlib.sha256()
            size = 0
            with open(tmp, "wb") as out:
                for p in parts:
                    data = p.read_bytes()
                    digest.update(data)
                    size += len(data)
                    out.write(data)
                out.flush()
                os.fsync(out.fileno())
            if size != manifest.get("bytes") or digest.hexdigest() != manifest["sha256"]:
                self.rejected += 1
                log.error("session %s: reassembled file does not match its manifest (%d bytes, "
                          "sha256 %s…; expected %s bytes, %s…); parts discarded, asking for "
                          "a resend", session_id, size, digest.hexdigest()[:12],
                          manifest.get("bytes"), str(manifest["sha256"])[:12])
                for p in [*parts, tmp]:
                    p.unlink(missing_ok=True)
                return False
            move_durable(tmp, self.sessions / f"{session_id}.mcap")
            write_json_atomic(self.sessions / f"{session_id}.json", manifest)
            shutil.rmtree(folder, ignore_errors=True)
            self.index.add(self.sessions / f"{session_id}.json", None, manifest)
            self.stored += 1
            log.info("stored session %s from %s (%d bytes, labels [%s], journey %s)", session_id,
                     manifest.get("device_id"), size, ", ".join(manifest.get("labels", [])),
                     manifest.get("journey_id"))
            return True

    def incomplete(self, quiet_for_s: float) -> list[tuple[str, str, list[int] | None]]:
        """Sessions stuck incomplete for ``quiet_for_s``: (id, device, missing parts or None
        for all, when the manifest never came)."""
        out = []
        cutoff = time.time() - quiet_for_s
        for folder in self.incoming.iterdir():
            try:  # the network thread may assemble (and remove) a folder meanwhile
                files = list(folder.iterdir()) if folder.is_dir() else []
                device = folder / "device"
                if not files or not device.exists() or \
                        max(f.stat().st_mtime for f in files) > cutoff:
                    continue
                manifest_path = folder / "manifest.json"
                missing: list[int] | None = None
                if manifest_path.exists():
                    total = int(json.loads(manifest_path.read_text())["parts"])
                    missing = [n for n in range(total)
                               if not (folder / f"part-{n:06d}").exists()]
                out.append((folder.name, device.read_text(), missing))
            except FileNotFoundError:
                continue
        return out

    def expire(self, older_than_s: float = INCOMPLETE_EXPIRY_S) -> None:
        """Drop incomplete sessions whose last part arrived ``older_than_s`` ago."""
        cutoff = time.time() - older_than_s
        for folder in self.incoming.iterdir():
            if folder.is_dir() and folder.stat().st_mtime < cutoff:
                have = len(list(folder.glob("part-*")))
                log.warning("session %s: incomplete for %.0f h (%d parts, manifest %s); "
                            "expired", folder.name, older_than_s / 3600, have,
                            "present" if (folder / "manifest.json").exists() else "missing")
                shutil.rmtree(folder, ignore_errors=True)


class Collector:
    def __init__(self, mqtt: MqttConfig, store_dir: Path, *, topic_prefix: str = "edge-recorder",
                 client_id: str = "edge-recorder-collector") -> None:
        self.store = CollectorStore(store_dir)
        self.topic_prefix = topic_prefix
        self.link = MqttLink(mqtt, client_id, persistent_session_s=PERSISTENT_SESSION_S,
                             name="collector")
        self.link.subscribe(f"{topic_prefix}/+/sessions/#", self.on_message, qos=1)
        self._asked: dict[str, float] = {}

    def on_message(self, message: Message) -> None:
        rest = message.topic[len(self.topic_prefix) + 1:].split("/")
        # {device}/sessions/{id}/part/{n} or {device}/sessions/{id}/manifest
        if len(rest) < 4 or rest[1] != "sessions" or not SESSION_ID_RE.match(rest[2]):
            log.warning("collector: ignoring unexpected topic %s", message.topic)
            return
        device, session_id = rest[0], rest[2]
        if len(rest) == 5 and rest[3] == "part" and rest[4].isdigit():
            self.store.add_part(session_id, int(rest[4]), message.payload, device)
        elif len(rest) == 4 and rest[3] == "manifest":
            self.store.add_manifest(session_id, message.payload, device)
        else:
            log.warning("collector: ignoring unexpected topic %s", message.topic)

    def run(self, stop: threading.Event) -> None:
        self.link.start()
        log.info("collecting %s/+/sessions/# from %s:%d into %s", self.topic_prefix,
                 self.link.settings.host, self.link.settings.port, self.store.root)
        next_expiry = 0.0
        while not stop.wait(1.0):
            try:
                if self.link.connected.is_set():
                    self.ask_for_missing()
                if time.monotonic() >= next_expiry:
                    self.store.expire()
                    next_expiry = time.monotonic() + 600
            except Exception:  # housekeeping must not end collecting
                log.exception("collector: housekeeping failed; carrying on")
        self.link.close()

    def ask_for_missing(self) -> None:
        """Ask devices to resend what a broker lost (at most every RESEND_EVERY_S each)."""
        now = time.monotonic()
        for session_id, device, missing in self.store.incomplete(RESEND_AFTER_S):
            if now - self._asked.get(session_id, -RESEND_EVERY_S) < RESEND_EVERY_S:
                continue
            self._asked[session_id] = now
            what = "all parts" if missing is None else f"{len(missing)} part(s)"
            log.warning("session %s from %s is incomplete; asking for %s again", session_id,
                        device, what)
            command: dict[str, Any] = {"cmd": "resend", "session_id": session_id,
                       "request_id": f"collector-resend-{session_id}"}
            if missing is not None:
                command["parts"] = missing
            self.link.publish(f"{self.topic_prefix}/{device}/cmd", json.dumps(command).encode(),
                              qos=1)
