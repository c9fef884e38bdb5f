"""The API's promises against an attacker, against a real collector and PostgreSQL:
every read is recorded (or refused), job status and downloads are admin-only, which routes
need no token is decided by the matched route, export slots are bounded per tenant and a
client that stops reading is cut off, and CSV cells are inert after what a spreadsheet strips."""

from __future__ import annotations

import csv
import http.client
import io
import json
import socket
import time
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import RunningCollector, settings_for, wait_until
from test_api_reads import ROLE, Api, send, token
from test_export import _bulk

from otaudit_collector.core.export import FORMULA_STARTS, SPREADSHEET_STRIPPED, spreadsheet_cell
from otaudit_collector.selfaudit import LIMITS

# -- helpers ---------------------------------------------------------------------------


def _own_events(conninfo: str, tenant: str, event: str) -> list[dict[str, Any]]:
    """The API's own audit events of ``tenant`` named ``event``, oldest first, straight from storage."""
    with psycopg.connect(conninfo) as conn:
        found = conn.execute("SELECT doc FROM events WHERE tenant = %s AND event = %s ORDER BY seq", (tenant, event)).fetchall()
    return [row[0] for row in found]


def _rejects(conninfo: str) -> int:
    with psycopg.connect(conninfo) as conn:
        row = conn.execute("SELECT count(*) FROM rejects").fetchone()
    assert row is not None
    return int(row[0])


def _raw(api_url: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """GET ``path`` sent exactly as written (no client-side normalizing of dots, slashes or escapes)."""
    parts = urlsplit(api_url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
    try:
        conn.putrequest("GET", path, skip_accept_encoding=True)
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        conn.endheaders()
        answer = conn.getresponse()
        return answer.status, answer.read()
    finally:
        conn.close()


def _stalled(api_url: str, path: str, headers: dict[str, str] | None = None) -> socket.socket:
    """A client that asks for ``path``, reads the answer's head, and then reads nothing more (a tiny receive
    buffer, so the collector's writes soon cannot complete). Close it to let go."""
    parts = urlsplit(api_url)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(30)
    sock.connect((parts.hostname or "127.0.0.1", parts.port or 80))
    lines = [f"GET {path} HTTP/1.1", f"Host: {parts.netloc}", *(f"{k}: {v}" for k, v in (headers or {}).items())]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(512)
        assert chunk, "the collector closed the connection before answering"
        head += chunk
    assert head.startswith(b"HTTP/1.1 200"), head[:300]
    return sock


def _job_done(api: Api, job_id: str) -> dict[str, Any]:
    wait_until(lambda: api.ok(f"/v1/exports/{job_id}")["state"] in ("done", "failed"), 60, "the export job")
    job: dict[str, Any] = api.ok(f"/v1/exports/{job_id}")
    assert job["state"] == "done", job
    return job


# -- 1. every read is recorded, or refused ------------------------------------------------------


def test_the_worst_caller_values_are_recorded_cut_never_quarantined(collector: RunningCollector) -> None:
    """A User-Agent far over the envelope's 2048, filters and a query far over anything sensible,
    a lone surrogate: the session and both exports are in the trail, each value cut to what the
    catalogs accept, and the event says which (details.truncated). Nothing is quarantined."""
    send(collector.grpc_target, [(ROLE, time.time_ns())])
    admin = token(collector.conninfo, "acme")
    agent = "Mozilla/5.0 " + "x" * 7000  # close to the largest header the API port reads
    headers = {"Authorization": f"Bearer {admin}", "User-Agent": agent}
    streamed = requests.get(
        collector.api_url + "/v1/export",
        params={"format": "ndjson", "actor": "a" * 6000, "event": ["updateRole"] * 40},
        headers=headers,
        timeout=60,
    )
    assert streamed.status_code == 200, streamed.text
    body = {
        "format": "csv",
        "actor": ["b" * 50_000] * 3,
        "q": "actor:" + "c" * 100_000,
        "target_id": ["d"] * 200,
    }
    lone = requests.post(collector.api_url + "/v1/exports", json={**body, "event": ["ok", "\ud800"]}, headers=headers, timeout=60)
    assert lone.status_code == 400, lone.text  # a lone surrogate is no filter value: refused, saying where (was a 500)
    assert lone.json()["error"] == "bad_filter" and lone.json()["message"].startswith("event: contains a lone surrogate")
    made = requests.post(collector.api_url + "/v1/exports", json=body, headers=headers, timeout=60)
    assert made.status_code == 202, made.text
    api = Api(collector.api_url, admin)
    _job_done(api, made.json()["id"])
    wait_until(lambda: len(_own_events(collector.conninfo, "acme", "exportView")) == 2, 30, "the job's exportView event")

    (session,) = _own_events(collector.conninfo, "acme", "siteAccess")
    stream_event, job_event = _own_events(collector.conninfo, "acme", "exportView")
    for event in (session, stream_event, job_event):
        assert len(event["client"]["user_agent"]) == LIMITS["user_agent"] <= 2048
        assert event["client"]["user_agent"].startswith("Mozilla/5.0 xxx")
        assert "client.user_agent" in event["details"]["truncated"]
    assert session["details"]["method"] == "token"
    assert "details.filters.actor" in stream_event["details"]["truncated"]
    assert stream_event["details"]["filters"]["event"] == ["updateRole"] * 40  # within bounds: kept whole
    assert len(stream_event["details"]["filters"]["actor"]) == LIMITS["detail_text"]
    assert {"details.query", "details.filters.actor", "details.filters.target_id"} <= set(job_event["details"]["truncated"])
    assert len(job_event["details"]["query"]) == LIMITS["detail_text"]
    assert len(job_event["details"]["filters"]["target_id"]) == LIMITS["detail_items"]
    assert job_event["details"]["job_id"] == made.json()["id"]
    assert _rejects(collector.conninfo) == 0, "no self-audit event was quarantined"


def test_a_long_query_is_parsed_in_linear_time(collector: RunningCollector) -> None:
    """A 60,000-character word in q: 400 at once (the term search was quadratic in it: a minute of the event loop)."""
    headers = {"Authorization": f"Bearer {token(collector.conninfo, 'acme')}"}
    for q in ("c" * 60_000, "actor:x " + "c" * 60_000):
        answer = requests.post(collector.api_url + "/v1/exports", json={"format": "csv", "q": q}, headers=headers, timeout=30)
        assert answer.status_code == 400 and answer.json()["message"].startswith("q: '")
        assert len(answer.text) < 1000, "the message quotes the input, not all of it"


def test_an_export_whose_event_the_catalogs_refuse_is_refused(db: str) -> None:
    """ingest.max_attributes 12 lets the session event through (12 attributes) but not an exportView
    (15): the session opens, but neither a streamed export nor an export job may happen unrecorded."""
    collector = RunningCollector(settings_for(db, {("ingest", "max_attributes"): 12, ("exports", "poll_seconds"): 0.05}))
    try:
        api = Api(collector.api_url, token(db, "acme"))
        api.ok("/v1/whoami")
        assert len(_own_events(db, "acme", "siteAccess")) == 1
        streamed = api.get("/v1/export", format="csv")
        assert streamed.status_code == 503, streamed.text[:300]
        assert "could not be recorded in the audit trail" in streamed.json()["message"]
        job = requests.post(collector.api_url + "/v1/exports", json={"format": "csv"}, headers=api.headers, timeout=30)
        assert job.status_code == 503 and "could not be recorded" in job.json()["message"]
        assert _own_events(db, "acme", "exportView") == []
        with psycopg.connect(db) as conn:
            assert conn.execute("SELECT count(*) FROM export_jobs").fetchone() == (0,)
    finally:
        collector.stop()


def test_a_session_whose_event_the_catalogs_refuse_is_not_opened(db: str) -> None:
    """A siteAccess event the catalogs refuse (ingest.max_attributes 8) refuses the read: 503, every time."""
    collector = RunningCollector(settings_for(db, {("ingest", "max_attributes"): 8}))
    try:
        api = Api(collector.api_url, token(db, "acme"))
        for _ in range(2):
            answer = api.get("/v1/events")
            assert answer.status_code == 503 and "could not be recorded in the audit trail" in answer.json()["message"]
        assert _own_events(db, "acme", "siteAccess") == []
    finally:
        collector.stop()


# -- 2. the role rule on jobs and downloads ----------------------------------------------------


def test_an_auditor_cannot_read_an_export_job_nor_obtain_its_url(db: str) -> None:
    collector = RunningCollector(settings_for(db, {("exports", "poll_seconds"): 0.05}))
    try:
        send(collector.grpc_target, [(ROLE, time.time_ns())])
        admin = Api(collector.api_url, token(db, "acme"))
        made = requests.post(collector.api_url + "/v1/exports", json={"format": "csv"}, headers=admin.headers, timeout=30)
        assert made.status_code == 202 and made.json()["download_url"] is None
        done = _job_done(admin, made.json()["id"])
        assert done["download_url"]
        auditor = Api(collector.api_url, token(db, "acme", "auditor"))
        refused = auditor.get(f"/v1/exports/{done['id']}")
        assert refused.status_code == 403 and "use an admin token" in refused.json()["message"]
        assert "download_url" not in refused.text
        assert auditor.get("/v1/exports/exp_nope").status_code == 403  # not even whether a job exists
    finally:
        collector.stop()


# -- 4. an encoded slash cannot skip authentication ------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/v1/exports/x%2Fdownload",
        "/v1/exports/x%2fdownload?expires=9999999999&signature=00",
        "/v1/exports/x%252Fdownload",
        "/v1/events/x%2F..%2F..%2Fexports%2Fy%2Fdownload",
        "/v1/exports/x/download%2F",
        "/v1/exports//download",
        "/v1/exports/x/../y/download",
        "/v1/events/../exports/y/download",
        "/v1/exports/x/./download",
        "//v1/exports/x/download",
        "/v1//exports/x/download",
        "/V1/exports/x/download",
        "/v1/exports/x/DOWNLOAD",
        "/v1/whoami%2F",
        "/healthz/..%2Fv1%2Fwhoami",
        "/ui/..%2F..%2Fv1%2Fwhoami",
        "/openapi.json/../v1/whoami",
    ],
)
def test_no_path_spelling_reaches_a_protected_route_without_a_token(collector: RunningCollector, path: str) -> None:
    """Without a token: a protected route says 401, a download URL checks its signature (403), no route is 404;
    never a 500, never anything read."""
    send(collector.grpc_target, [(ROLE, time.time_ns())])
    status, body = _raw(collector.api_url, path)
    assert status in (401, 403, 404), (status, body[:300])
    assert b'"events"' not in body and b'"tenant"' not in body and b"updateRole" not in body


def test_an_encoded_slash_in_a_job_id_is_an_id(collector: RunningCollector) -> None:
    admin = {"Authorization": f"Bearer {token(collector.conninfo, 'acme')}"}
    assert _raw(collector.api_url, "/v1/exports/x%2Fdownload")[0] == 401
    status, body = _raw(collector.api_url, "/v1/exports/x%2Fdownload", admin)
    assert status == 404 and json.loads(body)["error"] == "not_found"
    assert _raw(collector.api_url, "/healthz")[0] == 200  # the open routes stay open


# -- 5. export slots per tenant; stalled readers cut off ----------------------------------------------


def test_one_tenant_cannot_hold_every_export_slot(db: str) -> None:
    """max_streams 2, max_streams_per_tenant 1: a tenant's second stream waits (429), another tenant's goes."""
    collector = RunningCollector(settings_for(db, {("exports", "max_streams"): 2, ("exports", "max_streams_per_tenant"): 1}))
    try:
        _bulk(db, "bulk", 60_000)  # far more than the socket buffers hold: the stalled stream stays open
        send(collector.grpc_target, [(ROLE, time.time_ns())])
        bulk = Api(collector.api_url, token(db, "bulk"))
        acme = Api(collector.api_url, token(db, "acme"))
        held = _stalled(collector.api_url, "/v1/export?format=csv", bulk.headers)
        try:
            with requests.get(
                collector.api_url + "/v1/export", params={"format": "csv"}, headers=bulk.headers, stream=True, timeout=60
            ) as second:
                assert second.status_code == 429, "a tenant's second export takes no second slot"
                assert second.json()["error"] == "too_many_exports" and "this tenant" in second.json()["message"]
            other = acme.get("/v1/export", format="ndjson")
            assert other.status_code == 200 and "updateRole" in other.text, "another tenant still exports"
        finally:
            held.close()
        wait_until(lambda: bulk.get("/v1/export", format="ndjson", event="none").status_code == 200, 30, "the slot to free")
    finally:
        collector.stop()


def test_an_export_whose_client_stops_reading_is_cut_off_and_recorded(db: str) -> None:
    """stall_timeout_seconds 1: a stream the client stops reading ends, recorded as failed, and frees its slot."""
    collector = RunningCollector(settings_for(db, {("exports", "max_streams"): 1, ("exports", "stall_timeout_seconds"): 1}))
    try:
        _bulk(db, "bulk", 60_000)
        bulk = Api(collector.api_url, token(db, "bulk"))
        held = _stalled(collector.api_url, "/v1/export?format=csv", bulk.headers)
        try:
            wait_until(lambda: _own_events(db, "bulk", "exportView"), 60, "the stalled export to be cut off")
            (cut,) = _own_events(db, "bulk", "exportView")
            assert cut["outcome"] == "failure" and "read nothing for 1 seconds" in cut["reason"]
            assert 0 <= cut["details"]["row_count"] < 60_000
            assert bulk.get("/v1/export", format="ndjson", event="none").status_code == 200, "the slot is free again"
        finally:
            held.close()
    finally:
        collector.stop()


def test_a_download_whose_client_stops_reading_is_cut_off(db: str) -> None:
    settings = {("exports", "max_streams"): 1, ("exports", "stall_timeout_seconds"): 1, ("exports", "poll_seconds"): 0.05}
    collector = RunningCollector(settings_for(db, settings))
    try:
        _bulk(db, "bulk", 60_000)
        bulk = Api(collector.api_url, token(db, "bulk"))
        made = requests.post(collector.api_url + "/v1/exports", json={"format": "csv"}, headers=bulk.headers, timeout=30)
        assert made.status_code == 202, made.text
        url = _job_done(bulk, made.json()["id"])["download_url"].removeprefix(collector.api_url)  # its path
        held = _stalled(collector.api_url, url)
        try:

            def slot_free() -> bool:
                with requests.get(collector.api_url + url, stream=True, timeout=60) as again:
                    return again.status_code == 200

            wait_until(slot_free, 60, "the stalled download to be cut off")
        finally:
            held.close()
    finally:
        collector.stop()


# -- 6. CSV cells inert after what a spreadsheet strips ---------------------------------------------------


def _sql_cells(conn: psycopg.Connection[Any], values: list[str]) -> list[str]:
    found = conn.execute("SELECT otaudit_csv_cell(v) FROM unnest(%s::text[]) WITH ORDINALITY AS t(v, n) ORDER BY n", (values,))
    return [row[0] for row in found.fetchall()]


def test_the_sql_cell_rule_is_the_python_rule_for_every_leading_character(db: str) -> None:
    """Every code point PostgreSQL can store, before a formula and before plain text: PostgreSQL names the
    ones it neutralizes (a few hundred), Python says which it would."""
    points = [i for i in range(1, 0x110000) if not 0xD800 <= i <= 0xDFFF]
    sets = []
    with psycopg.connect(db) as conn:
        for suffix in ("=1", "a"):
            found = conn.execute(
                "SELECT i, otaudit_csv_cell(chr(i) || %(s)s) = chr(39) || chr(i) || %(s)s FROM generate_series(1, 1114111) AS i"
                " WHERE i NOT BETWEEN 55296 AND 57343 AND otaudit_csv_cell(chr(i) || %(s)s) <> chr(i) || %(s)s",
                {"s": suffix},
            ).fetchall()
            assert all(whole for _, whole in found), "a neutralized cell is the apostrophe and the whole value"
            sets.append({i for i, _ in found})
    formula, plain = sets
    assert formula == {i for i in points if spreadsheet_cell(chr(i) + "=1") != chr(i) + "=1"}
    assert plain == {i for i in points if spreadsheet_cell(chr(i) + "a") != chr(i) + "a"}
    assert formula == {ord(c) for c in SPREADSHEET_STRIPPED | FORMULA_STARTS if c != "\x00"}
    assert plain == {ord(c) for c in FORMULA_STARTS | {"\t", "\r"}}


_ANY = st.characters(exclude_categories=("Cs",), exclude_characters="\x00")  # what PostgreSQL text can hold
_STRIPPED = st.text(alphabet=st.sampled_from(sorted(SPREADSHEET_STRIPPED - {"\x00"})), max_size=4)
_HEAD = st.one_of(st.sampled_from([*sorted(FORMULA_STARTS), "a", "'", "1", "\t", "\r", "\ufffd"]), _ANY)
_TEXT = st.one_of(
    st.builds(lambda stripped, head, rest: stripped + head + rest, _STRIPPED, _HEAD, st.text(alphabet=_ANY, max_size=8)),
    st.text(alphabet=_ANY, max_size=12),
)
"""Text a spreadsheet might run: what it strips, then a formula character (or not), then anything."""


def test_the_sql_cell_rule_is_the_python_rule_on_generated_text(db: str) -> None:
    with psycopg.connect(db) as conn:

        @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(st.lists(_TEXT, min_size=1, max_size=40))
        def agree(values: list[str]) -> None:
            assert _sql_cells(conn, values) == [spreadsheet_cell(v) for v in values]

        agree()


NAMED = {
    " =HYPERLINK(1)": "' =HYPERLINK(1)",
    "\u00a0=1+1": "'\u00a0=1+1",
    "\u200b@SUM(A1)": "'\u200b@SUM(A1)",
    "\ufeff+1": "'\ufeff+1",
    "\n-1": "'\n-1",
    " \u3000\u2060\u202f=cmd": "' \u3000\u2060\u202f=cmd",
    "\uff1dcmd": "'\uff1dcmd",
    "\uff0b1": "'\uff0b1",
    "\uff0d1": "'\uff0d1",
    "\uff20x": "'\uff20x",
    "\x01=1": "'\x01=1",
    "\tplain": "'\tplain",
    "\rplain": "'\rplain",
    "=1": "'=1",
    " plain = text": " plain = text",
    "a=1": "a=1",
    "\u00a0": "\u00a0",
    "": "",
}


def test_named_cells_through_a_real_export(collector: RunningCollector) -> None:
    assert {v: spreadsheet_cell(v) for v in NAMED} == NAMED
    now = time.time_ns()
    names = [name for name in NAMED if name]
    send(
        collector.grpc_target, [({**ROLE, "target": {**ROLE["target"], "name": n}}, now - i * 10**6) for i, n in enumerate(names)]
    )
    api = Api(collector.api_url, token(collector.conninfo, "acme"))
    answer = api.get("/v1/export", format="csv", event="updateRole")
    assert answer.status_code == 200
    reader = csv.DictReader(io.StringIO(answer.text, newline=""))
    assert sorted(row["target_name"] for row in reader) == sorted(NAMED[n] for n in names)
