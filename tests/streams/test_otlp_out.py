"""core.otlp_out against the normalizer: a stored document, sent as OTLP, is normalized back to itself.

Documents are made the way the collector makes them: random records of the wire contract
normalized by ``normalize_record``, then made storable and taken through JSON (the stored
text). The request built from one is encoded, decoded by the collector's own decoder and
normalized again, as a receiving otaudit does. What may differ (otlp_out's docstring): the
flags ``derived_id``, ``time_from_received``, ``clock_skew``, ``imported`` and
``claimed_occurred_at`` (the receiver sees a plain id and time), and ``attributes`` gaining
``otaudit.seq`` and ``otaudit.source.tenant``. ``seq`` and ``received_at`` are the
receiver's own and are not part of a normalized document.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from otaudit_collector.core.errors import RecordError
from otaudit_collector.core.normalize import Policy, ResourceContext, normalize_record, normalize_request, storable
from otaudit_collector.core.otlp_model import to_any_value
from otaudit_collector.core.otlp_out import SEQ_ATTRIBUTE, SOURCE_TENANT_ATTRIBUTE, export_request
from otaudit_collector.core.otlp_proto import decode_protobuf

POLICY = Policy()
RECEIVED_NS = 1_767_225_600_123_456_789
LATER_NS = RECEIVED_NS + 3_600 * 1_000_000_000  # the second collector receives it an hour later
LOST_FLAGS = {"derived_id", "time_from_received", "clock_skew", "imported"}

names = st.from_regex(r"[A-Za-z][A-Za-z0-9_.\-]{0,20}", fullmatch=True)
ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_\-]{0,20}", fullmatch=True)
texts = st.text(max_size=12)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    texts,
    st.binary(max_size=8),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(texts, inner, max_size=3)),
    max_leaves=8,
)
text_or_int = st.one_of(st.text(min_size=1, max_size=12), st.integers(min_value=0, max_value=10**6))
related_item = st.fixed_dictionaries(
    {"type": st.text(min_size=1, max_size=5), "id": st.text(min_size=1, max_size=5)}, optional={"name": texts}
)
extra_keys = st.one_of(
    st.sampled_from(["log.body", "x", "http.route", "otaudit.seq"]), st.from_regex(r"x\.[a-z]{1,6}", fullmatch=True)
)

contract = st.fixed_dictionaries(
    {},
    optional={
        "log.record.uid": ids,
        "audit.category": names,
        "audit.tenant.id": ids,
        "audit.actor.type": st.sampled_from(["user", "service", "system"]),
        "user.id": text_or_int,
        "user.email": texts,
        "user.name": texts,
        "user.roles": st.one_of(texts, st.lists(texts, max_size=3)),
        "audit.target.type": texts,
        "audit.target.id": text_or_int,
        "audit.target.name": texts,
        "client.address": texts,
        "user_agent.original": texts,
        "session.id": texts,
        "audit.outcome": st.sampled_from(["success", "failure", "denied"]),
        "audit.reason": texts,
        "audit.changes": st.one_of(
            st.lists(st.fixed_dictionaries({"field": texts, "old": values, "new": values}), max_size=2),
            st.dictionaries(texts, st.fixed_dictionaries({"old": values, "new": values}), max_size=2),
        ),
        "audit.related": st.one_of(st.lists(related_item, max_size=3), related_item),
        "audit.details": st.dictionaries(texts, values, max_size=3),
        "audit.sequence": st.integers(min_value=0, max_value=(1 << 63) - 1),
    },
)
times = st.one_of(
    st.just(0),
    st.integers(min_value=RECEIVED_NS - 300 * 86_400 * 10**9, max_value=RECEIVED_NS + 200 * 10**9),
    st.integers(min_value=1, max_value=2**64 - 1),
)


@st.composite
def records(draw: st.DrawFn) -> tuple[ResourceContext, LogRecord]:
    attrs: dict[str, Any] = draw(contract)
    for key, value in draw(
        st.dictionaries(st.from_regex(r"audit\.details\.[a-z]{1,5}", fullmatch=True), values, max_size=2)
    ).items():
        attrs[key] = value
    for key, value in draw(st.dictionaries(extra_keys, values, max_size=3)).items():
        attrs[key] = value
    record = LogRecord(
        event_name=draw(st.one_of(names, st.just(""))),
        time_unix_nano=draw(times),
        observed_time_unix_nano=draw(times),
        dropped_attributes_count=draw(st.sampled_from([0, 0, 3])),
        trace_id=draw(st.one_of(st.just(b""), st.binary(min_size=16, max_size=16))),
        span_id=draw(st.one_of(st.just(b""), st.binary(min_size=8, max_size=8))),
    )
    if not record.event_name:
        attrs["event.name"] = draw(names)
    record.attributes.extend(KeyValue(key=k, value=to_any_value(v)) for k, v in attrs.items())
    body = draw(st.one_of(st.none(), texts, values))
    if body is not None:
        record.body.CopyFrom(to_any_value(body))
    resource: dict[str, Any] = draw(
        st.fixed_dictionaries({}, optional={"service.name": texts, "service.instance.id": texts, "audit.tenant.id": ids})
    )
    if "audit.tenant.id" not in attrs:
        resource.setdefault("audit.tenant.id", "acme")
    res = Resource(attributes=[KeyValue(key=k, value=to_any_value(v)) for k, v in resource.items()])
    return ResourceContext.of(res.SerializeToString(), list(resource.items())), record


def decoded_record(record: LogRecord) -> Any:
    """The record as the collector's decoder gives it (the plain tuple normalize reads)."""
    request = export_request([], source_tenant="x")
    logs = request.resource_logs.add()
    logs.scope_logs.add().log_records.append(record)
    return decode_protobuf(request.SerializeToString(), POLICY.max_depth)[0][2][0][0]


def stored(doc: dict[str, Any]) -> dict[str, Any]:
    """The document as it is stored and read back: storable, through JSON."""
    result: dict[str, Any] = json.loads(json.dumps(storable(doc), allow_nan=False))
    return result


def expected_at_receiver(doc: dict[str, Any], seq: int) -> dict[str, Any]:
    want = {key: value for key, value in doc.items() if key != "claimed_occurred_at"}
    flags = [flag for flag in doc.get("flags", []) if flag not in LOST_FLAGS]
    want.pop("flags", None)
    if flags:
        want["flags"] = flags
    extra = dict(doc.get("attributes", {}))
    extra[SEQ_ATTRIBUTE] = seq
    extra[SOURCE_TENANT_ATTRIBUTE] = doc["tenant"]
    want["attributes"] = extra
    return want


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records(), st.integers(min_value=1, max_value=(1 << 62)))
def test_a_document_sent_as_otlp_is_normalized_back_to_itself(made: tuple[ResourceContext, LogRecord], seq: int) -> None:
    ctx, record = made
    try:
        doc = stored(normalize_record(decoded_record(record), ctx, RECEIVED_NS, POLICY))
    except RecordError:
        return  # not an event: nothing is stored, nothing is streamed
    request = export_request([(seq, doc)], source_tenant=doc["tenant"])
    again = normalize_request(decode_protobuf(request.SerializeToString(), POLICY.max_depth), LATER_NS, POLICY)
    assert len(again) == 1 and not again[0].errors, again[0].errors
    got = again[0].doc
    assert got is not None
    assert stored(got) == expected_at_receiver(doc, seq)


def test_records_stay_in_seq_order_across_sources() -> None:
    def doc(n: int, service: str | None) -> dict[str, Any]:
        source = {"service": service} if service else {}
        return {
            "id": f"e-{n}",
            "tenant": "acme",
            "event": "e",
            "occurred_at": "2026-01-01T00:00:00.000001Z",
            "actor": {},
            "source": source,
        }

    given = [(1, doc(1, "a")), (2, doc(2, "a")), (3, doc(3, "b")), (4, doc(4, "a")), (5, doc(5, None))]
    request = export_request(given, source_tenant="acme")
    # A new ResourceLogs each time the source changes: the records read in order are in seq order.
    resources = [[kv.value.string_value for kv in logs.resource.attributes] for logs in request.resource_logs]
    assert resources == [["a"], ["b"], ["a"], []]
    uids = [
        [next(kv.value.string_value for kv in r.attributes if kv.key == "log.record.uid") for r in logs.scope_logs[0].log_records]
        for logs in request.resource_logs
    ]
    assert uids == [["e-1", "e-2"], ["e-3"], ["e-4"], ["e-5"]]
    first = request.resource_logs[0].scope_logs[0].log_records[0]
    assert first.time_unix_nano == 1_767_225_600_000_001_000
