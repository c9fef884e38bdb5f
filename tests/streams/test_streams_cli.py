"""``otaudit stream``: the stream routes from a terminal, through the API with OTAUDIT_TOKEN."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from stream_helpers import ingest, quick_settings, token
from stream_receiver import Receiver
from support import RunningCollector, otaudit, wait_until


@pytest.fixture
def running(db: str) -> Iterator[RunningCollector]:
    collector = RunningCollector(quick_settings(db))
    yield collector
    collector.stop()


def test_create_list_show_pause_resume_delete(running: RunningCollector) -> None:
    receiver = Receiver()
    env = {"OTAUDIT_TOKEN": token(running.conninfo)}
    url = running.api_url
    try:
        made = otaudit(
            "stream",
            "create",
            "--url",
            url,
            "--name",
            "siem",
            "--webhook",
            receiver.url,
            "--category",
            "accounts_configuration",
            "--start",
            "seq:1",
            env=env,
        )
        assert made.returncode == 0, made.stderr
        lines = made.stdout.splitlines()
        assert lines[0].startswith("made stream str_") and "after seq 0" in lines[0]
        secret = lines[-1]
        assert secret.startswith("whsec_")
        receiver.secret = secret
        stream_id = lines[0].split()[2]
        ingest(running, 2)
        wait_until(lambda: len(receiver.records()) >= 2, 30, "delivery")
        assert receiver.bad_signatures == 0 and {r["category"] for r in receiver.records()} == {"accounts_configuration"}
        listed = otaudit("stream", "list", "--url", url, env=env)
        assert listed.returncode == 0 and stream_id in listed.stdout and "siem" in listed.stdout and secret not in listed.stdout
        shown = otaudit("stream", "show", stream_id, "--url", url, "--json", env=env)
        assert json.loads(shown.stdout)["id"] == stream_id and secret not in shown.stdout
        paused = otaudit("stream", "pause", stream_id, "--url", url, env=env)
        assert paused.returncode == 0 and "is paused" in paused.stdout
        resumed = otaudit("stream", "resume", stream_id, "--url", url, env=env)
        assert resumed.returncode == 0 and "is active" in resumed.stdout
        deleted = otaudit("stream", "delete", stream_id, "--url", url, env=env)
        assert deleted.returncode == 0 and f"deleted stream {stream_id}" in deleted.stdout
        gone = otaudit("stream", "show", stream_id, "--url", url, env=env)
        assert gone.returncode == 1 and "404" in gone.stderr and "GET /v1/streams" in gone.stderr
        refused = otaudit("stream", "create", "--url", url, "--name", "bad name", "--webhook", receiver.url, env=env)
        assert refused.returncode == 1 and "name:" in refused.stderr
        assert otaudit("stream", "list", "--url", url, env={"OTAUDIT_TOKEN": ""}).returncode == 2
    finally:
        receiver.stop()
