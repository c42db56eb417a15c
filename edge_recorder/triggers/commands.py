"""The JSON command protocol (docs/contract.md §3): parsing, validation, and the error codes.

Every payload gets exactly one reply. Error codes (``error.code`` in a reply):

==========================  ==========================================================
``payload_too_large``       the payload is over 16 KiB
``invalid_json``            the payload is not UTF-8 JSON
``invalid_command``         not a JSON object, no ``cmd``, or an unknown ``cmd``
``unknown_field``           a field this command does not take
``invalid_field``           a field of the wrong type or out of range
``invalid_labels``          labels break the limits (count, length, characters)
``label_not_allowed``       a label outside ``session.allowed_labels``
``too_many_sessions``       ``session.max_concurrent`` sessions are already open
``pre_trigger_too_long``    ``pre_trigger_s`` beyond ``buffer.seconds``
``duration_too_long``       ``duration_s`` beyond ``session.max_duration_s``
``no_such_session``         ``stop`` names a session that is not recording, or ``resend``
                            one no longer on the device
``invalid_journey``         ``journey`` needs exactly one of ``journey_id`` or ``"new": true``
``store_full``              the store holds only unpublished sessions; nothing fits
``internal_error``          a bug; the daemon logged it and keeps running
==========================  ==========================================================
"""

from __future__ import annotations

import json
import math
from typing import Any

from edge_recorder.config import MAX_JOURNEY_ID_CHARS
from edge_recorder.documents import ID_MAX_CHARS, MAX_PARTS, valid_id
from edge_recorder.recording.events import (
    UNSET,
    Event,
    JourneyRequested,
    Rejected,
    ReplyFn,
    ResendRequested,
    StartRequested,
    StatusRequested,
    StopRequested,
    Trigger,
)

MAX_COMMAND_BYTES = 16 * 1024
MAX_REQUEST_ID_CHARS = 128

FIELDS: dict[str, tuple[str, ...]] = {
    "start": ("labels", "journey_id", "duration_s", "pre_trigger_s"),
    "stop": ("session_id",),
    "status": (),
    "journey": ("journey_id", "new"),
    "resend": ("session_id", "parts"),
}


def request_id_of(doc: Any) -> Any:
    """The request_id of a decoded command, if it has a usable one (for error replies)."""
    if isinstance(doc, dict):
        rid = doc.get("request_id")
        if _valid_request_id(rid):
            return rid
    return None


def _valid_request_id(rid: Any) -> bool:
    return (isinstance(rid, str) and len(rid) <= MAX_REQUEST_ID_CHARS) or \
        (isinstance(rid, int) and not isinstance(rid, bool) and abs(rid) < 2**53)


def _number(doc: dict[str, Any], key: str, *, allow_null: bool, positive: bool) -> Any:
    if key not in doc:
        return UNSET
    v = doc[key]
    if v is None and allow_null:
        return None
    try:  # a 400-digit integer is valid JSON but no float: OverflowError
        finite = not isinstance(v, bool) and isinstance(v, int | float) and math.isfinite(v)
    except OverflowError:
        finite = False
    if not finite:
        raise Rejected("invalid_field", f"{key} must be a number of seconds"
                       + (" or null" if allow_null else "") + f", got {_excerpt(v)}")
    if v < 0 or (positive and v == 0):
        bound = "greater than" if positive else "at least"
        raise Rejected("invalid_field", f"{key} must be {bound} 0, got {v}")
    return float(v)


def _session_id(value: Any) -> str | None:
    """A session id matching the one id pattern (documents.ID_RE), or None if absent.

    Checked before anything looks for the session, so no other name reaches a path and a
    refusal says nothing about which files exist."""
    if value is not None and not valid_id(value):
        raise Rejected("invalid_field", f"session_id must be a session id: 1-{ID_MAX_CHARS} "
                       "ASCII letters, digits, '_' or '-', starting with a letter or digit")
    return None if value is None else str(value)


def _journey(value: Any) -> str | None:
    if value is not None and (not isinstance(value, str) or
                              not 1 <= len(value) <= MAX_JOURNEY_ID_CHARS or
                              not value.isprintable()):
        raise Rejected("invalid_field", f"journey_id must be 1-{MAX_JOURNEY_ID_CHARS} printable "
                       "characters, or null for no journey")
    return value


def _excerpt(value: Any) -> str:
    text = str(value) if isinstance(value, int) else json.dumps(value)
    return text if len(text) <= 40 else f"{text[:37]}..."


def decode_command(payload: bytes) -> Any:
    """The JSON in a payload; its size is checked before anything is parsed."""
    if len(payload) > MAX_COMMAND_BYTES:
        raise Rejected("payload_too_large",
                       f"command is {len(payload)} bytes; the limit is {MAX_COMMAND_BYTES}")
    try:
        return json.loads(payload.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise Rejected("invalid_json", f"the command is not valid JSON ({exc}); send an "
                       "object such as {\"cmd\": \"status\"}") from None


def parse_command(payload: bytes, *, source: str, reply: ReplyFn | None = None) -> Event:
    """Turn a command payload into an event, or raise :class:`Rejected` saying what to fix."""
    return command_event(decode_command(payload), source=source, reply=reply)


def command_event(doc: Any, *, source: str, reply: ReplyFn | None = None) -> Event:
    """A decoded command as an event, or :class:`Rejected` saying what to fix."""
    if not isinstance(doc, dict):
        raise Rejected("invalid_command", "the command must be a JSON object with a \"cmd\" "
                       "field, e.g. {\"cmd\": \"status\"}")
    cmd = doc.get("cmd")
    if not isinstance(cmd, str) or cmd not in FIELDS:
        raise Rejected("invalid_command", f"\"cmd\" must be one of {', '.join(FIELDS)}; got "
                       f"{_excerpt(cmd)}")
    if "request_id" in doc and not _valid_request_id(doc["request_id"]):
        raise Rejected("invalid_field", f"request_id must be a string of at most "
                       f"{MAX_REQUEST_ID_CHARS} characters or an integer")
    unknown = [k for k in doc if k not in FIELDS[cmd] and k not in ("cmd", "request_id")]
    if unknown:
        raise Rejected("unknown_field", f"{cmd} does not take {', '.join(map(repr, unknown))}; "
                       f"its fields are: {', '.join(FIELDS[cmd]) or '(none)'}")
    trigger = Trigger("mqtt", source)
    if cmd == "status":
        return StatusRequested(reply=reply)
    if cmd == "journey":
        new = doc.get("new", False)
        if not isinstance(new, bool):
            raise Rejected("invalid_field", "new must be true or false")
        if new == ("journey_id" in doc):
            raise Rejected("invalid_journey", "give either \"journey_id\" (a string, or null "
                           "for none) or \"new\": true for a fresh auto journey")
        if new:
            return JourneyRequested(new_auto=True, reply=reply)
        return JourneyRequested(journey_id=_journey(doc["journey_id"]), reply=reply)
    if cmd == "resend":
        sid, parts = _session_id(doc.get("session_id")), doc.get("parts")
        if sid is None:
            raise Rejected("invalid_field", "resend needs session_id")
        if parts is not None and (not isinstance(parts, list) or
                                  not all(isinstance(n, int) and not isinstance(n, bool)
                                          and 0 <= n < MAX_PARTS for n in parts)):
            raise Rejected("invalid_field", "parts must be a list of part numbers (0, 1, ... "
                           f"below {MAX_PARTS}) or absent for all")
        return ResendRequested(sid, parts, reply=reply)
    if cmd == "stop":
        sid = _session_id(doc.get("session_id"))
        return StopRequested(trigger, session_id=sid, reason="command", reply=reply)
    labels = doc.get("labels", [])
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise Rejected("invalid_labels", "labels must be a list of strings")
    journey = _journey(doc["journey_id"]) if "journey_id" in doc else UNSET
    pre = _number(doc, "pre_trigger_s", allow_null=False, positive=False)
    return StartRequested(
        trigger,
        labels=tuple(labels),
        journey_id=journey,
        duration_s=_number(doc, "duration_s", allow_null=True, positive=True),
        pre_trigger_s=None if pre is UNSET else pre,
        reply=reply,
    )
