"""CEF lines of core/cef.py, read back by liblognorm's CEF parser (lognorm.py), and a syslog
stream of format ``cef`` delivering them to Debian's rsyslogd."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lognorm import parse_cef
from rsyslogd import Rsyslog, free_port
from stream_helpers import Api, ingest, quick_settings, token
from support import RunningCollector, count, rows, wait_until

from otaudit_collector.core.cef import cef_line

REPO = Path(__file__).resolve().parents[2]
CATALOGS = [REPO / "catalogs", *sorted(p for p in (REPO / "catalogs" / "examples").iterdir() if p.is_dir())]


def _examples() -> Iterator[tuple[str, dict[str, Any]]]:
    for folder in CATALOGS:
        for path in sorted(folder.glob("*.json")):
            for event in json.loads(path.read_text(encoding="utf-8"))["events"].values():
                for example in event.get("examples", []):
                    yield event.get("title") or example["event"], example


def _leaves(node: Any) -> Iterator[Any]:
    if isinstance(node, dict):
        for value in node.values():
            yield from _leaves(value)
    elif isinstance(node, list):
        for value in node:
            yield from _leaves(value)
    elif node is not None:
        yield node


def _expected(document: dict[str, Any], seq: int, title: str) -> dict[str, str]:
    """Some of the extension values a reader must find, unescaped."""
    actor = document.get("actor", {})
    out = {"externalId": document["id"], "act": document["event"], "cat": document["category"], "cn1": str(seq)}
    out |= {"cn1Label": "seq", "cs1": document["tenant"], "outcome": document.get("outcome", "success")}
    if actor.get("id"):
        out["suid"] = actor["id"]
    if document.get("reason"):
        out["reason"] = document["reason"]
    out["msg"] = document.get("message") or title
    return out


def test_every_example_reads_back_with_liblognorm_and_loses_nothing(tmp_path: Path) -> None:
    documents = []
    lines = []
    for seq, (title, example) in enumerate(_examples(), 1):
        document = {**example, "received_at": "2026-11-21T10:15:31.987654Z"}
        documents.append((seq, title, document))
        lines.append(cef_line(document, seq, title=title, product_version="9.9.9"))
    parsed = parse_cef(lines, tmp_path)
    assert len(parsed) > 200
    for (seq, title, document), line, cef in zip(documents, lines, parsed, strict=True):
        assert "\n" not in line and "\r" not in line
        header = (cef["DeviceVendor"], cef["DeviceProduct"], cef["DeviceVersion"], cef["SignatureID"], cef["Name"])
        assert header == ("otaudit", "otaudit", "9.9.9", document["event"], title), line[:200]
        assert cef["Severity"] == ("3" if document.get("outcome", "success") == "success" else "6")
        extensions = cef["Extensions"]
        for key, value in _expected(document, seq, title).items():
            assert extensions.get(key) == value, (key, line[:300])
        # Every value of the document is in the line: a named key, or cs6's JSON (the times to the ms).
        rest = json.loads(extensions.get("cs6", "{}"))
        found = {str(v) for v in extensions.values()} | {str(v) for v in _leaves(rest)} | set(header)
        for value in _leaves({k: v for k, v in document.items() if k not in ("occurred_at", "received_at")}):
            assert str(value) in found, (value, line[:300])


def test_escapes_survive_a_real_parser(tmp_path: Path) -> None:
    nasty = "a|b=c\\d\ne\rf = g"
    document = {
        "id": "e|1",
        "tenant": "t=1",
        "category": "c",
        "event": "odd|name\\x",
        "occurred_at": "2026-01-02T03:04:05Z",
        "outcome": "denied",
        "reason": nasty,
        "actor": {"type": "user", "id": "u=1", "name": "Ann | Lee"},
        "details": {"note": nasty},
    }
    (cef,) = parse_cef([cef_line(document, 5, title="Title | with = signs")], tmp_path)
    assert cef["SignatureID"] == "odd|name\\x" and cef["Name"] == "Title | with = signs" and cef["Severity"] == "6"
    extensions = cef["Extensions"]
    assert extensions["reason"] == nasty and extensions["suser"] == "Ann | Lee" and extensions["suid"] == "u=1"
    assert extensions["externalId"] == "e|1" and extensions["cs1"] == "t=1"
    assert json.loads(extensions["cs6"])["details"]["note"] == nasty


def test_a_syslog_stream_delivers_cef_lines_to_rsyslog(db: str, tmp_path: Path) -> None:
    server = Rsyslog(tmp_path, free_port(), None)
    server.start()
    sender = RunningCollector(quick_settings(db))
    try:
        api = Api(sender, token(db))
        refused = api.call("POST", "/v1/streams", {"name": "w", "url": "https://siem.example.com/", "format": "cef"})
        assert refused.status_code == 400 and "syslog" in refused.json()["message"], refused.text
        made = api.create(name="qradar", kind="syslog", host="127.0.0.1", port=server.port, format="cef", start={"seq": 1})
        assert made["format"] == "cef"
        ids = ingest(sender, 4) + ingest(sender, 2, category="site_access")
        wait_until(lambda: api.get(made["id"])["cursor"] >= count(db), 60, "the stream to catch up")
        lines = server.lines(count(db))
    finally:
        sender.stop()
        server.stop()
    messages = [fields[-1].removeprefix("\ufeff") for fields in lines]
    parsed = parse_cef(messages, tmp_path)
    stored = {r["id"]: r for r in rows(db, "SELECT id, seq, doc->>'event' AS event FROM events WHERE tenant = 'acme'")}
    by_id = {cef["Extensions"]["externalId"]: (fields, cef) for fields, cef in zip(lines, parsed, strict=True)}
    for event_id in ids:
        fields, cef = by_id[event_id]
        assert cef["SignatureID"] == stored[event_id]["event"] and cef["Extensions"]["cn1"] == str(stored[event_id]["seq"])
        assert fields[5] == stored[event_id]["event"], "the syslog header's MSGID, from the stored document"
