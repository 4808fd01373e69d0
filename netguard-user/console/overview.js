// Overview: packets and bytes passed and dropped, drops by reason and alerts per class over time
// (sampled from /metrics every 2 s, drawn on canvas), the top sources and flows now, the
// blocklist's size and the detector's health.
import { get } from "./api.js";
import { clear, fmtNum, h } from "./dom.js";
import { color, lines } from "./plot.js";

const KEEP = 90; // samples (3 minutes)
let st = null;

/** Prometheus text -> [{name, labels, value}] for the netguard_ families the charts use. */
export function parseMetrics(text) {
  const out = [];
  for (const line of text.split("\n")) {
    if (!line.startsWith("netguard_")) continue;
    const m = line.match(/^([a-z_]+)(?:\{([^}]*)\})?\s+(\S+)/);
    if (!m) continue;
    const labels = {};
    for (const kv of (m[2] || "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[kv[1]] = kv[2];
    out.push({ name: m[1], labels, value: Number(m[3]) });
  }
  return out;
}

function chart(id, title) {
  const canvas = h("canvas", { id, class: "chart", role: "img", "aria-label": title });
  const legend = h("ul", { class: "legend" });
  return { box: h("figure", { class: "card" }, h("figcaption", {}, title), canvas, legend), canvas, legend, series: new Map() };
}

function push(ch, label, t, v) {
  if (!ch.series.has(label)) ch.series.set(label, []);
  const pts = ch.series.get(label);
  pts.push([t, v]);
  if (pts.length > KEEP) pts.shift();
}

function draw(ch, unit) {
  const series = [...ch.series].map(([label, points]) => ({ label, points }));
  lines(ch.canvas, series, { unit });
  clear(ch.legend);
  series.forEach((s, i) => {
    const sw = h("span", { class: "swatch" });
    sw.style.background = color(i);
    ch.legend.append(h("li", {}, sw, `${s.label} ${fmtNum(s.points.at(-1)?.[1])}${unit}`));
  });
}

async function sample() {
  if (!st) return;
  const t = Date.now();
  let text;
  try {
    text = await (await fetch("/metrics", { credentials: "same-origin" })).text();
  } catch {
    return;
  }
  if (!st) return;
  const now = {};
  for (const m of parseMetrics(text)) {
    const key = m.name === "netguard_packets_total" || m.name === "netguard_bytes_total" ? `${m.name}|${m.labels.action}`
      : m.name === "netguard_drops_total" ? `drops|${m.labels.reason}`
      : m.name === "netguard_alerts_total" ? `alerts|${m.labels.class}` : null;
    if (key) now[key] = (now[key] || 0) + m.value;
  }
  if (st.prev) {
    const dt = (t - st.prevT) / 1000;
    for (const [k, v] of Object.entries(now)) {
      const rate = Math.max(0, (v - (st.prev[k] ?? v)) / dt);
      const [fam, label] = k.split("|");
      const ch = fam === "netguard_packets_total" ? st.packets : fam === "netguard_bytes_total" ? st.bytes : fam === "drops" ? st.drops : st.alerts;
      push(ch, label, t, fam === "alerts" ? rate * 60 : rate);
    }
    draw(st.packets, "/s");
    draw(st.bytes, " B/s");
    draw(st.drops, "/s");
    draw(st.alerts, "/min");
  }
  st.prev = now;
  st.prevT = t;
}

async function tables() {
  if (!st) return;
  try {
    const [health, top] = await Promise.all([get("/api/v1/health"), get("/api/v1/flows?top=10&sort=packets")]);
    const flows = top.flows;
    if (!st) return;
    const dp = health.datapath;
    clear(st.health).append(
      h("dt", {}, "Detector"), h("dd", { class: health.status === "ok" ? "good" : "bad" }, `${health.status}`),
      h("dt", {}, "XDP"), h("dd", {}, dp.attached ? `attached to ${dp.iface} (${dp.mode})` : "not attached"),
      h("dt", {}, "Blocklist"), h("dd", { id: "blocklist-size" }, `${dp.blocklist_entries} entries`),
      h("dt", {}, "Allowlist"), h("dd", {}, `${dp.allowlist_entries} entries`),
      h("dt", {}, "Store"), h("dd", {}, `${health.store.backend}, ${health.store.reachable ? "reachable" : "unreachable: " + (health.store.error || "")}, backlog ${health.store.backlog}`),
      h("dt", {}, "Uptime"), h("dd", {}, `${health.uptime_seconds} s, sensor ${health.sensor_id}, ${health.ws_clients} live clients`),
    );
    st.root.querySelector("#flows-total").textContent = `${top.total} flows in the kernel table`;
    const bySrc = new Map();
    for (const f of flows) bySrc.set(f.src, (bySrc.get(f.src) || 0) + f.packets);
    clear(st.sources).append(...[...bySrc].sort((a, b) => b[1] - a[1]).map(([src, p]) => h("tr", {}, h("td", {}, src), h("td", { class: "num" }, fmtNum(p)))));
    clear(st.flows).append(
      ...flows.map((f) => h("tr", {}, h("td", {}, `${f.src}:${f.src_port}`), h("td", {}, `${f.dst}:${f.dst_port}`), h("td", {}, f.proto), h("td", { class: "num" }, fmtNum(f.packets)), h("td", { class: "num" }, fmtNum(f.bytes)))),
    );
  } catch (e) {
    clear(st.health).append(h("dd", { class: "bad" }, e.message));
  }
}

export function mount(root) {
  const packets = chart("c-packets", "Packets per second (pass / drop)");
  const bytes = chart("c-bytes", "Bytes per second (pass / drop)");
  const drops = chart("c-drops", "Drops per second by reason");
  const alerts = chart("c-alerts", "Alerts per minute by class");
  const health = h("dl", { class: "kv", id: "health" });
  const sources = h("tbody");
  const flows = h("tbody");
  const th = (...t) => h("thead", {}, h("tr", {}, ...t.map((x) => h("th", { scope: "col" }, x))));
  root.append(
    h("h2", {}, "Overview"),
    h("div", { class: "cards" }, packets.box, bytes.box, drops.box, alerts.box),
    h(
      "div",
      { class: "cards" },
      h("section", { class: "card" }, h("h3", {}, "Health"), health),
      h("section", { class: "card" }, h("h3", {}, "Top sources now"), h("table", { class: "grid" }, th("Source", "Packets"), sources)),
      h("section", { class: "card wide" }, h("h3", {}, "Top flows now"), h("p", { class: "muted", id: "flows-total" }), h("table", { class: "grid" }, th("From", "To", "Proto", "Packets", "Bytes"), flows)),
    ),
  );
  st = { root, packets, bytes, drops, alerts, health, sources, flows, prev: null };
  sample();
  tables();
  st.timer = setInterval(() => {
    sample();
    tables();
  }, 2000);
}

export function unmount() {
  if (st) clearInterval(st.timer);
  st = null;
}
