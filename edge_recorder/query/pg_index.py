"""The session index on PostgreSQL, for a fleet: several collectors, one index.

The same :class:`~edge_recorder.query.index.Index` as the SQLite file, so ``collect``,
``sessions list``, ``journeys list``, ``export``/``plot`` by id and ``load_sessions`` give the
same answers with ``--index postgresql://…``. The manifests in the store stay the truth;
this is derived from them and ``sync`` rebuilds what is missing.

- Writers are safe together: every write is one upsert keyed by (device, session id), so
  two collectors indexing the same session leave one row, and no write reads first.
- Labels are a ``text[]`` column with a GIN index: ``--label a --label b`` is
  ``labels @> '{a,b}'``, an index scan at 10⁶ sessions.
- The schema is created or migrated at connect, under an advisory lock, so collectors
  starting together do not race each other's ``CREATE``.
- Paths are stored relative to the store, so members that mount the shared store at
  different points agree. One index serves one store.

psycopg 3 is an optional extra (``pip install 'edge-recorder[postgres]'``); the daemon never
imports this module.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from edge_recorder.documents import Manifest
from edge_recorder.errors import UsageError
from edge_recorder.query.index import (
    NO_FILTERS,
    SORT_KEYS,
    DamagedHandler,
    Entry,
    Filters,
    add_one,
    index_new,
    manifests_on_disk,
    the_one,
)

SCHEMA_VERSION = 1
MIGRATION_LOCK = 0x6564_6765  # "edge": the advisory lock the schema is changed under
SCHEMA = [
    """CREATE TABLE IF NOT EXISTS edge_recorder_schema (version INTEGER NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS edge_sessions (
        device_id TEXT NOT NULL,
        session_id TEXT NOT NULL,
        manifest_path TEXT NOT NULL,      -- relative to the store when inside it
        published BOOLEAN,                -- NULL on the collector's store
        journey_id TEXT, started_at TEXT NOT NULL, stopped_at TEXT NOT NULL,
        stop_reason TEXT NOT NULL,
        labels TEXT[] NOT NULL,
        manifest TEXT NOT NULL,           -- the validated manifest, as the store holds it
        PRIMARY KEY (device_id, session_id)
    )""",
    # fastupdate off: a GIN index's pending list is scanned linearly by every query until
    # a vacuum merges it (8 ms for 10 hits at 10⁵ sessions after a bulk load, measured);
    # without it each insert updates the index at once, and --label stays an index lookup
    "CREATE INDEX IF NOT EXISTS edge_sessions_labels ON edge_sessions USING GIN (labels) "
    "WITH (fastupdate = off)",
    "ALTER INDEX edge_sessions_labels SET (fastupdate = off)",
    "CREATE INDEX IF NOT EXISTS edge_sessions_journey ON edge_sessions (journey_id, started_at)",
    "CREATE INDEX IF NOT EXISTS edge_sessions_device ON edge_sessions (device_id, started_at)",
    "CREATE INDEX IF NOT EXISTS edge_sessions_start ON edge_sessions (started_at, session_id)",
    "CREATE INDEX IF NOT EXISTS edge_sessions_path ON edge_sessions (manifest_path)",
]
UPSERT = """
INSERT INTO edge_sessions (device_id, session_id, manifest_path, published, journey_id,
                           started_at, stopped_at, stop_reason, labels, manifest)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (device_id, session_id) DO UPDATE SET
    manifest_path = EXCLUDED.manifest_path, published = EXCLUDED.published,
    journey_id = EXCLUDED.journey_id, started_at = EXCLUDED.started_at,
    stopped_at = EXCLUDED.stopped_at, stop_reason = EXCLUDED.stop_reason,
    labels = EXCLUDED.labels, manifest = EXCLUDED.manifest
"""


def _connect(url: str) -> Any:
    try:
        import psycopg
    except ImportError as e:
        raise UsageError("--index postgresql://… needs psycopg: "
                         "pip install 'edge-recorder[postgres]'") from e
    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=10)
    except psycopg.Error as e:
        raise UsageError(f"cannot open the index {_redacted(url)}: "
                         f"{str(e).strip().splitlines()[0]}") from e


def _redacted(url: str) -> str:
    """The URL without its password, for messages."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        userinfo, _, host = rest.rpartition("@")
        rest = f"{userinfo.split(':', 1)[0]}:***@{host}" if ":" in userinfo else rest
    return f"{scheme}{sep}{rest}"


class PostgresIndex:
    """:class:`~edge_recorder.query.index.Index` on a PostgreSQL database."""

    def __init__(self, url: str, store: Path, *, on_damaged: DamagedHandler | None = None,
                 sync: bool = True) -> None:
        self.url = url
        self.store = store
        self.on_damaged = on_damaged
        self.damaged: list[tuple[Path, str]] = []
        self._sync_on_enter = sync
        self._lock = threading.Lock()  # one connection, used by the collector's threads
        self.conn = _connect(url)
        self._migrate()

    def _migrate(self) -> None:
        with self.conn.transaction():
            self.conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            for statement in SCHEMA:
                self.conn.execute(statement)
            row = self.conn.execute("SELECT max(version) FROM edge_recorder_schema").fetchone()
            if row is None or row[0] is None:
                self.conn.execute("INSERT INTO edge_recorder_schema VALUES (%s)",
                                  (SCHEMA_VERSION,))
            elif row[0] > SCHEMA_VERSION:
                raise UsageError(f"the index {_redacted(self.url)} has schema version {row[0]}; "
                                 f"this edge-recorder knows up to {SCHEMA_VERSION}: upgrade it")

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> PostgresIndex:
        if self._sync_on_enter:
            self.sync()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _relative(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.store))
        except ValueError:
            return str(path)

    # --- keeping it in step with the manifests ------------------------------------------
    add = add_one

    def add_many(self, items: Iterable[tuple[Path, bool | None, Manifest]]) -> None:
        """Upsert many validated manifests in one transaction (a rebuild, a bulk load)."""
        rows = [(m.device_id, m.session_id, self._relative(path), published, m.journey_id,
                 m.started_at, m.stopped_at, m.stop_reason, list(m.labels),
                 m.to_json().decode()) for path, published, m in items]
        with self._lock, self.conn.transaction(), self.conn.cursor() as cursor:
            cursor.executemany(UPSERT, rows)

    def sync(self) -> None:
        """Index manifests not yet indexed, drop rows whose manifest is gone."""
        on_disk = {self._relative(path): (path, flag)
                   for path, flag in manifests_on_disk(self.store)}
        with self._lock:
            known = {row[0] for row in
                     self.conn.execute("SELECT manifest_path FROM edge_sessions")}
            gone = sorted(known - on_disk.keys())
            if gone:
                self.conn.execute("DELETE FROM edge_sessions WHERE manifest_path = ANY(%s)",
                                  (gone,))
        self.damaged = index_new(self, [on_disk[k] for k in sorted(on_disk.keys() - known)],
                                 self.on_damaged)

    # --- queries --------------------------------------------------------------------------
    def select(self, filters: Filters = NO_FILTERS, *, sort: str = "started_at",
               descending: bool = False, limit: int | None = None,
               offset: int = 0) -> list[Entry]:
        """The sessions ``filters`` wants, ordered by ``sort`` (ties by session id and device),
        ``limit`` rows from ``offset``."""
        if sort not in SORT_KEYS:
            raise UsageError(f"cannot sort by {sort!r}: choose from {', '.join(SORT_KEYS)}")
        where, args = _where(filters)
        # byte order with NULLs lowest, as SQLite compares, so both indexes list in one order
        direction = "DESC NULLS LAST" if descending else "ASC NULLS FIRST"
        sql = f"SELECT manifest, manifest_path, published FROM edge_sessions{where} ORDER BY " \
              f'{sort} COLLATE "C" {direction}, session_id COLLATE "C" {direction}, ' \
              f'device_id COLLATE "C" {direction}'
        if limit is not None:
            sql += " LIMIT %s OFFSET %s"
            args += [limit, offset]
        with self._lock:
            rows = self.conn.execute(sql, args).fetchall()
        return [Entry(m, (self.store / p).with_suffix(".mcap"), pub)
                for m, p, pub in rows]

    def count(self, filters: Filters = NO_FILTERS) -> int:
        """How many sessions :meth:`select` returns for these filters when given no limit."""
        where, args = _where(filters)
        with self._lock:
            (n,) = self.conn.execute(f"SELECT count(*) FROM edge_sessions{where}",
                                     args).fetchone()
        return int(n)

    def distinct(self, what: str) -> list[str]:
        """Every value in use of ``"labels"`` or ``"devices"``, sorted."""
        sql = {"labels": "SELECT v FROM (SELECT DISTINCT unnest(labels) AS v FROM edge_sessions) "
                         'AS t ORDER BY v COLLATE "C"',
               "devices": 'SELECT device_id FROM edge_sessions GROUP BY device_id ORDER BY '
                          'device_id COLLATE "C"'}[what]
        with self._lock:
            return [row[0] for row in self.conn.execute(sql).fetchall()]

    def version(self) -> tuple[int, int]:
        """Changes whenever a session is added, re-indexed or dropped (cheap to poll): the
        row count and the newest row version's transaction id."""
        with self._lock:
            n, last = self.conn.execute(
                "SELECT count(*), coalesce(max(xmin::text::bigint), 0) FROM edge_sessions"
            ).fetchone()
        return int(n), int(last)

    def find(self, session_id: str, device: str | None = None) -> Entry:
        """The one session with this id (and device, where ids repeat across devices)."""
        sql = ("SELECT manifest, manifest_path, published FROM edge_sessions "
               "WHERE session_id = %s")
        args: list[object] = [session_id]
        if device is not None:
            sql += " AND device_id = %s"
            args.append(device)
        with self._lock:
            rows = self.conn.execute(sql, args).fetchall()
        return the_one([Entry(m, (self.store / p).with_suffix(".mcap"), pub)
                        for m, p, pub in rows], session_id, device, self.store)

    def journeys(self) -> list[dict[str, Any]]:
        """One row per journeyId: sessions, devices, first start and last stop."""
        with self._lock:
            rows = self.conn.execute(
                "SELECT journey_id, count(*), array_agg(DISTINCT device_id), min(started_at), "
                "max(stopped_at) FROM edge_sessions WHERE journey_id IS NOT NULL "
                "GROUP BY journey_id ORDER BY min(started_at), journey_id").fetchall()
        return [{"journey_id": j, "sessions": n, "devices": sorted(d), "first_started_at": first,
                 "last_stopped_at": last} for j, n, d, first, last in rows]


def _where(filters: Filters) -> tuple[str, list[object]]:
    """The WHERE clause (with its leading space, or empty) and its arguments for the filters."""
    where: list[str] = []
    args: list[object] = []
    if filters.labels:
        where.append("labels @> %s::text[]")
        args.append(list(filters.labels))
    for column, op, value in filters.comparisons():
        where.append(f"{column} {op} %s")
        args.append(value)
    return (" WHERE " + " AND ".join(where) if where else ""), args
