// Blocklist and allowlist: search, hits, source, scope, expiry countdown; add, remove, bulk paste.
// A refusal shows the server's message and the field it names.
import { api, get } from "./api.js";
import { clear, countdown, errorBox, fmtDate, h, showError } from "./dom.js";
import { onListChange } from "./live.js";
import { session } from "./app.js";

let state = null;
const LIMIT = 5000;

function listPath(kind) {
  return `/api/v1/${kind}`;
}

async function load() {
  if (!state) return;
  try {
    // The first LIMIT entries (sorted by CIDR); search works within them.
    const entries = await get(`${listPath(state.kind)}?limit=${LIMIT}`);
    if (!state) return;
    state.entries = entries;
    render();
  } catch (e) {
    showError(state.err, e);
  }
}

function render() {
  const { tbody, entries, search, count } = state;
  const q = search.value.trim().toLowerCase();
  clear(tbody);
  const shown = entries.filter(
    (e) => !q || [e.cidr, e.reason, e.source, e.scope].some((v) => String(v ?? "").toLowerCase().includes(q)),
  );
  const frag = document.createDocumentFragment();
  for (const e of shown.slice(0, 2000)) {
    frag.append(
      h(
        "tr",
        { dataset: { cidr: e.cidr } },
        h("td", {}, h("code", {}, e.cidr)),
        h("td", {}, e.scope || "global"),
        h("td", {}, e.source || ""),
        h("td", {}, e.reason || ""),
        h("td", { class: "num" }, String(e.hits ?? 0)),
        h("td", {}, fmtDate(e.created_at)),
        h("td", { class: "expiry", dataset: { expires: e.expires_at || "" } }, e.expires_at ? countdown(Date.parse(e.expires_at) - Date.now()) : "never"),
        h("td", {}, h("button", { type: "button", class: "remove", "aria-label": `Remove ${e.cidr}`, onclick: () => remove(e) }, "Remove")),
      ),
    );
  }
  tbody.append(frag);
  const more = entries.length >= LIMIT ? ` (the first ${LIMIT} by CIDR are loaded; use netguard block list for all)` : "";
  count.textContent = `${shown.length} of ${entries.length} entries${shown.length > 2000 ? ", first 2000 shown" : ""}${more}`;
}

function tick() {
  if (!state) return;
  for (const td of state.tbody.querySelectorAll("td.expiry[data-expires]")) {
    if (td.dataset.expires) td.textContent = countdown(Date.parse(td.dataset.expires) - Date.now());
  }
}

async function write(method, path, body) {
  showError(state.err, null);
  try {
    const r = await api(method, path, body);
    await load();
    if (state) state.ok.textContent = method === "DELETE" ? "Removed." : `Saved ${Array.isArray(body) ? body.length : 1} entr${Array.isArray(body) && body.length !== 1 ? "ies" : "y"}.`;
    return r;
  } catch (e) {
    if (!state) return null;
    state.ok.textContent = "";
    showError(state.err, e);
    return null;
  }
}

function remove(e) {
  const q = new URLSearchParams({ cidr: e.cidr });
  if (e.scope && e.scope !== "global") q.set("scope", e.scope);
  write("DELETE", `${listPath(state.kind)}?${q}`);
}

function entryFrom(form) {
  const v = (n) => form.elements[n].value.trim();
  const e = { cidr: v("cidr") };
  if (v("ttl")) e.ttl = v("ttl");
  if (v("reason")) e.reason = v("reason");
  if (v("scope") && v("scope") !== "global") e.scope = v("scope");
  return e;
}

/** Bulk paste: one "CIDR [TTL] [reason...]" per line; # starts a comment. */
export function parseBulk(text) {
  const out = [];
  for (const line of text.split("\n")) {
    const l = line.replace(/#.*/, "").trim();
    if (!l) continue;
    const [cidr, ttl, ...reason] = l.split(/\s+/);
    const e = { cidr };
    if (ttl && ttl !== "-") e.ttl = ttl;
    if (reason.length) e.reason = reason.join(" ");
    out.push(e);
  }
  return out;
}

export function mount(root, params) {
  const kind = params.get("list") === "allowlist" ? "allowlist" : "blocklist";
  const err = errorBox(null);
  err.id = "list-error";
  const ok = h("p", { class: "ok", role: "status", id: "list-ok" });
  const search = h("input", { type: "search", id: "list-search", "aria-label": "Search entries", placeholder: "Search CIDR, reason, source, scope" });
  const count = h("span", { class: "muted" });
  const tbody = h("tbody", { id: "list-rows" });
  const addForm = h(
    "form",
    { id: "add-form", class: "inline-form" },
    h("label", {}, "CIDR ", h("input", { name: "cidr", required: true, size: 18, placeholder: "203.0.113.0/24" })),
    h("label", {}, "TTL ", h("input", { name: "ttl", size: 6, placeholder: "4h" })),
    h("label", {}, "Reason ", h("input", { name: "reason", size: 18 })),
    h("label", {}, "Scope ", h("input", { name: "scope", size: 10, placeholder: "global" })),
    h("button", { type: "submit" }, kind === "blocklist" ? "Block" : "Allow"),
  );
  addForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    write("POST", listPath(kind), entryFrom(addForm)).then((r) => r && addForm.reset());
  });
  const bulk = h("textarea", { id: "bulk", rows: 4, cols: 50, "aria-label": "Bulk paste", placeholder: "one per line: CIDR [TTL|-] [reason]" });
  const bulkBtn = h("button", { type: "button", onclick: () => write("POST", listPath(kind), parseBulk(bulk.value)).then((r) => r && (bulk.value = "")) }, "Add all");
  root.append(
    h("h2", {}, kind === "blocklist" ? "Blocklist" : "Allowlist"),
    h(
      "p",
      { class: "tabs" },
      h("a", { href: "#lists", "aria-current": kind === "blocklist" ? "page" : null }, "Blocklist"),
      " · ",
      h("a", { href: "#lists?list=allowlist", "aria-current": kind === "allowlist" ? "page" : null }, "Allowlist"),
    ),
    session.can_write ? null : h("p", { class: "notice" }, "Read-only: your token has the viewer role, so the daemon refuses changes."),
    addForm,
    h("details", {}, h("summary", {}, "Bulk paste"), bulk, " ", bulkBtn),
    err,
    ok,
    h("div", { class: "toolbar" }, search, count),
    h(
      "table",
      { class: "grid", id: "list-table" },
      h("thead", {}, h("tr", {}, ...["CIDR", "Scope", "Source", "Reason", "Hits", "Created", "Expires in", ""].map((t) => h("th", { scope: "col" }, t)))),
      tbody,
    ),
  );
  search.addEventListener("input", render);
  state = { kind, err, ok, search, count, tbody, entries: [], timer: setInterval(tick, 1000), poll: setInterval(load, 5000) };
  state.off = onListChange((m) => {
    if ((kind === "blocklist" && (m.type === "block" || m.type === "unblock")) || (kind === "allowlist" && (m.type === "allow" || m.type === "unallow"))) load();
  });
  load();
}

export function unmount() {
  if (!state) return;
  clearInterval(state.timer);
  clearInterval(state.poll);
  state.off();
  state = null;
}
