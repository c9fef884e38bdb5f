"""A fuzz campaign, bounded in time: mutated OTLP requests over both transports and mutated
API parameters against one real collector.

Every answer must be a client error or a success (never a 5xx, an INTERNAL or an UNKNOWN),
the collector must keep running, and after each batch a good request must still be
stored (OTLP/gRPC and OTLP/HTTP) and the API must still answer.

The mutations are drawn from ``random.Random(seed)``; the seed is in the test's id and in
every failure message, so a failure is reproduced by running the same test again (set
``OTAUDIT_FUZZ_SEED`` to try other seeds, ``OTAUDIT_FUZZ_CASES`` for longer campaigns).
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import random
import uuid
import zlib
from collections.abc import Iterator
from importlib.resources import files
from typing import Any
from urllib.parse import quote

import grpc
import psycopg
import pytest
import requests
from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from support import RunningCollector, any_value, good_attributes, record, request, settings_for

from otaudit_collector.storage import access

SEED = int(os.environ.get("OTAUDIT_FUZZ_SEED", "20261207"))
CASES = int(os.environ.get("OTAUDIT_FUZZ_CASES", "240"))
"""Mutated requests per transport (and API calls per route); in batches of BATCH."""
BATCH = 40
EXPORT = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"
DOCUMENT = json.loads(files("otaudit_collector.api").joinpath("openapi.json").read_text(encoding="utf-8"))

# Answers a client may get for bad input: never a server error.
HTTP_CLIENT_ERRORS = {400, 413, 415}
GRPC_CLIENT_ERRORS = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED}

INTERESTING_STRINGS = [
    "",
    "\x00",
    "a\x00b",
    "\ufeff=1+1",
    "\u202e",
    "'; DROP TABLE events; --",
    "%00",
    "%2F..%2F",
    "\\",
    "\t\r\n",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "\ud7ff",
    "x" * 70_000,
    "acme",
    "globex",
    "*",
    "site_access",
    "null",
    "-1",
    "18446744073709551616",
    "1e309",
]
INTERESTING_INTS = [0, 1, -1, 2**31 - 1, -(2**31), 2**63 - 1, -(2**63), 2**64 - 1]


@pytest.fixture(scope="module")
def fuzzed(pg_server: str, template_db: str) -> Iterator[tuple[RunningCollector, str]]:
    """One collector for the whole campaign (a fresh database), with an admin token of tenant acme."""
    from psycopg.conninfo import make_conninfo

    name = f"otaudit_fuzz_{os.getpid()}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    conninfo = make_conninfo(pg_server, dbname=name)
    running = RunningCollector(
        settings_for(conninfo, {("auth", "token_cache_seconds"): 0, ("ingest", "max_request_bytes"): 4 << 20})
    )
    with psycopg.connect(conninfo, autocommit=True) as conn:
        token = access.create_token(conn, tenant="acme", role="admin", name="fuzz", pepper="")[1]
    try:
        yield running, token
    finally:
        running.stop()
        with psycopg.connect(pg_server, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# -- building and mutating requests --------------------------------------------------


def _random_value(rng: random.Random, depth: int = 0) -> AnyValue:
    kind = rng.randrange(8 if depth < 20 else 5)
    value = AnyValue()
    if kind == 0:
        value.string_value = rng.choice([*INTERESTING_STRINGS[:-8], "plain"])
    elif kind == 1:
        value.int_value = rng.choice(INTERESTING_INTS[:-1])
    elif kind == 2:
        value.double_value = rng.choice([0.0, -0.0, 1e308, float("inf"), float("nan"), 5e-324])
    elif kind == 3:
        value.bool_value = rng.random() < 0.5
    elif kind == 4:
        value.bytes_value = rng.randbytes(rng.randrange(0, 40))
    elif kind == 5:
        value.array_value.values.extend(_random_value(rng, depth + 1) for _ in range(rng.randrange(0, 4)))
    elif kind == 6:
        for _ in range(rng.randrange(0, 4)):
            value.kvlist_value.values.append(KeyValue(key=rng.choice(["k", "", "a.b", "\x00"]), value=_random_value(rng, depth + 1)))
    else:  # nested deeper than any limit, sometimes
        inner = any_value("bottom")
        for _ in range(rng.choice([2, 17, 24])):  # upb refuses to build much deeper
            outer = AnyValue()
            outer.kvlist_value.values.append(KeyValue(key="k", value=inner))
            inner = outer
        value.CopyFrom(inner)
    return value


_KEYS = [
    "audit.category",
    "audit.tenant.id",
    "audit.actor.type",
    "user.id",
    "user.email",
    "user.roles",
    "client.address",
    "user_agent.original",
    "audit.target.type",
    "audit.target.id",
    "audit.changes",
    "audit.details",
    "audit.outcome",
    "audit.sequence",
    "log.record.uid",
    "audit.details.via",
]


def structured_request(rng: random.Random) -> ExportLogsServiceRequest:
    """A request of a few records, some good, some with attributes replaced by odd values of any type."""
    records: list[LogRecord] = []
    for _ in range(rng.randrange(1, 5)):
        rec = record(rng.choice(["updateRole", "siteAccess", "addRole", "", "no-such-event"]))
        if rng.random() < 0.3:
            rec.time_unix_nano = rng.choice([0, 1, 2**64 - 1, 253402300799 * 10**9 // 1000])
        for _ in range(rng.randrange(0, 4)):
            key = rng.choice(_KEYS)
            same = [kv for kv in rec.attributes if kv.key == key]
            if same and rng.random() < 0.8:
                same[0].value.CopyFrom(_random_value(rng))
            else:  # a second attribute of the same key
                rec.attributes.append(KeyValue(key=key, value=_random_value(rng)))
        if rng.random() < 0.1:
            rec.severity_number = rng.choice([0, 9, 2**31 - 1])  # type: ignore[assignment]
        records.append(rec)
    req = request(records)
    if rng.random() < 0.2:
        req.resource_logs[0].resource.attributes.append(KeyValue(key="audit.tenant.id", value=_random_value(rng)))
    return req


def mutate_bytes(rng: random.Random, data: bytes, corpus: list[bytes]) -> bytes:
    """One to four byte-level mutations: flips, cuts, insertions, duplicated or spliced chunks."""
    out = bytearray(data)
    for _ in range(rng.randrange(1, 5)):
        op = rng.randrange(7)
        at = rng.randrange(len(out) + 1)
        if op == 0 and out:
            i = rng.randrange(len(out))
            out[i] ^= 1 << rng.randrange(8)
        elif op == 1:
            del out[at : at + rng.randrange(1, 16)]
        elif op == 2:
            out[at:at] = rng.randbytes(rng.randrange(1, 8))
        elif op == 3 and out:
            start = rng.randrange(len(out))
            out[at:at] = out[start : start + rng.randrange(1, 64)]
        elif op == 4:
            del out[at:]
        elif op == 5 and out:
            out[rng.randrange(len(out))] = rng.choice([0x00, 0x7F, 0x80, 0xFF, 0x0A, 0x12, 0x22])
        else:
            other = rng.choice(corpus)
            out[at:] = other[rng.randrange(len(other) + 1) :]
    return bytes(out)


def mutate_json(rng: random.Random, node: Any) -> Any:
    """Replace a random part of an OTLP/JSON document by a value of another shape."""
    if isinstance(node, dict) and node and rng.random() < 0.8:
        key = rng.choice(list(node))
        node[key] = mutate_json(rng, node[key])
        return node
    if isinstance(node, list) and node and rng.random() < 0.8:
        i = rng.randrange(len(node))
        node[i] = mutate_json(rng, node[i])
        return node
    return rng.choice(
        [None, True, 0, -1, 2**64, 1.5, float("1e308"), "", "\x00", "\ud800", "zz", [], {}, [None], {"": None}, "12345678901234567890"]
    )


def json_text(req: ExportLogsServiceRequest) -> dict[str, Any]:
    return MessageToDict(req)


def bodies(rng: random.Random) -> Iterator[tuple[str, bytes, dict[str, str]]]:
    """(what, body, headers) of mutated requests, cycling through the encodings."""
    corpus = [request([record()]).SerializeToString(), structured_request(rng).SerializeToString()]
    while True:
        req = structured_request(rng)
        proto = req.SerializeToString()
        corpus.append(proto)
        del corpus[:-20]
        choice = rng.randrange(6)
        if choice == 0:
            yield "protobuf, structured", proto, {}
        elif choice == 1:
            yield "protobuf, mutated bytes", mutate_bytes(rng, proto, corpus), {}
        elif choice == 2:
            doc = json_text(req)
            for _ in range(rng.randrange(1, 4)):
                doc = mutate_json(rng, doc)
            yield "json, mutated document", json.dumps(doc).encode(), {"json": "1"}
        elif choice == 3:
            text = json.dumps(json_text(req)).encode()
            yield "json, mutated bytes", mutate_bytes(rng, text, [text]), {"json": "1"}
        elif choice == 4:
            packed = gzip.compress(proto) if rng.random() < 0.5 else zlib.compress(proto)
            encoding = "gzip" if packed[:2] == b"\x1f\x8b" else "deflate"
            yield f"protobuf, {encoding}, mutated", mutate_bytes(rng, packed, [packed]), {"encoding": encoding}
        else:
            yield "protobuf, structured, gzip", gzip.compress(proto), {"encoding": "gzip"}


# -- checks --------------------------------------------------------------------------


def still_serving(collector: RunningCollector, token: str, note: str) -> None:
    """A good event goes in through both transports and is stored; the API still reads. The two
    are found by their ids: the collector may store its own events meanwhile (an export job
    that a fuzzed POST made records its exportView when it finishes)."""
    ids = [str(uuid.uuid4()), str(uuid.uuid4())]
    with grpc.insecure_channel(collector.grpc_target) as channel:
        channel.unary_unary(EXPORT, request_serializer=None, response_deserializer=None)(
            request([record(attrs=good_attributes(**{"log.record.uid": ids[0]}))]).SerializeToString(), timeout=30
        )
    answer = requests.post(
        collector.http_url,
        data=request([record(attrs=good_attributes(**{"log.record.uid": ids[1]}))]).SerializeToString(),
        headers={"Content-Type": "application/x-protobuf"},
        timeout=30,
    )
    assert answer.status_code == 200, f"{note}: a good OTLP/HTTP request got {answer.status_code}"
    with psycopg.connect(collector.conninfo) as conn:
        stored = conn.execute("SELECT count(*) FROM event_ids WHERE id = ANY(%s)", (ids,)).fetchone()
    assert stored == (2,), f"{note}: the good events were not both stored"
    page = requests.get(f"{collector.api_url}/v1/events?limit=1", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert page.status_code == 200, f"{note}: the API answered {page.status_code}"


def test_mutated_otlp_over_both_transports(fuzzed: tuple[RunningCollector, str]) -> None:
    collector, token = fuzzed
    rng = random.Random(SEED)
    source = bodies(rng)
    seen: dict[str, int] = {}
    with grpc.insecure_channel(collector.grpc_target) as channel:
        call = channel.unary_unary(EXPORT, request_serializer=None, response_deserializer=None)
        for case in range(CASES):
            what, body, how = next(source)
            note = f"seed {SEED}, case {case} ({what}, {len(body)} bytes)"
            headers = {"Content-Type": "application/json" if how.get("json") else "application/x-protobuf"}
            if how.get("encoding"):
                headers["Content-Encoding"] = how["encoding"]
            answer = requests.post(collector.http_url, data=body, headers=headers, timeout=60)
            assert answer.status_code == 200 or answer.status_code in HTTP_CLIENT_ERRORS, (
                f"{note}: OTLP/HTTP answered {answer.status_code} {answer.content[:300]!r}"
            )
            seen[f"http {answer.status_code}"] = seen.get(f"http {answer.status_code}", 0) + 1
            if not how:  # plain protobuf goes over gRPC too
                try:
                    call(body, timeout=60)
                    code = grpc.StatusCode.OK
                except grpc.RpcError as exc:
                    code = exc.code()
                    assert code in GRPC_CLIENT_ERRORS, f"{note}: OTLP/gRPC answered {code} {exc.details()}"
                seen[f"grpc {code.name}"] = seen.get(f"grpc {code.name}", 0) + 1
            if case % BATCH == BATCH - 1:
                still_serving(collector, token, note)
    still_serving(collector, token, f"seed {SEED}, at the end")
    # The campaign reached both sides of the decoder: requests taken and requests refused.
    assert seen.get("http 200", 0) > 0 and seen.get("http 400", 0) > 0, seen
    assert seen.get("grpc OK", 0) > 0 and seen.get("grpc INVALID_ARGUMENT", 0) > 0, seen


# -- the API -------------------------------------------------------------------------


def _api_value(rng: random.Random) -> str:
    base = rng.choice(
        [
            *INTERESTING_STRINGS[:-8],
            "2026-12-01T00:00:00Z",
            "2026-12-01T00:00:00+15:59",
            "9999-12-31T23:59:59Z",
            "0",
            "1700000000",
            "-5",
            "1001",
            "csv",
            "ndjson",
            "json",
            "xml",
            "true",
            "event:siteAccess -outcome:success time:>2026-11-01T00:00:00Z",
            'actor:"unterminated',
            "time:>>nonsense",
            "category:inventory_configuration",
            "x/download",
            "../v1/events",
            base64.urlsafe_b64encode(rng.randbytes(24)).decode(),
        ]
    )
    if rng.random() < 0.3:
        cut = rng.randrange(len(base) + 1)
        base = base[:cut] + chr(rng.choice([0x00, 0x2F, 0x25, 0xD7FF, 0xFFFD, 0x1F600, 0x202E])) + base[cut:]
    return base


def _operations() -> list[tuple[str, str, list[tuple[str, str]]]]:
    def resolve(node: dict[str, Any]) -> dict[str, Any]:
        if "$ref" in node:
            target: Any = DOCUMENT
            for part in node["$ref"].split("/")[1:]:
                target = target[part]
            return dict(target)
        return node

    out = []
    for path, ops in DOCUMENT["paths"].items():
        for method, op in ops.items():
            if method == "parameters":
                continue
            params = [resolve(p) for p in [*ops.get("parameters", []), *op.get("parameters", [])]]
            out.append((method.upper(), path, [(p["name"], p["in"]) for p in params]))
    return out


def _call(collector: RunningCollector, token: str, rng: random.Random, method: str, path: str, params: list[tuple[str, str]]) -> requests.Response:
    url_path = path
    query: list[tuple[str, str]] = []
    for name, where in params:
        if where == "path":
            url_path = url_path.replace("{" + name + "}", quote(_api_value(rng) or "x", safe=""))
        elif rng.random() < 0.6:
            query.extend((name, _api_value(rng)) for _ in range(rng.choice([1, 1, 2])))
    if rng.random() < 0.1:
        query.append((_api_value(rng), _api_value(rng)))  # a parameter no route takes
    headers = {"Authorization": f"Bearer {token}"} if rng.random() < 0.85 else {}
    if rng.random() < 0.1:
        headers["User-Agent"] = "u" * rng.choice([10, 3000])
    url = f"{collector.api_url}{url_path}"
    if method == "POST":
        doc: Any = {"format": rng.choice(["csv", "ndjson", "xml", 3])}
        for name in ("category", "since", "until", "q", "actor", "bom", "nonsense"):
            if rng.random() < 0.4:
                doc[name] = rng.choice([_api_value(rng), [_api_value(rng)], 7, None, True, {"a": 1}])
        data = json.dumps(doc).encode() if rng.random() < 0.8 else mutate_bytes(rng, json.dumps(doc).encode(), [b"{}"])
        return requests.post(url, params=query, data=data, headers={**headers, "Content-Type": "application/json"}, timeout=60)
    return requests.get(url, params=query, headers=headers, timeout=60, stream=True)


def test_mutated_api_parameters(fuzzed: tuple[RunningCollector, str]) -> None:
    collector, token = fuzzed
    rng = random.Random(SEED + 1)
    with requests.Session() as session:  # seed a little trail to read
        body = request([record(attrs=good_attributes()) for _ in range(5)]).SerializeToString()
        assert session.post(collector.http_url, data=body, headers={"Content-Type": "application/x-protobuf"}, timeout=30).ok
    operations = _operations()
    assert len(operations) >= 10, "the OpenAPI document lists the routes"
    statuses: dict[int, int] = {}
    for case in range(CASES):
        method, path, params = operations[case % len(operations)]
        answer = _call(collector, token, rng, method, path, params)
        with answer:
            body_start = next(answer.iter_content(300), b"")
        note = f"seed {SEED + 1}, case {case}: {method} {answer.request.url}"
        assert answer.status_code < 500, f"{note} answered {answer.status_code} {body_start!r}"
        statuses[answer.status_code] = statuses.get(answer.status_code, 0) + 1
        if case % BATCH == BATCH - 1:
            still_serving(collector, token, note)
    assert statuses.get(200, 0) > 0 and statuses.get(400, 0) > 0, statuses

