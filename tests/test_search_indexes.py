"""q's ``details.KEY:PREFIX*`` through an index of the key's own (``search.details_prefix_keys``).

The operator names the keys; start and ``otaudit migrate`` build their indexes and drop those
no longer named. A named key and any other one give the same answers; the named one is found
through its index rather than by reading the time window.
"""

from __future__ import annotations

import uuid
from typing import Any

import grpc
import psycopg
import pytest
import requests
from support import RunningCollector, good_attributes, otaudit, record, request, rows, settings_for

from otaudit_collector.config import ConfigError, load_settings
from otaudit_collector.core.query import parse_filters, where_sql
from otaudit_collector.storage import access
from otaudit_collector.storage.search_indexes import index_name, sync_prefix_indexes

EXPORT = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"
DETAILS = [
    {"via": "ui", "ticket.ref": "INC-100"},
    {"via": "uid", "ticket.ref": "INC-2"},
    {"via": "api", "ticket.ref": "CHG-7"},
    {"via": "ü-ui"},  # beyond ASCII: the range is byte-wise, as the index orders it
    {"note": "no via"},
    {"via": {"nested": "ui"}},  # an object's text starts with "{"
]


def _send(collector: RunningCollector) -> list[str]:
    ids = [str(uuid.uuid4()) for _ in DETAILS]
    records = [
        record("updateRole", good_attributes(**{"log.record.uid": i, "audit__details": d}))
        for i, d in zip(ids, DETAILS, strict=True)
    ]
    with grpc.insecure_channel(collector.grpc_target) as channel:
        answer = channel.unary_unary(EXPORT)(request(records).SerializeToString(), timeout=30)
    assert answer == b"", f"every record stored: {answer!r}"
    return ids


def _ids(collector: RunningCollector, token: str, q: str) -> list[str]:
    answer = requests.get(
        collector.api_url + "/v1/events", params={"q": q, "limit": 1000}, headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    assert answer.status_code == 200, answer.text
    return sorted(e["id"] for e in answer.json()["events"] if e["source"].get("service") != "otaudit-collector")


QUERIES: list[tuple[str, list[int]]] = [
    ("details.via:ui*", [0, 1]),
    ("details.via:u*", [0, 1]),
    ("details.via:uid*", [1]),
    ("details.via:ü*", [3]),
    ("details.via:*", [0, 1, 2, 3, 5]),  # has the key
    ("details.via:{*", [5]),
    ("details.ticket.ref:INC-*", [0, 1]),
    ("details.ticket.ref:INC-1*", [0]),
    ("-details.via:ui*", [2, 3, 4, 5]),
    ("details.via:ui* details.via:api*", [0, 1, 2]),
]


def _index_names(conninfo: str) -> dict[str, str]:
    found = rows(
        conninfo,
        "SELECT c.relname AS name, obj_description(c.oid, 'pg_class') AS comment FROM pg_index i"
        " JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = 'events'::regclass AND c.relname LIKE 'events\\_details\\_prefix\\_%%'",
    )
    return {r["name"]: r["comment"] for r in found}


def test_named_keys_give_the_same_answers_through_their_index(db: str) -> None:
    settings = settings_for(db, {("auth", "token_cache_seconds"): 0, ("search", "details_prefix_keys"): ["via", "ticket.ref"]})
    collector = RunningCollector(settings)
    try:
        with psycopg.connect(db) as conn:
            token = access.create_token(conn, tenant="acme", role="admin", name="acme admin", pepper="")[1]
        ids = _send(collector)
        # before the indexes: the window is read row by row
        without = {q: _ids(collector, token, q) for q, _ in QUERIES}
        for q, expected in QUERIES:
            assert without[q] == sorted(ids[i] for i in expected), q
        changes = sync_prefix_indexes(db, ["via", "ticket.ref"])
        assert sorted(changes.created) == ["ticket.ref", "via"] and changes.dropped == ()
        assert _index_names(db) == {
            index_name("via"): "details prefix: via",
            index_name("ticket.ref"): "details prefix: ticket.ref",
        }
        assert sync_prefix_indexes(db, ["ticket.ref", "via"]).created == (), "built once"
        assert {q: _ids(collector, token, q) for q, _ in QUERIES} == without, "the same answers with the index"
    finally:
        collector.stop()


def test_the_planner_can_answer_a_prefix_from_the_keys_index(db: str) -> None:
    sync_prefix_indexes(db, ["via"])
    filters = parse_filters({"q": ["details.via:ui*"]}, indexed_details=["via"])
    assert filters.custom_plan, "planned for its values: only with the key known does the index's expression match"
    where, params = where_sql("acme", None, filters)
    with psycopg.connect(db) as conn:
        conn.execute("SET enable_seqscan = off")  # an empty table: a sequential scan would do as well
        plan = "\n".join(r[0] for r in conn.execute(f"EXPLAIN SELECT count(*) FROM events WHERE {where}", params, prepare=False))
        # each partition has its own copy of the index, under a name PostgreSQL made up
        copies = [
            r[0]
            for r in conn.execute(
                "SELECT inhrelid::regclass::text FROM pg_inherits WHERE inhparent = %s::regclass", (index_name("via"),)
            )
        ]
    scans = [line for line in plan.splitlines() if "Index Scan" in line]
    assert len(copies) >= 2 and scans and all(any(f" {c} " in line for c in copies) for line in scans), plan


def test_a_key_no_longer_named_loses_its_index_at_start_and_migrate_only_says_so(db: str, tmp_path: Any) -> None:
    config = tmp_path / "otaudit.yaml"
    config.write_text("search:\n  details_prefix_keys: [via, identity_provider]\n")
    built = otaudit("migrate", "--config", str(config), "--database-url", db)
    assert built.returncode == 0, built.stderr
    assert "built the details prefix index of 'via'" in built.stdout
    assert "built the details prefix index of 'identity_provider'" in built.stdout
    config.write_text("search:\n  details_prefix_keys: [via]\n")
    again = otaudit("migrate", "--config", str(config), "--database-url", db)
    assert again.returncode == 0, again.stderr
    assert f"kept {index_name('identity_provider')}" in again.stdout and "built" not in again.stdout
    assert set(_index_names(db)) == {index_name("via"), index_name("identity_provider")}
    assert sync_prefix_indexes(db, ["via"]).dropped == (index_name("identity_provider"),), "as serve does"
    assert sync_prefix_indexes(db, []).dropped == (index_name("via"),)
    assert _index_names(db) == {}


@pytest.mark.parametrize("key", ["", "a b", "x" * 129, "ü", ".starts-with-a-dot"])
def test_the_configuration_refuses_a_key_q_cannot_name(tmp_path: Any, key: str) -> None:
    config = tmp_path / "otaudit.yaml"
    config.write_text(f"search:\n  details_prefix_keys: ['{key}']\n")
    with pytest.raises(ConfigError, match="details_prefix_keys"):
        load_settings(config_file=str(config))
    with pytest.raises(ValueError, match="is not a details key q can name"):
        sync_prefix_indexes("dbname=unused", [key])
