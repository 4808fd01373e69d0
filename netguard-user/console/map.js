// Map: attacks by country on a world map drawn from bundled Natural Earth geometry (no tiles),
// when the daemon has a GeoIP database; otherwise a message saying how to add one.
import { get } from "./api.js";
import { clear, errorBox, h, svg } from "./dom.js";
import { session } from "./app.js";

let alive = false;

export async function mount(root) {
  alive = true;
  const body = h("div", { id: "map-body" }, h("p", { class: "muted" }, "Loading…"));
  root.append(h("h2", {}, "Attacks by country"), body);
  let geo;
  try {
    if (!session.geoip) throw Object.assign(new Error("no GeoIP database is loaded"), { code: "geoip_unavailable" });
    geo = await get("/api/v1/geo-attacks?since=24h");
  } catch (e) {
    if (!alive) return;
    clear(body);
    if (e.code === "geoip_unavailable") {
      body.append(
        h(
          "div",
          { class: "notice", id: "map-unavailable" },
          h("p", {}, "No GeoIP database is configured, so attacks cannot be placed on the map."),
          h("p", {}, "Add one: download a MaxMind GeoLite2-Country or GeoLite2-City .mmdb file, then start the daemon with ",
            h("code", {}, "--geoip-db /path/GeoLite2-Country.mmdb"), " (or set ", h("code", {}, "geoip_db"), " under ", h("code", {}, "[api]"), " in the config)."),
          h("p", { class: "muted" }, `The daemon said: ${e.message}`),
        ),
      );
    } else body.append(errorBox(e));
    return;
  }
  const world = await (await fetch("/console/vendor/world-110m.json")).json();
  if (!alive) return;
  clear(body);
  const counts = new Map(geo.countries.map((c) => [c.country_code, c]));
  const max = Math.max(1, ...geo.countries.map((c) => c.attacks));
  const map = svg("svg", { viewBox: `0 0 ${world.width} ${world.height}`, class: "world", role: "img", "aria-label": "World map of attacks by country" });
  for (const c of world.countries) {
    const hit = c.iso && counts.get(c.iso);
    const p = svg("path", { d: c.d, fill: hit ? shade(hit.attacks / max) : "#e4e7ec", stroke: "#fff", "stroke-width": 0.4 });
    const title = svg("title");
    title.textContent = hit ? `${c.name}: ${hit.attacks} attacks from ${hit.unique_ips} addresses` : c.name;
    p.append(title);
    map.append(p);
  }
  const rows = geo.countries.map((c) =>
    h("tr", {}, h("td", {}, c.country || c.country_code), h("td", {}, c.country_code), h("td", { class: "num" }, String(c.attacks)), h("td", { class: "num" }, String(c.failed_logins)), h("td", { class: "num" }, String(c.alerts)), h("td", { class: "num" }, String(c.unique_ips))),
  );
  body.append(
    h("p", { class: "muted" }, `${geo.total_attacks} attacks from ${geo.unique_ips} addresses in the last 24 h (GeoIP: ${geo.database.database_type}).`),
    map,
    h("table", { class: "grid", id: "geo-table" }, h("thead", {}, h("tr", {}, ...["Country", "Code", "Attacks", "Failed logins", "Alerts", "Addresses"].map((t) => h("th", { scope: "col" }, t)))), h("tbody", {}, ...rows)),
    h("p", { class: "muted small" }, "Map: Made with Natural Earth (public domain), via world-atlas (ISC)."),
  );
}

function shade(f) {
  // Light to dark red by share of the busiest country.
  const l = Math.round(85 - 50 * Math.sqrt(f));
  return `hsl(0 70% ${l}%)`;
}

export function unmount() {
  alive = false;
}
