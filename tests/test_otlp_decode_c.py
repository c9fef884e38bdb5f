"""The C decoder ``core._otlp_decode`` against upb, the protobuf runtime.

* A reference decoder over upb messages (``reference``) produces the same structure;
  for thousands of random requests (built with the protobuf classes, and written at
  the wire level with duplicates, unknown fields, groups, non-canonical varints and
  known fields under another wire type) the C decoder must give exactly its result.
* Fuzz: mutated requests. The C decoder returns the documented structure or raises
  ValueError, nothing else. Whenever upb parses the request, C gives the reference
  result with no undecodable record; whenever C accepts something (a record, or the
  request around its records), upb accepts it too. ``OTAUDIT_FUZZ_CASES`` runs more.
* Specific cases: invalid UTF-8, deep nesting, the max_depth boundary, merge semantics,
  inputs of every buffer type, a 5000-attribute record.
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import random
import re
import struct
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import (
    AnyValue,
    ArrayValue,
    InstrumentationScope,
    KeyValue,
    KeyValueList,
)
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

_otlp_decode = pytest.importorskip(
    "otaudit_collector.core._otlp_decode", reason="the C decoder is not built (pip install -e ./collector)"
)
decode = _otlp_decode.decode_logs_request

_upb: Any
try:
    from google._upb import _message as _upb
except ImportError:  # pragma: no cover - another protobuf backend
    _upb = None

CAP = 128  # the largest max_depth the C decoder takes
UTF8 = "a string field holds invalid UTF-8"
MALFORMED = "the record's bytes are truncated or malformed"


def too_deep(max_depth: int) -> str:
    return f"values are nested deeper than {max_depth} levels"


# -- the wire format, in Python (only ever run on bytes that upb or C accepted) ---------


class WireError(Exception):
    pass


def varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end:
            raise WireError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result & 0xFFFF_FFFF_FFFF_FFFF, pos
        shift += 7
        if shift >= 70:
            raise WireError("varint too long")


def field_at(data: bytes, pos: int, end: int) -> tuple[int, int, int, int, int]:
    """(number, wire type, tag end, value start, value end) of the field at pos; groups skipped."""
    tag, pos = varint(data, pos, end)
    number, wt = tag >> 3, tag & 7
    tag_end = value_start = pos
    if wt == 0:
        _, pos = varint(data, pos, end)
    elif wt in (1, 5):
        pos += 8 if wt == 1 else 4
    elif wt == 2:
        size, pos = varint(data, pos, end)
        value_start = pos
        pos += size
    elif wt == 3:
        while True:  # to the matching end-group tag
            inner, after = varint(data, pos, end)
            if inner & 7 == 4:
                if inner >> 3 != number:
                    raise WireError("mismatched end group")
                pos = after
                break
            pos = field_at(data, pos, end)[4]
    else:
        raise WireError(f"wire type {wt}")
    if pos > end:
        raise WireError("truncated")
    return number, wt, tag_end, value_start, pos


def wire_fields(data: bytes, start: int, end: int) -> Iterator[tuple[int, int, int, int, int, int]]:
    """(number, wire type, field start, tag end, value start, value end) for each field."""
    pos = start
    while pos < end:
        number, wt, tag_end, value_start, value_end = field_at(data, pos, end)
        yield number, wt, pos, tag_end, value_start, value_end
        pos = value_end


def submessages(data: bytes, start: int, end: int, number: int) -> list[tuple[int, int]]:
    return [(vs, ve) for n, wt, _, _, vs, ve in wire_fields(data, start, end) if n == number and wt == 2]


def enc_varint(n: int, pad: int = 0) -> bytes:
    """n as a varint, made `pad` bytes longer than needed (non-canonical) if pad > 0."""
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        if n == 0 and pad == 0:
            out.append(byte)
            return bytes(out)
        out.append(byte | 0x80)
        if n == 0:
            out += b"\x80" * (pad - 1) + b"\x00"
            return bytes(out)


def enc_tag(number: int, wt: int, pad: int = 0) -> bytes:
    return enc_varint(number << 3 | wt, pad)


def enc_len(number: int, payload: bytes, pad: int = 0) -> bytes:
    return enc_tag(number, 2) + enc_varint(len(payload), pad) + payload


# -- the reference: upb messages walked in Python --------------------------------------


class TooDeep(Exception):
    pass


def ref_value(v: AnyValue, depth: int, max_depth: int) -> Any:
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind in ("array_value", "kvlist_value"):
        if depth >= max_depth:
            raise TooDeep
        if kind == "array_value":
            return [ref_value(item, depth + 1, max_depth) for item in v.array_value.values]
        return {kv.key: ref_value(kv.value, depth + 1, max_depth) for kv in v.kvlist_value.values}
    return getattr(v, kind)


def ref_attributes(items: Any, max_depth: int) -> list[tuple[str, Any]]:
    return [(kv.key, ref_value(kv.value, 0, max_depth)) for kv in items]


def ref_record(record: LogRecord, raw: bytes, max_depth: int) -> tuple[Any, ...] | str:
    try:
        attributes = ref_attributes(record.attributes, max_depth)
        body = ref_value(record.body, 0, max_depth) if record.HasField("body") else None
    except TooDeep:
        return too_deep(max_depth)
    return (raw, record.time_unix_nano, record.observed_time_unix_nano, record.event_name, record.trace_id,
            record.span_id, body, attributes, record.dropped_attributes_count, record.flags)  # fmt: skip


def reference(data: bytes, max_depth: int, message: ExportLogsServiceRequest | None = None) -> list[Any]:
    """What decode_logs_request must return for bytes upb parses (ValueError as in C)."""
    if message is None:
        message = ExportLogsServiceRequest.FromString(data)
    out = []
    rl_spans = submessages(data, 0, len(data), 1)
    assert len(rl_spans) == len(message.resource_logs)
    for i, (rl, (rs, re_)) in enumerate(zip(message.resource_logs, rl_spans, strict=True)):
        resource_bytes = b"".join(data[vs:ve] for vs, ve in submessages(data, rs, re_, 1))
        try:
            attributes = ref_attributes(rl.resource.attributes, max_depth)
        except TooDeep:
            raise ValueError(f"resource_logs[{i}].resource: {too_deep(max_depth)}") from None
        scopes = []
        for sl, (ss, se) in zip(rl.scope_logs, submessages(data, rs, re_, 2), strict=True):
            spans = submessages(data, ss, se, 2)
            scopes.append([ref_record(r, data[vs:ve], max_depth) for r, (vs, ve) in zip(sl.log_records, spans, strict=True)])
        out.append((resource_bytes, attributes, scopes))
    return out


def norm(x: Any) -> Any:
    """A strictly typed, comparable form (True != 1, NaN == NaN, -0.0 != 0.0)."""
    t = type(x)
    if x is None:
        return None
    if t is float:
        return ("float", "nan" if math.isnan(x) else repr(x))
    if t in (bool, int, str, bytes):
        return (t.__name__, x)
    if t is list:
        return ("list", [norm(v) for v in x])
    if t is tuple:
        return ("tuple", tuple(norm(v) for v in x))
    if t is dict:
        return ("dict", {norm(k): norm(v) for k, v in x.items()})
    raise AssertionError(f"unexpected type {t.__name__}: {x!r}")


def run(fn: Any, *args: Any) -> Any:
    """fn(*args) normalized, or ('ValueError',) if it raised ValueError."""
    try:
        return norm(fn(*args))
    except ValueError:
        return ("ValueError",)


@contextlib.contextmanager
def upb_unlimited() -> Iterator[None]:
    """upb without its nesting limit of 100 (for: C accepted it, so must upb)."""
    _upb.SetAllowOversizeProtos(True)
    try:
        yield
    finally:
        _upb.SetAllowOversizeProtos(False)


def check_value(v: Any) -> None:
    if isinstance(v, list):
        for item in v:
            check_value(item)
    elif isinstance(v, dict):
        for k, item in v.items():
            assert type(k) is str
            check_value(item)
    else:
        assert v is None or type(v) in (str, bool, int, float, bytes), v


def check_attributes(attributes: Any) -> None:
    assert type(attributes) is list
    for pair in attributes:
        assert type(pair) is tuple and len(pair) == 2 and type(pair[0]) is str
        check_value(pair[1])


def check_shape(result: Any) -> None:
    """The documented structure, whatever the input."""
    assert type(result) is list
    for resource in result:
        assert type(resource) is tuple and len(resource) == 3
        resource_bytes, attributes, scopes = resource
        assert type(resource_bytes) is bytes
        check_attributes(attributes)
        assert type(scopes) is list
        for records in scopes:
            assert type(records) is list
            for record in records:
                if type(record) is str:
                    assert record in (UTF8, MALFORMED) or record.startswith("values are nested deeper than"), record
                    continue
                assert type(record) is tuple and len(record) == 10
                raw, t, ot, event, trace, span, body, attrs, dropped, flags = record
                assert type(raw) is bytes and type(event) is str and type(trace) is bytes and type(span) is bytes
                assert all(type(n) is int and n >= 0 for n in (t, ot, dropped, flags))
                assert t < 2**64 and ot < 2**64 and dropped < 2**32 and flags < 2**32
                check_value(body)
                check_attributes(attrs)


# -- random requests built with the protobuf classes -----------------------------------

ALPHABET = "abcxyz ._-09ÄéßΩжא中文日本😀🎉𝄞\U0010ffff\u2028\x00\x7f"
STRINGS = ["", "a", "service.name", "ünïcødé", "日本語テキスト", "😀", "𝄞 music", "\x00nul", "x" * 300, "mixed 😀 é ascii"]
INTS = [0, 1, -1, 127, 128, -128, 2**31, -(2**31), 2**63 - 1, -(2**63)]
DOUBLES = [0.0, -0.0, 1.5, -2.25, float("nan"), float("inf"), float("-inf"), 5e-324, 1.7976931348623157e308]


def rand_str(rng: random.Random) -> str:
    if rng.random() < 0.4:
        return rng.choice(STRINGS)
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 12)))


def rand_key(rng: random.Random) -> str:
    return rng.choice(["a", "b", "k"]) if rng.random() < 0.3 else rand_str(rng)  # duplicates


def rand_value(rng: random.Random, depth: int, max_nesting: int = 6) -> AnyValue:
    kinds = ["none", "str", "bool", "int", "double", "bytes"] * 3 + ["strindex"]
    if depth < max_nesting:
        kinds += ["array", "kvlist"] * 6
    kind = rng.choice(kinds)
    if kind == "none":
        return AnyValue()
    if kind == "str":
        return AnyValue(string_value=rand_str(rng))
    if kind == "bool":
        return AnyValue(bool_value=rng.random() < 0.5)
    if kind == "int":
        return AnyValue(int_value=rng.choice(INTS) if rng.random() < 0.5 else rng.randint(-(2**63), 2**63 - 1))
    if kind == "double":
        return AnyValue(double_value=rng.choice(DOUBLES) if rng.random() < 0.5 else rng.uniform(-1e9, 1e9))
    if kind == "bytes":
        return AnyValue(bytes_value=rng.randbytes(rng.randint(0, 20)))
    if kind == "strindex":  # in the oneof since opentelemetry-proto 1.7 (profiles)
        return AnyValue(string_value_strindex=rng.choice([0, 5, -1, 2**31 - 1, -(2**31)]))
    n = rng.choice([0, 1, 2, 3, 5])
    if kind == "array":
        return AnyValue(array_value=ArrayValue(values=[rand_value(rng, depth + 1, max_nesting) for _ in range(n)]))
    return AnyValue(kvlist_value=KeyValueList(values=[rand_kv(rng, depth + 1, max_nesting) for _ in range(n)]))


def rand_kv(rng: random.Random, depth: int, max_nesting: int = 6) -> KeyValue:
    kv = KeyValue(key=rand_key(rng), key_strindex=rng.choice([0, 0, 0, 3]))
    if rng.random() < 0.95:
        kv.value.CopyFrom(rand_value(rng, depth, max_nesting))
    return kv


def rand_record(rng: random.Random) -> LogRecord:
    record = LogRecord(
        time_unix_nano=rng.choice([0, rng.getrandbits(64), 1_700_000_000_000_000_000]),
        observed_time_unix_nano=rng.choice([0, rng.getrandbits(64)]),
        severity_number=rng.randint(0, 24),  # type: ignore[arg-type]
        severity_text=rng.choice(["", "INFO", "wärn"]),
        attributes=[rand_kv(rng, 0) for _ in range(rng.choice([0, 1, 3, 8, 15]))],
        dropped_attributes_count=rng.choice([0, 1, 2**32 - 1]),
        flags=rng.choice([0, 1, 2**32 - 1]),
        trace_id=rng.randbytes(rng.choice([0, 16, 16, 3, 33])),
        span_id=rng.randbytes(rng.choice([0, 8, 8, 5])),
        event_name=rand_str(rng),
    )
    if rng.random() < 0.6:
        record.body.CopyFrom(rand_value(rng, 0))
    return record


def rand_request(rng: random.Random) -> ExportLogsServiceRequest:
    request = ExportLogsServiceRequest()
    for _ in range(rng.choice([0, 1, 1, 2, 3])):
        rl = request.resource_logs.add(schema_url=rng.choice(["", "https://opentelemetry.io/schemas/1.26.0"]))
        if rng.random() < 0.8:
            rl.resource.CopyFrom(Resource(attributes=[rand_kv(rng, 0, 2) for _ in range(rng.randint(0, 4))]))
            if rng.random() < 0.3:
                rl.resource.entity_refs.add(type="service", id_keys=["service.name", rand_str(rng)])
        for _ in range(rng.choice([0, 1, 1, 2, 3])):
            sl = rl.scope_logs.add(schema_url=rng.choice(["", "s"]))
            if rng.random() < 0.7:
                sl.scope.CopyFrom(InstrumentationScope(name=rand_str(rng), version="1.0", attributes=[rand_kv(rng, 0)]))
            sl.log_records.extend(rand_record(rng) for _ in range(rng.choice([0, 1, 2, 4, 6])))
    return request


# -- random requests written at the wire level -----------------------------------------


class Wire:
    """Valid requests with what a serializer never writes: fields given twice (merged
    or replaced), unknown fields and groups, known fields under another wire type,
    non-canonical varints, fields out of order."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def varint(self, n: int, limit: int) -> bytes:
        """n as a varint of at most `limit` bytes, sometimes longer than needed."""
        room = limit - len(enc_varint(n))
        return enc_varint(n, self.rng.choice([0] * 6 + list(range(1, room + 1))))

    def tag(self, number: int, wt: int) -> bytes:
        return self.varint(number << 3 | wt, 5)  # tags and lengths: at most 5 bytes for upb

    def len_field(self, number: int, payload: bytes) -> bytes:
        return self.tag(number, 2) + self.varint(len(payload), 5) + payload

    def varint_field(self, number: int, value: int) -> bytes:
        return self.tag(number, 0) + self.varint(value, 10)

    def unknown(self, depth: int = 0) -> bytes:
        rng = self.rng
        number = rng.choice([13, 14, 20, 99, 1000, 2**29 - 1])
        wt = rng.choice([0, 1, 2, 5, 3] if depth < 3 else [0, 1, 2, 5])
        if wt == 0:
            return self.varint_field(number, rng.getrandbits(rng.choice([1, 7, 64])))
        if wt in (1, 5):
            return self.tag(number, wt) + rng.randbytes(8 if wt == 1 else 4)
        if wt == 2:
            return self.len_field(number, rng.randbytes(rng.randint(0, 6)))  # not validated, even as UTF-8
        inner = b"".join(self.unknown(depth + 1) for _ in range(rng.randint(0, 2)))
        return self.tag(number, 3) + inner + self.tag(number, 4)

    def wrong_type(self, number: int, expected: int) -> bytes:
        """Known field number, another wire type: an unknown field to upb."""
        wt = self.rng.choice([w for w in (0, 1, 2, 5) if w != expected])
        if wt == 0:
            return self.varint_field(number, 7)
        if wt == 2:
            return self.len_field(number, b"\xff\xfe")  # would be invalid as a string or message
        return self.tag(number, wt) + b"\x00" * (8 if wt == 1 else 4)

    def message(self, parts: list[bytes], known: list[tuple[int, int]]) -> bytes:
        rng = self.rng
        for _ in range(rng.choice([0, 0, 0, 1, 2])):
            parts.append(self.unknown())
        if known and rng.random() < 0.15:
            parts.append(self.wrong_type(*rng.choice(known)))
        if rng.random() < 0.3:
            rng.shuffle(parts)
        return b"".join(parts)

    def string(self, number: int) -> bytes:
        return self.len_field(number, rand_str(self.rng).encode())

    def any_value(self, depth: int) -> bytes:
        rng = self.rng
        parts = []
        for _ in range(rng.choice([0, 1, 1, 1, 1, 2, 3])):
            kind = rng.choice([1, 2, 3, 4, 5, 6, 7, 8] if depth < 5 else [1, 2, 3, 4, 7, 8])
            if kind == 1:
                parts.append(self.string(1))
            elif kind == 2:
                parts.append(self.varint_field(2, rng.choice([0, 1, 2, 2**64 - 1])))
            elif kind == 3:
                parts.append(self.varint_field(3, rng.getrandbits(64)))
            elif kind == 4:
                parts.append(self.tag(4, 1) + struct.pack("<d", rng.choice(DOUBLES)))
            elif kind == 5:
                items = [self.len_field(1, self.any_value(depth + 1)) for _ in range(rng.randint(0, 3))]
                parts.append(self.len_field(5, self.message(items, [(1, 2)])))
            elif kind == 6:
                items = [self.len_field(1, self.key_value(depth + 1)) for _ in range(rng.randint(0, 3))]
                parts.append(self.len_field(6, self.message(items, [(1, 2)])))
            elif kind == 7:
                parts.append(self.len_field(7, rng.randbytes(rng.randint(0, 5))))
            else:  # string_value_strindex, an int32
                parts.append(self.varint_field(8, rng.choice([0, 1, 2**31, 2**32 - 1, 2**64 - 1, rng.getrandbits(64)])))
        return self.message(parts, [(1, 2), (2, 0), (3, 0), (4, 1), (5, 2), (6, 2), (7, 2), (8, 0)])

    def key_value(self, depth: int) -> bytes:
        rng = self.rng
        parts = [self.len_field(1, rand_key(rng).encode()) for _ in range(rng.choice([0, 1, 1, 1, 2]))]
        parts += [self.len_field(2, self.any_value(depth)) for _ in range(rng.choice([0, 1, 1, 1, 2]))]
        if rng.random() < 0.1:
            parts.append(self.varint_field(3, rng.getrandbits(32)))  # key_strindex
        return self.message(parts, [(1, 2), (2, 2), (3, 0)])

    def record(self) -> bytes:
        rng = self.rng
        parts = [self.len_field(6, self.key_value(0)) for _ in range(rng.randint(0, 6))]
        parts += [self.len_field(5, self.any_value(0)) for _ in range(rng.choice([0, 1, 1, 2]))]
        for number, wt in rng.sample([(1, 1), (11, 1), (2, 0), (3, 2), (7, 0), (8, 5), (9, 2), (10, 2), (12, 2)], 5):
            if wt == 1:
                parts.append(self.tag(number, 1) + rng.randbytes(8))
            elif wt == 5:
                parts.append(self.tag(number, 5) + rng.randbytes(4))
            elif wt == 0:
                parts.append(self.varint_field(number, rng.getrandbits(rng.choice([3, 32, 64]))))
            elif number in (9, 10):
                parts.append(self.len_field(number, rng.randbytes(rng.choice([0, 8, 16]))))
            else:
                parts.append(self.string(number))
        known = [(1, 1), (2, 0), (3, 2), (5, 2), (6, 2), (7, 0), (8, 5), (9, 2), (10, 2), (11, 1), (12, 2)]
        return self.message(parts, known)

    def scope_logs(self) -> bytes:
        rng = self.rng
        parts = [self.len_field(2, self.record()) for _ in range(rng.randint(0, 4))]
        for _ in range(rng.choice([0, 1, 1, 2])):
            scope = [self.string(1), self.string(2), self.len_field(3, self.key_value(0)), self.varint_field(4, 3)]
            parts.append(self.len_field(1, self.message(rng.sample(scope, rng.randint(0, 4)), [(1, 2), (3, 2)])))
        if rng.random() < 0.3:
            parts.append(self.string(3))
        return self.message(parts, [(1, 2), (2, 2), (3, 2)])

    def request(self) -> bytes:
        rng = self.rng
        rls = []
        for _ in range(rng.choice([0, 1, 1, 2, 3])):
            parts = [self.len_field(2, self.scope_logs()) for _ in range(rng.randint(0, 3))]
            for _ in range(rng.choice([0, 1, 1, 1, 2])):
                attrs = [self.len_field(1, self.key_value(3)) for _ in range(rng.randint(0, 3))]
                if rng.random() < 0.3:  # entity_refs: strings only
                    ref = [self.string(rng.randint(1, 4)) for _ in range(rng.randint(0, 4))]
                    attrs.append(self.len_field(3, self.message(ref, [(1, 2), (3, 2)])))
                parts.append(self.len_field(1, self.message(attrs, [(1, 2), (2, 0), (3, 2)])))
            if rng.random() < 0.3:
                parts.append(self.string(3))
            rls.append(self.len_field(1, self.message(parts, [(1, 2), (2, 2), (3, 2)])))
        return self.message(rls, [(1, 2)])


# -- differential ----------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_random_requests_match_reference(seed: int) -> None:
    rng = random.Random(seed)
    records = str_records = 0
    for _ in range(500):
        message = rand_request(rng)
        data = message.SerializeToString()
        max_depth = rng.choice([0, 1, 2, 3, 4, 5, 6, 8, 16, CAP])
        expected = run(reference, data, max_depth)
        assert run(decode, data, max_depth) == expected
        if expected == ("ValueError",):
            continue
        result = decode(data, max_depth)
        check_shape(result)
        # raw bytes are the record's own: what the protobuf serializer writes for it
        for rl, (_, _, scopes) in zip(message.resource_logs, result, strict=True):
            for sl, records_out in zip(rl.scope_logs, scopes, strict=True):
                for record, out in zip(sl.log_records, records_out, strict=True):
                    records += 1
                    if isinstance(out, str):
                        str_records += 1
                    else:
                        assert out[0] == record.SerializeToString()
    assert records > 1000 and 0 < str_records < records  # both outcomes are exercised


@pytest.mark.parametrize("seed", range(2))
def test_wire_level_requests_match_reference(seed: int) -> None:
    wire = Wire(random.Random(1000 + seed))
    for _ in range(500):
        data = wire.request()
        message = ExportLogsServiceRequest.FromString(data)  # all valid
        max_depth = wire.rng.choice([1, 2, 3, 6, CAP])
        assert run(decode, data, max_depth) == run(reference, data, max_depth, message)


# -- fuzz ------------------------------------------------------------------------------

INTERESTING = [b"\x0b\x0c", b"\x0c", b"\x0b", b"\x80", b"\x80\x80\x80\x80\x80", b"\xff\xff\xff\xff\x0f", b"\x00",
               b"\xc0\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xff", b"\x07", b"\x0e", b"\x0f"]  # fmt: skip


def mutate(rng: random.Random, data: bytes, corpus: list[bytes]) -> bytes:
    b = bytearray(data)
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        op = rng.randrange(10)
        pos = rng.randrange(len(b) + 1)
        if op == 0 and b:  # bit flip
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        elif op == 1 and b:  # random byte
            b[rng.randrange(len(b))] = rng.randrange(256)
        elif op == 2:  # insert random bytes
            b[pos:pos] = rng.randbytes(rng.randint(1, 4))
        elif op == 3:  # delete bytes
            del b[pos : pos + rng.randint(1, 4)]
        elif op == 4:  # truncate
            del b[pos:]
        elif op == 5:  # a random length prefix (or varint) over what was there
            n = rng.choice([0, 1, 2, rng.randrange(128), rng.randrange(len(b) + 2), 2**31 - 1, 2**32, rng.getrandbits(64)])
            encoded = enc_varint(n)
            b[pos : pos + len(encoded)] = encoded
        elif op == 6 and b:  # duplicate a slice elsewhere
            i = rng.randrange(len(b))
            b[pos:pos] = b[i : i + rng.randint(1, 16)]
        elif op == 7 and corpus:  # splice with another input
            other = rng.choice(corpus)
            b[pos:] = other[rng.randrange(len(other) + 1) :]
        elif op == 8:
            b[pos:pos] = rng.choice(INTERESTING)
        elif op == 9 and b:  # overwrite with interesting bytes
            chunk = rng.choice(INTERESTING)
            b[pos : pos + len(chunk)] = chunk
    return bytes(b)


def rebuild_without(data: bytes, blank: set[tuple[int, int, int]]) -> bytes:
    """data with the records at the given (resource, scope, record) positions emptied."""

    def walk(start: int, end: int, level: int, path: tuple[int, ...]) -> bytes:
        out = bytearray()
        index = 0
        for number, wt, fs, te, vs, ve in wire_fields(data, start, end):
            if wt == 2 and number == (1 if level == 0 else 2):
                here = (*path, index)
                index += 1
                payload = (b"" if here in blank else data[vs:ve]) if level == 2 else walk(vs, ve, level + 1, here)
                out += data[fs:te] + enc_varint(len(payload)) + payload
            else:
                out += data[fs:ve]
        return bytes(out)

    return walk(0, len(data), 0, ())


def fuzz_one(data: bytes, max_depth: int, stats: dict[str, int]) -> None:
    error = ""
    try:
        result = decode(data, max_depth)
    except ValueError as exc:
        result, error = None, str(exc)
    if result is not None:
        check_shape(result)

    # upb parses it: C gives the reference result, with no undecodable record
    try:
        message = ExportLogsServiceRequest.FromString(data)
    except DecodeError:
        message = None
    if message is not None:
        stats["upb_ok"] += 1
        got = norm(result) if result is not None else ("ValueError",)
        assert got == run(reference, data, max_depth, message)
        if max_depth == CAP:
            assert result is not None
            assert not any(isinstance(r, str) for _, _, scopes in result for records in scopes for r in records)
        return

    # upb refuses it: whatever C accepted (the request around its records, each record
    # it decoded) upb accepts too, without its nesting limit, and decodes the same way
    with upb_unlimited():
        if result is None:
            stats["both_refuse"] += 1
            deep = re.match(r"resource_logs\[(\d+)\]\.resource: values are nested deeper than", error)
            if deep:  # a valid Resource, too deep for max_depth
                # C stopped there: only what comes before is known to be well formed
                rls = ((vs, ve) for n, wt, _, _, vs, ve in wire_fields(data, 0, len(data)) if n == 1 and wt == 2)
                rs, re_ = next(islice(rls, int(deep[1]), None))
                spans = ((vs, ve) for n, wt, _, _, vs, ve in wire_fields(data, rs, re_) if n == 1 and wt == 2)
                resource = Resource()
                for vs, ve in spans:  # up to the first too deep
                    resource.MergeFromString(data[vs:ve])
                    with contextlib.suppress(TooDeep):
                        ref_attributes(resource.attributes, max_depth)
                        continue
                    break
                with pytest.raises(TooDeep):
                    ref_attributes(resource.attributes, max_depth)
            else:
                with pytest.raises(DecodeError):
                    ExportLogsServiceRequest.FromString(data)
            return
        broken = {(i, j, k): r for i, (_, _, scopes) in enumerate(result) for j, records in enumerate(scopes)
                  for k, r in enumerate(records) if isinstance(r, str)}  # fmt: skip
        stats["str_records"] += len(broken)
        clean = rebuild_without(data, set(broken))
        message = ExportLogsServiceRequest.FromString(clean)  # raises if C accepted a broken request
        expected = reference(clean, max_depth, message)
        for i, (rb, attrs, scopes) in enumerate(result):
            assert norm((rb, attrs)) == norm(expected[i][:2])
            for j, records in enumerate(scopes):
                for k, record in enumerate(records):
                    if (i, j, k) not in broken:
                        assert norm(record) == norm(expected[i][2][j][k])
                        continue
                    rs, re_ = submessages(data, 0, len(data), 1)[i]
                    ss, se = submessages(data, rs, re_, 2)[j]
                    vs, ve = submessages(data, ss, se, 2)[k]
                    raw = data[vs:ve]
                    if record == too_deep(max_depth):
                        assert ref_record(LogRecord.FromString(raw), raw, max_depth) == record
                    else:
                        with pytest.raises(DecodeError):
                            LogRecord.FromString(raw)


def fuzz_corpus() -> list[bytes]:
    rng = random.Random(77)
    corpus = []
    for _ in range(60):
        message = rand_request(rng)
        for rl in message.resource_logs:  # small requests: many mutations land in records
            del rl.scope_logs[2:]
            for sl in rl.scope_logs:
                del sl.log_records[3:]
        corpus.append(message.SerializeToString())
    wire = Wire(random.Random(78))
    corpus += [wire.request() for _ in range(60)]
    return [c for c in corpus if len(c) < 6000]


@pytest.mark.skipif(_upb is None, reason="needs the upb protobuf backend")
def test_fuzz_mutations() -> None:
    cases = int(os.environ.get("OTAUDIT_FUZZ_CASES", "50000"))
    rng = random.Random(int(os.environ.get("OTAUDIT_FUZZ_SEED", "1")))
    corpus = fuzz_corpus()
    stats = {"upb_ok": 0, "both_refuse": 0, "str_records": 0}
    started = time.monotonic()
    for n in range(cases):
        data = mutate(rng, rng.choice(corpus), corpus)
        max_depth = CAP if n % 4 else rng.choice([0, 1, 3])
        try:
            fuzz_one(data, max_depth, stats)
        except Exception as exc:
            raise AssertionError(f"case {n}: max_depth={max_depth} data={data!r}") from exc
    elapsed = time.monotonic() - started
    print(f"fuzz: {cases} cases in {elapsed:.1f}s, {stats}")
    # the mutations reach every outcome
    assert stats["upb_ok"] > cases // 20 and stats["both_refuse"] > cases // 20 and stats["str_records"] > cases // 20


# -- specific cases --------------------------------------------------------------------


def kv(key: str, value: AnyValue | None = None) -> KeyValue:
    return KeyValue(key=key, value=value) if value is not None else KeyValue(key=key)


def request_of(records: list[bytes], resource: bytes = b"") -> bytes:
    """A request around record bytes given as they are."""
    scope = b"".join(enc_len(2, r) for r in records)
    rl = (enc_len(1, resource) if resource else b"") + enc_len(2, scope)
    return enc_len(1, rl)


def nested(levels: int, kind: str = "array", leaf: bytes = b"\x18\x05") -> bytes:
    """AnyValue bytes: `levels` lists (or {"k": ...} dicts) one inside the other around int 5."""
    headers = []  # innermost first; every level is a prefix, so no copying of the inside
    size = len(leaf)
    key = enc_len(1, b"k")
    for _ in range(levels):
        if kind == "array":  # AnyValue.array_value { values: <inside> }
            inner = enc_tag(1, 2) + enc_varint(size)
            header = enc_tag(5, 2) + enc_varint(size + len(inner)) + inner
        else:  # AnyValue.kvlist_value { values: KeyValue { key: "k", value: <inside> } }
            kv_head = key + enc_tag(2, 2) + enc_varint(size)
            inner = enc_tag(1, 2) + enc_varint(size + len(kv_head)) + kv_head
            header = enc_tag(6, 2) + enc_varint(size + len(inner)) + inner
        headers.append(header)
        size += len(header)
    return b"".join(reversed(headers)) + leaf


def records_of(result: list[Any]) -> list[Any]:
    return [r for _, _, scopes in result for records in scopes for r in records]


def test_invalid_utf8_rejects_only_its_record() -> None:
    good = LogRecord(event_name="ok", attributes=[kv("a", AnyValue(string_value="fine"))]).SerializeToString()
    for bad_string in (b"\xff", b"\xc0\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"abc\xe2\x82"):
        for bad in (
            enc_len(6, enc_len(1, b"a") + enc_len(2, enc_len(1, bad_string))),  # attribute value
            enc_len(6, enc_len(1, bad_string)),  # attribute key
            enc_len(12, bad_string),  # event_name
            enc_len(3, bad_string),  # severity_text: not returned, still checked
            enc_len(5, nested(3, "kvlist", enc_len(1, bad_string))),  # deep in the body
        ):
            result = decode(request_of([good, good + bad, good]), 16)
            first, broken, last = records_of(result)
            assert broken == UTF8
            assert first[3] == last[3] == "ok" and first[7] == [("a", "fine")]
            assert first[0] == last[0] == good
    # a string that is not a string field (bytes, unknown field, wrong wire type) is not checked
    for fine in (enc_len(9, b"\xff"), enc_len(99, b"\xff"), enc_len(5, enc_len(7, b"\xff"))):
        assert records_of(decode(request_of([good + fine]), 16))[0][3] == "ok"


def test_malformed_record_keeps_neighbours() -> None:
    good = LogRecord(time_unix_nano=1).SerializeToString()
    for bad in (b"\x09\x00", b"\x08", b"\x08\x80", b"\x32\x05ab", b"\x0c", b"\x0e", b"\x00\x00",
                b"\x08" + b"\xff" * 10 + b"\x01", b"\x0b", b"\xa3\x01\xac\x01", b"\x2a\x03\x2a\x05\x0a"):  # fmt: skip
        result = records_of(decode(request_of([good, bad, good]), 16))
        assert result[0][1] == 1 and result[2][1] == 1 and result[1] == MALFORMED, bad


@pytest.mark.parametrize("kind", ["array", "kvlist"])
def test_deep_nesting_is_an_undecodable_record(kind: str) -> None:
    good = LogRecord(event_name="ok").SerializeToString()
    for levels in (17, 400, 100_000):
        deep = enc_len(5, nested(levels, kind))
        result = records_of(decode(request_of([good, deep, good]), 16))
        assert result[1] == too_deep(16) and result[0][3] == result[2][3] == "ok"
        result = records_of(decode(request_of([enc_len(6, enc_len(1, b"k") + enc_len(2, nested(levels, kind)))]), 16))
        assert result == [too_deep(16)]


def test_deep_resource_attributes_raise() -> None:
    resource = enc_len(1, enc_len(1, b"k") + enc_len(2, nested(5, "kvlist")))
    data = request_of([b""], resource)
    assert decode(data, 5)[0][1] == [("k", {"k": {"k": {"k": {"k": {"k": 5}}}}})]
    with pytest.raises(ValueError, match=r"resource_logs\[0\]\.resource: values are nested deeper than 4 levels"):
        decode(data, 4)
    with pytest.raises(ValueError, match=r"resource_logs\[0\]\.resource"):
        decode(request_of([b""], enc_len(1, enc_len(1, b"k") + enc_len(2, nested(100_000)))), 16)


@pytest.mark.parametrize("kind", ["array", "kvlist"])
@pytest.mark.parametrize("max_depth", [0, 1, 2, 3, 5, 16, 64, CAP])
def test_max_depth_boundary(kind: str, max_depth: int) -> None:
    """The deepest list or dict at depth max_depth - 1 is fine, at max_depth it is not."""
    for where in ("body", "attribute"):

        def record(levels: int, where: str = where) -> bytes:
            value = nested(levels, kind)
            return enc_len(5, value) if where == "body" else enc_len(6, enc_len(1, b"k") + enc_len(2, value))

        ok, deep = records_of(decode(request_of([record(max_depth), record(max_depth + 1)]), max_depth))
        assert isinstance(ok, tuple) and deep == too_deep(max_depth)
        value = ok[6] if where == "body" else ok[7][0][1]
        for _ in range(max_depth):
            value = value[0] if kind == "array" else value["k"]
        assert value == 5
        if max_depth <= 16:  # the reference agrees (deeper, upb's own nesting limit refuses)
            data = request_of([record(max_depth), record(max_depth + 1)])
            assert run(decode, data, max_depth) == run(reference, data, max_depth)


def test_discarded_values_do_not_count_for_depth() -> None:
    """An AnyValue whose list is replaced by a later oneof member is not too deep (upb keeps the last)."""
    value = nested(5) + enc_len(1, b"last")
    data = request_of([enc_len(5, value), enc_len(6, enc_len(2, nested(5)) + enc_len(2, enc_len(1, b"s")))])
    result = records_of(decode(data, 2))
    assert result[0][6] == "last" and result[1][7] == [("", "s")]
    assert run(decode, data, 2) == run(reference, data, 2)


def test_groups_and_unknown_fields_like_upb() -> None:
    def group(number: int, inner: bytes = b"") -> bytes:
        return enc_tag(number, 3) + inner + enc_tag(number, 4)

    good = LogRecord(event_name="ok").SerializeToString()
    accepted = [group(20), group(1), group(5), group(20, b"\x08\x01" + group(21) + enc_len(3, b"\xff")),
                group(20, group(20, group(20))), enc_tag(2**29 - 1, 0) + b"\x01", enc_tag(13, 5) + b"1234",
                group(20, b"\x00\x01" + group(0)),  # field number 0 is fine inside a group (not outside)
                b"\x98\x80\x80\x80\x00\x05", enc_tag(20, 2) + b"\x80\x80\x80\x80\x00"]  # fmt: skip
    nest = b"".join(enc_tag(20, 3) for _ in range(100)) + b"".join(enc_tag(20, 4) for _ in range(100))
    accepted.append(nest)
    refused = [group(20)[:-2], enc_tag(20, 3) + enc_tag(21, 4), enc_tag(20, 4), group(0), b"\x02\x00",
               b"\x98\x80\x80\x80\x80\x00\x05", enc_tag(20, 2) + b"\x80\x80\x80\x80\x80\x00", b"\x98\x80\x80\x80\x10\x05",
               enc_tag(20, 6), enc_tag(20, 7), b"\x00\x00",
               enc_tag(20, 3) + nest + enc_tag(20, 4),  # 101 nested groups
               b"".join(enc_tag(20, 3) for _ in range(100_000))]  # fmt: skip
    for extra in accepted:
        LogRecord.FromString(good + extra)
        assert records_of(decode(request_of([good + extra]), 16))[0][3] == "ok", extra
    for extra in refused:
        with pytest.raises(DecodeError):
            LogRecord.FromString(good + extra)
        assert records_of(decode(request_of([good + extra]), 16)) == [MALFORMED], extra
        with pytest.raises(ValueError, match="request: truncated or malformed field"):
            decode(request_of([good]) + extra, 16)


def test_merge_semantics_match_upb() -> None:
    """Fields given twice: messages merge, scalars and other oneof members replace."""

    def arr(*items: bytes) -> bytes:
        return enc_len(5, b"".join(enc_len(1, i) for i in items))

    def kvl(*pairs: tuple[bytes, bytes]) -> bytes:
        return enc_len(6, b"".join(enc_len(1, enc_len(1, k) + enc_len(2, v)) for k, v in pairs))

    def s(text: bytes) -> bytes:
        return enc_len(1, text)

    bodies = [
        arr(s(b"a")) + arr(s(b"b")),  # two arrays: one list ['a', 'b']
        kvl((b"x", s(b"1"))) + kvl((b"y", s(b"2")), (b"x", s(b"3"))),  # dicts merge, the later x wins
        arr(s(b"a")) + s(b"str") + arr(s(b"b")),  # a string in between: only ['b']
        s(b"one") + s(b"two"),  # last string
        s(b"x") + b"\x10\x05",  # bool (any nonzero) replaces the string
        b"\x18\xff\xff\xff\xff\xff\xff\xff\xff\xff\x7f",  # int64 -1 with excess bits dropped
        arr() + kvl(),  # empty dict
        b"\x08\x01" + b"\x2a\x00",  # wrong wire type for string_value, then an empty list
    ]
    records = [enc_len(5, b) for b in bodies]
    records.append(enc_len(5, s(b"first")) + enc_len(5, arr(s(b"a"))))  # body twice: merged AnyValue
    records.append(enc_len(5, arr(s(b"a"))) + enc_len(5, arr(s(b"b"))))
    records.append(enc_len(6, enc_len(1, b"k") + enc_len(2, arr(s(b"a"))) + enc_len(1, b"k2") + enc_len(2, arr(s(b"b")))))
    records.append(enc_len(12, b"first") + enc_len(12, b"second") + enc_len(9, b"t1") + enc_len(9, b"t2"))
    resource = enc_len(1, enc_len(1, b"r1") + enc_len(2, s(b"v1")))
    rl = enc_len(1, resource) + enc_len(2, b"".join(enc_len(2, r) for r in records)) + enc_len(1, resource + b"\x10\x01")
    data = enc_len(1, rl)
    result = decode(data, 16)
    assert run(decode, data, 16) == run(reference, data, 16)
    got = records_of(result)
    assert [r[6] for r in got[: len(bodies)]] == [["a", "b"], {"x": "3", "y": "2"}, ["b"], "two", True, -1, {}, []]
    assert got[len(bodies)][6] == ["a"] and got[len(bodies) + 1][6] == ["a", "b"]
    assert got[len(bodies) + 2][7] == [("k2", ["a", "b"])]
    assert got[len(bodies) + 3][3:5] == ("second", b"t2")
    assert result[0][0] == resource + resource + b"\x10\x01"  # resource given twice: bytes joined
    assert result[0][1] == [("r1", "v1"), ("r1", "v1")]


def test_values_of_every_kind() -> None:
    body = AnyValue(kvlist_value=KeyValueList(values=[
        kv("s", AnyValue(string_value="😀 𝄞")), kv("b", AnyValue(bool_value=False)), kv("i", AnyValue(int_value=-(2**63))),
        kv("d", AnyValue(double_value=float("-inf"))), kv("y", AnyValue(bytes_value=b"\x00\xff")), kv("n"),
        kv("e", AnyValue()), kv("a", AnyValue(array_value=ArrayValue(values=[AnyValue(int_value=2**63 - 1), AnyValue()]))),
    ]))  # fmt: skip
    record = LogRecord(time_unix_nano=2**64 - 1, observed_time_unix_nano=7, event_name="e", trace_id=b"t" * 16,
                       span_id=b"s" * 8, body=body, dropped_attributes_count=2**32 - 1, flags=2**32 - 1)  # fmt: skip
    data = ExportLogsServiceRequest(
        resource_logs=[ResourceLogs(scope_logs=[ScopeLogs(log_records=[record])])]
    ).SerializeToString()
    (rb, attrs, [[out]]), = decode(data, 4)  # fmt: skip
    assert rb == b"" and attrs == []
    assert out == (record.SerializeToString(), 2**64 - 1, 7, "e", b"t" * 16, b"s" * 8,
                   {"s": "😀 𝄞", "b": False, "i": -(2**63), "d": float("-inf"), "y": b"\x00\xff", "n": None, "e": None,
                    "a": [2**63 - 1, None]}, [], 2**32 - 1, 2**32 - 1)  # fmt: skip
    assert type(out[6]["b"]) is bool
    # an absent body, and a present but empty one, are both None
    assert records_of(decode(request_of([b"", enc_len(5, b"")]), 4)) == [
        (b"", 0, 0, "", b"", b"", None, [], 0, 0),
        (b"\x2a\x00", 0, 0, "", b"", b"", None, [], 0, 0),
    ]


def test_empty_and_garbage_top_level() -> None:
    assert decode(b"", 16) == []
    assert decode(b"\x0a\x00", 16) == [(b"", [], [])]
    assert decode(b"\x10\x01\x1a\x01\xff", 16) == []  # unknown fields of the request are skipped
    for garbage in (b"\xff", b"\x0a", b"\x0a\x05ab", b"\x07", b"\x00", b"GET / HTTP/1.1\r\n", b"\x0a\x02\x12\x05",
                    b'{"resourceLogs": []}', bytes(range(256))):  # fmt: skip
        with pytest.raises(ValueError):
            decode(garbage, 16)
    with pytest.raises(ValueError, match=r"resource_logs\[0\]\.scope_logs\[1\]: truncated or malformed field"):
        decode(enc_len(1, enc_len(2, b"") + enc_len(2, b"\x12\x05")), 16)
    with pytest.raises(ValueError, match=r"resource_logs\[1\]\.resource: a string field holds invalid UTF-8"):
        decode(enc_len(1, b"") + enc_len(1, enc_len(1, enc_len(1, enc_len(1, b"\xff")))), 16)
    with pytest.raises(ValueError, match=r"resource_logs\[0\]\.scope_logs\[0\]\.scope: a string field holds invalid UTF-8"):
        decode(enc_len(1, enc_len(2, enc_len(1, enc_len(2, b"\xc3")))), 16)
    with pytest.raises(ValueError, match=r"resource_logs\[0\]\.schema_url: a string field holds invalid UTF-8"):
        decode(enc_len(1, enc_len(3, b"\xc3")), 16)


def test_buffer_types_and_arguments() -> None:
    data = rand_request(random.Random(5)).SerializeToString()
    expected = norm(decode(data, 16))
    assert norm(decode(bytearray(data), 16)) == expected
    assert norm(decode(memoryview(data), 16)) == expected
    assert norm(decode(memoryview(b"xx" + data + b"yy")[2:-2], 16)) == expected
    assert norm(decode(data=data, max_depth=16)) == expected
    buffer = bytearray(data)
    view = memoryview(buffer)
    decode(view, 16)
    view.release()
    buffer.extend(b"\x00")  # no export left behind
    with pytest.raises(TypeError):
        decode("text", 16)
    with pytest.raises(TypeError):
        decode(data, "16")
    with pytest.raises(BufferError):
        decode(memoryview(data)[::2], 16)
    for bad in (-1, CAP + 1):
        with pytest.raises(ValueError, match="max_depth"):
            decode(data, bad)
    with pytest.raises(OverflowError):
        decode(data, 2**40)


def test_many_attributes() -> None:
    attrs = [kv(f"key.{n}", AnyValue(int_value=n) if n % 2 else AnyValue(string_value=f"v{n}")) for n in range(5000)]
    record = LogRecord(attributes=attrs)
    data = request_of([record.SerializeToString()])
    [out] = records_of(decode(data, 16))
    assert len(out[7]) == 5000 and out[7][4999] == ("key.4999", 4999) and out[7][10] == ("key.10", "v10")
    assert run(decode, data, 16) == run(reference, data, 16)


def test_no_leaks() -> None:
    """Decoding the same inputs again allocates nothing that stays (success and error paths).

    Measured in a fresh interpreter: in the test process, threads left by other tests
    (gRPC channels and servers) allocate meanwhile and tracemalloc counts them too.
    """
    here = str(Path(__file__).resolve().parent)
    code = f"import sys; sys.path.insert(0, {here!r}); import test_otlp_decode_c as t; t._leak_check()"
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def _leak_check() -> None:
    rng = random.Random(9)
    corpus = fuzz_corpus()
    cases = [mutate(rng, rng.choice(corpus), corpus) for _ in range(3000)] + corpus

    def decode_all() -> None:
        for data in cases:
            with contextlib.suppress(ValueError):
                decode(data, 3)
            with contextlib.suppress(ValueError):
                decode(data, CAP)

    decode_all()
    gc.collect()
    tracemalloc.start()
    try:
        decode_all()
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(3):
            decode_all()
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert after - before < 10_000, after - before
