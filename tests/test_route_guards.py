"""The tenant and the plan (categories AND query window) on every route of the API port, in one
table-driven test whose route list is the OpenAPI document's: a documented operation without an
entry in GUARDS fails, so a route added later cannot forget them.

Each entry says how to call its route and checks, against a real collector and PostgreSQL, that
(a) another tenant's events never appear, (b) a category outside the plan never appears, and
naming one is 403, (c) an event older than the plan's query window never appears (one event
outside the window is a 404, as if absent). Routes that read no events show that none leak.
"""

from __future__ import annotations

import io
import json
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

import psycopg
import pytest
import requests
from psycopg.conninfo import make_conninfo
from support import RunningCollector, settings_for, wait_until
from test_api_reads import GROUP, ROLE, send, token

DOCUMENT = json.loads(files("otaudit_collector.api").joinpath("openapi.json").read_text(encoding="utf-8"))
DAY_NS = 86_400 * 10**9
OUTSIDE = "inventory_configuration"  # a category the 'basic' plan does not read


@dataclass(frozen=True, slots=True)
class Trail:
    """acme (plan basic: 365 days) with a readable event, one of a category outside its plan and one
    500 days old; globex with one event of its own. Admin tokens of both."""

    collector: RunningCollector
    readable: str
    outside_plan: str
    too_old: str
    other_tenant: str
    acme: dict[str, str]
    globex: dict[str, str]

    @property
    def url(self) -> str:
        return self.collector.api_url

    def get(self, path: str, headers: dict[str, str] | None = None, **params: Any) -> requests.Response:
        return requests.get(self.url + path, params=params, headers=self.acme if headers is None else headers, timeout=60)

    def hidden(self, body: str | bytes) -> None:
        """(a), (b), (c): none of the events acme may not read is in ``body``."""
        text = body if isinstance(body, str) else body.decode("utf-8", "replace")
        for name, event_id in (("another tenant's", self.other_tenant), ("outside the plan", self.outside_plan)):
            assert event_id not in text, f"an event {name} appears"
        assert self.too_old not in text, "an event older than the query window appears"

    def job(self, **body: Any) -> dict[str, Any]:
        made = requests.post(self.url + "/v1/exports", json={"format": "ndjson", **body}, headers=self.acme, timeout=60)
        assert made.status_code == 202, made.text
        job_id = made.json()["id"]
        wait_until(lambda: self.get(f"/v1/exports/{job_id}").json()["state"] == "done", 60, "the export job")
        answer: dict[str, Any] = self.get(f"/v1/exports/{job_id}").json()
        return answer


@pytest.fixture(scope="module")
def trail(pg_server: str, template_db: str) -> Iterator[Trail]:
    name = f"otaudit_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    conninfo = make_conninfo(pg_server, dbname=name)
    settings = settings_for(
        conninfo,
        {
            ("ingest", "clock_skew", "max_past_days"): 1000,  # old events keep their time
            ("exports", "poll_seconds"): 0.05,
            ("auth", "token_cache_seconds"): 0,
            ("retention", "enabled"): False,  # the old event stays stored: hidden by the window, not deleted
        },
    )
    collector = RunningCollector(settings)
    try:
        now = time.time_ns()
        readable, outside, old = send(collector.grpc_target, [(ROLE, now), (GROUP, now - 10**9), (ROLE, now - 500 * DAY_NS)])
        (other,) = send(collector.grpc_target, [({**ROLE, "tenant": "globex"}, now)])
        assert sorted(collector.call(collector.collector.make_checkpoints_now())) == ["acme", "globex"]  # the log's routes
        yield Trail(
            collector,
            readable,
            outside,
            old,
            other,
            {"Authorization": f"Bearer {token(conninfo, 'acme')}"},
            {"Authorization": f"Bearer {token(conninfo, 'globex')}"},
        )
    finally:
        collector.stop()
        with psycopg.connect(pg_server, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _forbidden(answer: requests.Response) -> None:
    """Naming a category outside the plan: 403 naming the plan that includes it."""
    assert answer.status_code == 403, answer.text[:300]
    assert answer.json()["error"] == "plan_forbids" and OUTSIDE in answer.json()["message"]


# -- the table: one entry per documented operation -----------------------------------------------

GUARDS: dict[tuple[str, str], Callable[[Trail], None]] = {}


def guard(method: str, path: str) -> Callable[[Callable[[Trail], None]], Callable[[Trail], None]]:
    def register(check: Callable[[Trail], None]) -> Callable[[Trail], None]:
        GUARDS[(method, path)] = check
        return check

    return register


@guard("GET", "/v1/events")
def _events(t: Trail) -> None:
    for params in ({}, {"since": "2000-01-01T00:00:00Z", "limit": 1000}, {"q": "event:updateRole"}):
        answer = t.get("/v1/events", **params)
        assert answer.status_code == 200 and t.readable in answer.text
        t.hidden(answer.text)
    _forbidden(t.get("/v1/events", category=OUTSIDE))
    _forbidden(t.get("/v1/events", q=f"category:{OUTSIDE}"))


@guard("GET", "/v1/events/{id}")
def _event(t: Trail) -> None:
    assert t.get(f"/v1/events/{t.readable}").json()["id"] == t.readable
    assert t.get(f"/v1/events/{t.other_tenant}").status_code == 404  # (a): as if it were not there
    assert t.get(f"/v1/events/{t.readable}", headers=t.globex).status_code == 404
    _forbidden(t.get(f"/v1/events/{t.outside_plan}"))  # (b)
    old = t.get(f"/v1/events/{t.too_old}")  # (c): as if it were not there
    assert old.status_code == 404 and "query window of 365 days" in old.json()["message"]


@guard("GET", "/v1/feed")
def _feed(t: Trail) -> None:
    answer = t.get("/v1/feed", limit=1000)
    assert answer.status_code == 200 and t.readable in answer.text
    t.hidden(answer.text)
    # The feed takes no category: there is nothing to name. Resuming from the start shows no more either.
    t.hidden(t.get("/v1/feed", after=0, limit=1).text + t.get("/v1/feed", after=0, limit=1000).text)


@guard("GET", "/v1/tenants/{tenant}/plan")
def _plan(t: Trail) -> None:
    plan = t.get("/v1/tenants/acme/plan").json()
    assert plan["plan"] == "basic" and OUTSIDE not in plan["categories"] and plan["query_window_days"] == 365
    assert t.get("/v1/tenants/globex/plan").status_code == 404  # another tenant's plan is not this token's to read
    t.hidden(json.dumps(plan))


@guard("GET", "/v1/whoami")
def _whoami(t: Trail) -> None:
    me = t.get("/v1/whoami")
    assert me.json()["tenant"] == "acme" and OUTSIDE not in me.json()["categories"]
    t.hidden(me.text)


@guard("GET", "/v1/catalog")
def _catalog(t: Trail) -> None:
    catalog = t.get("/v1/catalog")
    available = {c["category"]: c["available"] for c in catalog.json()["categories"]}
    assert available[OUTSIDE] is False and available["accounts_configuration"] is True  # listed, not readable
    t.hidden(catalog.text)


def _bundle_events(content: bytes) -> str:
    """The events.ndjson and manifest of a bundle (a zip: its members are compressed)."""
    with zipfile.ZipFile(io.BytesIO(content)) as bundle:
        return bundle.read("events.ndjson").decode() + bundle.read("manifest.json").decode()


@guard("GET", "/v1/export")
def _export(t: Trail) -> None:
    for fmt in ("csv", "ndjson", "json"):
        for params in ({}, {"since": "2000-01-01T00:00:00Z"}):
            answer = t.get("/v1/export", format=fmt, **params)
            assert answer.status_code == 200 and t.readable in answer.text
            t.hidden(answer.text)
    bundle = t.get("/v1/export", format="bundle")
    assert bundle.status_code == 200, bundle.text[:300]
    assert t.readable in _bundle_events(bundle.content)
    t.hidden(_bundle_events(bundle.content))
    _forbidden(t.get("/v1/export", format="csv", category=OUTSIDE))
    _forbidden(t.get("/v1/export", format="bundle", category=OUTSIDE))


@guard("POST", "/v1/exports")
def _create_job(t: Trail) -> None:
    refused = requests.post(t.url + "/v1/exports", json={"format": "csv", "category": [OUTSIDE]}, headers=t.acme, timeout=60)
    _forbidden(refused)
    job = t.job(since="2000-01-01T00:00:00Z")  # its file is checked under the download's entry
    t.hidden(json.dumps(job))


@guard("GET", "/v1/exports/{id}")
def _job(t: Trail) -> None:
    job = t.job()
    assert t.get(f"/v1/exports/{job['id']}", headers=t.globex).status_code == 404  # another tenant's job
    t.hidden(json.dumps(job))


@guard("GET", "/v1/exports/{id}/download")
def _download(t: Trail) -> None:
    for fmt in ("csv", "ndjson", "json", "bundle"):
        job = t.job(format=fmt, since="2000-01-01T00:00:00Z")
        answer = requests.get(job["download_url"], timeout=60)  # tokenless: the URL is signed (and full)
        text = _bundle_events(answer.content) if fmt == "bundle" else answer.text
        assert answer.status_code == 200 and t.readable in text
        t.hidden(text)


# Streams: the token's tenant only; a filter naming a category outside the plan is refused like a read
# (delivery keeps to the plan, tests/streams/); a stream's answer holds no event.


def _stream(t: Trail, headers: dict[str, str] | None = None) -> dict[str, Any]:
    body = {"name": f"s-{uuid.uuid4().hex[:8]}", "url": "http://127.0.0.1:9/never", "filter": {"category": "site_access"}}
    made = requests.post(t.url + "/v1/streams", json=body, headers=t.acme if headers is None else headers, timeout=60)
    assert made.status_code == 201, made.text
    answer: dict[str, Any] = made.json()
    return answer


@guard("GET", "/v1/streams")
def _streams(t: Trail) -> None:
    mine, theirs = _stream(t), _stream(t, t.globex)
    listed = t.get("/v1/streams")
    assert mine["id"] in listed.text and theirs["id"] not in listed.text
    t.hidden(listed.text)


@guard("POST", "/v1/streams")
def _create_stream(t: Trail) -> None:
    body = {"name": "outside", "url": "http://127.0.0.1:9/never", "filter": {"category": [OUTSIDE]}}
    _forbidden(requests.post(t.url + "/v1/streams", json=body, headers=t.acme, timeout=60))
    body["filter"] = {"q": f"category:{OUTSIDE}"}
    _forbidden(requests.post(t.url + "/v1/streams", json=body, headers=t.acme, timeout=60))
    t.hidden(json.dumps(_stream(t)))


@guard("GET", "/v1/streams/{id}")
def _show_stream(t: Trail) -> None:
    made = _stream(t)
    assert t.get(f"/v1/streams/{made['id']}").status_code == 200
    assert t.get(f"/v1/streams/{made['id']}", headers=t.globex).status_code == 404  # another tenant's stream
    t.hidden(t.get(f"/v1/streams/{made['id']}").text)


@guard("PATCH", "/v1/streams/{id}")
def _change_stream(t: Trail) -> None:
    made = _stream(t)
    path = f"{t.url}/v1/streams/{made['id']}"
    _forbidden(requests.patch(path, json={"filter": {"category": OUTSIDE}}, headers=t.acme, timeout=60))
    assert requests.patch(path, json={"name": "x-other"}, headers=t.globex, timeout=60).status_code == 404
    changed = requests.patch(path, json={"filter": {"event": "siteAccess"}}, headers=t.acme, timeout=60)
    assert changed.status_code == 200
    t.hidden(changed.text)


@guard("DELETE", "/v1/streams/{id}")
def _delete_stream(t: Trail) -> None:
    made = _stream(t)
    path = f"{t.url}/v1/streams/{made['id']}"
    assert requests.delete(path, headers=t.globex, timeout=60).status_code == 404
    assert requests.delete(path, headers=t.acme, timeout=60).status_code == 204


def _stream_state(verb: str) -> Callable[[Trail], None]:
    def check(t: Trail) -> None:
        made = _stream(t)
        path = f"{t.url}/v1/streams/{made['id']}/{verb}"
        assert requests.post(path, headers=t.globex, timeout=60).status_code == 404
        answer = requests.post(path, headers=t.acme, timeout=60)
        assert answer.status_code == 200
        t.hidden(answer.text)

    return check


GUARDS[("POST", "/v1/streams/{id}/pause")] = _stream_state("pause")
GUARDS[("POST", "/v1/streams/{id}/resume")] = _stream_state("resume")


# The log's routes: the tenant's own tree, hashes only; an inclusion proof names an event, so the plan applies.


def _origin_of(note: str) -> str:
    return note.split("\n", 1)[0]


@guard("GET", "/v1/log/checkpoint")
def _checkpoint(t: Trail) -> None:
    mine, theirs = t.get("/v1/log/checkpoint"), t.get("/v1/log/checkpoint", headers=t.globex)
    assert mine.status_code == 200 and theirs.status_code == 200
    assert _origin_of(mine.text).endswith("/acme") and _origin_of(theirs.text).endswith("/globex")
    t.hidden(mine.text)


@guard("GET", "/v1/log/key")
def _log_key(t: Trail) -> None:
    key = t.get("/v1/log/key")
    assert key.status_code == 200 and key.text.split("+")[0].endswith("/acme")
    t.hidden(key.text)


@guard("GET", "/v1/log/tile/{path}")
def _tile(t: Trail) -> None:
    mine = t.get("/v1/log/tile/0/000.p/1")
    theirs = t.get("/v1/log/tile/0/000.p/1", headers=t.globex)
    assert mine.status_code == 200 and len(mine.content) == 32 and theirs.status_code == 200
    assert mine.content != theirs.content  # each token reads its own tenant's tree
    assert t.get("/v1/log/tile/entries/000.p/1").status_code == 404  # entry bundles hold content: not served


@guard("GET", "/v1/log/consistency")
def _consistency(t: Trail) -> None:
    answer = t.get("/v1/log/consistency", old=1)
    assert answer.status_code == 200, answer.text
    t.hidden(answer.text)


@guard("GET", "/v1/events/{id}/proof")
def _proof(t: Trail) -> None:
    answer = t.get(f"/v1/events/{t.readable}/proof")
    assert answer.status_code == 200 and answer.json()["event_id"] == t.readable
    t.hidden(answer.text)
    assert t.get(f"/v1/events/{t.other_tenant}/proof").status_code == 404  # (a)
    assert t.get(f"/v1/events/{t.readable}/proof", headers=t.globex).status_code == 404
    _forbidden(t.get(f"/v1/events/{t.outside_plan}/proof"))  # (b)
    assert t.get(f"/v1/events/{t.too_old}/proof").status_code == 404  # (c)


def _mint(t: Trail, headers: dict[str, str], **body: Any) -> requests.Response:
    return requests.post(t.url + "/v1/viewer-tokens", json={"for": "Ann", **body}, headers=headers, timeout=60)


@guard("POST", "/v1/viewer-tokens")
def _viewer_tokens(t: Trail) -> None:
    """A viewer token reads its minting token's tenant only, within the plan; it can only narrow."""
    made = _mint(t, t.acme)
    assert made.status_code == 201 and made.json()["tenant"] == "acme", made.text
    viewer = {"Authorization": f"Bearer {made.json()['token']}"}
    answer = t.get("/v1/events", headers=viewer, since="2000-01-01T00:00:00Z", limit=1000)
    assert answer.status_code == 200 and t.readable in answer.text
    t.hidden(answer.text)
    _forbidden(t.get("/v1/events", headers=viewer, category=OUTSIDE))
    assert t.get(f"/v1/events/{t.other_tenant}", headers=viewer).status_code == 404
    assert t.get(f"/v1/events/{t.too_old}", headers=viewer).status_code == 404
    refused = _mint(t, t.acme, categories=[OUTSIDE])
    assert refused.status_code == 400 and OUTSIDE in refused.json()["message"], refused.text
    assert _mint(t, t.acme, tenant="globex").status_code == 400  # the tenant is the minting token's, never named
    theirs = _mint(t, t.globex)
    assert theirs.status_code == 201 and theirs.json()["tenant"] == "globex"
    other = {"Authorization": f"Bearer {theirs.json()['token']}"}
    assert t.readable not in t.get("/v1/events", headers=other).text


@guard("POST", "/v1/viewer-tokens/revoke")
def _viewer_revoke(t: Trail) -> None:
    """Revoking acme's viewer tokens stops acme's, not globex's."""
    mine = {"Authorization": f"Bearer {_mint(t, t.acme).json()['token']}"}
    theirs = {"Authorization": f"Bearer {_mint(t, t.globex).json()['token']}"}
    revoked = requests.post(t.url + "/v1/viewer-tokens/revoke", headers=t.acme, timeout=60)
    assert revoked.status_code == 200 and revoked.json()["tenant"] == "acme", revoked.text
    assert t.get("/v1/whoami", headers=mine).status_code == 401
    assert t.get("/v1/whoami", headers=theirs).status_code == 200


def _open(path: str) -> Callable[[Trail], None]:
    def check(t: Trail) -> None:
        answer = requests.get(t.url + path, timeout=60)
        assert answer.status_code in (200, 503)
        for event_id in (t.readable, t.outside_plan, t.too_old, t.other_tenant):
            assert event_id not in answer.text, "an open route shows no event"

    return check


for _path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
    GUARDS[("GET", _path)] = _open(_path)


# -- the test ------------------------------------------------------------------------------------------


def _operations() -> list[tuple[str, str]]:
    return [(method.upper(), path) for path, item in DOCUMENT["paths"].items() for method in item if method != "parameters"]


@pytest.mark.parametrize("operation", _operations(), ids=" ".join)
def test_every_documented_route_keeps_to_the_tenant_and_the_plan(trail: Trail, operation: tuple[str, str]) -> None:
    check = GUARDS.get(operation)
    assert check is not None, f"{operation[0]} {operation[1]} is documented but has no entry in GUARDS: add one"
    check(trail)


def test_the_table_names_only_documented_routes() -> None:
    assert set(GUARDS) == set(_operations()), "GUARDS and api/openapi.json name the same operations"
