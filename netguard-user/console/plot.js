// Small canvas charts: lines over time. No library.

const COLORS = ["#2f6fde", "#d23c3c", "#1f9d6b", "#c77c00", "#8a4fd6", "#0096a8", "#7a7a7a", "#b8306e"];

/** series: [{label, points: [[t, v], ...]}]; draws into a canvas sized to its CSS box. */
export function lines(canvas, series, { unit = "" } = {}) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || 400, hgt = canvas.clientHeight || 160;
  canvas.width = w * dpr;
  canvas.height = hgt * dpr;
  const c = canvas.getContext("2d");
  c.scale(dpr, dpr);
  c.clearRect(0, 0, w, hgt);
  const all = series.flatMap((s) => s.points);
  const pad = { l: 48, r: 8, t: 8, b: 18 };
  c.font = "11px system-ui, sans-serif";
  c.fillStyle = "#555";
  if (!all.length) {
    c.fillText("waiting for data…", pad.l, hgt / 2);
    return;
  }
  const t0 = Math.min(...all.map((p) => p[0])), t1 = Math.max(...all.map((p) => p[0]), t0 + 1);
  const vmax = Math.max(1, ...all.map((p) => p[1]));
  const x = (t) => pad.l + ((t - t0) / (t1 - t0)) * (w - pad.l - pad.r);
  const y = (v) => hgt - pad.b - (v / vmax) * (hgt - pad.t - pad.b);
  c.strokeStyle = "#ddd";
  c.beginPath();
  c.moveTo(pad.l, y(0));
  c.lineTo(w - pad.r, y(0));
  c.moveTo(pad.l, y(vmax));
  c.lineTo(w - pad.r, y(vmax));
  c.stroke();
  c.fillText(`${fmt(vmax)}${unit}`, 2, y(vmax) + 4);
  c.fillText(`0`, 2, y(0));
  c.fillText(`${Math.round((t1 - t0) / 1000)} s`, w - pad.r - 30, hgt - 4);
  series.forEach((s, i) => {
    c.strokeStyle = COLORS[i % COLORS.length];
    c.lineWidth = 1.5;
    c.beginPath();
    s.points.forEach(([t, v], j) => (j ? c.lineTo(x(t), y(v)) : c.moveTo(x(t), y(v))));
    c.stroke();
  });
}

export function color(i) {
  return COLORS[i % COLORS.length];
}

function fmt(v) {
  return v >= 1e6 ? (v / 1e6).toFixed(1) + "M" : v >= 1e3 ? (v / 1e3).toFixed(1) + "k" : String(Math.round(v * 10) / 10);
}
