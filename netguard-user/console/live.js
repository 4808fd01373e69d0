// Live view: alerts pushed over the WebSocket as they arrive, refilled from GET /api/v1/alerts after
// a (re)load or reconnect, deduplicated by alert id so a reconnect never shows a row twice. Rows are
// capped; rendering is batched per animation frame so a burst cannot freeze the page.
import { get } from "./api.js";
import { clear, fmtTime, h } from "./dom.js";
import { setParams } from "./app.js";

export const CAP = 500;
const SEEN_CAP = 20000;
const alerts = []; // newest first, at most CAP
const seen = new Set();
const listeners = new Set(); // list-change subscribers (the blocklist view)
let ws = null;
let stopped = true;
let backoff = 500;
let setState = () => {};
let paused = false;
let held = []; // arrived while paused
let view = null; // {root, tbody, filters, count}
let pending = []; // arrived since the last render
let frame = 0; // a render is scheduled
let lastRender = 0;
// Alerts are painted in the next frame, unless more than BUSY_RATE a second are arriving: then the
// table is updated at most once per RENDER_GAP, so a burst costs a few layouts a second instead of
// one per frame (each insert at the top moves every row below it).
const RENDER_GAP = 200;
const BUSY_RATE = 25;
const recent = []; // arrival times of the last BUSY_RATE alerts

function schedule() {
  const now = performance.now();
  recent.push(now);
  if (recent.length > BUSY_RATE) recent.shift();
  if (frame) return;
  const busy = recent.length === BUSY_RATE && now - recent[0] < 1000;
  const wait = busy ? lastRender + RENDER_GAP - now : 0;
  frame = wait > 0 ? setTimeout(() => requestAnimationFrame(flush), wait) : requestAnimationFrame(flush);
}

export function onListChange(f) {
  listeners.add(f);
  return () => listeners.delete(f);
}

function remember(id) {
  seen.add(id);
  if (seen.size > SEEN_CAP) seen.delete(seen.values().next().value);
}

/** Adds alerts not seen before; returns those added, newest first. */
function merge(list) {
  const fresh = [];
  for (const a of list) {
    if (!a || !a.id || seen.has(a.id)) continue;
    remember(a.id);
    fresh.push(a);
  }
  if (!fresh.length) return fresh;
  alerts.push(...fresh);
  alerts.sort((x, y) => (x.ts < y.ts ? 1 : x.ts > y.ts ? -1 : x.id < y.id ? 1 : -1));
  alerts.length = Math.min(alerts.length, CAP);
  return fresh;
}

const stats = { refills: 0, connects: 0, messages: 0, messageMs: 0, flushes: 0, flushMs: 0 };

async function refill() {
  try {
    const list = await get("/api/v1/alerts?limit=100");
    if (merge(list).length) renderAll();
    stats.refills++;
  } catch (e) {
    // The socket's own retry covers an unreachable daemon; a 401 shows the login form.
  }
}

export function start(onState) {
  setState = onState;
  if (!stopped) return;
  stopped = false;
  connect();
}

export function stop() {
  stopped = true;
  if (ws) ws.close();
  ws = null;
}

function connect() {
  if (stopped) return;
  setState("connecting");
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const sock = new WebSocket(`${proto}//${location.host}/api/v1/ws`);
  ws = sock;
  sock.onopen = () => {
    backoff = 500;
    stats.connects++;
    setState(paused ? "paused" : "live");
    // Subscribed first, then refilled: whatever arrived while disconnected comes from the history,
    // and anything in both is dropped by id.
    refill();
  };
  sock.onmessage = (ev) => {
    const t = performance.now();
    let msg;
    try {
      msg = JSON.parse(ev.data);
    } catch {
      return;
    }
    if (msg.type === "alert") arrive(msg);
    else listeners.forEach((f) => f(msg));
    stats.messages++;
    stats.messageMs += performance.now() - t;
  };
  sock.onclose = () => {
    if (ws !== sock) return;
    ws = null;
    if (stopped) return;
    setState("reconnecting");
    setTimeout(connect, backoff);
    backoff = Math.min(backoff * 2, 5000);
  };
}

function arrive(a) {
  if (paused) {
    held.push(a);
    if (view) view.pauseBtn.textContent = `Resume (${held.length} new)`;
    return;
  }
  pending.push(a);
  schedule();
}

function flush() {
  const t = performance.now();
  lastRender = t;
  render();
  stats.flushes++;
  stats.flushMs += performance.now() - t;
}

function render() {
  frame = 0;
  const fresh = merge(pending);
  pending = [];
  if (!view || !fresh.length) return;
  const f = view.filters;
  const tb = view.tbody;
  // Newest first: insert the fresh rows (already sorted) at the top, then trim to the cap.
  const frag = document.createDocumentFragment();
  let added = 0;
  // A burst can bring more than the cap in one frame: only the newest CAP can be shown.
  for (const a of fresh) {
    if (added >= CAP) break;
    if (matches(a, f)) {
      frag.append(row(a));
      added++;
    }
  }
  tb.prepend(frag);
  while (tb.rows.length > CAP) tb.lastElementChild.remove();
  view.count.textContent = `${tb.rows.length} shown (cap ${CAP})`;
}

/** The URL's filters and the alert field each one matches. */
const FILTERS = { class: "class", vm: "sensor_id", src: "src_ip", dst: "dst_ip", mitre: "mitre", action: "action" };

function matches(a, f) {
  return Object.entries(FILTERS).every(([k, field]) => !f[k] || String(a[field] ?? "") === f[k]);
}

function filterLink(key, value, label) {
  return h(
    "button",
    {
      type: "button",
      class: "val",
      title: `Show only ${key} ${value}`,
      onclick: (ev) => {
        ev.stopPropagation();
        setParams({ ...view.filters, [key]: value });
      },
    },
    label ?? value,
  );
}

function row(a) {
  const target = a.dst_port ? `${a.dst_ip}:${a.dst_port}` : a.dst_ip;
  const tr = h(
    "tr",
    { class: `alert action-${a.action}`, dataset: { id: a.id }, tabindex: 0, title: "Show the evidence" },
    h("td", {}, h("time", { datetime: a.ts }, fmtTime(a.ts))),
    h("td", {}, filterLink("class", a.class)),
    h("td", {}, filterLink("src", a.src_ip)),
    h("td", {}, a.dst_ip ? filterLink("dst", a.dst_ip, target) : "–"),
    h("td", {}, filterLink("vm", a.sensor_id)),
    h("td", {}, a.mitre ? filterLink("mitre", a.mitre) : "–"),
    h("td", { class: "num" }, String(a.risk)),
    h("td", {}, filterLink("action", a.action, h("span", { class: `badge ${a.action}` }, a.action))),
  );
  const toggle = () => {
    const next = tr.nextElementSibling;
    if (next && next.classList.contains("evidence")) return next.remove();
    const ev = h("pre", {}, JSON.stringify({ confidence: a.confidence, evidence: a.evidence }, null, 2));
    tr.after(h("tr", { class: "evidence" }, h("td", { colspan: 8 }, ev)));
  };
  tr.addEventListener("click", toggle);
  tr.addEventListener("keydown", (e) => e.key === "Enter" && toggle());
  return tr;
}

function renderAll() {
  if (!view) return;
  const tb = view.tbody;
  clear(tb);
  const frag = document.createDocumentFragment();
  for (const a of alerts) if (matches(a, view.filters)) frag.append(row(a));
  tb.append(frag);
  view.count.textContent = `${tb.querySelectorAll("tr.alert").length} shown (cap ${CAP})`;
  clear(view.active);
  for (const [k, v] of Object.entries(view.filters)) {
    if (!v) continue;
    view.active.append(
      h("button", { type: "button", class: "chip", onclick: () => setParams({ ...view.filters, [k]: "" }) }, `${k}: ${v} ✕`),
    );
  }
}

function readFilters(params) {
  return Object.fromEntries(Object.keys(FILTERS).map((k) => [k, params.get(k) || ""]));
}

export function mount(root, params) {
  const filters = readFilters(params);
  const tbody = h("tbody", { id: "live-rows" });
  const count = h("span", { class: "muted", id: "live-count" });
  const active = h("span", { class: "chips" });
  const pauseBtn = h("button", { type: "button", id: "pause" }, "Pause");
  pauseBtn.addEventListener("click", () => {
    paused = !paused;
    pauseBtn.textContent = paused ? "Resume" : "Pause";
    setState(ws && ws.readyState === 1 ? (paused ? "paused" : "live") : "reconnecting");
    if (!paused && held.length) {
      pending.push(...held);
      held = [];
      schedule();
    }
  });
  const input = (name, label) =>
    h("label", {}, label, " ", h("input", { name, value: filters[name], size: 14, onchange: (e) => setParams({ ...view.filters, [name]: e.target.value.trim() }) }));
  root.append(
    h("h2", {}, "Live alerts"),
    h("div", { class: "toolbar" }, pauseBtn, input("class", "Class"), input("vm", "VM"), input("src", "Source"), active, count),
    h(
      "table",
      { class: "grid", id: "live-table" },
      h("thead", {}, h("tr", {}, ...["Time", "Class", "Source", "Target", "VM", "MITRE", "Risk", "Action"].map((t) => h("th", { scope: "col" }, t)))),
      tbody,
    ),
  );
  view = { root, tbody, filters, count, active, pauseBtn };
  renderAll();
}

export function update(params) {
  if (!view) return;
  view.filters = readFilters(params);
  for (const i of view.root.querySelectorAll(".toolbar input")) i.value = view.filters[i.name];
  renderAll();
}

export function unmount() {
  view = null;
}

// For tests and benchmarks: what the page holds.
window.__live = { alerts, seen, cap: CAP, stats };
