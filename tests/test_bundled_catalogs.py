"""The bundled catalogs and the example packs under catalogs/.

Checks, with jsonschema and the standard library only:
- every catalog file satisfies the catalog meta-schema (catalogs/schema/catalog.json);
- every event fragment, composed with the envelope the way the collector composes it, is a
  valid Draft 2020-12 schema that refers only to the envelope's $defs;
- every example validates against its composed schema (with format checking) and names
  the category and event it is declared under;
- negative controls: events that break a fragment's rules are rejected;
- the bundled catalogs carry every category and event of the reference page (the asset
  site's audit-trail page; its event list is carried as facts in
  tests/data/reference_asset_site_events.json, so the tests read nothing outside the
  repository).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

REPO = Path(__file__).resolve().parents[1]
CATALOGS = REPO / "catalogs"
SCHEMAS = CATALOGS / "schema"
EXAMPLE_PACKS = CATALOGS / "examples"
REFERENCE_EVENTS = Path(__file__).resolve().parent / "data" / "reference_asset_site_events.json"

BUNDLED = (
    "site_access",
    "accounts_configuration",
    "inventory_configuration",
    "discovery_configuration",
    "data_extraction",
)
PACKS = ("contact_center", "job_platform", "licensing", "testing_platform")
FORBIDDEN_IN_FRAGMENTS = {"$id", "$schema", "$defs", "definitions", "$anchor", "$dynamicAnchor"}
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$")


def _load(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


ENVELOPE: dict[str, Any] = _load(SCHEMAS / "envelope.json")
META: dict[str, Any] = _load(SCHEMAS / "catalog.json")
CATALOG_FILES: list[Path] = sorted(CATALOGS.glob("*.json")) + sorted(EXAMPLE_PACKS.glob("*/*.json"))
DOCS: dict[Path, dict[str, Any]] = {path: _load(path) for path in CATALOG_FILES}


def _rel(path: Path) -> str:
    return path.relative_to(CATALOGS).as_posix()


def compose(fragment: dict[str, Any]) -> dict[str, Any]:
    """The schema the collector checks an event with: the envelope, plus allOf [fragment] at its root."""
    composed = copy.deepcopy(ENVELOPE)
    composed["allOf"] = [*composed.get("allOf", []), copy.deepcopy(fragment)]
    return composed


def validator_for(fragment: dict[str, Any]) -> Draft202012Validator:
    return Draft202012Validator(compose(fragment), format_checker=Draft202012Validator.FORMAT_CHECKER)


def _events() -> Iterator[tuple[Path, str, str, dict[str, Any]]]:
    for path, doc in DOCS.items():
        for name, entry in (doc.get("events") or {}).items():
            yield path, doc.get("category", ""), name, entry


EVENTS = list(_events())
EVENT_IDS = [f"{_rel(path)}:{name}" for path, _, name, _ in EVENTS]


def _errors(validator: Draft202012Validator, instance: Any) -> list[str]:
    return [
        f"{error.json_path}: {error.message}"
        for error in sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path))
    ]


def _walk(node: Any, path: str = "$") -> Iterator[tuple[str, Any]]:
    yield path, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _walk(value, f"{path}[{index}]")


def bundled_doc(category: str) -> dict[str, Any]:
    return DOCS[CATALOGS / f"{category}.json"]


# ---------------------------------------------------------------- (a) the files


def test_schemas_are_valid_draft_2020_12() -> None:
    Draft202012Validator.check_schema(META)
    Draft202012Validator.check_schema(ENVELOPE)
    assert META["$id"] == "urn:otaudit:schema:catalog"


def test_bundled_categories_and_packs_are_present() -> None:
    assert sorted(p.stem for p in CATALOGS.glob("*.json")) == sorted(BUNDLED)
    for pack in PACKS:
        assert list((EXAMPLE_PACKS / pack).glob("*.json")), f"example pack {pack} has no catalog files"


@pytest.mark.parametrize("path", CATALOG_FILES, ids=[_rel(p) for p in CATALOG_FILES])
def test_catalog_file_satisfies_meta_schema(path: Path) -> None:
    doc = DOCS[path]
    errors = _errors(Draft202012Validator(META), doc)
    assert not errors, f"{_rel(path)}:\n" + "\n".join(errors)
    assert doc["category"] == path.stem, f"{_rel(path)}: category {doc['category']!r} differs from the file name"


# ---------------------------------------------------------------- (b) the fragments


@pytest.mark.parametrize(("path", "category", "name", "entry"), EVENTS, ids=EVENT_IDS)
def test_fragment_composes_into_a_valid_schema(path: Path, category: str, name: str, entry: dict[str, Any]) -> None:
    fragment = entry["schema"]
    Draft202012Validator.check_schema(compose(fragment))
    for where, node in _walk(fragment):
        if not isinstance(node, dict):
            continue
        forbidden = FORBIDDEN_IN_FRAGMENTS & node.keys()
        assert not forbidden, f"{_rel(path)}:{name}: {where} uses {sorted(forbidden)}"
        ref = node.get("$ref")
        if ref is not None:
            assert isinstance(ref, str) and ref.startswith("#/$defs/"), (
                f"{_rel(path)}:{name}: {where}.$ref {ref!r} must point into the envelope's #/$defs/"
            )
            assert ref.removeprefix("#/$defs/") in ENVELOPE["$defs"], f"{_rel(path)}:{name}: unknown {ref}"


# ---------------------------------------------------------------- (c) the examples


@pytest.mark.parametrize(("path", "category", "name", "entry"), EVENTS, ids=EVENT_IDS)
def test_examples_validate_and_match_their_declaration(path: Path, category: str, name: str, entry: dict[str, Any]) -> None:
    examples = entry.get("examples") or []
    assert examples, f"{_rel(path)}:{name} has no example"
    validator = validator_for(entry["schema"])
    for index, example in enumerate(examples):
        errors = _errors(validator, example)
        assert not errors, f"{_rel(path)}:{name} example {index}:\n" + "\n".join(errors)
        assert example["category"] == category, f"{_rel(path)}:{name} example {index} names another category"
        assert example["event"] == name, f"{_rel(path)}:{name} example {index} names another event"
        # jsonschema checks date-time only with an optional package; check it here
        assert RFC3339.match(example["occurred_at"]), example["occurred_at"]
        datetime.fromisoformat(example["occurred_at"].replace("Z", "+00:00"))


def test_example_ids_are_unique() -> None:
    seen: dict[str, str] = {}
    for path, _, name, entry in EVENTS:
        for example in entry.get("examples") or []:
            where = f"{_rel(path)}:{name}"
            assert example["id"] not in seen, f"{where} reuses the id of {seen[example['id']]}"
            seen[example["id"]] = where


def _unconditional_refs(fragment: dict[str, Any]) -> set[str]:
    refs = {fragment["$ref"]} if "$ref" in fragment else set()
    return refs | {item["$ref"] for item in fragment.get("allOf", []) if "$ref" in item}


@pytest.mark.parametrize(("path", "category", "name", "entry"), EVENTS, ids=EVENT_IDS)
def test_declared_requirements_reject_events_without_them(path: Path, category: str, name: str, entry: dict[str, Any]) -> None:
    """What a fragment says it requires, it enforces (and the $refs resolve to the envelope)."""
    fragment = entry["schema"]
    validator = validator_for(fragment)
    example = entry["examples"][0]
    refs = _unconditional_refs(fragment)
    if "#/$defs/requiresTarget" in refs:
        assert not validator.is_valid({k: v for k, v in example.items() if k != "target"})
        assert not validator.is_valid({**example, "target": {"type": example["target"]["type"]}})
    if "#/$defs/requiresChanges" in refs:
        assert not validator.is_valid({k: v for k, v in example.items() if k != "changes"})
        assert not validator.is_valid({**example, "changes": []})
    target_type = fragment.get("properties", {}).get("target", {}).get("properties", {}).get("type", {})
    if "const" in target_type:
        wrong = {**example, "target": {"type": "no_such_type", "id": "x-1"}}
        assert not validator.is_valid(wrong), f"{_rel(path)}:{name} accepts a target of another type"


# ---------------------------------------------------------------- (d) negative controls

_DELETE = object()


def mutate(event: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """Copy `event`, setting each dotted path to its value (or deleting it for _DELETE)."""
    result = copy.deepcopy(event)
    for dotted, value in changes.items():
        node: Any = result
        *parents, last = dotted.split(".")
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
        if value is _DELETE:
            del node[last]
        elif isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return result


def _example(category: str, name: str) -> tuple[Draft202012Validator, dict[str, Any]]:
    entry = bundled_doc(category)["events"][name]
    return validator_for(entry["schema"]), entry["examples"][0]


# (category, event, change to its example, what is wrong)
REJECTED: list[tuple[str, str, dict[str, Any], str]] = [
    ("site_access", "siteAccess", {"actor": {"type": "system"}}, "a system cannot access the site"),
    ("site_access", "siteAccess", {"actor": {"type": "user", "name": "Ann"}}, "a user actor without id or email"),
    ("site_access", "siteAccess", {"details.method": "carrier_pigeon"}, "unknown sign-in method"),
    ("site_access", "siteAccess", {"details": None}, "an absent section must be absent, not null"),
    ("site_access", "siteAccess", {"outcome": "maybe"}, "unknown outcome"),
    ("accounts_configuration", "updateRole", {"changes": _DELETE}, "an update without changes"),
    ("accounts_configuration", "updateRole", {"changes": [{"old": "a", "new": "b"}]}, "a change without field"),
    ("accounts_configuration", "addRole", {"target.type": "scope"}, "wrong target type"),
    ("accounts_configuration", "deleteRole", {"target.id": _DELETE}, "a delete without the target's id"),
    ("accounts_configuration", "deleteRoles", {"details": _DELETE}, "a bulk delete without ids or count"),
    ("accounts_configuration", "deleteRoles", {"details": {"ids": []}}, "a bulk delete with an empty id list"),
    (
        "accounts_configuration",
        "toggleBlockedAccount",
        {"changes": [{"field": "name", "old": "a", "new": "b"}]},
        "a block toggle that does not say blocked",
    ),
    ("accounts_configuration", "leaveSite", {"actor": {"type": "service", "id": "svc-1"}}, "only a user leaves"),
    ("inventory_configuration", "deleteAssets", {"details.via": "cli"}, "via is ui or api"),
    ("inventory_configuration", "deleteAssets", {"details.via": _DELETE}, "via is required"),
    ("inventory_configuration", "mergeAssetGroups", {"details": {}}, "a merge without the merged group"),
    (
        "inventory_configuration",
        "createAssetRelations",
        {"details.relations.0.to_user_id": "iu-9"},
        "a relation to an asset and a user at once",
    ),
    ("inventory_configuration", "manageAssetTypes", {"changes": _DELETE}, "an asset type update without changes"),
    (
        "inventory_configuration",
        "createAzureCloudScanningTarget",
        {"details.scanning_target_type": "aws_region"},
        "the kind contradicts the event",
    ),
    ("inventory_configuration", "securedBulkDeleteAssets", {"details": {"ids": [], "count": 0}}, "empty id list"),
    ("inventory_configuration", "updateAssetV2", {"changes": []}, "an update with no change"),
    ("discovery_configuration", "triggerScanNowByScanningTargetId", {"target": _DELETE}, "a scan without its target"),
    (
        "discovery_configuration",
        "updateCredential",
        {"changes": [{"field": "password", "old": "hunter2", "new": "correct horse"}]},
        "a secret in the audit trail",
    ),
    ("discovery_configuration", "updateAllScanningTargets", {"changes": _DELETE}, "an update without changes"),
    ("discovery_configuration", "createExclusion", {"target.type": "credential"}, "wrong target type"),
    ("discovery_configuration", "triggerScanNowByFilter", {"details": {"count": 3}}, "a filtered scan without filter"),
    ("data_extraction", "exportView", {"target": _DELETE}, "a view export without the view"),
    ("data_extraction", "exportView", {"details.row_count": -1}, "a negative row count"),
    ("data_extraction", "exportFilteredAssets", {"details": {"format": "csv"}}, "an asset export without filters"),
    ("data_extraction", "importAuditTrail", {"details": _DELETE}, "an import without its counts"),
    ("data_extraction", "importAuditTrail", {"details.already_present": _DELETE}, "an import without its duplicates"),
    ("data_extraction", "importAuditTrail", {"details.stored": -1}, "a negative count"),
    ("data_extraction", "importAuditTrail", {"details.first_occurred_at": 1700000000}, "a time that is not RFC 3339 text"),
    ("data_extraction", "importAuditTrail", {"target.type": "file"}, "an import not into the trail"),
]

# Natural events that must stay accepted, so the fragments do not over-constrain.
ACCEPTED: list[tuple[str, str, dict[str, Any], str]] = [
    ("site_access", "siteAccess", {"details": _DELETE, "client": _DELETE}, "a bare sign-in"),
    ("site_access", "siteAccess", {"outcome": "denied", "reason": "account blocked"}, "a refused sign-in"),
    ("accounts_configuration", "deleteRoles", {"details": {"count": 12}}, "a bulk delete by count only"),
    ("inventory_configuration", "manageAssetTypes", {"details.operation": "delete", "changes": _DELETE}, "a delete"),
    ("inventory_configuration", "deleteAssets", {"details.via": "ui", "client.user_agent": "Mozilla/5.0"}, "UI"),
    ("inventory_configuration", "updateAssetStates", {"target": _DELETE, "details": {"ids": ["st-1"]}}, "by ids"),
    ("discovery_configuration", "updateCredential", {"changes": [{"field": "password"}]}, "secret withheld"),
    ("discovery_configuration", "updateCredential", {"changes": [{"field": "ssh_private_key", "new": "****"}]}, "masked"),
    ("data_extraction", "exportView", {"details": _DELETE}, "an export with no details"),
    (
        "data_extraction",
        "importAuditTrail",
        {
            "outcome": "failure",
            "reason": "storage refused the batch",
            "details.first_occurred_at": _DELETE,
            "details.last_occurred_at": _DELETE,
        },
        "a failed run, and one with no valid event (no time range)",
    ),
]


@pytest.mark.parametrize(("category", "name", "change", "why"), REJECTED, ids=[f"{c}:{n}:{w}" for c, n, _, w in REJECTED])
def test_negative_controls_are_rejected(category: str, name: str, change: dict[str, Any], why: str) -> None:
    validator, example = _example(category, name)
    assert validator.is_valid(example)
    assert not validator.is_valid(mutate(example, change)), f"{category}:{name} accepted {why}"


@pytest.mark.parametrize(("category", "name", "change", "why"), ACCEPTED, ids=[f"{c}:{n}:{w}" for c, n, _, w in ACCEPTED])
def test_positive_controls_are_accepted(category: str, name: str, change: dict[str, Any], why: str) -> None:
    validator, example = _example(category, name)
    errors = _errors(validator, mutate(example, change))
    assert not errors, f"{category}:{name} rejected {why}:\n" + "\n".join(errors)


def test_every_bundled_category_has_negative_controls() -> None:
    assert {category for category, *_ in REJECTED} == set(BUNDLED)


# ---------------------------------------------------------------- (e) coverage of the reference


def reference_events() -> dict[str, list[tuple[str, str, str | None]]]:
    """{category: [(event, description, variant)]}: the reference page's tables, as test data."""
    doc = json.loads(REFERENCE_EVENTS.read_text(encoding="utf-8"))
    return {
        category: [(row["event"], row["description"], row.get("variant")) for row in rows]
        for category, rows in doc["categories"].items()
    }


def test_reference_categories_are_the_bundled_ones() -> None:
    sections = reference_events()
    assert sorted(sections) == sorted(BUNDLED)
    assert all(sections.values()), "a reference category has no events: the page's tables were not parsed"
    assert sum(len(events) for events in sections.values()) > 100


@pytest.mark.parametrize("category", BUNDLED)
def test_bundled_catalog_carries_every_reference_event(category: str) -> None:
    events = bundled_doc(category)["events"]
    rows: dict[str, list[tuple[str, str | None]]] = {}
    for name, description, variant in reference_events()[category]:
        rows.setdefault(name, []).append((description, variant))
    missing = sorted(set(rows) - set(events))
    assert not missing, f"{category}.json lacks reference events: {missing}"
    for name, listed in rows.items():
        description = events[name]["description"]
        # the words all of the event's rows share ("Deletes multiple assets in bulk" for deleteAssets)
        expected = listed[0][0]
        for text, _ in listed[1:]:
            while not text.startswith(expected):
                expected = expected.rsplit(" ", 1)[0]
        assert description.startswith(expected), f"{category}:{name}: {description!r} does not start with {expected!r}"
        variants = [variant for _, variant in listed if variant is not None]
        if variants:
            # "deleteAssets (UI)" and "deleteAssets (API)" are one event; details.via says which
            validator, example = validator_for(events[name]["schema"]), events[name]["examples"][0]
            for variant in variants:
                assert variant.upper() in description, f"{category}:{name}: the description omits {variant.upper()}"
                assert validator.is_valid(mutate(example, {"details.via": variant})), f"{name} rejects via {variant!r}"
            assert not validator.is_valid(mutate(example, {"details.via": "other"})), f"{name} accepts any via"


def test_events_listed_under_two_categories_are_in_both_with_one_schema() -> None:
    where: dict[str, list[str]] = {}
    for category, events in reference_events().items():
        for name, _, _ in events:
            if category not in where.setdefault(name, []):
                where[name].append(category)
    shared = {name: categories for name, categories in where.items() if len(categories) > 1}
    assert shared, "the reference lists some events under two categories"
    for name, categories in shared.items():
        schemas = [bundled_doc(category)["events"][name]["schema"] for category in categories]
        assert all(schema == schemas[0] for schema in schemas), f"{name} has different schemas in {categories}"
    # No other name repeats across bundled categories: each repeat obliges emitters to send audit.category.
    bundled_where: dict[str, list[str]] = {}
    for category in BUNDLED:
        for name in bundled_doc(category)["events"]:
            bundled_where.setdefault(name, []).append(category)
    repeated = {name for name, categories in bundled_where.items() if len(categories) > 1}
    assert repeated == set(shared)


def test_any_combination_of_packs_loads_without_clashes() -> None:
    """Category ids are unique across the bundled catalogs and every pack (a later folder would
    silently replace an earlier category), and no event name repeats across them beyond the
    reference's own repeats (a repeat obliges emitters to send audit.category)."""
    owners: dict[str, list[str]] = {}
    events: dict[str, list[str]] = {}
    for path, doc in DOCS.items():
        owners.setdefault(doc["category"], []).append(_rel(path))
        for name in doc["events"]:
            events.setdefault(name, []).append(_rel(path))
    assert {c: files for c, files in owners.items() if len(files) > 1} == {}
    reference_repeats = {
        name for name in events if sum(name in {n for n, _, _ in listed} for listed in reference_events().values()) > 1
    }
    assert {n: files for n, files in events.items() if len(files) > 1 and n not in reference_repeats} == {}
