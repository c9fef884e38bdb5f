"""Reads from a streaming replica (``database.read_url``, storage/replica.py) against two real
PostgreSQL servers in streaming replication, started here with pgserver's binaries
(pgreplica.py): a primary and a hot standby made with ``pg_basebackup``.

Pages of events are read from the standby: with its replay paused, an event just stored is
not in them. What must read its own writes stays on the primary meanwhile: the feed, one
event the standby lacks, an export job and its download, a viewer key revocation and a
revoked token. The lag shows in ``/metrics`` and ``/readyz``; past
``database.max_replica_lag_seconds``, and with the standby stopped, pages come from the
primary, and ``/readyz`` says so while the collector stays ready.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
import requests
from pgreplica import ReplicatedPostgres
from prometheus_client.parser import text_string_to_metric_families
from support import RunningCollector, good_attributes, record, request, settings_for, wait_until

from otaudit_collector.app import ensure_partitions
from otaudit_collector.config import ConfigError, load_settings
from otaudit_collector.storage import access
from otaudit_collector.storage.migrate import apply_migrations

EXPORT = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"
MAX_LAG = 5.0
"""database.max_replica_lag_seconds of these tests' collectors: long enough for the checks made
while replay is paused, short enough to wait for."""

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def servers() -> Iterator[ReplicatedPostgres]:
    """A primary with a migrated ``otaudit`` database, and its streaming standby."""
    # Not under tmp_path: a second pytest run on the machine prunes older temp roots.
    folder = Path(tempfile.mkdtemp(prefix="otaudit-test-replica-"))
    pg = ReplicatedPostgres(folder)
    try:
        pg.start()
        with psycopg.connect(pg.url(pg.primary), autocommit=True) as conn:
            conn.execute("CREATE DATABASE otaudit")
        primary = pg.url(pg.primary, "otaudit")
        apply_migrations(primary)
        ensure_partitions(primary, 2)
        pg.wait_replayed()
        yield pg
    finally:
        pg.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def running(servers: ReplicatedPostgres) -> Iterator[RunningCollector]:
    """A collector writing to the primary and reading pages from the standby. No token cache:
    a revocation is to hold at once, whichever server a read goes to."""
    settings = settings_for(
        servers.url(servers.primary, "otaudit"),
        {
            ("database", "read_url"): servers.url(servers.standby, "otaudit"),
            ("database", "max_replica_lag_seconds"): MAX_LAG,
            ("auth", "token_cache_seconds"): 0,
        },
    )
    collector = RunningCollector(settings)
    yield collector
    collector.stop()


# -- helpers ----------------------------------------------------------------------------------


def send(collector: RunningCollector, tenant: str) -> str:
    """Store one event of ``tenant`` through OTLP/gRPC; its id, once the collector has committed it."""
    attrs = good_attributes(**{"audit.tenant.id": tenant})
    with grpc.insecure_channel(collector.grpc_target) as channel:
        channel.unary_unary(EXPORT)(request([record("updateRole", attrs)]).SerializeToString(), timeout=30)
    return str(attrs["log.record.uid"])


def make_token(primary: str, tenant: str, role: str = "admin") -> tuple[str, str]:
    """(its id, the token)."""
    with psycopg.connect(primary) as conn:
        return access.create_token(conn, tenant=tenant, role=role, name=f"{tenant} {role}", pepper="")


class Api:
    def __init__(self, collector: RunningCollector, token: str) -> None:
        self.base = collector.api_url
        self.headers = {"Authorization": f"Bearer {token}"}

    def get(self, path: str, token: str | None = None, **params: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else self.headers
        return requests.get(self.base + path, params=params, headers=headers, timeout=30)

    def post(self, path: str, body: Any = None) -> requests.Response:
        return requests.post(self.base + path, json=body, headers=self.headers, timeout=30)

    def ids(self, path: str = "/v1/events", **params: Any) -> list[str]:
        """The ids of the events the service sent (not the API's own audit events: its sessions, exports)."""
        answer = self.get(path, **params)
        assert answer.status_code == 200, answer.text
        return [e["id"] for e in answer.json()["events"] if e["source"].get("service") != "otaudit-collector"]


def metrics(collector: RunningCollector) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = requests.get(collector.api_url + "/metrics", timeout=30).text
    return {
        (s.name, frozenset(s.labels.items())): s.value for family in text_string_to_metric_families(text) for s in family.samples
    }


def reads(collector: RunningCollector) -> dict[str, float]:
    """Lag-tolerant reads so far, by the server that answered them."""
    scraped = metrics(collector)
    return {
        server: scraped[("otaudit_replica_reads_total", frozenset({("server", server)}))] for server in ("replica", "primary")
    }


def gauge(collector: RunningCollector, name: str) -> float:
    return metrics(collector)[(name, frozenset())]


def readyz(collector: RunningCollector) -> dict[str, Any]:
    answer = requests.get(collector.api_url + "/readyz", timeout=30)
    assert answer.status_code == 200, answer.text  # a replica's troubles never make the collector not ready
    body: dict[str, Any] = answer.json()
    assert body["status"] == "ready"
    return body


def replica_state(collector: RunningCollector) -> str:
    state: str = readyz(collector)["replica"]["state"]
    return state


def standby_sql(servers: ReplicatedPostgres, sql: str) -> Any:
    with psycopg.connect(servers.url(servers.standby, "otaudit"), autocommit=True) as conn:
        row = conn.execute(sql).fetchone()
        return row[0] if row else None


# -- the tests --------------------------------------------------------------------------------


def test_pages_come_from_the_standby_and_what_must_be_current_from_the_primary(
    servers: ReplicatedPostgres, running: RunningCollector
) -> None:
    primary = servers.url(servers.primary, "otaudit")
    tenant = f"replica-{uuid.uuid4().hex[:8]}"
    admin = Api(running, make_token(primary, tenant)[1])
    auditor_id, auditor = make_token(primary, tenant, "auditor")

    wait_until(lambda: replica_state(running) == "streaming", timeout=15, what="the standby in use")
    body = readyz(running)
    assert body["replica"]["reads_from"] == "replica" and "degraded" not in body
    assert gauge(running, "otaudit_replica_up") == 1 and gauge(running, "otaudit_replica_in_use") == 1
    first = send(running, tenant)
    wait_until(lambda: first in admin.ids(), timeout=10, what="the first event replayed on the standby")
    assert admin.get("/v1/events", token=auditor).status_code == 200  # the auditor token works (and is looked up)

    standby_sql(servers, "SELECT pg_wal_replay_pause()")
    try:
        wait_until(lambda: standby_sql(servers, "SELECT pg_get_wal_replay_pause_state()") == "paused", what="replay paused")
        before = reads(running)
        second = send(running, tenant)  # committed on the primary, not replayed on the standby

        # (a) the page is the standby's: the event just stored is not in it yet
        page = admin.ids()
        assert first in page and second not in page
        assert reads(running)["replica"] == before["replica"] + 1
        assert reads(running)["primary"] == before["primary"]
        assert admin.ids(target="r-3") == page  # an object's history is such a page too

        # (b) what must be current reads the primary meanwhile
        assert admin.ids("/v1/feed")[-1:] == [second]  # the feed: commit order, up to the last commit
        one = admin.get(f"/v1/events/{second}")  # the standby lacks it: asked of the primary again
        assert one.status_code == 200 and one.json()["id"] == second
        assert reads(running)["primary"] == before["primary"] + 1

        made = admin.post("/v1/exports", {"format": "ndjson"})
        assert made.status_code == 202, made.text
        job_id = made.json()["id"]
        assert admin.get(f"/v1/exports/{job_id}").status_code == 200  # the job just made: on the standby it is not yet

        def job_done() -> bool:
            answer = admin.get(f"/v1/exports/{job_id}")
            assert answer.status_code == 200, answer.text
            assert answer.json()["state"] in ("queued", "running", "done"), answer.text
            return bool(answer.json()["state"] == "done")

        wait_until(job_done, timeout=20, what="the export job done")
        download = requests.get(admin.get(f"/v1/exports/{job_id}").json()["download_url"], timeout=30)
        assert download.status_code == 200 and second in download.text
        streamed = admin.get("/v1/export", format="ndjson")  # one long COPY: the primary's, up to date
        assert streamed.status_code == 200 and second in streamed.text

        viewer = admin.post("/v1/viewer-tokens", {"for": "Ann Lee (ann@customer.example)"})
        assert viewer.status_code == 201, viewer.text
        assert admin.get("/v1/events", token=viewer.json()["token"]).status_code == 200
        assert admin.post("/v1/viewer-tokens/revoke").status_code == 200
        # the standby still has the old key generation: read there, the token would still work
        assert admin.get("/v1/events", token=viewer.json()["token"]).status_code == 401

        with psycopg.connect(primary) as conn:
            assert access.revoke_token(conn, auditor_id)
        assert admin.get("/v1/events", token=auditor).status_code == 401  # at once, though the standby still has it

        # (c) the lag shows, and past max_replica_lag_seconds pages come from the primary
        wait_until(lambda: gauge(running, "otaudit_replica_lag_seconds") > 0, timeout=10, what="the lag in /metrics")
        wait_until(lambda: replica_state(running) == "lagging", timeout=MAX_LAG + 10, what="the standby lagging")
        body = readyz(running)
        assert body["replica"]["reads_from"] == "primary" and body["replica"]["lag_seconds"] > MAX_LAG
        assert body["replica"]["max_lag_seconds"] == MAX_LAG
        assert "lags" in body["degraded"][0] and "read from the primary" in body["degraded"][0]
        assert gauge(running, "otaudit_replica_in_use") == 0 and gauge(running, "otaudit_replica_up") == 1
        assert gauge(running, "otaudit_replica_lag_seconds") > MAX_LAG
        before = reads(running)
        assert second in admin.ids()  # from the primary now
        assert reads(running) == {"replica": before["replica"], "primary": before["primary"] + 1}
    finally:
        standby_sql(servers, "SELECT pg_wal_replay_resume()")

    wait_until(lambda: replica_state(running) == "streaming", timeout=15, what="the standby in use again")
    before = reads(running)
    assert second in admin.ids()  # replayed: the standby has it
    assert reads(running)["replica"] == before["replica"] + 1
    assert "degraded" not in readyz(running)


def test_with_the_standby_stopped_pages_come_from_the_primary(servers: ReplicatedPostgres, running: RunningCollector) -> None:
    primary = servers.url(servers.primary, "otaudit")
    tenant = f"replica-{uuid.uuid4().hex[:8]}"
    admin = Api(running, make_token(primary, tenant)[1])
    wait_until(lambda: replica_state(running) == "streaming", timeout=15, what="the standby in use")
    first = send(running, tenant)
    wait_until(lambda: first in admin.ids(), timeout=10, what="the event replayed on the standby")
    before = reads(running)

    servers.standby.stop()
    try:
        # at once: the read that finds the standby's connection broken is answered by the primary
        second = send(running, tenant)
        assert admin.ids()[:2] == [second, first]
        assert reads(running)["primary"] == before["primary"] + 1
        assert replica_state(running) == "down"  # that read said so already; the next check says why
        wait_until(
            lambda: "unreachable" in readyz(running)["replica"]["problem"], timeout=10, what="/readyz saying it is unreachable"
        )
        body = readyz(running)
        assert body["replica"]["reads_from"] == "primary" and body["replica"]["lag_seconds"] is None
        assert "unreachable" in body["replica"]["problem"] and "unreachable" in body["degraded"][0]
        assert gauge(running, "otaudit_replica_up") == 0 and gauge(running, "otaudit_replica_in_use") == 0
        assert math.isnan(gauge(running, "otaudit_replica_lag_seconds"))
        assert admin.ids("/v1/feed")[-1] == second
        assert admin.get(f"/v1/events/{second}").status_code == 200
    finally:
        servers.standby.start()

    wait_until(lambda: replica_state(running) == "streaming", timeout=20, what="the standby back in use")
    before = reads(running)
    assert admin.ids()[:2] == [second, first]
    assert reads(running)["replica"] == before["replica"] + 1


def test_without_read_url_nothing_changes(collector: RunningCollector) -> None:
    """A single server: every read on database.url, no replica in /readyz or /metrics."""
    assert requests.get(collector.api_url + "/readyz", timeout=30).json() == {"status": "ready"}
    assert "otaudit_replica" not in requests.get(collector.api_url + "/metrics", timeout=30).text


def test_read_url_comes_from_the_environment_and_is_kept_secret() -> None:
    url = "postgresql://reader:s3cret@standby.example/otaudit"
    settings = load_settings(None, environ={"OTAUDIT_DATABASE_READ_URL": url})
    assert settings.get("database", "read_url") == url
    assert settings.get("database", "max_replica_lag_seconds") == 30
    with pytest.raises(ConfigError) as refused:
        load_settings(None, environ={"OTAUDIT_DATABASE_READ_URL": "mysql://reader:s3cret@standby.example/otaudit"})
    assert "database.read_url" in str(refused.value) and "s3cret" not in str(refused.value)
