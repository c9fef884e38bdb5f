"""``otaudit import`` against a real PostgreSQL: an NDJSON export round trip into another tenant, the CSV
export's own columns and a mapped foreign CSV, idempotence, rejects with their line numbers, events
three years old kept with their times (and the retention warning), the tenant rule, the progress bar
on a pseudo-terminal, and the command's errors. The pure parts (times, mapping, the bounded sort) too."""

from __future__ import annotations

import csv
import io
import json
import os
import pty
import random
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from support import REPO, RunningCollector, otaudit, record, request, rows
from test_api_reads import ACCESS, EXPORT, GROUP, ROLE, Api, attributes_of, send, token

from otaudit_collector.core.importing import (
    ImportProblem,
    LineError,
    check_mapping,
    document_from_row,
    export_mapping,
    finish_document,
    parse_changes,
    parse_mapping,
    parse_occurred_at,
    parse_related,
    sort_line,
    split_sort_line,
)
from otaudit_collector.core.normalize import iso_from_ns
from otaudit_collector.import_command import SortedRows

DAY_NS = 86_400 * 10**9
THREE_YEARS_NS = 3 * 365 * DAY_NS
EXPORT_ONLY = ("seq", "received_at")


def stored(conninfo: str, tenant: str) -> list[dict[str, Any]]:
    """The tenant's events but otaudit's own (each import run records itself: ``records``)."""
    return rows(
        conninfo,
        "SELECT seq, id, occurred_at, flags, doc FROM events WHERE tenant = %s"
        " AND doc #>> '{source,service}' IS DISTINCT FROM 'otaudit-collector' ORDER BY seq",
        (tenant,),
    )


def records(conninfo: str, tenant: str) -> list[dict[str, Any]]:
    """The import runs recorded in the tenant's trail, in commit order: (seq, the event's document)."""
    found = rows(
        conninfo,
        "SELECT seq, doc FROM events WHERE tenant = %s AND category = 'data_extraction' AND event = 'importAuditTrail'"
        " ORDER BY seq",
        (tenant,),
    )
    return [{**r["doc"], "seq": r["seq"]} for r in found]


def document(base: dict[str, Any], at_ns: int, **over: Any) -> dict[str, Any]:
    return {**base, "id": str(uuid.uuid4()), "occurred_at": iso_from_ns(at_ns), **over}


def write_lines(path: Path, lines: list[Any]) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def run_import(conninfo: str, *args: str) -> subprocess.CompletedProcess[str]:
    return otaudit("import", *args, "--database-url", conninfo)


def rejects_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# -- against the database --------------------------------------------------------------------


def test_an_ndjson_export_imports_into_another_tenant_with_its_documents_and_times(
    collector: RunningCollector, tmp_path: Path
) -> None:
    conninfo = collector.conninfo
    now = time.time_ns()
    send(collector.grpc_target, [(ROLE, now - 3 * 10**9), (GROUP, now - 10**9), (ACCESS, now - 2 * 10**9)])
    send(collector.grpc_target, [({**ACCESS, "tenant": "beta"}, now)])  # beta already has seq 1
    exported = tmp_path / "acme.ndjson"
    done = otaudit("export", "--tenant", "acme", "--format", "ndjson", "-o", str(exported), "--database-url", conninfo)
    assert done.returncode == 0, done.stderr
    originals = [json.loads(line) for line in exported.read_text().splitlines()]
    assert len(originals) == 3

    refused = run_import(conninfo, str(exported), "--tenant", "beta", "--no-progress")
    assert refused.returncode == 1, refused.stderr
    assert "read 3 events: 0 stored, 0 already there, 3 rejected" in refused.stdout
    assert (
        "line 1: tenant_mismatch: the event names tenant 'acme', not 'beta'" in refused.stderr and "--retenant" in refused.stderr
    )
    assert [r["line"] for r in rejects_of(tmp_path / "acme.ndjson.rejects.ndjson")] == [1, 2, 3]
    assert len(stored(conninfo, "beta")) == 1
    (refusal,) = records(conninfo, "beta")  # the run is in beta's trail, with what it did not store
    assert refusal["seq"] == 2 and refusal["outcome"] == "success"
    assert [refusal["details"][k] for k in ("read", "stored", "already_present", "rejected")] == [3, 0, 0, 3]

    done = run_import(conninfo, str(exported), "--tenant", "beta", "--retenant", "--no-progress")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "read 3 events: 3 stored, 0 already there, 0 rejected"
    beta = stored(conninfo, "beta")
    assert [r["seq"] for r in beta] == [1, 3, 4, 5]  # 2: the refused run's record; 6: this run's
    assert [(r["seq"], r["details"]["stored"], r["details"].get("retenant")) for r in records(conninfo, "beta")] == [
        (2, 0, None),
        (6, 3, True),
    ]
    imported = beta[1:]
    assert [r["doc"]["id"] for r in imported] == [o["id"] for o in originals]  # the export's time order, after beta's own
    for row, original in zip(imported, originals, strict=True):
        expected = {k: v for k, v in original.items() if k not in EXPORT_ONLY} | {"tenant": "beta", "flags": ["imported"]}
        assert row["doc"] == expected
        assert row["flags"] == ["imported"] and iso_from_ns(_ns(row["occurred_at"])) == original["occurred_at"]

    again = run_import(conninfo, str(exported), "--tenant", "beta", "--retenant", "--no-progress")
    assert again.returncode == 0 and "read 3 events: 0 stored, 3 already there, 0 rejected" in again.stdout
    into_acme = run_import(conninfo, str(exported), "--tenant", "acme", "--no-progress")  # the live events: already there
    assert into_acme.returncode == 0 and "0 stored, 3 already there" in into_acme.stdout
    assert len(stored(conninfo, "beta")) == 4
    assert [r["details"]["already_present"] for r in records(conninfo, "beta")] == [0, 0, 3]
    assert [r["details"]["already_present"] for r in records(conninfo, "acme")] == [3]


def _ns(when: Any) -> int:
    return int(when.timestamp()) * 10**9 + when.microsecond * 1000


def test_events_three_years_old_keep_their_times_in_time_order_and_rejects_name_their_lines(db: str, tmp_path: Path) -> None:
    now = time.time_ns()
    old = now - THREE_YEARS_NS
    later = document(ROLE, old + 2 * DAY_NS, tenant="lic")
    earliest = document(ROLE, old, tenant="lic")
    unnamed = {k: v for k, v in document(ACCESS, old + DAY_NS).items() if k not in ("id", "tenant")}
    path = write_lines(
        tmp_path / "history.ndjson",
        [
            later,
            earliest,
            "",  # a blank line is no event
            document(ROLE, old, tenant="lic", event="noSuchEvent"),
            "{not json",
            document(ROLE, old, tenant="lic", occurred_at="1969-12-31T23:59:59Z"),
            document(ROLE, old, tenant="lic", occurred_at=iso_from_ns(now + DAY_NS)),
            unnamed,
            document(ROLE, old, tenant="lic", occurred_at="2023-02-30T00:00:00Z"),
        ],
    )
    done = run_import(db, str(path), "--tenant", "lic", "--no-progress")
    assert done.returncode == 1, done.stderr
    summary = done.stdout.splitlines()
    assert summary[0].startswith("read 8 events: 3 stored, 0 already there, 5 rejected (each with its line and reasons in ")
    assert "warning: 3 imported events of tenant 'lic' are older than its plan 'basic' keeps (365 days)" in summary[1]
    assert "the next retention run deletes them" in summary[1]
    rejects = rejects_of(tmp_path / "history.ndjson.rejects.ndjson")
    assert [(r["line"], r["reason"]) for r in rejects] == [
        (4, "unknown_event"),
        (5, "unreadable"),
        (6, "bad_time"),
        (7, "bad_time"),
        (9, "bad_time"),
    ]
    assert "before 1970" in rejects[2]["problems"][0] and "in the future" in rejects[3]["problems"][0]
    assert json.loads(rejects[0]["input"])["event"] == "noSuchEvent" and rejects[1]["input"] == "{not json"
    assert (
        "line 4: unknown_event: event 'noSuchEvent'" in done.stderr and "line 5: unreadable: not a JSON document" in done.stderr
    )

    lic = stored(db, "lic")
    assert [r["seq"] for r in lic] == [1, 2, 3]
    assert [r["doc"]["occurred_at"] for r in lic] == [earliest["occurred_at"], unnamed["occurred_at"], later["occurred_at"]]
    assert [r["doc"]["id"] for r in lic][::2] == [earliest["id"], later["id"]]
    assert all("clock_skew" not in r["flags"] and "claimed_occurred_at" not in r["doc"] for r in lic)
    assert lic[1]["flags"] == ["derived_id", "imported"] and lic[1]["doc"]["tenant"] == "lic"
    assert lic[0]["doc"]["occurred_at"] < iso_from_ns(now - 1000 * DAY_NS)

    again = run_import(db, str(path), "--tenant", "lic", "--no-progress")  # the derived id is stable: nothing twice
    assert again.returncode == 1 and again.stdout.startswith("read 8 events: 0 stored, 3 already there, 5 rejected")
    assert len(stored(db, "lic")) == 3


def test_a_foreign_csv_imports_through_a_mapping(db: str, tmp_path: Path) -> None:
    path = tmp_path / "legacy.csv"
    path.write_text(
        "When,Who,What,Result,Ref,Note\r\n"
        "2022-03-01 08:00:00,ann@acme.test,siteAccess,success,legacy-2,\r\n"
        '2022-02-01T09:30:00+01:00,bob@acme.test,siteAccess,failure,legacy-1,"wrong password,\r\nthird try"\r\n'
        "2022-04-01T00:00:00Z,,siteAccess,success,legacy-3,\r\n"
        "2022-04-02T00:00:00Z,eve@acme.test,siteAccess,success\r\n",
        encoding="utf-8",
    )
    mapping = ["occurred_at=When", "actor.email=Who", "event=What", "outcome=Result", "id=Ref", "reason=Note"]
    constants = ['actor.type="user"', 'category="site_access"']
    args = [a for m in mapping + constants for a in ("--map", m)]
    done = run_import(db, str(path), "--tenant", "acme", "--no-progress", *args)
    assert done.returncode == 1, done.stderr
    assert done.stdout.startswith("read 4 events: 2 stored, 0 already there, 2 rejected")
    rejects = rejects_of(tmp_path / "legacy.csv.rejects.ndjson")
    assert [(r["line"], r["reason"]) for r in rejects] == [(5, "schema"), (6, "unreadable")]
    assert rejects[0]["input"]["When"] == "2022-04-01T00:00:00Z" and "the header has 6" in rejects[1]["problems"][0]
    acme = stored(db, "acme")
    assert [r["doc"]["id"] for r in acme] == ["legacy-1", "legacy-2"]  # time order, not file order
    first = acme[0]["doc"]
    assert first["occurred_at"] == "2022-02-01T08:30:00.000000Z" and first["actor"] == {"type": "user", "email": "bob@acme.test"}
    assert first["outcome"] == "failure" and first["reason"] == "wrong password,\r\nthird try"
    assert first["category"] == "site_access" and first["flags"] == ["imported"] and first["source"] == {}
    assert acme[1]["doc"]["occurred_at"] == "2022-03-01T08:00:00.000000Z"  # no zone: UTC

    mapping_file = tmp_path / "legacy.map"
    mapping_file.write_text("# the legacy product's columns\n" + "\n".join(mapping + constants) + "\n")
    again = run_import(db, str(path), "--tenant", "acme", "--no-progress", "--mapping", str(mapping_file))
    assert again.stdout.startswith("read 4 events: 0 stored, 2 already there, 2 rejected")


def test_the_csv_export_imports_by_its_own_header(collector: RunningCollector, tmp_path: Path) -> None:
    conninfo = collector.conninfo
    now = time.time_ns()
    tricky = {**ROLE, "target": {**ROLE["target"], "name": "=HYPERLINK(1)"}}
    send(collector.grpc_target, [(tricky, now - 3 * 10**9), (ACCESS, now - 2 * 10**9), (GROUP, now - 10**9)])
    related = [{"type": "=license", "id": "lic-1", "name": "Pro (2 seats)"}, {"type": "device", "id": "d-7"}]
    with_related = record("updateRole", {**attributes_of(ROLE), "audit.related": related}, time_ns=now - 4 * 10**9)
    with grpc.insecure_channel(collector.grpc_target) as channel:
        channel.unary_unary(EXPORT)(request([with_related]).SerializeToString(), timeout=30)
    exported = tmp_path / "acme.csv"
    done = otaudit("export", "--tenant", "acme", "--bom", "-o", str(exported), "--database-url", conninfo)
    assert done.returncode == 0, done.stderr
    text = exported.read_text(encoding="utf-8-sig")
    assert "'=HYPERLINK(1)" in text and "'=license:lic-1 (Pro (2 seats))\ndevice:d-7" in text  # the related column
    done = run_import(conninfo, str(exported), "--tenant", "globex", "--retenant", "--no-progress")
    assert done.returncode == 0, done.stderr + done.stdout
    assert done.stdout.startswith("read 4 events: 4 stored, 0 already there, 0 rejected")
    assert [r["doc"]["related"] for r in stored(conninfo, "globex") if "related" in r["doc"]] == [related]
    acme = {r["id"]: r["doc"] for r in stored(conninfo, "acme")}
    for row in stored(conninfo, "globex"):
        original = {k: v for k, v in acme[row["id"]].items() if k not in ("tenant", "flags")}
        assert {k: v for k, v in row["doc"].items() if k not in ("tenant", "flags")} == original
        assert row["flags"] == ["imported"] and row["doc"]["tenant"] == "globex"


def test_the_progress_bar_draws_on_a_terminal(db: str, tmp_path: Path) -> None:
    now = time.time_ns()
    path = write_lines(tmp_path / "few.ndjson", [document(ROLE, now - i * DAY_NS) for i in range(3)])
    main, terminal = pty.openpty()
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "otaudit_collector", "import", str(path), "--tenant", "acme", "--database-url", db],
            stdout=subprocess.PIPE,
            stderr=terminal,
            text=True,
        )
        os.close(terminal)
        out, _ = process.communicate(timeout=60)
        screen = b""
        while True:
            try:
                chunk = os.read(main, 65536)
            except OSError:  # EIO: the terminal's other end is closed
                break
            if not chunk:
                break
            screen += chunk
    finally:
        os.close(main)
    assert process.returncode == 0, screen
    assert b"\r[" in screen and b"events stored" in screen and b"100.0%" in screen
    assert out.startswith("read 3 events: 3 stored")


@pytest.mark.parametrize(
    ("name", "content", "extra", "words"),
    [
        ("missing.ndjson", None, [], "no file"),
        ("trail.txt", "{}\n", [], "pass --format ndjson or --format csv"),
        ("trail.ndjson", "{}\n", ["--map", "event=What"], "--map and --mapping are for CSV files"),
        ("foreign.csv", "When,What\n", [], "are not those of 'otaudit export --format csv': map them with --map"),
        ("foreign.csv", "When,What\n", ["--map", "when=When"], "'when' is not a field of the event"),
        ("foreign.csv", "When,What\n", ["--map", "occurred_at=When"], "the mapping gives no event: add --map event=COLUMN"),
        ("foreign.csv", "When,What\n", ["--map", "occurred_at=Date", "--map", "event=What"], "no column for occurred_at=Date"),
        ("foreign.csv", "When,What\n", ["--map", "occurred_at"], "write FIELD=COLUMN"),
        ("foreign.csv", "When,What\n", ["--mapping", "nowhere.map"], "cannot read the mapping file"),
        ("empty.csv", "", ["--map", "event=What"], "is empty"),
        ("trail.ndjson", "{}\n", ["--batch-size", "0"], "--batch-size 0"),
    ],
)
def test_the_command_errors_say_what_to_fix(
    db: str, tmp_path: Path, name: str, content: str | None, extra: list[str], words: str
) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    done = run_import(db, str(path), "--tenant", "acme", *extra)
    assert done.returncode == 2, done.stderr
    assert words in done.stderr and done.stderr.startswith("otaudit: ")
    assert rows(db, "SELECT count(*) AS n FROM events")[0]["n"] == 0


def test_each_import_run_is_recorded_in_the_tenants_trail(collector: RunningCollector, tmp_path: Path) -> None:
    """Like ``otaudit export --tenant``: the operator as actor, the file, its format, the counts and the time
    range an auditor asks about; readable through the API (data_extraction is in every plan) and exported."""
    conninfo = collector.conninfo
    old = time.time_ns() - THREE_YEARS_NS
    docs = [document(ROLE, old + 2 * DAY_NS), document(ROLE, old), document(ACCESS, old + DAY_NS)]
    path = write_lines(tmp_path / "history.ndjson", [docs[0], docs[1], "{not json", docs[2]])
    done = run_import(conninfo, str(path), "--tenant", "acme", "--no-progress")
    assert done.returncode == 1, done.stderr  # a line was rejected
    (run,) = records(conninfo, "acme")
    assert run["seq"] == 4 and [r["seq"] for r in stored(conninfo, "acme")] == [1, 2, 3]  # after what it stored
    actor = run["actor"]
    assert actor["type"] == "user" and actor["roles"] == ["operator"] and "@" in actor["id"]
    assert actor["name"] == f"{actor['id']} (otaudit import)"
    assert run["client"]["user_agent"].startswith("otaudit-cli/")
    assert run["target"] == {"type": "view", "id": "audit-trail", "name": "otaudit audit trail"}  # as exportView's
    assert (run["category"], run["outcome"], run["source"]["service"]) == ("data_extraction", "success", "otaudit-collector")
    assert "imported" not in run.get("flags", [])  # the run happened now: it is not itself imported
    assert run["details"] == {
        "file": "history.ndjson",
        "path": str(path.absolute()),
        "format": "ndjson",
        "read": 4,
        "stored": 3,
        "already_present": 0,
        "rejected": 1,
        "first_occurred_at": docs[1]["occurred_at"],
        "last_occurred_at": docs[0]["occurred_at"],
        "rejects_file": str(tmp_path / "history.ndjson.rejects.ndjson"),
    }
    assert run["message"] == "imported history.ndjson: 3 stored, 0 already present, 1 rejected"

    api = Api(collector.api_url, token(conninfo, "acme"))  # the basic plan
    (listed,) = api.ok("/v1/events", event="importAuditTrail")["events"]
    assert listed["id"] == run["id"] and listed["details"] == run["details"]
    history = api.ok("/v1/events", target_type="view", target_id="audit-trail")["events"]
    assert [e["event"] for e in history] == ["importAuditTrail"]
    exported = api.get("/v1/export", format="csv", event="importAuditTrail")
    assert exported.status_code == 200, exported.text
    (row,) = csv.DictReader(io.StringIO(exported.text))
    assert (row["id"], row["title"], row["actor_name"]) == (run["id"], "Audit trail imported", actor["name"])


def test_an_import_that_stops_part_way_is_recorded_as_failed(db: str, tmp_path: Path) -> None:
    """The database refuses the second batch (a trigger raises, as a full disk or a constraint would): the
    first stays stored, the run is recorded as a failure with the reason, and a second run completes it."""
    now = time.time_ns()
    first, poison, last = (document(ROLE, now - (3 - i) * DAY_NS) for i in range(3))
    poison["id"] = "poison"
    path = write_lines(tmp_path / "three.ndjson", [last, poison, first])
    with psycopg.connect(db) as conn:
        conn.execute(
            "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN RAISE EXCEPTION 'disk full while storing %', NEW.id; END $$"
        )
        conn.execute(
            "CREATE TRIGGER refuse_poison AFTER INSERT ON events FOR EACH ROW WHEN (NEW.id = 'poison')"
            " EXECUTE FUNCTION refuse_poison()"
        )
    done = run_import(db, str(path), "--tenant", "acme", "--batch-size", "1", "--no-progress")
    assert done.returncode == 1, done.stderr
    assert "otaudit: storing stopped after 1 of 3 events: storage refused the batch" in done.stderr
    assert "Run the same import again" in done.stderr and "not in the trail" not in done.stderr
    assert [r["id"] for r in stored(db, "acme")] == [first["id"]]
    (failed,) = records(db, "acme")
    assert failed["outcome"] == "failure" and "disk full while storing poison" in failed["reason"]
    assert [failed["details"][k] for k in ("read", "stored", "already_present", "rejected")] == [3, 1, 0, 0]
    assert (failed["details"]["first_occurred_at"], failed["details"]["last_occurred_at"]) == (
        first["occurred_at"],
        last["occurred_at"],
    )

    with psycopg.connect(db) as conn:
        conn.execute("DROP TRIGGER refuse_poison ON events")
    again = run_import(db, str(path), "--tenant", "acme", "--batch-size", "1", "--no-progress")
    assert again.returncode == 0 and again.stdout.startswith("read 3 events: 2 stored, 1 already there, 0 rejected")
    assert [(r["outcome"], r["details"]["stored"], r["details"]["already_present"]) for r in records(db, "acme")] == [
        ("failure", 1, 0),
        ("success", 2, 1),
    ]


def test_an_import_the_trail_cannot_record_stores_nothing(db: str, tmp_path: Path) -> None:
    """An operator's own data_extraction catalog without the import's event: refused before anything is stored."""
    catalogs = tmp_path / "catalogs"
    catalogs.mkdir()
    own = json.loads((REPO / "catalogs" / "data_extraction.json").read_text())
    del own["events"]["importAuditTrail"]
    (catalogs / "data_extraction.json").write_text(json.dumps(own))
    config = tmp_path / "otaudit.yaml"
    config.write_text(f"catalogs:\n  dirs: [{json.dumps(str(catalogs))}]\n")
    path = write_lines(tmp_path / "one.ndjson", [document(ROLE, time.time_ns() - DAY_NS)])
    done = run_import(db, str(path), "--tenant", "acme", "--no-progress", "--config", str(config))
    assert done.returncode == 2, done.stderr
    assert "the catalogs refuse the importAuditTrail event" in done.stderr and "nothing was stored" in done.stderr
    assert "give yours its importAuditTrail event" in done.stderr
    assert rows(db, "SELECT count(*) AS n FROM events")[0]["n"] == 0


# -- pure ------------------------------------------------------------------------------------


def test_times_are_kept_however_old_and_refused_only_when_absurd() -> None:
    now = 1_900_000_000 * 10**9
    assert parse_occurred_at("2021-05-01T09:30:00.123456Z", now, 300) == 1_619_861_400_123_456_000
    assert parse_occurred_at("2021-05-01T11:30:00.123456+02:00", now, 300) == 1_619_861_400_123_456_000
    assert parse_occurred_at("2021-05-01 09:30:00.123456", now, 300) == 1_619_861_400_123_456_000
    assert parse_occurred_at("1619861400.5", now, 300) == 1_619_861_400_500_000_000
    assert parse_occurred_at("1970-01-01T00:00:00Z", now, 300) == 0
    for bad, words in [
        ("1969-12-31T23:59:59Z", "before 1970"),
        (iso_from_ns(now + 301 * 10**9), "in the future"),
        ("yesterday", "is not a time"),
        (1619861400, "is not a time"),
    ]:
        with pytest.raises(LineError, match=words) as caught:
            parse_occurred_at(bad, now, 300)
        assert caught.value.reason == "bad_time"
    assert parse_occurred_at(iso_from_ns(now + 299 * 10**9), now, 300) == now + 299 * 10**9


def test_documents_get_the_tenant_an_id_and_the_flag() -> None:
    now = time.time_ns()
    doc = finish_document(
        {"event": "x", "occurred_at": "2020-01-01T00:00:00Z"}, "acme", retenant=False, now_ns=now, max_future_seconds=0
    )
    assert doc["tenant"] == "acme" and doc["occurred_at"] == "2020-01-01T00:00:00.000000Z"
    assert doc["flags"] == ["derived_id", "imported"]
    same = finish_document(
        {"event": "x", "occurred_at": "2020-01-01T00:00:00Z"}, "acme", retenant=False, now_ns=now, max_future_seconds=0
    )
    assert same["id"] == doc["id"]
    kept = finish_document({"id": "e-1", "tenant": "acme", "occurred_at": "2020-01-01T00:00:00Z", "flags": ["clock_skew"]}, "acme",
                           retenant=False, now_ns=now, max_future_seconds=0)  # fmt: skip
    assert kept["id"] == "e-1" and kept["flags"] == ["clock_skew", "imported"]
    with pytest.raises(LineError, match="names tenant 'globex', not 'acme'"):
        finish_document(
            {"tenant": "globex", "occurred_at": "2020-01-01T00:00:00Z"}, "acme", retenant=False, now_ns=now, max_future_seconds=0
        )
    moved = finish_document(
        {"tenant": "globex", "occurred_at": "2020-01-01T00:00:00Z"}, "acme", retenant=True, now_ns=now, max_future_seconds=0
    )
    assert moved["tenant"] == "acme"


def test_the_mapping_and_the_export_header() -> None:
    mapping = parse_mapping(["occurred_at=Date", 'actor.type="user"', "actor.roles=Roles", "source.sequence=N"])
    check_mapping({**mapping, **parse_mapping(["event=What"])}, ["Date", "What", "Roles", "N"])
    doc = document_from_row({"Date": "2020-01-01", "Roles": "admin, owner", "N": "7"}, mapping)
    assert doc == {"occurred_at": "2020-01-01", "actor": {"type": "user", "roles": ["admin", "owner"]}, "source": {"sequence": 7}}
    with pytest.raises(ImportProblem, match="mapped twice"):
        parse_mapping(["event=A", "event=B"])
    header = ["occurred_at", "received_at", "seq", "id", "event", "title", "actor_type", "user_agent", "changes"]
    found = export_mapping(header)
    assert found is not None and set(found) == {"occurred_at", "id", "event", "actor.type", "client.user_agent", "changes"}
    assert export_mapping(["Date", "event"]) is None
    row = {"occurred_at": "2020-01-01", "event": "'=cmd", "changes": "", "actor_type": "'abc"}
    assert document_from_row(row, found, from_export=True)["event"] == "=cmd"
    assert document_from_row(row, found, from_export=True)["actor"] == {"type": "'abc"}  # not what the export would write
    assert parse_changes('permissions: ["a"] -> ["a", "b"]\nname: Ann -> \npassword: (withheld) -> (withheld)') == [
        {"field": "permissions", "old": ["a"], "new": ["a", "b"]},
        {"field": "name", "old": "Ann", "new": None},
        {"field": "password"},
    ]
    assert parse_changes('[{"field": "x", "old": 1}]') == [{"field": "x", "old": 1}]
    assert parse_changes("expires: (none) -> 30\nnote: gone -> (none)") == [  # null, as exports write it since 0011
        {"field": "expires", "old": None, "new": 30},
        {"field": "note", "old": "gone", "new": None},
    ]


def test_the_related_column_reads_back_one_object_per_line() -> None:
    assert parse_related("license:lic-1 (Pro (2 seats))\ndevice:d-7\nurn:x:y:z (A)") == [
        {"type": "license", "id": "lic-1", "name": "Pro (2 seats)"},
        {"type": "device", "id": "d-7"},
        {"type": "urn", "id": "x:y:z", "name": "A"},  # split at the first colon: a type with one is lossy
    ]
    assert parse_related('[{"type": "order", "id": "o-1"}]') == [{"type": "order", "id": "o-1"}]  # a mapped CSV's JSON
    for bad in ("no colon here", "license:", '[{"type": '):
        with pytest.raises(LineError, match="related: ") as caught:
            parse_related(bad)
        assert caught.value.reason == "unreadable"
    header = ["occurred_at", "event", "target_name", "related", "changes"]
    found = export_mapping(header)
    assert found is not None and found["related"].column == "related"
    row = {"occurred_at": "2020-01-01", "event": "x", "target_name": "", "related": "'=doc:d-1 (=SUM(A1))", "changes": ""}
    assert document_from_row(row, found, from_export=True)["related"] == [{"type": "=doc", "id": "d-1", "name": "=SUM(A1)"}]


def test_rows_come_out_in_time_order_through_bounded_runs(tmp_path: Path) -> None:
    times = [iso_from_ns(random.randrange(0, 2_000_000_000) * 10**9) for _ in range(25)]
    rows_ = SortedRows(tmp_path, run_rows=4)
    for number, when in enumerate(times, 1):
        rows_.add(sort_line(when, number, "acme", f"e-{number}", f"acme\te-{number}\t{when}\tdoc"))
    assert len(list(tmp_path.iterdir())) == 6  # six full runs spilled; the last row waits in memory
    keys = [split_sort_line(line)[0] for line in rows_]
    assert [k[2] for k in keys] == sorted(times) and len(keys) == 25
    assert sorted(k[1] for k in keys) == sorted(f"e-{n}" for n in range(1, 26))


def test_unstorable_text_in_a_line_is_that_line_refused(db: str, tmp_path: Path) -> None:
    """json.loads makes a lone surrogate of a "\\ud800" escape, and a NUL of "\\u0000": neither can be
    stored, so the line is refused (unstorable, with its line number) and the others are stored."""
    now = time.time_ns()
    good = document(ROLE, now - DAY_NS, tenant="lic")
    surrogate = json.dumps(document(ROLE, now - DAY_NS, tenant="lic")).replace('"Auditors"', '"Audit\\ud800ors"')
    nul = json.dumps(document(ROLE, now - DAY_NS, tenant="lic")).replace('"Auditors"', '"Audit\\u0000ors"')
    assert "\\ud800" in surrogate and "\\u0000" in nul
    path = write_lines(tmp_path / "odd.ndjson", [good, surrogate, nul])
    done = run_import(db, str(path), "--tenant", "lic", "--no-progress")
    assert done.returncode == 1, done.stderr
    assert done.stdout.startswith("read 3 events: 1 stored, 0 already there, 2 rejected")
    rejects = rejects_of(tmp_path / "odd.ndjson.rejects.ndjson")
    assert [(r["line"], r["reason"]) for r in rejects] == [(2, "unstorable"), (3, "unstorable")]
    assert "surrogate" in rejects[0]["problems"][0] and "NUL" in rejects[1]["problems"][0]
    assert [r["id"] for r in stored(db, "lic")] == [good["id"]]
