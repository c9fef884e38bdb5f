// otaudit admin page: signs in with a token, reads the trail through the admin API.
//
// Audit data is attacker-controlled (any service can record any string), so every value
// from the API is put on the page with textContent or DOM attributes, never as HTML.
// The token lives in sessionStorage and travels only in the Authorization header.
"use strict";

(() => {
  const TOKEN_KEY = "otaudit.token";
  const FILTER_KEYS = ["category", "event", "actor", "target_type", "target_id", "outcome", "since", "until", "q"];
  const FORMATS = { csv: "CSV", ndjson: "NDJSON", json: "JSON", xlsx: "XLSX" };
  const DEFAULT_LIMIT = "100";

  const state = {
    token: null,
    plan: null,
    tenant: null,
    categories: new Map(), // id -> {title, available, plan_needed, events}
    filters: {}, // the filters the table shows (not the unsaved form)
    cursor: null,
    shown: 0,
    generation: 0, // answers to an older request are dropped
    loading: false,
    detailOpener: null,
    exportTimer: null,
    exportGeneration: 0,
  };

  const $ = (id) => document.getElementById(id);

  // -- DOM helpers (text only) ------------------------------------------------------

  function el(tag, options, ...children) {
    const node = document.createElement(tag);
    const opts = options || {};
    if (opts.className) node.className = opts.className;
    if (opts.text !== undefined && opts.text !== null) node.textContent = String(opts.text);
    for (const [name, value] of Object.entries(opts.attrs || {})) node.setAttribute(name, String(value));
    for (const child of children) {
      if (child !== null && child !== undefined) node.append(child);
    }
    return node;
  }

  function clear(node) {
    node.replaceChildren();
  }

  function present(value) {
    return value !== undefined && value !== null && value !== "";
  }

  function formatTime(text) {
    if (typeof text !== "string") return "—";
    const match = /^(\d{4}-\d\d-\d\d)T(\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)$/.exec(text);
    return match ? `${match[1]} ${match[2]}` : text;
  }

  function timeElement(text) {
    return el("time", { text: formatTime(text), attrs: { datetime: String(text), title: String(text) } });
  }

  function formatValue(value) {
    if (typeof value === "string") return value;
    return JSON.stringify(value, null, 2);
  }

  // -- the API ------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  async function api(path, { method = "GET", params = [], body } = {}) {
    const url = new URL(path, window.location.origin);
    for (const [name, value] of params) url.searchParams.append(name, value);
    const headers = { Accept: "application/json", Authorization: `Bearer ${state.token}` };
    const init = { method, headers, cache: "no-store", credentials: "omit", referrerPolicy: "no-referrer" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(url.pathname + url.search, init);
    } catch (err) {
      throw new ApiError(0, "network", `The collector did not answer (${err.message}).`);
    }
    const text = await response.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch (err) {
      data = null;
    }
    if (!response.ok) {
      if (data && typeof data.message === "string") throw new ApiError(response.status, data.error, data.message);
      const extra = text ? `: ${text.slice(0, 200)}` : "";
      throw new ApiError(response.status, `http_${response.status}`, `HTTP ${response.status} ${response.statusText}${extra}`);
    }
    if (data === null) throw new ApiError(response.status, "bad_answer", "The collector's answer was not JSON.");
    return data;
  }

  // An API error in the middle of a session: a refused token ends the session.
  function failed(err, where) {
    if (err instanceof ApiError && err.status === 401) {
      signOut(`Signed out: ${err.message}`);
      return;
    }
    where.textContent = err.message;
  }

  // -- signing in and out -----------------------------------------------------------------

  async function signIn(token) {
    state.token = token;
    let catalog;
    let me;
    try {
      catalog = await api("/v1/catalog");
      me = await api("/v1/whoami");
    } catch (err) {
      state.token = null;
      sessionStorage.removeItem(TOKEN_KEY);
      showSignIn(err.message);
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, token);
    $("token").value = "";
    $("sign-in").hidden = true;
    $("trail").hidden = false;
    $("account").hidden = false;
    useCatalog(catalog);
    showWho(me);
    applyFilters(filtersFromHash(), { push: false });
  }

  function showSignIn(message) {
    $("trail").hidden = true;
    $("account").hidden = true;
    $("sign-in").hidden = false;
    $("sign-in-error").textContent = message || "";
    $("token").focus();
  }

  function signOut(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    state.token = null;
    state.plan = null;
    state.tenant = null;
    state.categories = new Map();
    state.generation += 1;
    stopExport();
    if ($("detail").open) $("detail").close();
    clear($("events").tBodies[0]);
    clear($("plan-summary"));
    $("summary").textContent = "";
    $("error").textContent = "";
    $("notice").hidden = true;
    $("export-status").hidden = true;
    $("load-more").hidden = true;
    showSignIn(message);
  }

  // -- the catalog and the plan ------------------------------------------------------

  function useCatalog(catalog) {
    state.categories = new Map();
    for (const c of catalog.categories || []) {
      state.categories.set(c.category, {
        title: c.title || c.category,
        available: Boolean(c.available),
        plan_needed: c.plan_needed,
        events: (c.events || []).map((e) => e.event),
        titles: new Map((c.events || []).map((e) => [e.event, e.title || e.event])),
      });
    }
    showPlan(catalog.plan);
    const select = $("f-category");
    const chosen = select.value;
    clear(select);
    select.append(el("option", { text: "All categories", attrs: { value: "" } }));
    const locked = [];
    for (const [id, c] of state.categories) {
      if (c.available) {
        select.append(el("option", { text: c.title, attrs: { value: id } }));
      } else {
        const needs = c.plan_needed ? `needs the ${c.plan_needed} plan` : "not in your plan";
        select.append(el("option", { text: `${c.title} (${needs})`, attrs: { value: id, disabled: "" } }));
        locked.push(`${c.title} (${needs})`);
      }
    }
    select.value = chosen;
    if (select.value !== chosen) select.value = "";
    $("locked-categories").textContent = locked.length
      ? `Not in the ${catalog.plan} plan: ${locked.join(", ")}.`
      : "";
    fillEventNames();
  }

  function fillEventNames() {
    const list = $("event-names");
    const category = $("f-category").value;
    clear(list);
    const names = new Set();
    for (const [id, c] of state.categories) {
      if (c.available && (!category || category === id)) c.events.forEach((name) => names.add(name));
    }
    for (const name of [...names].sort()) list.append(el("option", { attrs: { value: name } }));
  }

  function showPlan(plan, details) {
    state.plan = plan;
    const summary = $("plan-summary");
    clear(summary);
    if (details) {
      summary.append(
        el("span", { text: "Tenant " }),
        el("strong", { text: details.tenant }),
        el("span", { text: " · plan " }),
        el("strong", { text: details.plan }),
        el("span", {
          text: ` · ${searchable(details.query_window_days)} · ${kept(details)}`,
        }),
      );
    } else {
      summary.append(el("span", { text: "Plan " }), el("strong", { text: plan }));
    }
  }

  // A plan that keeps forever has retention_days null: say so in words, never "null days".
  function searchable(days) {
    return days === null || days === undefined ? "searchable without limit" : `searchable for ${days} day${days === 1 ? "" : "s"}`;
  }

  function kept(details) {
    if (details.retention) return details.retention === "kept indefinitely" ? details.retention : `kept for ${details.retention}`;
    const days = details.retention_days;
    return days === null || days === undefined ? "kept indefinitely" : `kept for ${days} day${days === 1 ? "" : "s"}`;
  }

  // Who the token is (GET /v1/whoami): its tenant and plan on show; only an admin token exports.
  function showWho(me) {
    state.tenant = me.tenant;
    showPlan(me.plan, me);
    document.querySelector(".export").hidden = me.role !== "admin";
  }

  async function planChanged(plan) {
    try {
      useCatalog(await api("/v1/catalog"));
      showWho(await api("/v1/whoami"));
    } catch (err) {
      failed(err, $("error"));
    }
    return plan;
  }

  // -- filters ------------------------------------------------------------------------------

  function fromLocalInput(value) {
    // datetime-local holds "YYYY-MM-DDTHH:MM[:SS[.mmm]]"; the page reads it as UTC.
    if (!value) return "";
    return (value.length === 16 ? `${value}:00` : value) + "Z";
  }

  function toLocalInput(text) {
    if (!text) return "";
    const when = /^\d+$/.test(text) ? new Date(Number(text) * 1000) : new Date(text);
    return Number.isNaN(when.getTime()) ? "" : when.toISOString().slice(0, 19);
  }

  function readForm() {
    const filters = {};
    const value = (id) => $(id).value.trim();
    if (value("f-category")) filters.category = value("f-category");
    const events = value("f-event").split(",").map((s) => s.trim()).filter(Boolean);
    if (events.length) filters.event = events;
    for (const [key, id] of [["actor", "f-actor"], ["target_type", "f-target-type"], ["target_id", "f-target-id"],
      ["outcome", "f-outcome"], ["q", "f-q"]]) {
      if (value(id)) filters[key] = value(id);
    }
    if (value("f-since")) filters.since = fromLocalInput(value("f-since"));
    if (value("f-until")) filters.until = fromLocalInput(value("f-until"));
    filters.limit = value("f-limit") || DEFAULT_LIMIT;
    return filters;
  }

  function writeForm(filters) {
    $("f-category").value = filters.category || "";
    if ($("f-category").value !== (filters.category || "")) $("f-category").value = "";
    $("f-event").value = (filters.event || []).join(", ");
    $("f-actor").value = filters.actor || "";
    $("f-target-type").value = filters.target_type || "";
    $("f-target-id").value = filters.target_id || "";
    $("f-outcome").value = filters.outcome || "";
    $("f-since").value = toLocalInput(filters.since);
    $("f-until").value = toLocalInput(filters.until);
    $("f-q").value = filters.q || "";
    $("f-limit").value = filters.limit || DEFAULT_LIMIT;
    if (!$("f-limit").value) $("f-limit").value = DEFAULT_LIMIT;
    fillEventNames();
  }

  function queryParams(filters) {
    const params = [];
    for (const key of [...FILTER_KEYS, "limit"]) {
      const value = filters[key];
      if (Array.isArray(value)) value.forEach((v) => params.push([key, v]));
      else if (present(value)) params.push([key, value]);
    }
    return params;
  }

  // Filters live in the address's fragment (never sent to a server): Back works and a
  // filtered view can be bookmarked. The token is never there.
  function filtersToHash(filters) {
    const params = new URLSearchParams(queryParams(filters));
    if (params.get("limit") === DEFAULT_LIMIT) params.delete("limit");
    const text = params.toString();
    return text ? `#${text}` : "";
  }

  function filtersFromHash() {
    const params = new URLSearchParams(window.location.hash.slice(1));
    const filters = {};
    for (const key of FILTER_KEYS) {
      const values = params.getAll(key).filter(Boolean);
      if (!values.length) continue;
      filters[key] = key === "event" ? values : values[0];
    }
    filters.limit = params.get("limit") || DEFAULT_LIMIT;
    return filters;
  }

  function applyFilters(filters, { push }) {
    state.filters = filters;
    writeForm(filters);
    const hash = filtersToHash(filters);
    if (push && hash !== window.location.hash) {
      window.history.pushState(null, "", hash || window.location.pathname + window.location.search);
    }
    loadEvents(false);
  }

  function historyFilters(target) {
    return { target_type: target.type, target_id: target.id, limit: state.filters.limit || DEFAULT_LIMIT };
  }

  // -- the events table ----------------------------------------------------------------

  async function loadEvents(append) {
    const generation = append ? state.generation : ++state.generation;
    const table = $("events");
    const more = $("load-more");
    $("error").textContent = "";
    table.setAttribute("aria-busy", "true");
    state.loading = true;
    const params = queryParams(state.filters);
    if (append && state.cursor) params.push(["cursor", state.cursor]);
    let page;
    try {
      page = await api("/v1/events", { params });
    } catch (err) {
      if (generation !== state.generation) return;
      table.removeAttribute("aria-busy");
      state.loading = false;
      if (!append) {
        clear(table.tBodies[0]);
        state.shown = 0;
        state.cursor = null;
        more.hidden = true;
        $("summary").textContent = "";
        $("notice").hidden = true;
      }
      failed(err, $("error"));
      return;
    }
    if (generation !== state.generation) return;
    table.removeAttribute("aria-busy");
    const body = table.tBodies[0];
    if (!append) {
      clear(body);
      state.shown = 0;
    }
    for (const event of page.events || []) body.append(eventRow(event));
    state.shown += (page.events || []).length;
    state.cursor = page.next_cursor || null;
    const hadFocus = document.activeElement === more;
    state.loading = false;
    more.hidden = !state.cursor;
    if (hadFocus && more.hidden) $("events-heading").focus();
    const notice = $("notice");
    notice.textContent = page.since_clamped || "";
    notice.hidden = !page.since_clamped;
    $("summary").textContent = state.shown
      ? `${state.shown} event${state.shown === 1 ? "" : "s"} shown, newest first${state.cursor ? "; more available" : ""}.`
      : "No events match these filters.";
    if (page.plan && state.plan && page.plan !== state.plan) {
      await planChanged(page.plan);
    }
  }

  function actorCell(actor) {
    if (!actor) return el("td", { text: "—" });
    const main = actor.email || actor.name || actor.id || `(${actor.type})`;
    const more = [actor.type, present(actor.id) && actor.id !== main ? actor.id : null].filter(present).join(" ");
    return el("td", {}, el("span", { text: main }), el("span", { className: "muted block", text: more }));
  }

  function targetCell(target) {
    if (!target) return el("td", { text: "—" });
    const label = [target.type, target.id].filter(present).join(" ");
    const cell = el("td");
    if (present(target.id)) {
      const link = el("a", {
        className: "target-link",
        text: label,
        attrs: {
          href: filtersToHash(historyFilters(target)) || "#",
          title: "Show this object's history",
        },
      });
      link.append(el("span", { className: "visually-hidden", text: " (show this object's history)" }));
      link.addEventListener("click", (event) => {
        event.preventDefault();
        event.stopPropagation();
        applyFilters(historyFilters(target), { push: true });
      });
      cell.append(link);
    } else {
      cell.append(el("span", { text: label }));
    }
    if (present(target.name)) cell.append(el("span", { className: "muted block target-name", text: target.name }));
    return cell;
  }

  function outcomeBadge(outcome) {
    const known = ["success", "failure", "denied"].includes(outcome);
    return el("span", { className: `badge${known ? ` outcome-${outcome}` : ""}`, text: outcome || "—" });
  }

  function categoryTitle(id) {
    const found = state.categories.get(id);
    return found ? found.title : id;
  }

  // The catalog's short human title of an event ("Role updated"); its name when the catalog has none.
  function eventTitle(category, name) {
    const found = state.categories.get(category);
    return (found && found.titles && found.titles.get(name)) || name;
  }

  function eventRow(event) {
    const row = el("tr", { className: "event-row" });
    row.dataset.eventId = String(event.id);
    row.dataset.occurredAt = String(event.occurred_at);
    const open = el("button", {
      className: "link-button event-open",
      text: eventTitle(event.category, event.event),
      attrs: { type: "button", "aria-haspopup": "dialog" },
    });
    open.addEventListener("click", (e) => {
      e.stopPropagation();
      openDetail(event.id, open);
    });
    row.append(
      el("td", { className: "nowrap" }, timeElement(event.occurred_at)),
      actorCell(event.actor),
      el("td", {}, open, el("span", { className: "muted block event-name", text: event.event })),
      el("td", { text: categoryTitle(event.category) }),
      targetCell(event.target),
      el("td", {}, outcomeBadge(event.outcome)),
      el("td", { text: (event.client && event.client.address) || "—" }),
    );
    row.addEventListener("click", (e) => {
      if (e.target.closest("a, button")) return;
      if (window.getSelection && String(window.getSelection()).length) return; // selecting text to copy
      openDetail(event.id, open);
    });
    return row;
  }

  // -- one event ----------------------------------------------------------------------------

  async function openDetail(id, opener) {
    const dialog = $("detail");
    const body = $("detail-body");
    state.detailOpener = opener;
    $("detail-heading").textContent = "Event detail";
    $("detail-error").textContent = "";
    clear(body);
    body.append(el("p", { className: "muted", text: "Loading…" }));
    dialog.setAttribute("aria-busy", "true");
    if (!dialog.open) dialog.showModal();
    let event;
    try {
      event = await api(`/v1/events/${encodeURIComponent(id)}`);
    } catch (err) {
      dialog.removeAttribute("aria-busy");
      clear(body);
      failed(err, $("detail-error"));
      return;
    }
    dialog.removeAttribute("aria-busy");
    renderDetail(event);
  }

  function facts(pairs) {
    const list = el("dl", { className: "facts" });
    for (const [name, value] of pairs) {
      if (!present(value) && !(value instanceof Node)) continue;
      list.append(el("dt", { text: name }), el("dd", {}, value instanceof Node ? value : formatValue(value)));
    }
    return list.children.length ? list : null;
  }

  function section(title, content) {
    if (!content) return null;
    return el("section", { className: "detail-section" }, el("h3", { text: title }), content);
  }

  // A value left out was withheld by the emitter (a secret); null is no value: an added field's
  // old value, a removed field's new one, shown as "(none)" (the exports write the same).
  function valueCell(change, key) {
    if (!Object.prototype.hasOwnProperty.call(change, key)) {
      return el("td", { className: "withheld" }, el("em", { text: "withheld" }));
    }
    if (change[key] === null) {
      return el("td", { className: "none" }, el("em", { text: "(none)" }));
    }
    return el("td", {}, el("code", { className: "value", text: formatValue(change[key]) }));
  }

  function changesTable(changes) {
    if (!Array.isArray(changes) || !changes.length) return null;
    const withItem = changes.some((c) => present(c.id));
    const head = el("tr");
    for (const name of [...(withItem ? ["Item"] : []), "Field", "Old value", "New value"]) {
      head.append(el("th", { text: name, attrs: { scope: "col" } }));
    }
    const body = el("tbody");
    for (const change of changes) {
      const row = el("tr", { className: "change" });
      if (withItem) row.append(el("td", { text: change.id || "—" }));
      row.append(el("th", { text: change.field, attrs: { scope: "row" } }), valueCell(change, "old"), valueCell(change, "new"));
      body.append(row);
    }
    return el("table", { className: "changes" }, el("thead", {}, head), body);
  }

  function mapTable(map, className) {
    if (!map || typeof map !== "object" || !Object.keys(map).length) return null;
    const body = el("tbody");
    for (const [key, value] of Object.entries(map)) {
      body.append(el("tr", {}, el("th", { text: key, attrs: { scope: "row" } }),
        el("td", {}, el("code", { className: "value", text: formatValue(value) }))));
    }
    return el("table", { className }, body);
  }

  // An object (the target, or a related object) with a button to its history: the events
  // whose target or related objects include it.
  function objectFacts(object, className) {
    const list = facts([["Type", object.type], ["Id", object.id], ["Name", object.name]]);
    if (!present(object.id)) return list;
    const history = el("button", {
      className: `secondary ${className}`,
      text: "Show this object's history",
      attrs: { type: "button" },
    });
    history.addEventListener("click", () => {
      $("detail").close();
      applyFilters(historyFilters(object), { push: true });
    });
    return el("div", {}, list, history);
  }

  function relatedList(related) {
    if (!Array.isArray(related) || !related.length) return null;
    const list = el("ul", { className: "related" });
    for (const object of related) {
      if (object && typeof object === "object") list.append(el("li", {}, objectFacts(object, "related-history")));
    }
    return list.children.length ? list : null;
  }

  function renderDetail(event) {
    const body = $("detail-body");
    clear(body);
    $("detail-heading").textContent = `${eventTitle(event.category, event.event)} · ${categoryTitle(event.category)}`;
    const actor = event.actor || {};
    const client = event.client || {};
    const target = event.target || null;
    const source = event.source || {};
    const trace = event.trace || {};
    const targetFacts = target ? objectFacts(target, "target-history") : null;
    const summary = facts([
      ["Event", event.event],
      ["Time (UTC)", event.occurred_at],
      ["Claimed time", event.claimed_occurred_at],
      ["Received", event.received_at],
      ["Outcome", outcomeBadge(event.outcome)],
      ["Reason", event.reason],
      ["Message", event.message],
      ["Flags", Array.isArray(event.flags) && event.flags.length ? event.flags.join(", ") : null],
      ["Event id", event.id],
      ["Tenant", event.tenant],
      ["Commit sequence", event.seq],
    ]);
    const raw = el("details", { className: "raw" }, el("summary", { text: "Raw JSON" }),
      el("pre", { text: JSON.stringify(event, null, 2) }));
    for (const part of [
      summary,
      section("Changes", changesTable(event.changes)),
      section("Details", mapTable(event.details, "details")),
      section("Actor", facts([["Type", actor.type], ["Id", actor.id], ["Email", actor.email], ["Name", actor.name],
        ["Roles", Array.isArray(actor.roles) ? actor.roles.join(", ") : actor.roles]])),
      section("Client", facts([["Address", client.address], ["User agent", client.user_agent], ["Session", client.session_id]])),
      section("Target", targetFacts),
      section("Related objects", relatedList(event.related)),
      section("Source", facts([["Service", source.service], ["Instance", source.instance], ["Sequence", source.sequence],
        ["Scope", source.scope]])),
      section("Trace", facts([["Trace id", trace.trace_id], ["Span id", trace.span_id]])),
      section("Other attributes", mapTable(event.attributes, "details")),
      integritySection(event),
      raw,
    ]) {
      if (part) body.append(part);
    }
  }

  // -- the event's place in the tamper-evident log ---------------------------------------------
  //
  // The collector answers GET /v1/events/{id}/proof with the event's leaf entry, its RFC 6962
  // inclusion proof and the signed checkpoint. This page checks, here in the browser: that the
  // entry is this event (every field shown, personal values as commitments), that its leaf hash
  // and the proof lead to the checkpoint's root, and, where the browser has Ed25519, the
  // checkpoint's signature with the key the collector names.

  function bytesOf(b64) {
    const text = atob(b64);
    const out = new Uint8Array(text.length);
    for (let i = 0; i < text.length; i += 1) out[i] = text.charCodeAt(i);
    return out;
  }

  function joined(...parts) {
    const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const part of parts) {
      out.set(part, at);
      at += part.length;
    }
    return out;
  }

  async function sha256(bytes) {
    return new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  }

  function equalBytes(a, b) {
    return a.length === b.length && a.every((x, i) => x === b[i]);
  }

  // RFC 9162 2.1.3.2, with plain numbers (indexes up to 2^53) instead of 32-bit bit operations.
  async function rootFromProof(leaf, index, size, proof) {
    let fn = index;
    let sn = size - 1;
    let r = leaf;
    for (const p of proof) {
      if (sn === 0) return null;
      if (fn % 2 === 1 || fn === sn) {
        r = await sha256(joined(Uint8Array.of(1), p, r));
        while (fn % 2 === 0 && fn !== 0) {
          fn = Math.floor(fn / 2);
          sn = Math.floor(sn / 2);
        }
      } else {
        r = await sha256(joined(Uint8Array.of(1), r, p));
      }
      fn = Math.floor(fn / 2);
      sn = Math.floor(sn / 2);
    }
    return sn === 0 ? r : null;
  }

  function sameJson(a, b) {
    if (Array.isArray(a) || Array.isArray(b)) {
      return Array.isArray(a) && Array.isArray(b) && a.length === b.length && a.every((x, i) => sameJson(x, b[i]));
    }
    if (a && b && typeof a === "object" && typeof b === "object") {
      const keys = Object.keys(a);
      return keys.length === Object.keys(b).length && keys.every((k) => Object.prototype.hasOwnProperty.call(b, k) && sameJson(a[k], b[k]));
    }
    return a === b;
  }

  function withoutCommitted(event, committed) {
    const doc = JSON.parse(JSON.stringify(event));
    for (const key of ["seq", "received_at", "log"]) delete doc[key];
    for (const pointer of Object.keys(committed)) {
      const parts = pointer.split("/").slice(1).map((p) => p.replace(/~1/g, "/").replace(/~0/g, "~"));
      let node = doc;
      for (const part of parts.slice(0, -1)) node = node ? node[part] : undefined;
      if (node && typeof node === "object") node[parts[parts.length - 1]] = null;
    }
    return doc;
  }

  async function signatureChecked(note, vkey) {
    const first = vkey.indexOf("+");
    const second = vkey.indexOf("+", first + 1);
    const name = vkey.slice(0, first);
    const keyB64 = vkey.slice(second + 1);
    if (first < 1 || second < 0 || !keyB64) return "the checkpoint's key is not readable";
    const blank = note.indexOf("\n\n");
    const text = new TextEncoder().encode(note.slice(0, blank + 1));
    const line = note.slice(blank + 2).split("\n").find((l) => l.startsWith(`\u2014 ${name} `));
    if (!line) return "the checkpoint has no signature of its key";
    const sig = bytesOf(line.split(" ")[2]).slice(4);
    try {
      const key = await crypto.subtle.importKey("raw", bytesOf(keyB64).slice(1), { name: "Ed25519" }, false, ["verify"]);
      return (await crypto.subtle.verify({ name: "Ed25519" }, key, sig, text)) ? true : "the checkpoint's signature does not verify";
    } catch (err) {
      return null; // this browser has no Ed25519: the collector checked the signature
    }
  }

  async function checkInclusion(event, proof) {
    const entryBytes = bytesOf(proof.entry);
    const entry = JSON.parse(new TextDecoder().decode(entryBytes));
    if (!sameJson(entry.event, withoutCommitted(event, entry.committed || {})) || entry.received_at !== event.received_at) {
      return { ok: false, text: "The log's entry for this event is not the event shown: it may have been altered." };
    }
    const leaf = await sha256(joined(Uint8Array.of(0), entryBytes));
    const root = await rootFromProof(leaf, proof.leaf_index, proof.tree_size, proof.proof.map(bytesOf));
    const signed = proof.checkpoint.split("\n");
    if (!root || !equalBytes(root, bytesOf(proof.root)) || signed[2] !== proof.root || Number(signed[1]) !== proof.tree_size) {
      return { ok: false, text: "The inclusion proof does not lead to the checkpoint's root: the log may have been altered." };
    }
    const signature = await signatureChecked(proof.checkpoint, proof.key);
    if (typeof signature === "string") return { ok: false, text: `Inclusion verified, but ${signature}.` };
    const how = signature ? "its signature too" : "its signature was checked by the collector";
    return {
      ok: true,
      text: `Verified in this browser: leaf ${proof.leaf_index.toLocaleString()} of the ${proof.tree_size.toLocaleString()}-event checkpoint of ${proof.checkpoint_time} (${how}; key ${proof.key.split("+").slice(0, 2).join("+")}).`,
    };
  }

  function integritySection(event) {
    const status = el("p", { className: "muted integrity", text: "Checking this event against the signed log…" });
    status.setAttribute("data-state", "checking");
    (async () => {
      let result;
      try {
        if (!event.log || !event.log.checkpointed) {
          result = { ok: null, text: "Not in a signed checkpoint yet: one is signed every few seconds; open the event again shortly." };
        } else {
          const proof = await api(`/v1/events/${encodeURIComponent(event.id)}/proof`);
          result = await checkInclusion(event, proof);
        }
      } catch (err) {
        const code = err instanceof ApiError ? err.code : "";
        if (code === "log_inconsistent") result = { ok: false, text: err.message };
        else result = { ok: null, text: `Could not check: ${err.message}` };
      }
      status.textContent = result.text;
      status.className = result.ok ? "integrity verified" : result.ok === false ? "integrity failed" : "muted integrity";
      status.setAttribute("data-state", result.ok ? "verified" : result.ok === false ? "failed" : "pending");
    })();
    return section("Integrity", status);
  }

  // -- exports --------------------------------------------------------------------------------

  function stopExport() {
    state.exportGeneration += 1;
    if (state.exportTimer) window.clearTimeout(state.exportTimer);
    state.exportTimer = null;
  }

  function exportBody(filters, format) {
    const body = { format };
    for (const key of FILTER_KEYS) {
      if (Array.isArray(filters[key]) ? filters[key].length : present(filters[key])) body[key] = filters[key];
    }
    return body;
  }

  function safeDownloadUrl(text) {
    if (typeof text !== "string") return null;
    // A full URL (exports.public_url, or the host the API was asked on): this page takes the file from its own origin.
    const url = new URL(text, window.location.origin);
    return url.pathname.startsWith("/v1/exports/") ? url.pathname + url.search : null;
  }

  function showExport(job, label) {
    const text = $("export-text");
    const progress = $("export-progress");
    const link = $("export-link");
    const rows = Number.isFinite(job.rows) ? job.rows : 0;
    const count = Number.isFinite(job.total) ? `${rows} of ${job.total} rows` : `${rows} rows`;
    const percent = typeof job.progress === "number" ? ` (${Math.round(job.progress * 100)}%)` : "";
    progress.hidden = false;
    link.hidden = true;
    if (typeof job.progress === "number") progress.value = job.progress;
    else progress.removeAttribute("value");
    if (job.state === "done") {
      const href = safeDownloadUrl(job.download_url);
      progress.value = 1;
      text.textContent = `${label} export ready: ${rows} rows.`;
      if (href) {
        link.href = href;
        link.setAttribute("download", "");
        link.textContent = `Download the ${label} file`;
        link.title = job.expires_at ? `The link works until ${formatTime(job.expires_at)} UTC` : "";
        link.hidden = false;
      }
      return true;
    }
    if (job.state === "failed") {
      progress.hidden = true;
      text.textContent = `${label} export failed: ${job.error || "no reason given"}`;
      return true;
    }
    text.textContent = `${label} export ${job.state === "queued" ? "queued" : "running"}: ${count}${percent}…`;
    return false;
  }

  async function startExport(format, button) {
    stopExport();
    const generation = state.exportGeneration;
    const label = FORMATS[format];
    const status = $("export-status");
    status.hidden = false;
    $("export-link").hidden = true;
    $("export-progress").hidden = false;
    $("export-progress").removeAttribute("value");
    $("export-text").textContent = `Starting the ${label} export…`;
    button.disabled = true;
    let job;
    try {
      job = await api("/v1/exports", { method: "POST", body: exportBody(state.filters, format) });
    } catch (err) {
      if (generation !== state.exportGeneration) return;
      $("export-progress").hidden = true;
      $("export-text").textContent = "";
      failed(err, $("export-text"));
      return;
    } finally {
      button.disabled = false;
    }
    if (generation !== state.exportGeneration) return;
    if (!showExport(job, label)) pollExport(job.id, label, generation, 250);
  }

  function pollExport(id, label, generation, delay) {
    state.exportTimer = window.setTimeout(async () => {
      let job;
      try {
        job = await api(`/v1/exports/${encodeURIComponent(id)}`);
      } catch (err) {
        if (generation !== state.exportGeneration) return;
        $("export-progress").hidden = true;
        failed(err, $("export-text"));
        return;
      }
      if (generation !== state.exportGeneration) return;
      if (!showExport(job, label)) pollExport(id, label, generation, Math.min(delay * 2, 2000));
    }, delay);
  }

  // -- wiring ----------------------------------------------------------------------------------

  function start() {
    $("sign-in-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const token = $("token").value.trim();
      if (!token) {
        $("sign-in-error").textContent = "Paste a token first.";
        $("token").focus();
        return;
      }
      $("sign-in-error").textContent = "";
      signIn(token);
    });
    $("sign-out").addEventListener("click", () => signOut("You are signed out."));
    $("filters").addEventListener("submit", (e) => {
      e.preventDefault();
      applyFilters(readForm(), { push: true });
    });
    $("clear-filters").addEventListener("click", () => {
      applyFilters({ limit: $("f-limit").value || DEFAULT_LIMIT }, { push: true });
    });
    $("f-category").addEventListener("change", fillEventNames);
    $("load-more").addEventListener("click", () => {
      if (state.cursor && !state.loading) loadEvents(true);
    });
    for (const button of document.querySelectorAll(".export button[data-format]")) {
      button.addEventListener("click", () => startExport(button.dataset.format, button));
    }
    $("detail-close").addEventListener("click", () => $("detail").close());
    $("detail").addEventListener("close", () => {
      const opener = state.detailOpener;
      state.detailOpener = null;
      if (opener && opener.isConnected) opener.focus();
    });
    window.addEventListener("popstate", () => {
      if (state.token) applyFilters(filtersFromHash(), { push: false });
    });
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) signIn(token);
    else showSignIn("");
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
