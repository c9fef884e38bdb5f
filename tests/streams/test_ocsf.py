"""OCSF events of core/ocsf.py, checked with pydantic-ocsf: models generated from the OCSF
schema's own export, which otaudit did not write.

Each example event of every bundled catalog and pack, written in the class its catalog names,
must validate as that class of OCSF 1.5.0, and the library must read it back to exactly what
was written (it adds nothing: no sibling caption missing, no uid to derive). Every value of
the document must be somewhere in the OCSF event, and ``unmapped`` holds only the document's
own values at their own places.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ocsf.v1_5_0 import events as ocsf_events
from pydantic import BaseModel, ValidationError

from otaudit_collector.core.catalog import CatalogSet, Problem, lint_catalogs, load_catalogs
from otaudit_collector.core.ocsf import CLASSES, DEFAULT_CLASS, OCSF_VERSION, Hint, activity_of, check_hint, to_ocsf
from otaudit_collector.streams.formats import render
from otaudit_collector.streams.transport import Record

REPO = Path(__file__).resolve().parents[2]
CATALOG_DIRS = [REPO / "catalogs", *sorted(p for p in (REPO / "catalogs" / "examples").iterdir() if p.is_dir())]
MODELS: dict[int, type[BaseModel]] = {
    3001: ocsf_events.AccountChange,
    3002: ocsf_events.Authentication,
    3004: ocsf_events.EntityManagement,
    3006: ocsf_events.GroupManagement,
    6003: ocsf_events.ApiActivity,
}


def _catalogs() -> CatalogSet:
    """Every bundled catalog and pack at once (packs define categories of their own)."""
    return load_catalogs(CATALOG_DIRS)


def _examples() -> Iterator[tuple[str, str, dict[str, Any]]]:
    for folder in CATALOG_DIRS:
        for path in sorted(folder.glob("*.json")):
            catalog = json.loads(path.read_text(encoding="utf-8"))
            for name, event in catalog["events"].items():
                for example in event.get("examples", []):
                    yield catalog["category"], name, example


def _stored(example: dict[str, Any], seq: int) -> dict[str, Any]:
    """An example as the database gives it to a stream: with received_at and seq."""
    return {**copy.deepcopy(example), "received_at": "2026-11-21T10:15:31.987654Z", "seq": seq}


def _validated(event: dict[str, Any]) -> dict[str, Any]:
    """The event as pydantic-ocsf reads it back (raises ValidationError when it is no valid OCSF)."""
    model = MODELS[event["class_uid"]].model_validate(copy.deepcopy(event))
    back: dict[str, Any] = model.model_dump(mode="json", exclude_none=True, by_alias=True)
    return back


def _leaves(node: Any, at: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _leaves(value, (*at, key))
    elif isinstance(node, list):
        for n, value in enumerate(node):
            yield from _leaves(value, (*at, n))
    else:
        yield at, node


def _atoms(node: Any) -> list[Any]:
    """Every value and every object key in ``node``."""
    out: list[Any] = []
    if isinstance(node, dict):
        for key, value in node.items():
            out.append(key)
            out.extend(_atoms(value))
    elif isinstance(node, list):
        for value in node:
            out.extend(_atoms(value))
    else:
        out.append(node)
    return out


def _at(node: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        node = node[part]
    return node


def test_every_example_of_every_catalog_is_valid_ocsf_in_its_class_and_loses_nothing() -> None:
    catalogs = _catalogs()
    seen_classes: set[int] = set()
    count = 0
    for seq, (category, name, example) in enumerate(_examples(), 1):
        definition = catalogs.event(category, name)
        assert definition is not None
        document = _stored(example, seq)
        event = to_ocsf(document, seq, definition.ocsf, title=definition.title, product_version="9.9.9")
        where = f"{category}/{name}"
        try:
            back = _validated(event)
        except ValidationError as exc:
            pytest.fail(f"{where}: not valid OCSF {OCSF_VERSION}: {exc}")
        assert back == event, f"{where}: pydantic-ocsf reads it back otherwise (a sibling or uid missing)"
        ocsf_class = CLASSES[definition.ocsf.class_name]
        if example.get("target") or ocsf_class.name not in ("entity_management", "group_management"):
            assert event["class_uid"] == ocsf_class.uid, where
        else:  # no target to put in entity or group: an API Activity
            assert event["class_uid"] == CLASSES[DEFAULT_CLASS].uid, where
        assert event["metadata"]["uid"] == document["id"] and event["metadata"]["sequence"] == seq, where
        assert event["metadata"]["version"] == OCSF_VERSION and event["metadata"]["product"]["version"] == "9.9.9"
        assert event["message"] == document.get("message", definition.title), where
        # Every value of the document is in the event, and unmapped holds the document's own values.
        atoms = _atoms(event)
        for path, value in _leaves(document):
            assert value in atoms or value is None, f"{where}: {'/'.join(map(str, path))} = {value!r} is lost"
        for path, value in _leaves(event.get("unmapped", {})):
            assert _at(document, path) == value, f"{where}: unmapped/{'/'.join(map(str, path))} is not the document's"
        seen_classes.add(event["class_uid"])
        count += 1
    assert count > 200, "the catalogs' examples were read"
    assert seen_classes == set(MODELS), "each class is written by some bundled event"


def _document(**over: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "id": "0193b3c4-0000-7000-8000-0000000000aa",
        "tenant": "acme",
        "category": "accounts_configuration",
        "event": "updateRole",
        "occurred_at": "2026-11-21T10:15:30.123456Z",
        "received_at": "2026-11-21T10:15:30.2Z",
        "outcome": "success",
        "actor": {"type": "user", "id": "u-17", "email": "ann@acme.test", "name": "Ann", "roles": ["admin"]},
        "client": {"address": "2001:db8::7", "user_agent": "Mozilla/5.0", "session_id": "s-1"},
        "target": {"type": "role", "id": "r-3", "name": "Auditors"},
        "changes": [{"field": "permissions", "old": ["read"], "new": ["read", "export"]}],
        "details": {"via": "ui"},
        "source": {"service": "accounts-api", "instance": "pod-7", "sequence": 4211},
        "trace": {"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "span_id": "00f067aa0ba902b7"},
        "seq": 42,
    }
    document.update(over)
    return {k: v for k, v in document.items() if v is not None}


def test_an_entity_change_carries_old_and_new_values_and_the_rest_is_unmapped() -> None:
    event = to_ocsf(_document(), 42, Hint("entity_management"), title="Role updated")
    assert _validated(event) == event
    assert (event["class_uid"], event["activity_id"], event["type_uid"]) == (3004, 3, 300403)
    assert (event["category_uid"], event["type_name"]) == (3, "Entity Management: Update")
    assert event["time"] == 1795256130123 and event["metadata"]["original_time"] == "2026-11-21T10:15:30.123456Z"
    assert event["metadata"]["logged_time"] == 1795256130200
    assert event["entity"] == {"uid": "r-3", "name": "Auditors", "type_id": 99, "type": "role", "data": {"permissions": ["read"]}}
    assert event["entity_result"]["data"] == {"permissions": ["read", "export"]}
    assert event["actor"] == {
        "user": {"uid": "u-17", "email_addr": "ann@acme.test", "name": "Ann", "type_id": 1, "type": "User"},
        "session": {"uid": "s-1"},
    }
    assert event["src_endpoint"] == {"ip": "2001:db8::7"} and event["http_request"] == {"user_agent": "Mozilla/5.0"}
    assert event["metadata"]["correlation_uid"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert event["metadata"]["log_provider"] == "accounts-api" and event["metadata"]["tenant_uid"] == "acme"
    assert event["unmapped"] == {
        "category": "accounts_configuration",
        "received_at": "2026-11-21T10:15:30.2Z",
        "actor": {"type": "user", "roles": ["admin"]},
        "details": {"via": "ui"},
        "source": {"instance": "pod-7", "sequence": 4211},
        "trace": {"span_id": "00f067aa0ba902b7"},
    }
    assert (event["status_id"], event["status"], event["severity_id"], event["severity"]) == (1, "Success", 1, "Informational")


def test_a_failure_is_a_failure_with_its_reason_and_a_host_name_is_no_ip() -> None:
    document = _document(
        event="siteAccess",
        category="site_access",
        outcome="denied",
        reason="password expired",
        target=None,
        changes=None,
        client={"address": "vpn.acme.test"},
    )
    event = to_ocsf(document, 42, Hint("authentication"))
    assert _validated(event) == event
    assert (event["class_uid"], event["activity_name"]) == (3002, "Logon")
    assert (event["status_id"], event["status"], event["status_code"], event["status_detail"]) == (
        2,
        "Failure",
        "denied",
        "password expired",
    )
    assert event["severity_id"] == 2 and event["user"]["uid"] == "u-17"
    assert event["src_endpoint"] == {"hostname": "vpn.acme.test"}


def test_an_api_activity_lists_the_target_and_related_objects_as_resources() -> None:
    related = [{"type": "license", "id": "l-1", "name": "Pro"}, {"type": "customer", "id": "c-9"}]
    event = to_ocsf(_document(event="device_reset", related=related, changes=None), 42, Hint())
    assert _validated(event) == event
    assert event["api"] == {"operation": "device_reset", "service": {"name": "accounts-api"}}
    assert event["resources"] == [
        {"uid": "r-3", "name": "Auditors", "type": "role"},
        {"uid": "l-1", "name": "Pro", "type": "license"},
        {"uid": "c-9", "type": "customer"},
    ]
    assert (event["activity_id"], event["activity_name"]) == (3, "Update")
    assert "related" not in event.get("unmapped", {})


def test_a_system_actor_without_client_or_target_still_makes_each_class_valid() -> None:
    bare = {
        "id": "e-1",
        "tenant": "t",
        "category": "c",
        "event": "nightlyCleanup",
        "occurred_at": "2026-01-01T00:00:00Z",
        "outcome": "success",
        "actor": {"type": "system"},
    }
    for name in CLASSES:
        event = to_ocsf(bare, 1, Hint(name))
        assert _validated(event) == event, name
        assert event["class_uid"] == (CLASSES[DEFAULT_CLASS].uid if name.endswith("_management") else CLASSES[name].uid)
    api = to_ocsf(bare, 1, Hint())
    assert api["src_endpoint"] == {} and api["actor"] == {"user": {"type_id": 3, "type": "System"}}
    assert api["activity_id"] == 99 and api["unmapped"] == {"category": "c", "actor": {"type": "system"}}


@pytest.mark.parametrize(
    ("ocsf_class", "event", "activity"),
    [
        ("entity_management", "addRole", "create"),
        ("entity_management", "scopesBulkUpdate", "update"),
        ("entity_management", "deactivateUser", "deactivate"),
        ("account_change", "deactivateUser", "disable"),
        ("account_change", "reactivateUser", "enable"),
        ("account_change", "resetUserPassword", "password_reset"),
        ("account_change", "org.user.password.changed", "password_change"),
        ("account_change", "unlockAccount", "unlock"),
        ("authentication", "signIn", "logon"),
        ("authentication", "user.logout", "logoff"),
        ("authentication", "siteAccess", "logon"),
        ("api_activity", "user.access-key.regenerated", "update"),
        ("api_activity", "exportFilteredAssets", "read"),
        ("api_activity", "triggerScanNowByFilter", "other"),
        ("api_activity", "license_user_unassigned", "delete"),
        ("group_management", "createGroup", "create"),
        ("group_management", "agent_groups.delete", "delete"),
    ],
)
def test_the_activity_comes_from_the_event_name(ocsf_class: str, event: str, activity: str) -> None:
    assert activity_of(CLASSES[ocsf_class], event) == activity


def test_the_catalogs_hints_are_checked(tmp_path: Path) -> None:
    assert check_hint({"class": "account_change"}, {"activity": "logon"}) is not None
    assert check_hint(None, {"class": "authentication", "activity": "logon"}) is None
    assert "no activity of the OCSF class 'entity_management'" in str(
        check_hint({"class": "entity_management"}, {"activity": "logoff"})
    )
    schema = {"allOf": [{"$ref": "#/$defs/requiresTarget"}]}

    def write(name: str, category_hint: Any, event_hint: Any) -> list[Problem]:
        folder = tmp_path / name
        folder.mkdir()
        doc: dict[str, Any] = {"category": "widgets", "title": "W", "description": "d", "version": "1.0.0"}
        if category_hint is not None:
            doc["ocsf"] = category_hint
        event: dict[str, Any] = {"description": "d", "schema": schema}
        if event_hint is not None:
            event["ocsf"] = event_hint
        doc["events"] = {"widgetMade": event}
        (folder / "widgets.json").write_text(json.dumps(doc), encoding="utf-8")
        return lint_catalogs([folder])[0]

    assert write("good", {"class": "entity_management"}, {"activity": "create"}) == []
    wrong_activity = write("activity", {"class": "authentication"}, {"activity": "create"})
    assert [(p.path, "'create' is no activity of the OCSF class 'authentication'" in p.message) for p in wrong_activity] == [
        ("$.events['widgetMade'].ocsf", True)
    ]
    unknown_class = write("class", {"class": "network_activity"}, None)
    assert unknown_class and unknown_class[0].path == "$.ocsf.class", unknown_class
    empty = write("empty", None, {})
    assert empty and empty[0].path == "$.events.widgetMade.ocsf", empty
    loaded = load_catalogs([tmp_path / "good"])
    definition = loaded.event("widgets", "widgetMade")
    assert definition is not None and definition.ocsf == Hint("entity_management", "create")


def test_render_rewrites_records_and_an_event_of_no_loaded_catalog_is_an_api_activity() -> None:
    stored = [Record(5, "e-5", json.dumps(_document(seq=5), separators=(",", ":"))), Record(6, "e-6", "[1]")]
    assert render(stored, "otaudit", lambda: None) is stored
    rendered = render(stored[:1], "ocsf", _catalogs)
    assert rendered[0].document is not None and rendered[0].document["id"] == "0193b3c4-0000-7000-8000-0000000000aa"
    event = json.loads(rendered[0].text)
    assert (event["class_uid"], event["activity_id"], event["message"]) == (3004, 3, "Role updated")
    orphan = json.loads(render(stored[:1], "ocsf", lambda: None)[0].text)
    assert (orphan["class_uid"], orphan["activity_id"]) == (6003, 3) and "message" not in orphan
    with pytest.raises(ValueError, match="seq 6 is not a JSON object"):
        render(stored[1:], "ocsf", lambda: None)
    with pytest.raises(ValueError, match="unknown record format 'leef'"):
        render(stored, "leef", lambda: None)
