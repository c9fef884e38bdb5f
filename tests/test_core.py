"""The pure core, without sockets or a database: decoding, normalization, rows."""

from __future__ import annotations

import json
import math
import uuid

import pytest
from support import good_attributes, record, request

from otaudit_collector.core.catalog import bundled_catalog_dirs, load_catalogs
from otaudit_collector.core.errors import BadRequest, RecordError
from otaudit_collector.core.normalize import (
    Candidate,
    Policy,
    ResourceContext,
    iso_from_ns,
    normalize_record,
    normalize_request,
    storable,
)
from otaudit_collector.core.otlp_json import decode_json
from otaudit_collector.core.otlp_model import Record
from otaudit_collector.core.otlp_proto import decode_protobuf, decode_protobuf_python
from otaudit_collector.core.prepare import EVENT_COLUMNS, copy_text, prepare

NOW = 1_763_720_130_123_456_789  # 2025-11-21T10:15:30.123456789Z
POLICY = Policy()


def ctx(**attrs: object) -> ResourceContext:
    return ResourceContext.of(None, list(attrs.items()))


def plain(event: str, attrs: dict[str, object], time_ns: int = NOW, observed_ns: int = 0) -> Record:
    """A decoded record, as the decoders produce it."""
    rec = record(event, attrs, time_ns=time_ns)
    rec.observed_time_unix_nano = observed_ns
    decoded = decode_protobuf(request([rec]).SerializeToString(), POLICY.max_depth)
    out = decoded[0][2][0][0]
    assert not isinstance(out, str)
    return out


def normalize(attrs: dict[str, object], event: str = "updateRole", time_ns: int = NOW, **resource: object) -> dict[str, object]:
    return normalize_record(plain(event, attrs, time_ns), ctx(**resource), NOW, POLICY)


def test_every_contract_attribute_lands_in_its_place() -> None:
    doc = normalize(
        good_attributes(**{"audit.outcome": "denied", "audit.reason": "missing permission", "custom.thing": 7}),
        **{"service.name": "accounts-api", "service.instance.id": "pod-7"},
    )
    assert doc == {
        "id": doc["id"],
        "tenant": "acme",
        "category": "accounts_configuration",
        "event": "updateRole",
        "occurred_at": "2025-11-21T10:15:30.123456Z",
        "outcome": "denied",
        "reason": "missing permission",
        "actor": {"type": "user", "id": "u-17", "email": "ann@acme.test", "name": "Ann", "roles": ["admin"]},
        "client": {"address": "203.0.113.9", "user_agent": "Mozilla/5.0 (X11; Linux x86_64)", "session_id": "s-1"},
        "target": {"type": "role", "id": "r-3", "name": "Auditors"},
        "changes": [{"field": "permissions", "old": ["read"], "new": ["read", "export"]}],
        "source": {"service": "accounts-api", "instance": "pod-7", "sequence": 1},
        "attributes": {"custom.thing": 7},
    }


def test_lenient_shapes_that_real_emitters_send() -> None:
    doc = normalize(
        {
            "audit.actor.type": "user",
            "user.id": 17,  # numeric ids become strings
            "user.roles": "admin",  # one role as a string
            "audit.changes": {"name": {"old": "a", "new": "b"}},  # a map keyed by field
            "audit.details.via": "api",  # flattened details
            "audit.details": {"count": 2},
            "event.name": "ignoredBecauseEventNameIsSet",
            "ratio": math.nan,
            "blob": b"\x00\x01",
        },
        **{"audit.tenant.id": "acme"},
    )
    assert doc["actor"] == {"type": "user", "id": "17", "roles": ["admin"]}
    assert doc["changes"] == [{"field": "name", "old": "a", "new": "b"}]
    assert doc["details"] == {"count": 2, "via": "api"}
    # Values stay as decoded until storage needs JSON: then bytes are base64, NaN is text.
    assert storable(doc["attributes"]) == {"event.name": "ignoredBecauseEventNameIsSet", "ratio": "NaN", "blob": "AAE="}
    assert doc["tenant"] == "acme"


def test_event_name_attribute_is_a_fallback_for_older_sdks() -> None:
    doc = normalize({"event.name": "siteAccess", "audit.tenant.id": "t"}, event="")
    assert doc["event"] == "siteAccess" and "attributes" not in doc


@pytest.mark.parametrize(
    ("attrs", "message"),
    [
        ({"audit.tenant.id": "t", "user.id": [1]}, "attribute 'user.id' must be a string, got an array"),
        ({"audit.tenant.id": "t", "audit.sequence": "4"}, "'audit.sequence' must be a non-negative integer"),
        ({"audit.tenant.id": "t", "user.roles": [1, 2]}, "'user.roles' must be an array of strings"),
        ({"audit.tenant.id": "t", "audit.details": "x"}, "'audit.details' must be a map"),
        ({"audit.tenant.id": "t", "audit.changes": {"f": 1}}, "entry 'f' must be a map"),
        ({}, "names no tenant"),
    ],
)
def test_record_errors_name_the_attribute(attrs: dict[str, object], message: str) -> None:
    with pytest.raises(RecordError, match=message):
        normalize(attrs)


def test_times() -> None:
    assert iso_from_ns(0) == "1970-01-01T00:00:00.000000Z"
    doc = normalize_record(plain("siteAccess", {"audit.tenant.id": "t"}, 0, NOW - 10**9), ctx(), NOW, POLICY)
    assert doc["occurred_at"] == "2025-11-21T10:15:29.123456Z" and "time_from_observed" in doc["flags"]
    doc = normalize({"audit.tenant.id": "t"}, time_ns=NOW + 3600 * 10**9)
    assert doc["flags"] == ["derived_id", "clock_skew"] and doc["occurred_at"] == iso_from_ns(NOW)
    assert doc["claimed_occurred_at"] == "2025-11-21T11:15:30.123456Z"


def test_derived_id_is_stable_and_depends_on_the_resource() -> None:
    rec = plain("siteAccess", {"audit.tenant.id": "t"})
    first = normalize_record(rec, ctx(**{"service.name": "a"}), NOW, POLICY)
    again = normalize_record(rec, ctx(**{"service.name": "a"}), NOW + 5, POLICY)
    other = normalize_record(rec, ctx(**{"service.name": "b"}), NOW, POLICY)
    assert first["id"] == again["id"] != other["id"]
    assert uuid.UUID(str(first["id"])).version == 8 and first["flags"] == ["derived_id"]


def test_json_and_protobuf_decode_to_the_same_request() -> None:
    attrs = good_attributes()
    proto = request([record(attrs=attrs, time_ns=NOW)])
    rec = proto.resource_logs[0].scope_logs[0].log_records[0]
    rec.trace_id, rec.span_id = bytes(range(16)), bytes(range(8))

    def value(v: object) -> dict[str, object]:
        if isinstance(v, str):
            return {"stringValue": v}
        if isinstance(v, int):
            return {"intValue": str(v)}
        if isinstance(v, list):
            return {"arrayValue": {"values": [value(x) for x in v]}}
        assert isinstance(v, dict)
        return {"kvlistValue": {"values": [{"key": k, "value": value(x)} for k, x in v.items()]}}

    body = {
        "resource_logs": [  # snake_case names are accepted too
            {
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "accounts-api"}}]},
                "scopeLogs": [
                    {
                        "logRecords": [
                            {
                                "timeUnixNano": str(NOW),
                                "eventName": "updateRole",
                                "traceId": bytes(range(16)).hex(),
                                "spanId": bytes(range(8)).hex(),
                                "attributes": [{"key": k, "value": value(v)} for k, v in attrs.items()],
                            }
                        ]
                    }
                ],
            }
        ]
    }
    from_json = decode_json(json.dumps(body).encode(), POLICY.max_depth)
    from_proto = decode_protobuf(proto.SerializeToString(), POLICY.max_depth)
    # Same plain data (the JSON record has no raw protobuf bytes), hence the same derived id.
    json_record, proto_record = from_json[0][2][0][0], from_proto[0][2][0][0]
    assert not isinstance(json_record, str) and not isinstance(proto_record, str)
    assert json_record[1:] == proto_record[1:]
    assert from_json[0][1] == from_proto[0][1]
    assert decode_protobuf_python(proto.SerializeToString(), POLICY.max_depth) == from_proto
    with pytest.raises(BadRequest, match="must be a JSON object"):
        decode_json(b"null", POLICY.max_depth)


def test_prepare_builds_copy_lines_and_rejects() -> None:
    catalogs = load_catalogs(bundled_catalog_dirs())
    attrs = good_attributes(**{"user.name": "Tab\there\\ and\nnewline"})
    decoded = decode_protobuf(
        request([record(attrs=attrs, time_ns=NOW), record("addRole", {"audit.tenant.id": "t"})]).SerializeToString(),
        POLICY.max_depth,
    )
    candidates = normalize_request(decoded, NOW, POLICY)
    assert all(isinstance(c, Candidate) and c.doc for c in candidates)
    prepared = prepare(candidates, catalogs, NOW)
    assert len(prepared.lines) == 1 and prepared.rejected == 1
    fields = prepared.lines[0].split("\t")
    assert len(fields) == len(EVENT_COLUMNS)
    assert fields[EVENT_COLUMNS.index("category")] == "accounts_configuration"
    doc_text = fields[EVENT_COLUMNS.index("doc")].replace("\\\\", "\\")
    assert json.loads(doc_text)["actor"]["name"] == "Tab\there\\ and\nnewline"
    assert "record 1" in prepared.partial_success_message() and "/actor" in prepared.partial_success_message()
    assert copy_text(None) == "\\N" and copy_text("a\tb\\c") == "a\\tb\\\\c"


def test_values_json_cannot_hold_are_stored_as_text() -> None:
    catalogs = load_catalogs(bundled_catalog_dirs())
    attrs = good_attributes(**{"audit.details": {"ratio": math.inf, "raw": b"\x01\x02"}})
    candidates = normalize_request(
        decode_protobuf(request([record(attrs=attrs, time_ns=NOW)]).SerializeToString(), 16), NOW, POLICY
    )
    prepared = prepare(candidates, catalogs, NOW)
    assert prepared.rejected == 0
    stored = json.loads(prepared.lines[0].split("\t")[EVENT_COLUMNS.index("doc")].replace("\\\\", "\\"))
    assert stored["details"] == {"ratio": "Infinity", "raw": "AQI="}


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "python"])
def test_undecodable_records_keep_their_bytes_with_either_decoder(compiled: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    from otaudit_collector.core import otlp_proto
    from otaudit_collector.core.otlp_model import BrokenRecord

    if compiled and not otlp_proto.COMPILED:
        pytest.fail("the compiled decoder was not built: install the collector where a C compiler is available")
    if not compiled:
        monkeypatch.setattr(otlp_proto, "_compiled", None)

    def corrupt(data: bytes) -> bytes:
        return data.replace(b"MARKER-01", b"\xc3\x28RKER-01")  # "MA" becomes an invalid 2-byte sequence

    good = request([record(attrs=good_attributes(**{"user.name": "MARKER-0123456789"}))])
    decoded = otlp_proto.decode_protobuf(corrupt(good.SerializeToString()), 16)
    entry = decoded[0][2][0][0]
    assert isinstance(entry, BrokenRecord) and "UTF-8" in entry.reason
    assert entry.raw == corrupt(good.resource_logs[0].scope_logs[0].log_records[0].SerializeToString())
    candidate = normalize_request(decoded, NOW, POLICY)[0]
    assert candidate.record_bytes() == entry.raw and candidate.errors == [entry.reason]
