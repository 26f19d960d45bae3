// Score: the loss of predictions against labels, its five terms and per-image rows;
// and the loop from detect: the raw grid of an image against boxes drawn on it.

import { api, el, guarded, toast } from "./api.js";

const TERMS = ["coord_xy", "coord_wh", "obj", "noobj", "class"];
let grid = null; // the served model's {S, B, C}

export function setGrid(g) { grid = g; }

function example() {
  const { S, B, C } = grid || { S: 7, B: 2, C: 5 };
  // Every cell predicts a faint box; the one holding the object predicts it well.
  const cell = () => Array.from({ length: 5 * B + C }, (_, i) => (i < 5 * B ? 0.1 : 1 / C));
  const preds = Array.from({ length: S }, () => Array.from({ length: S }, cell));
  const r = Math.floor(S / 2);
  preds[r][r].splice(0, 5, 0.5, 0.5, Math.sqrt(0.3), Math.sqrt(0.2), 0.9);
  return {
    predictions: [preds],
    labels: [[{ class_id: 0, box: [(r + 0.5) / S, (r + 0.5) / S, 0.3, 0.2] }]],
    grid: { S, B, C },
    metrics: true,
  };
}

export function showResult(res, note = "") {
  const fmt = (v) => (v === null || v === undefined ? "–" : Number(v).toFixed(4));
  const out = document.getElementById("score-result");
  out.replaceChildren(el("div", {},
    el("h3", {}, "Result"),
    note ? el("p", { class: "meta" }, note) : null,
    el("p", {}, "Loss (mean over images): ", el("strong", { id: "score-total" }, fmt(res.loss))),
    el("p", { class: "meta", title: "sum of delta² over the batch: λcoord·coord + obj + λnoobj·noobj + class (docs/loss.md)" },
      "darknet's cost for the same outputs (summed): ", el("span", { id: "score-darknet" }, fmt(res.darknet_cost))),
    el("table", { id: "score-terms" },
      el("caption", {}, "Terms (means over images)"),
      el("thead", {}, el("tr", {}, ...TERMS.map((t) => el("th", { scope: "col", class: "num" }, t)))),
      el("tbody", {}, el("tr", {}, ...TERMS.map((t) => el("td", { class: "num" }, fmt(res.terms[t])))))),
    el("table", { id: "score-per-image" },
      el("caption", {}, "Per image"),
      el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "#"), el("th", { scope: "col", class: "num" }, "loss"),
        ...TERMS.map((t) => el("th", { scope: "col", class: "num" }, t)),
        el("th", { scope: "col", class: "num" }, "objects"), el("th", { scope: "col", class: "num" }, "dropped"))),
      el("tbody", {}, ...res.per_image.map((p, i) => el("tr", {}, el("td", {}, String(i)), el("td", { class: "num" }, fmt(p.loss)),
        ...TERMS.map((t) => el("td", { class: "num" }, fmt(p.terms[t]))),
        el("td", { class: "num" }, String(p.objects)), el("td", { class: "num" }, String(p.dropped_objects)))))),
    res.metrics ? el("p", {}, `mAP@0.5 of the decoded predictions: ${fmt(res.metrics.map50)}`) : null));
}

/** The loop between the two endpoints: detect's raw grid, scored against drawn boxes. */
export async function scoreDrawn(img) {
  if (!img.truth.length) { toast("Draw at least one box on the image first (tick 'Draw truth boxes', then drag)."); return; }
  const W = img.result.image.width, H = img.result.image.height;
  const labels = img.truth.map((t) => ({
    class_id: t.class_id,
    box: [(t.x1 + t.x2) / 2 / W, (t.y1 + t.y2) / 2 / H, (t.x2 - t.x1) / W, (t.y2 - t.y1) / H],
  }));
  const res = await guarded(() => api("/v1/loss", { method: "POST", json: { predictions: [img.result.raw], labels: [labels], metrics: true } }));
  if (!res) return;
  document.getElementById("score-json").value = JSON.stringify({ predictions: "(the raw grid of the detect image)", labels: [labels] }, null, 1);
  showResult(res, `The detect image's raw grid (${img.result.model.name} v${img.result.model.version}) against the ${labels.length} box(es) you drew.`);
  location.hash = "#score";
}

export function initScore() {
  const text = document.getElementById("score-json");
  document.getElementById("score-example").addEventListener("click", () => {
    text.value = JSON.stringify(example());
  });
  document.getElementById("score-run").addEventListener("click", () => guarded(async () => {
    let body;
    try { body = JSON.parse(text.value); } catch (e) { toast(`The request is not JSON: ${e.message}`); return; }
    showResult(await api("/v1/loss", { method: "POST", json: body }));
  }));
  document.getElementById("score-files").addEventListener("click", () => guarded(async () => {
    const npy = document.getElementById("score-npy").files[0];
    const labels = document.getElementById("score-labels").files[0];
    if (!npy || !labels) { toast("Pick a predictions .npy file and a labels .json file."); return; }
    const form = new FormData();
    form.append("predictions", npy, npy.name);
    form.append("labels", await labels.text());
    showResult(await api("/v1/loss", { method: "POST", body: form }));
  }));
}
