// A small SVG line chart: one polyline per series, axes with min and max labels.

const SVG = "http://www.w3.org/2000/svg";

function node(tag, attrs, text) {
  const n = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
  if (text !== undefined) n.textContent = text;
  return n;
}

/** series: [{name, color, points: [[x, y], ...]}]; points with a null y are skipped. */
export function lineChart(svg, series, { yMin = null, yMax = null } = {}) {
  const w = 480, h = 240, pad = { l: 46, r: 10, t: 10, b: 34 };
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  svg.replaceChildren();
  const pts = series.flatMap((s) => s.points.filter((p) => Number.isFinite(p[1])));
  if (!pts.length) {
    svg.append(node("text", { x: w / 2, y: h / 2, "text-anchor": "middle" }, "no epoch yet"));
    return;
  }
  const xs = pts.map((p) => p[0]), ys = pts.map((p) => p[1]);
  const x0 = Math.min(...xs), x1 = Math.max(...xs, x0 + 1);
  const y0 = yMin ?? Math.min(...ys), y1 = Math.max(yMax ?? Math.max(...ys), y0 + 1e-6);
  const X = (x) => pad.l + ((x - x0) / (x1 - x0)) * (w - pad.l - pad.r);
  const Y = (y) => h - pad.b - ((y - y0) / (y1 - y0)) * (h - pad.t - pad.b);
  svg.append(node("line", { class: "axis", x1: pad.l, y1: h - pad.b, x2: w - pad.r, y2: h - pad.b }));
  svg.append(node("line", { class: "axis", x1: pad.l, y1: pad.t, x2: pad.l, y2: h - pad.b }));
  svg.append(node("text", { x: pad.l - 4, y: Y(y1) + 4, "text-anchor": "end" }, y1.toFixed(3)));
  svg.append(node("text", { x: pad.l - 4, y: Y(y0), "text-anchor": "end" }, y0.toFixed(3)));
  svg.append(node("text", { x: X(x0), y: h - pad.b + 14, "text-anchor": "middle" }, String(x0)));
  svg.append(node("text", { x: X(x1), y: h - pad.b + 14, "text-anchor": "middle" }, String(x1)));
  svg.append(node("text", { x: (w + pad.l) / 2, y: h - 4, "text-anchor": "middle" }, "epoch"));
  let lx = pad.l + 8;
  for (const s of series) {
    const ok = s.points.filter((p) => Number.isFinite(p[1]));
    svg.append(node("polyline", { stroke: s.color, "data-series": s.name, "data-points": ok.length,
      points: ok.map((p) => `${X(p[0]).toFixed(1)},${Y(p[1]).toFixed(1)}`).join(" ") }));
    for (const p of ok) svg.append(node("circle", { cx: X(p[0]), cy: Y(p[1]), r: 2.5, fill: s.color }));
    svg.append(node("text", { x: lx, y: pad.t + 12, fill: s.color }, s.name));
    lx += 12 + 7 * s.name.length;
  }
}
