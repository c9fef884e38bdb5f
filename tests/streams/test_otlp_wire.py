"""core/otlp_wire.py writes the very bytes protobuf writes for core/otlp_out.py's request: every
catalog example, with each flag and field it reads, and generated documents (hypothesis)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from otaudit_collector.core.otlp_out import export_request
from otaudit_collector.core.otlp_wire import export_request_bytes

REPO = Path(__file__).resolve().parents[2]
FOLDERS = [REPO / "catalogs", *sorted(p for p in (REPO / "catalogs" / "examples").iterdir() if p.is_dir())]


def _examples() -> list[dict[str, Any]]:
    out = []
    for folder in FOLDERS:
        for path in sorted(folder.glob("*.json")):
            for event in json.loads(path.read_text(encoding="utf-8"))["events"].values():
                out.extend(event.get("examples", []))
    return out


def _same(events: list[tuple[int, dict[str, Any]]], tenant: str = "acme") -> None:
    assert export_request_bytes(events, source_tenant=tenant) == export_request(events, source_tenant=tenant).SerializeToString()


def test_every_catalog_example_alone_and_together() -> None:
    examples = _examples()
    assert len(examples) > 200
    for seq, example in enumerate(examples, 1):
        _same([(seq, {**example, "received_at": "2026-11-21T10:15:31.987654Z"})])
    _same(list(enumerate(examples, 1)))  # many sources, changing back and forth


def test_flags_bodies_odd_values_and_trace() -> None:
    base = {"id": "e-1", "tenant": "t", "event": "e", "occurred_at": "2026-01-01T00:00:00.000001Z"}
    cases: list[dict[str, Any]] = [
        {**base, "flags": ["time_from_observed", "attributes_dropped"]},
        {**base, "message": "hello ü", "attributes": {"x": 1, "log.body": "text stays an attribute"}},
        {**base, "attributes": {"log.body": {"a": [1, 2.5, None, True, False, {}, []]}, "otaudit.seq": 9}},
        {**base, "details": {"big": 2**70, "neg": -5, "zero": 0, "f": 0.0, "empty": "", "none": None}},
        {**base, "trace": {"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "span_id": "00f067aa0ba902b7"}},
        {**base, "trace": {"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736"}},
        {**base, "occurred_at": "1970-01-01T00:00:00Z"},  # time 0: left out, as proto3 does
        {**base, "source": {"service": "s"}},
        {**base, "source": {"instance": "i", "sequence": 7}},
        {**base, "actor": {"type": "user", "roles": []}, "related": [], "changes": [{"field": "a", "old": None, "new": "b"}]},
    ]
    for doc in cases:
        _same([(1, doc)])
    _same([(n, doc) for n, doc in enumerate(cases, 1)])


def test_the_same_errors() -> None:
    for doc, said in (
        ({"id": "e"}, "no 'event'"),
        ({"event": "e"}, "no 'id'"),
        ({"event": "e", "id": "i", "occurred_at": "yesterday"}, "not an RFC 3339 time"),
        ({"event": "e", "id": "i", "occurred_at": "2026-01-01T00:00:00Z", "trace": {"trace_id": "zz"}}, "not hexadecimal"),
    ):
        with pytest.raises(ValueError, match=said):
            export_request_bytes([(1, doc)], source_tenant="t")
        with pytest.raises(ValueError, match=said):
            export_request([(1, doc)], source_tenant="t")


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(
    details=st.dictionaries(st.text(max_size=10), JSON, max_size=5),
    attributes=st.dictionaries(st.text(max_size=10), JSON, max_size=3),
    name=st.text(min_size=1, max_size=20),
    seq=st.integers(min_value=1, max_value=2**62),
    service=st.none() | st.sampled_from(["a", "b"]),
)
def test_generated_documents(
    details: dict[str, Any], attributes: dict[str, Any], name: str, seq: int, service: str | None
) -> None:
    doc = {
        "id": "e-1",
        "tenant": "t",
        "event": name,
        "occurred_at": "2026-05-06T07:08:09.123456+02:00",
        "actor": {"type": "user", "name": name},
        "details": details,
        "attributes": attributes,
        "source": {"service": service} if service else {},
    }
    _same([(seq, doc), (seq + 1, {**doc, "source": {}})], tenant=name)
