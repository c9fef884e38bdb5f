"""Streams to another OTLP endpoint and to a syslog receiver, made through the API: their
settings checked, the OTLP receiver's credential stored encrypted and never shown again."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from rsyslogd import Rsyslog, free_port
from stream_helpers import Api, ingest, quick_settings, token
from support import RunningCollector, count, rows, settings_for, wait_until

from otaudit_collector.core.query import DOCUMENT_SQL


@pytest.fixture
def running(db: str) -> Iterator[RunningCollector]:
    collector = RunningCollector(quick_settings(db, {("streams", "enabled"): False}))
    yield collector
    collector.stop()


def _refused(answer: requests.Response, field: str, *words: str, what: str = "") -> None:
    assert answer.status_code == 400, (what, answer.text)
    message = answer.json()["message"]
    assert message.startswith(f"{field}:"), (what, message)
    for word in words:
        assert word in message, (what, message)


def test_otlp_and_syslog_streams_are_made_with_their_settings_checked(
    running: RunningCollector, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    api = Api(running, token(running.conninfo))
    credential = "Bearer otaudit_0123456789ab_" + "k" * 40
    made = api.create(name="other", kind="otlp", endpoint="https://otel.example.com:4318", protocol="grpc", auth=credential)
    assert made["kind"] == "otlp" and "secret" not in made
    assert made["destination"] == {"endpoint": "https://otel.example.com:4318", "protocol": "grpc"}
    plain = api.create(name="plain", kind="otlp", endpoint="http://127.0.0.1:4318")
    assert plain["destination"] == {"endpoint": "http://127.0.0.1:4318", "protocol": "http"}
    stored = rows(running.conninfo, "SELECT id, secret FROM streams ORDER BY name")
    assert stored[0]["secret"] is not None and credential.encode() not in bytes(stored[0]["secret"])
    assert stored[1]["secret"] is None, "no credential given, none stored"
    syslog = api.create(name="siem", kind="syslog", host="siem.example.com", port=6514, tls=True)
    assert syslog["destination"] == {"host": "siem.example.com", "port": 6514, "tls": True} and "secret" not in syslog
    texts = [api.call("GET", "/v1/streams").text, api.call("GET", f"/v1/streams/{made['id']}").text]
    texts.append(api.call("PATCH", f"/v1/streams/{made['id']}", {"protocol": "http"}).text)
    trail = rows(running.conninfo, "SELECT doc::text AS doc FROM events")
    assert not any(credential in text for text in [*texts, *(r["doc"] for r in trail), caplog.text])
    assert api.get(made["id"])["destination"]["protocol"] == "http"

    post = {
        "no endpoint": ({"kind": "otlp"}, "endpoint", "the receiver's URL"),
        "bad endpoint": ({"kind": "otlp", "endpoint": "ftp://x"}, "endpoint", "https://"),
        "protocol": ({"kind": "otlp", "endpoint": "http://x:1", "protocol": "thrift"}, "protocol", '"grpc" or "http"'),
        "header": ({"kind": "otlp", "endpoint": "http://x:1", "auth_header": "a b"}, "auth_header", "header name"),
        "auth": ({"kind": "otlp", "endpoint": "http://x:1", "auth": "line\nbreak"}, "auth", "credential"),
        "no port": ({"kind": "syslog", "host": "siem"}, "port", "TCP port"),
        "bad port": ({"kind": "syslog", "host": "siem", "port": 70000}, "port", "65535"),
        "bad host": ({"kind": "syslog", "host": "a host", "port": 514}, "host", "host name"),
        "tls": ({"kind": "syslog", "host": "siem", "port": 514, "tls": "yes"}, "tls", "true"),
        "cross": ({"kind": "syslog", "host": "siem", "port": 514, "url": "https://x"}, "url", "not a setting of a syslog stream"),
        "auth on a webhook": ({"url": "https://x.example.com/", "auth": "x"}, "auth", "not a setting of a webhook stream"),
    }
    for what, (body, field, said) in post.items():
        _refused(api.call("POST", "/v1/streams", {"name": "bad", **body}), field, said, what=what)
    _refused(api.call("PATCH", f"/v1/streams/{made['id']}", {"auth": "Bearer new"}), "auth", "make a new stream")
    _refused(api.call("PATCH", f"/v1/streams/{syslog['id']}", {"port": 0}), "port", "from 1")


def test_an_otlp_stream_delivers_the_trail_to_another_otaudit(db: str, second_db: str) -> None:
    """The whole path: a stream made through the API, the runner, the OTLP transport over HTTP
    with the receiver's ingest token, and the second collector storing each event once."""
    receiver = RunningCollector(
        settings_for(second_db, {("auth", "require_ingest_token"): True, ("auth", "token_cache_seconds"): 0})
    )
    sender = RunningCollector(quick_settings(db))
    try:
        credential = f"Bearer {token(second_db, role='ingest')}"
        api = Api(sender, token(db))
        host, port = receiver.endpoints.http
        made = api.create(name="relay", kind="otlp", endpoint=f"http://{host}:{port}", auth=credential, start={"seq": 1})
        ids = ingest(sender, 12)  # more than a batch (10)

        def relayed() -> list[dict[str, Any]]:
            return rows(second_db, "SELECT id, (doc->'attributes'->>'otaudit.seq')::bigint AS seq FROM events ORDER BY seq")

        wait_until(lambda: set(ids) <= {r["id"] for r in relayed()}, 60, "the events in the second otaudit")
        sent = rows(
            db, "SELECT id, seq FROM events WHERE tenant = 'acme' AND seq <= %s ORDER BY seq", (api.get(made["id"])["cursor"],)
        )
        got = relayed()
        assert [(r["id"], r["seq"]) for r in got] == [(r["id"], r["seq"]) for r in sent], "each once, in the sender's seq order"
        health = api.get(made["id"])
        assert health["attempts"] == 0 and health["delivered"] == len(sent) and health["last_error"] is None
    finally:
        sender.stop()
        receiver.stop()


def test_a_syslog_stream_delivers_the_trail_to_rsyslog(db: str, tmp_path: Path) -> None:
    """The whole path to Debian's rsyslogd (octet-counted RFC 5424 over TCP), read back from its file."""
    server = Rsyslog(tmp_path, free_port(), None)
    server.start()
    sender = RunningCollector(quick_settings(db))
    try:
        api = Api(sender, token(db))
        made = api.create(name="siem", kind="syslog", host="127.0.0.1", port=server.port, start={"seq": 1})
        ids = ingest(sender, 12)
        wait_until(lambda: api.get(made["id"])["cursor"] >= count(db), 60, "the stream to catch up")
        lines = server.lines(count(db))
        sent = rows(db, f"SELECT seq, id, {DOCUMENT_SQL} AS text FROM events WHERE tenant = 'acme' ORDER BY seq")
        assert [json.loads(fields[-1].removeprefix("\ufeff"))["id"] for fields in lines] == [r["id"] for r in sent]
        assert set(ids) <= {r["id"] for r in sent}
        for fields, row in zip(lines, sent, strict=True):
            assert fields[-1].removeprefix("\ufeff") == row["text"], "the JSON document, byte for byte"
            assert f'seq="{row["seq"]}" id="{row["id"]}"' in fields[-2], fields[-2]
    finally:
        sender.stop()
        server.stop()
