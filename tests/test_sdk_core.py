"""The SDK's pure parts: the hand-written encoder against the official protobuf classes,
the event built by ``record()``, the helpers, ``testing.capture`` and the settings."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import enum
import inspect
import subprocess
import sys
import threading
import tomllib
import uuid
from decimal import Decimal
from typing import Any

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.sdk.trace import TracerProvider
from support import REPO

import otaudit_sdk as audit
from otaudit_collector.core.otlp_model import to_any_value
from otaudit_sdk import _encode as enc
from otaudit_sdk._config import ENVIRONMENT, settings_from
from otaudit_sdk._event import uuid7
from otaudit_sdk.testing import Captured, capture


class Color(enum.Enum):
    RED = "red"


PLAIN_VALUES: list[Any] = [
    "",
    "plain",
    "ünïcødé ✓ 𝄞",
    "x" * 300,
    True,
    False,
    0,
    1,
    127,
    128,
    -1,
    -(1 << 63),
    (1 << 63) - 1,
    1.5,
    -0.0,
    float("inf"),
    b"",
    b"\x00\xff" * 100,
    [],
    [1, "a", None, [2, [3]], {"k": "v"}],
    {},
    {"a": {"b": {"c": [True, 2.5]}}, "empty": None},
]


@pytest.mark.parametrize("value", PLAIN_VALUES, ids=lambda v: repr(v)[:30])
def test_any_value_matches_the_official_encoding(value: Any) -> None:
    assert AnyValue.FromString(enc.any_value(value)) == to_any_value(value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC), "2026-01-02T03:04:05+00:00"),
        (dt.date(2026, 1, 2), "2026-01-02"),
        (uuid.UUID(int=1), "00000000-0000-0000-0000-000000000001"),
        (Decimal("1.10"), "1.10"),
        (Color.RED, "red"),
        (("a", 1), ["a", 1]),
        (frozenset({"b", "a"}), ["a", "b"]),
        (audit.Change("f", 1, 2), {"field": "f", "old": 1, "new": 2}),
    ],
)
def test_common_python_values_get_their_obvious_wire_form(value: Any, expected: Any) -> None:
    assert AnyValue.FromString(enc.any_value(value)) == to_any_value(expected)


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (1 << 64, "does not fit in 64 bits"),
        (dt.datetime(2026, 1, 1), "has no time zone"),
        (object(), "a object cannot be sent"),
        ("\ud800", "lone surrogate"),
        ({1: "x"}, "keys must be strings"),
        ({"a": {"b": [1, {"c": object()}]}}, "details.a.b[1].c: a object"),
    ],
)
def test_unsendable_values_are_refused_with_their_path(value: Any, words: str) -> None:
    with pytest.raises(enc.EncodeError, match=words.replace("[", r"\[").replace("]", r"\]")):
        enc.any_value(value, "details")


def test_nesting_is_bounded() -> None:
    deep: Any = "leaf"
    for _ in range(40):
        deep = [deep]
    with pytest.raises(enc.EncodeError, match="nested more than 32 levels"):
        enc.any_value(deep)


def test_export_request_frames_records_under_their_resource() -> None:
    records = [enc.log_record(time_ns=i, observed_ns=i + 1, event_name=f"e{i}", attributes=b"") for i in range(3)]
    body = enc.export_request(
        [(enc.resource({"service.name": "svc"}), enc.scope("otaudit_sdk", "1"), records), (b"", b"", records[:1])]
    )
    req = ExportLogsServiceRequest.FromString(body)
    assert len(req.resource_logs) == 2
    first = req.resource_logs[0]
    assert first.resource.attributes[0].key == "service.name"
    assert first.scope_logs[0].scope.name == "otaudit_sdk"
    assert [r.event_name for r in first.scope_logs[0].log_records] == ["e0", "e1", "e2"]
    assert first.scope_logs[0].log_records[2].observed_time_unix_nano == 3
    assert len(req.resource_logs[1].scope_logs[0].log_records) == 1


def test_uuid7_has_version_variant_time_and_no_repeats() -> None:
    ms = 1_790_000_000_123
    ids = [uuid7(ms) for _ in range(5000)]
    assert len(set(ids)) == len(ids)
    parsed = uuid.UUID(ids[0])
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122
    assert parsed.int >> 80 == ms
    assert uuid7(ms) < uuid7(ms + 1)


# -- record() through testing.capture --------------------------------------------------


def test_record_sets_every_contract_field() -> None:
    actor = audit.Actor.user(
        "u-17", email="ann@acme.test", name="Ann", roles=["admin"], address="203.0.113.9", user_agent="UA/1", session_id="s-1"
    )
    when = dt.datetime(2026, 11, 21, 10, 15, 30, 123456, tzinfo=dt.UTC)
    tracer = TracerProvider().get_tracer("test")
    with capture(tenant="acme") as captured, tracer.start_as_current_span("request") as span:
        first = audit.record(
            "updateRole",
            category="accounts_configuration",
            actor=actor,
            target=audit.Target("role", "r-3", "Auditors"),
            changes=audit.changes({"permissions": ["read"]}, {"permissions": ["read", "export"]}),
            details={"via": "api", "count": 2},
            reason="ticket SEC-1",
            occurred_at=when,
            message="Ann changed role Auditors",
        )
        second = audit.record("login", category="site_access", actor=actor, outcome="denied", tenant="other")
    one, two = captured.events
    assert one.id == first and two.id == second
    assert uuid.UUID(first).version == 7
    assert (one.event, one.category, one.tenant, one.outcome) == ("updateRole", "accounts_configuration", "acme", "success")
    assert one.occurred_at == when
    assert one.actor == {"type": "user", "id": "u-17", "email": "ann@acme.test", "name": "Ann", "roles": ["admin"]}
    assert one.client == {"address": "203.0.113.9", "user_agent": "UA/1", "session_id": "s-1"}
    assert one.target == {"type": "role", "id": "r-3", "name": "Auditors"}
    assert one.changes == [{"field": "permissions", "old": ["read"], "new": ["read", "export"]}]
    assert one.details == {"via": "api", "count": 2}
    assert one.reason == "ticket SEC-1"
    assert one.message == "Ann changed role Auditors"
    ctx = span.get_span_context()
    assert one.trace_id == f"{ctx.trace_id:032x}" and one.span_id == f"{ctx.span_id:016x}"
    assert (two.tenant, two.outcome) == ("other", "denied")
    assert (one.sequence, two.sequence) == (1, 2)


def test_record_without_a_span_or_time_uses_now_and_no_trace() -> None:
    before = dt.datetime.now(dt.UTC)
    with capture() as captured:
        audit.record("login", category="site_access", actor=audit.Actor.system("cron"))
    event = captured.one("login")
    assert event.trace_id is None and event.span_id is None
    assert before - dt.timedelta(seconds=1) <= event.occurred_at <= dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"event": "bad name"}, ValueError, "event 'bad name' is not a valid name"),
        ({"category": ""}, ValueError, "category '' is not a valid name"),
        ({"outcome": "ok"}, ValueError, "outcome 'ok' is not one of success, failure, denied"),
        ({"tenant": "no spaces"}, ValueError, "not a valid tenant id"),
        ({"actor": {"type": "user"}}, TypeError, "actor must be an otaudit_sdk.Actor"),
        ({"target": ("role", "r-1")}, TypeError, "target must be an otaudit_sdk.Target"),
        ({"occurred_at": dt.datetime(2026, 1, 1)}, ValueError, "occurred_at has no time zone"),
        ({"occurred_at": 1700000000}, TypeError, "occurred_at must be a datetime"),
        ({"details": {"when": object()}}, enc.EncodeError, r"audit.details.when: a object cannot be sent"),
        ({"details": [("method", "sso")]}, TypeError, "details must be a mapping"),
        ({"attributes": {"log.record.uid": "fixed"}}, ValueError, "'log.record.uid' is set by record"),
        ({"attributes": {"audit.tenant.id": "other"}}, ValueError, "'audit.tenant.id' is set by record"),
        ({"occurred_at": dt.datetime(1969, 12, 31, tzinfo=dt.UTC)}, ValueError, "is not after 1970-01-01"),
    ],
)
def test_record_refuses_what_the_collector_would_reject(kwargs: dict[str, Any], error: type[Exception], words: str) -> None:
    args: dict[str, Any] = {"event": "login", "category": "site_access", "actor": audit.Actor.user("u-1")}
    args.update(kwargs)
    with capture() as captured, pytest.raises(error, match=words):
        audit.record(args.pop("event"), **args)
    assert captured.events == []


def test_record_needs_a_tenant_from_somewhere() -> None:
    with capture(tenant=None), pytest.raises(ValueError, match="no tenant: pass tenant="):
        audit.record("login", category="site_access", actor=audit.Actor.user("u-1"))


def test_record_before_configure_says_what_to_do() -> None:
    previous = audit._install(None)
    try:
        with pytest.raises(audit.NotConfiguredError, match=r"call otaudit_sdk.configure"):
            audit.record("login", category="site_access", actor=audit.Actor.user("u-1"))
    finally:
        audit._install(previous)


def test_capture_one_fails_with_what_was_recorded() -> None:
    with capture() as captured:
        audit.record("login", category="site_access", actor=audit.Actor.user("u-1"))
        with pytest.raises(AssertionError, match=r"expected one logout, found 0; recorded: \['login'\]"):
            captured.one("logout")


# -- helpers ---------------------------------------------------------------------------


def test_actor_checks_its_type_and_identity() -> None:
    with pytest.raises(ValueError, match="actor type 'robot' is not one of"):
        audit.Actor("robot")
    with pytest.raises(ValueError, match="a user actor needs an id or an email"):
        audit.Actor.user()
    with pytest.raises(TypeError, match="not one string"):
        audit.Actor("user", "u-1", roles="admin")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"Actor.id must be a string, got int 17"):
        audit.Actor.user(17)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"Target.id must be a string, got int 42"):
        audit.Target("role", 42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="actor roles must be strings"):
        audit.Actor.user("u-1", roles=[1])  # type: ignore[list-item]
    moved = audit.Actor.user("u-1").at("198.51.100.7", user_agent="curl/8")
    assert (moved.id, moved.address, moved.user_agent) == ("u-1", "198.51.100.7", "curl/8")
    assert audit.Actor.user(email="a@b.test", roles=["x", "y"]).roles == ("x", "y")


def test_changes_pairs_old_and_new_values() -> None:
    before = {"name": "Ops", "permissions": ["read"], "active": 1, "password": "old", "gone": "x"}
    after = {"name": "Ops", "permissions": ["read", "export"], "active": True, "password": "new", "added": 3}
    found = [c.as_map() for c in audit.changes(before, after, withhold={"password"})]
    assert found == [
        {"field": "permissions", "old": ["read"], "new": ["read", "export"]},
        {"field": "active", "old": 1, "new": True},
        {"field": "password"},
        {"field": "gone", "old": "x", "new": None},
        {"field": "added", "old": None, "new": 3},
    ]
    assert [c.field for c in audit.changes(before, after, fields=["added", "name", "gone"])] == ["added", "gone"]
    assert audit.changes(None, {"a": 1}, id="item-7")[0].as_map() == {"field": "a", "id": "item-7", "old": None, "new": 1}
    assert audit.changes({"a": 1}, {"a": 1}) == []


def test_audited_records_success_failure_and_denied() -> None:
    actor = audit.Actor.user("u-1")
    with capture() as captured:
        with audit.audited("deleteAssets", category="inventory_configuration", actor=actor, details={"via": "ui"}) as scope:
            scope.details["count"] = 3
            scope.target = audit.Target("asset_group", "g-1")
        with pytest.raises(KeyError), audit.audited("deleteAssets", category="inventory_configuration", actor=actor):
            raise KeyError("g-2")
        with pytest.raises(PermissionError), audit.audited("deleteAssets", category="inventory_configuration", actor=actor):
            raise PermissionError("not an admin")
    ok, failed, denied = captured.events
    assert scope.id == ok.id
    assert (ok.outcome, ok.details, ok.target) == ("success", {"via": "ui", "count": 3}, {"type": "asset_group", "id": "g-1"})
    assert (failed.outcome, failed.reason) == ("failure", "KeyError: 'g-2'")
    assert (denied.outcome, denied.reason) == ("denied", "PermissionError: not an admin")


def test_audited_coroutines_record_when_they_end() -> None:
    @audit.audited("deleteRole", category="accounts_configuration", actor=audit.Actor.user("u-1"))
    async def delete(role: str) -> str:
        await asyncio.sleep(0)
        if role == "admin":
            raise PermissionError("the admin role stays")
        return role

    assert inspect.iscoroutinefunction(delete)  # frameworks still see an async handler

    async def main() -> None:
        assert await delete("r-1") == "r-1"
        with pytest.raises(PermissionError):
            await delete("admin")

    with capture() as captured:
        asyncio.run(main())
    assert [(e.outcome, e.reason) for e in captured.events] == [
        ("success", None),
        ("denied", "PermissionError: the admin role stays"),
    ]


def test_one_audited_object_shared_by_threads_keeps_their_scopes_apart() -> None:
    shared = audit.audited("updateRole", category="accounts_configuration", actor=audit.Actor.user("u-1"))
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()

    def first() -> None:  # enters first, leaves first, raising
        with contextlib.suppress(ValueError), shared as scope:
            scope.details["who"] = "a"
            a_in.set()
            b_in.wait(5)
            raise ValueError("a failed")
        a_out.set()

    def second() -> None:
        a_in.wait(5)
        with shared as scope:
            scope.details["who"] = "b"
            b_in.set()
            a_out.wait(5)

    with capture() as captured:
        threads = [threading.Thread(target=first), threading.Thread(target=second)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert sorted((e.details["who"], e.outcome) for e in captured.events) == [("a", "failure"), ("b", "success")]


def test_audited_as_a_decorator_records_each_call() -> None:
    @audit.audited("exportData", category="data_extraction", actor=audit.Actor.service("reports"))
    def export(n: int) -> int:
        if n < 0:
            raise ValueError("negative")
        return n * 2

    with capture() as captured:
        assert export(2) == 4
        with pytest.raises(ValueError, match="negative"):
            export(-1)
    assert [e.outcome for e in captured.named("exportData")] == ["success", "failure"]
    assert captured.events[1].reason == "ValueError: negative"


# -- settings ----------------------------------------------------------------------------


def test_settings_follow_the_standard_variables() -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/",
        "OTEL_EXPORTER_OTLP_HEADERS": "X-Team=audit%20team,authorization=Basic abc",
        "OTEL_SERVICE_NAME": "accounts-api",
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=prod,audit.tenant.id=acme,service.name=ignored",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "2500",
        "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip",
        "OTAUDIT_SDK_BUFFER_DIR": "/var/lib/audit",
    }
    s = settings_from(environ=env)
    assert (s.protocol, s.endpoint) == ("http", "http://collector:4318/v1/logs")
    assert s.headers == {"x-team": "audit team", "authorization": "Basic abc"}
    assert s.service_name == "accounts-api"
    assert s.resource_attributes["service.name"] == "accounts-api"
    assert s.resource_attributes["audit.tenant.id"] == "acme"
    assert s.resource_attributes["deployment.environment"] == "prod"
    assert uuid.UUID(s.resource_attributes["service.instance.id"])
    assert (s.timeout_seconds, s.gzip, str(s.buffer_dir), s.durability) == (2.5, True, "/var/lib/audit", "file")
    assert str(s.dead_letter_path) == "/var/lib/audit/dead-letter.jsonl"

    logs = settings_from(environ={**env, "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": "https://audit.example/ingest"})
    assert logs.endpoint == "https://audit.example/ingest"
    grpc = settings_from(protocol="grpc", token="t0k", environ={"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"})
    assert (grpc.protocol, grpc.endpoint, grpc.headers["authorization"]) == ("grpc", "http://localhost:4317", "Bearer t0k")
    assert settings_from(service_name="given", environ=env).service_name == "given"
    assert settings_from(environ={}).endpoint == "http://localhost:4318/v1/logs"


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"protocol": "http/json"}, "protocol 'http/json' is not supported"),
        ({"durability": "paper"}, "durability 'paper' is not one of file, fsync, memory"),
        ({"compression": "zstd"}, "compression 'zstd' is not supported"),
        ({"endpoint": "collector:4318"}, "must start with http:// or https://"),
        ({"tenant": "a b"}, "not a valid tenant id"),
        ({"max_buffer_bytes": 0}, "max_buffer_bytes must be at least 1"),
        ({"environ": {"OTEL_EXPORTER_OTLP_HEADERS": "x=1,Authorization: Bearer s3cr3t"}}, "entry 2 is not key=value"),
        ({"environ": {"OTEL_RESOURCE_ATTRIBUTES": "deployment=prod,oops"}}, "OTEL_RESOURCE_ATTRIBUTES: entry 2 is not key=value"),
    ],
)
def test_bad_settings_are_refused_at_configure(kwargs: dict[str, Any], words: str) -> None:
    kwargs.setdefault("environ", {})
    with pytest.raises(ValueError, match=words) as refused:
        settings_from(**kwargs)
    assert "s3cr3t" not in str(refused.value)


def test_a_tenant_in_the_resource_serves_records_without_one() -> None:
    captured = Captured()
    settings = settings_from(durability="memory", environ={"OTEL_RESOURCE_ATTRIBUTES": "audit.tenant.id=acme"})
    client = audit.AuditClient(settings, buffer=captured)
    client.record("login", category="site_access", actor=audit.Actor.user("u-1"))
    assert captured.one().tenant is None  # the collector takes it from the resource


# -- the package itself ------------------------------------------------------------------


def test_the_sdk_depends_on_opentelemetry_packages_only() -> None:
    project = tomllib.loads((REPO / "sdk" / "pyproject.toml").read_text())["project"]
    assert all(dep.startswith("opentelemetry-") for dep in project["dependencies"])
    assert project["version"] == audit.__version__
    assert (REPO / "sdk" / "otaudit_sdk" / "py.typed").exists()


def test_importing_the_sdk_loads_no_transport_or_server_code() -> None:
    code = (
        "import sys, otaudit_sdk, otaudit_sdk.web, otaudit_sdk.testing;"
        "heavy = ('grpc', 'requests', 'aiohttp', 'psycopg', 'jsonschema', 'opentelemetry.sdk', 'google.protobuf');"
        "print(sorted({m.split('.')[0] for m in sys.modules if m.startswith(heavy)}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_extra_attributes_travel_with_the_event() -> None:
    with capture() as captured:
        audit.record("login", category="site_access", actor=audit.Actor.user("u-1"), attributes={"http.route": "/login"})
    event = captured.one()
    assert event.attributes["http.route"] == "/login"


# -- the README keeps up ------------------------------------------------------------------

README = (REPO / "README.md").read_text(encoding="utf-8")
SDK_SECTION = README[README.index("## Recording events from a service") : README.index("## Sending an audit event from any")]


@pytest.mark.parametrize("name", sorted(ENVIRONMENT))
def test_every_sdk_variable_is_documented(name: str) -> None:
    assert f"`{name}`" in SDK_SECTION


@pytest.mark.parametrize(
    "name",
    sorted(
        (set(inspect.signature(settings_from).parameters) | set(inspect.signature(audit.configure).parameters))
        - {"environ", "options"}
    ),
)
def test_every_configure_argument_is_documented(name: str) -> None:
    assert f"`{name}`" in SDK_SECTION


def test_the_readme_testing_example_runs() -> None:
    block = SDK_SECTION[SDK_SECTION.index("from otaudit_sdk.testing import capture") :]
    code = block[: block.index("```")]

    def grant_role(user: str, role: str) -> None:
        audit.record(
            "addRole", category="accounts_configuration", actor=audit.Actor.user(user), target=audit.Target("role", role)
        )

    exec(code, {"grant_role": grant_role})
