// VMs: a global view and a VM filter over suspicious IPs, blocked IPs, statistics, the feed and the
// attacks per VM, plus VM registration and removal. Usernames, VM ids and summaries come from agents
// and logs, so every one of them is rendered as text.
import { api, get } from "./api.js";
import { clear, errorBox, fmtDate, h, showError } from "./dom.js";
import { setParams } from "./app.js";

let st = null;

const th = (...t) => h("thead", {}, h("tr", {}, ...t.map((x) => h("th", { scope: "col" }, x))));

async function load() {
  if (!st) return;
  const vm = st.vm;
  const q = vm ? `?vm_id=${encodeURIComponent(vm)}` : "";
  try {
    const [vms, stats, sus, blocked, feed, attacks] = await Promise.all([
      get("/api/v1/vms"),
      vm ? get(`/api/v1/statistics${q}`) : get("/api/v1/statistics/global"),
      get(`/api/v1/suspicious-ips${q}${q ? "&" : "?"}limit=50`),
      get("/api/v1/blocked-ips"),
      get(`/api/v1/feed${q}${q ? "&" : "?"}limit=50`),
      vm ? get(`/api/v1/vms/${encodeURIComponent(vm)}/attacks?limit=50`) : Promise.resolve(null),
    ]);
    if (!st || st.vm !== vm) return;
    render(vms, stats, sus, blocked, feed, attacks);
  } catch (e) {
    if (st) showError(st.err, e);
  }
}

function render(vms, stats, sus, blocked, feed, attacks) {
  const { sel, vm } = st;
  clear(sel).append(h("option", { value: "" }, "All VMs (global)"), ...vms.vms.map((v) => h("option", { value: v.id, selected: v.id === vm }, v.name ? `${v.id} (${v.name})` : v.id)));
  clear(st.vmRows).append(
    ...vms.vms.map((v) =>
      h(
        "tr",
        {},
        h("td", {}, h("button", { type: "button", class: "val", onclick: () => setParams({ vm: v.id }) }, v.id)),
        h("td", {}, v.name || ""),
        h("td", {}, v.registered ? "yes" : "seen only"),
        h("td", {}, v.last_seen ? fmtDate(v.last_seen) : "–"),
        h("td", {}, v.registered && !v.this_sensor ? h("button", { type: "button", "aria-label": `Remove VM ${v.id}`, onclick: () => removeVm(v.id) }, "Remove") : ""),
      ),
    ),
  );
  clear(st.stats).append(
    h("dt", {}, "Failed logins"), h("dd", {}, String(stats.failed_logins)),
    h("dt", {}, "Successful logins"), h("dd", {}, String(stats.successful_logins)),
    h("dt", {}, "Attacker addresses"), h("dd", {}, String(stats.unique_attacker_ips)),
    h("dt", {}, "Alerts"), h("dd", {}, `${stats.alerts} ${Object.entries(stats.alerts_by_class || {}).map(([k, v]) => `${k}: ${v}`).join(", ")}`),
    h("dt", {}, "Blocks active"), h("dd", {}, `${stats.blocks_active.total} (manual ${stats.blocks_active.manual}, auto ${stats.blocks_active.auto}, event ${stats.blocks_active.event}, feed ${stats.blocks_active.feed})`),
  );
  clear(st.sus).append(
    ...sus.ips.map((s) =>
      h("tr", {}, h("td", {}, s.ip), h("td", { class: "num" }, String(s.failures)), h("td", { class: "num" }, String(s.alerts)), h("td", { class: "usernames" }, s.usernames.join(", ")), h("td", {}, s.vms.join(", ")), h("td", {}, s.blocked ? `blocked (${s.block_scopes.join(", ")})` : "")),
    ),
  );
  clear(st.blocked).append(
    ...blocked.blocked_ips.filter((b) => !vm || b.scope === "global" || b.scope === `vm:${vm}` || b.scope === vm).map((b) => h("tr", {}, h("td", {}, b.cidr ?? b.ip), h("td", {}, b.scope ?? ""), h("td", {}, b.source ?? ""), h("td", {}, b.reason ?? ""))),
  );
  clear(st.feed).append(
    ...feed.items.map((f) => h("li", {}, h("time", { datetime: f.ts }, fmtDate(f.ts)), " ", h("span", { class: "badge" }, f.type ?? f.kind ?? ""), " ", f.vm_id ? h("code", {}, f.vm_id) : "", " ", h("span", { class: "summary" }, f.summary))),
  );
  st.attacksBox.hidden = !attacks;
  if (attacks) {
    const items = attacks.items ?? attacks.attacks ?? [];
    clear(st.attacks).append(...items.map((a) => h("li", {}, h("time", { datetime: a.ts }, fmtDate(a.ts)), " ", h("span", { class: "summary" }, a.summary ?? `${a.class ?? ""} ${a.src_ip ?? a.src ?? ""}`))));
  }
}

async function removeVm(id) {
  showError(st.err, null);
  try {
    await api("DELETE", `/api/v1/vms/${encodeURIComponent(id)}`);
    if (st.vm === id) setParams({});
    load();
  } catch (e) {
    showError(st.err, e);
  }
}

export function mount(root, params) {
  const sel = h("select", { id: "vm-select", "aria-label": "VM" });
  sel.addEventListener("change", () => setParams({ vm: sel.value }));
  const err = errorBox(null);
  err.id = "vm-error";
  const form = h(
    "form",
    { class: "inline-form", id: "vm-form" },
    h("label", {}, "VM id ", h("input", { name: "id", required: true, size: 14 })),
    h("label", {}, "Name ", h("input", { name: "name", size: 16 })),
    h("button", { type: "submit" }, "Register VM"),
  );
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    showError(err, null);
    const body = { id: form.elements.id.value.trim() };
    if (form.elements.name.value.trim()) body.name = form.elements.name.value.trim();
    try {
      await api("POST", "/api/v1/vms", body);
      form.reset();
      load();
    } catch (e) {
      showError(err, e);
    }
  });
  const vmRows = h("tbody", { id: "vm-rows" });
  const stats = h("dl", { class: "kv" });
  const sus = h("tbody", { id: "suspicious-rows" });
  const blocked = h("tbody");
  const feed = h("ol", { class: "feed", id: "feed" });
  const attacks = h("ol", { class: "feed" });
  const attacksBox = h("section", { class: "card wide", hidden: true }, h("h3", {}, "Attacks on this VM"), attacks);
  root.append(
    h("h2", {}, "VMs"),
    h("div", { class: "toolbar" }, sel),
    err,
    h("div", { class: "cards" },
      h("section", { class: "card" }, h("h3", {}, "Statistics"), stats),
      h("section", { class: "card wide" }, h("h3", {}, "VMs"), h("table", { class: "grid" }, th("VM", "Name", "Registered", "Last seen", ""), vmRows), form),
      h("section", { class: "card wide" }, h("h3", {}, "Suspicious addresses"), h("table", { class: "grid", id: "suspicious-table" }, th("Address", "Failed logins", "Alerts", "Usernames", "VMs", "Blocked"), sus)),
      h("section", { class: "card" }, h("h3", {}, "Blocked addresses"), h("table", { class: "grid" }, th("CIDR", "Scope", "Source", "Reason"), blocked)),
      attacksBox,
      h("section", { class: "card wide" }, h("h3", {}, "Feed"), feed),
    ),
  );
  st = { sel, err, vmRows, stats, sus, blocked, feed, attacks, attacksBox, vm: params.get("vm") || "" };
  load();
  st.timer = setInterval(load, 5000);
}

export function update(params) {
  if (!st) return;
  st.vm = params.get("vm") || "";
  load();
}

export function unmount() {
  if (st) clearInterval(st.timer);
  st = null;
}
