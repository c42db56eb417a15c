"""The status document and command replies are typed documents (edge_recorder.documents):
what the daemon sends parses back to the same JSON, and what does not fit is refused
naming the field, bounded before parsing."""

from __future__ import annotations

import json

import pytest

from edge_recorder.documents import (
    MAX_REPLY_BYTES,
    MAX_STATUS_BYTES,
    CommandReply,
    DocumentError,
    StatusDocument,
)
from edge_recorder.recording.events import StartRequested, StatusRequested, StopRequested, Trigger
from tests.rig import Rig

STATUS = {
    "online": True, "version": "0.3.0", "device_id": "bench-pi", "journey_id": None,
    "recording": [{"session_id": "20261126T100000123Z-3f9a1c07b2", "labels": ["a"],
                   "journey_id": "j", "started_at": "2026-11-26T10:00:00.123000Z",
                   "trigger": {"source": "mqtt", "detail": "x"}, "stopping": False}],
    "sessions_completed": 3, "sessions_published": 2,
    "sensors": {"imu0": {"state": "up", "samples": 10, "rate_hz": 200.0, "last_error": ""}},
    "storage": {"sessions": 1, "bytes": 10}, "delivery": {"require_receipt": True},
    "mqtt": {"connected": True, "last_error": ""}, "warnings": [], "config_error": "",
    "clock": {"synced": True, "steps": []}, "watchdog": {"ok": True, "problem": ""},
    "updated_at": "2026-11-26T10:00:01.000000Z",
}


def test_a_status_round_trips_and_the_will_parses() -> None:
    doc = StatusDocument.from_json(json.dumps(STATUS))
    assert json.loads(doc.to_json()) == STATUS
    assert doc.recording[0].session_id == "20261126T100000123Z-3f9a1c07b2"
    assert StatusDocument.from_json(b'{"online": false}').online is False


@pytest.mark.parametrize("change, field", [
    ({"online": "yes"}, "online"),
    ({"sensors": {"imu0": {"samples": [1, 2]}}}, "sensors.imu0.samples"),
    ({"sensors": {"imu0": {"rate_hz": float("nan")}}}, "sensors.imu0.rate_hz"),
    ({"recording": [{"session_id": "../x", "started_at": "2026-11-26T10:00:00Z"}]},
     "recording[0].session_id"),
    ({"updated_at": "yesterday"}, "updated_at"),
    ({"watchdog": {"ok": 1}}, "watchdog.ok"),
    ({"config_error": "x" * 5000}, "config_error"),
])
def test_a_wrong_status_is_refused_naming_the_field(change: dict, field: str) -> None:
    with pytest.raises(DocumentError, match=field.replace("[", r"\[").replace("]", r"\]")):
        StatusDocument.from_dict({**STATUS, **change})


def test_oversized_documents_are_refused_before_parsing() -> None:
    with pytest.raises(DocumentError, match=f"at most {MAX_STATUS_BYTES} are read"):
        StatusDocument.from_json(b"[" * (MAX_STATUS_BYTES + 1))
    with pytest.raises(DocumentError, match=f"at most {MAX_REPLY_BYTES} are read"):
        CommandReply.from_json(b"[" * (MAX_REPLY_BYTES + 1))


@pytest.mark.parametrize("doc, field", [
    ({"ok": True, "error": {"code": "invalid_field", "message": "m"}}, "an error goes with"),
    ({"ok": False}, "an error goes with"),
    ({"ok": False, "error": {"code": "made_up", "message": "m"}}, "error.code"),
    ({"ok": True, "session_id": ".."}, "session_id"),
    ({"ok": True, "stopped": ["a/b"]}, r"stopped\[0\]"),
    ({"ok": True, "colour": "red"}, "unknown fields"),
    ({"ok": True, "request_id": True}, "request_id"),
])
def test_a_wrong_reply_is_refused_naming_the_field(doc: dict, field: str) -> None:
    with pytest.raises(DocumentError, match=field):
        CommandReply.from_dict(doc)


def test_the_recorders_replies_are_typed_and_round_trip(tmp_path) -> None:
    rig = Rig(tmp_path)
    rig.run(0.5)
    replies: list[CommandReply] = []
    rig.recorder.handle(StartRequested(Trigger("mqtt"), labels=("a",), reply=replies.append))
    rig.run(0.5)
    rig.recorder.handle(StopRequested(Trigger("mqtt"), reply=replies.append))
    rig.recorder.handle(StatusRequested(reply=replies.append))
    rig.recorder.handle(StopRequested(Trigger("mqtt"), session_id="20200101T000000000Z-0",
                                      reply=replies.append))
    assert all(isinstance(r, CommandReply) for r in replies)
    start, stop, _status, refused = replies
    assert start.ok and start.labels == ("a",) and stop.stopped == (start.session_id,)
    assert refused.error is not None and refused.error.code == "no_such_session"
    for r in replies:
        assert CommandReply.from_json(r.to_json()).to_dict() == json.loads(r.to_json())


def test_a_huge_config_error_keeps_the_status_bounded(tmp_path) -> None:
    from edge_recorder.app import Daemon
    from edge_recorder.config import parse_config

    daemon = Daemon(parse_config({
        "sensors": [{"name": "imu0", "driver": "mpu6050", "bus": "emulated"}],
        "mqtt": {"host": "127.0.0.1", "port": 1}, "storage": {"dir": str(tmp_path / "s")}}))
    daemon.config_error = "sensors[0].x: " + "[[[lol]]]" * 1_000_000
    status = daemon.status()
    assert len(status.to_json()) < 16 * 1024
    assert status.config_error.endswith("(the rest is in the journal)")
