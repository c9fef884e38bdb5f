// otaudit's embeddable viewer (embed.html): a product's page shows it in an <iframe> and hands
// it a viewer token by postMessage; it reads the trail through the API with that token.
//
// The token: taken only from a message whose source is this frame's parent and whose origin is
// one the collector allows to frame this page (<meta name="otaudit-frame-origins">, the same
// list as the page's CSP frame-ancestors). It lives in this script's memory only: never in
// storage, a cookie or a URL; it travels only in the Authorization header.
//
// Messages: the viewer posts {type: "otaudit:ready"} when it wants a token, {type:
// "otaudit:expired"} when the API says the token expired and {type: "otaudit:refused", error,
// message} when it refused it; none carries data. The host posts {type: "otaudit:token", token}
// at any time (a renewed one continues the view, no reload) and {type: "otaudit:theme", ...}.
//
// Audit data is attacker-controlled: every value from the API goes on the page with
// textContent or DOM attributes, never as HTML.
"use strict";

(() => {
  const FILTER_KEYS = ["category", "event", "actor", "target_type", "target_id", "outcome", "since", "until", "q"];
  const FORMATS = { csv: "CSV", ndjson: "NDJSON", json: "JSON", xlsx: "XLSX" };
  const DEFAULT_LIMIT = "50";
  const PREFIX = "otaudit-viewer.";
  const COLUMNS = ["time", "actor", "event", "category", "target", "outcome", "client"];
  const DEFAULT_COLUMNS = ["time", "actor", "event", "category", "target", "outcome"];
  const COLOURS = {
    accent: "--accent",
    accent_text: "--accent-ink",
    text: "--ink",
    muted: "--muted",
    background: "--page",
    surface: "--panel",
    border: "--line",
  };
  const COLOUR = /^#(?:[0-9a-fA-F]{3}|[0-9a-fA-F]{6})$/;
  const FONT = /^[A-Za-z0-9 ,-]{1,100}$/;
  const DENSITIES = ["compact", "normal", "comfortable"];
  const TENANT = /^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$/;

  // -- the words ------------------------------------------------------------------------------

  const WORDS = {
    en: {
      title: "Audit log",
      waiting: "Waiting for the page around this view to hand over access…",
      not_framed: "This view is shown inside another application's page: open that page instead.",
      no_origins: "No page may show this view: the collector allows no origin to frame it (viewer.frame_ancestors).",
      expired_title: "This view has expired.",
      expired: "The page around it has been asked to renew it; if nothing happens, reload that page.",
      refused_title: "Access to the audit log was refused.",
      not_viewer: "The page handed over something that is not a viewer token; nothing is shown.",
      other_tenant: "The page handed over a token of another tenant than this view's ({tenant}); nothing is shown.",
      network: "The collector did not answer ({message}).",
      bad_answer: "The collector's answer was not JSON.",
      filters: "Filters",
      category: "Category",
      all_categories: "All categories",
      needs_plan: "needs the {plan} plan",
      not_in_plan: "not in your plan",
      not_in_view: "not shared in this view",
      locked: "Not available here: {list}.",
      event: "Event",
      event_hint: "several: separate with commas",
      actor: "Actor (id or email)",
      target_type: "Target type",
      target_id: "Target id",
      fixed: "fixed by this view",
      outcome: "Outcome",
      any: "Any",
      success: "success",
      failure: "failure",
      denied: "denied",
      since: "From ({zone}, inclusive)",
      until: "To ({zone}, exclusive)",
      q: "Search phrase",
      q_hint: "key:value terms over event, category, outcome, actor, actor_type, target_type, target_id and time; -key:value for not; time:>VALUE, >=, <, <=",
      limit: "Rows per page",
      apply: "Apply filters",
      clear: "Clear",
      events: "Events",
      utc: "Times in UTC",
      export: "Export these results:",
      export_unavailable: "Exporting is not allowed in this view.",
      exporting: "Preparing the {format} file…",
      exported: "The {format} file is downloaded.",
      export_failed: "The {format} export failed: {message}",
      caption: "Audit events, newest first. Choose an event to see its details.",
      col_time: "Time ({zone})",
      col_actor: "Actor",
      col_event: "Event",
      col_category: "Category",
      col_target: "Target",
      col_outcome: "Outcome",
      col_client: "Client address",
      shown_one: "1 event shown, newest first",
      shown_many: "{n} events shown, newest first",
      more: "; more available",
      none: "No events match these filters.",
      load_more: "Load more",
      detail: "Event detail",
      close: "Close",
      loading: "Loading…",
      history: "Show this object's history",
      changes: "Changes",
      item: "Item",
      field: "Field",
      old: "Old value",
      new: "New value",
      withheld: "withheld",
      no_value: "(none)",
      details: "Details",
      f_event: "Event",
      f_time: "Time ({zone})",
      f_claimed: "Claimed time",
      f_received: "Received",
      f_outcome: "Outcome",
      f_reason: "Reason",
      f_message: "Message",
      f_flags: "Flags",
      f_id: "Event id",
      s_actor: "Actor",
      s_client: "Client",
      s_target: "Target",
      s_related: "Related objects",
      s_source: "Source",
      s_trace: "Trace",
      s_other: "Other attributes",
      raw: "Raw JSON",
      type: "Type",
      id: "Id",
      email: "Email",
      name: "Name",
      roles: "Roles",
      address: "Address",
      user_agent: "User agent",
      session: "Session",
      service: "Service",
      instance: "Instance",
      sequence: "Sequence",
      scope: "Scope",
      trace_id: "Trace id",
      span_id: "Span id",
      scope_intro: "This view shows only: {list}.",
      scope_categories: "the categories {list}",
      scope_actor: "the actions of {value}",
      scope_target: "the history of {value}",
    },
    fr: {
      title: "Journal d'audit",
      waiting: "En attente de l'accès que doit transmettre la page qui affiche cette vue…",
      not_framed: "Cette vue s'affiche dans la page d'une autre application : ouvrez plutôt cette page.",
      no_origins: "Aucune page ne peut afficher cette vue : le collecteur n'autorise aucune origine à l'encadrer (viewer.frame_ancestors).",
      expired_title: "Cette vue a expiré.",
      expired: "La page qui l'affiche a été invitée à la renouveler ; si rien ne se passe, rechargez cette page.",
      refused_title: "L'accès au journal d'audit a été refusé.",
      not_viewer: "La page a transmis autre chose qu'un jeton de consultation ; rien n'est affiché.",
      other_tenant: "La page a transmis un jeton d'un autre client que celui de cette vue ({tenant}) ; rien n'est affiché.",
      network: "Le collecteur n'a pas répondu ({message}).",
      bad_answer: "La réponse du collecteur n'était pas du JSON.",
      filters: "Filtres",
      category: "Catégorie",
      all_categories: "Toutes les catégories",
      needs_plan: "nécessite l'offre {plan}",
      not_in_plan: "hors de votre offre",
      not_in_view: "non partagée dans cette vue",
      locked: "Non disponible ici : {list}.",
      event: "Événement",
      event_hint: "plusieurs : séparez-les par des virgules",
      actor: "Acteur (identifiant ou e-mail)",
      target_type: "Type de cible",
      target_id: "Identifiant de la cible",
      fixed: "fixé par cette vue",
      outcome: "Résultat",
      any: "Tous",
      success: "réussite",
      failure: "échec",
      denied: "refusé",
      since: "Du ({zone}, inclus)",
      until: "Au ({zone}, exclu)",
      q: "Recherche",
      q_hint: "termes clé:valeur sur event, category, outcome, actor, actor_type, target_type, target_id et time ; -clé:valeur pour exclure ; time:>VALEUR, >=, <, <=",
      limit: "Lignes par page",
      apply: "Appliquer les filtres",
      clear: "Effacer",
      events: "Événements",
      utc: "Heures en UTC",
      export: "Exporter ces résultats :",
      export_unavailable: "L'export n'est pas autorisé dans cette vue.",
      exporting: "Préparation du fichier {format}…",
      exported: "Le fichier {format} est téléchargé.",
      export_failed: "L'export {format} a échoué : {message}",
      caption: "Événements d'audit, du plus récent au plus ancien. Choisissez-en un pour voir son détail.",
      col_time: "Heure ({zone})",
      col_actor: "Acteur",
      col_event: "Événement",
      col_category: "Catégorie",
      col_target: "Cible",
      col_outcome: "Résultat",
      col_client: "Adresse du client",
      shown_one: "1 événement affiché, du plus récent au plus ancien",
      shown_many: "{n} événements affichés, du plus récent au plus ancien",
      more: " ; d'autres sont disponibles",
      none: "Aucun événement ne correspond à ces filtres.",
      load_more: "Afficher plus",
      detail: "Détail de l'événement",
      close: "Fermer",
      loading: "Chargement…",
      history: "Afficher l'historique de cet objet",
      changes: "Modifications",
      item: "Élément",
      field: "Champ",
      old: "Ancienne valeur",
      new: "Nouvelle valeur",
      withheld: "masquée",
      no_value: "(aucune)",
      details: "Détails",
      f_event: "Événement",
      f_time: "Heure ({zone})",
      f_claimed: "Heure déclarée",
      f_received: "Reçu",
      f_outcome: "Résultat",
      f_reason: "Motif",
      f_message: "Message",
      f_flags: "Indicateurs",
      f_id: "Identifiant de l'événement",
      s_actor: "Acteur",
      s_client: "Client",
      s_target: "Cible",
      s_related: "Objets liés",
      s_source: "Source",
      s_trace: "Trace",
      s_other: "Autres attributs",
      raw: "JSON brut",
      type: "Type",
      id: "Identifiant",
      email: "E-mail",
      name: "Nom",
      roles: "Rôles",
      address: "Adresse",
      user_agent: "Agent utilisateur",
      session: "Session",
      service: "Service",
      instance: "Instance",
      sequence: "Séquence",
      scope: "Portée",
      trace_id: "Identifiant de trace",
      span_id: "Identifiant de span",
      scope_intro: "Cette vue ne montre que : {list}.",
      scope_categories: "les catégories {list}",
      scope_actor: "les actions de {value}",
      scope_target: "l'historique de {value}",
    },
  };

  const state = {
    lang: "en",
    columns: DEFAULT_COLUMNS,
    utc: false,
    tenant: null, // the tenant the page's URL names, if any: a token of another is refused
    origins: [], // who may frame this page and talk to it, as the collector says
    parentOrigin: null,
    token: null,
    tokenGeneration: 0,
    scope: null,
    plan: null,
    categories: new Map(),
    filters: { limit: DEFAULT_LIMIT },
    cursor: null,
    shown: 0,
    generation: 0,
    loading: false,
    pending: null, // what a refused token interrupted: done again with the next token
    detailOpener: null,
    exportGeneration: 0,
  };

  const $ = (id) => document.getElementById(id);

  function t(key, values) {
    const text = (WORDS[state.lang] && WORDS[state.lang][key]) || WORDS.en[key] || key;
    return text.replace(/\{(\w+)\}/g, (whole, name) => (values && name in values ? String(values[name]) : whole));
  }

  // -- DOM helpers (text only) ------------------------------------------------------------

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

  function formatValue(value) {
    if (typeof value === "string") return value;
    return JSON.stringify(value, null, 2);
  }

  // -- the host page's settings: URL parameters, checked strictly ---------------------------

  function applyTheme(settings) {
    const root = document.documentElement;
    for (const [name, property] of Object.entries(COLOURS)) {
      const value = settings[name];
      if (value === undefined || value === null) continue;
      if (typeof value === "string" && COLOUR.test(value)) root.style.setProperty(property, value);
      else console.warn(`otaudit viewer: ignored ${name}: a colour is #rgb or #rrggbb`);
    }
    if (settings.font !== undefined && settings.font !== null) {
      if (typeof settings.font === "string" && FONT.test(settings.font)) {
        root.style.setProperty("--font", `${settings.font}, system-ui, sans-serif`);
      } else {
        console.warn("otaudit viewer: ignored font: letters, digits, spaces, commas and hyphens only");
      }
    }
    if (settings.density !== undefined && settings.density !== null) {
      if (DENSITIES.includes(settings.density)) root.dataset.density = settings.density;
      else console.warn(`otaudit viewer: ignored density: one of ${DENSITIES.join(", ")}`);
    }
  }

  function readSettings() {
    const params = new URLSearchParams(window.location.search);
    const lang = params.get("lang");
    if (lang && Object.prototype.hasOwnProperty.call(WORDS, lang)) state.lang = lang;
    const columns = (params.get("columns") || "").split(",").map((c) => c.trim()).filter((c) => COLUMNS.includes(c));
    if (columns.length) state.columns = [...new Set(columns)];
    state.utc = params.get("utc") === "1" || params.get("utc") === "true";
    const tenant = params.get("tenant");
    if (tenant && TENANT.test(tenant)) state.tenant = tenant;
    const theme = {};
    for (const name of [...Object.keys(COLOURS), "font", "density"]) {
      if (params.has(name)) theme[name] = params.get(name);
    }
    applyTheme(theme);
    const meta = document.querySelector('meta[name="otaudit-frame-origins"]');
    state.origins = (meta ? meta.content : "").split(" ").filter(Boolean);
  }

  function translatePage() {
    document.documentElement.lang = state.lang;
    document.title = t("title");
    for (const node of document.querySelectorAll("[data-i18n]")) node.textContent = t(node.dataset.i18n);
  }

  // -- times: the viewer's time zone, or UTC ---------------------------------------------

  // Without Intl.DateTimeFormat where the browser allows: making the first one costs tens of
  // milliseconds (the browser loads its locale data), more than the rest of the first page.
  let localZone = null;

  function zoneName() {
    if (state.utc) return "UTC";
    if (localZone === null) {
      try {
        localZone = globalThis.Temporal.Now.timeZoneId();
      } catch (err) {
        localZone = Intl.DateTimeFormat().resolvedOptions().timeZone;
      }
      localZone = localZone || "local";
    }
    return localZone;
  }

  const two = (n) => String(n).padStart(2, "0");

  // "YYYY-MM-DD HH:MM:SS" in the zone shown.
  function formatTime(text) {
    if (typeof text !== "string") return "—";
    const when = new Date(text);
    if (Number.isNaN(when.getTime())) return text;
    if (state.utc) {
      return `${when.getUTCFullYear()}-${two(when.getUTCMonth() + 1)}-${two(when.getUTCDate())} ${two(when.getUTCHours())}:${two(when.getUTCMinutes())}:${two(when.getUTCSeconds())}`;
    }
    return `${when.getFullYear()}-${two(when.getMonth() + 1)}-${two(when.getDate())} ${two(when.getHours())}:${two(when.getMinutes())}:${two(when.getSeconds())}`;
  }

  function timeElement(text) {
    return el("time", { text: formatTime(text), attrs: { datetime: String(text), title: String(text) } });
  }

  function retime() {
    for (const node of document.querySelectorAll("time[datetime]")) node.textContent = formatTime(node.getAttribute("datetime"));
    for (const node of document.querySelectorAll("[data-zone-label]")) node.textContent = t(node.dataset.zoneLabel, { zone: zoneName() });
    $("f-since-label").textContent = t("since", { zone: zoneName() });
    $("f-until-label").textContent = t("until", { zone: zoneName() });
  }

  // A datetime-local field holds "YYYY-MM-DDTHH:MM[:SS]" in the shown zone; the API takes UTC.
  function fromInput(value) {
    if (!value) return "";
    const full = value.length === 16 ? `${value}:00` : value;
    if (state.utc) return `${full}Z`;
    const when = new Date(full); // no zone: the browser's
    return Number.isNaN(when.getTime()) ? "" : when.toISOString().replace(".000Z", "Z");
  }

  function toInput(text) {
    if (!text) return "";
    const when = new Date(text);
    if (Number.isNaN(when.getTime())) return "";
    if (state.utc) return when.toISOString().slice(0, 19);
    return formatTime(text).replace(" ", "T");
  }

  // -- talking to the host page ------------------------------------------------------------

  function framed() {
    return window.parent !== window;
  }

  // Where the viewer's own messages go: the parent's origin when known (the last accepted
  // message's, or Chromium's ancestorOrigins), else "*": they carry no data, only their type.
  function parentOrigin() {
    if (state.parentOrigin) return state.parentOrigin;
    const ancestors = window.location.ancestorOrigins;
    if (ancestors && ancestors.length && state.origins.includes(ancestors[0])) return ancestors[0];
    if (state.origins.length === 1) return state.origins[0];
    return "*";
  }

  function tell(message) {
    if (framed()) window.parent.postMessage(message, parentOrigin());
  }

  function onMessage(event) {
    // Only the parent, and only from an origin the collector allows to frame this page.
    if (!framed() || event.source !== window.parent || !state.origins.includes(event.origin)) return;
    const data = event.data;
    if (!data || typeof data !== "object" || typeof data.type !== "string") return;
    state.parentOrigin = event.origin;
    if (data.type === "otaudit:token") useToken(data.token);
    else if (data.type === "otaudit:theme") applyTheme(data);
  }

  // -- the API ------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  async function call(path, params) {
    const url = new URL(path, window.location.origin);
    for (const [name, value] of params || []) url.searchParams.append(name, value);
    const token = state.token;
    if (!token) throw new ApiError(401, "no_token", t("expired_title"));
    const init = {
      headers: { Accept: "application/json", Authorization: `Bearer ${token}` },
      cache: "no-store",
      credentials: "omit",
      referrerPolicy: "no-referrer",
    };
    let response;
    try {
      response = await fetch(url.pathname + url.search, init);
    } catch (err) {
      throw new ApiError(0, "network", t("network", { message: err.message }));
    }
    return { response, token };
  }

  async function failure(response) {
    const text = await response.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch (err) {
      data = null;
    }
    if (data && typeof data.message === "string") return new ApiError(response.status, data.error, data.message);
    return new ApiError(response.status, `http_${response.status}`, `HTTP ${response.status} ${response.statusText}`);
  }

  async function api(path, params) {
    const { response, token } = await call(path, params);
    if (!response.ok) {
      const err = await failure(response);
      err.token = token;
      throw err;
    }
    try {
      return await response.json();
    } catch (err) {
      throw new ApiError(response.status, "bad_answer", t("bad_answer"));
    }
  }

  // An API error: a refused token stops the view until the host sends another (``retry`` is
  // then done again); any other error is shown in ``where``.
  function failed(err, where, retry) {
    if (err instanceof ApiError && err.status === 401) {
      if (err.token === undefined || err.token === state.token) stop(err);
      state.pending = retry || state.pending;
      return;
    }
    where.textContent = err.message;
  }

  function stop(err) {
    state.token = null;
    state.generation += 1;
    state.exportGeneration += 1;
    $("events").removeAttribute("aria-busy");
    state.loading = false;
    if ($("detail").open) $("detail").close();
    const expired = err.code === "token_expired" || err.code === "no_token";
    $("stopped-title").textContent = expired ? t("expired_title") : t("refused_title");
    $("stopped-text").textContent = expired ? t("expired") : `${err.message} ${t("expired")}`;
    $("stopped").hidden = false;
    $("waiting").hidden = true;
    if (expired) tell({ type: "otaudit:expired" });
    else tell({ type: "otaudit:refused", error: String(err.code || ""), message: String(err.message || "") });
  }

  // A token the viewer will not use (not a viewer token, another tenant's): nothing is shown.
  function refuse(code, message) {
    state.token = null;
    state.scope = null;
    $("stopped-title").textContent = t("refused_title");
    $("stopped-text").textContent = message;
    $("stopped").hidden = false;
    $("waiting").hidden = true;
    $("trail").hidden = true;
    tell({ type: "otaudit:refused", error: code, message });
  }

  // -- the token --------------------------------------------------------------------------

  // The token may come before the page's elements are parsed (see boot): its requests leave at
  // once, and what they answer waits for the page.
  async function useToken(token) {
    const generation = ++state.tokenGeneration;
    if (typeof token !== "string" || !token.startsWith(PREFIX) || token.length > 4096) {
      await pageReady;
      if (generation === state.tokenGeneration) refuse("not_viewer_token", t("not_viewer"));
      return;
    }
    state.token = token;
    let me;
    let catalog;
    // The first page is asked for at once, beside who the token is and the catalog: the server
    // applies the token's scope to it whatever the page knows yet (three round trips become one).
    let firstPage = null;
    if (state.scope === null) {
      firstPage = api("/v1/events", queryParams({ limit: state.filters.limit || DEFAULT_LIMIT }, [...FILTER_KEYS, "limit"]));
      firstPage.catch(() => {}); // its error, if any, is shown by loadEvents
    }
    const answers = Promise.all([api("/v1/whoami"), api("/v1/catalog")]);
    answers.catch(() => {}); // handled below, once the page is ready
    await pageReady;
    try {
      [me, catalog] = await answers;
    } catch (err) {
      if (generation !== state.tokenGeneration) return;
      if (err instanceof ApiError && err.status === 401) stop(err);
      else refuse(String(err.code || "error"), err.message);
      return;
    }
    if (generation !== state.tokenGeneration) return;
    if (me.role !== "viewer" || !me.viewer) {
      refuse("not_viewer_token", t("not_viewer"));
      return;
    }
    if (state.tenant && me.tenant !== state.tenant) {
      refuse("other_tenant", t("other_tenant", { tenant: state.tenant }));
      return;
    }
    const scopeChanged = JSON.stringify(me.viewer) !== JSON.stringify(state.scope);
    const first = state.scope === null;
    state.scope = me.viewer;
    $("waiting").hidden = true;
    $("stopped").hidden = true;
    $("trail").hidden = false;
    useCatalog(catalog);
    showScope();
    const pending = state.pending;
    state.pending = null;
    if (first || scopeChanged) {
      applyFilters({ limit: state.filters.limit || DEFAULT_LIMIT }, first ? firstPage : null);
    } else if (pending) {
      pending();
    }
  }

  // -- the catalog, the plan and the token's scope --------------------------------------------

  function useCatalog(catalog) {
    state.plan = catalog.plan;
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
    const select = $("f-category");
    const chosen = select.value;
    clear(select);
    select.append(el("option", { text: t("all_categories"), attrs: { value: "" } }));
    const locked = [];
    const shared = state.scope && Array.isArray(state.scope.categories) ? state.scope.categories : null;
    for (const [id, c] of state.categories) {
      if (c.available) {
        select.append(el("option", { text: c.title, attrs: { value: id } }));
        continue;
      }
      // Outside the token's categories: the host chose not to share it. Else the plan lacks it.
      let why;
      if (shared && !shared.includes(id)) why = t("not_in_view");
      else why = c.plan_needed ? t("needs_plan", { plan: c.plan_needed }) : t("not_in_plan");
      select.append(el("option", { text: `${c.title} (${why})`, attrs: { value: id, disabled: "" } }));
      locked.push(`${c.title} (${why})`);
    }
    select.value = chosen;
    if (select.value !== chosen) select.value = "";
    $("locked-categories").textContent = locked.length ? t("locked", { list: locked.join(", ") }) : "";
    eventNamesLater();
  }

  // The event names the Event field suggests: not needed to show a page of events, so filled
  // once the page is drawn and the browser is idle (once for any number of asks meanwhile).
  let eventNamesAsked = false;

  function eventNamesLater() {
    if (eventNamesAsked) return;
    eventNamesAsked = true;
    const fill = () => {
      eventNamesAsked = false;
      fillEventNames();
    };
    if (window.requestIdleCallback) window.requestIdleCallback(fill, { timeout: 1000 });
    else window.setTimeout(fill, 100);
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

  function scopeTarget() {
    const target = state.scope && state.scope.target;
    return target && (present(target.type) || present(target.id)) ? target : null;
  }

  function showScope() {
    const scope = state.scope || {};
    const parts = [];
    if (Array.isArray(scope.categories)) {
      parts.push(t("scope_categories", { list: scope.categories.map(categoryTitle).join(", ") }));
    }
    if (present(scope.actor)) parts.push(t("scope_actor", { value: scope.actor }));
    const target = scopeTarget();
    if (target) parts.push(t("scope_target", { value: [target.type, target.id].filter(present).join(" ") }));
    $("scope").textContent = parts.length ? t("scope_intro", { list: parts.join("; ") }) : "";
    const fixed = [
      ["f-actor", scope.actor],
      ["f-target-type", target ? target.type : null],
      ["f-target-id", target ? target.id : null],
    ];
    for (const [id, value] of fixed) {
      const input = $(id);
      input.disabled = present(value);
      if (present(value)) {
        input.value = value;
        input.title = t("fixed");
      } else {
        input.removeAttribute("title");
      }
    }
    $("export").hidden = !scope.export;
    $("export-unavailable").hidden = Boolean(scope.export);
  }

  function categoryTitle(id) {
    const found = state.categories.get(id);
    return found ? found.title : id;
  }

  function eventTitle(category, name) {
    const found = state.categories.get(category);
    return (found && found.titles && found.titles.get(name)) || name;
  }

  // -- filters -----------------------------------------------------------------------------------

  function readForm() {
    const filters = {};
    const value = (id) => ($(id).disabled ? "" : $(id).value.trim()); // a fixed field: the token's own
    if (value("f-category")) filters.category = value("f-category");
    const events = value("f-event").split(",").map((s) => s.trim()).filter(Boolean);
    if (events.length) filters.event = events;
    for (const [key, id] of [["actor", "f-actor"], ["target_type", "f-target-type"], ["target_id", "f-target-id"],
      ["outcome", "f-outcome"], ["q", "f-q"]]) {
      if (value(id)) filters[key] = value(id);
    }
    if (value("f-since")) filters.since = fromInput(value("f-since"));
    if (value("f-until")) filters.until = fromInput(value("f-until"));
    filters.limit = value("f-limit") || DEFAULT_LIMIT;
    return filters;
  }

  function writeForm(filters) {
    $("f-category").value = filters.category || "";
    if ($("f-category").value !== (filters.category || "")) $("f-category").value = "";
    $("f-event").value = (filters.event || []).join(", ");
    for (const [key, id] of [["actor", "f-actor"], ["target_type", "f-target-type"], ["target_id", "f-target-id"]]) {
      if (!$(id).disabled) $(id).value = filters[key] || "";
    }
    $("f-outcome").value = filters.outcome || "";
    $("f-since").value = toInput(filters.since);
    $("f-until").value = toInput(filters.until);
    $("f-q").value = filters.q || "";
    $("f-limit").value = filters.limit || DEFAULT_LIMIT;
    if (!$("f-limit").value) $("f-limit").value = DEFAULT_LIMIT;
    eventNamesLater();
  }

  function queryParams(filters, keys) {
    const params = [];
    for (const key of keys) {
      const value = filters[key];
      if (Array.isArray(value)) value.forEach((v) => params.push([key, v]));
      else if (present(value)) params.push([key, value]);
    }
    return params;
  }

  function applyFilters(filters, asked = null) {
    state.filters = filters;
    writeForm(filters);
    loadEvents(false, asked);
  }

  function historyFilters(target) {
    return { target_type: target.type, target_id: target.id, limit: state.filters.limit || DEFAULT_LIMIT };
  }

  // With a token fixed to one object, another object's history is not readable: no link to it.
  function historyAllowed(object) {
    const fixed = scopeTarget();
    if (!present(object.id)) return false;
    if (!fixed) return true;
    return (!present(fixed.type) || fixed.type === object.type) && (!present(fixed.id) || fixed.id === object.id);
  }

  // -- the events table ------------------------------------------------------------------------

  function buildHead() {
    const row = $("events").tHead.rows[0];
    clear(row);
    for (const column of state.columns) {
      const cell = el("th", { attrs: { scope: "col", "data-column": column } });
      if (column === "time") {
        cell.dataset.zoneLabel = "col_time";
        cell.textContent = t("col_time", { zone: zoneName() });
      } else {
        cell.textContent = t(`col_${column}`);
      }
      row.append(cell);
    }
  }

  // asked: the page's request already made (the first page, sent with the token's first calls).
  async function loadEvents(append, asked = null) {
    const generation = append ? state.generation : ++state.generation;
    const table = $("events");
    const more = $("load-more");
    $("error").textContent = "";
    table.setAttribute("aria-busy", "true");
    state.loading = true;
    const params = queryParams(state.filters, [...FILTER_KEYS, "limit"]);
    if (append && state.cursor) params.push(["cursor", state.cursor]);
    let page;
    try {
      page = await (asked || api("/v1/events", params));
    } catch (err) {
      if (generation !== state.generation) return;
      table.removeAttribute("aria-busy");
      state.loading = false;
      if (!append && !(err instanceof ApiError && err.status === 401)) {
        clear(table.tBodies[0]);
        state.shown = 0;
        state.cursor = null;
        more.hidden = true;
        $("summary").textContent = "";
        $("notice").hidden = true;
      }
      failed(err, $("error"), () => loadEvents(append));
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
    const count = state.shown === 1 ? t("shown_one") : t("shown_many", { n: state.shown });
    $("summary").textContent = state.shown ? `${count}${state.cursor ? t("more") : ""}.` : t("none");
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
    if (historyAllowed(target)) {
      const link = el("button", {
        className: "link-button target-link",
        text: label,
        attrs: { type: "button", title: t("history") },
      });
      link.addEventListener("click", (event) => {
        event.stopPropagation();
        applyFilters(historyFilters(target));
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
    return el("span", { className: `badge${known ? ` outcome-${outcome}` : ""}`, text: known ? t(outcome) : outcome || "—" });
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
    const cells = {
      time: () => el("td", { className: "nowrap" }, timeElement(event.occurred_at)),
      actor: () => actorCell(event.actor),
      event: () => el("td", {}, open, el("span", { className: "muted block event-name", text: event.event })),
      category: () => el("td", { text: categoryTitle(event.category) }),
      target: () => targetCell(event.target),
      outcome: () => el("td", {}, outcomeBadge(event.outcome)),
      client: () => el("td", { text: (event.client && event.client.address) || "—" }),
    };
    for (const column of state.columns) {
      const cell = cells[column]();
      cell.dataset.column = column;
      row.append(cell);
    }
    row.addEventListener("click", (e) => {
      if (e.target.closest("a, button")) return;
      if (window.getSelection && String(window.getSelection()).length) return;
      openDetail(event.id, open);
    });
    return row;
  }

  // -- one event ------------------------------------------------------------------------------

  async function openDetail(id, opener) {
    const dialog = $("detail");
    const body = $("detail-body");
    state.detailOpener = opener;
    $("detail-heading").textContent = t("detail");
    $("detail-error").textContent = "";
    clear(body);
    body.append(el("p", { className: "muted", text: t("loading") }));
    dialog.setAttribute("aria-busy", "true");
    if (!dialog.open) dialog.showModal();
    let event;
    try {
      event = await api(`/v1/events/${encodeURIComponent(id)}`);
    } catch (err) {
      dialog.removeAttribute("aria-busy");
      clear(body);
      failed(err, $("detail-error"), () => openDetail(id, opener));
      return;
    }
    dialog.removeAttribute("aria-busy");
    renderDetail(event);
  }

  function facts(pairs) {
    const list = el("dl", { className: "facts" });
    for (const [name, value] of pairs) {
      if (!present(value) && !(value instanceof Node)) continue;
      const term = el("dt", { text: name });
      list.append(term, el("dd", {}, value instanceof Node ? value : formatValue(value)));
    }
    return list.children.length ? list : null;
  }

  function section(title, content) {
    if (!content) return null;
    return el("section", { className: "detail-section" }, el("h3", { text: title }), content);
  }

  function valueCell(change, key) {
    if (!Object.prototype.hasOwnProperty.call(change, key)) {
      return el("td", { className: "withheld" }, el("em", { text: t("withheld") }));
    }
    if (change[key] === null) return el("td", { className: "none" }, el("em", { text: t("no_value") }));
    return el("td", {}, el("code", { className: "value", text: formatValue(change[key]) }));
  }

  function changesTable(changes) {
    if (!Array.isArray(changes) || !changes.length) return null;
    const withItem = changes.some((c) => present(c.id));
    const head = el("tr");
    for (const name of [...(withItem ? [t("item")] : []), t("field"), t("old"), t("new")]) {
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

  function objectFacts(object, className) {
    const list = facts([[t("type"), object.type], [t("id"), object.id], [t("name"), object.name]]);
    if (!historyAllowed(object)) return list;
    const history = el("button", { className: `secondary ${className}`, text: t("history"), attrs: { type: "button" } });
    history.addEventListener("click", () => {
      $("detail").close();
      applyFilters(historyFilters(object));
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

  function zoned(key) {
    const term = el("span", { text: t(key, { zone: zoneName() }) });
    term.dataset.zoneLabel = key;
    return term;
  }

  function renderDetail(event) {
    const body = $("detail-body");
    clear(body);
    $("detail-heading").textContent = `${eventTitle(event.category, event.event)} · ${categoryTitle(event.category)}`;
    const actor = event.actor || {};
    const client = event.client || {};
    const source = event.source || {};
    const trace = event.trace || {};
    const summary = el("dl", { className: "facts" });
    const rows = [
      [t("f_event"), event.event],
      [zoned("f_time"), present(event.occurred_at) ? timeElement(event.occurred_at) : null],
      [t("f_claimed"), present(event.claimed_occurred_at) ? timeElement(event.claimed_occurred_at) : null],
      [t("f_received"), present(event.received_at) ? timeElement(event.received_at) : null],
      [t("f_outcome"), outcomeBadge(event.outcome)],
      [t("f_reason"), event.reason],
      [t("f_message"), event.message],
      [t("f_flags"), Array.isArray(event.flags) && event.flags.length ? event.flags.join(", ") : null],
      [t("f_id"), event.id],
    ];
    for (const [name, value] of rows) {
      if (!present(value) && !(value instanceof Node)) continue;
      summary.append(el("dt", {}, name), el("dd", {}, value instanceof Node ? value : formatValue(value)));
    }
    const raw = el("details", { className: "raw" }, el("summary", { text: t("raw") }),
      el("pre", { text: JSON.stringify(event, null, 2) }));
    for (const part of [
      summary,
      section(t("changes"), changesTable(event.changes)),
      section(t("details"), mapTable(event.details, "details")),
      section(t("s_actor"), facts([[t("type"), actor.type], [t("id"), actor.id], [t("email"), actor.email],
        [t("name"), actor.name], [t("roles"), Array.isArray(actor.roles) ? actor.roles.join(", ") : actor.roles]])),
      section(t("s_client"), facts([[t("address"), client.address], [t("user_agent"), client.user_agent],
        [t("session"), client.session_id]])),
      section(t("s_target"), event.target ? objectFacts(event.target, "target-history") : null),
      section(t("s_related"), relatedList(event.related)),
      section(t("s_source"), facts([[t("service"), source.service], [t("instance"), source.instance],
        [t("sequence"), source.sequence], [t("scope"), source.scope]])),
      section(t("s_trace"), facts([[t("trace_id"), trace.trace_id], [t("span_id"), trace.span_id]])),
      section(t("s_other"), mapTable(event.attributes, "details")),
      raw,
    ]) {
      if (part) body.append(part);
    }
  }

  // -- export: GET /v1/export with the token, when its scope allows it ------------------------------

  function filename(response, format) {
    const match = /filename="([A-Za-z0-9._-]{1,200})"/.exec(response.headers.get("Content-Disposition") || "");
    return match ? match[1] : `otaudit-export.${format}`;
  }

  async function startExport(format, button) {
    const generation = ++state.exportGeneration;
    const label = FORMATS[format];
    const status = $("export-status");
    status.hidden = false;
    status.textContent = t("exporting", { format: label });
    button.disabled = true;
    try {
      const { response, token } = await call("/v1/export", [["format", format], ...queryParams(state.filters, FILTER_KEYS)]);
      if (!response.ok) {
        const err = await failure(response);
        err.token = token;
        throw err;
      }
      const blob = await response.blob();
      if (generation !== state.exportGeneration) return;
      const href = URL.createObjectURL(blob);
      const link = el("a", { attrs: { href, download: filename(response, format), hidden: "" } });
      document.body.append(link);
      link.click();
      link.remove();
      window.setTimeout(() => URL.revokeObjectURL(href), 60_000);
      status.textContent = t("exported", { format: label });
    } catch (err) {
      if (generation !== state.exportGeneration) return;
      status.textContent = "";
      if (err instanceof ApiError && err.status === 401) failed(err, status, null);
      else status.textContent = t("export_failed", { format: label, message: err.message });
    } finally {
      button.disabled = false;
    }
  }

  // -- wiring ------------------------------------------------------------------------------------

  // The page's elements are there and wired (start): what the token's answers show waits for it.
  let pageIsReady;
  const pageReady = new Promise((resolve) => {
    pageIsReady = resolve;
  });

  function start() {
    translatePage();
    buildHead();
    $("utc").checked = state.utc;
    retime();
    $("filters").addEventListener("submit", (e) => {
      e.preventDefault();
      applyFilters(readForm()); // without a token (expired): done with the next one
    });
    $("clear-filters").addEventListener("click", () => {
      applyFilters({ limit: $("f-limit").value || DEFAULT_LIMIT });
    });
    $("f-category").addEventListener("change", fillEventNames);
    $("load-more").addEventListener("click", () => {
      if (state.cursor && !state.loading) loadEvents(true);
    });
    $("utc").addEventListener("change", () => {
      const since = fromInput($("f-since").value);
      const until = fromInput($("f-until").value);
      state.utc = $("utc").checked;
      $("f-since").value = toInput(since);
      $("f-until").value = toInput(until);
      retime();
    });
    for (const button of document.querySelectorAll("#export button[data-format]")) {
      button.addEventListener("click", () => startExport(button.dataset.format, button));
    }
    $("detail-close").addEventListener("click", () => $("detail").close());
    $("detail").addEventListener("close", () => {
      const opener = state.detailOpener;
      state.detailOpener = null;
      if (opener && opener.isConnected) opener.focus();
    });
    if (!framed()) {
      $("waiting").textContent = t("not_framed");
      return;
    }
    if (!state.origins.length) {
      $("waiting").textContent = t("no_origins");
      return;
    }
    pageIsReady();
  }

  // At once, before the page's elements exist when this script runs in its head (the collector
  // inlines it there): the host is asked for the token, which is on its way while the page is built.
  function boot() {
    readSettings();
    if (framed() && state.origins.length) {
      window.addEventListener("message", onMessage);
      tell({ type: "otaudit:ready" });
    }
    if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
    else start();
  }

  boot();
})();
