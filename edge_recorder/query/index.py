"""The session index: SQLite over the manifests of a store, on either side.

The manifests (JSON beside each MCAP file) are the truth; the index is derived from them
and can always be rebuilt. ``sync`` adds what is new and forgets what is gone, so the
collector, the daemon's store and a copied directory all list the same way. Where the
store is read-only (the daemon's state directory, read by another user), the index is
built in memory instead.

Every manifest is read through :class:`~edge_recorder.documents.Manifest`; one that does not
validate is left out of the index and reported in :attr:`SessionIndex.damaged` (and handed to
``on_damaged``, which the collector uses to quarantine it), so it never breaks a listing.
Sessions are keyed by (device, session id). :class:`Index` is the interface the rest of the
package uses, so another index (PostgreSQL, say) can stand in for SQLite; :class:`Filters` is
what a query asks of either.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from edge_recorder.documents import DocumentError, Manifest
from edge_recorder.errors import UsageError

INDEX_NAME = "index.sqlite"
SCHEMA_VERSION = 2  # 2: keyed by (device_id, session_id); an older index is rebuilt
# folder -> (manifest globs, the "published" flag of what is in it)
STORE_FOLDERS: dict[str, tuple[tuple[str, ...], bool | None]] = {
    "sessions": (("*/*.json", "*.json"), None),  # collector: sessions/{device}/{id}.json
    "outbox": (("*.json",), False),
    "published": (("*.json",), True),  # acknowledged by the broker, awaiting the receipt
    "stored": (("*.json",), True),  # the collector's receipt came
}
SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    rowid INTEGER PRIMARY KEY,
    device_id TEXT NOT NULL, session_id TEXT NOT NULL,
    manifest_path TEXT NOT NULL,
    published INTEGER,            -- NULL on the collector's store
    journey_id TEXT, started_at TEXT, stopped_at TEXT, stop_reason TEXT,
    manifest TEXT NOT NULL,
    UNIQUE (device_id, session_id)
);
CREATE TABLE IF NOT EXISTS labels (
    session INTEGER NOT NULL REFERENCES sessions(rowid) ON DELETE CASCADE,
    label TEXT NOT NULL,
    PRIMARY KEY (session, label)
);
CREATE INDEX IF NOT EXISTS by_journey ON sessions (journey_id, started_at);
CREATE INDEX IF NOT EXISTS by_device ON sessions (device_id, started_at);
CREATE INDEX IF NOT EXISTS by_start ON sessions (started_at);
CREATE INDEX IF NOT EXISTS by_label ON labels (label);
"""


def manifests_on_disk(store: Path) -> Iterator[tuple[Path, bool | None]]:
    """Every manifest in a store's folders, with the "published" flag of its folder."""
    for name, (globs, flag) in STORE_FOLDERS.items():
        folder = store / name
        for pattern in globs:
            for path in folder.glob(pattern):
                if not path.name.startswith("."):
                    yield path, flag


RARITY_PROBE = 100_000  # label-index entries looked at, at most, to find the rarest label
SYNC_BATCH = 1000  # manifests indexed per transaction while catching up with a store


def index_new(index: Index, found: list[tuple[Path, bool | None]],
              on_damaged: DamagedHandler | None) -> list[tuple[Path, str]]:
    """Read, validate and index manifests not yet indexed, a batch per transaction; return
    the damaged ones (each also given to ``on_damaged``), which are left out."""
    damaged: list[tuple[Path, str]] = []
    batch: list[tuple[Path, bool | None, Manifest]] = []
    for path, flag in found:
        try:
            batch.append((path, flag, Manifest.from_json(path.read_bytes())))
        except FileNotFoundError:
            continue  # moved meanwhile (outbox -> published): the next sync sees it
        except (OSError, DocumentError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
            damaged.append((path, reason))
            if on_damaged is not None:
                on_damaged(path, reason)
        if len(batch) >= SYNC_BATCH:
            index.add_many(batch)
            batch = []
    if batch:
        index.add_many(batch)
    return damaged


class Entry:
    """One indexed session: its manifest, its file, and (on a device) whether published.

    From an index the manifest comes as the JSON the index stored after validating it; it
    is parsed into a :class:`Manifest` only when asked for, so a listing of 10⁴ sessions
    as JSON does not re-validate 10⁴ manifests (~0.2 ms each)."""

    __slots__ = ("_manifest", "_json", "path", "published")

    def __init__(self, manifest: Manifest | str, path: Path, published: bool | None) -> None:
        self._manifest = manifest if isinstance(manifest, Manifest) else None
        self._json = manifest if isinstance(manifest, str) else None
        self.path = path
        self.published = published  # None on the collector's store

    @property
    def manifest(self) -> Manifest:
        if self._manifest is None:
            assert self._json is not None
            self._manifest = Manifest.from_json(self._json)
        return self._manifest

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Entry) and (self.manifest, self.path, self.published) == \
            (other.manifest, other.path, other.published)

    def __repr__(self) -> str:
        return f"Entry({self.path!s}, published={self.published})"

    @property
    def state(self) -> str | None:
        """On a device's store, the folder the session is in (outbox, published, stored):
        its state. None on the collector's store."""
        return None if self.published is None else self.path.parent.name

    def as_json(self) -> dict[str, Any]:
        manifest = self._manifest.to_dict() if self._manifest is not None else \
            json.loads(self._json or "{}")  # written by Manifest.to_json after validation
        doc = dict(manifest, path=str(self.path))
        if self.published is not None:
            doc["published"] = self.published
            doc["state"] = self.state
        return doc


DamagedHandler = Callable[[Path, str], None]


@dataclass(frozen=True)
class Filters:
    """Which sessions a query wants: every one of ``labels``, the journey and device given,
    a start in [since, until) (ISO 8601 UTC, as manifests write it). None filters nothing,
    so ``Filters()`` wants every session. The labels are kept once each, in the order given.
    """

    labels: tuple[str, ...] = ()
    journey: str | None = None
    device: str | None = None
    since: str | None = None
    until: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", tuple(dict.fromkeys(self.labels)))

    def comparisons(self) -> Iterator[tuple[str, str, str]]:
        """``(column, operator, value)`` for each filter besides the labels that is set: the
        one place that says which column each filter compares, and how."""
        for column, op, value in (("journey_id", "=", self.journey),
                                  ("device_id", "=", self.device),
                                  ("started_at", ">=", self.since),
                                  ("started_at", "<", self.until)):
            if value is not None:
                yield column, op, value


NO_FILTERS = Filters()


class Index(Protocol):
    """What the collector, the CLI and the console need from an index of stored sessions."""

    damaged: list[tuple[Path, str]]

    def add(self, manifest_path: Path, published: bool | None,
            manifest: Manifest | None = None) -> None: ...

    def add_many(self, items: Iterable[tuple[Path, bool | None, Manifest]]) -> None: ...

    def sync(self) -> None: ...

    def select(self, filters: Filters = NO_FILTERS, *, sort: str = "started_at",
               descending: bool = False, limit: int | None = None,
               offset: int = 0) -> list[Entry]:
        """The sessions ``filters`` wants, ordered by ``sort`` (one of :data:`SORT_KEYS`, ties
        by session id and device, byte order, no value lowest), then ``limit`` rows from
        ``offset``."""
        ...

    def count(self, filters: Filters = NO_FILTERS) -> int:
        """How many sessions :meth:`select` returns for these filters when given no limit."""
        ...

    def distinct(self, what: str) -> list[str]:
        """Every value in use of ``"labels"`` or ``"devices"``, sorted."""
        ...

    def version(self) -> tuple[int, int]:
        """A value that changes whenever a session is added, re-indexed or dropped."""
        ...

    def find(self, session_id: str, device: str | None = None) -> Entry:
        """The one session with this id (and device); :class:`UsageError` if none or
        several."""
        ...

    def journeys(self) -> list[dict[str, Any]]: ...

    def close(self) -> None: ...

    def __enter__(self) -> Index: ...

    def __exit__(self, *exc: object) -> None: ...


def add_one(index: Index, manifest_path: Path, published: bool | None,
            manifest: Manifest | None = None) -> None:
    """Index one manifest (read and validated from ``manifest_path`` unless given): the
    ``add`` of every index, a batch of one for its ``add_many``."""
    if manifest is None:
        manifest = Manifest.from_json(manifest_path.read_bytes())
    index.add_many([(manifest_path, published, manifest)])


class SessionIndex:
    def __init__(self, store: Path, *, check_same_thread: bool = True,
                 on_damaged: DamagedHandler | None = None) -> None:
        self.store = store
        self.on_damaged = on_damaged
        self.damaged: list[tuple[Path, str]] = []  # manifests the last sync could not use
        self.folders = [(store / name, globs, flag)
                        for name, (globs, flag) in STORE_FOLDERS.items()
                        if (store / name).is_dir()]
        if not self.folders:
            raise UsageError(f"{store} is not an edge-recorder store (no sessions/, outbox/ or "
                             "published/ folder); give the collector's --store or the daemon's "
                             "storage.dir")
        try:
            self.db = sqlite3.connect(store / INDEX_NAME, timeout=10,
                                      check_same_thread=check_same_thread)
            self._create()
        except sqlite3.OperationalError:  # read-only store: index in memory
            self.db = sqlite3.connect(":memory:", check_same_thread=check_same_thread)
            self._create()
        self.db.execute("PRAGMA foreign_keys = ON")

    def _create(self) -> None:
        (version,) = self.db.execute("PRAGMA user_version").fetchone()
        if version != SCHEMA_VERSION:  # derived data: an older layout is rebuilt
            with self.db:
                self.db.execute("DROP TABLE IF EXISTS labels")
                self.db.execute("DROP TABLE IF EXISTS sessions")
                self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> SessionIndex:
        self.sync()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- keeping it in step with the manifests ------------------------------------------
    add = add_one

    def add_many(self, items: Iterable[tuple[Path, bool | None, Manifest]]) -> None:
        """Index many validated manifests in one transaction (a rebuild, a bulk load)."""
        with self.db:
            for manifest_path, published, m in items:
                self.db.execute("DELETE FROM sessions WHERE device_id = ? AND session_id = ?",
                                (m.device_id, m.session_id))
                cursor = self.db.execute(
                    "INSERT INTO sessions (device_id, session_id, manifest_path, published, "
                    "journey_id, started_at, stopped_at, stop_reason, manifest) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (m.device_id, m.session_id, str(manifest_path), published, m.journey_id,
                     m.started_at, m.stopped_at, m.stop_reason, m.to_json().decode()))
                self.db.executemany("INSERT OR IGNORE INTO labels VALUES (?, ?)",
                                    [(cursor.lastrowid, label) for label in m.labels])

    def sync(self) -> None:
        """Index new manifests, re-index moved ones (outbox → published), drop vanished ones.

        A manifest that does not validate is not indexed: it is listed in ``damaged`` and
        given to ``on_damaged`` (the collector quarantines it)."""
        on_disk = {str(path): (path, flag) for path, flag in manifests_on_disk(self.store)}
        known = {row[0] for row in self.db.execute("SELECT manifest_path FROM sessions")}
        for gone in known - on_disk.keys():
            with self.db:
                self.db.execute("DELETE FROM sessions WHERE manifest_path = ?", (gone,))
        self.damaged = index_new(self, [on_disk[k] for k in sorted(on_disk.keys() - known)],
                                 self.on_damaged)

    # --- queries --------------------------------------------------------------------------
    def _rarest_first(self, labels: tuple[str, ...]) -> list[str]:
        """The labels, the one on fewest sessions first (counted up to RARITY_PROBE each:
        a bounded look at the label index, enough to rank them)."""
        if len(labels) < 2:
            return list(labels)
        counts = {label: self.db.execute(
            "SELECT count(*) FROM (SELECT 1 FROM labels WHERE label = ? LIMIT ?)",
            (label, RARITY_PROBE)).fetchone()[0] for label in labels}
        return sorted(labels, key=counts.__getitem__)

    def select(self, filters: Filters = NO_FILTERS, *, sort: str = "started_at",
               descending: bool = False, limit: int | None = None,
               offset: int = 0) -> list[Entry]:
        """The sessions ``filters`` wants.

        Ordered by ``sort`` (one of :data:`SORT_KEYS`; ties by session id and device), then
        ``limit`` rows from ``offset``: a page of a large store without reading the rest.
        """
        if sort not in SORT_KEYS:
            raise UsageError(f"cannot sort by {sort!r}: choose from {', '.join(SORT_KEYS)}")
        where, args = self._where(filters)
        direction = "DESC" if descending else "ASC"
        sql = f"SELECT manifest, manifest_path, published FROM sessions{where} ORDER BY " \
              f"{sort} {direction}, session_id {direction}, device_id {direction}"
        if limit is not None:
            sql += " LIMIT ? OFFSET ?"
            args += [limit, offset]
        return [Entry(m, Path(p).with_suffix(".mcap"),
                      None if pub is None else bool(pub))
                for m, p, pub in self.db.execute(sql, args)]

    def _where(self, filters: Filters) -> tuple[str, list[Any]]:
        """The WHERE clause (with its leading space, or empty) and its arguments.

        The rarest label drives (its sessions found through by_label); the others are
        primary-key probes per candidate, so --label a --label b costs what the rarer costs.
        """
        where, args = [], []
        for k, label in enumerate(self._rarest_first(filters.labels)):
            where.append("rowid IN (SELECT session FROM labels WHERE label = ?)" if k == 0 else
                         "EXISTS (SELECT 1 FROM labels WHERE session = sessions.rowid AND "
                         "label = ?)")
            args.append(label)
        for column, op, value in filters.comparisons():
            where.append(f"{column} {op} ?")
            args.append(value)
        return (" WHERE " + " AND ".join(where) if where else ""), args

    def count(self, filters: Filters = NO_FILTERS) -> int:
        """How many sessions :meth:`select` returns for these filters when given no limit."""
        where, args = self._where(filters)
        (n,) = self.db.execute(f"SELECT COUNT(*) FROM sessions{where}", args).fetchone()
        return int(n)

    def distinct(self, what: str) -> list[str]:
        """Every value in use of ``"labels"`` or ``"devices"``, sorted."""
        sql = {"labels": "SELECT DISTINCT label FROM labels ORDER BY label",
               "devices": "SELECT DISTINCT device_id FROM sessions ORDER BY device_id"}[what]
        return [row[0] for row in self.db.execute(sql)]

    def version(self) -> tuple[int, int]:
        """Changes whenever a session is added, re-indexed or dropped (cheap to poll)."""
        n, last = self.db.execute("SELECT COUNT(*), MAX(rowid) FROM sessions").fetchone()
        return int(n), int(last or 0)

    def find(self, session_id: str, device: str | None = None) -> Entry:
        """The one session with this id (and device, where ids repeat across devices)."""
        sql = "SELECT manifest, manifest_path, published FROM sessions WHERE session_id = ?"
        args = [session_id]
        if device is not None:
            sql += " AND device_id = ?"
            args.append(device)
        return the_one([Entry(m, Path(p).with_suffix(".mcap"),
                              None if pub is None else bool(pub))
                        for m, p, pub in self.db.execute(sql, args)],
                       session_id, device, self.store)

    def journeys(self) -> list[dict[str, Any]]:
        """One row per journeyId: sessions, devices, first start and last stop."""
        rows = self.db.execute(
            "SELECT journey_id, COUNT(*), GROUP_CONCAT(DISTINCT device_id), MIN(started_at), "
            "MAX(stopped_at) FROM sessions WHERE journey_id IS NOT NULL "
            "GROUP BY journey_id ORDER BY MIN(started_at), journey_id")
        return [{"journey_id": j, "sessions": n, "devices": sorted(d.split(",")) if d else [],
                 "first_started_at": first, "last_stopped_at": last}
                for j, n, d, first, last in rows]


SORT_KEYS = ("started_at", "stopped_at", "device_id", "journey_id", "stop_reason", "session_id")


def the_one(entries: list[Entry], session_id: str, device: str | None, store: Path) -> Entry:
    """``find``'s answer: the single match, else a :class:`UsageError` saying what to do."""
    if not entries:
        where = f" from device {device}" if device else ""
        raise UsageError(f"no session {session_id}{where} in {store} "
                         "(see: edge-recorder sessions list --store ...)")
    if len(entries) > 1:
        devices = sorted(e.manifest.device_id for e in entries)
        raise UsageError(f"session id {session_id} is on several devices "
                         f"({', '.join(devices)}); add --device")
    return entries[0]


def open_index(store: Path, url: str | None = None, *, check_same_thread: bool = True,
               on_damaged: DamagedHandler | None = None) -> Index:
    """The index of ``store``: its own SQLite file, or the PostgreSQL database at ``url``."""
    if url is None or url == "":
        return SessionIndex(store, check_same_thread=check_same_thread, on_damaged=on_damaged)
    if url.startswith(("postgresql://", "postgres://")):
        if not any((store / name).is_dir() for name in STORE_FOLDERS):
            raise UsageError(f"{store} is not an edge-recorder store (no sessions/, outbox/ or "
                             "published/ folder)")
        from edge_recorder.query.pg_index import PostgresIndex
        return PostgresIndex(url, store, on_damaged=on_damaged)
    raise UsageError(f"--index {url.split('://')[0]}://…: only postgresql://… is supported "
                     "(without --index, the store's own SQLite file is used)")
