// Building DOM from data. Everything that came from the network goes in as text (textContent or
// attribute values), never as HTML: attackers choose usernames, VM ids, reasons and log lines.

/** h("td", {class: "x", onclick: f}, child, "text", ...) */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

export function clear(el) {
  while (el.firstChild) el.firstChild.remove();
  return el;
}

export function svg(tag, attrs = {}) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  return el;
}

export function fmtTime(ts) {
  const d = new Date(ts);
  return isNaN(d) ? String(ts ?? "") : d.toLocaleTimeString([], { hour12: false });
}

export function fmtDate(ts) {
  const d = new Date(ts);
  return isNaN(d) ? String(ts ?? "") : d.toISOString().replace("T", " ").slice(0, 19) + "Z";
}

/** "3h 04m", "12s", or "expired" for a time left in ms. */
export function countdown(ms) {
  if (ms <= 0) return "expired";
  const s = Math.floor(ms / 1000);
  const d = Math.floor(s / 86400), hh = Math.floor((s % 86400) / 3600), mm = Math.floor((s % 3600) / 60);
  if (d) return `${d}d ${hh}h`;
  if (hh) return `${hh}h ${String(mm).padStart(2, "0")}m`;
  if (mm) return `${mm}m ${String(s % 60).padStart(2, "0")}s`;
  return `${s}s`;
}

export function fmtNum(n) {
  if (n === undefined || n === null || isNaN(n)) return "–";
  const a = Math.abs(n);
  if (a >= 1e9) return (n / 1e9).toFixed(1) + "G";
  if (a >= 1e6) return (n / 1e6).toFixed(1) + "M";
  if (a >= 1e4) return (n / 1e3).toFixed(1) + "k";
  return String(Math.round(n * 10) / 10);
}

/** An error box showing the server's message and the field it is about. */
export function errorBox(err) {
  const box = h("div", { class: "error", role: "alert" });
  showError(box, err);
  return box;
}

export function showError(box, err) {
  clear(box);
  if (!err) return;
  box.append(h("strong", {}, err.status ? `Refused (${err.status}): ` : "Error: "), String(err.message));
  if (err.field) box.append(" ", h("span", { class: "field" }, "field: ", h("code", {}, err.field)));
}
