"""One end-to-end scenario per reference product (shared/reference/000..004), each as its admin
would use otaudit: a collector with the product's catalog pack and a plan fitting its page, the
product's typical events recorded through the otaudit SDK, then read back through the API (filters,
``q``, per-object history, the plan's category gating and windows), exported (CSV, xlsx, an export
job), and for two of them looked at in the web page in headless Chromium.

1. IT-asset inventory site (000): bundled catalogs, plans gating categories, 12 months.
2. Contact-center platform (001): a plan of only the ``contact_center`` pack's categories, 13 months,
   old/new values (an add's old value null, shown as "(none)", not withheld), an Excel export read
   back with openpyxl, the page's old and new values.
3. Platform with a job API (002): an async export job with Unix-second numbers, paging through
   rows that share a timestamp with the cursor (none repeated, none skipped).
4. Software-licensing platform (003): per-item logs including related objects, indefinite
   retention, the page's per-object history reached through a related object.
5. Cloud testing platform (004): dotted events, IP and user agent, the affected user with the
   original and changed value, a 90-day window, organization-level vs user-level filters.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import openpyxl
import psycopg
import pytest
import requests
from browser import chromium
from playwright.sync_api import Browser, Page, expect
from support import RunningCollector, settings_for, wait_until

import otaudit_sdk as audit
from otaudit_collector.storage import access
from otaudit_sdk._config import settings_from

DAY = dt.timedelta(days=1)

expect.set_options(timeout=30_000)  # waiting, never timing: generous for a busy two-core machine


# -- shared helpers -----------------------------------------------------------------------------


def start(db: str, overrides: Mapping[tuple[str, ...], Any]) -> RunningCollector:
    """A collector for one product: no token cache (plans change mid-scenario), fast export jobs."""
    base: dict[tuple[str, ...], Any] = {("auth", "token_cache_seconds"): 0, ("exports", "poll_seconds"): 0.05}
    return RunningCollector(settings_for(db, {**base, **overrides}))


def admin_token(collector: RunningCollector, tenant: str, role: str = "admin") -> str:
    with psycopg.connect(collector.conninfo) as conn:
        return access.create_token(
            conn, tenant=tenant, role=role, name=f"{tenant} {role}", pepper=collector.settings.token_pepper
        )[1]


def set_plan(collector: RunningCollector, tenant: str, plan: str) -> None:
    with psycopg.connect(collector.conninfo) as conn:
        access.set_plan(conn, tenant, plan)


class Api:
    """The admin API as an admin's script uses it: a bearer token and JSON answers."""

    def __init__(self, collector: RunningCollector, token: str) -> None:
        self.base = collector.api_url
        self.headers = {"Authorization": f"Bearer {token}"}

    def get(self, path: str, params: Any = None) -> requests.Response:
        return requests.get(self.base + path, params=params, headers=self.headers, timeout=30)

    def ok(self, path: str, params: Any = None) -> Any:
        answer = self.get(path, params)
        assert answer.status_code == 200, answer.text
        return answer.json()

    def events(self, **params: Any) -> list[dict[str, Any]]:
        """Every matching event a service sent (not the API's own session and export events), newest first."""
        found: list[dict[str, Any]] = self.ok("/v1/events", {"limit": 1000, **params})["events"]
        return [e for e in found if e["source"].get("service") != "otaudit-collector"]

    def ids(self, **params: Any) -> list[str]:
        return [e["id"] for e in self.events(**params)]

    def export(self, fmt: str, **params: Any) -> requests.Response:
        answer = self.get("/v1/export", {"format": fmt, **params})
        assert answer.status_code == 200, answer.text
        return answer

    def job(self, body: dict[str, Any]) -> dict[str, Any]:
        """Make an export job, wait until it is done, and return its final state."""
        made = requests.post(self.base + "/v1/exports", json=body, headers=self.headers, timeout=30)
        assert made.status_code == 202, made.text
        job_id = made.json()["id"]
        wait_until(lambda: self.ok(f"/v1/exports/{job_id}")["state"] in ("done", "failed"), 60, f"export job {job_id}")
        done: dict[str, Any] = self.ok(f"/v1/exports/{job_id}")
        assert done["state"] == "done", done
        return done


def csv_rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def service_rows(text: str) -> list[dict[str, str]]:
    return [r for r in csv_rows(text) if r["source_service"] != "otaudit-collector"]


class Sdk:
    """The otaudit SDK in a product's service, sending to the collector over OTLP/HTTP."""

    def __init__(self, collector: RunningCollector, buffer_dir: Path, service: str, tenant: str) -> None:
        settings = settings_from(
            endpoint=collector.http_url,
            protocol="http",
            service_name=service,
            tenant=tenant,
            buffer_dir=buffer_dir,
            retry_initial_seconds=0.05,
            retry_max_seconds=0.5,
            environ={},
        )
        self.client = audit.AuditClient(settings)
        self.recorded = 0

    def record(self, event: str, **fields: Any) -> str:
        self.recorded += 1
        return self.client.record(event, **fields)

    def deliver(self) -> None:
        """Wait until every event recorded so far is in the trail: none rejected, none pending."""
        result = self.client.flush(60)
        assert result.all_delivered and result.rejected == 0, result
        assert result.delivered == self.recorded, result
        self.recorded = 0

    def shutdown(self) -> None:
        assert self.client.shutdown(10)


@pytest.fixture
def product(db: str, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Holds what a scenario starts, and stops it whatever happens: the SDK client, then the collector."""
    made: dict[str, Any] = {"db": db, "tmp": tmp_path}
    yield made
    sdk = made.get("sdk")
    if sdk is not None:
        sdk.client.shutdown(5)
    collector = made.get("collector")
    if collector is not None:
        collector.stop()


def launch(
    product: dict[str, Any], overrides: Mapping[tuple[str, ...], Any], service: str, tenant: str
) -> tuple[RunningCollector, Sdk]:
    collector = product["collector"] = start(product["db"], overrides)
    sdk = product["sdk"] = Sdk(collector, product["tmp"] / "buffer", service, tenant)
    return collector, sdk


# -- the browser --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


class Ui:
    """One tab on the page, signed in with an admin token; it records uncaught and console errors."""

    def __init__(self, browser: Browser, collector: RunningCollector, token: str) -> None:
        self.context = browser.new_context()
        self.context.set_default_timeout(30_000)
        self.page: Page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.goto(collector.api_url + "/")
        self.page.get_by_label("API token").fill(token)
        with self.page.expect_response(lambda r: "/v1/events" in r.url):
            self.page.get_by_role("button", name="Sign in").click()
        self.settled()

    def settled(self) -> None:
        expect(self.page.locator("#events")).not_to_have_attribute("aria-busy", "true")

    def row(self, event_id: str) -> Any:
        return self.page.locator(f'#events tbody tr[data-event-id="{event_id}"]')

    def ids(self) -> list[str]:
        found: list[str] = self.page.locator("#events tbody tr").evaluate_all("rows => rows.map(r => r.dataset.eventId)")
        return found

    def shows(self, expected: list[str], *, first: int | None = None) -> None:
        """Wait until the list shows ``expected`` (its first ``first`` rows when given), in order."""
        wait_until(lambda: self.ids()[:first] == expected, 30, f"the page to list {expected}")

    def open_detail(self, event_id: str) -> Any:
        self.row(event_id).locator("td").first.click()
        dialog = self.page.get_by_role("dialog")
        expect(dialog).to_be_visible()
        return dialog

    def close(self) -> None:
        assert self.errors == []
        self.context.close()


# -- 1. IT-asset inventory site (000) -----------------------------------------------------------


def test_asset_site_categories_follow_the_plan_for_twelve_months(product: dict[str, Any]) -> None:
    """The bundled catalogs and plans: basic reads site access, accounts and data extraction;
    inventory configuration needs pro (a 403 naming it), discovery enterprise; 12 months kept
    and searchable; filters, q and a CSV export with the events' titles."""
    collector, sdk = launch(product, {}, "asset-site", "acme")
    set_plan(collector, "acme", "basic")
    ann = audit.Actor.user("u-17", email="ann@acme.test", name="Ann", address="203.0.113.9", user_agent="Mozilla/5.0")
    now = dt.datetime.now(dt.UTC)
    login = sdk.record("siteAccess", category="site_access", actor=ann, details={"method": "sso", "mfa": True})
    role = sdk.record(
        "updateRole",
        category="accounts_configuration",
        actor=ann,
        target=audit.Target("role", "r-3", "Auditors"),
        changes=audit.changes({"permissions": ["read"]}, {"permissions": ["read", "export"]}),
    )
    other_role = sdk.record(
        "updateRole",
        category="accounts_configuration",
        actor=ann,
        target=audit.Target("role", "r-9", "Support staff"),
        changes=[{"field": "name", "old": "Support", "new": "Support staff"}],
    )
    group = sdk.record(
        "createAssetGroup",
        category="inventory_configuration",
        actor=ann,
        target=audit.Target("asset_group", "ag-14", "Berlin office"),
    )
    # older than 12 months (within the collector's clock-skew limit, so stored under its own time)
    too_old = sdk.record(
        "updateRole",
        category="accounts_configuration",
        actor=ann,
        target=audit.Target("role", "r-3", "Auditors"),
        changes=[{"field": "name", "old": "Audit", "new": "Auditors"}],
        occurred_at=now - 380 * DAY,
    )
    sdk.deliver()
    api = Api(collector, admin_token(collector, "acme"))

    me = api.ok("/v1/whoami")
    assert (me["plan"], me["retention_days"], me["query_window_days"], me["retention"]) == ("basic", 365, 365, "365 days")
    assert me["categories"] == ["accounts_configuration", "data_extraction", "site_access"]
    catalog = {c["category"]: c for c in api.ok("/v1/catalog")["categories"]}
    assert catalog["inventory_configuration"]["plan_needed"] == "pro"
    assert catalog["discovery_configuration"]["plan_needed"] == "enterprise"
    assert catalog["site_access"]["available"] and catalog["site_access"]["plan_needed"] is None

    # the trail of the plan's categories, newest first, 12 months back
    assert api.ids() == [other_role, role, login]
    assert too_old not in api.ids(since=(now - 400 * DAY).isoformat())  # clamped to the plan's window
    assert api.get(f"/v1/events/{too_old}").status_code == 404
    assert api.get(f"/v1/events/{group}").status_code == 403
    refused = api.get("/v1/events", {"category": "inventory_configuration"})
    assert refused.status_code == 403 and "pro" in refused.json()["message"], refused.text
    assert api.get("/v1/events", {"category": "discovery_configuration"}).json()["message"].count("enterprise")

    # filters and q as an admin narrows the list
    assert api.ids(event="updateRole") == [other_role, role]
    assert api.ids(actor="ann@acme.test", category="site_access") == [login]
    assert api.ids(q="target_name:Audit*") == [role]
    assert api.ids(q="details.method:sso") == [login]
    assert api.ids(target_type="role", target_id="r-3") == [role]
    shown = api.ok(f"/v1/events/{role}")
    assert shown["changes"] == [{"field": "permissions", "old": ["read"], "new": ["read", "export"]}]
    assert shown["client"]["address"] == "203.0.113.9"

    # the export a site admin downloads, with the titles of the events
    rows = service_rows(api.export("csv", since=int((now - DAY).timestamp())).text)
    assert [(r["id"], r["title"]) for r in rows] == [
        (login, "Site accessed"),
        (role, "Role updated"),
        (other_role, "Role updated"),
    ]
    assert rows[1]["changes"] == 'permissions: ["read"] -> ["read", "export"]'

    # upgrading to pro opens inventory configuration; discovery still needs enterprise
    set_plan(collector, "acme", "pro")
    assert api.ids(category="inventory_configuration") == [group]
    assert api.ok(f"/v1/events/{group}")["target"] == {"type": "asset_group", "id": "ag-14", "name": "Berlin office"}
    assert "enterprise" in api.get("/v1/events", {"category": "discovery_configuration"}).json()["message"]
    sdk.shutdown()


# -- 2. contact-center platform (001) -----------------------------------------------------------

CONTACT_CENTER_PLAN = {
    "contact_center": {
        "description": "Users, permissions, skills, agent groups, LoBs, surveys, campaign schedules and working hours.",
        "categories": ["user_management", "routing_configuration", "campaign_configuration"],
        "retention_days": 395,  # 13 months
        "query_window_days": 395,
    }
}


def test_contact_center_old_and_new_values_13_months_and_excel(product: dict[str, Any], browser: Browser) -> None:
    """A plan of only the contact_center pack's categories (the bundled catalogs stay loaded: the
    API records its own sessions in site_access, and reads are refused without it): object type, object name, action, element, old and new value,
    date and originator; 13 months searchable; an Excel export read back; the page's old and new values."""
    collector, sdk = launch(
        product,
        {("catalogs", "packs"): ["contact_center"], ("plans",): CONTACT_CENTER_PLAN, ("default_plan",): "contact_center"},
        "contact-center-admin",
        "brand-1",
    )
    admin = audit.Actor.user("a-1", email="admin@brand.test", name="Dana Admin")
    now = dt.datetime.now(dt.UTC)
    ann = audit.Target("user", "u-100", "Ann Agent")
    profile = sdk.record(
        "users.edit",
        category="user_management",
        actor=admin,
        target=ann,
        changes=audit.changes({"profile": "Agent", "member_of": "Tier 1"}, {"profile": "Agent manager", "member_of": "Tier 2"}),
    )
    password = sdk.record(
        "users.edit",
        category="user_management",
        actor=admin,
        target=ann,
        changes=audit.changes({"password": "a"}, {"password": "b"}, withhold={"password"}),
    )
    skill = sdk.record(
        "skills.add",
        category="routing_configuration",
        actor=admin,
        target=audit.Target("skill", "s-7", "Billing"),
        changes=audit.changes(None, {"description": "Billing questions"}),  # an add: no old value (null, not withheld)
    )
    group = sdk.record(
        "agent_groups.delete",
        category="routing_configuration",
        actor=admin,
        target=audit.Target("agent_group", "g-2", "Night shift"),
    )
    hours = sdk.record(
        "working_hours.edit",
        category="campaign_configuration",
        actor=admin,
        target=audit.Target("working_hours", "wh-1", "Support hours"),
        changes=[{"field": "monday", "old": "09:00-17:00", "new": "08:00-18:00"}],
        occurred_at=now - 390 * DAY,  # a year and almost a month ago: still within 13 months
    )
    sdk.deliver()
    token = admin_token(collector, "brand-1")
    api = Api(collector, token)

    me = api.ok("/v1/whoami")
    assert (me["plan"], me["query_window_days"], me["retention_days"]) == ("contact_center", 395, 395)
    assert me["categories"] == ["campaign_configuration", "routing_configuration", "user_management"]
    assert api.ids() == [group, skill, password, profile, hours]

    # the audit trail for one user, and the table's columns
    assert api.ids(target_type="user", target_id="u-100") == [password, profile]
    edited = api.ok(f"/v1/events/{profile}")
    assert edited["target"] == {"type": "user", "id": "u-100", "name": "Ann Agent"}  # object type and object name
    assert edited["event"] == "users.edit" and edited["actor"]["email"] == "admin@brand.test"  # action, originator
    assert edited["changes"] == [
        {"field": "profile", "old": "Agent", "new": "Agent manager"},
        {"field": "member_of", "old": "Tier 1", "new": "Tier 2"},
    ]
    assert api.ok(f"/v1/events/{password}")["changes"] == [{"field": "password"}]  # element named, values withheld
    assert api.ok(f"/v1/events/{skill}")["changes"] == [{"field": "description", "old": None, "new": "Billing questions"}]
    assert api.ids(q='target_name:"Ann*"') == [password, profile]
    assert api.ids(q="event:skills.add event:agent_groups.delete") == [group, skill]
    assert api.ids(category="campaign_configuration") == [hours]
    # a category this product's plan has not: the API says no plan has it
    refused = api.get("/v1/events", {"category": "site_access"})
    assert (refused.status_code, refused.json()["message"]) == (
        403,
        "category 'site_access' is not in the 'contact_center' plan; no plan includes it",
    )

    # the Excel export, read back
    xlsx = api.export("xlsx", since=(now - 395 * DAY).isoformat())
    assert xlsx.headers["Content-Type"].startswith("application/vnd.openxmlformats-officedocument.spreadsheetml.sheet")
    book = openpyxl.load_workbook(io.BytesIO(xlsx.content))
    sheet = book.worksheets[0]
    values = list(sheet.iter_rows(values_only=True))
    header = list(values[0])
    table = [
        dict(zip(header, row, strict=True)) for row in values[1:] if row[header.index("source_service")] != "otaudit-collector"
    ]
    assert [r["id"] for r in table] == [hours, profile, password, skill, group]  # oldest first
    assert isinstance(table[0]["occurred_at"], dt.datetime)
    by_id = {r["id"]: r for r in table}
    assert by_id[profile]["title"] == "User edited" and by_id[profile]["target_name"] == "Ann Agent"
    assert by_id[profile]["changes"] == "profile: Agent -> Agent manager\nmember_of: Tier 1 -> Tier 2"
    assert by_id[password]["changes"] == "password: (withheld) -> (withheld)"
    assert by_id[skill]["changes"] == "description: (none) -> Billing questions"  # an add: no old value, not "(withheld)"
    assert by_id[group]["title"] == "Agent group deleted" and by_id[group]["actor_email"] == "admin@brand.test"

    # the page: the events with their titles, one event's old and new values
    ui = Ui(browser, collector, token)
    try:
        ui.shows([group, skill, password, profile], first=4)
        expect(ui.row(profile).locator("td").nth(2)).to_have_text("User editedusers.edit")
        expect(ui.row(group).locator("td").nth(2)).to_have_text("Agent group deletedagent_groups.delete")
        dialog = ui.open_detail(profile)
        expect(dialog.get_by_role("heading", level=2)).to_have_text("User edited · Users and permissions")
        changes = dialog.locator("table.changes")
        expect(changes.locator("thead th")).to_have_text(["Field", "Old value", "New value"])
        expect(changes.locator("tbody tr")).to_have_text(["profileAgentAgent manager", "member_ofTier 1Tier 2"])
        with ui.page.expect_response(lambda r: "/v1/events" in r.url and "target_id=u-100" in r.url):
            dialog.locator("button.target-history").click()
        ui.settled()
        ui.shows([password, profile])
        # an add's initial value: "(none)" as the old value, never "withheld" (the password's values are)
        withheld = ui.open_detail(password).locator("table.changes tbody tr")
        expect(withheld).to_have_text(["passwordwithheldwithheld"])
        expect(withheld.locator("td.withheld")).to_have_count(2)
        ui.page.keyboard.press("Escape")
        with ui.page.expect_response(lambda r: "/v1/events" in r.url and "target_id" not in r.url):
            ui.page.get_by_role("button", name="Clear", exact=True).click()
        ui.settled()
        ui.shows([group, skill], first=2)
        added = ui.open_detail(skill).locator("table.changes tbody tr")
        expect(added).to_have_text(["description(none)Billing questions"])
        expect(added.locator("td.none")).to_have_text("(none)")
        expect(added.locator("td.withheld")).to_have_count(0)
    finally:
        ui.close()
    sdk.shutdown()


# -- 3. platform with a job API (002) -----------------------------------------------------------

JOB_PLATFORM_PLAN = {
    "jobs": {"categories": ["user_access", "user_administration", "data_export"], "retention_days": 365, "query_window_days": 365}
}


def test_job_platform_async_export_and_paging_never_repeat_rows_sharing_a_timestamp(product: dict[str, Any]) -> None:
    """POST /v1/exports with since/until as Unix-second numbers, poll the job, download the CSV
    from its signed URL; page with the cursor through rows sharing one timestamp: none repeated,
    none skipped, and the until bound (exclusive) splits an export without repeating a row."""
    collector, sdk = launch(
        product,
        {("catalogs", "packs"): ["job_platform"], ("plans",): JOB_PLATFORM_PLAN, ("default_plan",): "jobs"},
        "job-api",
        "org-9",
    )
    base = int(time.time()) - 600
    shared = dt.datetime.fromtimestamp(base + 100, dt.UTC)  # a whole second many events share
    ops = audit.Actor.user("u-1", email="ops@org9.test")
    before = [
        sdk.record(
            "createUser",
            category="user_administration",
            actor=ops,
            target=audit.Target("user", f"u-{i}", f"User {i}"),
            details={"role": "viewer"},
            occurred_at=dt.datetime.fromtimestamp(base + i, dt.UTC),
        )
        for i in range(10, 14)
    ]
    same = [
        sdk.record(
            "signIn", category="user_access", actor=audit.Actor.user(f"u-{i}"), details={"method": "password"}, occurred_at=shared
        )
        for i in range(20, 27)
    ]
    role = sdk.record(
        "changeUserRole",
        category="user_administration",
        actor=ops,
        target=audit.Target("user", "u-10", "User 10"),
        changes=[{"field": "role", "old": "viewer", "new": "editor"}],
        occurred_at=dt.datetime.fromtimestamp(base + 200, dt.UTC),
    )
    request = sdk.record(
        "requestAuditTrailExport",
        category="data_export",
        actor=ops,
        target=audit.Target("export_job", "job-1"),
        details={"date_start": base, "date_end": base + 300, "format": "csv"},
        occurred_at=dt.datetime.fromtimestamp(base + 300, dt.UTC),
    )
    sdk.deliver()
    api = Api(collector, admin_token(collector, "org-9"))
    everything = set(before + same + [role, request])

    # paging with the cursor, three at a time, through seven rows sharing one timestamp
    seen: list[str] = []
    params: dict[str, Any] = {"limit": 3}
    for _ in range(20):
        page = api.ok("/v1/events", params)
        seen += [e["id"] for e in page["events"]]
        if page["next_cursor"] is None:
            break
        params["cursor"] = page["next_cursor"]
    assert len(seen) == len(set(seen)) == len(everything) and set(seen) == everything
    assert seen[0] == request and seen[-1] == before[0]  # newest first

    # the async export of the whole range: dateStart/dateEnd as numbers, a job id, poll, signed URL
    job = api.job({"format": "csv", "since": base, "until": base + 301})
    assert job["rows"] == len(everything) and job["download_url"]
    body = requests.get(job["download_url"], timeout=30)  # no token: the URL is signed
    assert body.status_code == 200, body.text
    rows = csv_rows(body.text)
    assert [r["id"] for r in rows][: len(before)] == before and len(rows) == len(everything)
    assert {r["id"] for r in rows} == everything

    # the page's workaround, done right: split at the shared second; until is exclusive, since inclusive
    first = api.job({"format": "csv", "since": base, "until": base + 100})
    second = api.job({"format": "csv", "since": base + 100, "until": base + 301})
    halves = [csv_rows(requests.get(j["download_url"], timeout=30).text) for j in (first, second)]
    assert [r["id"] for r in halves[0]] == before
    ids = [r["id"] for r in halves[0] + halves[1]]
    assert len(ids) == len(set(ids)) == len(everything)
    shared_rows = [r for r in halves[1] if r["event"] == "signIn"]
    assert len(shared_rows) == 7 and {r["occurred_at"] for r in shared_rows} == {shared.isoformat().replace("+00:00", ".000000Z")}

    # the details of the export request are searchable, and the role change shows both values
    assert api.ids(q="details.format:csv") == [request]
    assert api.ids(event="changeUserRole", target_id="u-10") == [role]
    assert api.ok(f"/v1/events/{role}")["changes"] == [{"field": "role", "old": "viewer", "new": "editor"}]
    # the job platform's own exports are in the trail too, but in data_extraction, outside this plan
    refused = api.get("/v1/events", {"category": "data_extraction"})
    assert (refused.status_code, refused.json()["error"]) == (403, "plan_forbids")
    sdk.shutdown()


# -- 4. software-licensing platform (003) -------------------------------------------------------

LICENSING_PLAN = {"vendor": {"categories": ["*"], "retention_days": None, "query_window_days": None}}


def test_licensing_per_item_logs_include_related_objects_kept_indefinitely(product: dict[str, Any], browser: Browser) -> None:
    """An aggregate log and a per-item log under each license, order and customer: a device's events
    show in its license's log, an order's in its customer's; retention is indefinite (said in words,
    never "null days"); the page reaches the license's log from a device event's related object."""
    collector, sdk = launch(
        product,
        {
            ("catalogs", "packs"): ["licensing"],
            ("plans",): LICENSING_PLAN,
            ("default_plan",): "vendor",
            ("ingest", "clock_skew", "max_past_days"): 3650,  # an indefinite trail takes old events as they were
        },
        "licensing-platform",
        "vendor-3",
    )
    pat = audit.Actor.user("pu-1", email="pat@vendor.test", name="Pat")
    now = dt.datetime.now(dt.UTC)
    customer = audit.Target("customer", "c-1", "Initech")
    order = audit.Target("order", "o-1", "Initech 2024 renewal")
    lic = audit.Target("license", "lic-1", "Initech floating")
    created_customer = sdk.record(
        "customer_created",
        category="customers",
        actor=pat,
        target=customer,
        details={"email": "it@initech.test"},
        occurred_at=now - 800 * DAY,
    )
    created_order = sdk.record(
        "order_created",
        category="orders",
        actor=pat,
        target=order,
        related=[customer],
        details={"customer_id": "c-1"},
        occurred_at=now - 10 * DAY,
    )
    manager = sdk.record(
        "order_manager_added",
        category="orders",
        actor=pat,
        target=order,
        related=[customer],
        details={"manager_id": "m-1", "manager_email": "boss@initech.test"},
        occurred_at=now - 9 * DAY,
    )
    created_license = sdk.record(
        "license_created",
        category="licenses",
        actor=pat,
        target=lic,
        related=[order],
        details={"order_id": "o-1"},
        occurred_at=now - 8 * DAY,
    )
    features = sdk.record(
        "license_features_updated",
        category="licenses",
        actor=pat,
        target=lic,
        changes=[{"field": "features", "old": ["base"], "new": ["base", "reports"]}],
        occurred_at=now - 7 * DAY,
    )
    reset = sdk.record(
        "device_reset",
        category="devices",
        actor=pat,
        target=audit.Target("device", "dev-1", "build-agent-01"),
        related=[lic],
        details={"license_id": "lic-1", "hardware_id": "hw-aa"},
        occurred_at=now - 2 * DAY,
    )
    borrowed = sdk.record(
        "device_borrowed",
        category="devices",
        actor=pat,
        target=audit.Target("device", "dev-2", "laptop-07"),
        related=[lic],
        details={"license_id": "lic-1", "hardware_id": "hw-bb"},
        occurred_at=now - DAY,
    )
    product_created = sdk.record(
        "product_created", category="products", actor=pat, target=audit.Target("product", "p-1", "Reports")
    )
    sdk.deliver()
    token = admin_token(collector, "vendor-3")
    api = Api(collector, token)

    me = api.ok("/v1/whoami")
    assert me["retention_days"] is None and me["query_window_days"] is None and me["retention"] == "kept indefinitely"
    assert api.ok("/v1/tenants/vendor-3/plan")["retention"] == "kept indefinitely"

    # the aggregate log: everything, 800 days back too
    assert api.ids() == [product_created, borrowed, reset, features, created_license, manager, created_order, created_customer]
    assert api.ok(f"/v1/events/{created_customer}")["occurred_at"].startswith((now - 800 * DAY).date().isoformat())

    # per-item logs: the license's includes its devices' events, the customer's its orders'
    assert api.ids(target_type="license", target_id="lic-1") == [borrowed, reset, features, created_license]
    assert api.ids(target_type="customer", target_id="c-1") == [manager, created_order, created_customer]
    assert api.ids(target_type="order", target_id="o-1") == [created_license, manager, created_order]
    assert api.ids(target_type="device", target_id="dev-1") == [reset]
    assert api.ids(target_type="license", target_id="lic-1", category="devices") == [borrowed, reset]
    assert api.ok(f"/v1/events/{reset}")["related"] == [{"type": "license", "id": "lic-1", "name": "Initech floating"}]
    assert api.ids(q="details.hardware_id:hw-*") == [borrowed, reset]

    # exported on request: the license's log as CSV
    rows = service_rows(api.export("csv", target_type="license", target_id="lic-1").text)
    assert [(r["id"], r["title"]) for r in rows] == [
        (created_license, "License created"),
        (features, "License features updated"),
        (reset, "Device reset"),
        (borrowed, "Device borrowed a license"),
    ]

    # the page: kept indefinitely, a device event's related license opens the license's log
    ui = Ui(browser, collector, token)
    try:
        expect(ui.page.locator("#plan-summary")).to_contain_text("kept indefinitely")
        expect(ui.page.locator("#plan-summary")).not_to_contain_text("null")
        expect(ui.row(reset).locator("td").nth(2)).to_have_text("Device resetdevice_reset")
        dialog = ui.open_detail(reset)
        expect(dialog.get_by_role("heading", level=2)).to_have_text("Device reset · Devices")
        related = dialog.locator("ul.related")
        expect(related).to_contain_text("lic-1")
        with ui.page.expect_response(lambda r: "/v1/events" in r.url and "target_id=lic-1" in r.url):
            related.locator("button.related-history").click()
        ui.settled()
        ui.shows([borrowed, reset, features, created_license])
        dialog = ui.open_detail(features)
        expect(dialog.locator("table.changes tbody tr")).to_have_text(
            [re.compile(r'^features\[\s*"base"\s*\]\[\s*"base",\s*"reports"\s*\]$')]
        )
    finally:
        ui.close()
    sdk.shutdown()


# -- 5. cloud testing platform (004) ------------------------------------------------------------

TESTING_PLAN = {
    "org_admin": {
        "description": "User-level and organization-level activity, viewable for 90 days.",
        "categories": ["user_activity", "organization_activity"],
        "retention_days": 90,
        "query_window_days": 90,
    }
}


def test_testing_platform_dotted_events_ip_user_agent_and_90_days(product: dict[str, Any]) -> None:
    """Dotted events; actor email, time, IP address and user agent; the affected user with the
    original and changed value; filters by event, level (category), user and date; a 90-day
    window; a CSV export; organization admins only (an auditor token cannot export)."""
    collector, sdk = launch(
        product,
        {("catalogs", "packs"): ["testing_platform"], ("plans",): TESTING_PLAN, ("default_plan",): "org_admin"},
        "testing-cloud",
        "org-42",
    )
    now = dt.datetime.now(dt.UTC)
    ua = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 Safari/605.1.15"
    kim = audit.Actor.user("u-5", email="kim@org42.test", name="Kim", roles=["admin"], address="198.51.100.23", user_agent=ua)
    lee = audit.Actor.user("u-8", email="lee@org42.test", name="Lee", address="192.0.2.44", user_agent="curl/8.5.0")
    lee_target = audit.Target("user", "u-8", "lee@org42.test")
    login = sdk.record(
        "user.login", category="user_activity", actor=kim, target=audit.Target("user", "u-5"), details={"method": "sso"}
    )
    failed = sdk.record(
        "user.login",
        category="user_activity",
        actor=lee,
        target=lee_target,
        outcome="failure",
        reason="wrong password",
        details={"method": "password"},
        occurred_at=now - 3 * DAY,
    )
    role = sdk.record(
        "org.user.role.updated",
        category="organization_activity",
        actor=kim,
        target=lee_target,
        changes=[{"field": "role", "old": "User", "new": "Admin"}],
        occurred_at=now - 2 * DAY,
    )
    password = sdk.record(
        "org.user.password.changed", category="organization_activity", actor=kim, target=lee_target, occurred_at=now - DAY
    )
    mfa = sdk.record(
        "user.auth.mfa",
        category="user_activity",
        actor=lee,
        target=lee_target,
        changes=audit.changes({"mfa": False}, {"mfa": True}),
        occurred_at=now - 10 * DAY,
    )
    old = sdk.record(
        "org.user.deleted",
        category="organization_activity",
        actor=kim,
        target=audit.Target("user", "u-3", "ex@org42.test"),
        occurred_at=now - 120 * DAY,  # outside the 90-day window
    )
    sdk.deliver()
    admin = Api(collector, admin_token(collector, "org-42"))

    me = admin.ok("/v1/whoami")
    assert (me["plan"], me["query_window_days"], me["retention"]) == ("org_admin", 90, "90 days")
    assert admin.ids() == [login, password, role, failed, mfa]
    assert old not in admin.ids(category="organization_activity")
    assert admin.get(f"/v1/events/{old}").status_code == 404
    clamped = admin.ok("/v1/events", {"since": (now - 200 * DAY).isoformat()})
    assert "query window of 90 days" in clamped["since_clamped"]

    # organization-level vs user-level activity, by event, by user, by date
    assert admin.ids(category="organization_activity") == [password, role]
    assert admin.ids(category="user_activity") == [login, failed, mfa]
    assert admin.ids(event="user.login") == [login, failed]
    assert admin.ids(event="user.login", outcome="failure") == [failed]
    assert admin.ids(actor="kim@org42.test") == [login, password, role]
    assert admin.ids(target_type="user", target_id="u-8") == [password, role, failed, mfa]  # the affected user
    assert admin.ids(since=(now - 4 * DAY).isoformat(), until=(now - DAY / 2).isoformat()) == [password, role, failed]
    assert admin.ids(q="event:org.user.role.updated actor:kim@org42.test") == [role]

    # who, when, from where, on whom, original and changed value
    shown = admin.ok(f"/v1/events/{role}")
    assert shown["actor"]["email"] == "kim@org42.test"
    assert shown["client"] == {"address": "198.51.100.23", "user_agent": ua}
    assert shown["target"] == {"type": "user", "id": "u-8", "name": "lee@org42.test"}
    assert shown["changes"] == [{"field": "role", "old": "User", "new": "Admin"}]
    assert admin.ok(f"/v1/events/{failed}")["reason"] == "wrong password"

    # the CSV download of the organization-level log, with titles, IP and user agent
    rows = service_rows(admin.export("csv", category="organization_activity").text)
    assert [(r["event"], r["title"]) for r in rows] == [
        ("org.user.role.updated", "User role updated by admin"),
        ("org.user.password.changed", "User password changed by admin"),
    ]
    assert (rows[0]["actor_email"], rows[0]["client_address"], rows[0]["user_agent"]) == ("kim@org42.test", "198.51.100.23", ua)
    assert rows[0]["changes"] == "role: User -> Admin"

    # only organization administrators export: an auditor reads, but cannot download
    auditor = Api(collector, admin_token(collector, "org-42", role="auditor"))
    assert auditor.ids(event="user.login") == [login, failed]
    assert auditor.get("/v1/export", {"format": "csv"}).status_code == 403
    sdk.shutdown()
