// Detect: one request per image with a low threshold and no NMS (and the raw grid);
// the sliders and the class filter then re-filter on this page, instantly.

import { api, el, guarded, toast } from "./api.js";
import { scoreDrawn } from "./score.js";

const SVG = "http://www.w3.org/2000/svg";
const FLOOR = 0.01; // the lowest confidence the slider offers, asked of the server once
const MAX_SHOWN = 100;
const state = { classes: [], hidden: new Set(), images: [] };

export function color(k) {
  return `hsl(${(k * 137.508) % 360} 85% 45%)`;
}

function svg(tag, attrs = {}) {
  const n = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
  return n;
}

function iou(a, b) {
  const w = Math.min(a.x2, b.x2) - Math.max(a.x1, b.x1);
  const h = Math.min(a.y2, b.y2) - Math.max(a.y1, b.y1);
  if (w <= 0 || h <= 0) return 0;
  const inter = w * h;
  const area = (r) => (r.x2 - r.x1) * (r.y2 - r.y1);
  return inter / (area(a) + area(b) - inter);
}

/** The server's filter, here: threshold, classes, class-wise NMS, best first. */
export function filter(detections, conf, iouMax, hidden) {
  const kept = [];
  const sorted = detections
    .filter((d) => d.confidence >= conf && !hidden.has(d.class_id))
    .sort((a, b) => b.confidence - a.confidence);
  for (const d of sorted) {
    if (kept.some((k) => k.class_id === d.class_id && iou(k.box, d.box) > iouMax)) continue;
    kept.push(d);
    if (kept.length >= MAX_SHOWN) break;
  }
  return kept;
}

export function setClasses(names) {
  if (JSON.stringify(names) === JSON.stringify(state.classes)) return;
  state.classes = names;
  const box = document.getElementById("class-filter");
  box.replaceChildren(...names.map((n, k) => el("label", {},
    el("input", { type: "checkbox", checked: !state.hidden.has(k), "data-class": n,
      onchange: (e) => { e.target.checked ? state.hidden.delete(k) : state.hidden.add(k); renderAll(); } }),
    el("span", { class: "swatch", style: `background:${color(k)}` }), n)));
}

// The served model's default threshold (calibrated to precision 0.9), until the
// visitor moves the slider.
export function setDefaultConf(value) {
  const slider = document.getElementById("conf");
  const v = Math.round(value * 100) / 100; // the slider's step
  if (state.confTouched || value == null || Number(slider.value) === v) return;
  slider.value = v;
  renderAll();
}

function sliders() {
  return [Number(document.getElementById("conf").value), Number(document.getElementById("iou").value)];
}

// What stands in for an image the service reads but the browser cannot show (TIFF in
// Chromium and Firefox): the boxes are still drawn, at the image's proportions.
function noPreview(W, H) {
  return el("div", { class: "no-preview", style: `aspect-ratio: ${W} / ${H}` },
    "This browser cannot show this image's format; the boxes and the table are the service's answer.");
}

async function detectFile(file) {
  const form = new FormData();
  form.append("image", file, file.name || "pasted.png");
  const q = new URLSearchParams({ conf_threshold: FLOOR, iou_threshold: 1, max_detections: 1000, include_raw: true });
  const result = await api(`/v1/detect?${q}`, { method: "POST", body: form });
  return { file, url: URL.createObjectURL(file), result, truth: [] };
}

export async function addFiles(files) {
  const images = [...files].filter((f) => f.type.startsWith("image/") || /\.(jpe?g|png|webp|bmp|gif|tiff?|avif)$/i.test(f.name));
  if (!images.length) { toast("Those are not images (JPEG, PNG, WebP, BMP, GIF, TIFF or AVIF)."); return; }
  const status = document.getElementById("drop-help");
  const old = status.innerHTML;
  status.textContent = `Detecting in ${images.length} image(s)…`;
  try {
    for (const f of images) {
      const done = await guarded(() => detectFile(f));
      if (done) state.images.unshift(done);
    }
  } finally {
    status.innerHTML = old;
  }
  renderAll();
}

function renderAll() {
  const [conf, iouMax] = sliders();
  document.getElementById("conf-value").textContent = conf.toFixed(2);
  document.getElementById("iou-value").textContent = iouMax.toFixed(2);
  const out = document.getElementById("results");
  out.replaceChildren(...state.images.map((img, i) => renderOne(img, i, conf, iouMax)));
}

// Above the box's top left corner; moved down a line at a time while it would cover a
// label already placed (13 px type: about 8 px a character, 16 px a line).
export function labelPosition(b, chars, unit, placed) {
  const x = b.x1 + 3 * unit, w = chars * 8 * unit, h = 16 * unit;
  let y = Math.max(b.y1 - 4 * unit, 14 * unit);
  const covers = (p) => x < p.x + p.w && p.x < x + w && Math.abs(y - p.y) < h;
  for (let tries = 0; tries < 8 && placed.some(covers); tries++) y += h;
  placed.push({ x, y, w });
  return { x, y };
}

function renderOne(img, index, conf, iouMax) {
  const { result } = img;
  const W = result.image.width, H = result.image.height;
  const shown = filter(result.detections, conf, iouMax, state.hidden);
  // Labels in the image's own units, sized for the stage's width (at most 640 px).
  const unit = W / 640;
  const overlay = svg("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none",
    class: "overlay", "data-width": W, "data-height": H, role: "img",
    "aria-label": `${shown.length} detections` });
  const placed = [];  // label boxes already drawn, so that no two labels cover each other
  for (const d of shown) {
    const b = d.box;
    const g = svg("g", { class: "box", "data-class": d.class_name, "data-confidence": d.confidence.toFixed(4),
      "data-x1": b.x1.toFixed(1), "data-y1": b.y1.toFixed(1), "data-x2": b.x2.toFixed(1), "data-y2": b.y2.toFixed(1) });
    g.append(svg("rect", { x: b.x1, y: b.y1, width: b.x2 - b.x1, height: b.y2 - b.y1, stroke: color(d.class_id) }));
    const text = `${d.class_name} ${d.confidence.toFixed(2)}`;
    const at = labelPosition(b, text.length, unit, placed);
    const label = svg("text", { x: at.x, y: at.y, "font-size": 13 * unit, "stroke-width": 3 * unit });
    label.textContent = text;
    g.append(label);
    overlay.append(g);
  }
  for (const t of img.truth) overlay.append(truthRect(t, unit));
  const drawing = el("input", { type: "checkbox", id: `draw-${index}`, checked: !!img.drawing });
  const cls = el("select", { id: `draw-class-${index}` },
    ...state.classes.map((n, k) => el("option", { value: k, selected: k === (img.drawClass ?? 0) }, n)));
  overlay.classList.toggle("drawing", !!img.drawing);
  drawing.addEventListener("change", () => { img.drawing = drawing.checked; overlay.classList.toggle("drawing", drawing.checked); });
  cls.addEventListener("change", () => { img.drawClass = Number(cls.value); });
  enableDrawing(overlay, img, () => img.drawing, () => img.drawClass ?? 0);
  const t = result.timing_ms;
  const rows = shown.map((d) => el("tr", {},
    el("td", {}, el("span", { class: "swatch", style: `background:${color(d.class_id)}` }), " ", d.class_name),
    el("td", { class: "num" }, d.confidence.toFixed(3)),
    el("td", { class: "num" }, `${d.box.x1.toFixed(0)}, ${d.box.y1.toFixed(0)}, ${d.box.x2.toFixed(0)}, ${d.box.y2.toFixed(0)}`)));
  return el("article", { class: "result", "data-index": index },
    el("div", {},
      el("div", { class: "stage" }, el("img", { src: img.url, alt: `uploaded image ${img.file.name || ""}`, width: W, height: H, onerror: (e) => e.target.replaceWith(noPreview(W, H)) }), overlay),
      el("fieldset", {}, el("legend", {}, "Score this image against boxes you draw"),
        el("label", { class: "check", for: `draw-${index}` }, drawing, "Draw truth boxes on the image (drag)"),
        el("label", { for: `draw-class-${index}` }, "Class"), cls,
        el("div", { class: "row" },
          el("button", { type: "button", class: "score-drawn", onclick: () => scoreDrawn(img) }, "Score the raw grid against them"),
          el("button", { type: "button", onclick: () => { img.truth = []; renderAll(); } }, "Clear drawn boxes")),
        el("p", { class: "meta" }, `${img.truth.length} drawn`))),
    el("div", {},
      el("p", { class: "meta answered-by" }, `Answered by ${result.model.name} v${result.model.version} · ${W}×${H}`),
      el("p", { class: "meta timing" }, `decode ${t.decode.toFixed(1)} ms · preprocess ${t.preprocess.toFixed(1)} · queue ${t.queue.toFixed(1)} · inference ${t.inference.toFixed(1)} · postprocess ${t.postprocess.toFixed(1)}`),
      el("table", { class: "detections" },
        el("caption", { class: "visually-hidden" }, "Detections"),
        el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "Class"), el("th", { scope: "col", class: "num" }, "Score"), el("th", { scope: "col", class: "num" }, "Box (x1, y1, x2, y2)"))),
        el("tbody", {}, ...rows)),
      shown.length ? null : nothingShown(result, iouMax)));
}

// Nothing passes the slider: say what scored highest below it, and offer to show it (a
// shape that fills the picture can score under the calibrated threshold).
function nothingShown(result, iouMax) {
  const best = filter(result.detections, 0, iouMax, state.hidden)[0];
  if (!best) return el("p", { class: "none-shown" }, "No detection at this confidence.");
  const from = Math.floor(best.confidence * 100) / 100; // the slider's step, at or below it
  return el("p", { class: "none-shown" },
    `No detection at this confidence. The highest below it: ${best.class_name}, ${best.confidence.toFixed(2)}. `,
    el("button", { type: "button", class: "show-best", onclick: () => setConf(from) }, `Show from ${from.toFixed(2)}`));
}

function setConf(value) {
  document.getElementById("conf").value = value;
  state.confTouched = true;
  renderAll();
}

function truthRect(t, unit) {
  const g = svg("g", { class: "truth", "data-class-id": t.class_id });
  g.append(svg("rect", { x: t.x1, y: t.y1, width: t.x2 - t.x1, height: t.y2 - t.y1 }));
  const label = svg("text", { x: t.x1 + 3 * unit, y: t.y2 - 4 * unit, "font-size": 13 * unit, fill: "#fff" });
  label.textContent = state.classes[t.class_id] ?? t.class_id;
  g.append(label);
  return g;
}

function enableDrawing(overlay, img, active, classId) {
  let start = null, rect = null;
  const point = (e) => {
    const r = overlay.getBoundingClientRect();
    const W = img.result.image.width, H = img.result.image.height;
    return [Math.min(Math.max((e.clientX - r.left) / r.width, 0), 1) * W,
      Math.min(Math.max((e.clientY - r.top) / r.height, 0), 1) * H];
  };
  overlay.addEventListener("pointerdown", (e) => {
    if (!active()) return;
    e.preventDefault();
    overlay.setPointerCapture(e.pointerId);
    start = point(e);
    rect = svg("rect", { class: "pending", x: start[0], y: start[1], width: 0, height: 0, fill: "none", stroke: "#fff", "stroke-dasharray": "6 4" });
    overlay.append(rect);
  });
  overlay.addEventListener("pointermove", (e) => {
    if (!start) return;
    const [x, y] = point(e);
    rect.setAttribute("x", Math.min(x, start[0])); rect.setAttribute("y", Math.min(y, start[1]));
    rect.setAttribute("width", Math.abs(x - start[0])); rect.setAttribute("height", Math.abs(y - start[1]));
  });
  overlay.addEventListener("pointerup", (e) => {
    if (!start) return;
    const [x, y] = point(e);
    const box = { class_id: classId(), x1: Math.min(x, start[0]), y1: Math.min(y, start[1]), x2: Math.max(x, start[0]), y2: Math.max(y, start[1]) };
    start = null;
    rect.remove();
    if (box.x2 - box.x1 > 3 && box.y2 - box.y1 > 3) img.truth.push(box);
    renderAll();
  });
}

export function initDetect() {
  const input = document.getElementById("image-input");
  const drop = document.getElementById("drop");
  input.addEventListener("change", () => { addFiles(input.files); input.value = ""; });
  drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); input.click(); } });
  for (const ev of ["dragenter", "dragover"]) drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.add("over"); });
  for (const ev of ["dragleave", "drop"]) drop.addEventListener(ev, () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); addFiles(e.dataTransfer.files); });
  document.addEventListener("paste", (e) => {
    const files = [...(e.clipboardData?.files || [])];
    if (files.length) { location.hash = "#detect"; addFiles(files); }
  });
  for (const id of ["conf", "iou"]) document.getElementById(id).addEventListener("input", renderAll);
  document.getElementById("conf").addEventListener("input", () => { state.confTouched = true; });
  document.getElementById("try-sample").addEventListener("click", () => guarded(async () => {
    const r = await fetch("/console/sample.jpg");
    await addFiles([new File([await r.blob()], "sample.jpg", { type: "image/jpeg" })]);
  }));
  renderAll();
}
