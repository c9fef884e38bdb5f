"""Streams of format ``ocsf``, end to end: made through the API and the configuration, delivered
by a running collector to a webhook receiver, to Debian's rsyslogd and to files, every record
read back and checked with pydantic-ocsf (an OCSF implementation otaudit did not write)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests
from ocsf.v1_5_0 import events as ocsf_events
from pydantic import BaseModel
from rsyslogd import Rsyslog, free_port
from stream_helpers import Api, ingest, quick_settings, token
from stream_receiver import Receiver
from support import RunningCollector, count, rows, wait_until

MODELS: dict[int, type[BaseModel]] = {
    3001: ocsf_events.AccountChange,
    3002: ocsf_events.Authentication,
    3004: ocsf_events.EntityManagement,
    3006: ocsf_events.GroupManagement,
    6003: ocsf_events.ApiActivity,
}
EXPECTED = {"siteAccess": (3002, 1), "updateRole": (3004, 3)}
"""What the events ingest() makes are: siteAccess an Authentication Logon, updateRole an Entity Management Update."""


def _checked(event: dict[str, Any], stored: dict[str, dict[str, Any]]) -> None:
    """A delivered OCSF event: valid in its class, read back unchanged, and the stored event's."""
    model = MODELS[event["class_uid"]].model_validate(json.loads(json.dumps(event)))
    assert model.model_dump(mode="json", exclude_none=True, by_alias=True) == event
    row = stored[event["metadata"]["uid"]]
    assert event["metadata"]["sequence"] == row["seq"] and event["metadata"]["event_code"] == row["event"]
    if row["event"] in EXPECTED:
        assert (event["class_uid"], event["activity_id"]) == EXPECTED[row["event"]]


def _stored(db: str) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in rows(db, "SELECT id, seq, doc->>'event' AS event FROM events WHERE tenant = 'acme' ORDER BY seq")}


def _refused(answer: requests.Response, *words: str) -> None:
    assert answer.status_code == 400, answer.text
    message = answer.json()["message"]
    assert message.startswith("format:"), message
    for word in words:
        assert word in message, message


def test_the_format_is_chosen_when_made_checked_and_never_changed(running: RunningCollector) -> None:
    api = Api(running, token(running.conninfo))
    made = api.create(name="siem", url="https://siem.example.com/otaudit", format="ocsf")
    assert made["format"] == "ocsf" and "format" not in made["destination"]
    assert api.create(name="plain", url="https://siem.example.com/b")["format"] == "otaudit"
    _refused(api.call("POST", "/v1/streams", {"name": "x", "url": "https://a.example.com/", "format": "leef"}), "otaudit, ocsf, cef")
    otlp = {"name": "x", "kind": "otlp", "endpoint": "http://127.0.0.1:4318", "format": "ocsf"}
    _refused(api.call("POST", "/v1/streams", otlp), "OTel log records")
    changed = api.call("PATCH", f"/v1/streams/{made['id']}", {"format": "otaudit"})
    _refused(changed, "cannot change", "make a new stream")
    audit = rows(
        running.conninfo,
        "SELECT doc->'details' AS details FROM events WHERE doc->>'event' = 'createStream' AND doc->'target'->>'id' = %s",
        (made["id"],),
    )
    assert audit[0]["details"]["format"] == "ocsf"
    assert audit[0]["details"]["destination"] == "https://siem.example.com/otaudit"


def test_a_webhook_stream_delivers_ocsf_events(running: RunningCollector, receiver: Receiver) -> None:
    api = Api(running, token(running.conninfo))
    made = api.create(name="siem", url=receiver.url, format="ocsf", start={"seq": 1})
    receiver.secret = made["secret"]
    ids = ingest(running, 5) + ingest(running, 4, category="site_access")
    wait_until(lambda: {r["metadata"]["uid"] for r in receiver.records()} >= set(ids), 60, "the OCSF events")
    assert receiver.bad_signatures == 0 and set(receiver.formats) == {"ocsf"}
    stored = _stored(running.conninfo)
    records = [r for r in receiver.records() if r["metadata"]["uid"] in ids]
    assert [r["metadata"]["sequence"] for r in records] == sorted(stored[i]["seq"] for i in ids), "in seq order"
    for event in records:
        _checked(event, stored)


def test_a_syslog_stream_of_ocsf_events_to_rsyslog(db: str, tmp_path: Path) -> None:
    server = Rsyslog(tmp_path, free_port(), None)
    server.start()
    sender = RunningCollector(quick_settings(db))
    try:
        api = Api(sender, token(db))
        made = api.create(name="siem", kind="syslog", host="127.0.0.1", port=server.port, format="ocsf", start={"seq": 1})
        ids = ingest(sender, 3) + ingest(sender, 2, category="site_access")
        wait_until(lambda: api.get(made["id"])["cursor"] >= count(db), 60, "the stream to catch up")
        lines = server.lines(count(db))
    finally:
        sender.stop()
        server.stop()
    stored = _stored(db)
    by_id = {}
    for fields in lines:
        event = json.loads(fields[-1].removeprefix("\ufeff"))
        by_id[event["metadata"]["uid"]] = (fields, event)
    for event_id in ids:
        fields, event = by_id[event_id]
        _checked(event, stored)
        assert fields[5] == stored[event_id]["event"], "MSGID: the event's name, from the stored document"
        assert f'seq="{stored[event_id]["seq"]}" id="{event_id}"' in fields[-2] and 'outcome="success"' in fields[-2]


def test_a_declared_file_stream_writes_ocsf_events(db: str, tmp_path: Path) -> None:
    with psycopg.connect(db) as conn:  # a tenant known at start: "*" makes its stream then
        conn.execute("INSERT INTO tenants (tenant, plan) VALUES ('acme', 'basic')")
    archive = tmp_path / "archive"
    archive.mkdir()
    declared = [{"name": "lake", "tenants": "*", "kind": "file", "folder": str(archive), "format": "ocsf", "start": {"seq": 1}}]
    collector = RunningCollector(quick_settings(db, {("streams", "declared"): declared}))
    try:
        ids = ingest(collector, 6) + ingest(collector, 3, category="site_access")
        api = Api(collector, token(db))
        assert api.get("cfg_lake")["format"] == "ocsf"
        wait_until(lambda: api.get("cfg_lake")["cursor"] >= count(db), 60, "the archive")
    finally:
        collector.stop()  # the file transport finishes its open file on close
    lines: list[str] = []
    for path in [*sorted(archive.glob("acme-cfg_lake-*.ndjson.gz")), *archive.glob(".acme-cfg_lake.open.ndjson.gz")]:
        lines += gzip.decompress(path.read_bytes()).decode().splitlines()
    events = [json.loads(line) for line in lines]
    stored = _stored(db)
    assert [e["metadata"]["sequence"] for e in events] == [r["seq"] for r in stored.values()]
    assert set(ids) <= {e["metadata"]["uid"] for e in events}
    for event in events:  # the collector's own events (its self-audit) too
        _checked(event, stored)


@pytest.mark.parametrize("kind", ["webhook", "syslog"])
def test_a_declared_stream_takes_a_format_and_refuses_a_wrong_one(db: str, kind: str) -> None:
    from otaudit_collector.config import ConfigError

    settings = {"webhook": {"url": "https://a.example.com/", "secret_env": "X"}, "syslog": {"host": "h", "port": 514}}[kind]
    declared = [{"name": "s", "tenants": "*", "kind": kind, "format": "leef", **settings}]
    with pytest.raises(ConfigError) as refused:
        quick_settings(db, {("streams", "declared"): declared})
    assert "format" in str(refused.value)
