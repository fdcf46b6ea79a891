// Browser scenarios of the operator console, run by `cargo xtask console`
// (and so by `cargo xtask ci`): a real embedded `api`, Debian's chromium
// driven headless by playwright-core, axe-core for accessibility.
//
// usage: node scenarios.mjs --api PATH --out DIR --modules DIR
//
// The script owns a TCP port that the api's `port` health check probes, so
// it can close it and watch the page follow. Every failed expectation throws;
// the exit code is non-zero on any failure. Screenshots of every view at
// 1280 and 390 px go to DIR.

import { spawn } from "node:child_process";
import { createRequire } from "node:module";
import fs from "node:fs";
import net from "node:net";
import path from "node:path";

const args = Object.fromEntries(
  process.argv.slice(2).reduce((pairs, arg, i, all) => (arg.startsWith("--") ? [...pairs, [arg.slice(2), all[i + 1]]] : pairs), []),
);
for (const key of ["api", "out", "modules"]) if (!args[key]) throw new Error(`missing --${key}`);
const require = createRequire(path.join(path.resolve(args.modules), "node_modules", "x.js"));
const { chromium } = require("playwright-core");
const axeSource = fs.readFileSync(require.resolve("axe-core/axe.min.js"), "utf8");

const TOKEN = "console-scenario-token";
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const out = path.resolve(args.out);
fs.rmSync(out, { recursive: true, force: true });
fs.mkdirSync(out, { recursive: true });

const step = (text) => console.log(`console: ${text}`);
function expect(condition, message) {
  if (!condition) throw new Error(`expectation failed: ${message}`);
}

// ---------- the probed port and the api ----------

const sockets = new Set();
const probed = net.createServer((socket) => {
  sockets.add(socket);
  socket.on("close", () => sockets.delete(socket));
  socket.end();
});
await new Promise((resolve) => probed.listen(0, "127.0.0.1", resolve));
const probedPort = probed.address().port;

async function freePort() {
  const server = net.createServer();
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

const apiPort = await freePort();
const base = `http://127.0.0.1:${apiPort}`;
const config = path.join(out, "keel.toml");
fs.writeFileSync(config, `# Written by xtask/console/scenarios.mjs.
[[health.groups]]
name = "edge"
mode = "should"
components = ["port"]

[[health.checks]]
name = "port"
kind = "tcp"
target = "127.0.0.1:${probedPort}"
interval = "500ms"
timeout = "400ms"

[monitoring]
stats_interval = "1s"
`);
const apiLog = fs.openSync(path.join(out, "api.log"), "w");
const api = spawn(path.resolve(args.api), ["--listen", `127.0.0.1:${apiPort}`], {
  env: { ...process.env, KEEL_ADMIN_TOKEN: TOKEN, KEEL_DATA_DIR: path.join(out, "data"), KEEL_CONFIG: config },
  stdio: ["ignore", apiLog, apiLog],
});
let apiExited = null;
api.on("exit", (code, signal) => { apiExited = `exit ${code ?? signal}`; });

async function waitFor(what, probe, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      const value = await probe();
      if (value) return value;
    } catch { /* not yet */ }
    if (apiExited) throw new Error(`the api stopped (${apiExited}) while waiting for ${what}; see ${out}/api.log`);
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

async function admin(method, url, body, headers = {}) {
  const response = await fetch(base + url, {
    method,
    headers: { Authorization: `Bearer ${TOKEN}`, "Content-Type": "application/json", ...headers },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return { status: response.status, data: await response.json() };
}

let browser;
try {
  await waitFor("the api to be ready", async () => (await fetch(`${base}/readyz`)).status === 200, 30000);
  step(`api on ${base}, health check probing 127.0.0.1:${probedPort}`);

  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
      "--no-first-run", "--disable-quic", "--disable-sync"],
  });
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();

  // Every console error and page error fails the run, except the 412 and
  // 422 answers the settings scenario provokes on purpose (Chromium logs
  // each 4xx as "Failed to load resource").
  const errors = [];
  const expectedStatuses = new Set();
  page.on("console", (message) => {
    if (message.type() !== "error") return;
    const text = message.text();
    const status = /status of (\d{3})/.exec(text);
    if (status && expectedStatuses.has(status[1])) return;
    errors.push(text);
  });
  page.on("pageerror", (err) => errors.push(`page error: ${err.message}`));

  async function axe(view) {
    await page.evaluate(axeSource);
    const result = await page.evaluate(async () => {
      const run = await window.axe.run(document, { resultTypes: ["violations"] });
      return run.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.length }));
    });
    const serious = result.filter((v) => v.impact === "serious" || v.impact === "critical");
    const minor = result.filter((v) => !serious.includes(v));
    if (minor.length) step(`axe (${view}): minor: ${minor.map((v) => `${v.id} (${v.impact})`).join(", ")}`);
    expect(serious.length === 0, `axe-core found serious violations on ${view}: ${JSON.stringify(serious)}`);
    step(`axe (${view}): no serious or critical violation`);
  }

  async function shoot(view) {
    for (const width of [1280, 390]) {
      await page.setViewportSize({ width, height: width === 1280 ? 900 : 844 });
      await page.waitForTimeout(150);
      const scroll = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
      expect(scroll <= 1, `${view} at ${width} px scrolls sideways by ${scroll} px`);
      await page.screenshot({ path: path.join(out, `${view}-${width}.png`), fullPage: true });
    }
    await page.setViewportSize({ width: 1280, height: 900 });
  }

  // 1. The page loads with every component shown.
  const response = await page.goto(`${base}/`);
  expect(response.status() === 200, `GET / answered ${response.status()}`);
  const csp = response.headers()["content-security-policy"] || "";
  expect(/script-src 'self'/.test(csp) && !/unsafe-inline/.test(csp), `CSP forbids inline scripts: ${csp}`);
  expect(response.headers()["x-content-type-options"] === "nosniff", "X-Content-Type-Options: nosniff");
  expect(Boolean(response.headers()["referrer-policy"]), "Referrer-Policy is set");
  const status = await (await fetch(`${base}/status`)).json();
  const names = Object.keys(status.components);
  expect(names.includes("port"), `the api has the port component: ${names}`);
  for (const name of names) {
    await page.locator(`#groups tr[data-component="${name}"]`).waitFor({ timeout: 5000 });
  }
  await page.locator('#groups tr[data-component="port"] .badge', { hasText: /^OK$/ }).waitFor({ timeout: 5000 });
  step(`health view shows all ${names.length} components (${names.join(", ")}); port is OK`);
  await axe("health");
  await shoot("health");

  // 2. The port closes: the component turns KO on the page within 3 s and
  // the history shows the transition, without a reload.
  const navigations = [];
  page.on("framenavigated", (frame) => { if (frame === page.mainFrame()) navigations.push(frame.url()); });
  const closedAt = Date.now();
  probed.close();
  for (const socket of sockets) socket.destroy();
  await page.locator('#groups tr[data-component="port"] .badge', { hasText: /^KO$/ }).waitFor({ timeout: 3000 });
  const tookMs = Date.now() - closedAt;
  await page.locator('#history .timeline[data-component="port"] .transitions li', { hasText: "KO" }).first().waitFor({ timeout: 1000 });
  const transition = await page.locator('#history .timeline[data-component="port"] .transitions li').first().innerText();
  expect(/→/.test(transition) && /KO/.test(transition), `the newest transition reads ${transition}`);
  expect(navigations.length === 0, `the page did not reload: ${navigations}`);
  step(`port closed: KO on the page after ${tookMs} ms; history: "${transition.replace(/\s+/g, " ")}"`);

  // 3. Settings: the token is asked for first, then log_level=debug through
  // the editor; the history shows the diff; a stale second edit shows 412.
  await page.click('nav a[data-view="settings"]');
  await page.locator("#token-panel").waitFor({ state: "visible" });
  await axe("token");
  await shoot("token");
  await page.fill("#token-input", TOKEN);
  await page.press("#token-input", "Enter");
  const stored = await page.evaluate(() => sessionStorage.getItem("keel.adminToken"));
  expect(stored === TOKEN, "the token is kept in sessionStorage");
  expect(!(await context.cookies()).length, "no cookie is set");
  await page.locator('#settings-table tr[data-document="monitoring"]').waitFor();
  await page.click('button[aria-label="Edit monitoring"]');
  await page.locator("#settings-editor-panel").waitFor({ state: "visible" });
  const original = JSON.parse(await page.inputValue("#settings-editor"));
  await page.fill("#settings-editor", JSON.stringify({ ...original, log_level: "debug" }, null, 2));
  await page.click("#settings-save");
  await page.locator("#settings-saved", { hasText: "Saved" }).waitFor({ timeout: 5000 });
  const stored_doc = await (await fetch(`${base}/api/v1/settings/monitoring`)).json();
  expect(stored_doc.value.log_level === "debug", `the service has log_level=debug: ${JSON.stringify(stored_doc.value)}`);
  await page.locator("#settings-history li", { hasText: "log_level" }).first().waitFor();
  const diffText = await page.locator("#settings-history > li").first().innerText();
  expect(/log_level: .*"debug"/.test(diffText), `the newest change shows log_level → "debug": ${diffText}`);
  expect(await page.locator("#settings-history > li").first().locator("ins", { hasText: '"debug"' }).count() === 1, "debug is marked inserted");
  step(`settings saved through the editor; history: ${diffText.replace(/\s+/g, " ")}`);
  await axe("settings");
  await shoot("settings");

  // Someone else changes the document behind the page's back.
  const behind = await admin("PUT", "/api/v1/settings/monitoring", { ...stored_doc.value, log_level: "info" },
    { "If-Match": `"${stored_doc.version}"`, "X-Actor": "ops-alice" });
  expect(behind.status === 200, `the concurrent change was saved: ${behind.status}`);
  expectedStatuses.add("412");
  await page.fill("#settings-editor", JSON.stringify({ ...original, log_level: "warn" }, null, 2));
  await page.click("#settings-save");
  await page.locator("#settings-conflict").waitFor({ state: "visible", timeout: 5000 });
  const conflict = await page.innerText("#settings-conflict-text");
  expect(/changed by ops-alice at/.test(conflict) && /reload or overwrite/.test(conflict), `412 message: ${conflict}`);
  step(`stale edit: "${conflict}"`);
  await shoot("settings-conflict");
  // Reload: the editor and the history show ops-alice's change, as a diff.
  await page.click("#settings-reload");
  await page.locator("#settings-history > li", { hasText: "ops-alice" }).first().waitFor({ timeout: 5000 });
  const alice = page.locator("#settings-history > li").first();
  expect(/ops-alice/.test(await alice.innerText()), "the newest change is ops-alice's");
  expect(await alice.locator("del", { hasText: '"debug"' }).count() === 1 && await alice.locator("ins", { hasText: '"info"' }).count() === 1,
    `ops-alice's change reads log_level: "debug" → "info": ${await alice.innerText()}`);
  expect(JSON.parse(await page.inputValue("#settings-editor")).log_level === "info", "reload shows the current document");
  step(`history diff: ${(await alice.innerText()).replace(/\s+/g, " ")}`);
  // An invalid document: the service's 422 message, inline.
  expectedStatuses.add("422");
  await page.fill("#settings-editor", JSON.stringify({ ...original, log_level: "loud" }, null, 2));
  await page.click("#settings-save");
  await page.locator("#settings-error", { hasText: "not a valid" }).waitFor({ timeout: 5000 });
  step(`invalid document: "${await page.innerText("#settings-error")}"`);
  await page.fill("#settings-editor", "{ not json");
  expect(/Not valid JSON/.test(await page.innerText("#settings-error")) && (await page.isDisabled("#settings-save")),
    "bad JSON is refused in the page before any request");
  // The document's JSON Schema is checked in the page too: each violation
  // by its JSON Pointer, and nothing is sent.
  await page.fill("#settings-editor", JSON.stringify({ ...original, enable_monitoring: "yes", extra: 1 }, null, 2));
  const schemaError = await page.innerText("#settings-error");
  expect(/\/enable_monitoring: expected boolean/.test(schemaError) && /\/extra: not a field/.test(schemaError) && (await page.isDisabled("#settings-save")),
    `a schema violation is refused in the page, by pointer: ${schemaError}`);
  step(`schema check in the page: "${schemaError}"`);
  // Revert: the debug version comes back as a new version, marked as such.
  await page.click(`button[aria-label="Revert monitoring to version ${stored_doc.version}"]`);
  await page.locator("#settings-saved", { hasText: `Reverted to version ${stored_doc.version}` }).waitFor({ timeout: 5000 });
  const reverted = await (await fetch(`${base}/api/v1/settings/monitoring`)).json();
  expect(reverted.value.log_level === "debug" && reverted.version === stored_doc.version + 2,
    `the revert wrote version ${stored_doc.version + 2} with log_level=debug: ${JSON.stringify(reverted)}`);
  await page.locator("#settings-history > li", { hasText: `reverted to version ${stored_doc.version}` }).first().waitFor({ timeout: 5000 });
  expect(JSON.parse(await page.inputValue("#settings-editor")).log_level === "debug", "the editor shows the restored document");
  step(`revert: ${(await page.locator("#settings-history > li").first().innerText()).replace(/\s+/g, " ")}`);
  // A timed value: the editor counts down to its revert; saving again
  // without a time cancels it.
  await page.selectOption("#settings-revert-after", "15m");
  await page.fill("#settings-editor", JSON.stringify({ ...original, log_level: "debug" }, null, 2));
  await page.click("#settings-save");
  await page.locator("#settings-timer", { hasText: "returns to the value before in 00:1" }).waitFor({ timeout: 5000 });
  const timed = await (await fetch(`${base}/api/v1/settings/monitoring`)).json();
  expect(typeof timed.revert_at === "string", `the service holds the timed value's time: ${JSON.stringify(timed)}`);
  step(`timed value: "${await page.innerText("#settings-timer")}"`);
  await shoot("settings-timed");
  await page.click("#settings-save");
  await page.locator("#settings-saved", { hasText: `version ${timed.version + 1}` }).waitFor({ timeout: 5000 });
  expect(await page.isHidden("#settings-timer"), "a plain save cancels the countdown");

  // 4. Logs: the tail is open; the port opens again, and the api's record
  // of the component rising reaches the tail live.
  await page.click('nav a[data-view="logs"]');
  await page.locator("#log-list li[data-level]").first().waitFor({ timeout: 10000 });
  await page.locator("#log-state", { hasText: "Live" }).waitFor({ timeout: 10000 });
  const rose = page.locator("#log-list li[data-level]", { hasText: "health status rose" }).filter({ hasText: "component=port" });
  const before = await rose.count();
  const reopened = net.createServer((socket) => socket.end());
  await new Promise((resolve) => reopened.listen(probedPort, "127.0.0.1", resolve));
  await page.waitForFunction(
    (n) => [...document.querySelectorAll("#log-list li[data-level]")]
      .filter((li) => li.textContent.includes("health status rose") && li.textContent.includes("component=port")).length > n,
    before, { timeout: 10000 });
  reopened.close();
  step(`log tail, live: ${(await rose.first().innerText()).replace(/\s+/g, " ")}`);
  await page.fill("#log-text", "component=port");
  const shown = await page.locator("#log-list li[data-level]").allInnerTexts();
  expect(shown.length > 0 && shown.every((t) => t.includes("component=port")), `the text filter keeps only matches: ${shown.length}`);
  await page.fill("#log-text", "");
  await page.click("#log-pause");
  expect(await page.getAttribute("#log-pause", "aria-pressed") === "true", "pause is pressed");
  await page.click("#log-pause");
  expect(await page.isChecked("#log-capture"), "capture reflects enable_monitoring=true");
  step(`log tail: ${await page.locator("#log-list li[data-level]").count()} record(s), newest: ${(await page.locator("#log-list li[data-level]").first().innerText()).slice(0, 120)}`);
  await axe("logs");
  await shoot("logs");

  // 5. Instances: a card per live instance with at least one sparkline point.
  await page.click('nav a[data-view="instances"]');
  await page.locator('.card[data-instance^="api/"] svg.spark circle').first().waitFor({ timeout: 10000 });
  await page.locator('.card[data-instance^="api/"] svg.spark polyline').first().waitFor({ timeout: 10000 });
  const cards = await page.locator(".card").count();
  // The embedded api's entries queue is a local write-ahead log: its size is on the card.
  const logSize = await page.locator('.card[data-instance^="api/"] dt:text-is("Local log") + dd').first().textContent();
  if (!/MiB$/.test(logSize || "")) throw new Error(`the instance card shows no local log size: ${logSize}`);
  step(`instances: ${cards} card(s), sparklines drawn, local log ${logSize}`);
  await axe("instances");
  await shoot("instances");

  // 6. Keyboard: the views are reachable by Tab and Enter.
  await page.goto(`${base}/#health`);
  await page.keyboard.press("Tab");
  await page.keyboard.press("Tab");
  await page.keyboard.press("Tab");
  await page.keyboard.press("Enter");
  await page.waitForFunction(() => location.hash === "#settings");
  step("keyboard: Tab reaches the navigation, Enter opens Settings");

  // 7. Dark scheme renders and passes axe too.
  await page.emulateMedia({ colorScheme: "dark" });
  await page.goto(`${base}/#health`);
  await page.locator('#groups tr[data-component="port"]').waitFor();
  await axe("health (dark)");
  await page.screenshot({ path: path.join(out, "health-dark-1280.png"), fullPage: true });

  expect(errors.length === 0, `console errors: ${JSON.stringify(errors)}`);
  step(`no console error; screenshots in ${out}`);
} finally {
  if (browser) await browser.close();
  api.kill("SIGTERM");
  probed.close();
}
