"""The console's web application: read-only pages over a collector store and its index.

Routes (every one GET or HEAD; anything else is 405):

``/sessions``                      the sessions table: filters, sorting, paging, in the URL
``/sessions/live``                 the same page's rows when the index changed (polled), else 204
``/journeys``                      journeys, each with its sessions on a time line
``/sessions/{device}/{id}``        one session: manifest, gaps, plots, downloads
``/sessions/{device}/{id}/series`` plot data (min/max envelope) for a time window, JSON
``/sessions/{device}/{id}/download/{format}``  the session file or an export of it
``/static/…``                      uPlot and the console's own CSS/JS (shipped in the package)

Safe by default: no route writes; every query string is parsed strictly (known names only,
bounded sizes, valid UTF-8, printable) and anything else is a 400 before any work; device
and session ids must match :data:`edge_recorder.documents.ID_RE`; files are found through
the index and served only when they resolve inside the store; with a token, every request
must carry it (header ``Authorization: Bearer …``, or the cookie set by ``?token=…``);
a request whose ``Host`` is not one of this console's names is a 400 (a page from another
site that rebinds its name to 127.0.0.1 gets nothing); at most :data:`MAX_EXPORTS` exports
are written at a time, a download beyond them is a 503 with ``Retry-After``.
"""

from __future__ import annotations

import hmac
import importlib.util
import ipaddress
import logging
import re
import tempfile
import threading
import time
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from math import ceil
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

import jinja2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edge_recorder.console.series import MAX_BUCKETS, envelope
from edge_recorder.documents import Manifest, valid_id
from edge_recorder.errors import EdgeRecorderError, SessionFileError, UsageError
from edge_recorder.query.index import Entry, Filters, Index
from edge_recorder.query.times import parse_time
from edge_recorder.recording.labels import MAX_LABEL_CHARS, MAX_LABELS

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
MAX_QUERY_BYTES = 4096  # a longer query string is refused before it is parsed
MAX_FIELDS = 40
MAX_VALUE_CHARS = 128
PAGE_SIZES = (25, 50, 100, 200)
MAX_PAGE = 10_000_000
JOURNEYS_PER_PAGE = 25
FIRST_POINTS = 1400  # buckets of a session's first plot: about its width in pixels
SORTS = {"start": "started_at", "stop": "stopped_at", "device": "device_id",
         "journey": "journey_id", "reason": "stop_reason", "id": "session_id"}
COOKIE = "edge_recorder_console"
SYNC_MIN_INTERVAL_S = 2.0  # the index is re-read from the manifests at most this often...
SYNC_COST_FACTOR = 20  # ...and never more than 1/20 of the time (a large store costs more)
SERIES_CACHE_ENTRIES = 16
MAX_EXPORTS = 2  # exports written at once (each a temporary file and a worker thread)...
EXPORT_RETRY_AFTER_S = 5  # ...a download beyond them is told to come back after this
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")  # always this console's names
HOSTNAME_RE = re.compile(r"^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
                         r"(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")
HOST_HEADER_RE = re.compile(r"^(?:\[(?P<ipv6>[0-9a-fA-F:.]+)\]|(?P<name>[^\[\]:/@\s]+))"
                            r"(?::[0-9]{1,5})?$")
SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'self'; img-src 'self' data:; "
                                 b"frame-ancestors 'none'; form-action 'self'; base-uri 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


class BadRequest(HTTPException):
    def __init__(self, detail: str) -> None:
        super().__init__(400, detail)


# --- the index, shared by the request threads ---------------------------------------------
class Catalog:
    """The index behind a lock, kept in step with the store by a background thread.

    The collector indexes what it stores; the sync here catches what it cannot (a copied
    store, a collector that was not running), at a pace that keeps its cost small.
    """

    def __init__(self, index: Index, store: Path) -> None:
        self.index = index
        self.store = store.resolve()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @contextmanager
    def use(self) -> Iterator[Index]:
        with self._lock:
            yield self.index

    def sync(self) -> float:
        started = time.monotonic()
        with self._lock:
            self.index.sync()
        return time.monotonic() - started

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="console-sync", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        cost_s = 0.0
        while not self._stop.wait(max(SYNC_MIN_INTERVAL_S, SYNC_COST_FACTOR * cost_s)):
            try:
                cost_s = self.sync()
            except Exception as exc:  # a bad moment on disk must not end the updates
                log.warning("console: index sync failed (%s: %s); retrying", type(exc).__name__,
                            exc)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        with self._lock:
            self.index.close()

    def file_of(self, entry: Entry) -> Path:
        """The session file, provided it lies inside the store (never a path outside it)."""
        path = entry.path.resolve()
        if not path.is_relative_to(self.store) or not path.is_file():
            raise HTTPException(404, "the session file is not in the store")
        return path


# --- strict query strings ------------------------------------------------------------------
def query(request: Request, allowed: set[str] | frozenset[str],
          repeatable: frozenset[str] = frozenset()) -> dict[str, list[str]]:
    """The query string as ``{name: [values]}``; 400 for anything unexpected."""
    raw = request.scope.get("query_string", b"")
    if len(raw) > MAX_QUERY_BYTES:
        raise BadRequest(f"query string longer than {MAX_QUERY_BYTES} bytes")
    try:
        pairs = parse_qsl(raw.decode("ascii"), keep_blank_values=True, strict_parsing=False,
                          errors="strict", max_num_fields=MAX_FIELDS)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequest(f"unreadable query string ({type(exc).__name__})") from None
    out: dict[str, list[str]] = {}
    for name, value in pairs:
        if name not in allowed:
            raise BadRequest(f"unknown parameter {name[:40]!r}; known: "
                             f"{', '.join(sorted(allowed)) or 'none'}")
        if len(value) > MAX_VALUE_CHARS or not value.isprintable():
            raise BadRequest(f"parameter {name}: at most {MAX_VALUE_CHARS} printable characters")
        if name in out and name not in repeatable:
            raise BadRequest(f"parameter {name} given twice")
        out.setdefault(name, []).append(value)
    return out


def _one(q: dict[str, list[str]], name: str) -> str | None:
    value = q.get(name, [""])[0].strip()
    return value or None


def _int(q: dict[str, list[str]], name: str, default: int, low: int, high: int) -> int:
    text = _one(q, name)
    if text is None:
        return default
    if not text.isdigit() or not low <= int(text) <= high:
        raise BadRequest(f"parameter {name}: a whole number {low}-{high}")
    return int(text)


def _float(q: dict[str, list[str]], name: str) -> float | None:
    text = _one(q, name)
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise BadRequest(f"parameter {name}: a number of seconds") from None
    if value != value or abs(value) > 1e9:
        raise BadRequest(f"parameter {name}: a finite number of seconds")
    return value


@dataclass(frozen=True)
class FilterForm:
    """The sessions page's filters as the query string gives them (the same meaning as
    ``sessions list``'s options); ``since``/``until`` stay as typed (an ISO time or an age),
    so the page's links keep an age an age. :meth:`filters` resolves them for the index."""

    labels: tuple[str, ...] = ()
    journey: str | None = None
    device: str | None = None
    since: str | None = None
    until: str | None = None

    NAMES = frozenset({"label", "journey", "device", "since", "until"})

    @classmethod
    def parse(cls, q: dict[str, list[str]]) -> FilterForm:
        labels = tuple(dict.fromkeys(v.strip() for v in q.get("label", []) if v.strip()))
        if len(labels) > MAX_LABELS or any(len(x) > MAX_LABEL_CHARS for x in labels):
            raise BadRequest(f"at most {MAX_LABELS} labels of {MAX_LABEL_CHARS} characters")
        device = _one(q, "device")
        if device is not None and not valid_id(device):
            raise BadRequest("device: not a valid id")
        return cls(labels, _one(q, "journey"), device, _one(q, "since"), _one(q, "until"))

    def filters(self) -> Filters:
        """The index's filters, times resolved now; a time that does not parse is a 400."""
        try:
            since = parse_time(self.since) if self.since else None
            until = parse_time(self.until) if self.until else None
        except UsageError as exc:
            raise BadRequest(str(exc)) from None
        return Filters(self.labels, self.journey, self.device, since, until)

    def params(self) -> list[tuple[str, str]]:
        out = [("label", x) for x in self.labels]
        out += [(k, v) for k, v in (("journey", self.journey), ("device", self.device),
                                    ("since", self.since), ("until", self.until)) if v]
        return out


@dataclass(frozen=True)
class Row:
    """One line of the sessions table."""

    device: str
    session_id: str
    started_at: str
    duration_s: float
    stop_reason: str
    labels: tuple[str, ...]
    journey: str | None
    samples: int
    dropped: int

    @classmethod
    def of(cls, m: Manifest) -> Row:
        return cls(m.device_id, m.session_id, m.started_at, m.duration_s, m.stop_reason,
                   m.labels, m.journey_id, sum(s.samples for s in m.sensors),
                   sum(s.dropped for s in m.sensors))


def iso_ns(text: str) -> int:
    """``2026-11-26T10:00:00.123456Z`` → ns since the epoch (manifest times are UTC)."""
    whole, _, frac = text.rstrip("Z").partition(".")
    seconds = int(datetime.fromisoformat(whole + "+00:00").timestamp())
    return seconds * 1_000_000_000 + int((frac or "0").ljust(9, "0")[:9])


# --- the application -----------------------------------------------------------------------
def build_app(catalog: Catalog, *, token: str | None = None,
              exporters: dict[str, Exporter] | None = None, hosts: Iterable[str] = (),
              max_exports: int = MAX_EXPORTS) -> ASGIApp:
    """The console over ``catalog``; with ``token``, every request must present it.

    ``hosts``: names (or addresses) besides localhost, 127.0.0.1 and [::1] that a request's
    ``Host`` may carry; any other ``Host`` is a 400.
    """
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined)
    templates = Jinja2Templates(env=env)
    templates.env.filters["qs"] = lambda pairs: urlencode(pairs)
    formats = dict(EXPORTERS if exporters is None else exporters)
    series_cache: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
    cache_lock = threading.Lock()
    exports = threading.BoundedSemaphore(max_exports)

    def page_of(request: Request, name: str, context: dict[str, Any]) -> Response:
        response = templates.TemplateResponse(request, name, context)
        response.headers["cache-control"] = "no-store"
        return response

    def sessions_page_data(q: dict[str, list[str]]) -> dict[str, Any]:
        form = FilterForm.parse(q)
        wanted = form.filters()  # before the other parameters, so a bad time is the 400 given
        sort_key = _one(q, "sort") or "start"
        if sort_key not in SORTS:
            raise BadRequest(f"sort: one of {', '.join(SORTS)}")
        order = _one(q, "order") or ("desc" if sort_key in ("start", "stop") else "asc")
        if order not in ("asc", "desc"):
            raise BadRequest("order: asc or desc")
        per = _int(q, "per", 50, 1, max(PAGE_SIZES))
        if per not in PAGE_SIZES:
            raise BadRequest(f"per: one of {', '.join(map(str, PAGE_SIZES))}")
        page = _int(q, "page", 1, 1, MAX_PAGE)
        with catalog.use() as index:
            total = index.count(wanted)
            entries = index.select(wanted, sort=SORTS[sort_key], descending=order == "desc",
                                   limit=per, offset=(page - 1) * per)
            version = index.version()
            labels, devices = index.distinct("labels"), index.distinct("devices")
        return {"filters": form, "rows": [Row.of(e.manifest) for e in entries],
                "total": total, "page": page, "pages": max(1, ceil(total / per)), "per": per,
                "sort": sort_key, "order": order, "version": f"{version[0]}-{version[1]}",
                "all_labels": labels, "all_devices": devices, "page_sizes": PAGE_SIZES,
                "sorts": SORTS}

    session_params = FilterForm.NAMES | {"sort", "order", "per", "page"}

    async def sessions(request: Request) -> Response:
        q = query(request, session_params, frozenset({"label"}))
        data = await run_in_threadpool(sessions_page_data, q)
        return page_of(request, "sessions.html", data)

    async def sessions_live(request: Request) -> Response:
        q = query(request, session_params | {"v"}, frozenset({"label"}))
        seen = _one(q, "v")
        q.pop("v", None)
        with catalog.use() as index:
            n, last = index.version()
        if seen == f"{n}-{last}":
            return Response(status_code=204, headers={"cache-control": "no-store"})
        data = await run_in_threadpool(sessions_page_data, q)
        rows = templates.get_template("_rows.html").render(data)
        pager = templates.get_template("_pager.html").render(data)
        return JSONResponse({"version": data["version"], "total": data["total"], "rows": rows,
                             "pager": pager}, headers={"cache-control": "no-store"})

    def journeys_data(q: dict[str, list[str]]) -> dict[str, Any]:
        page = _int(q, "page", 1, 1, MAX_PAGE)
        with catalog.use() as index:
            everything = index.journeys()
            everything.reverse()  # the latest first
            shown = everything[(page - 1) * JOURNEYS_PER_PAGE:page * JOURNEYS_PER_PAGE]
            lanes = []
            for j in shown:
                entries = index.select(Filters(journey=j["journey_id"]))
                lanes.append(_lane(j, [Row.of(e.manifest) for e in entries]))
        shown_labels = sorted({b["row"].labels[0] for lane in lanes for b in lane["bars"]
                               if b["row"].labels})
        legend = [(label, label_colour(label)) for label in shown_labels]
        return {"journeys": lanes, "legend": legend, "total": len(everything), "page": page,
                "pages": max(1, ceil(len(everything) / JOURNEYS_PER_PAGE))}

    async def journeys(request: Request) -> Response:
        data = await run_in_threadpool(journeys_data, query(request, {"page"}))
        return page_of(request, "journeys.html", data)

    def find(request: Request) -> Entry:
        device, session_id = request.path_params["device"], request.path_params["session_id"]
        if not valid_id(device) or not valid_id(session_id):
            raise BadRequest("device and session ids are letters, digits, '_' and '-'")
        try:
            with catalog.use() as index:
                return index.find(session_id, device)
        except UsageError:
            raise HTTPException(404, f"no session {session_id} from {device}") from None

    async def session(request: Request) -> Response:
        query(request, set())
        entry = find(request)
        m = entry.manifest
        start_ns = iso_ns(m.started_at)
        gaps = [{"sensor": s.name, "start_s": (g.start_ns - start_ns) / 1e9,
                 "length_s": (g.end_ns - g.start_ns) / 1e9, "lost": g.lost, "reason": g.reason}
                for s in m.sensors for g in s.gaps]
        series_path = str(request.url_for("series", device=m.device_id,
                                          session_id=m.session_id).path)
        plot = {"series": series_path,
                # the whole session at a typical plot width: preloaded with the page, so the
                # server decimates while the browser loads the scripts
                "first": f"{series_path}?points={FIRST_POINTS}",
                "duration_s": (iso_ns(m.stopped_at) - start_ns) / 1e9,
                "trigger_s": m.pre_trigger_s, "gaps": gaps,
                "sensors": [s.name for s in m.sensors]}
        return page_of(request, "session.html", {
            "m": m, "row": Row.of(m), "gaps": gaps, "plot": plot,
            "manifest_json": m.to_dict(), "formats": list(formats),
            "file_bytes": entry.path.stat().st_size if entry.path.exists() else None})

    def series_data(path: Path, m: Manifest, q: dict[str, list[str]]) -> dict[str, Any]:
        start_ns, stop_ns = iso_ns(m.started_at), iso_ns(m.stopped_at)
        lo, hi = _float(q, "from"), _float(q, "to")
        points = _int(q, "points", 1000, 10, MAX_BUCKETS)
        a = start_ns if lo is None else start_ns + round(lo * 1e9)
        b = stop_ns + 1 if hi is None else start_ns + round(hi * 1e9)
        if b <= a:
            raise BadRequest("from must be before to")
        stat = path.stat()
        key = (str(path), stat.st_mtime_ns, stat.st_size, a, b, points)
        with cache_lock:
            if key in series_cache:
                series_cache.move_to_end(key)
                return series_cache[key]  # type: ignore[no-any-return]
        try:
            sensors = envelope(path, a, b, points, start_ns)
        except SessionFileError as exc:
            raise HTTPException(422, str(exc)) from None
        out = {"from": (a - start_ns) / 1e9, "to": (b - start_ns) / 1e9, "sensors": sensors}
        with cache_lock:
            series_cache[key] = out
            while len(series_cache) > SERIES_CACHE_ENTRIES:
                series_cache.popitem(last=False)
        return out

    async def series(request: Request) -> Response:
        q = query(request, {"from", "to", "points"})
        entry = find(request)
        path = catalog.file_of(entry)
        data = await run_in_threadpool(series_data, path, entry.manifest, q)
        return JSONResponse(data, headers={"cache-control": "private, max-age=300"})

    async def download(request: Request) -> Response:
        query(request, set())
        fmt = request.path_params["format"]
        if fmt not in formats:
            raise HTTPException(404, f"no export format {fmt[:40]!r}; offered: "
                                     f"{', '.join(formats)}")
        entry = find(request)
        path = catalog.file_of(entry)
        exporter = formats[fmt]
        if exporter.write is None:  # the file as it is
            return FileResponse(path, media_type=exporter.media_type,
                                filename=f"{entry.manifest.session_id}{exporter.suffix}")
        if not exports.acquire(blocking=False):  # held until the file is sent and deleted
            raise HTTPException(503, f"{max_exports} exports are being written; try again "
                                     f"in {EXPORT_RETRY_AFTER_S} s",
                                headers={"retry-after": str(EXPORT_RETRY_AFTER_S)})
        out: Path | None = None
        try:
            tmp = tempfile.NamedTemporaryFile(prefix="edge-recorder-console-",  # noqa: SIM115
                                              suffix=exporter.suffix, delete=False)
            tmp.close()
            out = Path(tmp.name)
            await run_in_threadpool(exporter.write, path, out)
        except BaseException as exc:
            if out is not None:
                out.unlink(missing_ok=True)
            exports.release()
            if isinstance(exc, (EdgeRecorderError, OSError)):
                raise HTTPException(422, f"export failed: {type(exc).__name__}: {exc}"
                                    ) from None
            raise
        return TemporaryFileResponse(out, exports.release, media_type=exporter.media_type,
                                     filename=f"{entry.manifest.session_id}{exporter.suffix}")

    async def home(request: Request) -> Response:
        query(request, set())
        return RedirectResponse("/sessions", status_code=302)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return PlainTextResponse(f"{exc.status_code}: {exc.detail}\n",
                                 status_code=exc.status_code,
                                 headers={**(exc.headers or {}), "cache-control": "no-store"})

    routes = [
        Route("/", home),
        Route("/sessions", sessions, name="sessions"),
        Route("/sessions/live", sessions_live),
        Route("/journeys", journeys, name="journeys"),
        Route("/sessions/{device}/{session_id}", session, name="session"),
        Route("/sessions/{device}/{session_id}/series", series, name="series"),
        Route("/sessions/{device}/{session_id}/download/{format}", download, name="download"),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: on_http_error})
    app.add_middleware(GZipMiddleware, minimum_size=2048)
    return Guard(app, token, hosts)


# --- exports ---------------------------------------------------------------------------------
class TemporaryFileResponse(FileResponse):
    """A file sent once, then deleted and ``done()`` called, even if the client went away."""

    def __init__(self, path: Path, done: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        self.done = done

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            Path(self.path).unlink(missing_ok=True)
            self.done()


@dataclass(frozen=True)
class Exporter:
    """A download: ``write(session_file, out_path)``, or None to send the file as it is."""

    media_type: str
    suffix: str
    write: Callable[[Path, Path], Any] | None = None


def _write_csv(session_file: Path, out: Path) -> None:
    from edge_recorder.query.export import write_csv
    from edge_recorder.sessionfile import SessionFile

    with open(out, "w", newline="") as f:
        write_csv(SessionFile(session_file), f)


def _write_parquet(session_file: Path, out: Path) -> None:
    from edge_recorder.query.export import write_parquet
    from edge_recorder.sessionfile import SessionFile

    with open(out, "wb") as f:
        write_parquet(SessionFile(session_file), f)


def _write_edge_impulse(session_file: Path, out: Path) -> None:
    """The data acquisition files (one per sensor and gap-free run) in one ZIP."""
    from edge_recorder.query.edge_impulse import write_edge_impulse
    from edge_recorder.sessionfile import SessionFile

    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as z:
        write_edge_impulse(SessionFile(session_file), lambda name: z.open(name, "w"))


def _write_ros2_imu(session_file: Path, out: Path) -> None:
    from edge_recorder.query.ros2_imu import write_ros2_imu
    from edge_recorder.sessionfile import SessionFile

    with open(out, "wb") as f:
        write_ros2_imu(SessionFile(session_file), f)


EXPORTERS: dict[str, Exporter] = {
    "mcap": Exporter("application/octet-stream", ".mcap"),
    "csv": Exporter("text/csv; charset=utf-8", ".csv", _write_csv),
    "edge-impulse": Exporter("application/zip", ".edge-impulse.zip", _write_edge_impulse),
    "ros2-imu": Exporter("application/octet-stream", ".ros2-imu.mcap", _write_ros2_imu),
}
if importlib.util.find_spec("pyarrow") is not None:  # the [data] extra
    EXPORTERS["parquet"] = Exporter("application/vnd.apache.parquet", ".parquet",
                                    _write_parquet)


def _lane(journey: dict[str, Any], rows: list[Row]) -> dict[str, Any]:
    """A journey's sessions placed on its time line: left and width in % of its span."""
    t0 = iso_ns(journey["first_started_at"])
    t1 = max(iso_ns(journey["last_stopped_at"]), t0 + 1)
    span = t1 - t0
    bars = []
    for r in rows:
        width = min(100.0, max(0.4, 100 * r.duration_s * 1e9 / span))
        left = min(100 * (iso_ns(r.started_at) - t0) / span, 100 - width)
        bars.append({"row": r, "left": left, "width": width,
                     "colour": label_colour(r.labels[0]) if r.labels else 0})
    return dict(journey, bars=bars, span_s=span / 1e9)


def label_colour(label: str) -> int:
    """One of 8 colour classes, the same for a label on every page."""
    return zlib.crc32(label.encode()) % 8


# --- token and headers ------------------------------------------------------------------------
def host_name(text: str) -> str | None:
    """The name in a ``Host`` header (``[::1]:8080`` → ``::1``), lower case; None if malformed."""
    m = HOST_HEADER_RE.match(text)
    if m is None:
        return None
    if m["ipv6"] is not None:
        try:
            return str(ipaddress.IPv6Address(m["ipv6"]))
        except ValueError:
            return None
    return m["name"].lower()


def check_host(text: str) -> str:
    """A name for ``--allow-host`` / ``hosts``: a DNS name or an IP address, no port."""
    name = text.strip().lower()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        pass
    if not HOSTNAME_RE.match(name):
        raise ValueError(f"{text[:80]!r} is not a host name or an IP address (no port, "
                         "e.g. console.lan or 192.168.1.20)")
    return name


class Guard:
    """Security headers on every response; only this console's ``Host`` names; with a
    token, no request without it."""

    def __init__(self, app: ASGIApp, token: str | None, hosts: Iterable[str] = ()) -> None:
        self.app = app
        self.token = token.encode() if token else None
        self.hosts = frozenset(check_host(h) for h in (*LOOPBACK_HOSTS, *hosts))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + SECURITY_HEADERS
            await send(message)

        raw_host = dict(scope.get("headers", [])).get(b"host", b"").decode("latin-1")
        if host_name(raw_host) not in self.hosts:
            await _plain(400, f"400: Host {raw_host[:80]!r} is not a name of this console "
                              "(serve --allow-host NAME adds a name)\n", send_with_headers, [])
            return
        if scope["method"] not in ("GET", "HEAD"):
            await _plain(405, "405: this console only reads (GET)\n", send_with_headers,
                         [(b"allow", b"GET, HEAD")])
            return
        if self.token is not None:
            verdict = self._check(scope)
            if verdict == "redirect":
                await _redirect_without_token(scope, self.token, send_with_headers)
                return
            if verdict != "ok":
                await _plain(401, "401: this console needs its token: open it once as "
                                  "/?token=… (or send Authorization: Bearer …)\n",
                             send_with_headers, [(b"www-authenticate", b"Bearer")])
                return
        await self.app(scope, receive, send_with_headers)

    def _check(self, scope: Scope) -> str:
        """``ok``, ``redirect`` (the token came in the query string) or ``no``."""
        assert self.token is not None
        headers = dict(scope.get("headers", []))
        auth = headers.get(b"authorization", b"")
        if auth.startswith(b"Bearer ") and hmac.compare_digest(auth[7:].strip(), self.token):
            return "ok"
        for part in headers.get(b"cookie", b"").split(b";"):
            name, _, value = part.strip().partition(b"=")
            if name == COOKIE.encode() and hmac.compare_digest(value, self.token):
                return "ok"
        for name, value in parse_qsl(scope.get("query_string", b"").decode("latin-1")):
            if name == "token" and hmac.compare_digest(value.encode("latin-1"), self.token):
                return "redirect"
        return "no"


async def _plain(status: int, text: str, send: Send, headers: list[tuple[bytes, bytes]]
                 ) -> None:
    body = text.encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode()),
                            (b"cache-control", b"no-store"), *headers]})
    await send({"type": "http.response.body", "body": body})


async def _redirect_without_token(scope: Scope, token: bytes, send: Send) -> None:
    """``?token=…`` once: set it as an HttpOnly cookie and go to the same URL without it."""
    rest = [(k, v) for k, v in parse_qsl(scope.get("query_string", b"").decode("latin-1"),
                                         keep_blank_values=True) if k != "token"]
    location = scope["path"] + (f"?{urlencode(rest)}" if rest else "")
    cookie = f"{COOKIE}={token.decode('latin-1')}; HttpOnly; SameSite=Strict; Path=/"
    await send({"type": "http.response.start", "status": 303,
                "headers": [(b"location", location.encode("latin-1")),
                            (b"set-cookie", cookie.encode("latin-1")),
                            (b"content-length", b"0"), (b"cache-control", b"no-store")]})
    await send({"type": "http.response.body", "body": b""})
