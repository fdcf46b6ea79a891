// Keel console: one page over the service's own endpoints. No framework,
// no build step, no inline script (the page's Content-Security-Policy
// forbids it). Health comes from /status/history and /status/stream, which
// answer 200 whatever the status; everything else needs the admin token,
// which is asked for before any admin call and kept in sessionStorage.
"use strict";

const TOKEN_KEY = "keel.adminToken";
const ACTOR_KEY = "keel.actor";
const WINDOW_MS = 15 * 60 * 1000;
const MAX_LOGS = 1000;
const LEVELS = ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"];

// ---------- small DOM helpers ----------

const $ = (id) => document.getElementById(id);

/** An element with attributes and children (strings become text nodes). */
function h(tag, attrs, ...children) {
  const svg = ["svg", "rect", "polyline", "circle", "title", "g"].includes(tag);
  const el = svg ? document.createElementNS("http://www.w3.org/2000/svg", tag) : document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "text") el.textContent = value;
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function badge(status) {
  const s = ["OK", "WARN", "KO"].includes(status) ? status : "KO";
  return h("span", { class: `badge badge-${s}` }, s);
}

function fmtTime(iso) {
  if (!iso) return "never";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? String(iso) : d.toLocaleString();
}

function fmtDuration(seconds) {
  const s = Math.max(0, Math.floor(seconds || 0));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
}

function fmtNumber(value, digits = 1) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  return Number(value).toLocaleString(undefined, { maximumFractionDigits: digits });
}

// ---------- the admin token ----------

const token = {
  get: () => sessionStorage.getItem(TOKEN_KEY) || "",
  set(value) {
    sessionStorage.setItem(TOKEN_KEY, value);
    showTokenState();
  },
  forget() {
    sessionStorage.removeItem(TOKEN_KEY);
    showTokenState();
  },
};

function showTokenState() {
  const set = Boolean(token.get());
  $("token-state").textContent = set ? "Admin token: set for this tab" : "Admin token: not set";
  $("token-forget").hidden = !set;
}

/** A refused admin call: why, and how to fix it. */
class Refused extends Error {}

/**
 * Calls an endpoint; resolves with {status, data, headers}. Admin calls
 * carry the bearer token; 401/403 raise Refused with the service's reason.
 */
async function call(method, path, { body, headers = {}, admin = true } = {}) {
  const sent = { Accept: "application/json", ...headers };
  if (admin) sent.Authorization = `Bearer ${token.get()}`;
  if (body !== undefined) sent["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers: sent,
    body: body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body),
    cache: "no-store",
  });
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = text;
  }
  if (admin && (response.status === 401 || response.status === 403)) {
    throw new Refused(explainRefusal(response.status, data));
  }
  return { status: response.status, data, headers: response.headers };
}

function errorMessage(data, fallback) {
  return (data && data.error && data.error.message) || fallback;
}

function explainRefusal(status, data) {
  const reason = errorMessage(data, `HTTP ${status}`);
  if (status === 401) return `The service asked for the admin token (${reason}).`;
  if (/disabled/.test(reason)) {
    return `Admin endpoints are disabled on this service: start the api with KEEL_ADMIN_TOKEN (or --admin-token) to enable them. (${reason})`;
  }
  return `The service refused this token (${reason}). Enter the token the api was started with (KEEL_ADMIN_TOKEN or --admin-token).`;
}

// ---------- views and navigation ----------

const VIEWS = ["health", "settings", "logs", "instances"];
const ADMIN_VIEWS = new Set(["settings", "logs", "instances"]);
const started = new Set();
let current = "health";

function route() {
  const wanted = location.hash.replace(/^#/, "");
  current = VIEWS.includes(wanted) ? wanted : "health";
  for (const link of document.querySelectorAll("nav a")) {
    if (link.dataset.view === current) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  const needsToken = ADMIN_VIEWS.has(current) && !token.get();
  for (const name of VIEWS) $(`view-${name}`).hidden = name !== current || needsToken;
  $("token-panel").hidden = !needsToken;
  document.title = `${current[0].toUpperCase()}${current.slice(1)} · Keel console`;
  if (needsToken) {
    $("token-input").focus();
    return;
  }
  if (ADMIN_VIEWS.has(current)) startAdmin();
  if (current === "settings") {
    guard(loadSettings)().catch((err) => { $("settings-error").textContent = String(err.message || err); });
  }
}

/** Shows the token panel with the reason the last admin call failed. */
function askForToken(message) {
  token.forget();
  stopAdminStream();
  started.clear();
  $("token-error").textContent = message || "";
  route();
}

function guard(fn) {
  return async (...args) => {
    try {
      return await fn(...args);
    } catch (err) {
      if (err instanceof Refused) askForToken(err.message);
      else throw err;
    }
  };
}

// ---------- health ----------

const health = { view: null, history: {} };

function componentRows(group) {
  return Object.entries(group.components).map(([name, c]) =>
    h("tr", { "data-component": name },
      h("th", { scope: "row" }, name),
      h("td", {}, badge(c.status)),
      h("td", { class: "num" }, `${fmtNumber(c.latency_ms, 2)} ms`),
      h("td", {}, c.message || ""),
      h("td", { class: "num" }, c.last_check ? fmtTime(c.last_check) : "not yet"),
      h("td", { class: "num" }, fmtDuration(c.uptime_s)),
      h("td", { class: "num" }, fmtDuration(c.downtime_s))));
}

function renderHealth() {
  const view = health.view;
  if (!view) return;
  $("app-info").textContent = `${view.name} ${view.release} (${view.hash})`;
  $("overall").replaceChildren(
    h("span", {}, "Overall"), badge(view.status), h("span", { id: "overall-message" }, view.message || "all components healthy"));
  const groups = (view.groups || []).map((group) =>
    h("section", { class: "group", "data-group": group.name, "aria-label": `Group ${group.name}` },
      h("h2", {}, group.name, h("span", { class: "muted" }, `· ${group.mode}`), badge(group.status)),
      h("div", { class: "table-wrap" },
        h("table", {},
          h("thead", {}, h("tr", {},
            ...["Component", "Status", "Latency", "Message", "Last check", "Uptime", "Downtime"].map((t) => h("th", { scope: "col" }, t)))),
          h("tbody", {}, componentRows(group))))));
  $("groups").replaceChildren(...groups);
  renderHistory();
}

function statusOf(name) {
  for (const group of (health.view && health.view.groups) || []) {
    if (group.components[name]) return group.components[name].status;
  }
  return null;
}

/** A strip of the component's status over the span its history covers. */
function strip(name, changes) {
  const now = Date.now();
  const oldestFirst = [...changes].reverse();
  // From just before the oldest kept transition (or the last minute) to now.
  const first = oldestFirst.length ? Date.parse(oldestFirst[0].time) : now - 60000;
  const start = first - Math.max(1000, (now - first) * 0.02);
  const span = Math.max(1, now - start);
  const segments = [];
  let from = start;
  // Before a component's initial state (`from: null`) it was starting up.
  let status = oldestFirst.length ? oldestFirst[0].from || "start" : statusOf(name) || "KO";
  for (const change of oldestFirst) {
    const at = Date.parse(change.time);
    segments.push([from, at, status]);
    from = at;
    status = change.to;
  }
  segments.push([from, now, statusOf(name) || status]);
  return h("svg", { class: "strip", viewBox: "0 0 1000 10", preserveAspectRatio: "none", role: "img",
    "aria-label": `${name}: status over time, now ${statusOf(name) || status}` },
  ...segments.map(([a, b, s]) => h("rect", { class: `seg-${s}`, x: ((a - start) / span) * 1000, y: 0,
    width: Math.max(1, ((b - a) / span) * 1000), height: 10 }, h("title", {}, s === "start" ? "starting" : s))));
}

function renderHistory() {
  const names = new Set(Object.keys(health.history));
  for (const group of (health.view && health.view.groups) || []) Object.keys(group.components).forEach((n) => names.add(n));
  const blocks = [...names].sort().map((name) => {
    const changes = health.history[name] || [];
    return h("div", { class: "timeline", "data-component": name },
      h("h3", {}, name, statusOf(name) ? badge(statusOf(name)) : null),
      strip(name, changes),
      changes.length
        ? h("ol", { class: "transitions", "aria-label": `Transitions of ${name}, newest first` },
          changes.map((c) => h("li", {},
            h("time", { datetime: c.time }, fmtTime(c.time)),
            c.from === null ? h("span", { class: "muted" }, "started ") : [badge(c.from), " → "],
            badge(c.to), c.message ? ` ${c.message}` : "")))
        : h("p", { class: "muted" }, "No transition yet."));
  });
  $("history").replaceChildren(...blocks);
}

async function loadHistory() {
  const { status, data } = await call("GET", "/status/history", { admin: false });
  if (status === 200 && data && data.components) {
    for (const [name, changes] of Object.entries(data.components)) health.history[name] = changes;
    renderHistory();
  }
}

function startHealth() {
  loadHistory().catch(() => {});
  const source = new EventSource("/status/stream");
  source.addEventListener("open", () => {
    $("health-live").textContent = "Live: updates as checks run.";
    // Transitions missed while disconnected.
    loadHistory().catch(() => {});
  });
  source.addEventListener("error", () => {
    $("health-live").textContent = "Disconnected from the live feed; reconnecting…";
  });
  source.addEventListener("status", (event) => {
    health.view = JSON.parse(event.data);
    renderHealth();
  });
  source.addEventListener("change", (event) => {
    const change = JSON.parse(event.data);
    const list = health.history[change.component] || (health.history[change.component] = []);
    if (!list.some((c) => c.time === change.time && c.to === change.to)) list.unshift(change);
    if (list.length > 100) list.length = 100;
    renderHistory();
  });
}

// ---------- the admin event stream (logs and stats) ----------

let adminStream = null;

function stopAdminStream() {
  if (adminStream) adminStream.abort();
  adminStream = null;
}

/** Reads /api/v1/monitoring/stream with the bearer token (EventSource cannot send one). */
async function runAdminStream(handlers) {
  const controller = new AbortController();
  adminStream = controller;
  while (adminStream === controller) {
    try {
      const response = await fetch("/api/v1/monitoring/stream", {
        headers: { Accept: "text/event-stream", Authorization: `Bearer ${token.get()}` },
        signal: controller.signal,
        cache: "no-store",
      });
      if (response.status === 401 || response.status === 403) {
        const text = await response.text();
        let data = null;
        try { data = JSON.parse(text); } catch { /* not JSON */ }
        askForToken(explainRefusal(response.status, data));
        return;
      }
      if (!response.ok || !response.body) throw new Error(`HTTP ${response.status}`);
      handlers.state("live");
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value.replace(/\r\n?/g, "\n");
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          let name = "message";
          const data = [];
          for (const line of block.split("\n")) {
            if (line.startsWith("event:")) name = line.slice(6).trim();
            else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
          }
          if (data.length && handlers[name]) handlers[name](JSON.parse(data.join("\n")));
        }
      }
    } catch (err) {
      if (controller.signal.aborted) return;
    }
    handlers.state("reconnecting");
    await new Promise((resolve) => setTimeout(resolve, 2000));
  }
}

function startAdmin() {
  if (started.has("admin")) return;
  started.add("admin");
  guard(loadLogs)().catch(showLogError);
  guard(loadCapture)().catch(showLogError);
  guard(loadStats)().catch((err) => { $("instances-error").textContent = String(err.message || err); });
  runAdminStream({
    state: (s) => { logs.connection = s; showLogState(); },
    log: (record) => addLogs([record], true),
    stats: (doc) => addStats(doc),
  });
}

// ---------- logs ----------

const logs = { records: [], paused: false, held: 0, connection: "connecting" };

function showLogError(err) {
  $("log-error").textContent = String((err && err.message) || err);
}

function showLogState() {
  const parts = [logs.connection === "live" ? "Live" : logs.connection === "reconnecting" ? "Reconnecting…" : "Connecting…"];
  if (logs.paused) parts.push(`paused, ${logs.held} new record(s) held`);
  $("log-state").textContent = parts.join(" · ");
}

function logKey(r) {
  return `${r.time}|${r.process}|${r.instance}|${r.target}|${r.message}`;
}

function addLogs(records, live) {
  const known = new Set(logs.records.map(logKey));
  const fresh = records.filter((r) => !known.has(logKey(r)));
  logs.records = [...fresh, ...logs.records].sort((a, b) => Date.parse(b.time) - Date.parse(a.time)).slice(0, MAX_LOGS);
  if (logs.paused && live) {
    logs.held += fresh.length;
    showLogState();
    return;
  }
  renderLogs();
}

/** The record's fields as shown: `key=value` pairs. */
function fieldText(r) {
  return Object.entries(r.fields || {}).map(([k, v]) => `${k}=${v}`).join(" ");
}

function logFilter() {
  const min = LEVELS.indexOf($("log-level").value.toUpperCase());
  const process = $("log-process").value;
  const instance = $("log-instance").value.trim().toLowerCase();
  const text = $("log-text").value.trim().toLowerCase();
  return (r) =>
    LEVELS.indexOf(String(r.level).toUpperCase()) >= min &&
    (!process || r.process === process) &&
    (!instance || String(r.instance).toLowerCase().includes(instance)) &&
    (!text || `${r.message} ${r.target} ${fieldText(r)}`.toLowerCase().includes(text));
}

function renderLogs() {
  const keep = logFilter();
  const items = logs.records.filter(keep).slice(0, 500).map((r) => {
    const level = String(r.level).toUpperCase();
    const fields = fieldText(r);
    return h("li", { "data-level": level },
      h("time", { class: "meta", datetime: r.time }, fmtTime(r.time)), " ",
      h("span", { class: `lvl lvl-${level}` }, level), " ",
      h("span", { class: "meta" }, `${r.process}/${r.instance} ${r.target}`), " ",
      h("span", { class: "msg" }, r.message), fields ? h("span", { class: "meta" }, ` ${fields}`) : null);
  });
  $("log-list").replaceChildren(...(items.length ? items : [h("li", { class: "muted" }, "No record matches.")]));
  showLogState();
}

async function loadLogs() {
  const { status, data } = await call("GET", "/api/v1/monitoring/logs?limit=200");
  if (status !== 200) throw new Error(errorMessage(data, `cannot read the logs (HTTP ${status})`));
  addLogs(data.records || [], false);
}

async function loadCapture() {
  const { status, data } = await call("GET", "/api/v1/settings/monitoring");
  if (status === 200) $("log-capture").checked = Boolean(data.value && data.value.enable_monitoring);
}

async function toggleCapture() {
  const box = $("log-capture");
  const wanted = box.checked;
  const current = await call("GET", "/api/v1/settings/monitoring");
  if (current.status !== 200) throw new Error(errorMessage(current.data, "cannot read the monitoring document"));
  const value = { ...current.data.value, enable_monitoring: wanted };
  const saved = await call("PUT", "/api/v1/settings/monitoring", {
    body: value,
    headers: { "If-Match": `"${current.data.version}"`, "X-Actor": actor() },
  });
  if (saved.status !== 200) {
    box.checked = !wanted;
    throw new Error(errorMessage(saved.data, `cannot change capture (HTTP ${saved.status})`));
  }
  $("log-error").textContent = "";
  $("log-state").textContent = wanted ? "Capture on." : "Capture off: no new records will be kept.";
}

async function clearLogs() {
  if (!window.confirm("Delete every captured log record of api and worker?")) return;
  const { status, data } = await call("DELETE", "/api/v1/monitoring/logs");
  if (status !== 200) throw new Error(errorMessage(data, `cannot clear the logs (HTTP ${status})`));
  logs.records = [];
  logs.held = 0;
  renderLogs();
}

// ---------- settings ----------

const editor = { name: null, version: null, loaded: null, schema: null };

/**
 * Where `value` breaks `schema` (the JSON Schema subset the documents'
 * generated schemas use: type, properties, required, additionalProperties,
 * items, enum, const, bounds, $ref into $defs, anyOf/oneOf/allOf), as
 * "pointer: problem" lines. The service checks the whole schema again.
 */
function violations(schema, value, root = schema, pointer = "") {
  if (schema === true || schema === undefined || schema === null) return [];
  if (schema === false) return [`${pointer || "(document)"}: not allowed here`];
  const at = pointer || "(document)";
  if (typeof schema.$ref === "string" && schema.$ref.startsWith("#/")) {
    const target = schema.$ref.slice(2).split("/").reduce((node, key) => (node ? node[key.replace(/~1/g, "/").replace(/~0/g, "~")] : undefined), root);
    return violations(target, value, root, pointer);
  }
  const kind = value === null ? "null" : Array.isArray(value) ? "array" : Number.isInteger(value) ? "integer" : typeof value;
  const types = schema.type === undefined ? null : [].concat(schema.type);
  if (types && !types.some((t) => t === kind || (t === "number" && kind === "integer"))) {
    return [`${at}: expected ${types.join(" or ")}, got ${kind}`];
  }
  const out = [];
  if (schema.enum && !schema.enum.some((v) => JSON.stringify(v) === JSON.stringify(value))) out.push(`${at}: must be one of ${schema.enum.map((v) => JSON.stringify(v)).join(", ")}`);
  if ("const" in schema && JSON.stringify(schema.const) !== JSON.stringify(value)) out.push(`${at}: must be ${JSON.stringify(schema.const)}`);
  if (typeof value === "number") {
    if (schema.minimum !== undefined && value < schema.minimum) out.push(`${at}: must be at least ${schema.minimum}`);
    if (schema.maximum !== undefined && value > schema.maximum) out.push(`${at}: must be at most ${schema.maximum}`);
  }
  if (typeof value === "string") {
    if (schema.minLength !== undefined && [...value].length < schema.minLength) out.push(`${at}: shorter than ${schema.minLength}`);
    if (schema.maxLength !== undefined && [...value].length > schema.maxLength) out.push(`${at}: longer than ${schema.maxLength}`);
  }
  if (kind === "object") {
    for (const key of schema.required || []) if (!(key in value)) out.push(`${at}: "${key}" is required`);
    const known = schema.properties || {};
    for (const [key, item] of Object.entries(value)) {
      const child = `${pointer}/${key.replace(/~/g, "~0").replace(/\//g, "~1")}`;
      if (key in known) out.push(...violations(known[key], item, root, child));
      else if (schema.additionalProperties === false) out.push(`${child}: not a field of this document`);
      else if (typeof schema.additionalProperties === "object") out.push(...violations(schema.additionalProperties, item, root, child));
    }
  }
  if (kind === "array" && schema.items !== undefined) value.forEach((item, i) => out.push(...violations(schema.items, item, root, `${pointer}/${i}`)));
  for (const branch of schema.allOf || []) out.push(...violations(branch, value, root, pointer));
  const alternatives = schema.anyOf || schema.oneOf;
  if (alternatives && !alternatives.some((branch) => violations(branch, value, root, pointer).length === 0)) out.push(`${at}: matches none of the allowed shapes`);
  return out;
}

function actor() {
  return ($("settings-actor").value || "").trim() || "console";
}

async function loadSettings() {
  const { status, data } = await call("GET", "/api/v1/settings");
  if (status !== 200) throw new Error(errorMessage(data, `cannot list settings (HTTP ${status})`));
  const rows = (data.settings || []).map((doc) =>
    h("tr", { "data-document": doc.name },
      h("th", { scope: "row" }, doc.name),
      h("td", { class: "num" }, String(doc.version)),
      h("td", { class: "num" }, doc.updated_at ? fmtTime(doc.updated_at) : "never"),
      h("td", {}, (doc.updated_by || "–") + (doc.revert_at ? ` · timed, reverts at ${fmtTime(doc.revert_at)}` : "")),
      h("td", {}, h("button", { type: "button", "aria-label": `Edit ${doc.name}`, onclick: () => guard(openEditor)(doc.name) }, "Edit"))));
  $("settings-table").tBodies[0].replaceChildren(...rows);
}

async function openEditor(name) {
  const { status, data } = await call("GET", `/api/v1/settings/${encodeURIComponent(name)}`);
  if (status !== 200) throw new Error(errorMessage(data, `cannot read ${name}`));
  editor.name = name;
  editor.version = data.version;
  editor.loaded = data.value;
  const schema = await call("GET", `/api/v1/settings/${encodeURIComponent(name)}/schema`);
  // Without the schema the service still checks every write.
  editor.schema = schema.status === 200 ? schema.data : null;
  $("settings-editor-panel").hidden = false;
  $("editor-title").textContent = `Edit ${name}`;
  $("editor-version").textContent = `Version ${data.version}, updated ${data.updated_at ? fmtTime(data.updated_at) : "never"} by ${data.updated_by || "–"}.`;
  $("settings-editor").value = JSON.stringify(data.value, null, 2);
  $("settings-error").textContent = "";
  $("settings-saved").textContent = "";
  $("settings-conflict").hidden = true;
  showTimer(data.revert_at);
  await loadSettingsHistory(name);
  $("settings-editor").focus();
}

function parsedEditor() {
  let value;
  try {
    value = JSON.parse($("settings-editor").value);
  } catch (err) {
    return { error: `Not valid JSON: ${err.message}` };
  }
  const problems = editor.schema ? violations(editor.schema, value) : [];
  if (problems.length) return { error: `Not a valid ${editor.name} document (its schema): ${problems.join("; ")}` };
  return { value };
}

async function saveSettings(overwrite) {
  const parsed = parsedEditor();
  $("settings-saved").textContent = "";
  if (parsed.error) {
    $("settings-error").textContent = parsed.error;
    return;
  }
  const name = editor.name;
  let version = editor.version;
  if (overwrite) {
    const latest = await call("GET", `/api/v1/settings/${encodeURIComponent(name)}`);
    version = latest.data.version;
  }
  const after = $("settings-revert-after").value;
  const query = after ? `?revert_after=${encodeURIComponent(after)}` : "";
  const { status, data } = await call("PUT", `/api/v1/settings/${encodeURIComponent(name)}${query}`, {
    body: parsed.value,
    headers: { "If-Match": `"${version}"`, "X-Actor": actor() },
  });
  await showSaved(name, status, data, "Saved");
}

/** Restores version `from` of the open document as its next version. */
async function revertSettings(from) {
  const name = editor.name;
  $("settings-saved").textContent = "";
  const { status, data } = await call("POST", `/api/v1/settings/${encodeURIComponent(name)}/revert`, {
    body: { version: from },
    headers: { "If-Match": `"${editor.version}"`, "X-Actor": actor() },
  });
  if (status === 200) {
    $("settings-editor").value = JSON.stringify(data.value, null, 2);
    $("settings-save").disabled = false;
  }
  await showSaved(name, status, data, `Reverted to version ${from}`);
}

let timerTick = null;

/** The countdown of a timed value (`revert_at`, RFC 3339), or nothing. */
function showTimer(revertAt) {
  clearInterval(timerTick);
  const line = $("settings-timer");
  if (!revertAt) {
    line.hidden = true;
    line.textContent = "";
    return;
  }
  const at = Date.parse(revertAt);
  const render = () => {
    const left = Math.max(0, Math.ceil((at - Date.now()) / 1000));
    const clock = [Math.floor(left / 3600), Math.floor(left / 60) % 60, left % 60].map((n) => String(n).padStart(2, "0")).join(":");
    line.textContent = left > 0
      ? `Timed value: returns to the value before in ${clock} (at ${fmtTime(revertAt)}); saving again cancels it.`
      : "Timed value: due now; the service is reverting it.";
  };
  render();
  line.hidden = false;
  timerTick = setInterval(render, 1000);
}

/** The editor after a save or a revert answered `status`. */
async function showSaved(name, status, data, done) {
  if (status === 200) {
    editor.version = data.version;
    editor.loaded = data.value;
    $("settings-error").textContent = "";
    $("settings-conflict").hidden = true;
    $("settings-saved").textContent = `${done}: ${name} is at version ${data.version}.`;
    $("editor-version").textContent = `Version ${data.version}, updated ${fmtTime(data.updated_at)} by ${data.updated_by}.`;
    $("settings-revert-after").value = "";
    showTimer(data.revert_at);
    await Promise.all([loadSettings(), loadSettingsHistory(name)]);
    return;
  }
  if (status === 412) {
    const latest = await call("GET", `/api/v1/settings/${encodeURIComponent(name)}`);
    const by = (latest.data && latest.data.updated_by) || "someone";
    const at = latest.data && latest.data.updated_at ? fmtTime(latest.data.updated_at) : "an unknown time";
    $("settings-conflict-text").textContent =
      `${name} was changed by ${by} at ${at} (now version ${latest.data && latest.data.version}) — reload or overwrite.`;
    $("settings-conflict").hidden = false;
    $("settings-error").textContent = "";
    return;
  }
  $("settings-error").textContent = errorMessage(data, `Not saved (HTTP ${status}).`);
}

/** Lines `path: old → new` for every leaf that differs. */
function diff(before, after, path = "", out = []) {
  const isObject = (v) => v !== null && typeof v === "object" && !Array.isArray(v);
  if (isObject(before) && isObject(after)) {
    for (const key of [...new Set([...Object.keys(before), ...Object.keys(after)])].sort()) {
      diff(before[key], after[key], path ? `${path}.${key}` : key, out);
    }
  } else if (JSON.stringify(before) !== JSON.stringify(after)) {
    out.push([path || "(document)", before, after]);
  }
  return out;
}

async function loadSettingsHistory(name) {
  const { status, data } = await call("GET", `/api/v1/settings/${encodeURIComponent(name)}/history`);
  if (status !== 200) return;
  const items = (data.changes || []).map((change) => {
    // The first write has no stored document before it (the service served
    // the built-in default): every field shows as new.
    const first = change.old === null;
    const lines = diff(first ? {} : change.old, change.new).map(([path, before, after]) =>
      h("li", {}, `${path}: `,
        before === undefined ? h("span", { class: "muted" }, "(absent)") : h("del", {}, JSON.stringify(before)),
        " → ",
        after === undefined ? h("span", { class: "muted" }, "(removed)") : h("ins", {}, JSON.stringify(after))));
    const current = change.version === editor.version;
    return h("li", { "data-version": change.version },
      h("strong", {}, `Version ${change.version}`), ` by ${change.actor}, ${fmtTime(change.time)}`,
      change.reverted_from ? h("span", { class: "muted" }, ` (reverted to version ${change.reverted_from})`) : null,
      first ? h("span", { class: "muted" }, " (first stored version; before it, the built-in default)") : null,
      current ? null : h("button", {
        type: "button",
        class: "revert",
        "aria-label": `Revert ${name} to version ${change.version}`,
        onclick: () => guard(revertSettings)(change.version).catch((e) => { $("settings-error").textContent = String(e.message || e); }),
      }, "Revert to this version"),
      h("ul", { class: "diff" }, lines.length ? lines : [h("li", { class: "muted" }, "no change in value")]));
  });
  $("settings-history").replaceChildren(...(items.length ? items : [h("li", { class: "muted" }, "No change recorded yet.")]));
}

// ---------- instances ----------

const instances = new Map();

const SERIES = [
  ["rps", "Requests/s", (v) => fmtNumber(v, 1)],
  ["errors", "Error ratio", (v) => (v === null ? "–" : `${fmtNumber(v * 100, 2)} %`)],
  ["p95", "p95 latency", (v) => `${fmtNumber(v, 2)} ms`],
  ["rss", "RSS", (v) => `${fmtNumber(v, 1)} MiB`],
  ["cpu", "CPU", (v) => `${fmtNumber(v, 1)} %`],
  ["tasks", "Tokio tasks", (v) => fmtNumber(v, 0)],
  ["batcherDepth", "Batcher depth", (v) => fmtNumber(v, 0)],
  ["batcherDrops", "Batcher drops", (v) => fmtNumber(v, 0)],
  ["wbDepth", "Write-behind depth", (v) => fmtNumber(v, 0)],
  ["deadLetters", "Dead letters", (v) => fmtNumber(v, 0)],
  ["logBytes", "Local log", (v) => (v === null ? "–" : `${fmtNumber(v / 1048576, 2)} MiB`)],
];

function totals(doc) {
  let requests = 0;
  let errors = 0;
  let p95 = null;
  for (const route of Object.values(doc.http || {})) {
    requests += route.since_start.requests;
    errors += route.since_start.errors;
    if (route.last_minute.requests > 0) p95 = Math.max(p95 || 0, route.last_minute.p95_ms);
  }
  return { requests, errors, p95 };
}

function addStats(doc) {
  const key = `${doc.process}/${doc.instance}`;
  const entry = instances.get(key) || { doc, samples: [], last: null };
  const at = Date.parse(doc.updated_at) || Date.now();
  if (entry.last && entry.last.at >= at) return;
  const t = totals(doc);
  const previous = entry.last;
  const seconds = previous ? (at - previous.at) / 1000 : 0;
  const dRequests = previous ? Math.max(0, t.requests - previous.requests) : 0;
  const dErrors = previous ? Math.max(0, t.errors - previous.errors) : 0;
  const batcher = doc.batcher || {};
  const wb = doc.write_behind || {};
  entry.samples.push({
    at,
    rps: previous && seconds > 0 ? dRequests / seconds : null,
    errors: previous ? (dRequests > 0 ? dErrors / dRequests : 0) : null,
    p95: t.p95,
    rss: doc.rss_bytes === null || doc.rss_bytes === undefined ? null : doc.rss_bytes / 1048576,
    cpu: doc.cpu_percent,
    tasks: doc.tokio ? doc.tokio.alive_tasks : null,
    batcherDepth: batcher.queue_depth ?? null,
    batcherDrops: batcher.dropped ?? null,
    wbDepth: wb.queue_depth ?? null,
    deadLetters: wb.failed ?? null,
    logBytes: wb.local_log ? wb.local_log.bytes : null,
  });
  entry.samples = entry.samples.filter((s) => s.at >= at - WINDOW_MS);
  entry.last = { at, requests: t.requests, errors: t.errors };
  entry.doc = doc;
  instances.set(key, entry);
  renderInstances();
}

function sparkline(label, samples, field) {
  const points = samples.filter((s) => s[field] !== null && s[field] !== undefined && !Number.isNaN(s[field]));
  const width = 110;
  const height = 26;
  // The last 15 minutes, or less while the page has seen less.
  const end = samples.length ? samples[samples.length - 1].at : Date.now();
  const start = Math.max(end - WINDOW_MS, points.length ? points[0].at : end);
  const span = Math.max(1, end - start);
  const max = Math.max(...points.map((p) => p[field]), 0) || 1;
  const xy = points.map((p) => [((p.at - start) / span) * (width - 4) + 2, height - 2 - (p[field] / max) * (height - 4)]);
  const last = xy[xy.length - 1];
  return h("svg", { class: "spark", viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-label": `${label} over the last 15 minutes, ${points.length} point(s)` },
  xy.length > 1 ? h("polyline", { points: xy.map(([x, y]) => `${x.toFixed(1)},${y.toFixed(1)}`).join(" ") }) : null,
  last ? h("circle", { cx: last[0].toFixed(1), cy: last[1].toFixed(1), r: 2 }) : null);
}

function renderInstances() {
  const cards = [...instances.entries()].sort(([a], [b]) => a.localeCompare(b)).map(([key, entry]) => {
    const doc = entry.doc;
    const latest = entry.samples[entry.samples.length - 1] || {};
    const age = (Date.now() - Date.parse(doc.updated_at)) / 1000;
    return h("article", { class: "card", "data-instance": key, "aria-label": `Instance ${key}` },
      h("h2", {}, `${doc.process} · ${doc.instance}`),
      h("p", { class: "muted" }, `up ${fmtDuration(doc.uptime_s)}, report ${fmtTime(doc.updated_at)}`,
        age > 30 ? h("span", { class: "stale" }, " (stale)") : null),
      h("dl", {}, ...SERIES.flatMap(([field, label, show]) => [
        h("dt", {}, label),
        h("dd", {}, show(latest[field] ?? null)),
        h("dd", {}, sparkline(label, entry.samples, field)),
      ])));
  });
  $("instances").replaceChildren(...(cards.length ? cards : [h("p", { class: "muted" }, "No instance has reported yet.")]));
}

async function loadStats() {
  const { status, data } = await call("GET", "/api/v1/monitoring/stats");
  if (status !== 200) throw new Error(errorMessage(data, `cannot read stats (HTTP ${status})`));
  for (const doc of data.instances || []) addStats(doc);
  renderInstances();
}

// ---------- wiring ----------

function wire() {
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const value = $("token-input").value.trim();
    if (!value) return;
    token.set(value);
    $("token-input").value = "";
    $("token-error").textContent = "";
    route();
  });
  $("token-forget").addEventListener("click", () => askForToken(""));
  $("settings-actor").value = sessionStorage.getItem(ACTOR_KEY) || "console";
  $("settings-actor").addEventListener("change", () => sessionStorage.setItem(ACTOR_KEY, actor()));
  $("settings-editor").addEventListener("input", () => {
    const parsed = parsedEditor();
    $("settings-error").textContent = parsed.error || "";
    $("settings-save").disabled = Boolean(parsed.error);
  });
  $("settings-save").addEventListener("click", () => guard(saveSettings)(false).catch((e) => { $("settings-error").textContent = String(e.message || e); }));
  $("settings-overwrite").addEventListener("click", () => guard(saveSettings)(true).catch((e) => { $("settings-error").textContent = String(e.message || e); }));
  $("settings-reload").addEventListener("click", () => guard(openEditor)(editor.name));
  $("settings-cancel").addEventListener("click", () => { $("settings-editor-panel").hidden = true; });
  for (const id of ["log-level", "log-process", "log-instance", "log-text"]) $(id).addEventListener("input", renderLogs);
  $("log-filters").addEventListener("submit", (event) => event.preventDefault());
  $("log-pause").addEventListener("click", () => {
    logs.paused = !logs.paused;
    $("log-pause").setAttribute("aria-pressed", String(logs.paused));
    $("log-pause").textContent = logs.paused ? "Resume" : "Pause";
    if (!logs.paused) {
      logs.held = 0;
      renderLogs();
    }
    showLogState();
  });
  $("log-clear").addEventListener("click", () => guard(clearLogs)().catch(showLogError));
  $("log-capture").addEventListener("change", () => guard(toggleCapture)().catch(showLogError));
  window.addEventListener("hashchange", route);
  // Ages and "stale" marks move with the clock.
  setInterval(() => { if (current === "instances") renderInstances(); }, 5000);
}

document.addEventListener("DOMContentLoaded", () => {
  wire();
  showTokenState();
  startHealth();
  route();
});
