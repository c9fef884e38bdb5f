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
from tls_files import certificates

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


def test_tls_settings_of_syslog_and_otlp_streams_are_checked(running: RunningCollector, tmp_path: Path) -> None:
    api = Api(running, token(running.conninfo))
    ca = certificates(tmp_path)[0].read_text()
    syslog = {"kind": "syslog", "host": "siem.example.com", "port": 6514}
    refused = {
        "not PEM": ({**syslog, "tls": True, "ca": "hello"}, "ca", "PEM certificate"),
        "PEM that is no certificate": (
            {**syslog, "tls": True, "ca": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"},
            "ca",
            "can load",
        ),
        "ca without tls": ({**syslog, "ca": ca}, "ca", '"tls": true'),
        "server_name without tls": ({**syslog, "server_name": "siem"}, "server_name", '"tls": true'),
        "facility": ({**syslog, "facility": 24}, "facility", "23"),
        "sd_id": ({**syslog, "sd_id": "audit"}, "sd_id", "private enterprise number"),
        "hostname": ({**syslog, "hostname": "a host"}, "hostname", "hostname"),
        "ca for plain http": ({"kind": "otlp", "endpoint": "http://otel.example.com:4318", "ca": ca}, "ca", "http://"),
    }
    for what, (body, field, said) in refused.items():
        _refused(api.call("POST", "/v1/streams", {"name": "bad", **body}), field, said, what=what)
    made = api.create(
        name="qradar", **syslog, tls=True, ca=ca, server_name="siem", facility=4, sd_id="audit@1.2.3", hostname="c-9"
    )
    assert made["destination"]["ca"] == ca and made["destination"]["sd_id"] == "audit@1.2.3"
    assert api.create(name="otel", kind="otlp", endpoint="https://otel.example.com:4318", ca=ca)["destination"]["ca"] == ca


def test_a_syslog_stream_over_tls_to_a_private_ca_with_its_own_header(db: str, tmp_path: Path) -> None:
    """The CA, the certificate's name and the header's facility, SD-ID and HOSTNAME, given through
    the API, reach rsyslogd over RFC 5425 TLS (gtls)."""
    server = Rsyslog(tmp_path, free_port(), certificates(tmp_path))
    server.start()
    sender = RunningCollector(quick_settings(db))
    try:
        api = Api(sender, token(db))
        ca = (tmp_path / "ca.pem").read_text()
        made = api.create(
            name="siem",
            kind="syslog",
            host="127.0.0.1",
            port=server.port,
            tls=True,
            ca=ca,
            server_name="localhost",
            facility=4,
            sd_id="audit@1.2.3",
            hostname="collector-9",
            start={"seq": 1},
        )
        ids = ingest(sender, 3)
        wait_until(lambda: api.get(made["id"])["cursor"] >= count(db), 60, "the stream to catch up")
        lines = server.lines(count(db))
    finally:
        sender.stop()
        server.stop()
    by_id = {json.loads(fields[-1].removeprefix("\ufeff"))["id"]: fields for fields in lines}
    for event_id in ids:
        fields = by_id[event_id]
        assert fields[1] == "37" and fields[2] == "collector-9", fields[:4]  # facility 4 * 8 + notice (5)
        assert fields[-2].startswith("[audit@1.2.3 "), fields[-2]


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


def test_a_declared_stream_reads_its_ca_file_at_start(db: str, tmp_path: Path) -> None:
    from otaudit_collector.config import ConfigError

    ca = certificates(tmp_path)[0]
    declared = [{"name": "siem", "tenants": ["acme"], "kind": "syslog", "host": "siem.example.com", "port": 6514, "tls": True}]
    collector = RunningCollector(quick_settings(db, {("streams", "declared"): [{**declared[0], "ca_file": str(ca)}]}))
    try:
        assert Api(collector, token(db)).get("cfg_siem")["destination"]["ca"] == ca.read_text()
    finally:
        collector.stop()
    missing = [{**declared[0], "ca_file": str(tmp_path / "nowhere.pem")}]
    with pytest.raises(ConfigError, match=r"streams\.declared\[0\]\.ca_file: cannot be read"):
        RunningCollector(quick_settings(db, {("streams", "declared"): missing}))
