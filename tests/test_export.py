"""Exports against a real collector and PostgreSQL: the streamed export in each format, the
CSV's columns and its formula neutralizing, the plan and the roles, export jobs with signed
URLs (across a restart and a crashed runner), and the self-audit of every export."""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
import requests
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
from support import REPO, RunningCollector, otaudit, record, request, settings_for, wait_until
from test_api_reads import ACCESS, EXPORT, GROUP, ROLE, Api, attributes_of, send, services, set_plan, token

from otaudit_collector.core.export import CSV_COLUMNS, sign_download, signing_key, spreadsheet_cell
from otaudit_collector.export_command import Progress

HEADER = [name for name, _ in CSV_COLUMNS]
TRICKY = {
    '=HYPERLINK("http://evil.test","x")': '\'=HYPERLINK("http://evil.test","x")',
    "+41 22 555": "'+41 22 555",
    "-1+2": "'-1+2",
    "@SUM(A1:A9)": "'@SUM(A1:A9)",
    "\tcmd": "'\tcmd",
    "\rcmd": "'\rcmd",
    'Zoë\'s role, "quoted"\nsecond line': 'Zoë\'s role, "quoted"\nsecond line',
}


@pytest.fixture
def trail(collector: RunningCollector) -> Iterator[dict[str, Any]]:
    now = time.time_ns()
    docs = [({**ROLE, "target": {**ROLE["target"], "name": name}}, now - (i + 1) * 10**9) for i, name in enumerate(TRICKY)]
    ids = send(collector.grpc_target, [*docs, (ACCESS, now - 30 * 10**9), (GROUP, now - 40 * 10**9)])
    yield {
        "collector": collector,
        "ids": ids,
        "admin": Api(collector.api_url, token(collector.conninfo, "acme")),
    }


def export(api: Api, **params: Any) -> requests.Response:
    answer = api.get("/v1/export", **params)
    assert answer.status_code == 200, answer.text
    return answer


def readable(value: Any) -> str:
    """How the CSV writes an old or new value: text as is, "(none)" for null, the rest as JSON."""
    return value if isinstance(value, str) else "(none)" if value is None else json.dumps(value)


RELATED = [
    {"type": "license", "id": "lic-1", "name": "Pro (2 seats)"},
    {"type": "device", "id": "d-7"},
    {"type": "order", "id": "o-1", "name": ""},
]
RELATED_CELL = "license:lic-1 (Pro (2 seats))\ndevice:d-7\norder:o-1"
"""How the CSV and xlsx exports write ``RELATED``: one line per object, ``type:id (name)``, no parentheses without a name."""
FORMULA_RELATED = [{"type": "@evil", "id": "x", "name": "=1+2"}]


def send_related(collector: RunningCollector, related: list[list[dict[str, str]]]) -> list[str]:
    """updateRole events, one per list of related objects (audit.related), a second apart, oldest first."""
    now = time.time_ns()
    records = [
        record("updateRole", {**attributes_of(ROLE), "audit.related": objects}, time_ns=now - (len(related) - i) * 10**9)
        for i, objects in enumerate(related)
    ]
    with grpc.insecure_channel(collector.grpc_target) as channel:
        answer = ExportLogsServiceResponse.FromString(
            channel.unary_unary(EXPORT)(request(records).SerializeToString(), timeout=30)
        )
    assert answer.partial_success.rejected_log_records == 0, answer.partial_success.error_message
    return [next(kv.value.string_value for kv in r.attributes if kv.key == "log.record.uid") for r in records]


def rows_of(text: str) -> list[dict[str, str]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    assert next(reader) == HEADER
    return [dict(zip(HEADER, row, strict=True)) for row in reader]


def test_csv_flattens_the_event_and_neutralizes_formulas(trail: dict[str, Any]) -> None:
    api: Api = trail["admin"]
    answer = export(api, format="csv", event="updateRole")
    assert answer.headers["Content-Type"] == "text/csv; charset=utf-8"
    assert answer.headers["Content-Disposition"].startswith('attachment; filename="otaudit-acme-')
    assert not answer.content.startswith(b"\xef\xbb\xbf")
    rows = rows_of(answer.content.decode("utf-8"))
    assert [r["id"] for r in rows] == list(reversed(trail["ids"][: len(TRICKY)]))  # oldest first
    assert [r["target_name"] for r in rows] == list(reversed(TRICKY.values()))
    first = rows[0]
    assert first["changes"] == "\n".join(f"{c['field']}: {readable(c['old'])} -> {readable(c['new'])}" for c in ROLE["changes"])
    assert first["actor_email"] == "ann@acme.test" and first["actor_roles"] == ", ".join(ROLE["actor"]["roles"])
    assert first["category"] == "accounts_configuration" and first["outcome"] == "success"
    assert first["event"] == "updateRole" and first["title"] == "Role updated"  # the catalog's title, from SQL
    assert first["occurred_at"].endswith("Z") and first["received_at"].endswith("Z") and int(first["seq"]) >= 1
    assert json.loads(first["details"] or "null") == (ROLE.get("details") or None)
    with_bom = export(api, format="csv", event="updateRole", bom="true").content
    assert with_bom.startswith(b"\xef\xbb\xbf" + b"occurred_at,") and with_bom[3:] == answer.content


def test_the_readme_lists_the_csv_header() -> None:
    readme = " ".join((REPO / "README.md").read_text(encoding="utf-8").split())
    assert f"The CSV has a fixed header (`{', '.join(HEADER)}`)" in readme
    assert HEADER[HEADER.index("event") + 1] == "title"
    assert HEADER[HEADER.index("target_name") + 1] == "related"  # after the target's columns


def test_related_objects_are_a_cell_of_one_line_each_in_streams_jobs_and_the_command(
    trail: dict[str, Any], tmp_path: Path
) -> None:
    collector: RunningCollector = trail["collector"]
    api: Api = trail["admin"]
    related, formula = send_related(collector, [RELATED, FORMULA_RELATED])
    expected = {related: RELATED_CELL, formula: "'@evil:x (=1+2)"} | dict.fromkeys(trail["ids"][: len(TRICKY)], "")
    assert expected[formula] == spreadsheet_cell("@evil:x (=1+2)")  # the formula rule, as every text cell

    streamed = {r["id"]: r["related"] for r in rows_of(export(api, format="csv", event="updateRole").text)}
    assert streamed == expected

    made = requests.post(api.base + "/v1/exports", json={"format": "csv", "event": "updateRole"}, headers=api.headers, timeout=30)
    assert made.status_code == 202, made.text
    job_id = made.json()["id"]
    wait_until(lambda: api.ok(f"/v1/exports/{job_id}")["state"] in ("done", "failed"), 60, "the export job")
    job = api.ok(f"/v1/exports/{job_id}")
    assert job["state"] == "done", job
    downloaded = requests.get(job["download_url"], timeout=30)
    assert {r["id"]: r["related"] for r in rows_of(downloaded.text)} == expected

    out = tmp_path / "operator.csv"
    done = otaudit("export", "--tenant", "acme", "--event", "updateRole", "--database-url", collector.conninfo, "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert {r["id"]: r["related"] for r in rows_of(out.read_text(encoding="utf-8"))} == expected


def test_changes_read_as_field_old_new_lines(trail: dict[str, Any]) -> None:
    collector: RunningCollector = trail["collector"]
    changed = {
        **ROLE,
        "changes": [
            {"field": "name", "old": "Auditors", "new": "=Readers"},
            {"field": "permissions", "old": ["read"], "new": ["read", "export"]},
            {"field": "expires", "old": None, "new": 30},
            {"field": "secret"},
        ],
    }
    (event_id,) = send(collector.grpc_target, [(changed, None)])
    (row,) = [r for r in rows_of(export(trail["admin"], format="csv").text) if r["id"] == event_id]
    assert (
        row["changes"]
        == 'name: Auditors -> =Readers\npermissions: ["read"] -> ["read", "export"]\nexpires: (none) -> 30\nsecret: (withheld) -> (withheld)'
    )


def test_ndjson_and_json_hold_the_documents_of_the_api(trail: dict[str, Any]) -> None:
    api: Api = trail["admin"]
    read = ["accounts_configuration", "site_access"]  # not data_extraction: each export adds an event there
    listed = list(reversed(api.ok("/v1/events", limit=1000, category=read)["events"]))
    lines = export(api, format="ndjson", category=read).text.splitlines()
    documents = [json.loads(line) for line in lines]
    assert documents == listed and len(documents) == len(TRICKY) + 2  # the session of this token too
    whole = export(api, format="json", category=read)
    assert whole.headers["Content-Type"] == "application/json"
    assert whole.json() == documents
    assert export(api, format="json", event="nothing-like-this").json() == []
    assert export(api, format="ndjson", event="nothing-like-this").content == b""
    assert any('"\\tcmd"' in line for line in lines) and any('"\\rcmd"' in line for line in lines)  # escapes kept


def test_the_plan_roles_and_tenants_bound_every_export(trail: dict[str, Any]) -> None:
    collector: RunningCollector = trail["collector"]
    api: Api = trail["admin"]
    categories = {r["category"] for r in rows_of(export(api, format="csv").text)}
    assert categories == {"accounts_configuration", "site_access"}  # not the inventory event: basic plan
    refused = api.get("/v1/export", format="csv", category="inventory_configuration")
    assert refused.status_code == 403 and refused.json()["error"] == "plan_forbids" and "'pro' plan" in refused.json()["message"]
    refused_q = api.get("/v1/export", format="ndjson", q="category:inventory_configuration")
    assert refused_q.status_code == 403
    clamped = export(api, format="csv", since=int(time.time()) - 400 * 86_400)
    assert "query window of 365 days" in clamped.headers["X-Otaudit-Since-Clamped"]
    set_plan(collector.conninfo, "acme", "pro")
    assert "inventory_configuration" in {r["category"] for r in rows_of(export(api, format="csv").text)}

    auditor = Api(collector.api_url, token(collector.conninfo, "acme", "auditor")).get("/v1/export", format="csv")
    assert auditor.status_code == 403 and "use an admin token" in auditor.json()["message"]
    ingest = Api(collector.api_url, token(collector.conninfo, "acme", "ingest")).get("/v1/export", format="csv")
    assert ingest.status_code == 403
    assert Api(collector.api_url, None).get("/v1/export", format="csv").status_code == 401
    globex = Api(collector.api_url, token(collector.conninfo, "globex"))
    documents = [json.loads(line) for line in export(globex, format="ndjson").text.splitlines()]
    assert services(documents) == [] and {d["tenant"] for d in documents} <= {"globex"}


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({}, "format: give one of csv, ndjson, json"),
        ({"format": "xls"}, "format: 'xls' is not one of csv, ndjson, json, xlsx"),
        ({"format": "csv", "bom": "perhaps"}, "bom: 'perhaps' is not true or false"),
        ({"format": "csv", "since": "yesterday"}, "since: 'yesterday' is not an RFC 3339 time"),
        ({"format": "csv", "q": "bogus:1"}, "q: unknown key 'bogus'"),
        ({"format": "csv", "outcome": "maybe"}, "outcome: 'maybe' is not one of"),
    ],
)
def test_bad_export_requests_are_400_naming_the_parameter(trail: dict[str, Any], params: dict[str, Any], words: str) -> None:
    answer = trail["admin"].get("/v1/export", **params)
    assert answer.status_code == 400 and answer.json()["error"] == "bad_filter"
    assert answer.json()["message"].startswith(words)


def _bulk(conninfo: str, tenant: str, rows: int) -> None:
    """``rows`` events straight into storage (the export is under test here, not ingest):
    seq 1 is the newest; every fifth target name is a spreadsheet formula."""
    names = list(TRICKY)
    with psycopg.connect(conninfo) as conn:
        conn.execute(
            """
            INSERT INTO events (tenant, seq, id, occurred_at, received_at, category, event, outcome,
                                actor_type, actor_id, actor_email, target_type, target_id, doc)
            SELECT %(tenant)s, g, 'ev-' || g, t, t, 'accounts_configuration', 'updateRole', 'success',
                   'user', 'u-' || (g %% 1000), 'u' || (g %% 1000) || '@bulk.test', 'role', 'r-' || g,
                   jsonb_build_object(
                       'id', 'ev-' || g, 'tenant', %(tenant)s::text, 'category', 'accounts_configuration',
                       'event', 'updateRole', 'outcome', 'success',
                       'occurred_at', to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
                       'actor', jsonb_build_object('type', 'user', 'id', 'u-' || (g %% 1000),
                                                   'email', 'u' || (g %% 1000) || '@bulk.test'),
                       'target', jsonb_build_object('type', 'role', 'id', 'r-' || g,
                                                    'name', (%(names)s::text[])[1 + g %% cardinality(%(names)s::text[])]),
                       'changes', jsonb_build_array(jsonb_build_object('field', 'level', 'old', g - 1, 'new', g)),
                       'source', jsonb_build_object('service', 'bulk-loader', 'sequence', g))
            FROM generate_series(1, %(rows)s) AS g,
                 LATERAL (SELECT date_trunc('second', now()) - g * interval '1 second' AS t) AS x
            """,
            {"tenant": tenant, "rows": rows, "names": names},
        )
        conn.execute("INSERT INTO tenant_seq VALUES (%s, %s)", (tenant, rows))


def test_a_150000_row_export_streams_every_row_in_order(collector: RunningCollector) -> None:
    rows = 150_000
    _bulk(collector.conninfo, "bulk", rows)
    api = Api(collector.api_url, token(collector.conninfo, "bulk"))
    names = list(TRICKY)
    with requests.get(
        collector.api_url + "/v1/export", params={"format": "csv"}, headers=api.headers, stream=True, timeout=120
    ) as answer:
        assert answer.status_code == 200
        answer.raw.decode_content = True
        reader = csv.reader(io.TextIOWrapper(answer.raw, encoding="utf-8", newline=""))  # read as it streams
        assert next(reader) == HEADER
        seen = 0
        for row in reader:
            if row[HEADER.index("source_service")] != "bulk-loader":
                continue  # the export's own audit trail (the session of this token)
            g = rows - seen  # oldest first: seq 150000 down to 1
            cell = dict(zip(HEADER, row, strict=True))
            assert cell["seq"] == str(g) and cell["id"] == f"ev-{g}" and cell["actor_email"] == f"u{g % 1000}@bulk.test"
            assert cell["target_name"] == TRICKY[names[g % len(names)]]
            assert cell["changes"] == f"level: {g - 1} -> {g}"
            seen += 1
        assert seen == rows


def test_export_jobs_sign_urls_that_survive_a_restart(db: str) -> None:
    settings = settings_for(db, {("exports", "poll_seconds"): 0.05})
    first = RunningCollector(settings)
    try:
        now = time.time_ns()
        ids = send(first.grpc_target, [(ROLE, now - i * 10**9) for i in range(25)])
        api = Api(first.api_url, token(db, "acme"))
        made = requests.post(
            first.api_url + "/v1/exports", json={"format": "ndjson", "event": "updateRole"}, headers=api.headers, timeout=30
        )
        assert made.status_code == 202, made.text
        job = made.json()
        assert made.headers["Location"] == f"/v1/exports/{job['id']}" and job["state"] in ("queued", "running", "done")
        wait_until(lambda: api.ok(f"/v1/exports/{job['id']}")["state"] == "done", 30, "the export job")
        done = api.ok(f"/v1/exports/{job['id']}")
        assert done["rows"] == 25 and done["total"] == 25 and done["progress"] == 1.0 and done["error"] is None
        assert done["download_url"].startswith(f"{first.api_url}/v1/exports/{job['id']}/download?expires=")  # a full URL
        url = done["download_url"].removeprefix(first.api_url)
        body = requests.get(done["download_url"], timeout=30)  # no token: the URL is signed
        assert body.status_code == 200 and body.headers["Content-Type"] == "application/x-ndjson"
        assert [json.loads(line)["id"] for line in body.text.splitlines()] == list(reversed(ids))
    finally:
        first.stop()

    second = RunningCollector(settings)  # a restart, or another replica: same database, same pepper
    try:
        again = requests.get(second.api_url + url, timeout=30)
        assert again.status_code == 200 and again.content == body.content
        tampered = requests.get(second.api_url + url.replace("signature=", "signature=0"), timeout=30)
        assert tampered.status_code == 403 and tampered.json()["error"] == "bad_signature"
        with psycopg.connect(db) as conn:
            stored = conn.execute("SELECT secret FROM server_keys WHERE name = 'export_downloads'").fetchone()[0]
        key = signing_key(bytes(stored), "")
        expired = requests.get(second.api_url + sign_download(key, job["id"], int(time.time()) - 1), timeout=30)
        assert expired.status_code == 410 and expired.json()["error"] == "expired"
        api = Api(second.api_url, api.headers["Authorization"].split()[1])
        other = Api(second.api_url, token(db, "globex"))
        assert other.get(f"/v1/exports/{job['id']}").status_code == 404
        assert api.get("/v1/exports/exp_nope").status_code == 404
    finally:
        second.stop()


def test_a_job_whose_collector_died_is_taken_over_and_finished(db: str) -> None:
    settings = settings_for(db, {("exports", "poll_seconds"): 0.05, ("exports", "lease_seconds"): 1})
    collector = RunningCollector(settings)
    try:
        send(collector.grpc_target, [(ROLE, time.time_ns() - i * 10**9) for i in range(10)])
        admin = token(db, "acme")
        with psycopg.connect(db) as conn:  # what a collector killed in the middle of a job leaves behind
            token_id = admin.split("_")[1]
            conn.execute(
                "INSERT INTO export_jobs (id, tenant, token_id, format, filters, state, owner, lease_until, attempts, rows)"
                " VALUES ('exp_crashed', 'acme', %s, 'csv', '{\"event\": [\"updateRole\"]}', 'running', 'dead-pod',"
                " now() - interval '1 second', 1, 7)",
                (token_id,),
            )
            conn.execute("INSERT INTO export_chunks (tenant, job_id, n, data) VALUES ('acme', 'exp_crashed', 0, 'half a file')")
        api = Api(collector.api_url, admin)
        wait_until(lambda: api.ok("/v1/exports/exp_crashed")["state"] == "done", 30, "the job to be taken over")
        job = api.ok("/v1/exports/exp_crashed")
        assert job["rows"] == 10
        body = requests.get(job["download_url"], timeout=30).text
        assert "half a file" not in body and len(rows_of(body)) == 10
        with psycopg.connect(db) as conn:
            assert conn.execute("SELECT attempts FROM export_jobs WHERE id = 'exp_crashed'").fetchone() == (2,)
    finally:
        collector.stop()


def test_a_failed_job_says_why(db: str) -> None:
    settings = settings_for(db, {("exports", "poll_seconds"): 0.05, ("exports", "lease_seconds"): 1})
    collector = RunningCollector(settings)
    try:
        admin = token(db, "acme")
        token_id = admin.split("_")[1]
        with psycopg.connect(db) as conn:
            # Filters that no longer parse (stored by an older version, say), and a job whose
            # collector stopped in the middle of it three times already.
            conn.execute(
                "INSERT INTO export_jobs (id, tenant, token_id, format, filters) VALUES ('exp_badfilter', 'acme', %s, 'csv',"
                ' \'{"since": ["last tuesday"]}\')',
                (token_id,),
            )
            conn.execute(
                "INSERT INTO export_jobs (id, tenant, token_id, format, filters, state, owner, lease_until, attempts)"
                " VALUES ('exp_unlucky', 'acme', %s, 'csv', '{}', 'running', 'dead-pod', now() - interval '1 second', 3)",
                (token_id,),
            )
        api = Api(collector.api_url, admin)
        for job_id, why in (
            ("exp_badfilter", "since: 'last tuesday' is not an RFC 3339 time or Unix seconds"),
            ("exp_unlucky", "gave up after 3 attempts: the collector running it stopped each time"),
        ):
            wait_until(lambda job_id=job_id: api.ok(f"/v1/exports/{job_id}")["state"] == "failed", 30, f"{job_id} to fail")
            job = api.ok(f"/v1/exports/{job_id}")
            assert why in job["error"] and job["download_url"] is None
        failures = [e for e in api.ok("/v1/events", event="exportView")["events"] if e["outcome"] == "failure"]
        assert {e["details"]["job_id"] for e in failures} == {"exp_badfilter", "exp_unlucky"}, "each failure is audited"
    finally:
        collector.stop()


def test_the_job_poller_keeps_one_connection_from_poll_to_poll(db: str) -> None:
    """Looking for queued jobs (every poll_seconds, 0.05 s here) reuses one connection instead of
    starting a PostgreSQL backend each time (storage/kept.py)."""
    collector = RunningCollector(settings_for(db, {("exports", "poll_seconds"): 0.05}))
    try:

        def claim_pids() -> list[int]:
            with psycopg.connect(db, autocommit=True) as conn:
                found = conn.execute("SELECT pid FROM pg_stat_activity WHERE application_name = 'otaudit-export-claim'")
                return [row[0] for row in found.fetchall()]

        wait_until(lambda: len(claim_pids()) == 1, 30, "the job poller's connection")
        first = claim_pids()
        time.sleep(1.0)  # some twenty polls
        assert claim_pids() == first
    finally:
        collector.stop()


def test_an_export_the_trail_cannot_record_is_not_handed_out(db: str) -> None:
    """Every export is in the trail: when its exportView event cannot be stored (ingest
    saturated here), a streamed export is cut short and a job fails, saying why."""
    collector = RunningCollector(settings_for(db, {("exports", "poll_seconds"): 0.05}))
    try:
        send(collector.grpc_target, [(ROLE, time.time_ns() - i * 10**9) for i in range(5)])
        api = Api(collector.api_url, token(db, "acme"))
        api.ok("/v1/whoami")  # the API session is open and recorded
        ingestor = collector.collector.ingestor
        ingestor.in_flight = 10**6  # as if the collector were saturated with ingest requests
        try:
            with pytest.raises(requests.exceptions.ChunkedEncodingError):
                requests.get(collector.api_url + "/v1/export", params={"format": "csv"}, headers=api.headers, timeout=30)
            job = requests.post(collector.api_url + "/v1/exports", json={"format": "csv"}, headers=api.headers, timeout=30)
            assert job.status_code == 202
            job_id = job.json()["id"]
            wait_until(lambda: api.ok(f"/v1/exports/{job_id}")["state"] == "failed", 30, "the job to fail")
            ended = api.ok(f"/v1/exports/{job_id}")
        finally:
            ingestor.in_flight = 0
        assert ended["state"] == "failed" and ended["download_url"] is None
        assert "could not be recorded in the audit trail" in ended["error"]
        assert not [e for e in api.ok("/v1/events", event="exportView")["events"] if e["outcome"] == "success"]
    finally:
        collector.stop()


def test_bad_export_job_requests(trail: dict[str, Any]) -> None:
    collector: RunningCollector = trail["collector"]
    api: Api = trail["admin"]

    def post(body: Any, raw: bytes | None = None) -> requests.Response:
        if raw is not None:
            return requests.post(collector.api_url + "/v1/exports", data=raw, headers=api.headers, timeout=30)
        return requests.post(collector.api_url + "/v1/exports", json=body, headers=api.headers, timeout=30)

    for body, words in [
        ([], "body: send a JSON object"),
        ({}, "format: give one of"),
        ({"format": "csv", "colour": "red"}, "colour: unknown field"),
        ({"format": "csv", "event": 5}, "event: must be a string or a list of strings"),
        ({"format": "csv", "bom": "yes"}, "bom: must be true or false"),
        (
            {"format": "csv", "category": "inventory_configuration"},
            "category 'inventory_configuration' is not in the 'basic' plan",
        ),
    ]:
        answer = post(body)
        assert answer.status_code in (400, 403), answer.text
        assert answer.json()["message"].startswith(words) or words in answer.json()["message"]
    assert post(None, raw=b"{not json").status_code == 400
    auditor = Api(collector.api_url, token(collector.conninfo, "acme", "auditor"))
    refused = requests.post(collector.api_url + "/v1/exports", json={"format": "csv"}, headers=auditor.headers, timeout=30)
    assert refused.status_code == 403


def test_every_export_and_session_is_in_the_trail(trail: dict[str, Any]) -> None:
    api: Api = trail["admin"]
    export(api, format="csv", event="updateRole", q="outcome:success")
    events = api.ok("/v1/events", category="data_extraction")["events"]
    (extraction,) = events
    assert extraction["event"] == "exportView" and extraction["tenant"] == "acme"
    assert extraction["actor"]["type"] == "api_key" and extraction["actor"]["name"] == "acme admin"
    assert extraction["details"]["row_count"] == len(TRICKY)
    assert extraction["details"]["format"] == "csv" and extraction["details"]["filters"] == {"event": "updateRole"}
    assert extraction["details"]["query"] == "outcome:success"
    assert extraction["source"]["service"] == "otaudit-collector"
    sessions = api.ok("/v1/events", event="siteAccess", actor=extraction["actor"]["id"])["events"]
    assert len(sessions) == 1 and sessions[0]["details"] == {"method": "token"}  # one session for many requests


def test_the_export_command_through_the_api_and_from_the_database(trail: dict[str, Any], tmp_path: Path) -> None:
    collector: RunningCollector = trail["collector"]
    api: Api = trail["admin"]
    admin = api.headers["Authorization"].split()[1]
    through_api = tmp_path / "api.ndjson"
    done = otaudit(
        "export", "--url", collector.api_url, "--format", "ndjson", "--event", "updateRole", "-o", str(through_api),
        env={"OTAUDIT_TOKEN": admin},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip().startswith(f"wrote {len(TRICKY)} events") and str(through_api) in done.stderr
    assert admin not in done.stderr + done.stdout
    api_ids = [json.loads(line)["id"] for line in through_api.read_text().splitlines()]
    assert api_ids == list(reversed(trail["ids"][: len(TRICKY)]))

    refused = otaudit("export", "--url", collector.api_url, "--category", "inventory_configuration", env={"OTAUDIT_TOKEN": admin})
    assert refused.returncode == 1 and "403 category 'inventory_configuration' is not in the 'basic' plan" in refused.stderr
    unset = otaudit("export", "--url", collector.api_url, env={"OTAUDIT_TOKEN": ""})
    assert unset.returncode == 2 and "set OTAUDIT_TOKEN" in unset.stderr
    bad = otaudit("export", "--tenant", "acme", "--since", "soon", "--database-url", collector.conninfo)
    assert bad.returncode == 2 and "since: 'soon' is not an RFC 3339 time" in bad.stderr

    from_db = tmp_path / "db.csv"
    done = otaudit("export", "--tenant", "acme", "--database-url", collector.conninfo, "-o", str(from_db), "--bom")
    assert done.returncode == 0, done.stderr
    rows = rows_of(from_db.read_bytes().decode("utf-8-sig"))
    assert {r["category"] for r in rows} >= {"inventory_configuration", "accounts_configuration"}  # operators: no plan
    assert not list(tmp_path.glob("*.part"))
    operator = api.ok("/v1/events", category="data_extraction", q="actor_type:user")["events"]
    assert len(operator) == 1 and operator[0]["details"]["row_count"] == len(rows)
    assert operator[0]["actor"]["name"].endswith("(otaudit export)")


def test_the_progress_bar_draws_on_a_terminal_only() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    bar = Progress(screen, "events")
    bar.update(50, 200, force=True)
    assert "[#######" in screen.getvalue() and "25.0%" in screen.getvalue() and "50/200 events" in screen.getvalue()
    bar.finish("wrote 200 events")
    assert screen.getvalue().endswith("\rwrote 200 events\n")
    pipe = io.StringIO()
    quiet = Progress(pipe, "events")
    quiet.update(50, 200, force=True)
    quiet.finish("wrote 200 events")
    assert pipe.getvalue() == "wrote 200 events\n"


def test_streams_beyond_the_limit_get_429_and_the_limit_frees(db: str) -> None:
    collector = RunningCollector(settings_for(db, {("exports", "max_streams"): 1}))
    try:
        _bulk(db, "bulk", 60_000)  # far more than the socket buffers hold: the first stream stays open
        api = Api(collector.api_url, token(db, "bulk"))
        url = collector.api_url + "/v1/export"
        with requests.get(url, params={"format": "csv"}, headers=api.headers, stream=True, timeout=60) as first:
            assert first.status_code == 200
            busy = api.get("/v1/export", format="csv")
            assert busy.status_code == 429 and busy.json()["error"] == "too_many_exports" and busy.headers["Retry-After"]
            first.raw.read(1024)
        wait_until(lambda: api.get("/v1/export", format="ndjson", event="none").status_code == 200, 30, "the stream to end")
        cut = api.ok("/v1/events", category="data_extraction", outcome="failure")["events"]
        assert len(cut) == 1 and "the client went away during the export" in cut[0]["reason"]
        assert 0 < cut[0]["details"]["row_count"] < 60_000
    finally:
        collector.stop()
