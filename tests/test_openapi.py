"""The OpenAPI document of the API port (``api/openapi.json``, served at ``/openapi.json``)
against the real thing: the router serves exactly the documented routes, every documented
answer is one the API really gives, and schemathesis, run over every operation against a
collector with a seeded trail and an admin token, finds no server error and no answer
(status, content type, body) that the document does not describe."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.resources import files
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import psycopg
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from psycopg.conninfo import make_conninfo
from schemathesis import Case
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Err, Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from support import RunningCollector, good_attributes, record, request, settings_for, wait_until

import otaudit_collector
from otaudit_collector.api.reads import READS
from otaudit_collector.core.export import sign_download, signing_key
from otaudit_collector.storage import access

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
DOCUMENT = json.loads(files("otaudit_collector.api").joinpath("openapi.json").read_text(encoding="utf-8"))
WEB_PAGE = {("GET", "/"), ("GET", "/ui/"), ("GET", "/ui/{file}")}  # api/web.py: the HTML page, not the API
OPEN = {"/healthz", "/readyz", "/metrics", "/openapi.json", "/v1/exports/{id}/download"}  # answered without a token
EXAMPLE_ID = DOCUMENT["paths"]["/v1/events/{id}"]["get"]["parameters"][0]["example"]  # seeded: schemathesis' examples find it


@dataclass(frozen=True, slots=True)
class Seeded:
    collector: RunningCollector
    ids: dict[str, list[str]]  # event ids by kind: example, role, login, inventory (acme), globex
    token: str

    @property
    def url(self) -> str:
        return self.collector.api_url

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def make_token(self, role: str, tenant: str = "acme") -> str:
        with psycopg.connect(self.collector.conninfo) as conn:
            pepper = self.collector.settings.token_pepper
            return access.create_token(conn, tenant=tenant, role=role, name=f"{tenant} {role}", pepper=pepper)[1]


def _send(collector: RunningCollector, attributes: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """Ingest (event, attributes) over OTLP/HTTP protobuf; returns the event ids."""
    now = time.time_ns()
    records = [record(event, attrs, time_ns=now - n * 10**9) for n, (event, attrs) in enumerate(attributes)]
    answer = requests.post(
        collector.http_url,
        data=request(records).SerializeToString(),
        headers={"Content-Type": "application/x-protobuf"},
        timeout=30,
    )
    assert answer.status_code == 200 and answer.content == b"", answer.content  # no partial_success: all stored
    return [attrs["log.record.uid"] for _, attrs in attributes]


@pytest.fixture(scope="module")
def seeded(pg_server: str, template_db: str) -> Iterator[Seeded]:
    """One collector for the module, on its own database: acme (plan basic) with role updates, logins and one inventory event its plan does not read; globex with one event."""
    name = f"otaudit_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    collector = RunningCollector(settings_for(make_conninfo(pg_server, dbname=name)))
    try:
        yield _seed(collector)
    finally:
        collector.stop()
        with psycopg.connect(pg_server, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _seed(collector: RunningCollector) -> Seeded:
    role = [("updateRole", good_attributes(audit__outcome=outcome)) for outcome in ("success", "failure", "denied", "success")]
    login = [
        (
            "siteAccess",
            good_attributes(
                audit__category="site_access",
                audit__changes=None,
                audit__target__type=None,
                audit__target__id=None,
                audit__target__name=None,
                audit__details={"method": "sso", "mfa": True},
            ),
        )
        for _ in range(3)
    ]
    inventory = [
        ("createAssetGroup", good_attributes(audit__category="inventory_configuration", audit__target__type="asset_group"))
    ]
    ids = {
        "example": _send(collector, [("updateRole", good_attributes(log__record__uid=EXAMPLE_ID))]),
        "role": _send(collector, role),
        "login": _send(collector, login),
        "inventory": _send(collector, inventory),
        "globex": _send(collector, [("updateRole", good_attributes(audit__tenant__id="globex"))]),
    }
    with psycopg.connect(collector.conninfo) as conn:
        admin = access.create_token(
            conn, tenant="acme", role="admin", name="schemathesis", pepper=collector.settings.token_pepper
        )
    return Seeded(collector, ids, admin[1])


@pytest.fixture(scope="module")
def api_schema(seeded: Seeded) -> schemathesis.BaseSchema:
    """The document as the API serves it, bound to the running collector."""
    schema = schemathesis.openapi.from_url(seeded.url + "/openapi.json", timeout=30)
    schema.config.update(base_url=seeded.url)
    schema.config.generation.update(with_security_parameters=False)  # the test sends the real token itself
    return schema


def _operations() -> list[tuple[str, str]]:
    return [(method.upper(), path) for path, item in DOCUMENT["paths"].items() for method in item]


def _served_routes(collector: RunningCollector) -> set[tuple[str, str]]:
    """(method, path template) of every route of the API port's app, the one with the read routes."""
    (app,) = [runner.app for runner in collector.collector._runners if READS in runner.app]
    routes = {(route.method, route.resource.canonical) for route in app.router.routes() if route.resource is not None}
    heads = {(m, p) for m, p in routes if m == "HEAD"}
    assert heads <= {("HEAD", p) for m, p in routes if m == "GET"}  # aiohttp's implicit HEAD of each GET
    return routes - heads - WEB_PAGE


def test_the_document_and_the_router_agree_both_ways(seeded: Seeded) -> None:
    documented = set(_operations())
    served = _served_routes(seeded.collector)
    assert served - documented == set(), "served but not in api/openapi.json"
    assert documented - served == set(), "in api/openapi.json but not served"
    tokenless = {path for path, item in DOCUMENT["paths"].items() if all(op.get("security") == [] for op in item.values())}
    assert tokenless == OPEN
    assert DOCUMENT["security"] == [{"bearer": []}]


def test_it_is_served_without_a_token_with_the_collectors_version(seeded: Seeded) -> None:
    answer = requests.get(seeded.url + "/openapi.json", timeout=30)
    assert answer.status_code == 200 and answer.headers["Content-Type"] == "application/json; charset=utf-8"
    served = answer.json()
    assert served["info"]["version"] == otaudit_collector.__version__
    assert {**served, "info": DOCUMENT["info"]} == DOCUMENT


def test_the_document_is_valid_openapi_3_1() -> None:
    schema = schemathesis.openapi.from_dict(DOCUMENT)
    schema.validate()
    assert DOCUMENT["openapi"].startswith("3.1.")
    results = list(schema.get_all_operations())
    assert [r.err() for r in results if isinstance(r, Err)] == []  # every $ref resolves
    operations = [r.ok() for r in results if isinstance(r, Ok)]
    assert len(operations) == sum(len(item) for item in DOCUMENT["paths"].values())
    for operation in operations:  # every authenticated operation documents its error answers
        statuses = set(operation.definition.raw["responses"])
        if operation.path not in OPEN:
            assert {"400", "401", "403", "503"} <= statuses, operation.label


def _check(
    schema: schemathesis.BaseSchema,
    method: str,
    path: str,
    status: int,
    headers: dict[str, str] | None = None,
    **parts: Any,
) -> schemathesis.Response:
    """One request built from the document, validated against it, with the status expected."""
    case = schema[path][method].Case(**parts)
    response = case.call_and_validate(headers=headers, checks=CHECKS, timeout=30)
    assert response.status_code == status, f"{method} {path} {parts}: {response.status_code} {response.text[:500]}"
    return response


def test_each_documented_answer_is_given_as_documented(seeded: Seeded, api_schema: schemathesis.BaseSchema) -> None:
    """What random inputs rarely reach: real ids, other roles, a finished export job and its signed URL."""
    auth, schema = seeded.auth, api_schema
    ingest = {"Authorization": f"Bearer {seeded.make_token('ingest')}"}
    for method, path in _operations():
        if path not in OPEN:
            parts: dict[str, Any] = {"path_parameters": dict.fromkeys(re.findall(r"{(\w+)}", path), "acme")}
            if method == "POST":
                parts.update(body={"format": "csv"}, media_type="application/json")
            _check(schema, method, path, 401, **parts)
            _check(schema, method, path, 403, ingest, **parts)
    _check(schema, "GET", "/v1/events/{id}", 200, auth, path_parameters={"id": seeded.ids["role"][0]})
    _check(schema, "GET", "/v1/events/{id}", 403, auth, path_parameters={"id": seeded.ids["inventory"][0]})  # plan
    _check(schema, "GET", "/v1/events/{id}", 404, auth, path_parameters={"id": seeded.ids["globex"][0]})
    _check(schema, "GET", "/v1/events/{id}", 400, auth, path_parameters={"id": "a\x00b"})
    _check(schema, "GET", "/v1/events", 200, auth, query={"limit": 2, "since": "2000-01-01T00:00:00Z"})  # since_clamped
    _check(schema, "GET", "/v1/events", 403, auth, query={"category": ["inventory_configuration"]})
    _check(schema, "GET", "/v1/events", 400, auth, query={"q": ["bogus:x"]})
    _check(schema, "GET", "/v1/feed", 200, auth, query={"after": 2, "limit": 3})
    _check(schema, "GET", "/v1/tenants/{tenant}/plan", 200, auth, path_parameters={"tenant": "acme"})
    _check(schema, "GET", "/v1/tenants/{tenant}/plan", 404, auth, path_parameters={"tenant": "globex"})
    _check(schema, "GET", "/v1/catalog", 200, auth)
    _check(schema, "GET", "/v1/whoami", 200, auth)
    _check(schema, "GET", "/healthz", 200)
    _check(schema, "GET", "/readyz", 200)
    _check(schema, "GET", "/metrics", 200)
    _check(schema, "GET", "/openapi.json", 200)

    for fmt in ("csv", "ndjson", "json"):
        query = {"format": fmt, "bom": "true" if fmt == "csv" else "false", "event": ["updateRole"]}
        _check(schema, "GET", "/v1/export", 200, auth, query=query)
    auditor = {"Authorization": f"Bearer {seeded.make_token('auditor')}"}
    _check(schema, "GET", "/v1/export", 403, auditor, query={"format": "csv"})
    _check(schema, "GET", "/v1/export", 400, auth, query={})
    json_body: dict[str, Any] = {"media_type": "application/json"}
    _check(schema, "POST", "/v1/exports", 403, auditor, body={"format": "csv"}, **json_body)
    _check(schema, "POST", "/v1/exports", 400, auth, body={"format": "csv", "limit": "5"}, **json_body)
    created = _check(schema, "POST", "/v1/exports", 202, auth, body={"format": "json", "q": ["event:updateRole"]}, **json_body)
    job_id = created.json()["id"]
    assert created.headers["location"] == [f"/v1/exports/{job_id}"]
    job = _finished(seeded, job_id)
    _check(schema, "GET", "/v1/exports/{id}", 200, auth, path_parameters={"id": job_id})
    _check(schema, "GET", "/v1/exports/{id}", 404, auth, path_parameters={"id": "exp_nothing"})

    download = "/v1/exports/{id}/download"
    signed = dict(parse_qsl(urlsplit(job["download_url"]).query))
    exported = _check(schema, "GET", download, 200, path_parameters={"id": job_id}, query=signed).json()
    assert sorted(e["id"] for e in exported) == sorted(seeded.ids["example"] + seeded.ids["role"])
    _check(schema, "GET", download, 403, path_parameters={"id": job_id}, query={**signed, "signature": "0" * 64})
    with psycopg.connect(seeded.collector.conninfo) as conn:  # sign as the server does, for URLs it never hands out
        stored = conn.execute("SELECT secret FROM server_keys WHERE name = 'export_downloads'").fetchone()
        assert stored is not None
        conn.execute(
            "INSERT INTO export_jobs (id, tenant, token_id, format, filters, state)"
            " VALUES ('exp_failed', 'acme', 't', 'csv', '{}', 'failed')"
        )
    key = signing_key(bytes(stored[0]), seeded.collector.settings.token_pepper)

    def signed_for(job: str, expires: int) -> dict[str, str]:
        return dict(parse_qsl(urlsplit(sign_download(key, job, expires)).query))

    later = int(time.time()) + 600
    _check(schema, "GET", download, 410, path_parameters={"id": job_id}, query=signed_for(job_id, int(time.time()) - 1))
    _check(schema, "GET", download, 409, path_parameters={"id": "exp_failed"}, query=signed_for("exp_failed", later))
    gone = f"exp_{uuid.uuid4().hex[:20]}"
    _check(schema, "GET", download, 404, path_parameters={"id": gone}, query=signed_for(gone, later))


def _finished(seeded: Seeded, job_id: str) -> dict[str, Any]:
    """The export job once it is done or failed."""
    job: dict[str, Any] = {}

    def finished() -> bool:
        job.update(requests.get(f"{seeded.url}/v1/exports/{job_id}", headers=seeded.auth, timeout=30).json())
        return job["state"] in ("done", "failed")

    wait_until(finished, timeout=30, what=f"export job {job_id}")
    return job


def test_what_schemathesis_found_is_answered_as_documented(seeded: Seeded, api_schema: schemathesis.BaseSchema) -> None:
    """Inputs schemathesis found that made the API fail (a 500, a download cut short, a failed job):
    each must get a documented answer."""
    auth, schema = seeded.auth, api_schema
    # RFC 3339 allows offsets PostgreSQL cannot hold (over 15:59) and times that leave the year 1..9999 in UTC.
    for since in ("9999-12-31T23:00:00-05:00", "0001-01-01T00:00:00+01:00"):
        answer = schema["/v1/events"]["GET"].Case(query={"since": since}).call_and_validate(headers=auth, checks=CHECKS)
        assert answer.status_code in (200, 400), answer.text
    far_offset = "2099-01-01T00:00:00+16:00"
    for params in ({"until": far_offset}, {"q": [f"time:<{far_offset}"]}):
        exported = requests.get(f"{seeded.url}/v1/export", params={"format": "ndjson", **params}, headers=auth, timeout=30)
        assert exported.status_code == 200, exported.text  # and whole: requests raises on a stream cut short
        assert set(seeded.ids["role"]) <= {json.loads(line)["id"] for line in exported.text.splitlines()}
    created = _check(
        schema, "POST", "/v1/exports", 202, auth, body={"format": "csv", "until": far_offset}, media_type="application/json"
    )
    job = _finished(seeded, created.json()["id"])
    assert job["state"] == "done", job["error"]
    # The signature of a download URL is compared as text: a non-ASCII one must be refused, not crash.
    _check(schema, "GET", "/v1/exports/{id}/download", 403, path_parameters={"id": "x"}, query={"expires": "1", "signature": "é"})
    # A charset Python does not know.
    refused = requests.post(
        f"{seeded.url}/v1/exports",
        data=b'{"format": "csv"}',
        headers={**auth, "Content-Type": "application/json; charset=no-such-charset"},
        timeout=30,
    )
    assert refused.status_code == 400 and refused.json()["error"] == "bad_filter", refused.text


FUZZ = schemathesis.openapi.from_dict(DOCUMENT)
FUZZ.config.generation.update(with_security_parameters=False)  # the test sends the real token itself


@FUZZ.parametrize()
@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_schemathesis_finds_no_server_error_and_nothing_undocumented(case: Case[Any], seeded: Seeded) -> None:
    """Every operation, with valid and invalid inputs, as the admin token of the seeded tenant."""
    case.call_and_validate(base_url=seeded.url, headers=seeded.auth, checks=CHECKS, timeout=30)
