"""The SDK delivering to the real collector and PostgreSQL, and to scripted collectors:
every contract field stored, rejects dead-lettered with the collector's words, retries
that honour the collector's hints, and nothing lost when either side goes away."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider
from pgcontrol import free_port
from sdk_fakes import FakeCollector, FakeHttpCollector, HttpAnswer, Reply, uid
from support import REPO, CollectorProcess, RunningCollector, rows, settings_for, wait_until

import otaudit_sdk as audit
from otaudit_sdk._config import settings_from

ANN = audit.Actor.user(
    "u-17", email="ann@acme.test", name="Ann", roles=["admin"], address="203.0.113.9", user_agent="Mozilla/5.0", session_id="s-1"
)


def client_for(endpoint: str, buffer_dir: Path, protocol: str = "grpc", **options: Any) -> audit.AuditClient:
    on_reject = options.pop("on_reject", None)
    on_buffer_full = options.pop("on_buffer_full", None)
    options.setdefault("retry_initial_seconds", 0.05)
    options.setdefault("retry_max_seconds", 0.5)
    settings = settings_from(
        endpoint=endpoint,
        protocol=protocol,
        service_name="accounts-api",
        tenant="acme",
        buffer_dir=buffer_dir,
        environ={},
        **options,
    )
    return audit.AuditClient(settings, on_reject=on_reject, on_buffer_full=on_buffer_full)


def record_good(client: audit.AuditClient, n: int = 1) -> list[str]:
    return [client.record("siteAccess", category="site_access", actor=ANN, details={"method": "sso"}) for _ in range(n)]


def record_bad(client: audit.AuditClient) -> str:
    """An updateRole without its target and changes: the catalog rejects it."""
    return client.record("updateRole", category="accounts_configuration", actor=ANN)


def dead_letters(folder: Path) -> list[dict[str, Any]]:
    path = folder / "dead-letter.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def stored_ids(conninfo: str) -> list[str]:
    return [r["id"] for r in rows(conninfo, "SELECT id FROM events ORDER BY seq")]


@pytest.fixture
def buffer_dir(tmp_path: Path) -> Path:
    return tmp_path / "buffer"


# -- the real collector ------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_events_are_stored_with_every_contract_field(collector: RunningCollector, buffer_dir: Path, protocol: str) -> None:
    endpoint = f"http://{collector.grpc_target}" if protocol == "grpc" else collector.http_url
    client = client_for(endpoint, buffer_dir, protocol)
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("PUT /roles/r-3") as span:
        first = client.record(
            "updateRole",
            category="accounts_configuration",
            actor=ANN,
            target=audit.Target("role", "r-3", "Auditors"),
            changes=audit.changes({"permissions": ["read"]}, {"permissions": ["read", "export"]}),
            details={"via": "api"},
            reason="ticket SEC-1",
            message="Ann changed role Auditors",
        )
    second = record_good(client)[0]
    assert client.flush(30)
    doc = rows(collector.conninfo, "SELECT doc FROM events WHERE id = %s", (first,))[0]["doc"]
    ctx = span.get_span_context()
    instance = client.settings.instance_id
    assert doc["id"] == first and doc["tenant"] == "acme"
    assert (doc["category"], doc["event"], doc["outcome"]) == ("accounts_configuration", "updateRole", "success")
    assert doc["actor"] == {"type": "user", "id": "u-17", "email": "ann@acme.test", "name": "Ann", "roles": ["admin"]}
    assert doc["client"] == {"address": "203.0.113.9", "user_agent": "Mozilla/5.0", "session_id": "s-1"}
    assert doc["target"] == {"type": "role", "id": "r-3", "name": "Auditors"}
    assert doc["changes"] == [{"field": "permissions", "old": ["read"], "new": ["read", "export"]}]
    assert (doc["details"], doc["reason"], doc["message"]) == ({"via": "api"}, "ticket SEC-1", "Ann changed role Auditors")
    assert doc["source"] == {"service": "accounts-api", "instance": instance, "sequence": 1}
    assert doc["trace"] == {"trace_id": f"{ctx.trace_id:032x}", "span_id": f"{ctx.span_id:016x}"}
    assert "flags" not in doc  # the SDK set the time and the id itself
    assert stored_ids(collector.conninfo) == [first, second]
    status = client.status()
    assert (status.recorded, status.sent, status.buffered, status.rejected) == (2, 2, 0, 0)
    assert status.oldest_unsent_age_seconds is None
    assert client.shutdown()
    assert list(buffer_dir.glob("*.wal")) == []  # delivered segments are deleted


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_gzip_compression_reaches_the_collector(collector: RunningCollector, buffer_dir: Path, protocol: str) -> None:
    endpoint = f"http://{collector.grpc_target}" if protocol == "grpc" else collector.http_url
    client = client_for(endpoint, buffer_dir, protocol, compression="gzip")
    ids = record_good(client, 20)
    assert client.flush(30)
    client.shutdown()
    assert sorted(stored_ids(collector.conninfo)) == sorted(ids)


def test_schema_rejects_reach_the_dead_letter_file_with_the_collector_message(
    collector: RunningCollector, buffer_dir: Path
) -> None:
    seen: list[audit.Rejected] = []
    client = client_for(f"http://{collector.grpc_target}", buffer_dir, on_reject=seen.append)
    good = record_good(client, 2)
    bad = record_bad(client)
    good += record_good(client)
    assert client.flush(30)
    client.shutdown()
    assert sorted(stored_ids(collector.conninfo)) == sorted(good)
    [letter] = dead_letters(buffer_dir)
    assert (letter["id"], letter["event"], letter["category"], letter["tenant"]) == (
        bad,
        "updateRole",
        "accounts_configuration",
        "acme",
    )
    assert "event 'updateRole'" in letter["reason"] and "target" in letter["reason"]
    assert base64.b64decode(letter["record"])  # the record itself, to replay once fixed
    assert [r.id for r in seen] == [bad]
    status = client.status()
    assert (status.sent, status.rejected) == (3, 1)


def test_collector_down_when_recorded_then_started_all_arrive(db: str, buffer_dir: Path) -> None:
    port = free_port()
    client = client_for(f"http://127.0.0.1:{port}", buffer_dir)
    good: list[str] = []
    bad: list[str] = []
    for i in range(120):  # more rejects than the collector names in one answer
        (bad.append(record_bad(client)) if i % 4 == 0 else good.extend(record_good(client)))
    wait_until(lambda: client.status().retries >= 2, what="the sender to retry")
    assert client.status().buffered == 120
    assert client.status().oldest_unsent_age_seconds is not None
    running = RunningCollector(settings_for(db, {("listen", "grpc_port"): port}))
    try:
        assert client.flush(60)
    finally:
        client.shutdown()
        running.stop()
    assert sorted(stored_ids(db)) == sorted(good)
    assert sorted(d["id"] for d in dead_letters(buffer_dir)) == sorted(bad)


@pytest.mark.slow
def test_collector_killed_mid_stream_and_restarted_all_arrive_once(db: str, buffer_dir: Path, tmp_path: Path) -> None:
    ports = [str(free_port()) for _ in range(3)]
    args = ["serve", "--database-url", db, "--grpc-port", ports[0], "--http-port", ports[1], "--api-port", ports[2]]
    proc = CollectorProcess(args, cwd=tmp_path).start()
    client = client_for(f"http://127.0.0.1:{ports[0]}", buffer_dir, batch_records=100)
    ids: list[str] = []
    writer = threading.Thread(target=lambda: [ids.extend(record_good(client)) or time.sleep(0.0005) for _ in range(4000)])
    writer.start()
    try:
        for kill_after in (800, 2000):
            wait_until(lambda n=kill_after: client.status().sent >= n, timeout=60, what=f"{kill_after} delivered")  # type: ignore[misc]
            proc.kill()
            time.sleep(0.3)
            proc = CollectorProcess(args, cwd=tmp_path).start()
        writer.join()
        assert client.flush(60)
    finally:
        client.shutdown()
        proc.terminate()
    stored = stored_ids(db)
    assert len(stored) == len(set(stored)) == 4000
    assert set(stored) == set(ids)
    assert client.status().retries > 0, "the kills were not noticed"


_SERVICE = """
import sys, time
import otaudit_sdk as audit
client = audit.configure(endpoint=sys.argv[1], protocol="grpc", service_name="svc", tenant="acme",
                         buffer_dir=sys.argv[2], retry_initial_seconds=0.05, retry_max_seconds=0.5,
                         exit_timeout_seconds=float(sys.argv[4]), handle_sigterm=True)
actor = audit.Actor.user("u-1")
for _ in range(int(sys.argv[3])):
    print(audit.record("siteAccess", category="site_access", actor=actor), flush=True)
print("recorded", flush=True)
if sys.argv[5] == "flush":
    print("flushed", bool(audit.flush(60)), flush=True)
elif sys.argv[5] == "sleep":
    time.sleep(120)
"""


def service(endpoint: str, buffer_dir: Path, count: int, then: str, exit_timeout: float = 5.0) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "sdk")}
    return subprocess.Popen(
        [sys.executable, "-c", _SERVICE, endpoint, str(buffer_dir), str(count), str(exit_timeout), then],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def read_ids(proc: subprocess.Popen[str]) -> list[str]:
    assert proc.stdout is not None
    ids = []
    for line in proc.stdout:
        if line.strip() == "recorded":
            return ids
        ids.append(line.strip())
    raise AssertionError(f"the service ended early: {proc.stderr.read() if proc.stderr else ''}")


def test_events_of_a_killed_service_arrive_after_it_restarts(db: str, buffer_dir: Path) -> None:
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    first = service(endpoint, buffer_dir, 200, "sleep")
    before = read_ids(first)  # record() returned for all of them; nothing can have been delivered
    first.send_signal(signal.SIGKILL)
    first.wait(30)
    running = RunningCollector(settings_for(db, {("listen", "grpc_port"): port}))
    try:
        second = service(endpoint, buffer_dir, 1, "flush")
        after = read_ids(second)
        out, err = second.communicate(timeout=90)
        assert "flushed True" in out, err
    finally:
        running.stop()
    stored = rows(db, "SELECT id, doc FROM events ORDER BY seq")
    assert sorted(r["id"] for r in stored) == sorted(before + after)
    first_run = [r["doc"]["source"] for r in stored if r["id"] in set(before)]
    assert len({s["instance"] for s in first_run}) == 1  # sent under the resource they were recorded with
    assert sorted(s["sequence"] for s in first_run) == list(range(1, 201))
    assert list(buffer_dir.glob("*.wal")) == []


def test_sigterm_delivers_what_is_buffered_before_the_process_ends(buffer_dir: Path) -> None:
    fake = FakeCollector(delay_seconds=0.05)
    try:
        proc = service(fake.endpoint, buffer_dir, 400, "sleep", exit_timeout=60)
        ids = read_ids(proc)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=90)
    finally:
        fake.stop()
    assert proc.returncode == -signal.SIGTERM  # the default disposition ran after the flush
    assert sorted(fake.stored) == sorted(ids), err
    assert len(fake.requests) > 1


def test_normal_exit_delivers_what_is_buffered(buffer_dir: Path) -> None:
    fake = FakeCollector(delay_seconds=0.02)
    try:
        proc = service(fake.endpoint, buffer_dir, 500, "exit", exit_timeout=60)
        ids = read_ids(proc)
        _, err = proc.communicate(timeout=90)
    finally:
        fake.stop()
    assert proc.returncode == 0, err
    assert sorted(fake.stored) == sorted(ids)


def test_a_full_buffer_raises_a_clear_error_and_drops_nothing(db: str, buffer_dir: Path) -> None:
    port = free_port()
    client = client_for(f"http://127.0.0.1:{port}", buffer_dir, max_buffer_bytes=20_000)
    kept: list[str] = []
    with pytest.raises(audit.BufferFullError, match=r"audit event 'siteAccess' \(.+\) not recorded: the audit buffer holds \d+"):
        for _ in range(1000):
            kept.extend(record_good(client))
    assert 10 < len(kept) < 1000
    assert client.status().buffered == len(kept)
    refused: list[audit.BufferFullError] = []
    handled = client_for(f"http://127.0.0.1:{port}", buffer_dir / "second", max_buffer_bytes=2_000, on_buffer_full=refused.append)
    handled_ids = [record_good(handled)[0] for _ in range(30)]
    assert refused and refused[-1].id == handled_ids[-1]
    running = RunningCollector(settings_for(db, {("listen", "grpc_port"): port}))
    try:
        assert client.flush(60)
        assert handled.flush(60)
    finally:
        client.shutdown()
        handled.shutdown()
        running.stop()
    stored = set(stored_ids(db))
    assert set(kept) <= stored
    assert len(stored) == len(kept) + len(handled_ids) - len(refused)


_FORKING = """
import os, sys
import otaudit_sdk as audit
audit.configure(endpoint=sys.argv[1], protocol=sys.argv[3], service_name="web", tenant="acme", buffer_dir=sys.argv[2])
actor = audit.Actor.user("u-1")
audit.record("siteAccess", category="site_access", actor=actor)
children = []
for _ in range(2):
    pid = os.fork()
    if pid == 0:
        for _ in range(50):
            audit.record("siteAccess", category="site_access", actor=actor)
        ok = audit.shutdown(30)
        os._exit(0 if ok else 3)
    children.append(pid)
for _ in range(49):
    audit.record("siteAccess", category="site_access", actor=actor)
codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in children]
print("children", codes, "parent", bool(audit.flush(30)), flush=True)
"""


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_forked_workers_each_deliver_their_own_events(collector: RunningCollector, buffer_dir: Path, protocol: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO / "sdk")}
    endpoint = f"http://{collector.grpc_target}" if protocol == "grpc" else collector.http_url
    out = subprocess.run(
        [sys.executable, "-c", _FORKING, endpoint, str(buffer_dir), protocol],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert "children [0, 0] parent True" in out.stdout, out.stderr
    sources = [r["doc"]["source"] for r in rows(collector.conninfo, "SELECT doc FROM events")]
    by_instance: dict[str, list[int]] = {}
    for s in sources:
        by_instance.setdefault(s["instance"], []).append(s["sequence"])
    assert len(sources) == 150
    assert sorted(len(v) for v in by_instance.values()) == [50, 50, 50]
    for seqs in by_instance.values():
        assert sorted(seqs) == list(range(1, 51))  # each process its own gap-free sequence


# -- scripted collectors ------------------------------------------------------------------


@pytest.fixture
def fake() -> Iterator[FakeCollector]:
    server = FakeCollector()
    yield server
    server.stop()


def test_unnamed_rejects_are_isolated_and_only_they_are_dead_lettered(fake: FakeCollector, buffer_dir: Path) -> None:
    """A collector that counts its rejects but does not say which (any OTLP collector may)."""
    poison: set[str] = set()

    def answer(records: list[Any]) -> Reply:
        bad = tuple(i for i, r in enumerate(records) if uid(r) in poison)
        return Reply(rejected=bad, message=f"{len(bad)} log records were invalid" if bad else "")

    fake.answer = answer
    client = client_for(fake.endpoint, buffer_dir, protocol="grpc")
    fake.delay_seconds = 0.2  # let the records below gather into one batch
    ids = record_good(client, 1)
    for i in range(64):
        new = record_good(client)[0]
        ids.append(new)
        if i in (3, 40, 41):
            poison.add(new)
    assert client.flush(60)
    client.shutdown()
    assert sorted(d["id"] for d in dead_letters(buffer_dir)) == sorted(poison)
    assert set(fake.stored) == set(ids) - poison
    assert all("log records were invalid" in d["reason"] for d in dead_letters(buffer_dir))
    assert max(n for _, n in fake.requests) > 32 and len(fake.requests) > 3  # one batch, then halved


def test_retry_hints_are_honoured_and_too_large_batches_are_split(fake: FakeCollector, buffer_dir: Path) -> None:
    answers = iter([Reply(grpc.StatusCode.UNAVAILABLE, "busy", retry_after=0.4)])

    def answer(records: list[Any]) -> Reply:
        scripted = next(answers, None)
        if scripted is not None:
            return scripted
        if len(records) > 8:
            return Reply(grpc.StatusCode.RESOURCE_EXHAUSTED, "request larger than the limit")
        return Reply()

    fake.answer = answer
    fake.delay_seconds = 0.1
    client = client_for(fake.endpoint, buffer_dir, protocol="grpc")
    ids = record_good(client, 50)
    assert client.flush(60)
    client.shutdown()
    assert sorted(fake.stored) == sorted(ids)
    (first_at, _), (second_at, _) = fake.requests[:2]
    assert second_at - first_at >= 0.4  # waited at least as long as the collector asked
    assert max(n for _, n in fake.requests[2:]) <= 50
    assert client.status().retries >= 1


def test_a_record_the_collector_refuses_whole_is_dead_lettered_alone(fake: FakeCollector, buffer_dir: Path) -> None:
    poison: set[str] = set()

    def answer(records: list[Any]) -> Reply:
        if any(uid(r) in poison for r in records):
            return Reply(grpc.StatusCode.INVALID_ARGUMENT, "cannot parse the request")
        return Reply()

    fake.answer = answer
    fake.delay_seconds = 0.1
    client = client_for(fake.endpoint, buffer_dir, protocol="grpc")
    ids = record_good(client, 20)
    poison.add(ids[7])
    assert client.flush(60)
    client.shutdown()
    assert set(fake.stored) == set(ids) - poison
    [letter] = dead_letters(buffer_dir)
    assert letter["id"] == ids[7]
    assert "gRPC INVALID_ARGUMENT: cannot parse the request" in letter["reason"]


def test_a_retry_limit_dead_letters_instead_of_dropping(buffer_dir: Path) -> None:
    client = client_for(f"http://127.0.0.1:{free_port()}", buffer_dir, retry_timeout_seconds=0.5)
    ids = record_good(client, 3)
    assert client.flush(30)
    client.shutdown()
    letters = dead_letters(buffer_dir)
    assert sorted(d["id"] for d in letters) == sorted(ids)
    assert "not delivered within 0.5 s" in letters[0]["reason"]
    assert client.status().expired == 3


def test_a_wrong_token_is_retried_not_dead_lettered(
    fake: FakeCollector, buffer_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    allowed = threading.Event()

    def answer(records: list[Any]) -> Reply:
        return Reply() if allowed.is_set() else Reply(grpc.StatusCode.UNAUTHENTICATED, "bad token")

    fake.answer = answer
    client = client_for(fake.endpoint, buffer_dir, protocol="grpc", token="s3cret-token")
    ids = record_good(client, 5)
    wait_until(lambda: client.status().retries >= 3, what="retries with the wrong token")
    assert "gRPC UNAUTHENTICATED: bad token" in client.status().last_error
    allowed.set()
    assert client.flush(30)
    client.shutdown()
    assert sorted(fake.stored) == sorted(ids)
    assert dead_letters(buffer_dir) == []
    assert "s3cret-token" not in caplog.text


def test_over_http_retry_after_is_honoured_and_partial_success_is_read(
    buffer_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A plain HTTP server playing a busy collector, then one that names a rejected record."""
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse

    def respond(request: Any) -> HttpAnswer:
        if len(server.arrivals) == 1:
            return 503, {"Retry-After": "1"}, b""
        answer = ExportLogsServiceResponse()
        if len(request.resource_logs[0].scope_logs[0].log_records) > 1:
            answer.partial_success.rejected_log_records = 1
            answer.partial_success.error_message = (
                "1 record(s) rejected and quarantined: record 1 "
                "(resource_logs[0].scope_logs[0].log_records[1], event 'siteAccess'): details.method: not allowed"
            )
        return 200, {"Content-Type": "application/x-protobuf"}, answer.SerializeToString()

    server = FakeHttpCollector(respond)
    try:
        client = client_for(f"http://127.0.0.1:{server.port}/v1/logs", buffer_dir, protocol="http")
        first = record_good(client)  # answered 503 Retry-After: 1
        wait_until(lambda: len(server.arrivals) == 1, what="the first request")
        more = record_good(client, 4)
        assert client.flush(30)
        client.shutdown()
    finally:
        server.stop()
    seen = server.arrivals
    assert seen[1][0] - seen[0][0] >= 1.0  # waited as long as Retry-After asked
    delivered = [i for _, ids in seen[1:] for i in ids]
    assert sorted(set(delivered)) == sorted(first + more)
    rejected = next(ids for _, ids in seen[1:] if len(ids) > 1)[1]
    [letter] = dead_letters(buffer_dir)
    assert letter["id"] == rejected
    assert letter["reason"].startswith("record 1 (resource_logs[0].scope_logs[0].log_records[1]")
    assert "details.method: not allowed" in caplog.text  # the log line carries the collector's words
    assert client.status().rejected == 1


def test_a_broken_collector_is_retried_not_dead_lettered(fake: FakeCollector, buffer_dir: Path) -> None:
    answers = iter([Reply(grpc.StatusCode.INTERNAL, "database error"), Reply(grpc.StatusCode.UNKNOWN, "Stream removed")])
    fake.answer = lambda records: next(answers, Reply())
    client = client_for(fake.endpoint, buffer_dir, protocol="grpc")
    ids = record_good(client, 10)
    assert client.flush(30)
    client.shutdown()
    assert sorted(fake.stored) == sorted(ids)
    assert dead_letters(buffer_dir) == []
    assert client.status().retries == 2


def test_a_200_that_is_not_otlp_does_not_count_as_delivered(buffer_dir: Path) -> None:
    """An endpoint pointing at some web page (an ingress default backend) acknowledges nothing."""

    def respond(request: Any) -> HttpAnswer:
        if len(server.arrivals) <= 2:
            return 200, {"Content-Type": "text/html"}, b"<html>default backend</html>"
        return 200, {"Content-Type": "application/x-protobuf"}, b""

    server = FakeHttpCollector(respond)
    try:
        client = client_for(f"http://user:pw@127.0.0.1:{server.port}/v1/logs", buffer_dir, protocol="http")
        ids = record_good(client, 3)
        wait_until(lambda: len(server.arrivals) >= 2, what="two HTML answers")
        assert "answered 200 with text/html: not an OTLP/HTTP endpoint" in client.status().last_error
        assert "pw" not in client.status().last_error
        assert client.flush(30)
        client.shutdown()
    finally:
        server.stop()
    acknowledged = [i for _, sent in server.arrivals[2:] for i in sent]  # the HTML answers acknowledged nothing
    assert sorted(acknowledged) == sorted(ids)
    assert dead_letters(buffer_dir) == []
