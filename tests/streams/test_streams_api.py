"""The stream routes (admin only, the token's tenant, the plan), their errors, the secret shown
once and never again nor logged, the self-audit of every change, declared streams from the
configuration, and the file transport end to end."""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import psycopg
import pytest
import requests
from stream_helpers import INVENTORY, Api, ingest, quick_settings, token
from stream_receiver import Receiver
from support import RunningCollector, rows, wait_until

from otaudit_collector.config import ConfigError

SECRET = "whsec_" + "s" * 43


def _error(answer: requests.Response, status: int, code: str, *words: str) -> None:
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert set(body) == {"error", "message"} and body["error"] == code, body
    for word in words:
        assert word in body["message"], body["message"]


def test_every_api_error_says_what_to_do(running: RunningCollector, receiver: Receiver) -> None:
    conninfo = running.conninfo
    api = Api(running, token(conninfo))
    url = receiver.url
    for headers, status in (({}, 401), ({"Authorization": "Bearer nope"}, 401)):
        answer = requests.get(running.api_url + "/v1/streams", headers=headers, timeout=30)
        assert answer.status_code == status
    for role in ("auditor", "ingest"):
        other = Api(running, token(conninfo, role=role))
        for method, path in (
            ("GET", "/v1/streams"),
            ("POST", "/v1/streams"),
            ("GET", "/v1/streams/x"),
            ("DELETE", "/v1/streams/x"),
        ):
            _error(other.call(method, path, {"name": "a", "url": url}), 403, "forbidden")
    bad = {
        "name": ({"name": "no spaces", "url": url}, "bad_stream", "name:"),
        "missing url": ({"name": "a"}, "bad_stream", "url:"),
        "unknown": ({"name": "a", "url": url, "colour": "red"}, "bad_stream", "colour: unknown field"),
        "scheme": ({"name": "a", "url": "ftp://x/"}, "bad_stream", "https://"),
        "password": ({"name": "a", "url": "https://u:p@x/"}, "bad_stream", "password"),
        "file": ({"name": "a", "kind": "file", "folder": "/tmp"}, "bad_stream", "streams.declared"),
        "term": ({"name": "a", "url": url, "filter": {"since": "2026-01-01T00:00:00Z"}}, "bad_stream", "start says"),
        "q": ({"name": "a", "url": url, "filter": {"q": "bogus:x"}}, "bad_filter", "q:"),
        "outcome": ({"name": "a", "url": url, "filter": {"outcome": "maybe"}}, "bad_filter", "outcome:"),
        "start": ({"name": "a", "url": url, "start": "yesterday"}, "bad_stream", "start:"),
        "seq": ({"name": "a", "url": url, "start": {"seq": 0}}, "bad_stream", "start.seq"),
        "future": ({"name": "a", "url": url, "start": {"time": "2999-01-01T00:00:00Z"}}, "bad_stream", "future"),
        "not an object": ([1, 2], "bad_stream", "body:"),
    }
    for what, (body, code, said) in bad.items():
        answer = api.call("POST", "/v1/streams", body)
        assert answer.status_code == 400, what
        _error(answer, 400, code, said)
    not_json = requests.post(running.api_url + "/v1/streams", data=b"{", headers=api.headers, timeout=30)
    _error(not_json, 400, "bad_stream", "not JSON")
    _error(
        api.call("POST", "/v1/streams", {"name": "a", "url": url, "filter": {"category": [INVENTORY]}}),
        403,
        "plan_forbids",
        "'pro'",
    )
    made = api.create(name="siem", url=url)
    _error(api.call("POST", "/v1/streams", {"name": "siem", "url": url}), 409, "name_taken", "another name")
    for method, path in (("GET", ""), ("PATCH", ""), ("DELETE", ""), ("POST", "/pause"), ("POST", "/resume")):
        _error(api.call(method, f"/v1/streams/str_nothing{path}", {"name": "b"}), 404, "not_found", "GET /v1/streams")
    changes = {
        "kind": ({"kind": "file"}, "make a new stream"),
        "start": ({"start": "now"}, "make a new stream"),
        "empty": ({}, "nothing to change"),
        "url": ({"url": "gopher://x"}, "https://"),
        "q": ({"filter": {"q": "nope"}}, "q:"),
    }
    for what, (body, said) in changes.items():
        answer = api.call("PATCH", f"/v1/streams/{made['id']}", body)
        assert answer.status_code == 400, what
        assert said in answer.json()["message"], (what, answer.text)
    _error(api.call("PATCH", f"/v1/streams/{made['id']}", {"filter": {"category": INVENTORY}}), 403, "plan_forbids")
    second = api.create(name="second", url=url)
    _error(api.call("PATCH", f"/v1/streams/{second['id']}", {"name": "siem"}), 409, "name_taken")
    # Another tenant's admin sees none of acme's streams.
    globex = Api(running, token(conninfo, tenant="globex"))
    assert globex.call("GET", "/v1/streams").json() == {"streams": []}
    _error(globex.call("GET", f"/v1/streams/{made['id']}"), 404, "not_found")
    _error(globex.call("DELETE", f"/v1/streams/{made['id']}"), 404, "not_found")
    changed = api.call("PATCH", f"/v1/streams/{made['id']}", {"name": "siem-2", "filter": {"category": "site_access"}})
    assert changed.status_code == 200 and changed.json()["name"] == "siem-2"
    assert changed.json()["filter"] == {"category": ["site_access"]}
    assert api.call("DELETE", f"/v1/streams/{made['id']}").status_code == 204
    _error(api.call("GET", f"/v1/streams/{made['id']}"), 404, "not_found")


def test_the_secret_is_shown_once_never_again_and_never_logged(
    running: RunningCollector, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    api = Api(running, token(running.conninfo))
    made = api.create(name="siem", url=receiver.url)
    secret = made["secret"]
    assert secret.startswith("whsec_")
    receiver.secret = secret
    ingest(running, 3)
    wait_until(lambda: len(receiver.records()) >= 3, 30, "signed deliveries")
    assert receiver.bad_signatures == 0
    answers = [
        api.call("GET", "/v1/streams").text,
        api.call("GET", f"/v1/streams/{made['id']}").text,
        api.call("PATCH", f"/v1/streams/{made['id']}", {"timeout_seconds": 5}).text,
        api.call("POST", f"/v1/streams/{made['id']}/pause").text,
        api.call("POST", f"/v1/streams/{made['id']}/resume").text,
    ]
    for text in answers:
        assert secret not in text and '"secret"' not in text
    stored = rows(running.conninfo, "SELECT secret FROM streams WHERE id = %s", (made["id"],))[0]["secret"]
    assert secret.encode() not in bytes(stored)
    trail = rows(running.conninfo, "SELECT doc::text AS doc FROM events WHERE tenant = 'acme'")
    assert not any(secret in r["doc"] for r in trail)
    receiver.status = 401  # the receiver's words are logged and stored: never the secret or the signature
    ingest(running, 1)
    wait_until(lambda: api.get(made["id"])["attempts"] > 0, 30, "a failure")
    assert secret not in caplog.text and secret not in str(api.get(made["id"]))


def test_every_change_is_recorded_in_the_tenants_trail(running: RunningCollector, receiver: Receiver) -> None:
    api = Api(running, token(running.conninfo))
    made = api.create(name="siem", url=receiver.url + "?token=hidden", filter={"category": "site_access"})
    api.call("PATCH", f"/v1/streams/{made['id']}", {"name": "siem-2"})
    api.call("POST", f"/v1/streams/{made['id']}/pause")
    api.call("POST", f"/v1/streams/{made['id']}/pause")  # already paused: nothing to record
    api.call("POST", f"/v1/streams/{made['id']}/resume")
    api.call("DELETE", f"/v1/streams/{made['id']}")
    found = rows(
        running.conninfo,
        "SELECT event, doc FROM events WHERE tenant = 'acme' AND category = 'data_extraction' ORDER BY seq",
    )
    assert [r["event"] for r in found] == ["createStream", "updateStream", "updateStream", "updateStream", "deleteStream"]
    assert [r["doc"]["details"].get("change") for r in found[1:4]] == ["settings", "pause", "resume"]
    for r in found:
        assert r["doc"]["target"]["type"] == "stream" and r["doc"]["target"]["id"] == made["id"]
        assert r["doc"]["actor"]["type"] == "api_key"
        assert r["doc"]["details"]["destination"] == receiver.url  # without its query
    assert found[0]["doc"]["details"]["start"] == "now"


def test_declared_streams_come_from_the_configuration(db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file stream for every tenant and a webhook for one, its secret from the environment: made at start,
    listed but not changed through the API; the file transport writes every event, in order."""
    for tenant in ("acme", "globex"):
        with psycopg.connect(db) as conn:
            conn.execute("INSERT INTO tenants (tenant, plan) VALUES (%s, 'basic')", (tenant,))
    monkeypatch.setenv("OTAUDIT_TEST_HOOK_SECRET", SECRET)
    archive = tmp_path / "archive"
    archive.mkdir()
    hook = Receiver(secret=SECRET)
    declared = [
        {"name": "archive", "tenants": "*", "kind": "file", "folder": str(archive), "start": {"seq": 1}},
        {"name": "siem", "tenants": ["acme"], "kind": "webhook", "url": hook.url, "secret_env": "OTAUDIT_TEST_HOOK_SECRET"},
    ]
    collector = RunningCollector(quick_settings(db, {("streams", "declared"): declared}))
    try:
        api = Api(collector, token(db))
        listed = {s["id"]: s for s in api.call("GET", "/v1/streams").json()["streams"]}
        assert set(listed) == {"cfg_archive", "cfg_siem"} and all(s["declared"] for s in listed.values())
        globex = Api(collector, token(db, tenant="globex"))
        assert [s["id"] for s in globex.call("GET", "/v1/streams").json()["streams"]] == ["cfg_archive"]
        for method, path in (("PATCH", ""), ("DELETE", ""), ("POST", "/pause"), ("POST", "/resume")):
            _error(api.call(method, f"/v1/streams/cfg_siem{path}", {"name": "x"}), 409, "declared", "streams.declared")
        ids = ingest(collector, 12)
        wait_until(lambda: {r["id"] for r in hook.records()} >= set(ids), 30, "the declared webhook")
        assert hook.bad_signatures == 0
        wait_until(lambda: api.get("cfg_archive")["cursor"] >= max(r["seq"] for r in hook.records()), 30, "the archive")
    finally:
        collector.stop()  # the file transport finishes its open file on close
        hook.stop()
    lines = []  # the finished files in name (seq) order, then the one still open
    for path in [*sorted(archive.glob("acme-cfg_archive-*.ndjson.gz")), *archive.glob(".acme-cfg_archive.open.ndjson.gz")]:
        lines += gzip.decompress(path.read_bytes()).decode().splitlines()
    assert lines, sorted(p.name for p in archive.iterdir())
    seqs = [json.loads(line)["seq"] for line in lines]
    expected = [
        r["seq"] for r in rows(db, "SELECT seq FROM events WHERE tenant = 'acme' AND seq <= %s ORDER BY seq", (seqs[-1],))
    ]
    assert seqs == expected and set(ids) <= {json.loads(line)["id"] for line in lines}


def test_a_declared_webhook_without_its_secret_stops_the_start(db: str) -> None:
    declared = [
        {"name": "siem", "tenants": "*", "kind": "webhook", "url": "https://siem.example.com/", "secret_env": "OTAUDIT_NO_SUCH"}
    ]
    with pytest.raises(ConfigError) as refused:
        RunningCollector(quick_settings(db, {("streams", "declared"): declared}))
    assert "streams.declared[0].secret_env" in str(refused.value) and "OTAUDIT_NO_SUCH" in str(refused.value)
