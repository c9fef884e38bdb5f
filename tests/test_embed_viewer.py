"""The embeddable viewer (``/ui/embed.html``) in headless Chromium, framed by a product's page
on ANOTHER origin, against a real collector and PostgreSQL.

The product: a tiny HTTP server on another port of 127.0.0.1 (allowed by
``viewer.frame_ancestors``) whose page frames the viewer and hands it viewer tokens by
``postMessage``, minted by its backend endpoint (``POST /audit-token``) with an admin token.
The same server reached as ``localhost`` is another origin: one the deployment does not
allow (only tenant globex's ``viewer.tenant_frame_ancestors`` does).

Every browser test also checks what the pages did: no uncaught error, no console error beyond
the refusals the test provoked, and no token in any URL requested.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import datetime as dt
import hashlib
import io
import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import psycopg
import pytest
import requests
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from browser import chromium
from playwright.sync_api import Browser, Frame, FrameLocator, expect
from psycopg.conninfo import make_conninfo
from support import RunningCollector, settings_for
from test_web_page import WEB, Ui, contract, example, make_token, role_update, send

import otaudit_collector.api.web as web_module
from otaudit_collector.api.web import FrameAncestors, add_web_routes, origin
from otaudit_collector.config import ConfigError

README = Path(__file__).resolve().parents[1] / "README.md"
README_ORIGIN = "https://audit.example.com"  # where the README's snippet says the collector is


# -- the product's page and backend, on another origin ----------------------------------------

HOST_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><link rel="icon" href="data:,"><title>Product settings</title></head>
<body>
<h1>Settings · Audit log</h1>
<iframe id="viewer" name="viewer" title="Audit log" width="1280" height="900"></iframe>
<iframe id="sibling" name="sibling" title="another frame" width="10" height="10"></iframe>
<script>
const VIEWER = "__COLLECTOR__";
const BASES = { ip: "__IP__", name: "__NAME__" };
const params = new URLSearchParams(location.search);
window.messages = [];
window.others = [];
window.autoToken = params.get("auto") !== "0";
window.autoRenew = params.get("renew") !== "0";
const frame = document.getElementById("viewer");
window.sendToken = async () => {
  const answer = await fetch("/audit-token", { method: "POST" });
  const { token } = await answer.json();
  frame.contentWindow.postMessage({ type: "otaudit:token", token }, VIEWER);
};
window.sendTheme = (theme) => frame.contentWindow.postMessage({ type: "otaudit:theme", ...theme }, VIEWER);
addEventListener("message", (event) => {
  if (event.source !== frame.contentWindow || event.origin !== VIEWER) {
    window.others.push(event.data);
    return;
  }
  window.messages.push(event.data);
  if (event.data.type === "otaudit:ready" && window.autoToken) window.sendToken();
  if (event.data.type === "otaudit:expired" && window.autoRenew) window.sendToken();
});
frame.src = VIEWER + "/ui/embed.html" + (params.get("embed") ? "?" + params.get("embed") : "");
if (params.get("sibling")) document.getElementById("sibling").src = BASES[params.get("sibling")] + "/sibling.html";
</script>
</body></html>
"""

# Another frame of the product's page (or of an origin the collector does not allow): it gets a
# genuine token and posts it to the viewer, which must ignore it (not its parent).
SIBLING_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><link rel="icon" href="data:,"></head><body><script>
(async () => {
  const answer = await fetch("/audit-token", { method: "POST" });
  const { token } = await answer.json();
  parent[0].postMessage({ type: "otaudit:token", token }, "*");
  parent.postMessage({ type: "sibling:sent" }, "*");
})();
</script></body></html>
"""


# The same, with the custom element the collector serves.
ELEMENT_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><link rel="icon" href="data:,"><title>Product settings</title>
<script src="__COLLECTOR__/ui/otaudit-viewer.js"></script></head>
<body><otaudit-viewer token-url="/audit-token" lang="fr" columns="time,event,outcome" height="900px"></otaudit-viewer></body></html>
"""


class Host:
    """The product: its page (``/host.html``, ``/readme.html``) and its backend (``POST /audit-token``
    mints a viewer token for ``tenant`` with ``body``, or hands out the ``queue``'s first)."""

    def __init__(self) -> None:
        self.collector_url = ""
        self.admin: dict[str, str] = {}
        self.tenant = "acme"
        self.body: dict[str, Any] = {}
        self.queue: list[str] = []
        self.secrets: list[str] = []
        host = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _send(self, status: int, body: str, kind: str) -> None:
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/host.html":
                    page = HOST_PAGE.replace("__COLLECTOR__", host.collector_url)
                    page = page.replace("__IP__", host.ip).replace("__NAME__", host.name)
                    self._send(200, page, "text/html; charset=utf-8")
                elif path == "/element.html":
                    self._send(200, ELEMENT_PAGE.replace("__COLLECTOR__", host.collector_url), "text/html; charset=utf-8")
                elif path == "/sibling.html":
                    self._send(200, SIBLING_PAGE, "text/html; charset=utf-8")
                elif path == "/readme.html":
                    self._send(200, readme_page(host.collector_url), "text/html; charset=utf-8")
                else:
                    self._send(404, "not found", "text/plain")

            def do_POST(self) -> None:
                if self.path != "/audit-token":
                    self._send(404, "not found", "text/plain")
                    return
                token = host.queue.pop(0) if host.queue else host.mint(**host.body)
                self._send(200, json.dumps({"token": token}), "application/json")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.ip = f"http://127.0.0.1:{self.port}"
        self.name = f"http://localhost:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, name="host-page", daemon=True)
        self.thread.start()

    def mint(self, tenant: str | None = None, **body: Any) -> str:
        answer = requests.post(
            self.collector_url + "/v1/viewer-tokens",
            json={"for": "Ann Lee (ann@customer.example)", **body},
            headers={"Authorization": f"Bearer {self.admin[tenant or self.tenant]}"},
            timeout=60,
        )
        assert answer.status_code == 201, answer.text
        token: str = answer.json()["token"]
        self.secrets += [token, token.rsplit(".", 1)[1]]  # the whole token, and its signature
        return token

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def readme_page(collector_url: str) -> str:
    """The README's host page snippet, pointed at the test's collector."""
    section = README.read_text(encoding="utf-8").split("## Showing the trail inside your product", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```html\n(.*?)```", section, re.S)
    assert len(blocks) == 1, "the section holds one HTML example"
    return (
        "<!doctype html><html><head><meta charset='utf-8'><link rel='icon' href='data:,'></head><body>"
        + blocks[0].replace(README_ORIGIN, collector_url)
        + "</body></html>"
    )


# -- the collector, its trail, and pages ---------------------------------------------------------


class Site:
    def __init__(self, collector: RunningCollector, host: Host, browser: Browser, trail: dict[str, Any]) -> None:
        self.collector = collector
        self.host = host
        self.browser = browser
        self.trail = trail
        self.uis: list[Ui] = []

    def open(
        self,
        *,
        origin: str = "ip",
        embed: str = "",
        auto: bool = True,
        renew: bool = True,
        before: str | None = None,
        **context: Any,
    ) -> Ui:
        """The product's page (from ``origin``: ip, allowed; name, not) with the viewer in it;
        ``before``: a script run in every frame before the frame's own."""
        browser_context = self.browser.new_context(accept_downloads=True, **context)
        browser_context.set_default_timeout(30_000)
        if before is not None:
            browser_context.add_init_script(before)
        ui = Ui(browser_context.new_page(), self.host.ip if origin == "ip" else self.host.name, self.host.secrets)
        self.uis.append(ui)
        query = {"embed": embed, "auto": "1" if auto else "0", "renew": "1" if renew else "0"}
        ui.open("/host.html?" + urlencode(query))
        return ui

    def close(self) -> None:
        for ui in self.uis:
            ui.page.context.close()


def viewer(ui: Ui) -> FrameLocator:
    return ui.page.frame_locator("#viewer")


def frame(ui: Ui) -> Frame:
    found = ui.page.frame(name="viewer")
    assert found is not None
    return found


def shown(ui: Ui) -> None:
    """Wait until the viewer shows an answer of GET /v1/events."""
    expect(viewer(ui).locator("#summary")).not_to_be_empty()
    expect(viewer(ui).locator("#events")).not_to_have_attribute("aria-busy", "true")


def ids(ui: Ui) -> list[str]:
    found: list[str] = viewer(ui).locator("#events tbody tr").evaluate_all("rows => rows.map(r => r.dataset.eventId)")
    return found


def apply(ui: Ui, **fields: str) -> None:
    view = viewer(ui)
    for name, value in fields.items():
        box = view.locator(f"#f-{name.replace('_', '-')}")
        if box.evaluate("node => node.tagName") == "SELECT":
            box.select_option(value)
        else:
            box.fill(value)
    with ui.page.expect_response(lambda r: "/v1/events" in r.url):
        view.locator("#filters button[type=submit]").click()
    expect(view.locator("#events")).not_to_have_attribute("aria-busy", "true")


def messages(ui: Ui) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = ui.page.evaluate("() => window.messages")
    return found


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


@pytest.fixture(scope="module")
def host() -> Iterator[Host]:
    running = Host()
    yield running
    running.close()


@pytest.fixture(scope="module")
def collector(pg_server: str, template_db: str, host: Host) -> Iterator[RunningCollector]:
    name = f"otaudit_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    settings = settings_for(
        make_conninfo(pg_server, dbname=name),
        {
            ("auth", "token_cache_seconds"): 0,
            ("viewer", "frame_ancestors"): [host.ip, "https://app.example.com"],
            ("viewer", "tenant_frame_ancestors"): {"globex": [host.name]},
        },
    )
    running = RunningCollector(settings)
    host.collector_url = running.api_url
    host.admin = {tenant: make_token(running, tenant)[1] for tenant in ("acme", "globex")}
    host.secrets += list(host.admin.values())
    try:
        yield running
    finally:
        running.stop()
        with psycopg.connect(pg_server, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def trail(collector: RunningCollector) -> dict[str, Any]:
    """acme: ann (u-17) updates role r-3 twice, bob (u-42) role r-9 twice (once failing), a failed
    sign-in, an inventory event its basic plan does not read, and an event full of markup; globex:
    one event."""
    now = time.time_ns() // 1000 * 1000
    bob = {"user.id": "u-42", "user.email": "bob@acme.test", "user.name": "Bob"}
    r9 = {"audit.target.id": "r-9", "audit.target.name": "Support staff"}
    changes = [{"field": "name", "old": "Auditors", "new": "Security auditors"}, {"field": "password"}]
    when = {"ann": [now - 1 * 10**9, now - 2 * 10**9]}
    ann = send(collector, [("updateRole", role_update(**{"audit.changes": changes}), at) for at in when["ann"]])
    bobs = send(
        collector,
        [
            ("updateRole", role_update(**bob, **r9), now - 10 * 10**9),
            ("updateRole", role_update(**bob, **r9, **{"audit.outcome": "failure", "audit.reason": "quota"}), now - 11 * 10**9),
        ],
    )
    login = example("site_access", "siteAccess")
    failed_login = send(
        collector,
        [("siteAccess", {**contract(login), "audit.outcome": "failure", "audit.reason": "wrong password"}, now - 20 * 10**9)],
    )
    group = send(
        collector, [("createAssetGroup", contract(example("inventory_configuration", "createAssetGroup")), now - 30 * 10**9)]
    )
    hostile = send(
        collector,
        [
            (
                "updateRole",
                role_update(
                    **{
                        "user.id": "u-66",
                        "audit.target.id": "r-66",
                        "audit.target.name": '<img src=x onerror="window.__pwned=1">',
                        "audit.reason": "<b>bold</b><script>window.__pwned=2</script>",
                        "audit.changes": [{"field": "<i>name</i>", "old": "<svg onload=window.__pwned=3>", "new": "x"}],
                    }
                ),
                now - 40 * 10**9,
            )
        ],
    )
    globex = send(collector, [("updateRole", role_update(**{"audit.tenant.id": "globex"}), now - 5 * 10**9)])
    return {
        "ann": ann,
        "ann_times": when["ann"],
        "bob": bobs,
        "failed_login": failed_login,
        "group": group,
        "hostile": hostile,
        "globex": globex,
    }


@pytest.fixture
def site(collector: RunningCollector, host: Host, browser: Browser, trail: dict[str, Any]) -> Iterator[Site]:
    host.tenant, host.body, host.queue = "acme", {}, []
    running = Site(collector, host, browser, trail)
    yield running
    running.close()


# -- the tests ---------------------------------------------------------------------------------------


# Notes every Content-Security-Policy violation in the frame (the console says it too).
VIOLATIONS = """window.violations = [];
document.addEventListener("securitypolicyviolation", (e) => window.violations.push(e.violatedDirective + " " + e.blockedURI));"""


def test_the_embedded_viewer_shows_the_tenants_readable_trail(site: Site) -> None:
    trail = site.trail
    ui = site.open(before=VIOLATIONS)
    shown(ui)
    view = viewer(ui)
    assert messages(ui)[0] == {"type": "otaudit:ready"}
    # its script and styles, written into the page, ran under its CSP: admitted by their hashes
    assert frame(ui).evaluate("() => window.violations") == []
    expect(view.locator("#filters button[type=submit]")).to_have_css("background-color", "rgb(31, 95, 191)")
    readable = trail["ann"] + trail["bob"] + trail["failed_login"]
    listed = ids(ui)
    assert set(readable) <= set(listed)
    assert not set(trail["group"] + trail["globex"]) & set(listed)  # outside the plan; another tenant
    expect(view.locator("#events thead th")).to_have_text(
        [re.compile(r"^Time \(.+\)$"), "Actor", "Event", "Category", "Target", "Outcome"]
    )
    # a category outside the plan names the plan that has it
    inventory = view.locator('#f-category option[value="inventory_configuration"]')
    expect(inventory).to_have_text("Inventory configuration (needs the pro plan)")
    expect(inventory).to_be_disabled()
    expect(view.locator("#locked-categories")).to_contain_text("Inventory configuration (needs the pro plan)")
    # this token may not export: the page says so instead of offering it
    expect(view.locator("#export")).to_be_hidden()
    expect(view.locator("#export-unavailable")).to_have_text("Exporting is not allowed in this view.")
    expect(view.locator("#scope")).to_be_hidden()

    # filters, the search phrase and an object's history
    apply(ui, actor="bob@acme.test")
    assert ids(ui) == trail["bob"]
    apply(ui, actor="", q="event:siteAccess -outcome:success")
    assert ids(ui) == trail["failed_login"]
    apply(ui, q="")
    row = view.locator(f'#events tbody tr[data-event-id="{trail["bob"][0]}"]')
    with ui.page.expect_response(lambda r: "/v1/events" in r.url and "target_id=r-9" in r.url):
        row.get_by_role("button", name=re.compile("^role r-9")).click()
    expect(view.locator("#events")).not_to_have_attribute("aria-busy", "true")
    assert ids(ui) == trail["bob"]
    expect(view.locator("#f-target-id")).to_have_value("r-9")

    # the detail: old and new values; its object's history
    apply(ui, target_id="", target_type="")
    view.locator(f'#events tbody tr[data-event-id="{trail["ann"][0]}"] td').first.click()
    dialog = view.get_by_role("dialog")
    expect(dialog.get_by_role("heading", level=2)).to_have_text("Role updated · Accounts configuration")
    expect(dialog.locator("table.changes thead th")).to_have_text(["Field", "Old value", "New value"])
    expect(dialog.locator("table.changes tbody tr")).to_have_text(["nameAuditorsSecurity auditors", "passwordwithheldwithheld"])
    with ui.page.expect_response(lambda r: "/v1/events" in r.url and "target_id=r-3" in r.url):
        dialog.get_by_role("button", name="Show this object's history").click()
    expect(dialog).to_be_hidden()
    expect(view.locator("#events")).not_to_have_attribute("aria-busy", "true")
    assert set(trail["ann"]) <= set(ids(ui)) and not set(trail["bob"]) & set(ids(ui))
    ui.assert_clean()


def test_markup_in_the_trail_is_shown_as_text(site: Site) -> None:
    (hostile,) = site.trail["hostile"]
    ui = site.open()
    shown(ui)
    view = viewer(ui)
    apply(ui, actor="u-66")
    row = view.locator(f'#events tbody tr[data-event-id="{hostile}"]')
    expect(row.locator(".target-name")).to_have_text('<img src=x onerror="window.__pwned=1">')
    row.locator("td").first.click()
    dialog = view.get_by_role("dialog")
    expect(dialog.locator("table.changes tbody tr")).to_have_text("<i>name</i><svg onload=window.__pwned=3>x")
    expect(dialog.locator("dt", has_text=re.compile("^Reason$")).locator("+ dd")).to_have_text(
        "<b>bold</b><script>window.__pwned=2</script>"
    )
    expect(view.locator("img, svg, b, i, body script, script[src]")).to_have_count(0)
    expect(view.locator("script")).to_have_count(1)  # the viewer's own, written into its head by the collector
    assert frame(ui).evaluate("() => window.__pwned") is None
    ui.assert_clean()


def test_a_narrowed_token_shows_only_its_scope_and_exports_when_allowed(site: Site) -> None:
    trail = site.trail
    site.host.body = {"categories": ["accounts_configuration"], "actor": "u-42", "export": True}
    ui = site.open()
    shown(ui)
    view = viewer(ui)
    assert ids(ui) == trail["bob"]
    expect(view.locator("#f-actor")).to_be_disabled()
    expect(view.locator("#f-actor")).to_have_value("u-42")
    expect(view.locator("#scope")).to_have_text(
        "This view shows only: the categories Accounts configuration; the actions of u-42."
    )
    expect(view.locator('#f-category option[value="site_access"]')).to_have_text("Site access (not shared in this view)")
    expect(view.locator('#f-category option[value="inventory_configuration"]')).to_have_text(
        "Inventory configuration (not shared in this view)"
    )
    # asking for more is refused by the API, and the viewer says why
    apply(ui, q="actor:u-17")
    expect(view.locator("#error")).to_have_text("this viewer token reads only the events of actor 'u-42'")
    apply(ui, q="")
    assert ids(ui) == trail["bob"]

    # export: allowed here, through GET /v1/export with the token in its header
    expect(view.locator("#export-unavailable")).to_be_hidden()
    with ui.page.expect_download() as download, ui.page.expect_request(lambda r: "/v1/export?" in r.url) as asked:
        view.get_by_role("group", name="Export these results:").get_by_role("button", name="CSV", exact=True).click()
    assert asked.value.all_headers()["authorization"].startswith("Bearer otaudit-viewer.")
    assert re.fullmatch(r"otaudit-acme-\d{8}T\d{6}Z\.csv", download.value.suggested_filename)
    rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text(encoding="utf-8-sig"))))
    assert {r["id"] for r in rows} == set(trail["bob"])
    expect(view.locator("#export-status")).to_have_text("The CSV file is downloaded.")
    ui.assert_clean(refused=(403,))


def test_a_token_for_one_object_shows_its_history_only(site: Site) -> None:
    trail = site.trail
    site.host.body = {"target": {"type": "role", "id": "r-3"}}
    ui = site.open()
    shown(ui)
    view = viewer(ui)
    assert set(ids(ui)) == set(trail["ann"])
    expect(view.locator("#f-target-type")).to_be_disabled()
    expect(view.locator("#f-target-id")).to_have_value("r-3")
    expect(view.locator("#export")).to_be_hidden()
    view.locator(f'#events tbody tr[data-event-id="{trail["ann"][0]}"] td').first.click()
    expect(view.get_by_role("dialog").locator("table.changes")).to_be_visible()
    ui.assert_clean()


def test_an_expired_token_asks_the_host_and_a_renewed_one_continues_without_reload(site: Site) -> None:
    trail = site.trail
    ui = site.open(renew=False)
    shown(ui)
    view = viewer(ui)
    frame(ui).evaluate("() => { window.__marker = 'loaded once'; }")
    apply(ui, actor="bob@acme.test")
    assert ids(ui) == trail["bob"]

    short = site.host.mint(minutes=1 / 60)  # lives one second
    time.sleep(1.5)
    site.host.queue.append(short)
    ui.page.evaluate("() => window.sendToken()")
    stopped = view.locator("#stopped")
    expect(stopped).to_be_visible()
    expect(stopped).to_have_text(re.compile(r"This view has expired\.\s*The page around it has been asked to renew it"))
    ui.page.wait_for_function("() => window.messages.some(m => m.type === 'otaudit:expired')")
    assert messages(ui)[-1] == {"type": "otaudit:expired"}
    assert ids(ui) == trail["bob"]  # what was shown stays

    # an action meanwhile waits for the next token (and the host is told again)
    view.locator("#f-outcome").select_option("failure")
    view.locator("#filters button[type=submit]").click()
    ui.page.wait_for_function("() => window.messages.filter(m => m.type === 'otaudit:expired').length >= 2")

    with ui.page.expect_response(lambda r: "/v1/events" in r.url and "outcome=failure" in r.url):
        ui.page.evaluate("() => window.sendToken()")
    expect(stopped).to_be_hidden()
    expect(view.locator("#events")).not_to_have_attribute("aria-busy", "true")
    assert ids(ui) == [trail["bob"][1]]
    assert frame(ui).evaluate("() => window.__marker") == "loaded once"  # no reload
    ui.assert_clean(refused=(401,))


def test_what_is_not_a_viewer_token_shows_nothing_and_the_next_token_is_taken(site: Site) -> None:
    site.host.queue.append(site.host.admin["acme"])  # the host's mistake: its admin token
    ui = site.open()
    view = viewer(ui)
    expect(view.locator("#stopped")).to_contain_text("The page handed over something that is not a viewer token")
    expect(view.locator("#trail")).to_be_hidden()
    expect(view.locator("#waiting")).to_be_hidden()
    ui.page.wait_for_function("() => window.messages.some(m => m.type === 'otaudit:refused')")
    assert next(m for m in messages(ui) if m["type"] == "otaudit:refused")["error"] == "not_viewer_token"
    assert not [u for u in ui.urls if "/v1/" in u]  # nothing asked with it
    with ui.page.expect_response(lambda r: "/v1/events" in r.url):
        ui.page.evaluate("() => window.sendToken()")
    shown(ui)
    expect(view.locator("#stopped")).to_be_hidden()
    assert set(site.trail["ann"]) <= set(ids(ui))
    ui.assert_clean()


def test_without_temporal_the_time_zone_is_read_from_intl(site: Site) -> None:
    ui = site.open(before="delete globalThis.Temporal;", timezone_id="America/Sao_Paulo")
    shown(ui)
    view = viewer(ui)
    assert frame(ui).evaluate("() => typeof Temporal") == "undefined"
    expect(view.locator("#events thead th").first).to_have_text("Time (America/Sao_Paulo)")
    occurred = dt.datetime.fromtimestamp(site.trail["ann_times"][0] / 10**9, dt.UTC) - dt.timedelta(hours=3)
    row = view.locator(f'#events tbody tr[data-event-id="{site.trail["ann"][0]}"]')
    expect(row.locator("td").first).to_have_text(occurred.strftime("%Y-%m-%d %H:%M:%S"))
    ui.assert_clean()


def test_an_origin_not_allowed_cannot_frame_the_viewer(site: Site) -> None:
    ui = site.open(origin="name")  # http://localhost:PORT: not in viewer.frame_ancestors
    ui.page.wait_for_timeout(1500)
    viewer_frame = frame(ui)
    assert viewer_frame.url.startswith("chrome-error://") or viewer_frame.url == "about:blank", viewer_frame.url
    assert viewer_frame.locator("#trail").count() == 0
    assert messages(ui) == []
    assert not [u for u in ui.urls if "/v1/" in u]
    blocked = [m for m in ui.console_errors if "frame-ancestors" in m]
    assert blocked and site.host.ip in blocked[0], ui.console_errors
    ui.console_errors = [m for m in ui.console_errors if m not in blocked]
    ui.assert_clean()


def test_a_tenants_origin_frames_the_viewer_naming_that_tenant_with_that_tenants_token_only(site: Site) -> None:
    # localhost is in globex's viewer.tenant_frame_ancestors: it may frame ?tenant=globex
    ui = site.open(origin="name", embed="tenant=globex")
    view = viewer(ui)
    stopped = view.locator("#stopped")
    expect(stopped).to_contain_text("a token of another tenant than this view's (globex)")  # acme's token
    expect(view.locator("#trail")).to_be_hidden()
    site.host.tenant = "globex"
    with ui.page.expect_response(lambda r: "/v1/events" in r.url):
        ui.page.evaluate("() => window.sendToken()")
    shown(ui)
    assert site.trail["globex"][0] in ids(ui)
    assert not set(site.trail["ann"]) & set(ids(ui))
    ui.assert_clean()


def test_a_message_from_another_frame_or_origin_is_ignored(site: Site) -> None:
    for sibling in ("name", "ip"):  # an origin not allowed; the allowed one, but not the parent
        ui = site.open(auto=False)
        ui.page.evaluate(f"() => {{ document.getElementById('sibling').src = '{getattr(site.host, sibling)}/sibling.html'; }}")
        ui.page.wait_for_function("() => window.others.some(m => m && m.type === 'sibling:sent')")
        ui.page.wait_for_timeout(1000)
        view = viewer(ui)
        expect(view.locator("#waiting")).to_be_visible()
        expect(view.locator("#trail")).to_be_hidden()
        assert not [u for u in ui.urls if "/v1/" in u], sibling
        with ui.page.expect_response(lambda r: "/v1/events" in r.url):
            ui.page.evaluate("() => window.sendToken()")  # the parent's own is taken
        shown(ui)
        ui.assert_clean()


def test_language_time_zone_columns_and_theme_come_from_the_host(site: Site) -> None:
    trail = site.trail
    embed = "lang=fr&columns=time,event,outcome&accent=%23335eea&density=compact&font=Georgia&border=red"
    ui = site.open(embed=embed, timezone_id="Asia/Tokyo")
    shown(ui)
    view = viewer(ui)
    expect(view.locator("html")).to_have_attribute("lang", "fr")
    expect(view.locator("#events thead th")).to_have_text(["Heure (Asia/Tokyo)", "Événement", "Résultat"])
    row = view.locator(f'#events tbody tr[data-event-id="{trail["ann"][0]}"]')
    expect(row.locator("td")).to_have_count(3)
    occurred = dt.datetime.fromtimestamp(trail["ann_times"][0] / 10**9, dt.UTC)
    tokyo = occurred + dt.timedelta(hours=9)
    expect(row.locator("td").nth(0)).to_have_text(tokyo.strftime("%Y-%m-%d %H:%M:%S"))
    expect(row.locator("td").nth(2)).to_have_text("réussite")
    expect(view.get_by_role("button", name="Appliquer les filtres")).to_be_visible()
    expect(view.locator("#f-since-label")).to_have_text("Du (Asia/Tokyo, inclus)")
    expect(view.locator("#export-unavailable")).to_have_text("L'export n'est pas autorisé dans cette vue.")

    view.get_by_label("Heures en UTC").check()
    expect(view.locator("#events thead th").first).to_have_text("Heure (UTC)")
    expect(row.locator("td").nth(0)).to_have_text(occurred.strftime("%Y-%m-%d %H:%M:%S"))
    row.locator("td").first.click()
    dialog = view.get_by_role("dialog")
    expect(dialog.get_by_role("heading", level=2)).to_have_text("Role updated · Accounts configuration")
    expect(dialog.locator("table.changes thead th")).to_have_text(["Champ", "Ancienne valeur", "Nouvelle valeur"])
    expect(dialog.locator("dt", has_text="Heure (UTC)").locator("+ dd")).to_have_text(occurred.strftime("%Y-%m-%d %H:%M:%S"))
    dialog.get_by_role("button", name="Fermer").click()

    # a filter's time is read in the zone shown
    view.get_by_label("Heures en UTC").uncheck()
    start = tokyo - dt.timedelta(seconds=1)
    with ui.page.expect_response(lambda r: "/v1/events" in r.url and "since=" in r.url) as answered:
        view.locator("#f-since").fill(start.strftime("%Y-%m-%dT%H:%M:%S"))
        view.locator("#filters button[type=submit]").click()
    since = (occurred - dt.timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert f"since={since.replace(':', '%3A')}" in answered.value.url

    # the look: the accent, the density and the font; a bad colour is ignored
    apply_button = view.get_by_role("button", name="Appliquer les filtres")
    expect(apply_button).to_have_css("background-color", "rgb(51, 94, 234)")
    expect(view.locator("html")).to_have_css("font-size", "13px")
    expect(view.locator("body")).to_have_css("font-family", re.compile("^Georgia"))
    expect(view.locator(".card").first).to_have_css("border-top-color", "rgb(214, 218, 225)")  # border=red ignored
    ui.page.evaluate("() => window.sendTheme({ accent: '#a00', density: 'comfortable', text: 'red' })")
    expect(apply_button).to_have_css("background-color", "rgb(170, 0, 0)")
    expect(view.locator("html")).to_have_css("font-size", "16px")
    expect(view.locator("body")).to_have_css("color", "rgb(29, 36, 48)")  # text=red ignored
    ui.assert_clean()


def test_the_readmes_host_snippet_embeds_the_viewer_and_renews_its_token(site: Site) -> None:
    trail = site.trail
    context = site.browser.new_context()
    context.set_default_timeout(30_000)
    ui = Ui(context.new_page(), site.host.ip, site.host.secrets)
    site.uis.append(ui)
    ui.open("/readme.html")
    view = ui.page.frame_locator("iframe")
    expect(view.locator("#summary")).not_to_be_empty()
    listed = view.locator("#events tbody tr").evaluate_all("rows => rows.map(r => r.dataset.eventId)")
    assert set(trail["ann"]) <= set(listed)
    short = site.host.mint(minutes=1 / 60)
    time.sleep(1.5)
    site.host.queue.append(short)
    # the host hands the expired token over (as a renewal would); the viewer asks again, the snippet renews
    with ui.page.expect_response(lambda r: "/v1/whoami" in r.url and r.status == 200):
        ui.page.evaluate(
            "async () => { const r = await fetch('/audit-token', {method: 'POST'}); const {token} = await r.json();"
            f" document.querySelector('iframe').contentWindow.postMessage({{type: 'otaudit:token', token}}, '{site.collector.api_url}'); }}"
        )
    expect(view.locator("#stopped")).to_be_hidden()
    ui.assert_clean(refused=(401,))


def test_the_custom_element_wraps_the_viewer_and_renews_its_token(site: Site) -> None:
    context = site.browser.new_context()
    context.set_default_timeout(30_000)
    ui = Ui(context.new_page(), site.host.ip, site.host.secrets)
    site.uis.append(ui)
    ui.open("/element.html")
    view = ui.page.frame_locator("otaudit-viewer iframe")
    expect(view.locator("#summary")).not_to_be_empty()
    expect(view.locator("#events thead th")).to_have_text([re.compile(r"^Heure \(.+\)$"), "Événement", "Résultat"])
    assert set(site.trail["ann"]) <= set(
        view.locator("#events tbody tr").evaluate_all("rows => rows.map(r => r.dataset.eventId)")
    )
    short = site.host.mint(minutes=1 / 60)
    time.sleep(1.5)
    with ui.page.expect_response(lambda r: "/v1/whoami" in r.url and r.status == 200):
        ui.page.evaluate("token => document.querySelector('otaudit-viewer').setToken(token)", short)
    expect(view.locator("#stopped")).to_be_hidden()
    ui.assert_clean(refused=(401,))


# -- the headers, the configuration and the files (no browser) ------------------------------------


def test_only_the_viewer_page_may_be_framed_and_only_by_the_allowed_origins(collector: RunningCollector, host: Host) -> None:
    base = collector.api_url
    deployment = f"{host.ip} https://app.example.com"
    for query, allowed in [
        ("", deployment),
        ("?tenant=acme", deployment),
        ("?tenant=globex", f"{deployment} {host.name}"),
        ("?tenant=%3Cscript%3E", deployment),
    ]:
        page = requests.get(f"{base}/ui/embed.html{query}", timeout=10)
        assert page.status_code == 200 and page.headers["Content-Type"] == "text/html; charset=utf-8"
        policy = page.headers["Content-Security-Policy"]
        assert policy.endswith(f"frame-ancestors {allowed}"), policy
        assert_inline_code_admitted_by_hash(page.text, policy)
        assert "X-Frame-Options" not in page.headers
        assert f'<meta name="otaudit-frame-origins" content="{allowed}">' in page.text
        again = requests.get(f"{base}/ui/embed.html{query}", headers={"If-None-Match": page.headers["ETag"]}, timeout=10)
        assert again.status_code == 304
    admin = requests.get(base + "/ui/", timeout=10)
    assert admin.headers["Content-Security-Policy"].endswith("frame-ancestors 'none'")
    assert admin.headers["X-Frame-Options"] == "DENY"
    for name in ("embed.js", "embed.css", "style.css"):
        assert requests.get(f"{base}/ui/{name}", timeout=10).content == (WEB / name).read_bytes()


def inline(page: str, tag: str) -> list[str]:
    return re.findall(rf"<{tag}>(.*?)</{tag}>", page, re.S)


def source(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def assert_inline_code_admitted_by_hash(page: str, policy: str) -> None:
    """The viewer page is one answer: its script and stylesheets written into it, unchanged, and
    its CSP admits exactly them by their SHA-256 (this origin's files too; never unsafe-inline)."""
    scripts, styles = inline(page, "script"), inline(page, "style")
    assert scripts == [(WEB / "embed.js").read_text()]
    assert styles == [(WEB / "style.css").read_text(), (WEB / "embed.css").read_text()]
    assert page.index("<script>") < page.index("<body")  # in the head: it asks for the token before the page is parsed
    assert not re.search(r"<script\b[^>]*\bsrc=|<link\b[^>]*stylesheet", page), "a file still linked"
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    assert directives["script-src"] == " ".join(["'self'", *map(source, scripts)])
    assert directives["style-src"] == " ".join(["'self'", *map(source, styles)])
    assert directives["default-src"] == "'self'" and directives["object-src"] == "'none'"
    for loose in ("unsafe-inline", "unsafe-eval", "unsafe-hashes", "strict-dynamic", "*", "data:"):
        assert loose not in policy, loose


def test_a_file_that_cannot_be_written_into_the_page_stays_linked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for file in WEB.iterdir():
        (tmp_path / file.name).write_bytes(file.read_bytes())
    (tmp_path / "embed.js").write_text((WEB / "embed.js").read_text() + "\n// </script><script>alert(1)\n")
    monkeypatch.setattr(web_module, "_FOLDER", tmp_path)

    async def ask() -> tuple[str, str]:
        app = web.Application()
        add_web_routes(app, FrameAncestors.of(["https://app.example.com"], {}))
        async with TestClient(TestServer(app)) as client:
            page = await client.get("/ui/embed.html")
            return page.headers["Content-Security-Policy"], await page.text()

    with ThreadPoolExecutor(1) as pool:
        policy, text = pool.submit(asyncio.run, ask()).result()
    assert '<script src="embed.js" defer></script>' in text and "alert(1)" not in text
    assert inline(text, "style") == [(WEB / "style.css").read_text(), (WEB / "embed.css").read_text()]
    assert "script-src 'self';" in policy and "sha256" in policy.split("style-src", 1)[1]


def test_with_no_allowed_origin_nobody_may_frame_the_viewer() -> None:
    async def ask() -> tuple[str, str, str]:
        app = web.Application()
        add_web_routes(app)
        async with TestClient(TestServer(app)) as client:
            page = await client.get("/ui/embed.html?tenant=acme")
            return page.headers["Content-Security-Policy"], page.headers.get("X-Frame-Options", ""), await page.text()

    with ThreadPoolExecutor(1) as pool:  # a loop of its own: Playwright's runs in this thread
        policy, frame_options, text = pool.submit(asyncio.run, ask()).result()
    assert policy.endswith("frame-ancestors 'none'") and frame_options == ""
    assert '<meta name="otaudit-frame-origins" content="">' in text


def test_origins_are_checked_by_the_schema_and_written_as_browsers_do() -> None:
    db = "postgresql://127.0.0.1/unused"  # never connected to: the configuration alone
    assert origin("https://App.Example.com:443") == "https://app.example.com"
    assert origin("http://127.0.0.1:8080") == "http://127.0.0.1:8080"
    assert origin("http://localhost:80") == "http://localhost"
    ancestors = FrameAncestors.of(["https://a.example", "https://A.example"], {"acme": ["https://b.example:8443"]})
    assert ancestors.allowed(None) == ("https://a.example",)
    assert ancestors.allowed("acme") == ("https://a.example", "https://b.example:8443")
    assert ancestors.allowed("globex") == ("https://a.example",)
    good = {("viewer", "frame_ancestors"): ["https://app.example.com", "http://127.0.0.1:8080"]}
    assert settings_for(db, good).get("viewer", "frame_ancestors") == good[("viewer", "frame_ancestors")]
    for bad in [
        "https://app.example.com/",
        "https://app.example.com/settings",
        "*",
        "https://*.example.com",
        "app.example.com",
        "ftp://app.example.com",
        "https://app.example.com:443?x",
        "'self'",
        "https://user@app.example.com",
    ]:
        with pytest.raises(ConfigError, match=r"viewer\.frame_ancestors"):
            settings_for(db, {("viewer", "frame_ancestors"): [bad]})
    with pytest.raises(ConfigError, match=r"viewer\.tenant_frame_ancestors"):
        settings_for(db, {("viewer", "tenant_frame_ancestors"): {"acme": ["https://app.example.com/x"]}})
    with pytest.raises(ConfigError, match=r"viewer\.tenant_frame_ancestors"):
        settings_for(db, {("viewer", "tenant_frame_ancestors"): {"bad tenant": ["https://app.example.com"]}})


def test_the_viewer_runs_no_inline_code_loads_nothing_from_elsewhere_and_keeps_the_token_in_memory() -> None:
    html = (WEB / "embed.html").read_text()  # as written: the collector writes these files into it (above)
    assert re.findall(r"<script\b[^>]*>", html) == ['<script src="embed.js" defer>']
    assert not re.search(r"\son[a-z]+\s*=", html), "an inline event handler"
    assert not re.search(r"\sstyle\s*=", html), "an inline style"
    for name in ("embed.html", "embed.js", "embed.css", "otaudit-viewer.js"):
        text = (WEB / name).read_text()
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.I), f"{name} names an external URL"
    for name in ("embed.js", "otaudit-viewer.js"):
        script = (WEB / name).read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
            assert sink not in script, f"{name}: {sink}"
        for storage in ("localStorage", "sessionStorage", "document.cookie", "indexedDB", "history.pushState"):
            assert storage not in script, f"{name}: {storage}"
