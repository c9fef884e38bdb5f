#!/usr/bin/env python
"""Decode benchmark: OTLP/protobuf request bytes -> plain Python data, per record.

Builds one realistic 512-record ``ExportLogsServiceRequest`` (audit events with about 15
attributes each: strings, an int, an array of roles and an array of {field, old, new}
kvlists) and times, in the same run on the same bytes:

  * C decoder      ``otaudit_collector.core._otlp_decode.decode_logs_request``
  * upb + walk     ``otlp_proto.decode_protobuf_python``: ``ExportLogsServiceRequest.FromString``
                   and a walk over the upb messages (the fallback without the extension)
  * upb parse only ``ExportLogsServiceRequest.FromString`` alone, for scale

Both decoders must give the same result (checked first). Each timed call includes freeing
the previous result, as in use. The machine's noise shows in the gap between median and best.

    python benchmarks/decode.py [--records 512] [--rounds 30] [--max-depth 16]
"""

from __future__ import annotations

import argparse
import math
import platform
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from otaudit_collector.core.otlp_model import to_any_value as value
from otaudit_collector.core.otlp_proto import decode_protobuf_python

try:
    from otaudit_collector.core._otlp_decode import decode_logs_request
except ImportError:  # pragma: no cover - reported below
    decode_logs_request = None

ROLES = ["admin", "auditor", "operator", "viewer", "billing", "support", "security-analyst"]
FIELDS = ["name", "roles", "mfa_required", "max_assets", "description", "owner", "tags"]
EVENTS = ["user.created", "user.updated", "role.assigned", "asset_group.updated", "login.succeeded"]


def change(rng: random.Random) -> dict[str, Any]:
    name = rng.choice(FIELDS)
    if name in ("roles", "tags"):
        old = rng.sample(ROLES, rng.randint(1, 3))
        return {"field": name, "old": old, "new": [*old, rng.choice(ROLES)]}
    if name == "mfa_required":
        return {"field": name, "old": False, "new": True}
    if name == "max_assets":
        return {"field": name, "old": rng.randint(1, 500), "new": rng.randint(1, 500)}
    return {"field": name, "old": f"Team {rng.randint(1, 99)} (EMEA)", "new": f"Team {rng.randint(1, 99)} (APAC)"}


def build_request(n: int, seed: int = 1) -> bytes:
    rng = random.Random(seed)
    now = time.time_ns()
    records = []
    for i in range(n):
        t = now - rng.randrange(120_000_000_000)
        user = rng.randint(1, 60)
        attributes = {
            "log.record.uid": f"0190a5c4-{rng.getrandbits(16):04x}-7{rng.getrandbits(12):03x}-8{rng.getrandbits(12):03x}-{rng.getrandbits(48):012x}",
            "audit.category": rng.choice(["iam", "assets", "config"]),
            "audit.tenant.id": rng.choice(["acme", "globex", "initech"]),
            "audit.outcome": rng.choices(["success", "failure", "denied"], weights=[94, 4, 2])[0],
            "audit.actor.type": "user",
            "user.id": f"u-{user}",
            "user.email": f"jane.doe{user}@acme.example",
            "user.name": "Jane Doe",
            "user.roles": rng.sample(ROLES, rng.randint(1, 3)),
            "client.address": f"203.0.113.{rng.randint(1, 254)}",
            "user_agent.original": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0",
            "session.id": f"s-{rng.getrandbits(48):012x}",
            "audit.target.type": "user",
            "audit.target.id": f"u-{rng.randint(1, 200)}",
            "audit.changes": [change(rng) for _ in range(rng.randint(1, 3))],
            "audit.sequence": i + 1,
        }
        records.append(LogRecord(
            time_unix_nano=t, observed_time_unix_nano=t + 1_000_000, event_name=rng.choice(EVENTS),
            trace_id=rng.randbytes(16), span_id=rng.randbytes(8),
            attributes=[KeyValue(key=k, value=value(v)) for k, v in attributes.items()],
        ))  # fmt: skip
    return ExportLogsServiceRequest(resource_logs=[ResourceLogs(
        resource=Resource(attributes=[KeyValue(key="service.name", value=value("iam-api")),
                                      KeyValue(key="service.instance.id", value=value("iam-api-7f9c2"))]),
        scope_logs=[ScopeLogs(scope=InstrumentationScope(name="otaudit.audit", version="1.0.0"), log_records=records)],
    )]).SerializeToString()  # fmt: skip


def same(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return bool(a == b)


def per_record_us(fn: Callable[[], Any], records: int, rounds: int) -> tuple[float, float]:
    """(median, best) microseconds per record over `rounds` timed calls, after a warm-up."""
    fn()
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times) / records * 1e6, min(times) / records * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--max-depth", type=int, default=16)
    args = parser.parse_args()
    if decode_logs_request is None:
        print("the C decoder is not built: pip install -e ./collector (with a C compiler)")
        return 1

    data = build_request(args.records)
    message = ExportLogsServiceRequest.FromString(data)
    attrs = statistics.mean(len(r.attributes) for r in message.resource_logs[0].scope_logs[0].log_records)
    c_result = decode_logs_request(data, args.max_depth)
    py_result = decode_protobuf_python(data, args.max_depth)
    if not same(c_result, py_result):
        print("MISMATCH: the C decoder and the upb walk disagree on this request")
        return 1

    n = args.records
    c_med, c_best = per_record_us(lambda: decode_logs_request(data, args.max_depth), n, args.rounds)
    py_med, py_best = per_record_us(lambda: decode_protobuf_python(data, args.max_depth), n, args.rounds)
    parse_med, parse_best = per_record_us(lambda: ExportLogsServiceRequest.FromString(data), n, args.rounds)

    print(f"request: {n} records, {len(data):,} bytes, {attrs:.1f} attributes per record "
          f"(incl. an array and an array of kvlists); {args.rounds} rounds")  # fmt: skip
    print(f"python {platform.python_version()} on {platform.machine()}, {platform.processor() or platform.system()}")
    print(f"{'decoder':<34}{'median us/record':>18}{'best':>10}")
    print(f"{'C decoder (_otlp_decode)':<34}{c_med:>18.2f}{c_best:>10.2f}")
    print(f"{'upb parse + walk (Python fallback)':<34}{py_med:>18.2f}{py_best:>10.2f}")
    print(f"{'upb parse only (FromString)':<34}{parse_med:>18.2f}{parse_best:>10.2f}")
    print(f"speed-up of the C decoder over the upb walk: {py_med / c_med:.1f}x (median)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
