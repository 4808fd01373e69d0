// Derives the console's world map (netguard-user/console/vendor/world-110m.json) from Natural Earth's
// 1:110m countries as packaged by world-atlas: TopoJSON arcs decoded, projected (equirectangular,
// 720x360) and written as one SVG path per country, keyed by ISO 3166 alpha-2 (what the GeoIP
// lookups answer), so the browser only sets `d` attributes. Run: `node gen-map.mjs` (or
// `node gen-map.mjs --check`, which fails when the committed file differs).
import { readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const topo = JSON.parse(readFileSync(join(here, "node_modules/world-atlas/countries-110m.json"), "utf8"));
const codes = JSON.parse(readFileSync(join(here, "node_modules/i18n-iso-countries/codes.json"), "utf8"));
const alpha2 = new Map(codes.map(([a2, , num]) => [num, a2]));
const [sx, sy] = topo.transform.scale;
const [tx, ty] = topo.transform.translate;
const W = 720, H = 360;
const arcs = topo.arcs.map((arc) => {
  let x = 0, y = 0;
  return arc.map(([dx, dy]) => {
    x += dx; y += dy;
    const lon = x * sx + tx, lat = y * sy + ty;
    return [Math.round(((lon + 180) / 360) * W * 10) / 10, Math.round(((90 - lat) / 180) * H * 10) / 10];
  });
});
const ring = (ids) => {
  const pts = [];
  for (const i of ids) {
    const a = i < 0 ? [...arcs[~i]].reverse() : arcs[i];
    pts.push(...(pts.length ? a.slice(1) : a));
  }
  // A ring that crosses the antimeridian (Russia, Fiji, Antarctica) jumps across the whole map: start a
  // new subpath there instead of drawing a line over the world.
  let d = "";
  pts.forEach(([x, y], i) => {
    const jump = i === 0 || Math.abs(x - pts[i - 1][0]) > W / 2;
    d += `${jump ? "M" : "L"}${x},${y}`;
  });
  return d + "Z";
};
const countries = [];
for (const g of topo.objects.countries.geometries) {
  if (!g.arcs) continue;
  const polys = g.type === "Polygon" ? [g.arcs] : g.arcs;
  const d = polys.map((p) => p.map(ring).join("")).join("");
  countries.push({ iso: alpha2.get(g.id) ?? null, name: g.properties.name, d });
}
const out = JSON.stringify({
  source: "Natural Earth 1:110m admin 0 countries (public domain), via world-atlas 2.0.2 (ISC)",
  width: W,
  height: H,
  countries,
}) + "\n";
const dest = join(here, "../../netguard-user/console/vendor/world-110m.json");
if (process.argv.includes("--check")) {
  if (readFileSync(dest, "utf8") !== out) {
    console.error(`${dest} is out of date: run \`node tests/console/gen-map.mjs\``);
    process.exit(1);
  }
} else {
  writeFileSync(dest, out);
  console.log(`wrote ${dest} (${out.length} bytes, ${countries.length} countries)`);
}
