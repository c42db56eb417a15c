"""The typed documents: every field's type and bounds checked, unknown keys kept (bounded)."""

from __future__ import annotations

import hashlib
import json

import pytest

from edge_recorder import documents
from edge_recorder.documents import (
    ID_RE,
    MAX_EXTRA_KEYS,
    MAX_MANIFEST_BYTES,
    MAX_PARTS,
    DocumentError,
    Manifest,
    Receipt,
)
from edge_recorder.recording.ids import new_journey_id, new_session_id


def manifest_doc(**changes: object) -> dict:
    data = b"x" * 3000
    doc = {"session_id": "20261126T100000123Z-3f9a1c07b2", "device_id": "bench-pi-01",
           "labels": ["login"], "journey_id": "j-42",
           "started_at": "2026-11-26T10:00:00.000000Z",
           "stopped_at": "2026-11-26T10:00:05.000000Z", "duration_s": 5.0,
           "stop_reason": "command", "trigger": {"source": "mqtt", "detail": "r1"},
           "pre_trigger_s": 0.0, "recorder_version": "0.1.0",
           "sensors": [{"name": "imu0", "driver": "mpu6050", "rate_hz": 200, "samples": 1000,
                        "dropped": 2, "gaps": [{"start_ns": 1, "end_ns": 2, "lost": 2,
                                                "reason": "fifo_overflow"}]}],
           "format": "mcap", "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
           "parts": 3}
    doc.update(changes)
    return doc


def test_a_manifest_round_trips_exactly():
    doc = manifest_doc()
    m = Manifest.from_json(json.dumps(doc))
    assert m.to_dict() == doc
    assert Manifest.from_json(m.to_json()) == m
    assert m.labels == ("login",) and m.sensors[0].gaps[0].reason == "fifo_overflow"


def test_unknown_keys_are_kept_but_bounded():
    doc = manifest_doc(clock={"synced": True, "steps": []})
    assert Manifest.from_dict(doc).to_dict()["clock"] == {"synced": True, "steps": []}
    many = manifest_doc(**{f"k{i}": i for i in range(MAX_EXTRA_KEYS + 1)})
    with pytest.raises(DocumentError, match="unknown keys"):
        Manifest.from_dict(many)
    with pytest.raises(DocumentError, match="unknown keys take"):
        Manifest.from_dict(manifest_doc(blob="x" * 70_000))


@pytest.mark.parametrize("change, field", [
    ({"labels": 5}, "labels"), ({"labels": [5]}, "labels[0]"), ({"labels": ["x"] * 17}, "labels"),
    ({"started_at": None}, "started_at"), ({"stopped_at": "yesterday"}, "stopped_at"),
    ({"session_id": ".."}, "session_id"), ({"session_id": "."}, "session_id"),
    ({"session_id": "a/b"}, "session_id"), ({"session_id": "a.b"}, "session_id"),
    ({"device_id": "-x"}, "device_id"), ({"device_id": "x" * 129}, "device_id"),
    ({"parts": 2_000_000}, "parts"), ({"parts": 0}, "parts"), ({"parts": True}, "parts"),
    ({"parts": 3001}, "parts"), ({"bytes": -1}, "bytes"), ({"bytes": 1.5}, "bytes"),
    ({"sha256": "ABC"}, "sha256"), ({"sha256": None}, "sha256"),
    ({"duration_s": float("inf")}, "duration_s"), ({"duration_s": "5"}, "duration_s"),
    ({"journey_id": ""}, "journey_id"), ({"journey_id": "a\nb"}, "journey_id"),
    ({"sensors": {}}, "sensors"), ({"sensors": [{"name": "imu0"}]}, "sensors[0].driver"),
    ({"trigger": []}, "trigger"),
])
def test_every_field_is_checked_and_the_error_names_it(change, field):
    with pytest.raises(DocumentError) as err:
        Manifest.from_dict(manifest_doc(**change))
    assert str(err.value).startswith(field), str(err.value)


def test_required_fields_and_size_are_checked_before_anything_else():
    doc = manifest_doc()
    del doc["device_id"]
    with pytest.raises(DocumentError, match="device_id: missing"):
        Manifest.from_dict(doc)
    with pytest.raises(DocumentError, match="at most"):
        Manifest.from_json(b" " * (MAX_MANIFEST_BYTES + 1))
    with pytest.raises(DocumentError, match="not JSON"):
        Manifest.from_json(b"\xff{")
    with pytest.raises(DocumentError, match="not JSON"):
        Manifest.from_json(b"[" * 100_000)  # deep nesting: RecursionError, not a crash
    with pytest.raises(DocumentError, match="not an object"):
        Manifest.from_json(b"[]")


def test_constructing_an_invalid_manifest_directly_is_refused_too():
    m = Manifest.from_dict(manifest_doc())
    with pytest.raises(DocumentError):
        m.replace(session_id="..")
    with pytest.raises(DocumentError):
        Manifest(session_id="..", device_id="d", started_at="2026-11-26T10:00:00Z",
                 stopped_at="2026-11-26T10:00:00Z", bytes=1, sha256="0" * 64, parts=1)


def test_the_ids_the_device_makes_match_the_one_id_pattern():
    for t_ns in (0, 1_795_000_000_123_456_789, 4_102_444_800_000_000_000):
        assert ID_RE.match(new_session_id(t_ns))
        assert ID_RE.match(new_journey_id("bench-pi-01", t_ns))
    for bad in (".", "..", "", "a/b", "a.b", "_x", "-x", "a b", "é", "x" * 129):
        assert not documents.valid_id(bad), bad
    assert MAX_PARTS < 2_000_000


def test_config_device_ids_are_ids():
    from edge_recorder.config import DEVICE_ID_RE

    for ok in ("bench-pi-01", "a", "A_1"):
        assert DEVICE_ID_RE.match(ok) and ID_RE.match(ok)
    for bad in ("-pi", "_pi", "pi.local", "x" * 65):
        assert not DEVICE_ID_RE.match(bad), bad


def test_a_receipt_is_exactly_the_contract_fields():
    m = Manifest.from_dict(manifest_doc())
    r = Receipt.for_manifest(m, duplicate=False)
    assert json.loads(r.to_json()) == {"session_id": m.session_id, "device_id": m.device_id,
                                       "sha256": m.sha256, "bytes": m.bytes,
                                       "duplicate": False}
    assert Receipt.from_json(r.to_json()) == r
    with pytest.raises(DocumentError, match="duplicate"):
        Receipt.from_json(json.dumps({**r.to_dict(), "duplicate": "no"}))
    assert documents.receipt_topic("edge-recorder", "d1", "s1") == \
        "edge-recorder/d1/sessions/s1/stored"


def test_from_dict_sets_every_field_as_the_constructor_would():
    from dataclasses import fields

    doc = manifest_doc(clock={"synced": True, "steps": []}, other=1)
    assert set(Manifest._check(doc)) == {f.name for f in fields(Manifest)}
    parsed = Manifest.from_dict(doc)
    assert parsed == Manifest(**Manifest._check(doc)) and parsed.extra == {"other": 1}
