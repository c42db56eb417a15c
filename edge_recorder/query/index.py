"""The session index: SQLite over the manifests of a store, on either side.

The manifests (JSON beside each MCAP file) are the truth; the index is derived from them
and can always be rebuilt. ``sync`` adds what is new and forgets what is gone, so the
collector, the daemon's store and a copied directory all list the same way. Where the
store is read-only (the daemon's state directory, read by another user), the index is
built in memory instead.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_recorder.errors import UsageError

INDEX_NAME = "index.sqlite"
STORE_FOLDERS = {"sessions": None, "outbox": False, "published": True}
SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    session_id TEXT PRIMARY KEY,
    manifest_path TEXT NOT NULL,
    published INTEGER,            -- NULL on the collector's store
    device_id TEXT, journey_id TEXT, started_at TEXT, stopped_at TEXT, stop_reason TEXT,
    manifest TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS labels (
    session_id TEXT NOT NULL REFERENCES sessions(session_id) ON DELETE CASCADE,
    label TEXT NOT NULL,
    PRIMARY KEY (session_id, label)
);
CREATE INDEX IF NOT EXISTS by_journey ON sessions (journey_id, started_at);
CREATE INDEX IF NOT EXISTS by_device ON sessions (device_id, started_at);
CREATE INDEX IF NOT EXISTS by_start ON sessions (started_at);
CREATE INDEX IF NOT EXISTS by_label ON labels (label);
"""


@dataclass(frozen=True)
class Entry:
    manifest: dict[str, Any]
    path: Path
    published: bool | None  # None on the collector's store

    def as_json(self) -> dict[str, Any]:
        doc = dict(self.manifest, path=str(self.path))
        if self.published is not None:
            doc["published"] = self.published
        return doc


class SessionIndex:
    def __init__(self, store: Path, *, check_same_thread: bool = True) -> None:
        self.store = store
        self.folders = [(store / name, flag) for name, flag in STORE_FOLDERS.items()
                        if (store / name).is_dir()]
        if not self.folders:
            raise UsageError(f"{store} is not an edge-recorder store (no sessions/, outbox/ or "
                             "published/ folder); give the collector's --store or the daemon's "
                             "storage.dir")
        try:
            self.db = sqlite3.connect(store / INDEX_NAME, timeout=10,
                                      check_same_thread=check_same_thread)
            self.db.executescript(SCHEMA)
        except sqlite3.OperationalError:  # read-only store: index in memory
            self.db = sqlite3.connect(":memory:", check_same_thread=check_same_thread)
            self.db.executescript(SCHEMA)
        self.db.execute("PRAGMA foreign_keys = ON")

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> SessionIndex:
        self.sync()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- keeping it in step with the manifests ------------------------------------------
    def add(self, manifest_path: Path, published: bool | None,
            manifest: dict[str, Any] | None = None) -> None:
        if manifest is None:
            manifest = json.loads(manifest_path.read_text())
        sid = manifest["session_id"]
        with self.db:
            self.db.execute("DELETE FROM sessions WHERE session_id = ?", (sid,))
            self.db.execute(
                "INSERT INTO sessions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (sid, str(manifest_path), published, manifest.get("device_id"),
                 manifest.get("journey_id"), manifest.get("started_at"),
                 manifest.get("stopped_at"), manifest.get("stop_reason"), json.dumps(manifest)))
            self.db.executemany("INSERT OR IGNORE INTO labels VALUES (?, ?)",
                                [(sid, label) for label in manifest.get("labels") or []])

    def sync(self) -> None:
        """Index new manifests, re-index moved ones (outbox → published), drop vanished ones."""
        on_disk: dict[str, tuple[Path, bool | None]] = {}
        for folder, flag in self.folders:
            for path in folder.glob("*.json"):
                on_disk[str(path)] = (path, flag)
        known = {row[0] for row in self.db.execute("SELECT manifest_path FROM sessions")}
        for gone in known - on_disk.keys():
            with self.db:
                self.db.execute("DELETE FROM sessions WHERE manifest_path = ?", (gone,))
        for key in on_disk.keys() - known:
            path, flag = on_disk[key]
            try:
                self.add(path, flag)
            except (OSError, ValueError, KeyError):
                continue  # being written or damaged: not a complete session

    # --- queries --------------------------------------------------------------------------
    def select(
        self,
        *,
        labels: Iterable[str] = (),
        journey: str | None = None,
        device: str | None = None,
        since: str | None = None,
        until: str | None = None,
    ) -> list[Entry]:
        """Sessions having every label, the journey and device given, starting in [since, until)."""
        where, args = [], []
        for label in dict.fromkeys(labels):
            where.append("session_id IN (SELECT session_id FROM labels WHERE label = ?)")
            args.append(label)
        for column, value, op in (("journey_id", journey, "="), ("device_id", device, "="),
                                  ("started_at", since, ">="), ("started_at", until, "<")):
            if value is not None:
                where.append(f"{column} {op} ?")
                args.append(value)
        sql = "SELECT manifest, manifest_path, published FROM sessions"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY started_at, session_id"
        return [Entry(json.loads(m), Path(p).with_suffix(".mcap"),
                      None if pub is None else bool(pub))
                for m, p, pub in self.db.execute(sql, args)]

    def journeys(self) -> list[dict[str, Any]]:
        """One row per journeyId: sessions, devices, first start and last stop."""
        rows = self.db.execute(
            "SELECT journey_id, COUNT(*), GROUP_CONCAT(DISTINCT device_id), MIN(started_at), "
            "MAX(stopped_at) FROM sessions WHERE journey_id IS NOT NULL "
            "GROUP BY journey_id ORDER BY MIN(started_at)")
        return [{"journey_id": j, "sessions": n, "devices": sorted(d.split(",")) if d else [],
                 "first_started_at": first, "last_stopped_at": last}
                for j, n, d, first, last in rows]
