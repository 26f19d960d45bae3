// A small SVG line chart: one polyline per series, axes with min and max labels.

const SVG = "http://www.w3.org/2000/svg";

function node(tag, attrs, text) {
  const n = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
  if (text !== undefined) n.textContent = text;
  return n;
}

/** series: [{name, color, points: [[x, y], ...]}]; points with a null y are skipped.
 *  mark: {x, label}, a dashed vertical line at x (the best epoch, say). */
export function lineChart(svg, series, { yMin = null, yMax = null, mark = null } = {}) {
  const w = 480, h = 240, pad = { l: 46, r: 10, t: 26, b: 34 };
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
  if (mark && mark.x >= x0 && mark.x <= x1) {
    svg.append(node("line", { class: "mark", x1: X(mark.x), y1: pad.t, x2: X(mark.x), y2: h - pad.b }));
    const right = X(mark.x) > w - 120;
    svg.append(node("text", { class: "mark", x: X(mark.x) + (right ? -4 : 4), y: h - pad.b - 6,
      "text-anchor": right ? "end" : "start" }, mark.label));
  }
  // The legend above the plot, each name after a swatch of its line's colour.
  let lx = pad.l;
  for (const s of series) {
    const ok = s.points.filter((p) => Number.isFinite(p[1]));
    svg.append(node("polyline", { stroke: s.color, "data-series": s.name, "data-points": ok.length,
      points: ok.map((p) => `${X(p[0]).toFixed(1)},${Y(p[1]).toFixed(1)}`).join(" ") }));
    for (const p of ok) svg.append(node("circle", { cx: X(p[0]), cy: Y(p[1]), r: 2.5, fill: s.color }));
    svg.append(node("line", { x1: lx, y1: 12, x2: lx + 16, y2: 12, stroke: s.color, "stroke-width": 3 }));
    svg.append(node("text", { x: lx + 20, y: 16 }, s.name));
    lx += 32 + 7 * s.name.length;
  }
}
