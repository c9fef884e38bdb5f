"""Viewer tokens against a real collector and PostgreSQL: minted by an admin token, checked by
their signature, narrowed on every route.

The table VIEWER has one entry per operation of the OpenAPI document (a route added later
without one fails the test): each calls its route with viewer tokens narrowed to a category,
an actor, a target, or without export, and checks that nothing beyond the narrowing comes
back and that asking for more is refused. Then what a token's life holds: expiry, revocation,
forgery, and the person it is for as the actor of the trail's own events.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

import psycopg
import pytest
import requests
from psycopg.conninfo import make_conninfo
from support import RunningCollector, settings_for, wait_until
from test_api_reads import ACCESS, GROUP, ROLE, send, token

from otaudit_collector.core.viewer_tokens import mint as viewer_mint
from otaudit_collector.core.viewer_tokens import root_key, signing_key, unverified_claims

DOCUMENT = json.loads(files("otaudit_collector.api").joinpath("openapi.json").read_text(encoding="utf-8"))
MINE = {"actor": "u-17", "target": {"type": "role", "id": "r-3"}}


@dataclass(frozen=True, slots=True)
class Trail:
    """acme: a role update by u-17 on role r-3 (``mine``), one by u-99 on r-9 (``theirs``), a
    sign-in by u-17 (``access``, another category) and an inventory event (outside the plan);
    globex: one event. ``viewers``: tokens narrowed to one category, to u-17, to r-3, and one
    that may export u-17's events."""

    collector: RunningCollector
    admin: dict[str, str]
    mine: str
    theirs: str
    access: str
    outside_plan: str
    other_tenant: str
    viewers: dict[str, dict[str, str]]

    @property
    def url(self) -> str:
        return self.collector.api_url

    def call(self, method: str, path: str, who: str, **kwargs: Any) -> requests.Response:
        return requests.request(method, self.url + path, headers=self.viewers[who], timeout=60, **kwargs)

    def shows(self, text: str, *ids: str) -> set[str]:
        return {i for i in ids if i in text}


def mint(url: str, headers: dict[str, str], **body: Any) -> requests.Response:
    return requests.post(
        url + "/v1/viewer-tokens", json={"for": "Ann Lee (ann@customer.example)", **body}, headers=headers, timeout=60
    )


def bearer(answer: requests.Response) -> dict[str, str]:
    assert answer.status_code == 201, answer.text
    return {"Authorization": f"Bearer {answer.json()['token']}"}


@pytest.fixture(scope="module")
def trail(pg_server: str, template_db: str) -> Iterator[Trail]:
    name = f"otaudit_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    conninfo = make_conninfo(pg_server, dbname=name)
    collector = RunningCollector(settings_for(conninfo, {("auth", "token_cache_seconds"): 30, ("exports", "poll_seconds"): 0.05}))
    try:
        now = time.time_ns()
        theirs_doc = {
            **ROLE,
            "actor": {**ROLE["actor"], "id": "u-99", "email": "bob@acme.test"},
            "target": {**ROLE["target"], "id": "r-9"},
        }
        mine, theirs, access, outside = send(collector.grpc_target, [(ROLE, now), (theirs_doc, now), (ACCESS, now), (GROUP, now)])
        (other,) = send(collector.grpc_target, [({**ROLE, "tenant": "globex"}, now)])
        assert sorted(collector.call(collector.collector.make_checkpoints_now())) == ["acme", "globex"]
        admin = {"Authorization": f"Bearer {token(conninfo, 'acme')}"}
        url = collector.api_url
        viewers = {
            "category": bearer(mint(url, admin, categories=["accounts_configuration"])),
            "actor": bearer(mint(url, admin, actor="u-17")),
            "target": bearer(mint(url, admin, target={"type": "role", "id": "r-3"})),
            "export": bearer(mint(url, admin, actor="u-17", export=True)),
        }
        yield Trail(collector, admin, mine, theirs, access, outside, other, viewers)
    finally:
        collector.stop()
        with psycopg.connect(pg_server, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# -- the table: one entry per documented operation -------------------------------------------------

VIEWER: dict[tuple[str, str], Callable[[Trail], None]] = {}


def entry(method: str, path: str) -> Callable[[Callable[[Trail], None]], Callable[[Trail], None]]:
    def register(check: Callable[[Trail], None]) -> Callable[[Trail], None]:
        VIEWER[(method, path)] = check
        return check

    return register


def _viewer_forbids(answer: requests.Response, *words: str) -> None:
    assert answer.status_code == 403 and answer.json()["error"] == "viewer_forbids", answer.text[:300]
    for word in words:
        assert word in answer.json()["message"], answer.text


def _narrowed(t: Trail, body: str, who: str) -> None:
    """What a viewer token's answer may hold: only its own events, never another tenant's or one outside the plan."""
    allowed = {"category": {t.mine, t.theirs}, "actor": {t.mine, t.access}, "target": {t.mine}, "export": {t.mine, t.access}}[who]
    shown = t.shows(body, t.mine, t.theirs, t.access, t.outside_plan, t.other_tenant)
    assert shown <= allowed, f"{who}: {shown - allowed} beyond the token's scope"


@entry("GET", "/v1/events")
def _events(t: Trail) -> None:
    for who in ("category", "actor", "target"):
        answer = t.call("GET", "/v1/events", who)
        assert answer.status_code == 200 and t.mine in answer.text, answer.text[:300]
        _narrowed(t, answer.text, who)
    _viewer_forbids(t.call("GET", "/v1/events", "category", params={"category": "site_access"}), "site_access")
    _viewer_forbids(t.call("GET", "/v1/events", "actor", params={"actor": "u-99"}), "u-17")
    _viewer_forbids(t.call("GET", "/v1/events", "target", params={"target_id": "r-9"}), "r-3")
    assert t.mine in t.call("GET", "/v1/events", "actor", params={"actor": "u-17"}).text  # asking for its own is fine
    # q terms on the same key would be OR-ed with the token's: refused; negated ones only narrow further
    _viewer_forbids(t.call("GET", "/v1/events", "actor", params={"q": "actor:u-99"}), "u-17")
    _viewer_forbids(t.call("GET", "/v1/events", "target", params={"q": "target_id:r-9"}), "r-3")
    _viewer_forbids(t.call("GET", "/v1/events", "category", params={"q": "category:site_access"}), "site_access")
    narrowed = t.call("GET", "/v1/events", "actor", params={"q": "-event:updateRole"})
    assert narrowed.status_code == 200 and t.shows(narrowed.text, t.mine, t.theirs, t.access) == {t.access}


@entry("GET", "/v1/events/{id}")
def _event(t: Trail) -> None:
    for who, hidden in (("category", t.access), ("actor", t.theirs), ("target", t.theirs), ("target", t.access)):
        assert t.call("GET", f"/v1/events/{hidden}", who).status_code == 404, (who, hidden)
        assert t.call("GET", f"/v1/events/{t.mine}", who).json()["id"] == t.mine
    assert t.call("GET", f"/v1/events/{t.other_tenant}", "actor").status_code == 404


@entry("GET", "/v1/feed")
def _feed(t: Trail) -> None:
    for who in ("category", "actor", "target"):
        answer = t.call("GET", "/v1/feed", who)
        assert answer.status_code == 200 and t.mine in answer.text
        _narrowed(t, answer.text, who)


@entry("GET", "/v1/tenants/{tenant}/plan")
def _plan(t: Trail) -> None:
    assert t.call("GET", "/v1/tenants/acme/plan", "category").json()["categories"] == ["accounts_configuration"]
    assert t.call("GET", "/v1/tenants/globex/plan", "category").status_code == 404


@entry("GET", "/v1/whoami")
def _whoami(t: Trail) -> None:
    me = t.call("GET", "/v1/whoami", "target").json()
    assert me["role"] == "viewer" and me["name"] == "Ann Lee (ann@customer.example)" and me["tenant"] == "acme"
    assert me["viewer"] == {"categories": None, "actor": None, "target": {"type": "role", "id": "r-3"}, "export": False}


@entry("GET", "/v1/catalog")
def _catalog(t: Trail) -> None:
    listed = {c["category"]: c for c in t.call("GET", "/v1/catalog", "category").json()["categories"]}
    available = {name: c["available"] for name, c in listed.items()}
    assert available["accounts_configuration"] and not available["site_access"] and not available["inventory_configuration"]
    assert listed["site_access"]["plan_needed"] is None, "the plan reads it: the token, not the plan, leaves it out"
    assert listed["inventory_configuration"]["plan_needed"] == "pro"


@entry("GET", "/v1/export")
def _export(t: Trail) -> None:
    _viewer_forbids(t.call("GET", "/v1/export", "actor", params={"format": "ndjson"}), "without export")
    answer = t.call("GET", "/v1/export", "export", params={"format": "ndjson"})
    assert answer.status_code == 200 and t.mine in answer.text and t.access in answer.text
    _narrowed(t, answer.text, "export")
    _viewer_forbids(t.call("GET", "/v1/export", "export", params={"format": "ndjson", "actor": "u-99"}))


@entry("POST", "/v1/exports")
def _export_job(t: Trail) -> None:
    _viewer_forbids(t.call("POST", "/v1/exports", "export", json={"format": "ndjson"}), "export jobs")


@entry("GET", "/v1/exports/{id}")
def _export_job_status(t: Trail) -> None:
    made = requests.post(t.url + "/v1/exports", json={"format": "ndjson"}, headers=t.admin, timeout=60)
    assert made.status_code == 202, made.text
    _viewer_forbids(t.call("GET", f"/v1/exports/{made.json()['id']}", "export"), "export jobs")


@entry("GET", "/v1/exports/{id}/download")
def _download(t: Trail) -> None:
    """Tokenless, by a signed URL only an export job's status hands out, which no viewer token reads."""
    answer = t.call("GET", "/v1/exports/exp_x/download", "export", params={"expires": "1", "signature": "x"})
    assert answer.status_code in (403, 404) and t.mine not in answer.text


def _log_route(path: str, **params: Any) -> Callable[[Trail], None]:
    """The log's checkpoint, key, tiles and consistency proofs hold hashes and sizes, no event: a
    viewer token reads its own tenant's, like an auditor."""

    def check(t: Trail) -> None:
        answer = t.call("GET", path, "target", params=params)
        assert answer.status_code == 200, answer.text[:300]
        assert not t.shows(answer.text, t.mine, t.theirs, t.access, t.outside_plan, t.other_tenant)

    return check


VIEWER[("GET", "/v1/log/checkpoint")] = _log_route("/v1/log/checkpoint")
VIEWER[("GET", "/v1/log/key")] = _log_route("/v1/log/key")
VIEWER[("GET", "/v1/log/tile/{path}")] = _log_route("/v1/log/tile/0/000.p/1")
VIEWER[("GET", "/v1/log/consistency")] = _log_route("/v1/log/consistency", old=1)


@entry("GET", "/v1/events/{id}/proof")
def _proof(t: Trail) -> None:
    assert t.call("GET", f"/v1/events/{t.mine}/proof", "target").json()["event_id"] == t.mine
    for who, hidden in (("target", t.theirs), ("actor", t.theirs), ("category", t.access)):
        assert t.call("GET", f"/v1/events/{hidden}/proof", who).status_code == 404


def _changes_nothing(method: str, path: str, body: Any = None) -> Callable[[Trail], None]:
    def check(t: Trail) -> None:
        for who in ("category", "export"):
            answer = t.call(method, path.replace("{id}", "str_x"), who, json=body)
            assert answer.status_code == 403 and answer.json()["error"] == "forbidden", answer.text[:300]
            assert "viewer" in answer.json()["message"]

    return check


for _method, _path in [(m.upper(), p) for p, item in DOCUMENT["paths"].items() for m in item if p.startswith("/v1/streams")]:
    VIEWER[(_method, _path)] = _changes_nothing(_method, _path, {"name": "x", "url": "https://x.example.com/"})
VIEWER[("POST", "/v1/viewer-tokens")] = _changes_nothing("POST", "/v1/viewer-tokens", {"for": "Eve"})
VIEWER[("POST", "/v1/viewer-tokens/revoke")] = _changes_nothing("POST", "/v1/viewer-tokens/revoke")


def _open(path: str) -> Callable[[Trail], None]:
    def check(t: Trail) -> None:
        assert requests.get(t.url + path, timeout=60).status_code in (200, 503)  # no token at all

    return check


for _path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
    VIEWER[("GET", _path)] = _open(_path)


def _operations() -> list[tuple[str, str]]:
    return [(method.upper(), path) for path, item in DOCUMENT["paths"].items() for method in item if method != "parameters"]


@pytest.mark.parametrize("operation", _operations(), ids=" ".join)
def test_every_route_refuses_a_viewer_token_beyond_its_scope(trail: Trail, operation: tuple[str, str]) -> None:
    check = VIEWER.get(operation)
    assert check is not None, f"{operation[0]} {operation[1]} is documented but has no entry in VIEWER: add one"
    check(trail)


def test_the_table_names_only_documented_routes() -> None:
    assert set(VIEWER) == set(_operations())


# -- a token's life --------------------------------------------------------------------------------


def test_minting_is_checked_and_only_narrows(trail: Trail) -> None:
    url = trail.url
    cases = {
        "no person": ({"for": ""}, "for"),
        "too long": ({"minutes": 61}, "minutes"),
        "unknown category": ({"categories": ["nope"]}, "categories"),
        "outside the plan": ({"categories": ["inventory_configuration"]}, "inventory_configuration"),
        "bad target": ({"target": {"kind": "role"}}, "target"),
        "export not a flag": ({"export": "yes"}, "export"),
        "unknown field": ({"role": "admin"}, "role"),
    }
    for what, (body, said) in cases.items():
        answer = mint(url, trail.admin, **body)
        assert answer.status_code == 400 and answer.json()["error"] == "bad_viewer_token", (what, answer.text)
        assert said in answer.json()["message"], (what, answer.text)
    made = mint(url, trail.admin, minutes=2)
    assert made.headers["Cache-Control"] == "no-store" and made.json()["expires_in"] == 120
    assert made.json()["scope"] == {"categories": None, "actor": None, "target": None, "export": False}
    auditor = token(trail.collector.conninfo, "acme", "auditor")
    refused = mint(url, {"Authorization": f"Bearer {auditor}"})
    assert refused.status_code == 403 and "admin" in refused.json()["message"]


def test_an_expired_forged_or_revoked_token_is_refused_and_says_why(trail: Trail) -> None:
    url = trail.url
    short = bearer(mint(url, trail.admin, minutes=1 / 60))  # one second
    assert requests.get(url + "/v1/whoami", headers=short, timeout=30).status_code == 200
    wait_until(lambda: requests.get(url + "/v1/whoami", headers=short, timeout=30).status_code == 401, 10, "the expiry")
    expired = requests.get(url + "/v1/whoami", headers=short, timeout=30).json()
    assert expired["error"] == "token_expired" and "new one" in expired["message"]

    text = mint(url, trail.admin, categories=["accounts_configuration"]).json()["token"]
    prefix, claims, signature = text.split(".")
    widened = json.loads(base64.urlsafe_b64decode(claims + "=" * (-len(claims) % 4)))
    widened["scope"]["categories"] = None
    forged_claims = base64.urlsafe_b64encode(json.dumps(widened).encode()).rstrip(b"=").decode()
    for forged in (f"{prefix}.{forged_claims}.{signature}", text[:-2] + "AA", text + "x", "otaudit-viewer.e30.AA"):
        answer = requests.get(url + "/v1/events", headers={"Authorization": f"Bearer {forged}"}, timeout=30)
        assert answer.status_code == 401 and answer.json()["error"] == "unauthorized", answer.text

    # Knowing the code, the tenant and the (here empty) pepper is not enough to mint: the key's root is random.
    real = unverified_claims(text)
    for root in (b"", root_key(b"", ""), root_key(bytes(32), "")):  # b"": a key from the pepper alone
        guessed = viewer_mint(real, signing_key(root, "acme", real.generation))
        answer = requests.get(url + "/v1/whoami", headers={"Authorization": f"Bearer {guessed}"}, timeout=30)
        assert answer.status_code == 401, answer.text

    live = bearer(mint(url, trail.admin))
    assert requests.post(url + "/v1/viewer-tokens/revoke", headers=trail.admin, timeout=30).status_code == 200
    assert requests.get(url + "/v1/whoami", headers=live, timeout=30).status_code == 401  # at once on this replica
    assert requests.get(url + "/v1/whoami", headers=bearer(mint(url, trail.admin)), timeout=30).status_code == 200
    with psycopg.connect(trail.collector.conninfo) as conn:
        row = conn.execute(
            "SELECT doc FROM events WHERE tenant = 'acme' AND event = 'revokeViewerTokens' ORDER BY seq DESC LIMIT 1"
        ).fetchone()
    assert row is not None and row[0]["details"]["generation"] >= 2 and row[0]["actor"]["roles"] == ["admin"]


def test_the_trail_says_which_person_looked(trail: Trail) -> None:
    person = f"Cleo {uuid.uuid4().hex[:6]} (cleo@customer.example)"
    viewer = bearer(mint(trail.url, trail.admin, **{"for": person}))
    assert requests.get(trail.url + "/v1/events", headers=viewer, timeout=30).status_code == 200
    with psycopg.connect(trail.collector.conninfo) as conn:
        rows = conn.execute(
            "SELECT doc FROM events WHERE tenant = 'acme' AND event = 'siteAccess' AND doc->'actor'->>'name' = %s", (person,)
        ).fetchall()
    assert len(rows) == 1, "one session event for the token's first request"
    doc = rows[0][0]
    assert doc["actor"]["type"] == "user" and doc["actor"]["roles"] == ["viewer"] and doc["details"]["method"] == "viewer_token"
    assert doc["actor"]["id"].startswith("viewer-")
