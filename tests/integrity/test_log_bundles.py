"""Verifiable export bundles made by the collector (API, export jobs, ``otaudit export --bundle``)
and checked offline by the standalone verifier (``otaudit-verify``), which needs no database."""

from __future__ import annotations

import copy
import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests
from support import RunningCollector, otaudit, wait_until
from test_api_reads import GROUP, ROLE, send, token

from otaudit_verify.bundle import BundleError, verify_bundle


def _doc(n: int) -> dict[str, Any]:
    doc = copy.deepcopy(ROLE)
    doc["actor"] = {"type": "user", "id": f"u-{n}", "email": f"user{n}@acme.test", "name": f"User {n}"}
    doc["details"] = {"n": n}
    return doc


@pytest.fixture
def trail(collector: RunningCollector) -> dict[str, Any]:
    """acme: 60 role updates and 5 inventory events (outside the basic plan), checkpointed; the key to pin."""
    send(collector.grpc_target, [(_doc(n), None) for n in range(60)])
    send(collector.grpc_target, [(copy.deepcopy(GROUP), None) for _ in range(5)])
    collector.call(collector.collector.make_checkpoints_now())
    headers = {"Authorization": f"Bearer {token(collector.conninfo, 'acme')}"}
    vkey = requests.get(collector.api_url + "/v1/log/key", headers=headers, timeout=30).text.splitlines()[0]
    return {"headers": headers, "vkey": vkey}


def test_a_streamed_bundle_verifies_offline_with_the_published_key(collector: RunningCollector, trail: dict[str, Any]) -> None:
    answer = requests.get(collector.api_url + "/v1/export", params={"format": "bundle"}, headers=trail["headers"], timeout=60)
    assert answer.status_code == 200 and answer.headers["Content-Type"] == "application/zip", answer.text[:300]
    report = verify_bundle(io.BytesIO(answer.content), trusted_keys=[trail["vkey"]])
    # The plan reads accounts_configuration, not inventory: 60 events exported, and the 5 others
    # (seq 61-65) are past the last exported one, so the range ends at 60.
    assert (report.tenant, report.events, report.first_seq, report.last_seq, report.tree_size) == ("acme", 60, 1, 60, 65)
    assert report.key_pinned and report.key == trail["vkey"]
    with zipfile.ZipFile(io.BytesIO(answer.content)) as bundle:
        assert b"createAssetGroup" not in bundle.read("events.ndjson")


def test_an_export_job_makes_a_bundle_too(collector: RunningCollector, trail: dict[str, Any]) -> None:
    made = requests.post(collector.api_url + "/v1/exports", json={"format": "bundle", "actor": ["u-7"]}, headers=trail["headers"], timeout=60)
    assert made.status_code == 202, made.text
    job_url = f"{collector.api_url}/v1/exports/{made.json()['id']}"
    wait_until(lambda: requests.get(job_url, headers=trail["headers"], timeout=30).json()["state"] == "done", 60, "the job")
    job = requests.get(job_url, headers=trail["headers"], timeout=30).json()
    content = requests.get(job["download_url"], timeout=60).content
    report = verify_bundle(io.BytesIO(content), trusted_keys=[trail["vkey"]])
    # One event exported; its range is its own leaf, proved against the whole tree.
    assert (report.events, report.first_seq, report.last_seq) == (1, 8, 8)


def test_a_bundle_is_refused_when_the_stored_log_does_not_match(collector: RunningCollector, trail: dict[str, Any]) -> None:
    with psycopg.connect(collector.conninfo, autocommit=True) as conn:
        conn.execute("UPDATE events SET doc = jsonb_set(doc, '{details,n}', '999') WHERE tenant = 'acme' AND seq = 30")
    answer = requests.get(collector.api_url + "/v1/export", params={"format": "bundle"}, headers=trail["headers"], timeout=60)
    assert answer.status_code == 409, answer.text[:300]
    assert "seq 30" in answer.json()["message"] and "altered" in answer.json()["message"]


def test_the_cli_exports_a_bundle_that_the_standalone_verifier_checks(
    collector: RunningCollector, trail: dict[str, Any], tmp_path: Path
) -> None:
    env = {"OTAUDIT_DATABASE_URL": collector.conninfo}
    path = tmp_path / "acme.zip"
    with psycopg.connect(collector.conninfo) as conn:
        stored = conn.execute("SELECT count(*) FROM events WHERE tenant = 'acme'").fetchone()[0]  # type: ignore[index]
    done = otaudit("export", "--tenant", "acme", "--bundle", "-o", str(path), "--no-progress", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    # The operator's export reads every category, and ends at a checkpoint it signed first.
    checked = subprocess.run(
        [sys.executable, "-m", "otaudit_verify.cli", str(path), "--key", trail["vkey"]], capture_output=True, text=True, timeout=120, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # Every stored event (the 65 sent and the API session's own), each checked against its leaf.
    assert "tenant 'acme'" in checked.stdout and f"{stored} exported" in checked.stdout and "pinned" in checked.stdout
    # Another key (someone else's published key) does not verify it.
    other = requests.get(
        collector.api_url + "/v1/log/key", headers={"Authorization": f"Bearer {token(collector.conninfo, 'globex')}"}, timeout=30
    ).text.splitlines()[0]
    refused = subprocess.run(
        [sys.executable, "-m", "otaudit_verify.cli", str(path), "--key", other], capture_output=True, text=True, timeout=120, check=False
    )
    assert refused.returncode == 1 and "FAILED" in refused.stderr
    # An event edited inside the bundle is named.
    edited = tmp_path / "edited.zip"
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(edited, "w") as target:
        for item in source.infolist():
            data = source.read(item)
            if item.filename == "events.ndjson":
                lines = [json.loads(line) for line in data.splitlines()]
                lines[12]["event"]["details"]["n"] = 1000  # seq 13's event
                data = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
            target.writestr(item, data)
    with pytest.raises(BundleError, match="seq 13"):
        verify_bundle(edited, trusted_keys=[trail["vkey"]])


def test_no_bundle_before_the_first_checkpoint(db: str) -> None:
    from support import settings_for

    running = RunningCollector(settings_for(db, {("integrity", "checkpoint_seconds"): 3600}))
    try:
        send(running.grpc_target, [(_doc(1), None)])
        headers = {"Authorization": f"Bearer {token(db, 'acme')}"}
        answer = requests.get(running.api_url + "/v1/export", params={"format": "bundle"}, headers=headers, timeout=60)
        assert answer.status_code == 409 and "no signed checkpoint yet" in answer.json()["message"]
    finally:
        running.stop()
