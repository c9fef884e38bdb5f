"""The admin web page in headless Chromium (Debian's ``chromium`` package, driven by
Playwright) against a real collector and PostgreSQL, with events sent over OTLP first.

Every browser test also checks what the page did: no uncaught error, no console error
(a Content-Security-Policy violation is one) beyond the API refusals the test provoked,
and the token in no URL the page requested.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import openpyxl
import psycopg
import pytest
import requests
from browser import chromium
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
from playwright.sync_api import Browser, ConsoleMessage, Page, Request, expect
from support import RunningCollector, good_attributes, record, request

from otaudit_collector.storage import access

EXPORT = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"
WEB = Path(__file__).resolve().parents[1] / "collector" / "otaudit_collector" / "api" / "web"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"


# -- the browser ---------------------------------------------------------------------------

# Waiting, never timing: generous limits for a busy two-core machine (the default is 5 s).
expect.set_options(timeout=30_000)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


class Ui:
    """One browser tab on the page, and a record of what it did."""

    def __init__(self, page: Page, base: str, secrets: list[str]) -> None:
        self.page = page
        self.base = base
        self.secrets = secrets
        self.urls: list[str] = []
        self.console_errors: list[str] = []
        self.page_errors: list[str] = []
        page.on("request", self._request)
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.page_errors.append(str(exc)))

    def _request(self, req: Request) -> None:
        self.urls.append(req.url)

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.console_errors.append(message.text)

    # -- driving the page --

    def open(self, path: str = "/") -> None:
        self.page.goto(self.base + path)

    def sign_in(self, token: str) -> None:
        self.page.get_by_label("API token").fill(token)
        with self.page.expect_response(lambda r: "/v1/events" in r.url):
            self.page.get_by_role("button", name="Sign in").click()
        self.settled()

    def settled(self) -> None:
        """Wait until the events answer is on the page."""
        expect(self.page.locator("#events")).not_to_have_attribute("aria-busy", "true")

    def apply(self, **fields: str) -> None:
        """Fill the named filter fields (by label) and apply them."""
        for label, value in fields.items():
            box = self.field(label)
            if box.evaluate("node => node.tagName") == "SELECT":
                box.select_option(value)
            else:
                box.fill(value)
        self.submit()

    def field(self, name: str) -> Any:
        return self.page.locator("#filters").get_by_label(LABELS[name], exact=True)

    def submit(self) -> None:
        with self.page.expect_response(lambda r: "/v1/events" in r.url):
            self.page.get_by_role("button", name="Apply filters").click()
        self.settled()

    def clear(self) -> None:
        with self.page.expect_response(lambda r: "/v1/events" in r.url):
            self.page.get_by_role("button", name="Clear", exact=True).click()
        self.settled()

    @property
    def rows(self) -> Any:
        return self.page.locator("#events tbody tr")

    def row(self, event_id: str) -> Any:
        return self.page.locator(f'#events tbody tr[data-event-id="{event_id}"]')

    def ids(self) -> list[str]:
        found: list[str] = self.rows.evaluate_all("rows => rows.map(r => r.dataset.eventId)")
        return found

    def stored_token(self) -> Any:
        return self.page.evaluate("() => sessionStorage.getItem('otaudit.token')")

    # -- what it did --

    def assert_clean(self, *, refused: tuple[int, ...] = ()) -> None:
        """No uncaught error; no console error but the API refusals (status codes) provoked;
        no token in any URL requested."""
        assert self.page_errors == []
        allowed = [f"the server responded with a status of {status} " for status in refused]
        assert [m for m in self.console_errors if not any(a in m for a in allowed)] == []
        assert self.urls, "the page requested nothing"
        for url in self.urls:
            for secret in self.secrets:
                assert secret not in url, f"a token went into a URL: {url}"


LABELS = {
    "category": "Category",
    "event": "Event",
    "actor": "Actor (id or email)",
    "target_type": "Target type",
    "target_id": "Target id",
    "outcome": "Outcome",
    "since": "From (UTC, inclusive)",
    "until": "To (UTC, exclusive)",
    "q": "Search phrase",
    "limit": "Rows per page",
}


# -- the collector and its trail -----------------------------------------------------------


def contract(doc: dict[str, Any]) -> dict[str, Any]:
    """A catalog example (a normalized event) back into the contract's attributes."""
    attrs: dict[str, Any] = {
        "log.record.uid": str(uuid.uuid4()),
        "audit.category": doc["category"],
        "audit.tenant.id": doc["tenant"],
        "audit.outcome": doc.get("outcome", "success"),
        "audit.actor.type": doc["actor"]["type"],
    }
    for key in ("id", "email", "name", "roles"):
        if key in doc["actor"]:
            attrs[f"user.{key}"] = doc["actor"][key]
    for key in ("type", "id", "name"):
        if key in doc.get("target", {}):
            attrs[f"audit.target.{key}"] = doc["target"][key]
    for key in ("changes", "details", "reason"):
        if doc.get(key):
            attrs[f"audit.{key}"] = doc[key]
    return attrs


def example(category: str, event: str) -> dict[str, Any]:
    catalog = json.loads((WEB.parents[3] / "catalogs" / f"{category}.json").read_text())
    doc: dict[str, Any] = catalog["events"][event]["examples"][0]
    return doc


def role_update(**over: Any) -> dict[str, Any]:
    """updateRole attributes (ann on role r-3 unless told), keys as in the contract."""
    attrs = good_attributes()
    attrs.pop("audit.sequence")
    attrs.update(over)
    return attrs


def send(collector: RunningCollector, events: list[tuple[str, dict[str, Any], int]], *, trace: bool = False) -> list[str]:
    """Send (event name, attributes, time_ns) over OTLP/gRPC; all must be stored. Returns the ids."""
    records = []
    for name, attrs, when in events:
        rec = record(name, attrs, time_ns=when)
        if trace:
            rec.trace_id = bytes.fromhex(TRACE_ID)
            rec.span_id = bytes.fromhex(SPAN_ID)
        records.append(rec)
    with grpc.insecure_channel(collector.grpc_target) as channel:
        raw = channel.unary_unary(EXPORT)(request(records).SerializeToString(), timeout=30)
    answer = ExportLogsServiceResponse.FromString(raw)
    assert answer.partial_success.rejected_log_records == 0, answer.partial_success.error_message
    return [attrs["log.record.uid"] for _, attrs, _ in events]


def make_token(collector: RunningCollector, tenant: str = "acme", role: str = "admin") -> tuple[str, str]:
    """(token id, token)"""
    with psycopg.connect(collector.conninfo) as conn:
        made: tuple[str, str] = access.create_token(
            conn, tenant=tenant, role=role, name=f"{tenant} {role}", pepper=collector.settings.token_pepper
        )
        return made


class Site:
    """A collector with acme's trail, tokens, and a way to open browser tabs on it."""

    def __init__(self, collector: RunningCollector, browser: Browser) -> None:
        self.collector = collector
        self.browser = browser
        self.secrets: list[str] = []
        self.token_id, self.admin = self.token()
        self.uis: list[Ui] = []

    def token(self, role: str = "admin", tenant: str = "acme") -> tuple[str, str]:
        token_id, token = make_token(self.collector, tenant, role)
        self.secrets += [token, token.split("_", 2)[2]]  # otaudit_<id>_<secret>; the secret may hold "_"
        return token_id, token

    def ui(self) -> Ui:
        context = self.browser.new_context(accept_downloads=True)
        context.set_default_timeout(30_000)
        ui = Ui(context.new_page(), self.collector.api_url, self.secrets)
        self.uis.append(ui)
        return ui

    def close(self) -> None:
        for ui in self.uis:
            ui.page.context.close()


@pytest.fixture
def site(collector: RunningCollector, browser: Browser) -> Iterator[Site]:
    running = Site(collector, browser)
    yield running
    running.close()


@pytest.fixture
def trail(site: Site) -> dict[str, Any]:
    """acme: ann updates role r-3 three times, bob updates r-9 twice (once failing), a failed
    login, and an inventory event the basic plan cannot read; globex one event."""
    now = time.time_ns()
    bob = {"user.id": "u-42", "user.email": "bob@acme.test", "user.name": "Bob"}
    r9 = {"audit.target.id": "r-9", "audit.target.name": "Support staff"}
    ann = send(site.collector, [("updateRole", role_update(), now - i * 10**9) for i in range(3)])
    bobs = send(
        site.collector,
        [
            ("updateRole", role_update(**bob, **r9), now - 10 * 10**9),
            ("updateRole", role_update(**bob, **r9, **{"audit.outcome": "failure", "audit.reason": "quota"}), now - 11 * 10**9),
        ],
    )
    login = example("site_access", "siteAccess")
    failed_login = send(
        site.collector,
        [("siteAccess", {**contract(login), "audit.outcome": "failure", "audit.reason": "wrong password"}, now - 20 * 10**9)],
    )
    group = send(
        site.collector, [("createAssetGroup", contract(example("inventory_configuration", "createAssetGroup")), now - 30 * 10**9)]
    )
    globex = send(site.collector, [("updateRole", role_update(**{"audit.tenant.id": "globex"}), now - 5 * 10**9)])
    return {"ann": ann, "bob": bobs, "failed_login": failed_login, "group": group, "globex": globex}


# -- the tests ---------------------------------------------------------------------------------


def test_sign_in_shows_the_trail_newest_first_and_sign_out_forgets_the_token(site: Site, trail: dict[str, Any]) -> None:
    ui = site.ui()
    ui.open()
    assert ui.page.url == site.collector.api_url + "/ui/"
    expect(ui.page.get_by_role("heading", name="Sign in")).to_be_visible()
    expect(ui.page.locator("#trail")).to_be_hidden()

    with ui.page.expect_request(lambda r: "/v1/catalog" in r.url) as sent:
        ui.sign_in(site.admin)
    assert sent.value.all_headers()["authorization"] == f"Bearer {site.admin}"
    assert ui.stored_token() == site.admin

    readable = trail["ann"] + trail["bob"] + trail["failed_login"]
    shown = ui.ids()
    assert set(readable) <= set(shown)
    assert not set(trail["group"] + trail["globex"]) & set(shown)  # another plan's category, another tenant
    times = ui.rows.evaluate_all("rows => rows.map(r => r.dataset.occurredAt)")
    assert times == sorted(times, reverse=True)
    assert [i for i in shown if i in readable] == readable  # newest first
    newest = ui.row(trail["ann"][0]).locator("td")
    expect(newest).to_have_text(
        [
            re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$"),
            "ann@acme.testuser u-17",
            "Role updatedupdateRole",  # the catalog's title, then the event's name
            "Accounts configuration",
            re.compile("^role r-3.*Auditors$"),
            "success",
            "203.0.113.9",
        ]
    )
    expect(ui.page.locator("#summary")).to_contain_text("newest first")
    expect(ui.page.locator("#plan-summary")).to_have_text(
        "Tenant acme · plan basic · searchable for 365 days · kept for 365 days"
    )

    ui.page.reload()  # the token stays for the tab's session
    ui.settled()
    expect(ui.row(trail["ann"][0])).to_be_visible()

    ui.page.get_by_role("button", name="Sign out").click()
    expect(ui.page.get_by_role("heading", name="Sign in")).to_be_visible()
    expect(ui.page.locator("#trail")).to_be_hidden()
    assert ui.stored_token() is None
    assert ui.rows.count() == 0
    ui.assert_clean()


def test_filters_the_search_phrase_and_an_objects_history_narrow_the_list(site: Site, trail: dict[str, Any]) -> None:
    ui = site.ui()
    ui.open()
    ui.sign_in(site.admin)

    ui.apply(event="updateRole")
    assert set(ui.ids()) == set(trail["ann"] + trail["bob"])
    ui.clear()
    ui.apply(actor="bob@acme.test")
    assert ui.ids() == trail["bob"]
    ui.clear()
    ui.apply(outcome="failure")
    assert set(ui.ids()) == {trail["bob"][1], trail["failed_login"][0]}
    ui.clear()
    ui.apply(category="site_access")
    expect(ui.rows.locator("td:nth-child(4)")).to_have_text(["Site access"] * ui.rows.count())
    assert trail["failed_login"][0] in ui.ids()
    ui.clear()
    ui.apply(q="event:siteAccess -outcome:success")
    assert ui.ids() == trail["failed_login"]

    # an object's history: the target links to every event about that object
    ui.clear()
    link = ui.row(trail["bob"][0]).get_by_role("link", name=re.compile("^role r-9"))
    with ui.page.expect_response(lambda r: "/v1/events" in r.url):
        link.click()
    ui.settled()
    assert ui.ids() == trail["bob"]
    expect(ui.field("target_type")).to_have_value("role")
    expect(ui.field("target_id")).to_have_value("r-9")
    assert "target_id=r-9" in ui.page.url
    with ui.page.expect_response(lambda r: "/v1/events" in r.url):
        ui.page.go_back()  # Back returns to the list before
    ui.settled()
    expect(ui.field("target_id")).to_have_value("")
    assert set(trail["ann"]) <= set(ui.ids())

    # a since before the plan's query window is clamped, and the page says so
    long_ago = (dt.datetime.now(dt.UTC) - dt.timedelta(days=400)).strftime("%Y-%m-%dT%H:%M:%S")
    ui.apply(since=long_ago)
    expect(ui.page.locator("#notice")).to_be_visible()
    expect(ui.page.locator("#notice")).to_contain_text("is before the 'basic' plan's query window of 365 days")
    assert set(trail["ann"]) <= set(ui.ids())
    ui.clear()
    expect(ui.page.locator("#notice")).to_be_hidden()

    # the API's own words for a bad filter
    ui.apply(q="bogus:x")
    expect(ui.page.get_by_role("alert").filter(has_text="bogus")).to_have_text(re.compile(r"q: unknown key 'bogus'"))
    assert ui.rows.count() == 0
    ui.assert_clean(refused=(400,))


def test_load_more_pages_through_every_event_once(site: Site) -> None:
    now = time.time_ns()
    same = now - 100 * 10**9  # ten events share one timestamp: paging must neither repeat nor skip them
    sent = send(
        site.collector,
        [("updateRole", role_update(), now - i * 10**9) for i in range(50)]
        + [("updateRole", role_update(), same) for _ in range(10)],
    )
    ui = site.ui()
    ui.open()
    ui.sign_in(site.admin)
    ui.apply(event="updateRole", limit="25")
    expect(ui.rows).to_have_count(25)
    more = ui.page.get_by_role("button", name="Load more")
    for shown in (50, 60):
        with ui.page.expect_response(lambda r: "/v1/events" in r.url and "cursor=" in r.url):
            more.click()
        ui.settled()
        expect(ui.rows).to_have_count(shown)
    expect(more).to_be_hidden()
    ids = ui.ids()
    assert len(ids) == len(set(ids)) == 60
    assert set(ids) == set(sent)
    expect(ui.page.locator("#summary")).to_have_text("60 events shown, newest first.")
    ui.assert_clean()


def test_the_detail_shows_old_and_new_values_and_the_context(site: Site) -> None:
    changes = [
        {"field": "name", "old": "Auditors", "new": "Security auditors"},
        {"field": "permissions", "old": ["read"], "new": ["read", "export"]},
        {"field": "password"},  # withheld: named without its values
    ]
    event_id = send(
        site.collector,
        [("updateRole", role_update(**{"audit.changes": changes, "audit.details": {"ticket": "SEC-7"}}), time.time_ns())],
        trace=True,
    )[0]
    ui = site.ui()
    ui.open()
    ui.sign_in(site.admin)
    ui.row(event_id).locator("td").first.click()  # anywhere on the row
    dialog = ui.page.get_by_role("dialog")
    expect(dialog).to_be_visible()
    expect(dialog.get_by_role("heading", level=2)).to_have_text("Role updated · Accounts configuration")
    table = dialog.locator("table.changes")
    expect(table.locator("thead th")).to_have_text(["Field", "Old value", "New value"])
    expect(table.locator("tbody tr")).to_have_text(
        [
            re.compile(r"^nameAuditorsSecurity auditors$"),
            re.compile(r'^permissions\[\s*"read"\s*\]\[\s*"read",\s*"export"\s*\]$'),
            "passwordwithheldwithheld",
        ]
    )
    for label, value in [
        ("Event id", event_id),
        ("Email", "ann@acme.test"),
        ("Roles", "admin"),
        ("Address", "203.0.113.9"),
        ("User agent", "Mozilla/5.0 (X11; Linux x86_64)"),
        ("Session", "s-1"),
        ("Service", "accounts-api"),
        ("Trace id", TRACE_ID),
        ("Span id", SPAN_ID),
    ]:
        expect(dialog.locator("dt", has_text=re.compile(f"^{re.escape(label)}$")).locator("+ dd")).to_have_text(value)
    expect(dialog.locator("table.details")).to_have_text("ticketSEC-7")

    ui.page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    opener = ui.row(event_id).get_by_role("button", name="Role updated")
    expect(opener).to_be_focused()  # focus goes back where it was
    ui.page.keyboard.press("Enter")  # and the keyboard opens it again
    expect(dialog).to_be_visible()
    with ui.page.expect_response(lambda r: "/v1/events" in r.url and "target_id=r-3" in r.url):
        dialog.get_by_role("button", name="Show this object's history").click()
    ui.settled()
    expect(dialog).to_be_hidden()
    assert ui.ids() == [event_id]
    ui.assert_clean()


def test_the_detail_shows_the_event_verified_against_the_signed_log(site: Site) -> None:
    event_id = send(
        site.collector,
        [
            (
                "updateRole",
                role_update(**{"user.email": "ann@acme.test", "user.name": "Ann", "client.address": "203.0.113.9"}),
                time.time_ns(),
            )
        ],
    )[0]
    assert site.collector.call(site.collector.collector.make_checkpoints_now()) == ["acme"]
    ui = site.ui()
    ui.open()
    ui.sign_in(site.admin)
    ui.row(event_id).locator("td").first.click()
    status = ui.page.get_by_role("dialog").locator(".integrity")
    # Checked here in the browser: the entry is this event, and its proof leads to the signed root.
    expect(status).to_have_attribute("data-state", "verified")
    expect(status).to_contain_text("Verified in this browser")
    ui.page.get_by_role("button", name="Close").click()
    # Altered in the database: the collector cannot prove it any more, and the page says so.
    with psycopg.connect(site.collector.conninfo, autocommit=True) as conn:
        conn.execute(
            "UPDATE events SET doc = jsonb_set(doc, '{outcome}', '\"failure\"'), outcome = 'failure' WHERE id = %s", (event_id,)
        )
    ui.row(event_id).locator("td").first.click()
    expect(status).to_have_attribute("data-state", "failed")
    expect(status).to_contain_text("altered")
    ui.assert_clean(refused=(500,))


def test_categories_outside_the_plan_are_marked_with_the_plan_that_has_them(site: Site, trail: dict[str, Any]) -> None:
    ui = site.ui()
    ui.open()
    ui.sign_in(site.admin)
    category = ui.field("category")
    inventory = category.locator('option[value="inventory_configuration"]')
    expect(inventory).to_have_text("Inventory configuration (needs the pro plan)")
    expect(inventory).to_be_disabled()
    expect(category.locator('option[value="discovery_configuration"]')).to_contain_text("needs the enterprise plan")
    expect(category.locator('option[value="accounts_configuration"]')).to_be_enabled()
    expect(ui.page.locator("#locked-categories")).to_contain_text("Not in the basic plan: ")
    expect(ui.page.locator("#locked-categories")).to_contain_text("Inventory configuration (needs the pro plan)")
    assert trail["group"][0] not in ui.ids()

    with psycopg.connect(site.collector.conninfo) as conn:
        access.set_plan(conn, "acme", "pro")
    ui.page.reload()
    ui.settled()
    expect(inventory).to_be_enabled()
    expect(inventory).to_have_text("Inventory configuration")
    ui.apply(category="inventory_configuration")
    assert ui.ids() == trail["group"]
    expect(category.locator('option[value="discovery_configuration"]')).to_be_disabled()
    expect(ui.page.locator("#plan-summary")).to_contain_text("plan pro")
    ui.assert_clean()


def test_a_refused_token_shows_the_apis_message(site: Site, trail: dict[str, Any]) -> None:
    ui = site.ui()
    ui.open()
    alert = ui.page.locator("#sign-in-error")
    ui.page.get_by_role("button", name="Sign in").click()
    expect(alert).to_have_text("Paste a token first.")

    ui.page.get_by_label("API token").fill("otaudit_000000000000_" + "x" * 43)
    ui.page.get_by_role("button", name="Sign in").click()
    expect(alert).to_have_text("the token is unknown or revoked")
    expect(ui.page.locator("#trail")).to_be_hidden()
    assert ui.stored_token() is None

    _, ingest = site.token("ingest")
    ui.page.get_by_label("API token").fill(ingest)
    ui.page.get_by_role("button", name="Sign in").click()
    expect(alert).to_have_text("an ingest token can send events, not read them; use an admin or auditor token")

    # a token revoked during the session: the next request ends it, saying why
    ui.sign_in(site.admin)
    expect(ui.row(trail["ann"][0])).to_be_visible()
    with psycopg.connect(site.collector.conninfo) as conn:
        assert access.revoke_token(conn, site.token_id)
    ui.page.get_by_role("button", name="Apply filters").click()
    expect(alert).to_have_text("Signed out: the token is unknown or revoked")
    expect(ui.page.locator("#trail")).to_be_hidden()
    assert ui.stored_token() is None
    ui.assert_clean(refused=(401, 403))


def test_markup_in_event_data_is_shown_as_text_and_runs_nothing(site: Site) -> None:
    hostile: dict[str, Any] = {
        "audit.target.id": '"><img src=x onerror="window.__pwned=1">',
        "audit.target.name": '<img src=x onerror="window.__pwned=2">',
        "user.name": "<script>window.__pwned=3</script>",
        "audit.reason": "<b>bold</b><style>body{display:none}</style>",
        "audit.changes": [{"field": "<i>name</i>", "old": "<svg onload=window.__pwned=4>", "new": "javascript:alert(1)"}],
        "audit.details": {"<u>note</u>": "<iframe src=javascript:window.__pwned=5></iframe>"},
    }
    event_id = send(site.collector, [("updateRole", role_update(**hostile), time.time_ns())])[0]
    ui = site.ui()
    ui.open()
    ui.sign_in(site.admin)
    row = ui.row(event_id)
    expect(row.locator(".target-name")).to_have_text(hostile["audit.target.name"])
    expect(row.locator("a.target-link")).to_contain_text("role " + hostile["audit.target.id"])
    markup = "img, script, svg, iframe, style, b, i, u"
    expect(ui.page.locator("#events").locator(markup)).to_have_count(0)

    row.locator("td").first.click()
    dialog = ui.page.get_by_role("dialog")
    expect(dialog.locator("table.changes tbody tr")).to_have_text("<i>name</i><svg onload=window.__pwned=4>javascript:alert(1)")
    expect(dialog.locator("dt", has_text=re.compile("^Name$")).first.locator("+ dd")).to_have_text(hostile["user.name"])
    expect(dialog.locator("dt", has_text=re.compile("^Reason$")).locator("+ dd")).to_have_text(hostile["audit.reason"])
    expect(dialog.locator("table.details")).to_have_text("<u>note</u><iframe src=javascript:window.__pwned=5></iframe>")
    expect(dialog.locator(markup)).to_have_count(0)
    ui.page.keyboard.press("Escape")

    # its history link carries the id safely too
    with ui.page.expect_response(lambda r: "/v1/events" in r.url and "target_id=" in r.url):
        row.locator("a.target-link").click()
    ui.settled()
    assert ui.ids() == [event_id]
    expect(ui.field("target_id")).to_have_value(hostile["audit.target.id"])
    assert ui.page.evaluate("() => window.__pwned") is None
    expect(ui.page.locator("body")).to_be_visible()
    ui.assert_clean()


def test_exports_start_show_progress_and_offer_the_download(site: Site, trail: dict[str, Any]) -> None:
    ui = site.ui()
    ui.open()
    ui.sign_in(site.admin)
    ui.apply(event="updateRole")
    expected = set(trail["ann"] + trail["bob"])
    status = ui.page.locator("#export-status")
    link = ui.page.locator("#export-link")

    contents: dict[str, str] = {}
    for fmt, label in (("csv", "CSV"), ("ndjson", "NDJSON"), ("json", "JSON")):
        with ui.page.expect_request(lambda r: r.method == "POST" and r.url.endswith("/v1/exports")) as posted:
            ui.page.get_by_role("group", name="Export these results").get_by_role("button", name=label, exact=True).click()
        assert posted.value.post_data_json == {"format": fmt, "event": ["updateRole"]}
        expect(status).to_be_visible()
        expect(link).to_be_visible(timeout=60_000)
        expect(link).to_have_text(f"Download the {label} file")
        expect(ui.page.locator("#export-text")).to_have_text(f"{label} export ready: {len(expected)} rows.")
        expect(ui.page.locator("#export-progress")).to_have_js_property("value", 1)
        href = link.get_attribute("href")
        assert href is not None and href.startswith("/v1/exports/") and "signature=" in href
        with ui.page.expect_download() as download:
            link.click()
        path = download.value.path()
        contents[fmt] = Path(path).read_text(encoding="utf-8-sig")

    table = list(csv.DictReader(io.StringIO(contents["csv"])))
    assert {r["id"] for r in table} == expected and {r["event"] for r in table} == {"updateRole"}
    assert {json.loads(line)["id"] for line in contents["ndjson"].splitlines() if line} == expected
    assert {e["id"] for e in json.loads(contents["json"])} == expected

    # an auditor may read, not export: the page offers no export (and the API would refuse it)
    _, auditor = site.token("auditor")
    other = site.ui()
    other.open()
    other.sign_in(auditor)
    expect(other.page.locator("#plan-summary")).to_contain_text("Tenant acme")
    expect(other.page.get_by_role("button", name="CSV", exact=True)).to_be_hidden()
    ui.assert_clean()
    other.assert_clean()


def test_the_xlsx_button_exports_a_workbook_holding_the_rows_sent(site: Site) -> None:
    """An admin filters, clicks XLSX, waits for the job and downloads the file through the page; read back
    with openpyxl, it holds the events sent: their times as dates, their values as inert text."""
    now = time.time_ns() // 10**6 * 10**6  # whole milliseconds: what a spreadsheet's date holds (and openpyxl reads)
    sent = {
        "first": (
            "updateRole",
            role_update(
                **{"audit.related": [{"type": "license", "id": "lic-1", "name": "Pro"}, {"type": "device", "id": "d-7"}]}
            ),
            now - 3 * 10**9,
        ),
        "formula": (
            "updateRole",
            role_update(**{"audit.target.id": "r-9", "audit.target.name": '=HYPERLINK("http://evil.test")'}),
            now - 2 * 10**9,
        ),
        "added": (
            "updateRole",
            role_update(**{"audit.changes": [{"field": "expires", "old": None, "new": 30}, {"field": "password"}]}),
            now - 10**9,
        ),
    }
    ids = dict(zip(sent, send(site.collector, list(sent.values())), strict=True))
    ui = site.ui()
    ui.open()
    ui.sign_in(site.admin)
    ui.apply(event="updateRole")
    with ui.page.expect_request(lambda r: r.method == "POST" and r.url.endswith("/v1/exports")) as posted:
        ui.page.get_by_role("group", name="Export these results").get_by_role("button", name="XLSX", exact=True).click()
    assert posted.value.post_data_json == {"format": "xlsx", "event": ["updateRole"]}
    link = ui.page.locator("#export-link")
    expect(link).to_be_visible(timeout=60_000)
    expect(link).to_have_text("Download the XLSX file")
    expect(ui.page.locator("#export-text")).to_have_text("XLSX export ready: 3 rows.")
    with ui.page.expect_download() as download:
        link.click()
    assert re.fullmatch(r"otaudit-acme-\d{8}T\d{6}Z\.xlsx", download.value.suggested_filename)
    book = openpyxl.load_workbook(io.BytesIO(Path(download.value.path()).read_bytes()))  # its path has no .xlsx
    assert book.sheetnames == ["events"]
    values = list(book["events"].iter_rows(values_only=True))
    header = list(values[0])
    rows = {row[header.index("id")]: dict(zip(header, row, strict=True)) for row in values[1:]}
    assert [r[header.index("id")] for r in values[1:]] == [ids["first"], ids["formula"], ids["added"]]  # oldest first
    for key, (event, attrs, when) in sent.items():
        row = rows[ids[key]]
        assert row["occurred_at"] == dt.datetime(1970, 1, 1) + dt.timedelta(microseconds=when // 1000)  # a date, in UTC
        assert (row["event"], row["title"], row["category"]) == (event, "Role updated", "accounts_configuration")
        assert (row["actor_id"], row["actor_email"], row["actor_name"], row["actor_roles"]) == (
            "u-17",
            "ann@acme.test",
            "Ann",
            "admin",
        )
        assert (row["client_address"], row["user_agent"], row["session_id"]) == (
            "203.0.113.9",
            attrs["user_agent.original"],
            "s-1",
        )
        assert (row["target_type"], row["target_id"]) == ("role", attrs["audit.target.id"])
        assert isinstance(row["seq"], int) and row["tenant"] == "acme" and row["outcome"] == "success"
    assert rows[ids["first"]]["target_name"] == "Auditors"
    assert rows[ids["formula"]]["target_name"] == '\'=HYPERLINK("http://evil.test")'  # text a spreadsheet never runs
    assert rows[ids["first"]]["changes"] == 'permissions: ["read"] -> ["read", "export"]'
    assert [rows[ids[key]]["related"] for key in sent] == ["license:lic-1 (Pro)\ndevice:d-7", None, None]
    assert rows[ids["added"]]["changes"] == "expires: (none) -> 30\npassword: (withheld) -> (withheld)"
    for sheet in book.worksheets:
        assert not [c.coordinate for r in sheet.iter_rows() for c in r if c.data_type == "f"], "a formula cell"
    ui.assert_clean()


# -- the files and their headers (no browser) --------------------------------------------------


def test_the_page_is_served_without_a_token_with_strict_headers(collector: RunningCollector) -> None:
    base = collector.api_url
    root = requests.get(base + "/", allow_redirects=False, timeout=10)
    assert root.status_code == 302 and root.headers["Location"] == "/ui/"
    page = requests.get(base + "/ui/", timeout=10)
    assert page.status_code == 200 and page.headers["Content-Type"] == "text/html; charset=utf-8"
    policy = page.headers["Content-Security-Policy"]
    assert "default-src 'self'" in policy and "script-src 'self';" in policy and "frame-ancestors 'none'" in policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert page.headers["Cache-Control"] == "no-cache" and page.headers["ETag"]
    again = requests.get(base + "/ui/", headers={"If-None-Match": page.headers["ETag"]}, timeout=10)
    assert again.status_code == 304 and again.content == b""
    for name, kind in [("app.js", "text/javascript"), ("style.css", "text/css"), ("favicon.svg", "image/svg+xml")]:
        asset = requests.get(f"{base}/ui/{name}", timeout=10)
        assert asset.status_code == 200 and asset.headers["Content-Type"].startswith(kind)
        assert asset.content == (WEB / name).read_bytes()
        assert asset.headers["X-Content-Type-Options"] == "nosniff"
    for missing in ["/ui/nope.js", "/ui/..%2Fweb.py", "/ui/%2e%2e%2freads.py", "/ui/index.html%00"]:
        assert requests.get(base + missing, timeout=10).status_code == 404, missing
    # only the page is open: everything else still needs the token
    for closed in ["/v1/events", "/v1/catalog", "/uix", "/ui"]:
        answer = requests.get(base + closed, timeout=10)
        assert answer.status_code == 401 and answer.json()["error"] == "unauthorized", closed


def test_the_page_works_offline_and_never_writes_markup_from_data() -> None:
    """No inline script, no external URL; event data never goes through an HTML parser."""
    html = (WEB / "index.html").read_text()
    assert re.findall(r"<script\b[^>]*>", html) == ['<script src="app.js" defer>']
    assert not re.search(r"\son[a-z]+\s*=", html), "an inline event handler"
    assert not re.search(r"\sstyle\s*=", html), "an inline style"
    for name in ("index.html", "app.js", "style.css", "favicon.svg"):
        text = (WEB / name).read_text().replace('xmlns="http://www.w3.org/2000/svg"', "")  # a name, not a fetch
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.I), f"{name} names an external URL"
    script = (WEB / "app.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in script, sink
