"""xlsx exports, read back with openpyxl (a reader independent of XlsxWriter, which writes them):
the CSV's columns and values, formulas kept as inert text, the times as real dates, a new sheet
past the row limit (a small exports.xlsx_sheet_rows here), through the streamed route, an export
job and ``otaudit export``; job bodies with since/until as numbers; full download URLs; the
export command's papercuts."""

from __future__ import annotations

import datetime as dt
import io
import math
import re
import time
from pathlib import Path
from typing import Any

import openpyxl
import pytest
import requests
from support import RunningCollector, otaudit, settings_for, wait_until
from test_api_reads import ROLE, Api, send, token
from test_export import (  # noqa: F401  (trail: a fixture)
    FORMULA_RELATED,
    HEADER,
    RELATED,
    RELATED_CELL,
    TRICKY,
    export,
    rows_of,
    send_related,
    trail,
)

from otaudit_collector.core.export import XLSX_CELL_CHARS, XLSX_CONTENT_TYPE, filters_from_body, sheet_row
from otaudit_collector.core.query import BadFilter, parse_time

TIMES = ("occurred_at", "received_at")


def ooxml_text(value: Any) -> Any:
    """A cell's text as a spreadsheet shows it: OOXML writes control characters as _xHHHH_ (openpyxl leaves them)."""
    if not isinstance(value, str):
        return value
    return re.sub(r"_x([0-9A-F]{4})_", lambda m: chr(int(m.group(1), 16)), value)


def sheets_of(content: bytes) -> dict[str, list[tuple[Any, ...]]]:
    book = openpyxl.load_workbook(io.BytesIO(content))
    for sheet in book.worksheets:
        for row in sheet.iter_rows():
            for cell in row:
                assert cell.data_type != "f", f"{sheet.title}!{cell.coordinate} is a formula: {cell.value!r}"
                if cell.column_letter in ("A", "B") and cell.row > 1:
                    assert cell.is_date and "yyyy-mm-dd hh:mm:ss" in cell.number_format
    return {s.title: [tuple(ooxml_text(v) for v in row) for row in s.iter_rows(values_only=True)] for s in book.worksheets}


def events_of(sheets: dict[str, list[tuple[Any, ...]]]) -> list[dict[str, Any]]:
    """Every sheet's rows below its header (which each sheet repeats), as dicts."""
    out = []
    for rows in sheets.values():
        assert list(rows[0]) == HEADER
        out.extend(dict(zip(HEADER, row, strict=True)) for row in rows[1:])
    return out


def jobs_file(api: Api, body: dict[str, Any]) -> tuple[dict[str, Any], requests.Response]:
    made = requests.post(api.base + "/v1/exports", json=body, headers=api.headers, timeout=30)
    assert made.status_code == 202, made.text
    job_id = made.json()["id"]
    wait_until(lambda: api.ok(f"/v1/exports/{job_id}")["state"] in ("done", "failed"), 60, "the export job")
    job: dict[str, Any] = api.ok(f"/v1/exports/{job_id}")
    assert job["state"] == "done", job
    answer = requests.get(job["download_url"], timeout=30)  # a full URL, no token
    assert answer.status_code == 200
    return job, answer


# -- pure ------------------------------------------------------------------------------------


def test_a_csv_row_becomes_typed_sheet_cells() -> None:
    cells = dict.fromkeys(HEADER, "")
    cells |= {
        "occurred_at": "2026-11-21T10:15:30.123456Z",
        "received_at": "2026-11-21T10:15:31.000001Z",
        "seq": "42",
        "target_name": '\'=HYPERLINK("http://evil.test")',
        "source_sequence": "12345678901234567890",  # more digits than a spreadsheet's number holds: text
        "details": "x" * (XLSX_CELL_CHARS + 10),
        "message": "😀" * (XLSX_CELL_CHARS // 2 + 1),  # two UTF-16 units each
    }
    typed = dict(zip(HEADER, sheet_row([cells[name] for name in HEADER]), strict=True))
    assert typed["occurred_at"] == dt.datetime(2026, 11, 21, 10, 15, 30, 123456)
    assert typed["received_at"] == dt.datetime(2026, 11, 21, 10, 15, 31, 1)
    assert typed["seq"] == 42 and typed["source_sequence"] == "12345678901234567890"
    assert typed["target_name"] == cells["target_name"]  # the neutralizing apostrophe stays
    assert typed["actor_id"] is None  # empty stays empty
    for name in ("details", "message"):
        text = typed[name]
        assert isinstance(text, str) and len(text.encode("utf-16-le")) // 2 <= XLSX_CELL_CHARS
        assert text.startswith(cells[name][:100]) and "cut: a spreadsheet cell holds 32,767 characters" in text
    old = dict(zip(HEADER, sheet_row([("1850-01-01T00:00:00Z" if n in TIMES else "") for n in HEADER]), strict=True))
    assert old["occurred_at"] == "1850-01-01T00:00:00Z"  # before a spreadsheet's dates begin: kept as text


def test_export_job_bodies_take_since_and_until_as_unix_seconds() -> None:
    _fmt, _bom, params = filters_from_body({"format": "xlsx", "since": 1_700_000_000, "until": [1_700_000_100.5]})
    assert params == {"since": ["1700000000"], "until": ["1700000100.500000"]}
    assert parse_time(params["since"][0], "since") == dt.datetime.fromtimestamp(1_700_000_000, dt.UTC)
    assert filters_from_body({"format": "csv", "since": 1.7e9})[2] == {"since": ["1700000000"]}
    for bad in (True, {"t": 1}, [None]):
        with pytest.raises(BadFilter, match="Unix seconds"):
            filters_from_body({"format": "csv", "since": bad})
    with pytest.raises(BadFilter, match="a string or a list of strings"):
        filters_from_body({"format": "csv", "event": 5})  # only the times take numbers
    (nan,) = filters_from_body({"format": "csv", "until": math.nan})[2]["until"]
    with pytest.raises(BadFilter, match="until: 'nan' is not an RFC 3339 time or Unix seconds"):
        parse_time(nan, "until")


# -- through the API ---------------------------------------------------------------------------


def test_a_streamed_xlsx_holds_the_csv_rows_with_dates_and_inert_formulas(trail: dict[str, Any]) -> None:  # noqa: F811
    api: Api = trail["admin"]
    answer = export(api, format="xlsx", event="updateRole")
    assert answer.headers["Content-Type"] == XLSX_CONTENT_TYPE
    assert re.fullmatch(r'attachment; filename="otaudit-acme-\d{8}T\d{6}Z\.xlsx"', answer.headers["Content-Disposition"])
    sheets = sheets_of(answer.content)
    assert list(sheets) == ["events"]
    events = events_of(sheets)
    csv_rows = rows_of(export(api, format="csv", event="updateRole").text)
    assert [e["id"] for e in events] == [r["id"] for r in csv_rows] == list(reversed(trail["ids"][: len(TRICKY)]))
    assert [e["target_name"] for e in events] == list(reversed(TRICKY.values()))  # '=HYPERLINK(...) etc.: text, not run
    for event, row in zip(events, csv_rows, strict=True):
        for name in HEADER:
            got, text = event[name], row[name]
            if name in TIMES:
                assert isinstance(got, dt.datetime) and got.tzinfo is None  # a real date, in UTC
                assert abs(got - parse_time(text, name).replace(tzinfo=None)) <= dt.timedelta(milliseconds=1)
            elif name == "seq":
                assert got == int(text)
            else:
                assert got == (text or None), name
    exported = api.ok("/v1/events", event="exportView")["events"]
    assert [(e["details"]["format"], e["details"]["row_count"]) for e in exported][-1] == ("xlsx", len(TRICKY))


def test_the_related_column_holds_one_object_per_line_in_streams_jobs_and_the_command(db: str, tmp_path: Path) -> None:
    collector = RunningCollector(settings_for(db, {("exports", "poll_seconds"): 0.05}))
    try:
        related, formula = send_related(collector, [RELATED, FORMULA_RELATED])
        (plain,) = send(collector.grpc_target, [(ROLE, time.time_ns())])  # no related objects
        expected = {related: RELATED_CELL, formula: "'@evil:x (=1+2)", plain: None}  # text cells; empty stays empty
        api = Api(collector.api_url, token(db, "acme"))
        streamed = events_of(sheets_of(export(api, format="xlsx", event="updateRole").content))
        _job, download = jobs_file(api, {"format": "xlsx", "event": "updateRole"})
        out = tmp_path / "operator.xlsx"
        done = otaudit("export", "--tenant", "acme", "--database-url", db, "--format", "xlsx", "--event", "updateRole",
                       "-o", str(out))  # fmt: skip
        assert done.returncode == 0, done.stderr
        for events in (streamed, events_of(sheets_of(download.content)), events_of(sheets_of(out.read_bytes()))):
            assert {e["id"]: e["related"] for e in events} == expected
            assert [name for name in events[0]][HEADER.index("target_name") + 1] == "related"
    finally:
        collector.stop()


def test_past_the_sheet_row_limit_a_new_sheet_starts_in_streams_jobs_and_the_command(db: str, tmp_path: Path) -> None:
    settings = settings_for(db, {("exports", "xlsx_sheet_rows"): 3, ("exports", "poll_seconds"): 0.05})
    collector = RunningCollector(settings)
    try:
        now = time.time_ns()
        ids = list(reversed(send(collector.grpc_target, [(ROLE, now - (i + 1) * 10**9) for i in range(8)])))
        admin = token(db, "acme")
        api = Api(collector.api_url, admin)

        streamed = sheets_of(export(api, format="xlsx", event="updateRole").content)
        assert list(streamed) == ["events", "events 2", "events 3"]
        assert [len(rows) for rows in streamed.values()] == [4, 4, 3]  # the header on each
        assert [e["id"] for e in events_of(streamed)] == ids

        body = {"format": "xlsx", "event": "updateRole", "since": time.time() - 3600, "until": int(time.time()) + 60}
        job, download = jobs_file(api, body)
        assert job["format"] == "xlsx" and job["rows"] == 8 and job["bytes"] == len(download.content)
        assert download.headers["Content-Type"] == XLSX_CONTENT_TYPE
        assert download.headers["Content-Disposition"].endswith('.xlsx"')
        assert sheets_of(download.content) == streamed
        nothing, empty = jobs_file(api, {"format": "xlsx", "since": time.time() + 3600})  # no rows: the header only
        assert nothing["rows"] == 0 and sheets_of(empty.content) == {"events": [tuple(HEADER)]}

        done = otaudit("export", "--url", collector.api_url, "--format", "xlsx", "--event", "updateRole",
                       env={"OTAUDIT_TOKEN": admin}, cwd=tmp_path)  # fmt: skip
        assert done.returncode == 0, done.stderr
        (written,) = tmp_path.glob("otaudit-export-*.xlsx")  # no -o: in the current folder...
        assert done.stderr.strip().endswith(f"to {written}")  # ...and it says where, in full
        assert sheets_of(written.read_bytes()) == streamed

        out = tmp_path / "operator.xlsx"
        done = otaudit("export", "--tenant", "acme", "--database-url", db, "--format", "xlsx", "--event", "updateRole",
                       "-o", str(out))  # fmt: skip
        assert done.returncode == 0, done.stderr
        operator = sheets_of(out.read_bytes())
        assert list(operator) == ["events"] and [e["id"] for e in events_of(operator)] == ids  # the CLI's own config
        formats = [e["details"]["format"] for e in api.ok("/v1/events", event="exportView", limit=1000)["events"]]
        assert formats.count("xlsx") == 5  # each export recorded: stream, two jobs, two commands
    finally:
        collector.stop()


def test_download_urls_are_full_urls_on_the_public_url_or_the_host_asked(db: str) -> None:
    collector = RunningCollector(settings_for(db, {("exports", "poll_seconds"): 0.05}))
    try:
        send(collector.grpc_target, [(ROLE, time.time_ns() - 10**9)])
        api = Api(collector.api_url, token(db, "acme"))
        job, _ = jobs_file(api, {"format": "csv", "event": "updateRole"})
        assert job["download_url"].startswith(f"{collector.api_url}/v1/exports/{job['id']}/download?expires=")
        proxied = {**api.headers, "Host": "audit.internal:8443", "X-Forwarded-Host": "evil.test", "X-Forwarded-Proto": "https"}
        seen = requests.get(f"{collector.api_url}/v1/exports/{job['id']}", headers=proxied, timeout=30).json()
        assert seen["download_url"].startswith(f"http://audit.internal:8443/v1/exports/{job['id']}/download?")  # untrusted
    finally:
        collector.stop()
    settings = settings_for(db, {("exports", "public_url"): "https://audit.example.com/otaudit/"})
    behind = RunningCollector(settings)
    try:
        seen = requests.get(f"{behind.api_url}/v1/exports/{job['id']}", headers=api.headers, timeout=30).json()
        url = seen["download_url"]
        assert url.startswith(f"https://audit.example.com/otaudit/v1/exports/{job['id']}/download?expires=")
        answer = requests.get(behind.api_url + url.removeprefix("https://audit.example.com/otaudit"), timeout=30)
        assert answer.status_code == 200 and len(rows_of(answer.text)) == 1
    finally:
        behind.stop()


def test_the_export_command_help_names_the_api_port_and_the_default_file() -> None:
    shown = otaudit("export", "--help")
    assert shown.returncode == 0
    text = " ".join(shown.stdout.split())
    assert "http://otaudit:4319" in text and "4320" not in text
    assert "current folder" in text and "xlsx" in text
