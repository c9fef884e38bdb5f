"""Helpers the tests share: a collector running in a thread, request builders, database reads."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import psycopg
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

from otaudit_collector.app import Collector, Endpoints, catalog_dirs
from otaudit_collector.config import Settings, load_settings
from otaudit_collector.core.catalog import load_catalogs
from otaudit_collector.core.otlp_model import to_any_value

REPO = Path(__file__).resolve().parents[1]


def settings_for(conninfo: str, extra: Mapping[tuple[str, ...], Any] | None = None) -> Settings:
    overrides: dict[tuple[str, ...], Any] = {
        ("database", "url"): conninfo,
        ("listen", "grpc_port"): 0,
        ("listen", "http_port"): 0,
        ("listen", "api_port"): 0,
        ("catalogs", "reload_interval_seconds"): 0,
    }
    overrides.update(extra or {})
    return load_settings(None, environ={}, overrides=overrides)


class RunningCollector:
    """A Collector on its own event loop in a background thread, on free ports."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.conninfo = settings.get("database", "url")
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="collector-loop", daemon=True)
        self.thread.start()
        catalogs = load_catalogs(catalog_dirs(settings))
        self.collector = Collector(settings, self.conninfo, catalogs)
        self.endpoints: Endpoints = self.call(self.collector.start())

    def call(self, coro: Any, timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def grpc_target(self) -> str:
        host, port = self.endpoints.grpc
        return f"{host}:{port}"

    @property
    def http_url(self) -> str:
        host, port = self.endpoints.http
        return f"http://{host}:{port}/v1/logs"

    @property
    def api_url(self) -> str:
        host, port = self.endpoints.api
        return f"http://{host}:{port}"

    def stop(self) -> None:
        if self.loop.is_running():
            try:
                self.call(self.collector.stop(5))
            finally:
                self.loop.call_soon_threadsafe(self.loop.stop)
                self.thread.join(10)
        self.loop.close()


def wait_until(condition: Any, timeout: float = 10, what: str = "the condition") -> None:
    """Poll ``condition()`` until it is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


# -- building requests ---------------------------------------------------------------


any_value = to_any_value  # the collector's own encoder of plain values as OTLP AnyValue


def otaudit(*args: str, env: Mapping[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the ``otaudit`` command in a subprocess and capture what it says."""
    return subprocess.run(
        [sys.executable, "-m", "otaudit_collector", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )


def good_attributes(**over: Any) -> dict[str, Any]:
    """Attributes of a valid accounts_configuration/updateRole event."""
    attrs: dict[str, Any] = {
        "log.record.uid": str(uuid.uuid4()),
        "audit.category": "accounts_configuration",
        "audit.tenant.id": "acme",
        "audit.actor.type": "user",
        "user.id": "u-17",
        "user.email": "ann@acme.test",
        "user.name": "Ann",
        "user.roles": ["admin"],
        "client.address": "203.0.113.9",
        "user_agent.original": "Mozilla/5.0 (X11; Linux x86_64)",
        "session.id": "s-1",
        "audit.target.type": "role",
        "audit.target.id": "r-3",
        "audit.target.name": "Auditors",
        "audit.changes": [{"field": "permissions", "old": ["read"], "new": ["read", "export"]}],
        "audit.sequence": 1,
    }
    for name, value in over.items():
        key = name.replace("__", ".")
        if value is None:
            attrs.pop(key, None)
        else:
            attrs[key] = value
    return attrs


def record(event: str = "updateRole", attrs: Mapping[str, Any] | None = None, *, time_ns: int | None = None) -> LogRecord:
    rec = LogRecord(event_name=event, time_unix_nano=time.time_ns() if time_ns is None else time_ns)
    rec.attributes.extend(
        KeyValue(key=k, value=any_value(v)) for k, v in (attrs if attrs is not None else good_attributes()).items()
    )
    return rec


def request(records: Iterable[LogRecord], service: str = "accounts-api") -> ExportLogsServiceRequest:
    req = ExportLogsServiceRequest()
    rl = req.resource_logs.add()
    rl.resource.attributes.extend([KeyValue(key="service.name", value=any_value(service))])
    rl.scope_logs.add().log_records.extend(records)
    return req


# -- reading what was stored ---------------------------------------------------------


def rows(conninfo: str, sql: str = "SELECT * FROM events ORDER BY tenant, seq", params: Any = None) -> list[dict[str, Any]]:
    with psycopg.connect(conninfo, row_factory=psycopg.rows.dict_row) as conn:
        return conn.execute(sql, params).fetchall()


def count(conninfo: str, table: str = "events") -> int:
    with psycopg.connect(conninfo) as conn:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
        assert row is not None
        return int(row[0])


# -- a collector as a separate process -----------------------------------------------

_ENDPOINT = re.compile(r"^\s+(OTLP/gRPC|OTLP/HTTP|API)\s+(?:http://)?([^\s/]+):(\d+)")


class CollectorProcess:
    """``otaudit serve`` in a subprocess, for tests that kill or signal it."""

    def __init__(self, args: list[str], env: Mapping[str, str] | None = None, cwd: Path | None = None) -> None:
        self.args = args
        self.env = {**os.environ, **(env or {})}
        self.cwd = cwd
        self.proc: subprocess.Popen[str] | None = None
        self.ports: dict[str, int] = {}
        self.output: list[str] = []

    def start(self, timeout: float = 60) -> CollectorProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "otaudit_collector", *self.args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=self.env,
            cwd=self.cwd,
        )
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("collector exited before it was ready:\n" + "".join(self.output))
            self.output.append(line)
            match = _ENDPOINT.match(line)
            if match:
                self.ports[match[1]] = int(match[3])
            if line.startswith("Send events"):
                threading.Thread(target=self._drain, daemon=True).start()
                return self
        raise RuntimeError("collector did not become ready:\n" + "".join(self.output))

    def _drain(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.ports['OTLP/gRPC']}"

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def terminate(self, timeout: float = 60) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)
