"""The admin API's read routes against a real collector and PostgreSQL: auth, tenant
isolation, plan enforcement, every filter, the cursor, the feed and the query window."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import psycopg
import pytest
import requests
from support import REPO, RunningCollector, record, request, settings_for, wait_until

from otaudit_collector.storage import access

EXPORT = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"
DAY_NS = 86_400 * 10**9


def example(category: str, event: str) -> dict[str, Any]:
    catalog = json.loads((REPO / "catalogs" / f"{category}.json").read_text())
    doc: dict[str, Any] = catalog["events"][event]["examples"][0]
    return doc


def attributes_of(doc: dict[str, Any], **over: Any) -> dict[str, Any]:
    """A catalog example (a normalized event) back into the contract's attributes."""
    doc = {**doc, **over}
    attrs: dict[str, Any] = {
        "log.record.uid": str(uuid.uuid4()),
        "audit.category": doc["category"],
        "audit.tenant.id": doc["tenant"],
        "audit.outcome": doc.get("outcome", "success"),
        "audit.actor.type": doc["actor"]["type"],
    }
    for key, name in (("id", "user.id"), ("email", "user.email"), ("name", "user.name"), ("roles", "user.roles")):
        if key in doc["actor"]:
            attrs[name] = doc["actor"][key]
    for key, name in (("type", "audit.target.type"), ("id", "audit.target.id"), ("name", "audit.target.name")):
        if key in doc.get("target", {}):
            attrs[name] = doc["target"][key]
    for key, name in (("changes", "audit.changes"), ("details", "audit.details"), ("reason", "audit.reason")):
        if doc.get(key):
            attrs[name] = doc[key]
    return attrs


def send(target: str, docs: list[tuple[dict[str, Any], int | None]]) -> list[str]:
    """Ingest (doc, time_ns) pairs; returns the ids in order."""
    records = [record(doc["event"], attributes_of(doc), time_ns=when) for doc, when in docs]
    with grpc.insecure_channel(target) as channel:
        channel.unary_unary(EXPORT)(request(records).SerializeToString(), timeout=30)
    return [next(kv.value.string_value for kv in r.attributes if kv.key == "log.record.uid") for r in records]


class Api:
    def __init__(self, base: str, token: str | None) -> None:
        self.base = base
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    def get(self, path: str, **params: Any) -> requests.Response:
        return requests.get(self.base + path, params=params, headers=self.headers, timeout=30)

    def ok(self, path: str, **params: Any) -> Any:
        answer = self.get(path, **params)
        assert answer.status_code == 200, answer.text
        return answer.json()


def services(events: list[dict[str, Any]]) -> list[str]:
    """The ids of the events services sent: without the API's own audit events (its sessions)."""
    return [e["id"] for e in events if e["source"].get("service") != "otaudit-collector"]


def token(db: str, tenant: str, role: str = "admin") -> str:
    with psycopg.connect(db) as conn:
        return access.create_token(conn, tenant=tenant, role=role, name=f"{tenant} {role}", pepper="")[1]


def set_plan(db: str, tenant: str, plan: str) -> None:
    with psycopg.connect(db) as conn:
        access.set_plan(conn, tenant, plan)


ROLE = example("accounts_configuration", "updateRole")
ACCESS = example("site_access", "siteAccess")
GROUP = example("inventory_configuration", "createAssetGroup")


@pytest.fixture
def trail(collector: RunningCollector) -> Iterator[dict[str, Any]]:
    """Two tenants' trails: acme has role updates, logins and an inventory event; globex a few."""
    now = time.time_ns()
    acme = send(
        collector.grpc_target,
        [(ROLE, now - i * 10**9) for i in range(12)]
        + [(ACCESS, now - 20 * 10**9), ({**ACCESS, "outcome": "failure"}, now - 21 * 10**9)]
        + [(GROUP, now - 30 * 10**9)],
    )
    globex = send(collector.grpc_target, [({**ROLE, "tenant": "globex"}, now - 5 * 10**9)])
    yield {
        "acme": acme,
        "globex": globex,
        "collector": collector,
        "api": Api(collector.api_url, token(collector.conninfo, "acme")),
    }


def test_a_checked_token_is_trusted_for_token_cache_seconds(db: str) -> None:
    """Reads look a token up once per auth.token_cache_seconds: a revocation or a plan
    change takes effect within that time, not necessarily at once."""
    for seconds in (3600, 0.5):
        set_plan(db, "acme", "basic")
        running = RunningCollector(settings_for(db, {("auth", "token_cache_seconds"): seconds}))
        try:
            text = token(db, "acme")
            api = Api(running.api_url, text)
            assert api.ok("/v1/whoami")["plan"] == "basic"
            set_plan(db, "acme", "pro")
            with psycopg.connect(db) as conn:
                assert access.revoke_token(conn, text)
            if seconds == 3600:
                assert api.ok("/v1/whoami")["plan"] == "basic", "served from the cache, not looked up"
            else:
                wait_until(lambda api=api: api.get("/v1/whoami").status_code == 401, what="the revocation to take effect")
        finally:
            running.stop()


def test_a_read_whose_access_cannot_be_recorded_is_refused_and_recorded_on_retry(collector: RunningCollector) -> None:
    """Reading is audited: when the ingest path cannot take the session's siteAccess event
    (saturated here), the read answers 503 instead of going unrecorded, and the next
    request opens the session and records it."""
    api = Api(collector.api_url, token(collector.conninfo, "acme"))
    ingestor = collector.collector.ingestor
    ingestor.in_flight = 10**6  # as if the collector were saturated with ingest requests
    try:
        refused = api.get("/v1/whoami")
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "5"
        assert "could not be recorded in the audit trail" in refused.json()["message"]
    finally:
        ingestor.in_flight = 0
    assert api.ok("/v1/whoami")["tenant"] == "acme"
    sessions = [e for e in api.ok("/v1/events", event="siteAccess")["events"] if e["source"]["service"] == "otaudit-collector"]
    assert len(sessions) == 1, "the session is recorded once, by the request that succeeded"


def test_every_read_route_needs_a_token_that_may_read(trail: dict[str, Any]) -> None:
    collector: RunningCollector = trail["collector"]
    routes = ["/v1/events", f"/v1/events/{trail['acme'][0]}", "/v1/feed", "/v1/tenants/acme/plan", "/v1/catalog", "/v1/whoami"]
    ingest = Api(collector.api_url, token(collector.conninfo, "acme", "ingest"))
    for route in routes:
        missing = Api(collector.api_url, None).get(route)
        assert missing.status_code == 401 and missing.headers["WWW-Authenticate"] == "Bearer"
        assert missing.json()["error"] == "unauthorized"
        wrong = Api(collector.api_url, "otaudit_000000000000_" + "x" * 43).get(route)
        assert wrong.status_code == 401 and "unknown or revoked" in wrong.json()["message"]
        refused = ingest.get(route)
        assert refused.status_code == 403 and "an ingest token can send events, not read them" in refused.json()["message"]
    assert requests.get(collector.api_url + "/healthz", timeout=10).status_code == 200


def test_a_token_sees_its_own_tenant_and_nothing_else(trail: dict[str, Any]) -> None:
    collector: RunningCollector = trail["collector"]
    globex = Api(collector.api_url, token(collector.conninfo, "globex"))
    seen = globex.ok("/v1/events")["events"]
    assert services(seen) == trail["globex"]
    (session,) = [e for e in seen if e["event"] == "siteAccess"]  # reading is audited, in the reader's tenant
    assert session["tenant"] == "globex" and session["actor"]["type"] == "api_key"
    for event_id in trail["acme"][:3]:
        assert globex.get(f"/v1/events/{event_id}").status_code == 404
    assert services(globex.ok("/v1/feed")["events"]) == trail["globex"]
    assert globex.get("/v1/tenants/acme/plan").status_code == 404
    assert globex.ok("/v1/whoami")["tenant"] == "globex"
    assert all(e["tenant"] == "acme" for e in trail["api"].ok("/v1/events", limit=1000)["events"])


def test_the_plan_decides_which_categories_are_read(trail: dict[str, Any]) -> None:
    api: Api = trail["api"]
    collector: RunningCollector = trail["collector"]
    basic = api.ok("/v1/events", limit=1000)
    assert basic["plan"] == "basic"
    assert {e["category"] for e in basic["events"]} == {"accounts_configuration", "site_access"}
    refused = api.get("/v1/events", category="inventory_configuration")
    assert refused.status_code == 403
    assert refused.json() == {
        "error": "plan_forbids",
        "message": "category 'inventory_configuration' is not in the 'basic' plan; the 'pro' plan includes it",
    }
    assert api.get("/v1/events", q="category:inventory_configuration").status_code == 403
    assert api.get(f"/v1/events/{trail['acme'][-1]}").status_code == 403  # the inventory event
    assert all(e["category"] != "inventory_configuration" for e in api.ok("/v1/feed", limit=1000)["events"])
    catalog = {c["category"]: c for c in api.ok("/v1/catalog")["categories"]}
    assert catalog["inventory_configuration"]["available"] is False
    assert catalog["inventory_configuration"]["plan_needed"] == "pro"
    assert catalog["site_access"]["available"] is True

    set_plan(collector.conninfo, "acme", "pro")  # an upgrade reveals history at once
    upgraded = api.ok("/v1/events", category="inventory_configuration")
    assert [e["id"] for e in upgraded["events"]] == [trail["acme"][-1]]
    assert api.ok(f"/v1/events/{trail['acme'][-1]}")["event"] == "createAssetGroup"
    plan = api.ok("/v1/tenants/acme/plan")
    assert plan["plan"] == "pro" and "inventory_configuration" in plan["categories"]
    assert "discovery_configuration" not in plan["categories"] and plan["query_window_days"] == 365
    me = api.ok("/v1/whoami")
    assert {k: me[k] for k in plan} == plan and me["role"] == "admin" and me["name"] == "acme admin"
    assert me["token_id"] == api.headers["Authorization"].split("_")[1]


def test_filters_and_the_search_phrase(trail: dict[str, Any]) -> None:
    api: Api = trail["api"]

    def ids(**params: Any) -> set[str]:
        return set(services(api.ok("/v1/events", limit=1000, **params)["events"]))

    roles, logins = set(trail["acme"][:12]), set(trail["acme"][12:14])
    assert ids(event="updateRole") == roles
    assert ids(event=["updateRole", "siteAccess"]) == roles | logins
    assert ids(actor="u-17") == roles | logins and ids(actor="ann@acme.test") == roles | logins
    assert ids(actor="nobody") == set()
    assert ids(target_type="role", target_id=ROLE["target"]["id"]) == roles
    assert ids(outcome="failure") == {trail["acme"][13]}
    assert ids(q="event:siteAccess -outcome:success") == {trail["acme"][13]}
    assert ids(q='event:"siteAccess" outcome:success') == {trail["acme"][12]}
    newest = api.ok("/v1/events", limit=1, event="updateRole")["events"][0]
    assert ids(q=f"time:>={newest['occurred_at']}") == {newest["id"]}
    assert ids(until=newest["occurred_at"]) == (roles | logins) - {newest["id"]}
    assert ids(since=int(time.time()) + 3600) == set()


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"limit": 5000}, "limit: must be between 1 and 1000"),
        ({"limit": "many"}, "limit: 'many' is not a number"),
        ({"since": "yesterday"}, "since: 'yesterday' is not an RFC 3339 time"),
        ({"since": "2026-01-01T00:00:00"}, "since: '2026-01-01T00:00:00' has no time zone"),
        ({"outcome": "maybe"}, "outcome: 'maybe' is not one of success, failure, denied"),
        ({"q": "bogus:x"}, "q: unknown key 'bogus'"),
        ({"q": "just words"}, "q: 'just words' is not a key:value term"),
        ({"q": "event:>x"}, "q: only time takes a comparison"),
        ({"cursor": "not-a-cursor"}, "cursor: not a cursor this API gave out"),
    ],
)
def test_bad_filters_are_400_naming_the_parameter(trail: dict[str, Any], params: dict[str, Any], words: str) -> None:
    answer = trail["api"].get("/v1/events", **params)
    assert answer.status_code == 400
    assert answer.json()["error"] == "bad_filter" and words in answer.json()["message"]


def test_paging_returns_each_event_once_while_new_ones_arrive(trail: dict[str, Any]) -> None:
    api: Api = trail["api"]
    before = {e["id"] for e in api.ok("/v1/events", limit=1000)["events"]}
    seen: list[str] = []
    cursor = None
    while True:
        page = api.ok("/v1/events", limit=4, **({"cursor": cursor} if cursor else {}))
        seen += [e["id"] for e in page["events"]]
        now = time.time_ns()  # new events, and a late one from the past, land between pages
        send(trail["collector"].grpc_target, [(ROLE, now), (ROLE, now - 3600 * 10**9)])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen))
    assert before <= set(seen)
    occurred = [e["occurred_at"] for e in api.ok("/v1/events", limit=1000)["events"]]
    assert occurred == sorted(occurred, reverse=True)


def test_the_feed_is_commit_order_and_resumable(trail: dict[str, Any]) -> None:
    api: Api = trail["api"]
    first = api.ok("/v1/feed", limit=5)
    seqs = [e["seq"] for e in first["events"]]
    assert seqs == [1, 2, 3, 4, 5] and first["next_after"] == 5
    rest = api.ok("/v1/feed", after=first["next_after"], limit=1000)
    # seq 15, inventory, is not in the plan; 16 is the API session this reading opened
    assert [e["seq"] for e in rest["events"]] == [*range(6, 15), 16]
    assert rest["events"][-1]["event"] == "siteAccess"
    assert api.ok("/v1/feed", after=rest["next_after"])["events"] == []
    assert api.get("/v1/feed", after=-1).status_code == 400


def test_the_query_window_clamps_since_and_says_so(db: str) -> None:
    # Its own collector: events older than the basic plan's 365 days stay stored (no retention run),
    # hidden by the query window only; enterprise (395 days) reads them.
    collector = RunningCollector(
        settings_for(
            db,
            {
                ("auth", "token_cache_seconds"): 0,
                ("retention", "enabled"): False,
                ("ingest", "clock_skew", "max_past_days"): 1000,
            },
        )
    )
    try:
        old = send(collector.grpc_target, [(ROLE, time.time_ns() - 380 * DAY_NS)])[0]
        recent = send(collector.grpc_target, [(ROLE, None)])[0]
        api = Api(collector.api_url, token(collector.conninfo, "acme"))
        answer = api.ok("/v1/events", since=int(time.time()) - 390 * 86_400)
        assert services(answer["events"]) == [recent]
        assert "is before the 'basic' plan's query window of 365 days" in answer["since_clamped"]
        assert "since_clamped" not in api.ok("/v1/events")
        set_plan(collector.conninfo, "acme", "enterprise")
        assert set(services(api.ok("/v1/events", since=int(time.time()) - 390 * 86_400)["events"])) == {old, recent}
    finally:
        collector.stop()


def test_one_event_has_its_old_and_new_values(trail: dict[str, Any]) -> None:
    event = trail["api"].ok(f"/v1/events/{trail['acme'][0]}")
    assert event["changes"] == ROLE["changes"]
    assert event["actor"]["id"] == "u-17" and event["seq"] >= 1 and event["received_at"].endswith("Z")
    missing = trail["api"].get("/v1/events/no-such-event")
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"


def _cursor(when: str, seq: int) -> str:
    return base64.urlsafe_b64encode(json.dumps([when, seq]).encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    ("path", "params", "status"),
    [
        ("/v1/events", {"event": "a\x00b"}, 400),
        ("/v1/events", {"q": "actor:a\x00b"}, 400),
        ("/v1/events", {"cursor": _cursor("2026-01-01T00:00:00", 1)}, 400),  # a time without a zone
        ("/v1/events/a%00b", {}, 400),
    ],
)
def test_values_postgresql_cannot_take_are_refused_not_500(
    trail: dict[str, Any], path: str, params: dict[str, Any], status: int
) -> None:
    """A NUL in a text value, a cursor time without a zone: 400, and the API goes on."""
    api: Api = trail["api"]
    answer = api.get(path, **params)
    assert answer.status_code == status, answer.text
    assert api.get("/v1/events", limit=1).status_code == 200  # and it goes on serving
