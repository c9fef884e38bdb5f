"""A newcomer's first hour: commands run from another folder say where they looked, a real
``otaudit serve`` writes only JSON lines to stderr, ``flush()`` tells delivered from rejected,
counts read as English, and plans and events read as the reference pages show them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from support import REPO, RunningCollector, otaudit, settings_for
from test_api_reads import ROLE, send, set_plan, token
from test_sdk_delivery import client_for, record_good

import otaudit_sdk as audit
from otaudit_collector._text import plural
from otaudit_collector.core.catalog import bundled_catalog_dirs, load_catalogs

# The environment of a newcomer's shell: no otaudit settings, no XDG_RUNTIME_DIR (ssh, cron, a container).
CLEAN = {k: v for k, v in os.environ.items() if not k.startswith(("OTAUDIT_", "GRPC_")) and k != "XDG_RUNTIME_DIR"}


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "otaudit_collector", *args]
    return subprocess.run(command, check=False, cwd=cwd, env=CLEAN, capture_output=True, text=True, timeout=60)


# -- commands from another folder ------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["tenant", "list"],
        ["token", "list"],
        ["token", "create", "--tenant", "acme", "--role", "admin"],
        ["rejects", "list"],
        ["retention", "run", "--dry-run"],
        ["migrate"],
        ["export", "--tenant", "acme", "-o", "-"],
    ],
    ids=lambda a: " ".join(a[:2]),
)
def test_a_command_from_another_folder_says_where_it_looked_and_creates_nothing(tmp_path: Path, args: list[str]) -> None:
    done = _run(args, tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout == ""
    message = done.stderr
    assert f"no otaudit database in {tmp_path / 'otaudit-data'}" in message
    for way in ("--data-dir", "OTAUDIT_DATA_DIR", "--database-url", "OTAUDIT_DATABASE_URL", "otaudit serve"):
        assert way in message, message
    assert not (tmp_path / "otaudit-data").exists(), "an empty embedded database was created"
    assert "Traceback" not in message and "RuntimeDirWarning" not in message


# -- a real collector: only JSON lines on stderr ----------------------------------------------------


def test_serve_writes_only_json_lines_to_stderr_at_start_and_stop(tmp_path: Path) -> None:
    env = {**CLEAN, "OTAUDIT_GRPC_PORT": "0", "OTAUDIT_HTTP_PORT": "0", "OTAUDIT_API_PORT": "0"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "otaudit_collector", "serve", "--data-dir", str(tmp_path / "data")],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        banner = []
        for line in proc.stdout:
            banner.append(line)
            if line.startswith("Send events"):
                break
        assert banner and banner[-1].startswith("Send events"), "".join(banner)
        grpc_target = next(line.split()[1] for line in banner if line.strip().startswith("OTLP/gRPC"))
        send(grpc_target, [(ROLE, None)])  # gRPC has served a call before the stop
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    assert proc.returncode == 0, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines, "the collector logged nothing at all"
    for line in lines:
        try:
            json.loads(line)
        except ValueError:
            pytest.fail(f"a line on stderr is not JSON: {line!r}\n{stderr}")
    assert "RuntimeDirWarning" not in stderr and "fork_posix" not in stderr
    bundled = load_catalogs(bundled_catalog_dirs())  # the banner names what was loaded: the bundled catalogs
    events = sum(len(c.events) for c in bundled.categories.values())
    assert f"{len(bundled.categories)} categories, {events} events" in "".join(banner)


# -- flush() --------------------------------------------------------------------------------------


def test_flush_tells_delivered_from_rejected_and_pending(collector: RunningCollector, tmp_path: Path) -> None:
    client = client_for(collector.http_url, tmp_path / "buffer", "http")
    try:
        record_good(client)
        delivered = client.flush(30)
        assert delivered and delivered.all_delivered
        assert (delivered.delivered, delivered.rejected, delivered.expired, delivered.pending) == (1, 0, 0, 0)

        client.record("updateRole", category="accounts_configuration", actor=audit.Actor.user("u-1"))  # no target: rejected
        rejected = client.flush(30)
        assert rejected, "nothing is pending: the event was settled (dead-lettered)"
        assert not rejected.all_delivered
        assert (rejected.delivered, rejected.rejected, rejected.pending) == (0, 1, 0)
    finally:
        client.shutdown(5)

    nowhere = client_for("http://127.0.0.1:9/v1/logs", tmp_path / "nowhere", "http")  # nothing listens on port 9
    try:
        record_good(nowhere)
        pending = nowhere.flush(0.2)
        assert not pending and pending.pending == 1 and pending.delivered == 0
    finally:
        nowhere.shutdown(0)


# -- plurals ----------------------------------------------------------------------------------------


def test_counts_read_as_english(collector: RunningCollector, tmp_path: Path) -> None:
    assert [plural(n, "event") for n in (0, 1, 2)] == ["0 events", "1 event", "2 events"]
    assert plural(1, "category", "categories") == "1 category" and plural(1234, "event", thousands=True) == "1,234 events"

    send(collector.grpc_target, [(ROLE, None)])
    listed = otaudit("tenant", "list", "--database-url", collector.conninfo)
    assert listed.returncode == 0, listed.stderr
    assert "\t1 event\n" in listed.stdout and "1 events" not in listed.stdout

    one = tmp_path / "one"
    one.mkdir()
    catalog = json.loads((REPO / "catalogs" / "site_access.json").read_text(encoding="utf-8"))
    catalog["events"] = {"siteAccess": catalog["events"]["siteAccess"]}  # one event
    (one / "site_access.json").write_text(json.dumps(catalog), encoding="utf-8")
    linted = otaudit("catalog", "lint", str(one))
    assert linted.returncode == 0, linted.stdout + linted.stderr
    assert linted.stdout.strip() == "ok: 1 catalog file, 1 category, 1 event"


# -- plans and titles as the reference pages show them ----------------------------------------------


def test_a_plan_that_keeps_forever_says_so_and_events_have_titles(db: str) -> None:
    forever = {"description": "Keeps everything.", "categories": ["*"], "retention_days": None, "query_window_days": None}
    running = RunningCollector(settings_for(db, {("plans", "forever"): forever, ("auth", "token_cache_seconds"): 0}))
    try:
        headers = {"Authorization": f"Bearer {token(db, 'acme')}"}
        basic = requests.get(f"{running.api_url}/v1/whoami", headers=headers, timeout=30).json()
        assert (basic["plan"], basic["retention_days"], basic["retention"], basic["query_window_days"]) == (
            "basic",
            365,
            "365 days",
            365,
        )
        set_plan(db, "acme", "forever")
        me = requests.get(f"{running.api_url}/v1/tenants/acme/plan", headers=headers, timeout=30).json()
        assert me["retention_days"] is None and me["retention"] == "kept indefinitely"

        catalog = requests.get(f"{running.api_url}/v1/catalog", headers=headers, timeout=30).json()
        events = {(c["category"], e["event"]): e for c in catalog["categories"] for e in c["events"]}
        assert events[("accounts_configuration", "updateRole")]["title"] == "Role updated"
        assert events[("site_access", "siteAccess")]["title"] == "Site accessed"
        assert all(e["title"] for e in events.values())
    finally:
        running.stop()


def test_every_bundled_event_has_a_title() -> None:
    files = sorted((REPO / "catalogs").glob("*.json")) + sorted((REPO / "catalogs" / "examples").rglob("*.json"))
    assert files
    for path in files:
        for name, event in json.loads(path.read_text(encoding="utf-8"))["events"].items():
            title = event.get("title")
            assert isinstance(title, str) and 0 < len(title) <= 120 and title != name, f"{path.name}: {name} has no title"
