#!/usr/bin/env python
"""End-to-end ingest benchmark: OTLP/gRPC clients -> otaudit collector -> PostgreSQL.

Several concurrent OTLP/gRPC clients send pre-serialized 512-record
``ExportLogsServiceRequest``s of realistic audit events (about 17 attributes each, with
old/new values) to an ``otaudit serve`` subprocess on an embedded PostgreSQL (pgserver).
The collector answers only after the commit, so the wall time from the first send to the
last answer is the time to commit everything.

In the same run, on the same server and schema, the same rows (built with the
collector's own decode/normalize/prepare functions) are loaded with one raw
``COPY events ... FROM STDIN`` on one connection into fresh databases, once before and
once after the end-to-end run. The ratio of the two rates is the headline figure.

Goals (issue 16, raising issue 2's 0.6x): end to end >= 0.7 x raw COPY with 4 clients; collector CPU
<= 30 us per event.

    python benchmarks/ingest.py [--records N] [--clients N] [--workers N] [--json] [--py-spy FILE]

See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import platform
import queue
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psutil
import psycopg
from _measure import git_commit, postgres_cpu_seconds, proc_cpu_seconds, say, self_cpu_seconds, tree_cpu_seconds
from google.rpc import error_details_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest, ExportLogsServiceResponse
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from psycopg.conninfo import make_conninfo

from otaudit_collector.app import catalog_dirs, ensure_partitions, policy_from
from otaudit_collector.config import load_settings
from otaudit_collector.core.catalog import load_catalogs
from otaudit_collector.core.normalize import normalize_request
from otaudit_collector.core.otlp_model import to_any_value as any_value
from otaudit_collector.core.otlp_proto import decode_protobuf
from otaudit_collector.core.prepare import EVENT_COLUMNS, prepare
from otaudit_collector.storage.migrate import apply_migrations

REPO = Path(__file__).resolve().parents[1]
EXPORT_METHOD = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"
BATCH = 512
GOAL_RATIO = 0.7
GOAL_CPU_US = 30.0
NOISY_CORES = 0.25  # other processes' CPU during a timed phase above which the report warns
COLLECTOR_DB = "otaudit_bench_collector"
COPY_DBS = ("otaudit_bench_copy_before", "otaudit_bench_copy_after")


class BenchmarkError(Exception):
    """The run is invalid (a record was rejected, rows are missing, a client failed ...)."""


# ---------------------------------------------------------------------------------------
# The workload: realistic audit events, pre-serialized
# ---------------------------------------------------------------------------------------

TENANTS = ("acme", "globex", "initech")

# service -> (category, event, target type); every one of these events requires a target
# of this type with an id, and at least one change (catalogs/*.json).
SERVICES: dict[str, list[tuple[str, str, str]]] = {
    "accounts-api": [
        ("accounts_configuration", "updateRole", "role"),
        ("accounts_configuration", "updateScope", "scope"),
        ("accounts_configuration", "updateProfile", "profile"),
        ("accounts_configuration", "updateGroup", "account_group"),
    ],
    "inventory-api": [
        ("inventory_configuration", "updateAssetGroup", "asset_group"),
        ("inventory_configuration", "updateAssetV2", "asset"),
    ],
    "discovery-api": [
        ("discovery_configuration", "updateConfigGroup", "config_group"),
    ],
}
SERVICE_WEIGHTS = {"accounts-api": 5, "inventory-api": 3, "discovery-api": 2}

FIRST = [
    "Ann",
    "Bob",
    "Chen",
    "Dana",
    "Emil",
    "Fatima",
    "Gus",
    "Hana",
    "Ivan",
    "Jules",
    "Kofi",
    "Lena",
    "Mateo",
    "Nadia",
    "Omar",
    "Priya",
    "Quinn",
    "Rosa",
    "Sven",
    "Tomoko",
    "Uma",
    "Victor",
    "Wen",
    "Yusuf",
    "Zoe",
]
LAST = [
    "Example",
    "Schmidt",
    "Okafor",
    "Nguyen",
    "Kowalski",
    "Garcia",
    "Haddad",
    "Ivanova",
    "Johansson",
    "Kim",
    "Larsen",
    "Moreau",
    "Novak",
    "O'Brien",
    "Patel",
    "Rossi",
    "Santos",
    "Tanaka",
    "Weber",
    "Zhang",
]
ROLES = ["admin", "auditor", "operator", "viewer", "asset-manager", "security-analyst", "helpdesk", "billing"]
PERMISSIONS = [
    "assets:read",
    "assets:write",
    "reports:export",
    "reports:read",
    "users:read",
    "users:write",
    "scopes:read",
    "scopes:write",
    "discovery:run",
    "discovery:configure",
    "audit:read",
    "billing:read",
]
USER_AGENTS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_6_1) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:132.0) Gecko/20100101 Firefox/132.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.0.0 Safari/537.36 Edg/130.0.0.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
    "otaudit-cli/1.4.2 (linux; amd64)",
    "python-requests/2.32.3",
]
REGIONS = ["EMEA", "APAC", "AMER", "LATAM", "Nordics", "DACH"]
WORDS = ["servers", "laptops", "databases", "printers", "routers", "kiosks", "build agents", "VPN gateways"]
TARGET_PREFIX = {
    "role": "r",
    "scope": "sc",
    "profile": "p",
    "account_group": "g",
    "asset_group": "ag",
    "asset": "a",
    "config_group": "cg",
}
# Which fields change, per target type (values made by _change).
TARGET_FIELDS = {
    "role": ["permissions", "name", "description", "mfa_required"],
    "scope": ["asset_groups", "name", "max_assets", "description"],
    "profile": ["roles", "scope", "locale", "mfa_enabled", "display_name"],
    "account_group": ["members", "name", "roles"],
    "asset_group": ["rule", "name", "owner", "dynamic"],
    "asset": ["hostname", "criticality", "tags", "owner", "os"],
    "config_group": ["interval_minutes", "enabled", "credentials", "ranges"],
}


def _sample(rng: random.Random, pool: list[str], lo: int, hi: int) -> list[str]:
    return rng.sample(pool, rng.randint(lo, hi))


def _grow(rng: random.Random, pool: list[str]) -> tuple[list[str], list[str]]:
    old = _sample(rng, pool, 1, 4)
    new = [*old, rng.choice([p for p in pool if p not in old])]
    if rng.random() < 0.3 and len(new) > 2:
        new.remove(rng.choice(old))
    return old, new


def _change(rng: random.Random, name: str) -> dict[str, Any]:
    """One {field, old, new} change with a realistic value for the field."""
    r = rng.randint
    old: Any
    new: Any
    if name == "permissions":
        old, new = _grow(rng, PERMISSIONS)
    elif name in ("roles",):
        old, new = _grow(rng, ROLES)
    elif name == "asset_groups":
        old, new = _grow(rng, [f"ag-{n}" for n in range(1, 40)])
    elif name == "members":
        old, new = _grow(rng, [f"u-{n}" for n in range(1, 80)])
    elif name == "tags":
        old, new = _grow(rng, ["prod", "staging", "pci", "hipaa", "linux", "windows", "dmz", "legacy", "eol-2026"])
    elif name == "ranges":
        old, new = _grow(rng, [f"10.{n}.0.0/16" for n in range(0, 30)])
    elif name in ("name", "display_name"):
        old, new = f"{rng.choice(REGIONS)} {rng.choice(WORDS)}", f"{rng.choice(REGIONS)} {rng.choice(WORDS)} ({r(2, 9)})"
    elif name == "description":
        old, new = (
            f"Access for the {rng.choice(REGIONS)} team",
            f"Access for the {rng.choice(REGIONS)} and {rng.choice(REGIONS)} teams",
        )
    elif name in ("mfa_required", "mfa_enabled", "enabled", "dynamic"):
        old = rng.random() < 0.5
        new = not old
    elif name in ("max_assets", "criticality", "interval_minutes"):
        old, new = r(1, 500), r(1, 500)
    elif name == "scope":
        old, new = "All assets", f"{rng.choice(REGIONS)} {rng.choice(WORDS)}"
    elif name == "locale":
        old, new = rng.sample(["en-US", "en-GB", "de-DE", "fr-FR", "ja-JP", "pt-BR"], 2)
    elif name == "owner":
        old, new = f"{rng.choice(FIRST).lower()}@corp.example", f"{rng.choice(FIRST).lower()}@corp.example"
    elif name == "rule":
        old, new = (
            f"os = 'Windows' AND site = '{rng.choice(REGIONS)}'",
            f"os IN ('Windows', 'Linux') AND site = '{rng.choice(REGIONS)}'",
        )
    elif name == "hostname":
        old, new = f"srv-{r(100, 999)}.corp.example", f"srv-{r(100, 999)}.{rng.choice(REGIONS).lower()}.corp.example"
    elif name == "os":
        old, new = "Windows Server 2019", "Windows Server 2022"
    elif name == "credentials":
        old, new = f"cred-{r(1, 30)}", f"cred-{r(1, 30)}"
    else:  # pragma: no cover - every name above is handled
        raise AssertionError(name)
    change: dict[str, Any] = {"field": name, "new": new}
    if rng.random() < 0.95:  # sometimes only the new value is known
        change["old"] = old
    return change


def kv(key: str, value: Any) -> KeyValue:
    return KeyValue(key=key, value=any_value(value))


@dataclass
class Workload:
    requests: list[bytes]  # pre-serialized ExportLogsServiceRequest, BATCH records each
    records: int
    attributes_per_record: float
    events: Counter[str]
    outcomes: Counter[str]
    tenants: Counter[str]


class Generator:
    """Builds realistic audit records. Attribute values drawn from pools (who, from where,
    which object, which changes) are built once as KeyValue messages and copied into
    each record; the id, the time and the sequence are new per record."""

    def __init__(self, seed: int) -> None:
        rng = self.rng = random.Random(seed)
        self.users: dict[str, list[dict[str, Any]]] = {}
        for tenant in TENANTS:
            users = []
            for n in range(1, 61):
                first, last = rng.choice(FIRST), rng.choice(LAST)
                kind = rng.choices(["user", "support", "api_key"], weights=[90, 7, 3])[0]
                uid = f"u-{n}" if kind != "api_key" else f"key-{rng.getrandbits(32):08x}"
                email = f"{first.lower()}.{last.lower().replace(chr(39), '')}{n}@{tenant}.example"
                if kind == "support":
                    email = f"{first.lower()}.{n}@support.otaudit.example"
                users.append(
                    {
                        "kvs": [
                            kv("audit.actor.type", kind),
                            kv("user.id", uid),
                            kv("user.email", email),
                            kv("user.name", f"{first} {last}" if kind != "api_key" else f"API key {uid}"),
                            kv("user.roles", _sample(rng, ROLES, 1, 3)),
                        ],
                        "addresses": [kv("client.address", self._address()) for _ in range(rng.randint(1, 2))],
                        "sessions": [kv("session.id", f"s-{rng.getrandbits(48):012x}") for _ in range(3)],
                        "agent": kv("user_agent.original", rng.choice(USER_AGENTS)),
                    }
                )
            self.users[tenant] = users
        self.tenant_kv = {t: kv("audit.tenant.id", t) for t in TENANTS}
        self.category_kv = {c: kv("audit.category", c) for events in SERVICES.values() for c, _, _ in events}
        self.outcome_kv = {o: kv("audit.outcome", o) for o in ("success", "failure", "denied")}
        self.reason_kv = {
            "failure": [
                kv("audit.reason", r)
                for r in ("validation failed: name already in use", "upstream timeout", "conflict: object was modified")
            ],
            "denied": [kv("audit.reason", r) for r in ("missing permission users:write", "outside the actor's scope")],
        }
        self.targets: dict[tuple[str, str], list[list[KeyValue]]] = {}
        for tenant in TENANTS:
            for events in SERVICES.values():
                for _, _, ttype in events:
                    self.targets[(tenant, ttype)] = [
                        [
                            kv("audit.target.type", ttype),
                            kv("audit.target.id", f"{TARGET_PREFIX[ttype]}-{n}"),
                            kv("audit.target.name", f"{rng.choice(REGIONS)} {rng.choice(WORDS)} {n}"),
                        ]
                        for n in range(1, 201)
                    ]
        # 500 different change lists per target type (1 to 3 fields each), built once.
        self.changes = {
            ttype: [kv("audit.changes", [_change(rng, f) for f in rng.sample(fields, rng.randint(1, 3))]) for _ in range(500)]
            for ttype, fields in TARGET_FIELDS.items()
        }
        self.instances = {s: [f"{s}-{rng.getrandbits(20):05x}-{rng.getrandbits(20):05x}" for _ in range(3)] for s in SERVICES}
        self.sequences: Counter[str] = Counter()
        self.tenant_weights = [6, 3, 1]  # one big tenant, one medium, one small

    def _address(self) -> str:
        rng = self.rng
        if rng.random() < 0.1:
            return f"2001:db8:{rng.getrandbits(16):x}::{rng.getrandbits(16):x}"
        return f"{rng.choice(['203.0.113', '198.51.100', '192.0.2', '10.20.30'])}.{rng.randint(1, 254)}"

    def _uuid7(self, ms: int) -> str:
        """A UUIDv7-shaped id: 48 bits of milliseconds, then random bits."""
        r = self.rng.getrandbits(74)
        value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | (r >> 62) << 64 | 0b10 << 62 | (r & ((1 << 62) - 1))
        h = f"{value:032x}"
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

    def request(self, stats: Workload) -> bytes:
        rng = self.rng
        service = rng.choices(list(SERVICE_WEIGHTS), weights=list(SERVICE_WEIGHTS.values()))[0]
        instance = rng.choice(self.instances[service])
        now_ns = time.time_ns()
        records = []
        for _ in range(BATCH):
            category, event, ttype = rng.choice(SERVICES[service])
            tenant = rng.choices(TENANTS, weights=self.tenant_weights)[0]
            user = rng.choice(self.users[tenant])
            t_ns = now_ns - rng.randrange(0, 120_000_000_000)  # within the last two minutes
            outcome = rng.choices(("success", "failure", "denied"), weights=(94, 4, 2))[0]
            self.sequences[instance] += 1
            attrs = [
                kv("log.record.uid", self._uuid7(t_ns // 1_000_000)),
                self.category_kv[category],
                self.tenant_kv[tenant],
                self.outcome_kv[outcome],
                *user["kvs"],
                rng.choice(user["addresses"]),
                user["agent"],
                rng.choice(user["sessions"]),
                *rng.choice(self.targets[(tenant, ttype)]),
                rng.choice(self.changes[ttype]),
                KeyValue(key="audit.sequence", value=AnyValue(int_value=self.sequences[instance])),
            ]
            if outcome != "success":
                attrs.append(rng.choice(self.reason_kv[outcome]))
            records.append(
                LogRecord(time_unix_nano=t_ns, observed_time_unix_nano=t_ns + 1_000_000, event_name=event, attributes=attrs)
            )
            stats.attributes_per_record += len(attrs)
            stats.events[event] += 1
            stats.outcomes[outcome] += 1
            stats.tenants[tenant] += 1
        message = ExportLogsServiceRequest(
            resource_logs=[
                ResourceLogs(
                    resource=Resource(attributes=[kv("service.name", service), kv("service.instance.id", instance)]),
                    scope_logs=[
                        ScopeLogs(scope=InstrumentationScope(name="otaudit.audit", version="1.0.0"), log_records=records)
                    ],
                )
            ]
        )
        stats.records += BATCH
        return message.SerializeToString()


def generate(n_requests: int, seed: int) -> Workload:
    gen = Generator(seed)
    stats = Workload([], 0, 0.0, Counter(), Counter(), Counter())
    stats.requests = [gen.request(stats) for _ in range(n_requests)]
    stats.attributes_per_record /= max(stats.records, 1)
    return stats


# ---------------------------------------------------------------------------------------
# The rows the collector would store (its own pure functions), for the COPY baseline
# ---------------------------------------------------------------------------------------


def copy_rows(requests: list[bytes], seqs: Counter[str], config: str | None = None) -> tuple[list[bytes], int, list[str]]:
    """COPY text for ``events (tenant, seq, id, ...)``: one bytes chunk per request.

    Uses the collector's decoder, normalize_request and prepare with the configuration the
    collector runs with (its defaults, or ``config`` and OTAUDIT_* variables, as for the
    subprocess), so the rows are the ones it stores (received_at aside). Returns the
    chunks, the row count and the reject messages (the benchmark requires none).
    """
    try:
        settings = load_settings(config, environ=os.environ, overrides={})
        policy = policy_from(settings)
        catalogs = load_catalogs(catalog_dirs(settings))
    except Exception as exc:  # noqa: BLE001 - ConfigError, CatalogError, OSError: the collector would refuse to start too
        raise BenchmarkError(f"the collector's configuration or catalogs cannot be loaded: {exc}") from None
    # The collector's own decoder, as its receivers call it (older versions take no max_depth).
    takes_depth = len(inspect.signature(decode_protobuf).parameters) > 1
    chunks, rows, problems = [], 0, []
    for body in requests:
        received_ns = time.time_ns()
        decoded = decode_protobuf(body, policy.max_depth) if takes_depth else decode_protobuf(body)  # type: ignore[call-arg]
        candidates = normalize_request(decoded, received_ns, policy)
        if "seal" in inspect.signature(prepare).parameters:  # the log's seals and leaves, as the collector runs
            prepared = prepare(candidates, catalogs, received_ns, seal=bool(settings.get("integrity", "enabled")))
        else:  # a build from before the log
            prepared = prepare(candidates, catalogs, received_ns)
        problems.extend(prepared.messages)
        out = []
        for line in prepared.lines:
            tenant, rest = line.split("\t", 1)
            seqs[tenant] += 1
            out.append(f"{tenant}\t{seqs[tenant]}\t{rest}\n")
        rows += len(prepared.lines)
        chunks.append("".join(out).encode("utf-8"))
    return chunks, rows, problems


COPY_SQL = f"COPY events (tenant, seq, {', '.join(EVENT_COLUMNS[1:])}) FROM STDIN"


def months_of(chunks: list[bytes]) -> set[str]:
    """The months (YYYY-MM) of occurred_at in the COPY text, for the partitions."""
    found: set[str] = set()
    for chunk in chunks:
        for line in chunk.split(b"\n"):
            if line:
                found.add(line.split(b"\t", 4)[3][:7].decode())
    return found


@dataclass
class CopyRun:
    seconds: float
    cpu: CpuSnapshot  # whole-machine, PostgreSQL and our own CPU over COPY + COMMIT
    backend_cpu: float  # the COPY connection's backend alone


def copy_into(conninfo: str, chunks: list[bytes], postmaster_pid: int | None = None) -> CopyRun:
    """COPY the chunks on one connection, in one transaction, timing COPY + COMMIT only."""
    with psycopg.connect(conninfo) as conn:
        conn.execute("SET client_encoding = 'UTF8'")
        backend = int(conn.execute("SELECT pg_backend_pid()").fetchone()[0])  # type: ignore[index]
        conn.commit()
        # Snapshots are taken while the connection is open: a backend that has exited but
        # is not yet reaped by the postmaster would be counted nowhere.
        before = CpuSnapshot.take(None, postmaster_pid) if postmaster_pid else None
        backend_before = proc_cpu_seconds(backend) if postmaster_pid else 0.0
        started = time.perf_counter()
        with conn.cursor() as cur, cur.copy(COPY_SQL) as copy:
            for chunk in chunks:
                copy.write(chunk)
        conn.commit()
        seconds = time.perf_counter() - started
        backend_after = proc_cpu_seconds(backend) if postmaster_pid else 0.0
        after = CpuSnapshot.take(None, postmaster_pid) if postmaster_pid else None
    cpu = after - before if after and before else CpuSnapshot(0, 0, 0, 0, 0, 0)
    return CopyRun(seconds, cpu, backend_after - backend_before)


def settle(uri: str, conninfo: str) -> None:
    """Untimed, between phases: vacuum what the last phase wrote (so that autovacuum does
    not do it during the next one) and checkpoint (so that no phase pays for another's
    dirty pages)."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    with psycopg.connect(uri, autocommit=True) as conn:
        conn.execute("CHECKPOINT")


# ---------------------------------------------------------------------------------------
# CPU accounting
# ---------------------------------------------------------------------------------------


@dataclass
class CpuSnapshot:
    collector: float
    postgres: float
    client: float
    machine_busy: float
    machine_steal: float
    machine_total: float

    @classmethod
    def take(cls, collector_pid: int | None, postmaster_pid: int) -> CpuSnapshot:
        m = psutil.cpu_times()
        total = sum(m)
        idle = m.idle + getattr(m, "iowait", 0.0)
        steal = getattr(m, "steal", 0.0)
        return cls(
            tree_cpu_seconds(collector_pid) if collector_pid else 0.0,
            postgres_cpu_seconds(postmaster_pid),
            self_cpu_seconds(),
            total - idle - steal,
            steal,
            total,
        )

    def __sub__(self, other: CpuSnapshot) -> CpuSnapshot:
        return CpuSnapshot(*(a - b for a, b in zip(vars(self).values(), vars(other).values(), strict=True)))


# ---------------------------------------------------------------------------------------
# The collector process and the clients
# ---------------------------------------------------------------------------------------

_READY = re.compile(r"OTLP/gRPC\s+(\S+):(\d+)")


class CollectorProcess:
    def __init__(self, conninfo: str, workdir: Path, config: str | None, workers: int = 1) -> None:
        args = [
            sys.executable,
            "-m",
            "otaudit_collector",
            "serve",
            "--database-url",
            conninfo,
            "--grpc-port",
            "0",
            "--http-port",
            "0",
            "--api-port",
            "0",
        ]
        if workers != 1:
            args += ["--workers", str(workers)]
        if config:
            args += ["--config", config]
        self.log_path = workdir / "collector.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self._log, text=True, cwd=workdir)
        self.stdout: list[str] = []
        self.target = ""
        # Read stdout in a thread for the whole run: the deadline holds even if the collector
        # hangs silently, and it can never block on a full pipe.
        lines: queue.SimpleQueue[str | None] = queue.SimpleQueue()

        def drain() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                self.stdout.append(line)
                lines.put(line)
            lines.put(None)

        threading.Thread(target=drain, name="collector-stdout", daemon=True).start()
        deadline = time.monotonic() + 120
        while not self.target:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise BenchmarkError("the collector did not print its OTLP/gRPC address within 120 s") from None
            if line is None:
                raise BenchmarkError(f"the collector exited before it was ready (exit {self.proc.wait()}):\n{self.log_tail()}")
            match = _READY.search(line)
            if match:
                host = match[1].strip("[]")
                self.target = f"[{host}]:{match[2]}" if ":" in host else f"{host}:{match[2]}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


def retry_delay(err: grpc.RpcError) -> float | None:
    for key, value in err.trailing_metadata() or ():  # type: ignore[attr-defined]
        if key == "google.rpc.retryinfo-bin":
            info = error_details_pb2.RetryInfo.FromString(value)
            return info.retry_delay.seconds + info.retry_delay.nanos / 1e9
    return None


@dataclass
class ClientResult:
    sent: int = 0  # requests acknowledged
    records: int = 0
    rejected: int = 0
    retries: int = 0
    latencies: list[float] = field(default_factory=list)
    finished_at: float = 0.0
    errors: list[str] = field(default_factory=list)


class Client(threading.Thread):
    """One OTLP/gRPC client: its own channel (and TCP connection), raw bytes in and out."""

    def __init__(
        self,
        n: int,
        target: str,
        work: queue.SimpleQueue[bytes],
        barrier: threading.Barrier,
        warmup: list[bytes],
        abort: threading.Event,
    ) -> None:
        super().__init__(name=f"client-{n}", daemon=True)
        self.channel = grpc.insecure_channel(
            target,
            options=[
                ("grpc.use_local_subchannel_pool", 1),  # a connection of its own, not one shared by all channels
                ("grpc.max_send_message_length", 64 * 1024 * 1024),
                ("grpc.max_receive_message_length", 16 * 1024 * 1024),
            ],
        )
        self.export = self.channel.unary_unary(EXPORT_METHOD, request_serializer=None, response_deserializer=None)
        self.work = work
        self.barrier = barrier
        self.warmup = warmup
        self.abort = abort
        self.result = ClientResult()
        self.warm = ClientResult()

    def send(self, body: bytes, result: ClientResult) -> None:
        delay, attempts, started = 0.1, 0, time.perf_counter()
        while True:
            try:
                answer = self.export(body, timeout=120)
                break
            except grpc.RpcError as err:
                code = err.code()  # type: ignore[attr-defined]
                hint = retry_delay(err)
                attempts += 1
                if (
                    self.abort.is_set()
                    or attempts > 50
                    or not (code in RETRYABLE or (code == grpc.StatusCode.RESOURCE_EXHAUSTED and hint is not None))
                ):
                    raise BenchmarkError(
                        f"{self.name}: Export failed after {attempts} attempt(s): {code.name}: {err.details()}"
                    ) from None  # type: ignore[attr-defined]
                result.retries += 1
                time.sleep(min(hint if hint is not None else delay, 30.0))
                delay = min(delay * 2, 5.0)
        result.latencies.append(time.perf_counter() - started)
        response = ExportLogsServiceResponse.FromString(answer)
        if response.HasField("partial_success") and response.partial_success.rejected_log_records:
            result.rejected += response.partial_success.rejected_log_records
            result.errors.append(response.partial_success.error_message[:2000])
        result.sent += 1
        result.records += BATCH

    def run(self) -> None:
        try:
            grpc.channel_ready_future(self.channel).result(timeout=30)
            for body in self.warmup:
                self.send(body, self.warm)
        except Exception as exc:  # noqa: BLE001 - reported by the main thread
            self.result.errors.append(f"{self.name}: warm-up: {exc}")
            self.abort.set()
        try:
            self.barrier.wait(timeout=300)
        except threading.BrokenBarrierError:
            return
        try:
            while not self.abort.is_set():
                try:
                    body = self.work.get_nowait()
                except queue.Empty:
                    break
                self.send(body, self.result)
        except Exception as exc:  # noqa: BLE001 - reported by the main thread
            self.result.errors.append(str(exc))
            self.abort.set()
        finally:
            self.result.finished_at = time.perf_counter()
            self.channel.close()


# ---------------------------------------------------------------------------------------
# py-spy (optional)
# ---------------------------------------------------------------------------------------


PYSPY_RATE = 200


class PySpy:
    def __init__(self, pid: int, out: Path) -> None:
        exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        if not Path(exe).exists():
            raise BenchmarkError("--py-spy needs py-spy: pip install py-spy")
        self.out = out
        self.proc = subprocess.Popen(
            [
                exe,
                "record",
                "--pid",
                str(pid),
                "--rate",
                str(PYSPY_RATE),
                "--nonblocking",
                "--format",
                "raw",
                "--output",
                str(out),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        time.sleep(1.0)  # let it attach
        if self.proc.poll() is not None:
            raise BenchmarkError(f"py-spy failed: {self.proc.stderr.read().decode(errors='replace') if self.proc.stderr else ''}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def summarize_profile(path: Path, records: int, cpu_us_per_event: float, top: int = 15) -> list[str]:
    """Where the collector's Python thread spends its time, per event, from py-spy's raw
    (collapsed stacks) output: self and inclusive time per function. Native code called
    from Python (the protobuf runtime, json, a compiled decoder) counts as its caller."""
    selfs: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ["(no profile written)"]
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [re.sub(r" \((?:[^()]*/)?([^/()]+?):\d+\)$", r" (\1)", f) for f in stack.split(";")]
        frames = [f for f in frames if f and not f.startswith(("process ", "thread "))]
        if frames:
            selfs[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    if not total:
        return ["(no samples)"]
    # py-spy counts a sample whenever the thread is not idle, including while it waits for
    # a CPU on a busy machine: use the shares, scaled to the collector's measured CPU.
    us = cpu_us_per_event / total
    out = [
        f"py-spy ({path}): {total} samples at {PYSPY_RATE} Hz of the collector's Python threads while not idle"
        f" ({total / PYSPY_RATE / records * 1e6:.0f} us of such time per event);",
        f"  us/event below = share of samples x the collector's measured CPU ({cpu_us_per_event:.1f} us/event)",
        "  self time (us/event, share):",
    ]
    out += [f"    {n * us:6.1f}  {n / total:6.1%}  {f}" for f, n in selfs.most_common(top)]
    out.append("  inclusive time, frames under 90% (us/event, share):")
    out += [f"    {n * us:6.1f}  {n / total:6.1%}  {f}" for f, n in incl.most_common() if n / total < 0.9][:top]
    return out


# ---------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def verify_stored(conninfo: str, expected: int, *, dedup_index: bool = True) -> dict[str, Any]:
    """Rows = sent, nothing quarantined, per-tenant seq 1..n without gaps or repeats
    (and, for the collector, one event_ids row per event)."""
    with psycopg.connect(conninfo) as conn:
        rows = conn.execute("SELECT count(*) FROM events").fetchone()[0]  # type: ignore[index]
        ids = conn.execute("SELECT count(*) FROM event_ids").fetchone()[0]  # type: ignore[index]
        rejects = conn.execute("SELECT count(*) FROM rejects").fetchone()[0]  # type: ignore[index]
        bad_seq = conn.execute(
            "SELECT count(*) FROM (SELECT tenant FROM events GROUP BY tenant"
            " HAVING min(seq) <> 1 OR max(seq) <> count(*) OR count(DISTINCT seq) <> count(*)) t"
        ).fetchone()[0]  # type: ignore[index]
        xacts = conn.execute("SELECT count(DISTINCT xmin::text) FROM events").fetchone()[0]  # type: ignore[index]
    problems = []
    if rows != expected:
        problems.append(f"{rows} rows in events, {expected} expected (sent and acknowledged)")
    if dedup_index and ids != expected:
        problems.append(f"{ids} rows in event_ids, {expected} expected")
    if rejects:
        problems.append(f"{rejects} records quarantined in rejects")
    if bad_seq:
        problems.append(f"{bad_seq} tenant(s) with a per-tenant seq that is not 1..n")
    return {"rows": rows, "rejects": rejects, "transactions": xacts, "problems": problems}


def compare_samples(collector_db: str, baseline_db: str, n: int = 200) -> list[str]:
    """The baseline holds the same rows: compare every column but received_at, seq and seals (random salts) for a sample."""
    cols = [c for c in EVENT_COLUMNS if c not in ("received_at", "seals")]
    sql = f"SELECT {', '.join(cols)} FROM events WHERE id = ANY(%s) ORDER BY tenant, id"
    with psycopg.connect(collector_db) as conn:
        ids = [r[0] for r in conn.execute("SELECT id FROM events TABLESAMPLE SYSTEM (5) LIMIT %s", (n,)).fetchall()]
        if not ids:
            ids = [r[0] for r in conn.execute("SELECT id FROM events LIMIT %s", (n,)).fetchall()]
        a = conn.execute(sql, (ids,)).fetchall()
    with psycopg.connect(baseline_db) as conn:
        b = conn.execute(sql, (ids,)).fetchall()
    if len(a) != len(ids) or a != b:
        return [f"sampled rows differ between the collector's database and the baseline's ({len(a)} vs {len(b)} of {len(ids)})"]
    return []


def run(args: argparse.Namespace) -> dict[str, Any]:
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    import pgserver

    n_requests = max(1, -(-args.records // BATCH))
    n_warmup = args.clients * args.warmup
    started = time.monotonic()
    say(f"generating {n_requests} requests of {BATCH} records (+{n_warmup} warm-up) ...")
    t = time.perf_counter()
    workload = generate(n_requests + n_warmup, args.seed)
    warmup_bodies, bodies = workload.requests[:n_warmup], workload.requests[n_warmup:]
    gen_seconds = time.perf_counter() - t
    records = len(bodies) * BATCH
    say(
        f"  {gen_seconds:.1f} s ({gen_seconds / len(workload.requests) / BATCH * 1e6:.0f} us per record);"
        f" {sum(map(len, bodies)) / records:.0f} bytes per record on the wire"
    )

    say("building the same rows with the collector's own decode/normalize/prepare (baseline, and the zero-reject check) ...")
    t = time.perf_counter()
    seqs: Counter[str] = Counter()
    warm_chunks, warm_rows, problems = copy_rows(warmup_bodies, seqs, args.collector_config)
    chunks, rows, more = copy_rows(bodies, seqs, args.collector_config)
    problems += more
    if problems or rows != records or warm_rows != n_warmup * BATCH:
        raise BenchmarkError(
            f"the generated records do not all satisfy their catalogs ({len(problems)} rejected):\n  " + "\n  ".join(problems[:5])
        )
    say(f"  {time.perf_counter() - t:.1f} s; {rows} rows, {sum(map(len, chunks)) / rows:.0f} bytes per COPY line, 0 rejected")

    workdir = Path(tempfile.mkdtemp(prefix="otaudit-bench-"))
    server = None
    collector: CollectorProcess | None = None
    spy: PySpy | None = None
    failed = True
    try:
        say(f"starting the embedded PostgreSQL in {workdir} ...")
        (workdir / "pg").mkdir()
        server = pgserver.get_server(workdir / "pg", cleanup_mode="stop")
        uri = server.get_uri()
        postmaster_pid = int((workdir / "pg" / "postmaster.pid").read_text().split()[0])
        with psycopg.connect(uri, autocommit=True) as conn:
            pg_version = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
            for db in (COLLECTOR_DB, *COPY_DBS):
                conn.execute(f'CREATE DATABASE "{db}"')
        collector_db = make_conninfo(uri, dbname=COLLECTOR_DB)
        copy_dbs = [make_conninfo(uri, dbname=db) for db in COPY_DBS]
        months = months_of(warm_chunks + chunks)
        for db in (collector_db, *copy_dbs):
            apply_migrations(db)
            ensure_partitions(db, 2)  # what `otaudit serve` does at start
        for db in copy_dbs:
            with psycopg.connect(db, autocommit=True) as conn:
                conn.execute("SELECT otaudit_ensure_partition(now())")
                for month in months:
                    conn.execute("SELECT otaudit_ensure_partition(%s::timestamptz)", (f"{month}-01T00:00:00Z",))

        def baseline(db: str, when: str) -> CopyRun:
            say(f"raw COPY baseline ({when} the collector): {rows} rows on one connection ...")
            copy_into(db, warm_chunks)  # the collector's table holds the warm-up rows too
            settle(uri, db)
            done = copy_into(db, chunks, postmaster_pid)
            say(f"  {done.seconds:.2f} s, {rows / done.seconds:,.0f} rows/s")
            settle(uri, db)
            stored = verify_stored(db, rows + warm_rows, dedup_index=False)
            if stored["problems"]:
                raise BenchmarkError(f"baseline: {'; '.join(stored['problems'])}")
            return done

        copies = [baseline(copy_dbs[0], "before")]

        say("starting the collector ...")
        decoder = _collector_decoder()
        collector = CollectorProcess(collector_db, workdir, args.collector_config, args.workers)
        say(f"  pid {collector.pid}, OTLP/gRPC {collector.target}")

        # -- end to end -----------------------------------------------------------------
        work: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        for body in bodies:
            work.put(body)
        barrier = threading.Barrier(args.clients + 1)
        abort = threading.Event()
        clients = [
            Client(i, collector.target, work, barrier, warmup_bodies[i * args.warmup : (i + 1) * args.warmup], abort)
            for i in range(args.clients)
        ]
        for c in clients:
            c.start()
        say(f"end to end: warm-up ({n_warmup} requests), then {len(bodies)} requests from {args.clients} clients ...")
        # Wait for every client's warm-up, then start them together.
        while barrier.n_waiting < args.clients and not abort.is_set() and collector.proc.poll() is None:
            time.sleep(0.01)
        if abort.is_set() or barrier.n_waiting < args.clients:
            barrier.abort()
            raise BenchmarkError(
                "; ".join(e for c in clients for e in c.result.errors) or "the collector exited during the warm-up"
            )
        settle(uri, collector_db)
        if args.py_spy:
            spy = PySpy(collector.pid, Path(args.py_spy).resolve())
        with psycopg.connect(collector_db) as conn:  # the collector's writer connection(s)
            writers = [
                int(row[0])
                for row in conn.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'otaudit-writer'"
                ).fetchall()
            ]
        writers_before = sum(proc_cpu_seconds(pid) for pid in writers)
        with psycopg.connect(collector_db, autocommit=True) as conn:
            wal_before = str(conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0])  # type: ignore[index]
        before = CpuSnapshot.take(collector.pid, postmaster_pid)
        t0 = time.perf_counter()
        barrier.wait()
        while alive := [c for c in clients if c.is_alive()]:
            alive[0].join(0.05)
            if collector.proc.poll() is not None and not abort.is_set():
                abort.set()  # the clients stop retrying
                say(f"  the collector exited ({collector.proc.returncode}) during the run")
        t1 = max(c.result.finished_at for c in clients)
        if collector.proc.poll() is not None:
            raise BenchmarkError(f"the collector exited with status {collector.proc.returncode} during the run")
        after = CpuSnapshot.take(collector.pid, postmaster_pid)
        with psycopg.connect(collector_db, autocommit=True) as conn:  # the whole server's WAL: nothing else writes
            wal_bytes = float(conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", (wal_before,)).fetchone()[0])  # type: ignore[index]
        try:
            writer_cpu = sum(proc_cpu_seconds(pid) for pid in writers) - writers_before if writers else float("nan")
        except OSError:  # the writer reconnected during the run: its backend changed
            writer_cpu = float("nan")
        if spy is not None:
            spy.stop()
        errors = [e for c in clients for e in c.result.errors]
        if abort.is_set() or any(not c.result.finished_at for c in clients):
            raise BenchmarkError("a client failed: " + "; ".join(errors[:5] or ["the collector exited"]))
        e2e_seconds = t1 - t0
        cpu = after - before
        acked = sum(c.result.records for c in clients)
        rejected = sum(c.result.rejected + c.warm.rejected for c in clients)
        retries = sum(c.result.retries + c.warm.retries for c in clients)
        latencies = [x for c in clients for x in c.result.latencies]
        if rejected:
            raise BenchmarkError(f"the collector rejected {rejected} record(s): " + " || ".join(e[:400] for e in errors[:3]))
        if acked != records or work.qsize():
            raise BenchmarkError(f"{acked} records acknowledged, {records} to send")
        say(f"  {e2e_seconds:.2f} s, {records / e2e_seconds:,.0f} events/s")
        say("stopping the collector ...")
        exit_code = collector.stop()
        if exit_code not in (0, None):
            say(f"  the collector exited with {exit_code} after SIGTERM:\n{collector.log_tail()}")
        stored = verify_stored(collector_db, records + n_warmup * BATCH)
        if stored["problems"]:
            raise BenchmarkError("; ".join(stored["problems"]))
        settle(uri, collector_db)

        copies.append(baseline(copy_dbs[1], "after"))
        same = compare_samples(collector_db, copy_dbs[1])
        if same:
            raise BenchmarkError("; ".join(same))
        failed = False
    finally:
        if spy is not None:
            spy.stop()
        if collector is not None:
            if failed:
                say(f"collector log (last lines):\n{collector.log_tail()}")
            collector.stop()
        if server is not None:
            server.cleanup()
        if args.keep:
            say(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    e2e_rate = records / e2e_seconds
    copy_rates = [rows / c.seconds for c in copies]
    copy_rate = sum(copy_rates) / len(copy_rates)
    copy_seconds = sum(c.seconds for c in copies)
    copy_pg = sum(c.cpu.postgres for c in copies)
    ratio = e2e_rate / copy_rate
    cpu_us = cpu.collector / records * 1e6

    def r(x: float, n: int = 2) -> Any:
        return None if math.isnan(x) else round(x, n)  # NaN (not measured) becomes null in the JSON

    result: dict[str, Any] = {
        "benchmark": "ingest",
        "commit": git_commit(),
        "machine": {
            "nproc": os.cpu_count(),
            "affinity": len(os.sched_getaffinity(0)),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "postgresql": pg_version,
            "protobuf": _protobuf_backend(),
            "grpcio": grpc.__version__,
            "collector_decoder": decoder,
        },
        "workload": {
            "records": records,
            "batch": BATCH,
            "requests": len(bodies),
            "warmup_requests": n_warmup,
            "clients": args.clients,
            "client_kind": "threads, one gRPC channel each",
            "collector_workers": args.workers,
            "attributes_per_record": r(workload.attributes_per_record),
            "bytes_per_record": r(sum(map(len, bodies)) / records, 1),
            "tenants": dict(workload.tenants),
            "events": dict(workload.events),
            "outcomes": dict(workload.outcomes),
            "seed": args.seed,
        },
        "end_to_end": {
            "seconds": r(e2e_seconds, 3),
            "events_per_second": r(e2e_rate, 1),
            "collector_cpu_us_per_event": r(cpu_us),
            "collector_cpu_cores": r(cpu.collector / e2e_seconds),
            "postgres_cpu_us_per_event": r(cpu.postgres / records * 1e6),
            "writer_backend_cpu_us_per_event": r(writer_cpu / records * 1e6),
            "writer_connections": len(writers),
            "wal_bytes_per_event": r(wal_bytes / records, 0),
            "client_cpu_us_per_event": r(cpu.client / records * 1e6),
            "machine_busy_cores": r(cpu.machine_busy / e2e_seconds),
            "machine_steal_cores": r(cpu.machine_steal / e2e_seconds),
            "other_processes_cpu_cores": r(max(0.0, cpu.machine_busy - cpu.collector - cpu.postgres - cpu.client) / e2e_seconds),
            "latency_ms": {
                "p50": r(percentile(latencies, 50) * 1e3, 1),
                "p99": r(percentile(latencies, 99) * 1e3, 1),
                "max": r(max(latencies) * 1e3, 1),
            },
            "retries": retries,
            "rejected": rejected,
            "rows_stored": stored["rows"],
            "transactions": stored["transactions"],
            "profiled": bool(args.py_spy),
        },
        "raw_copy": {
            "rows": rows,
            "rows_per_second": r(copy_rate, 1),
            "runs": [
                {
                    "when": when,
                    "seconds": r(c.seconds, 3),
                    "rows_per_second": r(rows / c.seconds, 1),
                    "postgres_cpu_us_per_row": r(c.cpu.postgres / rows * 1e6),
                    "backend_cpu_us_per_row": r(c.backend_cpu / rows * 1e6),
                    "client_cpu_us_per_row": r(c.cpu.client / rows * 1e6),
                    "machine_busy_cores": r(c.cpu.machine_busy / c.seconds),
                    "other_processes_cpu_cores": r(max(0.0, c.cpu.machine_busy - c.cpu.postgres - c.cpu.client) / c.seconds),
                }
                for when, c in zip(("before", "after"), copies, strict=True)
            ],
            "postgres_cpu_us_per_row": r(copy_pg / (rows * len(copies)) * 1e6),
            "bytes_per_row": r(sum(map(len, chunks)) / rows, 1),
            "seconds": r(copy_seconds / len(copies), 3),
        },
        "ratio": r(ratio, 3),
        "goals": {
            "ratio": {"goal": f">= {GOAL_RATIO}", "value": r(ratio, 3), "met": ratio >= GOAL_RATIO},
            "collector_cpu_us_per_event": {"goal": f"<= {GOAL_CPU_US}", "value": r(cpu_us), "met": cpu_us <= GOAL_CPU_US},
        },
        "checks": {"rejected": 0, "rows_stored_equals_sent": True, "seq_gap_free": True, "sampled_rows_identical": True},
        "total_seconds": r(time.monotonic() - started, 1),
    }
    if args.py_spy:
        result["profile"] = summarize_profile(Path(args.py_spy).resolve(), records, cpu_us)
    return result


def _protobuf_backend() -> str:
    try:
        from google.protobuf.internal import api_implementation

        return str(api_implementation.Type())
    except ImportError:  # pragma: no cover
        return "unknown"


def _collector_decoder() -> str:
    """Which OTLP/protobuf decoder a collector started now would use (asked of a fresh interpreter)."""
    code = "import otaudit_collector.core.otlp_proto as p; c = getattr(p, 'COMPILED', None); print('unknown' if c is None else ('compiled' if c else 'python'))"
    try:
        out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1f}"


def report(r: dict[str, Any]) -> str:
    w, e, c, m = r["workload"], r["end_to_end"], r["raw_copy"], r["machine"]
    ratio, cpu = r["goals"]["ratio"], r["goals"]["collector_cpu_us_per_event"]

    def verdict(met: bool) -> str:
        return "MET   " if met else "MISSED"

    need = c["rows_per_second"] * GOAL_RATIO
    ratio_text = (
        f"{ratio['value']:.2f}, {(ratio['value'] - GOAL_RATIO) / GOAL_RATIO:+.0%} vs the goal"
        f" ({GOAL_RATIO} x raw COPY = {need:,.0f} events/s; measured {e['events_per_second']:,.0f})"
    )
    cpu_text = f"{cpu['value']:.1f} us, {cpu['value'] - GOAL_CPU_US:+.1f} us vs the goal"
    lines = [
        f"otaudit ingest benchmark   commit {r['commit']}   {m['nproc']} CPUs   Python {m['python']}   PostgreSQL {m['postgresql']}"
        f"   collector decoder: {m['collector_decoder']}",
        f"workload: {w['records']:,} records = {w['requests']} requests x {w['batch']} (+{w['warmup_requests']} warm-up requests),"
        f" {w['attributes_per_record']:.1f} attributes and {w['bytes_per_record']:.0f} protobuf bytes per record,",
        f"          {len(w['tenants'])} tenants, {len(w['events'])} event types; {w['clients']} OTLP/gRPC clients ({w['client_kind']})",
        "",
        "end to end (pre-serialized OTLP/gRPC -> otaudit collector -> PostgreSQL; acknowledged = committed)",
        f"  wall time, first send to last answer   {e['seconds']:.2f} s",
        f"  committed events/s                     {e['events_per_second']:,.0f}",
        f"  collector CPU                          {e['collector_cpu_us_per_event']:.1f} us/event   ({e['collector_cpu_cores']:.2f} cores busy)",
        f"  PostgreSQL CPU (all processes)         {_num(e['postgres_cpu_us_per_event'])} us/event"
        f"   (the collector's writer backend{'s' if e['writer_connections'] != 1 else ''}: {_num(e['writer_backend_cpu_us_per_event'])})",
        f"  WAL written                            {e['wal_bytes_per_event']:,.0f} bytes/event",
        f"  load generator CPU                     {e['client_cpu_us_per_event']:.1f} us/event",
        f"  machine busy                           {e['machine_busy_cores']:.2f} of {m['nproc']} cores"
        f" (other processes {e['other_processes_cpu_cores']:.2f}, steal {e['machine_steal_cores']:.2f})",
        f"  request latency                        p50 {e['latency_ms']['p50']:.0f} ms, p99 {e['latency_ms']['p99']:.0f} ms,"
        f" max {e['latency_ms']['max']:.0f} ms; {e['retries']} retries",
        f"  transactions                           {e['transactions']} ({e['rows_stored'] / max(e['transactions'], 1):,.0f} events per commit)",
        "",
        "raw COPY baseline (same rows, COPY events FROM STDIN, text format, one connection, one transaction;",
        "                   run before and after the collector, into fresh databases)",
    ]
    for run_ in c["runs"]:
        lines.append(
            f"  {run_['when']:<6}  {run_['seconds']:6.2f} s  {run_['rows_per_second']:>9,.0f} rows/s   PostgreSQL CPU {_num(run_['postgres_cpu_us_per_row'])} us/row"
            f" (COPY backend {_num(run_['backend_cpu_us_per_row'])})   other processes {run_['other_processes_cpu_cores']:.2f} cores"
        )
    lines += [
        f"  mean                                   {c['rows_per_second']:,.0f} rows/s",
        "",
        f"ratio end to end / raw COPY              {r['ratio']:.2f}",
        "",
        "goals",
        f"  {f'end to end >= {GOAL_RATIO} x raw COPY':<37}  {verdict(ratio['met'])}  {ratio_text}",
        f"  {f'collector CPU <= {GOAL_CPU_US:.0f} us/event':<37}  {verdict(cpu['met'])}  {cpu_text}",
        "",
        f"checks: 0 records rejected; {e['rows_stored']:,} rows stored = sent (warm-up included); per-tenant seq gap-free;"
        " sampled rows identical to the baseline's",
        f"total run time {r['total_seconds']:.0f} s",
    ]
    noise = max([e["other_processes_cpu_cores"]] + [x["other_processes_cpu_cores"] for x in c["runs"]])
    if noise > NOISY_CORES:
        lines += [
            "",
            f"WARNING: other processes used up to {noise:.2f} of {m['nproc']} cores during the timed phases;"
            " the figures are depressed and noisy: run again on a quiet machine",
        ]
    if e["profiled"]:
        lines += ["", "NOTE: the collector ran under py-spy; its figures include the sampling overhead.", *r.get("profile", [])]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--records", type=int, default=200_000, help="records to send, rounded up to whole 512-record requests (default 200000)"
    )
    parser.add_argument("--clients", type=int, default=4, help="concurrent OTLP/gRPC clients (default 4)")
    parser.add_argument("--workers", type=int, default=1, help="collector processes (otaudit serve --workers; default 1)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed warm-up requests per client (default 1)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the generated workload (default 1)")
    parser.add_argument(
        "--collector-config", metavar="FILE", help="a --config file for the collector (default: its built-in defaults)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON line on stdout (the readable report goes to stderr)")
    parser.add_argument(
        "--py-spy",
        metavar="FILE",
        help="profile the collector with py-spy during the timed window (raw collapsed stacks to FILE)",
    )
    parser.add_argument("--strict", action="store_true", help="exit 3 when a goal is missed")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (PostgreSQL data, collector log)")
    args = parser.parse_args(argv)
    if args.records < 1 or args.clients < 1 or args.warmup < 0 or args.workers < 1:
        parser.error("--records, --clients and --workers must be positive, --warmup not negative")
    try:
        result = run(args)
    except BenchmarkError as exc:
        say(f"benchmark FAILED: {exc}")
        if args.json:
            print(json.dumps({"benchmark": "ingest", "error": str(exc), "commit": git_commit()}), flush=True)
        return 1
    text = report(result)
    if args.json:
        say(text)
        print(json.dumps(result, separators=(",", ":")), flush=True)
    else:
        print(text, flush=True)
    if args.strict and not all(g["met"] for g in result["goals"].values()):
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
