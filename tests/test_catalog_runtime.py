"""Catalogs at run time: lint, refusal to start, operator folders, reloads, and replaying rejects after a fix."""

from __future__ import annotations

import json
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from support import REPO, CollectorProcess, RunningCollector, count, good_attributes, otaudit, record, request, rows, settings_for
from test_ingest_clients import EXPORT, grpc_export

from otaudit_collector.cli import main
from otaudit_collector.core.catalog import lint_catalogs, load_catalogs

# -- catalogs written by the tests -----------------------------------------------------


def catalog_doc(category: str, events: dict[str, dict[str, Any]], *, version: str = "1.0.0") -> dict[str, Any]:
    return {
        "category": category,
        "title": category.replace("_", " ").title(),
        "description": f"Test catalog {category}.",
        "version": version,
        "events": {name: {"description": f"Test event {name}.", "schema": schema} for name, schema in events.items()},
    }


def write_catalog(folder: Path, doc: dict[str, Any], name: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name or doc['category']}.json"
    path.write_text(json.dumps(doc, indent=2), encoding="utf-8")
    return path


def widgets(*target_types: str, version: str = "1.0.0") -> dict[str, Any]:
    """A ``widgets`` category whose one event, ``widgetCreated``, accepts these target types."""
    schema = {
        "allOf": [{"$ref": "#/$defs/requiresTarget"}],
        "properties": {"target": {"properties": {"type": {"enum": list(target_types)}}}},
    }
    return catalog_doc("widgets", {"widgetCreated": schema}, version=version)


def widget(target_type: str = "widget") -> LogRecord:
    return record("widgetCreated", good_attributes(**{"audit.category": "widgets", "audit.target.type": target_type}))


def accepted(target: str, rec: LogRecord) -> bool:
    response = grpc_export(target, request([rec]))
    return response.partial_success.rejected_log_records == 0


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting until {what}")
        time.sleep(0.1)


@contextmanager
def running(settings: Any) -> Iterator[RunningCollector]:
    collector = RunningCollector(settings)
    try:
        yield collector
    finally:
        collector.stop()


def only_folder(db: str, folder: Path, reload_interval_seconds: float = 0) -> Any:
    """Settings that load ``folder`` alone (no bundled catalogs: reloads stay fast)."""
    return settings_for(
        db,
        {
            ("catalogs", "bundled"): False,
            ("catalogs", "dirs"): [str(folder)],
            ("catalogs", "reload_interval_seconds"): reload_interval_seconds,
        },
    )


# -- otaudit catalog lint ------------------------------------------------------------


def test_lint_bundled_catalogs_and_packs(capsys: pytest.CaptureFixture[str]) -> None:
    packs = sorted(str(p) for p in (REPO / "catalogs" / "examples").iterdir() if p.is_dir())
    assert main(["catalog", "lint", str(REPO / "catalogs"), *packs]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ok: ") and "problem" not in out


def _example(category: str, event: str) -> dict[str, Any]:
    return {
        "id": "0193b3c4-0000-7000-8000-000000000003",
        "tenant": "acme",
        "category": category,
        "event": event,
        "occurred_at": "2026-11-21T10:15:30.123456Z",
        "outcome": "success",
        "actor": {"type": "user", "id": "u-17"},
        "source": {"service": "widgets-api"},
    }


def broken_folder(folder: Path) -> list[tuple[str, str, str]]:
    """Write a folder of broken catalogs; return (file, JSON path, words) for each problem expected."""
    folder.mkdir(parents=True)
    (folder / "invalid_json.json").write_text('{"category": "invalid_json",\n', encoding="utf-8")
    no_description = catalog_doc("no_description", {"thing": {}})
    del no_description["events"]["thing"]["description"]
    write_catalog(folder, no_description)
    write_catalog(folder, catalog_doc("bad_schema", {"thing": {"type": 12}}))
    write_catalog(folder, catalog_doc("bad_ref", {"thing": {"$ref": "#/$defs/noSuchDefinition"}}))
    bad_example = catalog_doc("bad_example", {"thing": {"$ref": "#/$defs/requiresTarget"}})
    bad_example["events"]["thing"]["examples"] = [_example("bad_example", "thing")]  # no target
    write_catalog(folder, bad_example)
    write_catalog(folder, catalog_doc("other_name", {"thing": {}}), name="wrong_name")
    write_catalog(folder, catalog_doc("dup_a", {"thing": {}}))  # fine on its own
    write_catalog(folder, catalog_doc("dup_a", {"thing": {}}), name="dup_b")  # declares dup_a again
    write_catalog(
        folder, catalog_doc("remote_ref", {"thing": {"properties": {"details": {"$ref": "http://example.invalid/d.json"}}}})
    )
    (folder / "a_folder.json").mkdir()  # unreadable as a file
    write_catalog(folder, widgets("widget"))  # fine
    return [
        ("a_folder.json", "$", "cannot be read"),
        ("remote_ref.json", "$.events['thing'].schema.properties.details['$ref']", "refers outside the envelope"),
        ("invalid_json.json", "$", "is not valid JSON"),
        ("no_description.json", "$.events.thing", "'description' is a required property"),
        ("bad_schema.json", "$.events['thing'].schema.type", "not a valid JSON Schema"),
        ("bad_ref.json", "$.events['thing'].schema", "cannot be compiled"),
        ("bad_example.json", "$.events['thing'].examples[0]", "target"),
        ("wrong_name.json", "$.category", "'other_name' must match the file name 'wrong_name.json'"),
        ("dup_b.json", "$.category", "'dup_a' must match the file name 'dup_b.json'"),
    ]


@pytest.mark.slow
def test_lint_reports_every_problem_with_file_and_json_path(tmp_path: Path) -> None:
    folder = tmp_path / "catalogs"
    expected = broken_folder(folder)
    result = otaudit("catalog", "lint", str(folder))
    assert result.returncode == 1, result
    lines = result.stdout.splitlines()
    for file, path, words in expected:
        prefix = f"{folder / file}: {path}: "
        assert any(line.startswith(prefix) and words in line for line in lines), (prefix, words, result.stdout)
    assert len(lines) == len(expected), result.stdout  # one line per problem, nothing for the good files
    assert f"{len(expected)} problem(s) in 1 folder(s)" in result.stderr


def test_lint_of_several_folders_allows_a_category_to_be_replaced(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    write_catalog(first, widgets("widget"))
    write_catalog(second, widgets("gadget", version="2.0.0"))
    problems, files = lint_catalogs([first, second])
    assert problems == [] and len(files) == 2
    assert load_catalogs([first, second]).categories["widgets"].version == "2.0.0"


def test_lint_without_folders_names_the_setting(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("catalogs:\n  bundled: false\n", encoding="utf-8")
    assert main(["catalog", "lint", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "no catalog folder to load" in err and "catalogs.dirs" in err


@pytest.mark.slow
def test_serve_refuses_to_start_on_a_broken_catalog(db: str, tmp_path: Path) -> None:
    expected = broken_folder(tmp_path / "broken")
    config = tmp_path / "otaudit.yaml"
    config.write_text("catalogs:\n  dirs: [./broken]\n", encoding="utf-8")
    result = otaudit(
        "serve", "--config", str(config), "--database-url", db, "--grpc-port", "0", "--http-port", "0", "--api-port", "0"
    )
    assert result.returncode != 0
    assert "ready" not in result.stdout
    assert "refusing to start" in result.stderr
    for file, path, _ in expected:
        assert f"{tmp_path / 'broken' / file}: {path}: " in result.stderr, result.stderr


# -- operator catalogs ---------------------------------------------------------------


def test_operator_folder_replaces_a_bundled_category_and_adds_new_ones(db: str, tmp_path: Path) -> None:
    folder = tmp_path / "operator"
    ticket_required = {
        "required": ["details"],
        "properties": {"details": {"required": ["ticket"], "properties": {"ticket": {"type": "string"}}}},
    }
    replaced = write_catalog(folder, catalog_doc("accounts_configuration", {"updateRole": ticket_required}, version="9.0.0"))
    write_catalog(folder, widgets("widget"))
    records = [
        record("updateRole", good_attributes()),  # fine for the bundled catalog; this one needs a ticket
        record("updateRole", good_attributes(**{"audit.details": {"ticket": "CHG-1"}})),
        record("addRole", good_attributes()),  # a bundled event the replacement does not define
        widget(),  # a new category
        record(
            "siteAccess",
            {
                "log.record.uid": str(uuid.uuid4()),
                "audit.tenant.id": "acme",
                "audit.category": "site_access",
                "audit.actor.type": "user",
                "user.email": "bob@acme.test",
            },
        ),  # another bundled category, untouched
    ]
    uid = [next(a.value.string_value for a in r.attributes if a.key == "log.record.uid") for r in records]

    with running(settings_for(db, {("catalogs", "dirs"): [str(folder)]})) as collector:
        loaded = collector.collector.catalogs.categories
        assert loaded["accounts_configuration"].source == str(replaced)
        assert loaded["accounts_configuration"].version == "9.0.0"
        assert {"widgets", "site_access", "data_extraction"} <= set(loaded)
        response = grpc_export(collector.grpc_target, request(records))

    assert response.partial_success.rejected_log_records == 2
    message = response.partial_success.error_message
    assert "record 0 " in message and "details" in message and "is a required property" in message
    assert "record 2 " in message and "event 'addRole' is not in the catalog of category 'accounts_configuration'" in message
    assert {r["id"] for r in rows(db)} == {uid[1], uid[3], uid[4]}
    assert count(db, "rejects") == 2


# -- reloads ---------------------------------------------------------------------------


def test_reload_swaps_catalogs_and_a_broken_edit_keeps_the_old_ones(db: str, tmp_path: Path) -> None:
    folder = tmp_path / "catalogs"
    path = write_catalog(folder, widgets("widget"))
    with running(only_folder(db, folder)) as collector:
        assert not accepted(collector.grpc_target, widget("gadget"))

        write_catalog(folder, widgets("widget", "gadget", version="1.1.0"))
        assert collector.call(collector.collector.reload_catalogs("test")) is True
        assert accepted(collector.grpc_target, widget("gadget"))
        in_force = collector.collector.catalogs

        # Broken JSON: refused, the catalogs in force stay.
        path.write_text('{"category": "widgets", ', encoding="utf-8")
        assert collector.call(collector.collector.reload_catalogs("test")) is False
        assert collector.collector.catalogs is in_force
        # Valid JSON that would accept sprockets, but with an example that fails its schema: refused as a whole.
        broken = widgets("sprocket", version="2.0.0")
        broken["events"]["widgetCreated"]["examples"] = [_example("widgets", "widgetCreated")]  # no target
        write_catalog(folder, broken)
        assert collector.call(collector.collector.reload_catalogs("test")) is False
        assert collector.collector.catalogs is in_force
        # A file that cannot be read: refused like any other problem, not a crash of the reload.
        write_catalog(folder, widgets("widget", "gadget", "sprocket", version="2.0.0"))
        (folder / "trap.json").mkdir()
        assert collector.call(collector.collector.reload_catalogs("test")) is False
        assert collector.collector.catalogs is in_force

        assert accepted(collector.grpc_target, widget("gadget"))
        assert not accepted(collector.grpc_target, widget("sprocket"))
    assert count(db) == 2
    assert count(db, "rejects") == 2


def test_a_changed_file_is_reloaded_by_itself(db: str, tmp_path: Path) -> None:
    folder = tmp_path / "catalogs"
    path = write_catalog(folder, widgets("widget"))
    with running(only_folder(db, folder, reload_interval_seconds=0.2)) as collector:
        assert not accepted(collector.grpc_target, widget("gadget"))
        write_catalog(folder, widgets("widget", "gadget", version="1.1.0"))
        wait_until(lambda: accepted(collector.grpc_target, widget("gadget")), "the changed catalog is in force")
        assert collector.collector.catalogs.categories["widgets"].version == "1.1.0"

        in_force = collector.collector.catalogs
        path.write_text("{", encoding="utf-8")
        time.sleep(1.0)  # five checks
        assert collector.collector.catalogs is in_force
        assert accepted(collector.grpc_target, widget("gadget"))

        # A new file (a new category) is noticed too.
        write_catalog(folder, catalog_doc("gizmos", {"gizmoCreated": {}}))
        write_catalog(folder, widgets("widget", "gadget", version="1.2.0"))
        wait_until(lambda: "gizmos" in collector.collector.catalogs.categories, "the new category is loaded")


@pytest.mark.slow
def test_sighup_reloads_the_catalogs(db: str, tmp_path: Path) -> None:
    folder = tmp_path / "catalogs"
    write_catalog(folder, widgets("widget"))
    config = tmp_path / "otaudit.yaml"
    # No polling: only SIGHUP can make the change take effect.
    config.write_text("catalogs:\n  bundled: false\n  dirs: [./catalogs]\n  reload_interval_seconds: 0\n", encoding="utf-8")
    proc = CollectorProcess(
        ["serve", "--config", str(config), "--database-url", db, "--grpc-port", "0", "--http-port", "0", "--api-port", "0"],
        cwd=tmp_path,
    ).start()
    try:
        assert not accepted(proc.grpc_target, widget("gadget"))
        write_catalog(folder, widgets("widget", "gadget", version="1.1.0"))
        time.sleep(0.5)
        assert not accepted(proc.grpc_target, widget("gadget"))  # not before the signal
        assert proc.proc is not None
        proc.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: accepted(proc.grpc_target, widget("gadget")), "the catalog is reloaded after SIGHUP")
    finally:
        assert proc.terminate() == 0, "".join(proc.output)
    assert any("catalogs reloaded" in line and "SIGHUP" in line for line in proc.output), "".join(proc.output)


def test_reloads_do_not_drop_requests_in_flight(db: str, tmp_path: Path) -> None:
    folder = tmp_path / "catalogs"
    write_catalog(folder, widgets("widget"))
    per_request = 5
    reloads = 20
    answers: list[int] = []  # rejected records per answered request
    failures: list[BaseException] = []
    stop = threading.Event()

    def send_continuously(target: str) -> None:
        try:
            with grpc.insecure_channel(target) as channel:
                call = channel.unary_unary(
                    EXPORT, request_serializer=None, response_deserializer=ExportLogsServiceResponse.FromString
                )
                while not stop.is_set():
                    body = request([widget() for _ in range(per_request)]).SerializeToString()
                    answers.append(call(body, timeout=30).partial_success.rejected_log_records)
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            failures.append(exc)

    with running(only_folder(db, folder)) as collector:
        senders = [threading.Thread(target=send_continuously, args=(collector.grpc_target,)) for _ in range(2)]
        for sender in senders:
            sender.start()
        try:
            wait_until(lambda: len(answers) >= 5 or bool(failures), "the senders are under way")
            before = len(answers)
            swapped = set()
            for n in range(reloads):
                # Alternate between two versions that both accept widgets: every reload swaps in a new set.
                write_catalog(folder, widgets("widget", *(["gadget"] if n % 2 else []), version=f"1.0.{n + 1}"))
                assert collector.call(collector.collector.reload_catalogs("test")) is True
                swapped.add(id(collector.collector.catalogs))
                time.sleep(0.02)
            during = len(answers) - before
        finally:
            stop.set()
            for sender in senders:
                sender.join(60)
        assert collector.collector.catalogs.categories["widgets"].version == f"1.0.{reloads}"

    assert not failures, failures
    assert during >= reloads, f"only {during} requests were answered during {reloads} reloads"
    assert set(answers) == {0}, "every request is answered OK with nothing rejected"
    assert count(db) == len(answers) * per_request
    assert count(db, "rejects") == 0
    assert len(swapped) >= 2


# -- otaudit rejects list / replay ---------------------------------------------------


@pytest.mark.slow
def test_rejects_are_replayed_after_the_catalog_is_fixed(db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "catalogs"
    write_catalog(folder, widgets("widget"))
    config = tmp_path / "otaudit.yaml"
    config.write_text("catalogs:\n  bundled: false\n  dirs: [./catalogs]\n", encoding="utf-8")
    gadget, sprocket = widget("gadget"), widget("sprocket")
    gadget_id = next(a.value.string_value for a in gadget.attributes if a.key == "log.record.uid")

    with running(only_folder(db, folder)) as collector:
        response = grpc_export(collector.grpc_target, request([gadget, sprocket]))
    assert response.partial_success.rejected_log_records == 2
    assert count(db) == 0 and count(db, "rejects") == 2

    write_catalog(folder, widgets("widget", "gadget", version="1.1.0"))  # the fix: gadgets, not sprockets
    database = ["--database-url", db, "--config", str(config)]
    result = otaudit("rejects", "replay", *database)
    assert result.returncode == 1, result  # one is still rejected
    assert f"stored as event {gadget_id}" in result.stdout
    assert "1 replayed, 1 still rejected" in result.stdout
    assert [r["id"] for r in rows(db)] == [gadget_id]

    def listing(*args: str) -> list[dict[str, Any]]:
        assert main(["rejects", "list", *database, "--json", *args]) == 0
        return [json.loads(line) for line in capsys.readouterr().out.splitlines()]

    open_rejects = listing()
    assert [r["replayed_at"] for r in open_rejects] == [None]
    assert any("sprocket" in reason for reason in open_rejects[0]["reasons"])
    every = listing("--all")
    assert len(every) == 2
    assert [r["replayed_event_id"] for r in every if r["replayed_at"]] == [gadget_id]
    assert main(["rejects", "list", *database, "--all"]) == 0
    assert f"[replayed as {gadget_id}]" in capsys.readouterr().out

    # A second replay stores nothing twice ...
    assert main(["rejects", "replay", *database]) == 1
    assert "0 replayed, 1 still rejected" in capsys.readouterr().out
    assert count(db) == 1
    # ... nor does one after a replay was interrupted between storing and marking the reject.
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("UPDATE rejects SET replayed_at = NULL, replayed_event_id = NULL WHERE replayed_at IS NOT NULL")
    assert main(["rejects", "replay", *database]) == 1
    assert "1 replayed, 1 still rejected" in capsys.readouterr().out
    assert [r["id"] for r in rows(db)] == [gadget_id]


def test_packs_load_without_the_bundled_defaults() -> None:
    from otaudit_collector.app import catalog_dirs
    from otaudit_collector.config import load_settings

    settings = load_settings(None, environ={}, overrides={("catalogs", "bundled"): False, ("catalogs", "packs"): ["licensing"]})
    categories = load_catalogs(catalog_dirs(settings)).categories
    assert "licenses" in categories
    assert "accounts_configuration" not in categories
    # The API records its own reads in these two: they come along, or every read would be refused.
    assert {"site_access", "data_extraction"} <= set(categories)


def test_the_api_reads_with_a_pack_alone(db: str) -> None:
    """A pack loaded instead of the bundled catalogs still lets admins read: the API's own
    session event (site_access) is stored, not refused as an unknown category (which answered
    every read 503 'try again shortly')."""
    import requests

    from otaudit_collector.storage import access

    running = RunningCollector(settings_for(db, {("catalogs", "bundled"): False, ("catalogs", "packs"): ["contact_center"]}))
    try:
        with psycopg.connect(db, autocommit=True) as conn:
            token = access.create_token(conn, tenant="acme", role="admin", name="ann", pepper="")[1]
        answer = requests.get(f"{running.api_url}/v1/whoami", headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert answer.status_code == 200, answer.text
        assert [r["event"] for r in rows(db)] == ["siteAccess"]
        assert count(db, "rejects") == 0
    finally:
        running.stop()
