"""The documents that cross module and machine boundaries, typed and validated in one place.

Every reader and writer of a manifest goes through :class:`Manifest`: ``from_json`` bounds
the payload before parsing it, then checks every field's type and range, and raises
:class:`DocumentError` (a ``ValueError``) naming the field. Keys this version does not know
are kept (bounded in number and size) and written back unchanged, so a newer device's
manifest survives an older collector.

Identifiers that reach a topic or a file name (session ids, device ids) match one pattern,
:data:`ID_RE`: ASCII letters, digits, ``_`` and ``-``, starting with a letter or digit, at
most 128 characters. No dots and no slashes, so no id is ever ``.``, ``..`` or a path.
"""

from __future__ import annotations

import builtins
import dataclasses
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from edge_recorder.errors import EdgeRecorderError
from edge_recorder.recording.labels import MAX_LABEL_CHARS, MAX_LABELS

# --- named limits: each bounds memory or CPU before the work it bounds ---------------------
ID_MAX_CHARS = 128
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
MAX_MANIFEST_BYTES = 256 * 1024  # a manifest payload larger than this is not parsed
MAX_SESSION_BYTES = 16 << 30  # 16 GiB: far beyond max_duration_s at any supported rate
MAX_PARTS = 1 << 20  # 1,048,576 parts: 16 GiB at the 16 KiB a part needs to be sensible
MAX_TEXT_CHARS = 1024  # free-text fields: trigger detail, stop reason, version, warnings
MAX_JOURNEY_ID_CHARS = 128
MAX_SENSORS = 64
MAX_GAPS_PER_SENSOR = 10_000
MAX_WARNINGS = 64
MAX_EXTRA_KEYS = 32  # unknown keys kept for forward compatibility...
MAX_EXTRA_BYTES = 64 * 1024  # ...and their JSON size, together
MAX_SECONDS = 10.0 * 365 * 86400  # durations: ten years is absurd, and finite
MAX_CLOCK_STEPS = 256  # as many as the clock keeps (edge_recorder.clock.MAX_STEPS_KEPT)
ISO_UTC_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


class DocumentError(EdgeRecorderError, ValueError):
    """A document is not valid; the message names the field and what is wrong."""


def valid_id(value: object) -> bool:
    """True if ``value`` is a string matching :data:`ID_RE` (safe in topics and file names)."""
    return isinstance(value, str) and ID_RE.match(value) is not None


def check_id(value: object, what: str = "id") -> str:
    if not valid_id(value):
        raise DocumentError(f"{what}: {_show(value)} is not a valid id (ASCII letters, digits, "
                            f"'_' and '-', starting with a letter or digit, 1-{ID_MAX_CHARS} "
                            "characters)")
    assert isinstance(value, str)
    return value


# --- field checks ---------------------------------------------------------------------------
def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _int(value: object, what: str, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise DocumentError(f"{what}: {_show(value)} is not an integer")
    if not low <= value <= high:
        raise DocumentError(f"{what}: {value} is outside {low}..{high}")
    return value


def _float(value: object, what: str, low: float, high: float) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise DocumentError(f"{what}: {_show(value)} is not a number")
    if not math.isfinite(value) or not low <= value <= high:
        raise DocumentError(f"{what}: {value} is outside {low}..{high}")
    return float(value)


def _text(value: object, what: str, max_chars: int = MAX_TEXT_CHARS, *,
          min_chars: int = 0) -> str:
    if not isinstance(value, str):
        raise DocumentError(f"{what}: {_show(value)} is not a string")
    if not min_chars <= len(value) <= max_chars:
        raise DocumentError(f"{what}: must be {min_chars}-{max_chars} characters, "
                            f"not {len(value)}")
    if not value.isprintable():
        raise DocumentError(f"{what}: {_show(value)} holds a control character")
    return value


def _time(value: object, what: str) -> str:
    if not isinstance(value, str) or ISO_UTC_RE.match(value) is None:
        raise DocumentError(f"{what}: {_show(value)} is not an ISO 8601 UTC time "
                            "(2026-11-26T10:00:00.000000Z)")
    return value


def _list(value: object, what: str, max_items: int) -> list[Any]:
    if not isinstance(value, list | tuple):
        raise DocumentError(f"{what}: {_show(value)} is not a list")
    if len(value) > max_items:
        raise DocumentError(f"{what}: {len(value)} items; at most {max_items} are allowed")
    return list(value)


def _object(value: object, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise DocumentError(f"{what}: {_show(value)} is not an object")
    return value


def _extra(doc: Mapping[str, Any], known: set[str], what: str) -> dict[str, Any]:
    """Keys this version does not know, kept as they are, bounded in number and size."""
    extra = {k: v for k, v in doc.items() if k not in known}
    if len(extra) > MAX_EXTRA_KEYS:
        raise DocumentError(f"{what}: {len(extra)} unknown keys; at most {MAX_EXTRA_KEYS}")
    if extra:
        try:
            size = len(json.dumps(extra))
        except (TypeError, ValueError) as exc:
            raise DocumentError(f"{what}: unknown keys hold what JSON cannot: {exc}") from None
        if size > MAX_EXTRA_BYTES:
            raise DocumentError(f"{what}: unknown keys take {size} bytes; at most "
                                f"{MAX_EXTRA_BYTES}")
    return extra


def _required(doc: Mapping[str, Any], key: str, what: str) -> Any:
    if key not in doc:
        raise DocumentError(f"{what}.{key}: missing" if what else f"{key}: missing")
    return doc[key]


def parse_json_bounded(payload: bytes | str, max_bytes: int, what: str) -> Any:
    """``json.loads`` after checking the size; DocumentError for anything unreadable."""
    if len(payload) > max_bytes:
        raise DocumentError(f"{what}: {len(payload)} bytes; at most {max_bytes} are read")
    try:
        return json.loads(payload)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise DocumentError(f"{what}: not JSON ({type(exc).__name__}: {exc})") from None


# --- the manifest ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Gap:
    """Samples lost between two instants (ns since the UNIX epoch), and why."""

    start_ns: int
    end_ns: int
    lost: int
    reason: str
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    KEYS = frozenset({"start_ns", "end_ns", "lost", "reason"})

    @classmethod
    def from_dict(cls, doc: object, what: str) -> Gap:
        d = _object(doc, what)
        start = _int(_required(d, "start_ns", what), f"{what}.start_ns", 0, 2**63 - 1)
        return cls(
            start_ns=start,
            end_ns=_int(_required(d, "end_ns", what), f"{what}.end_ns", start, 2**63 - 1),
            lost=_int(_required(d, "lost", what), f"{what}.lost", 0, 2**63 - 1),
            reason=_text(_required(d, "reason", what), f"{what}.reason", 64),
            extra=_extra(d, set(cls.KEYS), what),
        )

    def to_dict(self) -> dict[str, Any]:
        return {"start_ns": self.start_ns, "end_ns": self.end_ns, "lost": self.lost,
                "reason": self.reason, **self.extra}


@dataclass(frozen=True)
class SensorSummary:
    """One sensor's part of a session: what it is, samples kept, samples lost."""

    name: str
    driver: str
    rate_hz: float
    samples: int
    dropped: int
    gaps: tuple[Gap, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    KEYS = frozenset({"name", "driver", "rate_hz", "samples", "dropped", "gaps"})

    @classmethod
    def from_dict(cls, doc: object, what: str) -> SensorSummary:
        d = _object(doc, what)
        gaps = _list(d.get("gaps", []), f"{what}.gaps", MAX_GAPS_PER_SENSOR)
        return cls(
            name=_text(_required(d, "name", what), f"{what}.name", 64, min_chars=1),
            driver=_text(_required(d, "driver", what), f"{what}.driver", 64, min_chars=1),
            rate_hz=_float(_required(d, "rate_hz", what), f"{what}.rate_hz", 0.0, 1e6),
            samples=_int(_required(d, "samples", what), f"{what}.samples", 0, 2**63 - 1),
            dropped=_int(_required(d, "dropped", what), f"{what}.dropped", 0, 2**63 - 1),
            gaps=tuple(Gap.from_dict(g, f"{what}.gaps[{i}]") for i, g in enumerate(gaps)),
            extra=_extra(d, set(cls.KEYS), what),
        )

    def to_dict(self) -> dict[str, Any]:
        rate: float | int = int(self.rate_hz) if self.rate_hz.is_integer() else self.rate_hz
        return {"name": self.name, "driver": self.driver, "rate_hz": rate,
                "samples": self.samples, "dropped": self.dropped,
                "gaps": [g.to_dict() for g in self.gaps], **self.extra}


def _signed_ns(value: object, what: str) -> int:
    return _int(value, what, -(2**63), 2**63 - 1)


@dataclass(frozen=True)
class ClockStep:
    """The wall clock jumped by ``step_ns`` (signed); ``at_ns`` on the clock after the step."""

    at_ns: int
    step_ns: int

    @classmethod
    def from_dict(cls, doc: object, what: str) -> ClockStep:
        d = _object(doc, what)
        return cls(at_ns=_signed_ns(_required(d, "at_ns", what), f"{what}.at_ns"),
                   step_ns=_signed_ns(_required(d, "step_ns", what), f"{what}.step_ns"))

    def to_dict(self) -> dict[str, int]:
        return {"at_ns": self.at_ns, "step_ns": self.step_ns}


@dataclass(frozen=True)
class ClockInfo:
    """The manifest's ``clock``: sync state and time base (contract §4, "Time").

    ``synced`` is the kernel's flag (None: unknown); ``steps`` the wall-clock steps seen
    during the session; ``offset_ns`` its time base (every time = monotonic instant on
    ``source`` + offset), meaningful within ``boot_id``; ``restamped`` ``{at_ns, shift_ns}``
    once a session recorded unsynchronised was moved onto the synchronised clock.
    """

    synced: bool | None
    steps: tuple[ClockStep, ...] = ()
    source: str | None = None
    offset_ns: int | None = None
    boot_id: str | None = None
    restamped: dict[str, int] | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    KEYS = frozenset({"synced", "steps", "source", "offset_ns", "boot_id", "restamped"})

    @classmethod
    def from_dict(cls, doc: object, what: str = "clock") -> ClockInfo:
        d = _object(doc, what)
        synced = d.get("synced")
        if synced is not None and not isinstance(synced, bool):
            raise DocumentError(f"{what}.synced: must be true, false or null, got "
                                f"{_show(synced)}")
        steps = _list(d.get("steps", []), f"{what}.steps", MAX_CLOCK_STEPS)
        offset = d.get("offset_ns")
        restamped = d.get("restamped")
        if restamped is not None:
            r = _object(restamped, f"{what}.restamped")
            restamped = {k: _signed_ns(_required(r, k, f"{what}.restamped"),
                                       f"{what}.restamped.{k}") for k in ("at_ns", "shift_ns")}
        source, boot = d.get("source"), d.get("boot_id")
        return cls(
            synced=synced,
            steps=tuple(ClockStep.from_dict(x, f"{what}.steps[{i}]")
                        for i, x in enumerate(steps)),
            source=None if source is None else _text(source, f"{what}.source", 32),
            offset_ns=None if offset is None else _signed_ns(offset, f"{what}.offset_ns"),
            boot_id=None if boot is None else _text(boot, f"{what}.boot_id", 64),
            restamped=restamped,
            extra=_extra(d, set(cls.KEYS), what),
        )

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"synced": self.synced,
                               "steps": [x.to_dict() for x in self.steps]}
        for key in ("source", "offset_ns", "boot_id", "restamped"):
            if getattr(self, key) is not None:
                doc[key] = getattr(self, key)
        doc.update(self.extra)
        return doc


@dataclass(frozen=True)
class Manifest:
    """A finished session: who recorded it, when, what is in it, and the file's identity.

    ``bytes``, ``sha256`` and ``parts`` describe the file; the rest is also inside it.
    ``extra`` holds keys this version does not know (kept, bounded).
    """

    session_id: str
    device_id: str
    started_at: str
    stopped_at: str
    bytes: int
    sha256: str
    parts: int
    labels: tuple[str, ...] = ()
    journey_id: str | None = None
    duration_s: float = 0.0
    stop_reason: str = ""
    trigger: dict[str, str] = field(default_factory=dict)
    pre_trigger_s: float = 0.0
    sensors: tuple[SensorSummary, ...] = ()
    format: str = "mcap"
    recorder_version: str | None = None
    warnings: tuple[str, ...] = ()
    clock: ClockInfo | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    KEYS = frozenset({"session_id", "device_id", "started_at", "stopped_at", "bytes", "sha256",
                      "parts", "labels", "journey_id", "duration_s", "stop_reason", "trigger",
                      "pre_trigger_s", "sensors", "format", "recorder_version", "warnings",
                      "clock"})

    def __post_init__(self) -> None:
        # a Manifest is valid however it was made: re-check through the one validator
        Manifest._check(self.to_dict())

    @classmethod
    def from_json(cls, payload: builtins.bytes | str) -> Manifest:
        """Parse and validate a manifest payload (bounded to :data:`MAX_MANIFEST_BYTES`)."""
        return cls.from_dict(parse_json_bounded(payload, MAX_MANIFEST_BYTES, "manifest"))

    @classmethod
    def from_dict(cls, doc: object) -> Manifest:
        # validated once, here: skip __post_init__'s second pass (listings read thousands)
        manifest = object.__new__(cls)
        for key, value in cls._check(doc).items():
            object.__setattr__(manifest, key, value)
        return manifest

    @classmethod
    def _check(cls, doc: object) -> dict[str, Any]:
        d = _object(doc, "manifest")
        nbytes = _int(_required(d, "bytes", ""), "bytes", 0, MAX_SESSION_BYTES)
        parts = _int(_required(d, "parts", ""), "parts", 1, MAX_PARTS)
        if parts > max(1, nbytes):
            raise DocumentError(f"parts: {parts} parts cannot hold {nbytes} bytes "
                                "(every part holds at least one byte)")
        sha = _required(d, "sha256", "")
        if not isinstance(sha, str) or SHA256_RE.match(sha) is None:
            raise DocumentError(f"sha256: {_show(sha)} is not 64 lower-case hex digits")
        labels = [_text(x, f"labels[{i}]", MAX_LABEL_CHARS, min_chars=1)
                  for i, x in enumerate(_list(d.get("labels", []), "labels", MAX_LABELS))]
        journey = d.get("journey_id")
        if journey is not None:
            journey = _text(journey, "journey_id", MAX_JOURNEY_ID_CHARS, min_chars=1)
        trigger = _object(d.get("trigger", {}), "trigger")
        if len(trigger) > 8:
            raise DocumentError(f"trigger: {len(trigger)} keys; at most 8")
        version = d.get("recorder_version")
        if version is not None:
            version = _text(version, "recorder_version", 64)
        sensors = _list(d.get("sensors", []), "sensors", MAX_SENSORS)
        clock = d.get("clock")
        return {
            "session_id": check_id(_required(d, "session_id", ""), "session_id"),
            "device_id": check_id(_required(d, "device_id", ""), "device_id"),
            "started_at": _time(_required(d, "started_at", ""), "started_at"),
            "stopped_at": _time(_required(d, "stopped_at", ""), "stopped_at"),
            "bytes": nbytes, "sha256": sha, "parts": parts,
            "labels": tuple(labels),
            "journey_id": journey,
            "duration_s": _float(d.get("duration_s", 0.0), "duration_s", 0.0, MAX_SECONDS),
            "stop_reason": _text(d.get("stop_reason", ""), "stop_reason", 64),
            "trigger": {_text(k, "trigger key", 64): _text(v, f"trigger.{k}")
                        for k, v in trigger.items()},
            "pre_trigger_s": _float(d.get("pre_trigger_s", 0.0), "pre_trigger_s", 0.0,
                                    MAX_SECONDS),
            "sensors": tuple(SensorSummary.from_dict(s, f"sensors[{i}]")
                             for i, s in enumerate(sensors)),
            "format": _text(d.get("format", "mcap"), "format", 32, min_chars=1),
            "recorder_version": version,
            "warnings": tuple(_text(w, f"warnings[{i}]") for i, w in
                              enumerate(_list(d.get("warnings", []), "warnings", MAX_WARNINGS))),
            "clock": None if clock is None else ClockInfo.from_dict(clock),
            "extra": _extra(d, set(cls.KEYS), "manifest"),
        }

    def to_dict(self) -> dict[str, Any]:
        """The manifest as JSON-ready data: known fields in contract order, then unknown keys."""
        doc: dict[str, Any] = {
            "session_id": self.session_id, "device_id": self.device_id,
            "labels": list(self.labels), "journey_id": self.journey_id,
            "started_at": self.started_at, "stopped_at": self.stopped_at,
            "duration_s": self.duration_s, "stop_reason": self.stop_reason,
            "trigger": dict(self.trigger), "pre_trigger_s": self.pre_trigger_s,
            "sensors": [s.to_dict() for s in self.sensors], "format": self.format,
        }
        if self.clock is not None:
            doc["clock"] = self.clock.to_dict()
        if self.recorder_version is not None:
            doc["recorder_version"] = self.recorder_version
        if self.warnings:
            doc["warnings"] = list(self.warnings)
        doc.update(self.extra)
        doc.update(bytes=self.bytes, sha256=self.sha256, parts=self.parts)
        return doc

    def to_json(self) -> builtins.bytes:
        return json.dumps(self.to_dict(), separators=(",", ":")).encode()

    def replace(self, **changes: Any) -> Manifest:
        """A copy with ``changes`` applied (validated like any other manifest)."""
        return Manifest.from_dict({**self.to_dict(), **changes})


def file_fields_added(inner: Mapping[str, Any], *, nbytes: int, sha256: str,
                      parts: int) -> Manifest:
    """The complete manifest of a finished session file: its inner fields plus the file's."""
    return Manifest.from_dict({**inner, "bytes": nbytes, "sha256": sha256, "parts": parts})


# --- the receipt (issue 17): the collector's word that a session is stored ---------------
MAX_RECEIPT_BYTES = 4096


@dataclass(frozen=True)
class Receipt:
    """Published by the collector on ``{prefix}/{device_id}/sessions/{session_id}/stored``
    (QoS 1, not retained) once a session is durably stored (file and index), and again for
    every duplicate of a session it already holds (``duplicate: true``)."""

    session_id: str
    device_id: str
    sha256: str
    bytes: int
    duplicate: bool

    def __post_init__(self) -> None:
        Receipt._check(self.to_dict())

    @classmethod
    def for_manifest(cls, manifest: Manifest, *, duplicate: bool) -> Receipt:
        return cls(manifest.session_id, manifest.device_id, manifest.sha256, manifest.bytes,
                   duplicate)

    @classmethod
    def from_json(cls, payload: builtins.bytes | str) -> Receipt:
        return cls(**cls._check(parse_json_bounded(payload, MAX_RECEIPT_BYTES, "receipt")))

    @classmethod
    def _check(cls, doc: object) -> dict[str, Any]:
        d = _object(doc, "receipt")
        sha = _required(d, "sha256", "")
        if not isinstance(sha, str) or SHA256_RE.match(sha) is None:
            raise DocumentError(f"sha256: {_show(sha)} is not 64 lower-case hex digits")
        duplicate = _required(d, "duplicate", "")
        if not isinstance(duplicate, bool):
            raise DocumentError(f"duplicate: {_show(duplicate)} is not true or false")
        return {"session_id": check_id(_required(d, "session_id", ""), "session_id"),
                "device_id": check_id(_required(d, "device_id", ""), "device_id"),
                "sha256": sha, "bytes": _int(_required(d, "bytes", ""), "bytes", 0,
                                             MAX_SESSION_BYTES),
                "duplicate": duplicate}

    def to_dict(self) -> dict[str, Any]:
        return {"session_id": self.session_id, "device_id": self.device_id,
                "sha256": self.sha256, "bytes": self.bytes, "duplicate": self.duplicate}

    def to_json(self) -> builtins.bytes:
        return json.dumps(self.to_dict(), separators=(",", ":")).encode()


def receipt_topic(topic_prefix: str, device_id: str, session_id: str) -> str:
    return f"{topic_prefix}/{device_id}/sessions/{session_id}/stored"



# --- the daemon's status (retained on P/status) and its command replies (P/cmd/reply) ------
MAX_STATUS_BYTES = 256 * 1024  # a status document, serialised; the daemon keeps it far below
MAX_REPLY_BYTES = MAX_STATUS_BYTES + 4096  # a reply may carry a status
MAX_MESSAGE_CHARS = 4096  # an error message, a config_error, a last_error
MAX_OPEN_SESSIONS = 64  # session.max_concurrent's upper bound
MAX_STATUS_KEYS = 64  # keys of one status section (a sensor's counters, storage, delivery)
ERROR_CODES = frozenset({
    "payload_too_large", "invalid_json", "invalid_command", "unknown_field", "invalid_field",
    "invalid_labels", "label_not_allowed", "too_many_sessions", "pre_trigger_too_long",
    "duration_too_long", "invalid_journey", "no_such_session", "store_full", "internal_error",
})


def _message(value: object, what: str, max_chars: int = MAX_MESSAGE_CHARS) -> str:
    """Free text a program wrote (an exception's message may hold any character)."""
    if not isinstance(value, str):
        raise DocumentError(f"{what}: {_show(value)} is not a string")
    if len(value) > max_chars:
        raise DocumentError(f"{what}: {len(value)} characters; at most {max_chars}")
    return value


def _bool(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise DocumentError(f"{what}: {_show(value)} is not true or false")
    return value


def _scalars(value: object, what: str) -> dict[str, Any]:
    """A flat section of counters: names to JSON scalars (finite numbers, text, flags)."""
    d = _object(value, what)
    if len(d) > MAX_STATUS_KEYS:
        raise DocumentError(f"{what}: {len(d)} keys; at most {MAX_STATUS_KEYS}")
    out: dict[str, Any] = {}
    for key, v in d.items():
        where = f"{what}.{key}"
        _text(key, f"{what} key", 64, min_chars=1)
        if isinstance(v, float) and not math.isfinite(v):
            raise DocumentError(f"{where}: {v} is not a finite number")
        if v is not None and not isinstance(v, str | int | float | bool):
            raise DocumentError(f"{where}: {_show(v)} is not a number, text or flag")
        out[key] = _message(v, where) if isinstance(v, str) else v
    return out


def _json_object(value: object, what: str, max_bytes: int) -> dict[str, Any]:
    """A nested object kept as it is (the clock's status), bounded in size."""
    d = dict(_object(value, what))
    try:
        size = len(json.dumps(d, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise DocumentError(f"{what}: not JSON ({type(exc).__name__}: {exc})") from None
    if size > max_bytes:
        raise DocumentError(f"{what}: {size} bytes; at most {max_bytes}")
    return d


@dataclass(frozen=True)
class OpenSessionStatus:
    """A session recording now, as ``status.recording`` lists it."""

    session_id: str
    labels: tuple[str, ...]
    journey_id: str | None
    started_at: str
    trigger_source: str
    trigger_detail: str
    stopping: bool

    @classmethod
    def from_dict(cls, doc: object, what: str) -> OpenSessionStatus:
        d = _object(doc, what)
        trigger = _object(d.get("trigger", {}), f"{what}.trigger")
        journey = d.get("journey_id")
        return cls(
            session_id=check_id(_required(d, "session_id", what), f"{what}.session_id"),
            labels=tuple(_text(x, f"{what}.labels[{i}]", MAX_LABEL_CHARS, min_chars=1)
                         for i, x in enumerate(_list(d.get("labels", []), f"{what}.labels",
                                                     MAX_LABELS))),
            journey_id=None if journey is None else
            _text(journey, f"{what}.journey_id", MAX_JOURNEY_ID_CHARS, min_chars=1),
            started_at=_time(_required(d, "started_at", what), f"{what}.started_at"),
            trigger_source=_text(trigger.get("source", ""), f"{what}.trigger.source", 64),
            trigger_detail=_text(trigger.get("detail", ""), f"{what}.trigger.detail"),
            stopping=_bool(d.get("stopping", False), f"{what}.stopping"))

    def to_dict(self) -> dict[str, Any]:
        return {"session_id": self.session_id, "labels": list(self.labels),
                "journey_id": self.journey_id, "started_at": self.started_at,
                "trigger": {"source": self.trigger_source, "detail": self.trigger_detail},
                "stopping": self.stopping}


@dataclass(frozen=True)
class StatusDocument:
    """The daemon's status, retained on ``P/status`` and carried by the ``status`` reply.

    The will publishes ``{"online": false}``, so every field but ``online`` has a default.
    ``from_json`` bounds the payload (:data:`MAX_STATUS_BYTES`) before parsing it and checks
    every field; ``to_json`` checks the size of what it writes."""

    online: bool
    version: str = ""
    device_id: str = ""
    journey_id: str | None = None
    recording: tuple[OpenSessionStatus, ...] = ()
    sessions_completed: int = 0
    sessions_published: int = 0
    sensors: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # name → counters
    storage: Mapping[str, Any] = field(default_factory=dict)
    delivery: Mapping[str, Any] = field(default_factory=dict)
    mqtt_connected: bool = False
    mqtt_last_error: str = ""
    warnings: tuple[str, ...] = ()
    config_error: str = ""
    clock: Mapping[str, Any] = field(default_factory=dict)
    watchdog_ok: bool = True
    watchdog_problem: str = ""
    updated_at: str | None = None

    def __post_init__(self) -> None:
        StatusDocument._check(self.to_dict())

    @classmethod
    def from_json(cls, payload: builtins.bytes | str) -> StatusDocument:
        return cls.from_dict(parse_json_bounded(payload, MAX_STATUS_BYTES, "status"))

    @classmethod
    def from_dict(cls, doc: object) -> StatusDocument:
        return cls(**cls._check(doc))

    @classmethod
    def _check(cls, doc: object) -> dict[str, Any]:
        d = _object(doc, "status")
        sensors = _object(d.get("sensors", {}), "sensors")
        if len(sensors) > MAX_SENSORS:
            raise DocumentError(f"sensors: {len(sensors)}; at most {MAX_SENSORS}")
        mqtt = _object(d.get("mqtt", {}), "mqtt")
        watchdog = _object(d.get("watchdog", {}), "watchdog")
        journey = d.get("journey_id")
        updated = d.get("updated_at")
        return {
            "online": _bool(_required(d, "online", ""), "online"),
            "version": _text(d.get("version", ""), "version", 64),
            "device_id": _text(d.get("device_id", ""), "device_id", ID_MAX_CHARS),
            "journey_id": None if journey is None else
            _text(journey, "journey_id", MAX_JOURNEY_ID_CHARS, min_chars=1),
            "recording": tuple(
                s if isinstance(s, OpenSessionStatus) else
                OpenSessionStatus.from_dict(s, f"recording[{i}]")
                for i, s in enumerate(_list(d.get("recording", []), "recording",
                                            MAX_OPEN_SESSIONS))),
            "sessions_completed": _int(d.get("sessions_completed", 0), "sessions_completed",
                                       0, 2**53),
            "sessions_published": _int(d.get("sessions_published", 0), "sessions_published",
                                       0, 2**53),
            "sensors": {_text(name, "sensors key", 64, min_chars=1):
                        _scalars(counters, f"sensors.{name}")
                        for name, counters in sensors.items()},
            "storage": _scalars(d.get("storage", {}), "storage"),
            "delivery": _scalars(d.get("delivery", {}), "delivery"),
            "mqtt_connected": _bool(mqtt.get("connected", False), "mqtt.connected"),
            "mqtt_last_error": _message(mqtt.get("last_error", ""), "mqtt.last_error"),
            "warnings": tuple(_message(w, f"warnings[{i}]") for i, w in
                              enumerate(_list(d.get("warnings", []), "warnings",
                                              MAX_WARNINGS))),
            "config_error": _message(d.get("config_error", ""), "config_error"),
            "clock": _json_object(d.get("clock", {}), "clock", MAX_EXTRA_BYTES),
            "watchdog_ok": _bool(watchdog.get("ok", True), "watchdog.ok"),
            "watchdog_problem": _message(watchdog.get("problem", ""), "watchdog.problem"),
            "updated_at": None if updated is None else _time(updated, "updated_at"),
        }

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "online": self.online, "version": self.version, "device_id": self.device_id,
            "journey_id": self.journey_id,
            "recording": [s.to_dict() for s in self.recording],
            "sessions_completed": self.sessions_completed,
            "sessions_published": self.sessions_published,
            "sensors": {k: dict(v) for k, v in self.sensors.items()},
            "storage": dict(self.storage), "delivery": dict(self.delivery),
            "mqtt": {"connected": self.mqtt_connected, "last_error": self.mqtt_last_error},
            "warnings": list(self.warnings), "config_error": self.config_error,
            "clock": dict(self.clock),
            "watchdog": {"ok": self.watchdog_ok, "problem": self.watchdog_problem},
        }
        if self.updated_at is not None:
            doc["updated_at"] = self.updated_at
        return doc

    def to_json(self) -> builtins.bytes:
        data = json.dumps(self.to_dict(), allow_nan=False).encode()
        if len(data) > MAX_STATUS_BYTES:
            raise DocumentError(f"status: {len(data)} bytes; at most {MAX_STATUS_BYTES}")
        return data

    def replace(self, **changes: Any) -> StatusDocument:
        return dataclasses.replace(self, **changes)


class _Absent:
    def __repr__(self) -> str:
        return "ABSENT"


ABSENT: Any = _Absent()
"""A reply field this reply does not carry (``journey_id: null`` is a value: no journey)."""


@dataclass(frozen=True)
class ReplyError:
    code: str  # one of ERROR_CODES
    message: str


@dataclass(frozen=True)
class CommandReply:
    """The one reply to a command: ``{"request_id", "ok": true, ...}`` or ``{"request_id",
    "ok": false, "error": {"code", "message"}}``. Which result fields an ``ok`` reply carries
    depends on the command (start: session_id, journey_id, labels, warnings; stop: stopped;
    status: status; journey: journey_id, previous_journey_id; resend: session_id)."""

    ok: bool
    error: ReplyError | None = None
    request_id: str | int | None = None  # echoed when the command had a usable one
    session_id: Any = ABSENT  # str
    journey_id: Any = ABSENT  # str | None
    previous_journey_id: Any = ABSENT  # str | None
    labels: Any = ABSENT  # tuple[str, ...]
    warnings: Any = ABSENT  # tuple[str, ...]
    stopped: Any = ABSENT  # tuple[str, ...]: session ids
    status: Any = ABSENT  # StatusDocument, or the recorder's own snapshot (a dict) in a rig

    def __post_init__(self) -> None:
        CommandReply._check(self.to_dict())

    @classmethod
    def failure(cls, code: str, message: str) -> CommandReply:
        return cls(ok=False, error=ReplyError(code, message))

    @classmethod
    def from_json(cls, payload: builtins.bytes | str) -> CommandReply:
        return cls.from_dict(parse_json_bounded(payload, MAX_REPLY_BYTES, "reply"))

    @classmethod
    def from_dict(cls, doc: object) -> CommandReply:
        fields = cls._check(doc)
        if isinstance(fields.get("status"), Mapping) and "online" in fields["status"]:
            fields["status"] = StatusDocument.from_dict(fields["status"])
        return cls(**fields)

    @classmethod
    def _check(cls, doc: object) -> dict[str, Any]:
        d = _object(doc, "reply")
        known = {"ok", "error", "request_id", "session_id", "journey_id",
                 "previous_journey_id", "labels", "warnings", "stopped", "status"}
        unknown = set(d) - known
        if unknown:
            raise DocumentError(f"reply: unknown fields {sorted(unknown)}")
        ok = _bool(_required(d, "ok", ""), "ok")
        out: dict[str, Any] = {"ok": ok}
        error = d.get("error")
        if ok == (error is not None):
            raise DocumentError("reply: an error goes with ok: false, and only with it")
        if error is not None:
            e = _object(error, "error")
            code = _required(e, "code", "error")
            if code not in ERROR_CODES:
                raise DocumentError(f"error.code: {_show(code)} is not a documented code")
            out["error"] = ReplyError(code, _message(_required(e, "message", "error"),
                                                     "error.message"))
        rid = d.get("request_id")
        if rid is not None:
            if not ((isinstance(rid, str) and len(rid) <= 128) or
                    (isinstance(rid, int) and not isinstance(rid, bool) and abs(rid) < 2**53)):
                raise DocumentError(f"request_id: {_show(rid)} is not a string of at most 128 "
                                    "characters or an integer")
            out["request_id"] = rid
        if "session_id" in d:
            out["session_id"] = check_id(d["session_id"], "session_id")
        for key in ("journey_id", "previous_journey_id"):
            if key in d:
                out[key] = None if d[key] is None else \
                    _text(d[key], key, MAX_JOURNEY_ID_CHARS, min_chars=1)
        if "labels" in d:
            out["labels"] = tuple(_text(x, f"labels[{i}]", MAX_LABEL_CHARS, min_chars=1)
                                  for i, x in enumerate(_list(d["labels"], "labels",
                                                              MAX_LABELS)))
        if "warnings" in d:
            out["warnings"] = tuple(_message(w, f"warnings[{i}]") for i, w in
                                    enumerate(_list(d["warnings"], "warnings", MAX_WARNINGS)))
        if "stopped" in d:
            out["stopped"] = tuple(check_id(s, f"stopped[{i}]") for i, s in
                                   enumerate(_list(d["stopped"], "stopped", MAX_OPEN_SESSIONS)))
        if "status" in d:
            status = d["status"]
            out["status"] = status if isinstance(status, StatusDocument) else \
                _json_object(status, "status", MAX_STATUS_BYTES)
        return out

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {}
        if self.request_id is not None:
            doc["request_id"] = self.request_id
        doc["ok"] = self.ok
        if self.error is not None:
            doc["error"] = {"code": self.error.code, "message": self.error.message}
        for key in ("session_id", "journey_id", "previous_journey_id"):
            value = getattr(self, key)
            if value is not ABSENT:
                doc[key] = value
        for key in ("labels", "warnings", "stopped"):
            value = getattr(self, key)
            if value is not ABSENT:
                doc[key] = list(value)
        if self.status is not ABSENT:
            doc["status"] = self.status.to_dict() if isinstance(self.status, StatusDocument) \
                else dict(self.status)
        return doc

    def to_json(self) -> builtins.bytes:
        return json.dumps(self.to_dict(), allow_nan=False).encode()

    def replace(self, **changes: Any) -> CommandReply:
        return dataclasses.replace(self, **changes)
