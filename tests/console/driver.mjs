// Drives Debian's chromium with playwright-core for tests/tests/console.rs and `cargo xtask bench`:
// one JSON command per line on stdin, one JSON answer per line on stdout ({id, ok, result|error}).
// Never downloads a browser: it launches the system's chromium (CHROMIUM, default
// /usr/lib/chromium/chromium). Exits, closing the browser, when stdin ends.
import { readFileSync, mkdirSync } from "node:fs";
import { createInterface } from "node:readline";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
const base = process.env.NG_URL;
const origin = new URL(base).origin;
const shots = process.env.NG_SHOTS || join(here, "../../target/console-screenshots");
const exe = process.env.CHROMIUM || "/usr/lib/chromium/chromium";
const axeSource = readFileSync(join(here, "node_modules/axe-core/axe.min.js"), "utf8");

const browser = await chromium.launch({
  executablePath: exe,
  headless: true,
  args: ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--no-first-run"],
});
const pages = new Map();

// Runs in every page before its scripts: records CSP violations and when each alert row was first
// painted (performance.timeOrigin-based wall clock, comparable with the daemon's alert ts).
function initScript() {
  window.__csp = [];
  document.addEventListener("securitypolicyviolation", (e) => window.__csp.push(`${e.violatedDirective} ${e.blockedURI}`));
  window.__rowSeen = {};
  const fresh = [];
  const stamp = () => {
    const t = performance.timeOrigin + performance.now();
    for (const id of fresh.splice(0)) if (!(id in window.__rowSeen)) window.__rowSeen[id] = t;
  };
  new MutationObserver((muts) => {
    let any = false;
    for (const m of muts)
      for (const n of m.addedNodes)
        if (n.nodeType === 1 && n.matches("tr.alert") && n.dataset.id && !(n.dataset.id in window.__rowSeen)) {
          fresh.push(n.dataset.id);
          any = true;
        }
    if (any) requestAnimationFrame(stamp);
  }).observe(document, { childList: true, subtree: true });
}

async function open({ page: name = "main", hash = "" }) {
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  await ctx.addInitScript(initScript);
  const page = await ctx.newPage();
  const rec = { ctx, page, errors: [], foreign: [] };
  page.on("console", (m) => m.type() === "error" && rec.errors.push(m.text()));
  page.on("pageerror", (e) => rec.errors.push(`pageerror: ${e.message}`));
  page.on("request", (r) => {
    const u = r.url();
    if (!u.startsWith("data:") && new URL(u).origin !== origin) rec.foreign.push(u);
  });
  page.on("websocket", (ws) => {
    const u = new URL(ws.url());
    if (u.host !== new URL(base).host) rec.foreign.push(ws.url());
  });
  pages.set(name, rec);
  await page.goto(`${base}/${hash}`);
  await page.waitForFunction(() => document.documentElement.dataset.ready === "1");
  return { url: page.url() };
}

const P = (name = "main") => {
  const r = pages.get(name);
  if (!r) throw new Error(`no page ${name}; open it first`);
  return r;
};

async function login({ page, token }) {
  const { page: p, ctx } = P(page);
  await p.fill("#token", token);
  await p.click("#login-form button[type=submit]");
  await p.waitForSelector("#nav:not([hidden]), #login-error:not(:empty)");
  return {
    loggedIn: await p.isVisible("#nav"),
    error: await p.textContent("#login-error"),
    who: await p.textContent("#who"),
    url: p.url(),
    cookies: await ctx.cookies(),
    localStorage: await p.evaluate(() => JSON.stringify({ ...localStorage })),
    sessionStorage: await p.evaluate(() => JSON.stringify({ ...sessionStorage })),
    tokenInput: await p.inputValue("#token"),
  };
}

async function go({ page, hash }) {
  const { page: p } = P(page);
  await p.evaluate((h) => (location.hash = h), hash);
  const view = hash.replace(/^#/, "").split("?")[0] || "live";
  await p.waitForSelector(`#view[data-view="${view}"]`);
  return { url: p.url() };
}

async function rows({ page }) {
  const { page: p } = P(page);
  return p.evaluate(() => ({
    ids: [...document.querySelectorAll("#live-rows tr.alert")].map((r) => r.dataset.id),
    seen: window.__rowSeen,
    state: document.getElementById("conn").dataset.state,
    stats: window.__live.stats,
    held: window.__live.alerts.length,
    now: performance.timeOrigin + performance.now(),
  }));
}

async function waitFor({ page, expr, arg = null, timeout = 10000 }) {
  const { page: p } = P(page);
  const fn = new Function("arg", `return (${expr});`);
  const h = await p.waitForFunction(fn, arg, { timeout, polling: "raf" });
  return h.jsonValue();
}

async function evaluate({ page, expr, arg = null }) {
  const { page: p } = P(page);
  return p.evaluate(new Function("arg", `return (${expr});`), arg);
}

async function reload({ page }) {
  const { page: p } = P(page);
  await p.reload();
  await p.waitForFunction(() => window.__live && window.__live.stats.refills > 0, null, { timeout: 10000 });
  return rows({ page });
}

async function block({ page, cidr, ttl = "", reason = "" }) {
  const { page: p } = P(page);
  await go({ page, hash: "#lists" });
  await p.fill("#add-form input[name=cidr]", cidr);
  await p.fill("#add-form input[name=ttl]", ttl);
  await p.fill("#add-form input[name=reason]", reason);
  await p.evaluate(() => {
    document.getElementById("list-ok").textContent = "";
  });
  await p.click("#add-form button[type=submit]");
  await p.waitForFunction(() => document.getElementById("list-ok").textContent || document.getElementById("list-error").textContent);
  return listResult(p, cidr);
}

async function unblock({ page, cidr }) {
  const { page: p } = P(page);
  await go({ page, hash: "#lists" });
  await p.waitForSelector(`#list-rows tr[data-cidr="${cidr}"]`);
  await p.click(`#list-rows tr[data-cidr="${cidr}"] button.remove`);
  await p.waitForFunction(
    (c) => !document.querySelector(`#list-rows tr[data-cidr="${c}"]`) || document.getElementById("list-error").textContent,
    cidr,
  );
  return listResult(p, cidr);
}

async function listResult(p, cidr) {
  return p.evaluate((c) => ({
    ok: document.getElementById("list-ok").textContent,
    error: document.getElementById("list-error").textContent,
    row: document.querySelector(`#list-rows tr[data-cidr="${c}"]`)?.textContent ?? null,
  }), cidr);
}

async function axe({ page }) {
  const { page: p } = P(page);
  // Evaluated through the DevTools protocol, not as an inline <script>, so the page's CSP stays on.
  await p.evaluate(axeSource);
  const res = await p.evaluate(async () => {
    const r = await window.axe.run(document, { resultTypes: ["violations"] });
    return r.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.map((n) => n.target.join(" ")).slice(0, 5) }));
  });
  return res;
}

async function screenshot({ page, name }) {
  const { page: p } = P(page);
  mkdirSync(shots, { recursive: true });
  const path = join(shots, `${name}.png`);
  await p.screenshot({ path, fullPage: true });
  return { path };
}

/** What went wrong in the page so far; `clear` starts a new record. */
async function report({ page, clear = false }) {
  const r = P(page);
  const out = { errors: [...r.errors], foreign: [...r.foreign], csp: await r.page.evaluate((c) => {
    const v = [...window.__csp];
    if (c) window.__csp.length = 0;
    return v;
  }, clear) };
  if (clear) {
    r.errors.length = 0;
    r.foreign.length = 0;
  }
  return out;
}

async function resources({ page }) {
  const { page: p } = P(page);
  return p.evaluate(() => ({
    entries: performance.getEntriesByType("resource").map((e) => ({ name: e.name, transfer: e.transferSize, body: e.encodedBodySize })),
    nav: performance.getEntriesByType("navigation").map((e) => ({ transfer: e.transferSize, body: e.encodedBodySize, dcl: e.domContentLoadedEventEnd, load: e.loadEventEnd }))[0],
  }));
}

async function closePage({ page }) {
  const r = P(page);
  await r.ctx.close();
  pages.delete(page ?? "main");
  return {};
}

const commands = { open, login, go, rows, waitFor, evaluate, reload, block, unblock, axe, screenshot, report, resources, closePage };

const rl = createInterface({ input: process.stdin });
for await (const line of rl) {
  if (!line.trim()) continue;
  let msg;
  try {
    msg = JSON.parse(line);
    const f = commands[msg.cmd];
    if (!f) throw new Error(`unknown command ${msg.cmd}`);
    const result = await f(msg);
    process.stdout.write(JSON.stringify({ id: msg.id, ok: true, result }) + "\n");
  } catch (e) {
    process.stdout.write(JSON.stringify({ id: msg?.id, ok: false, error: String(e?.stack || e) }) + "\n");
  }
}
await browser.close();
