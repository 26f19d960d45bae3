// Models: every version, which one serves; activate and roll back in one click. The
// header's "serving" line follows the API on every open page (polled each second).

import { api, el, fmtTime, guarded, toast } from "./api.js";

let onModel = () => {};
let last = "";

export function onServedModel(fn) { onModel = fn; }

function fmt(v) { return v === null || v === undefined ? "–" : Number(v).toFixed(4); }

function dataset(d) {
  if (!d) return "–";
  if (typeof d === "string") return d;
  return [d.format, d.dataset_id || d.path || (d.images ? `${d.images} images` : "")].filter(Boolean).join(" ");
}

// Two class names are one class when they match but for case, spaces, "_" and "-", as
// the service matches them (model.config.class_key).
const classKey = (name) => name.replace(/[_-]/g, " ").trim().split(/\s+/).join(" ").toLowerCase();

// The version's classes; those the serving version lacks are marked, so a version that
// learned a new class (or lost one) shows it.
function classes(v, active) {
  if (!v.classes) return "–";
  const served = active?.classes ? new Set(active.classes.map(classKey)) : null;
  return el("span", { title: `${v.classes.length} classes` }, ...v.classes.flatMap((c, i) => [
    i ? ", " : "", served && !served.has(classKey(c)) ? el("strong", { title: "not in the serving version" }, c) : c]));
}

async function activate(v) {
  await guarded(async () => {
    await api(`/v1/models/${v}/activate`, { method: "POST" });
    toast(`Version ${v} is now serving.`, "info");
    await refreshModels();
  });
}

// Through api(), not a plain link: where reads need a key, a link would not carry it.
async function download(v) {
  await guarded(async () => {
    const r = await api(`/v1/models/${v}/files/model.onnx`, { raw: true });
    const url = URL.createObjectURL(await r.blob());
    el("a", { href: url, download: `yolov1-v${v}-model.onnx` }).click();
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
  });
}

export async function refreshModels() {
  let m;
  try { m = await api("/v1/models"); } catch (e) {
    document.getElementById("serving").textContent = `Model unavailable: ${e.message}`;
    return;
  }
  const a = m.active;
  const serving = document.getElementById("serving");
  serving.textContent = `Serving ${a.name} v${a.version} on ${m.provider.replace("ExecutionProvider", "")}`
    + (a.precision === "int8" ? ", int8" : "");
  serving.title = a.precision_reason || "";
  serving.dataset.version = a.version;
  onModel(a);
  const key = JSON.stringify(m.versions) + a.version;
  if (key === last) return;
  last = key;
  const note = document.getElementById("models-note");
  note.textContent = m.versions.length ? "" : "This server has no model store (YOLOV1_MODEL_STORE): it serves one file.";
  const active = m.versions.find((v) => v.version === a.version);
  const body = document.querySelector("#models-table tbody");
  body.replaceChildren(...m.versions.slice().reverse().map((v) => {
    const isActive = v.version === a.version;
    let state;
    if (isActive) state = el("strong", {}, "serving");
    else if (active && v.version === active.parent) {
      state = el("button", { type: "button", "data-activate": v.version, onclick: () => activate(v.version) }, `Roll back to v${v.version}`);
    } else state = el("button", { type: "button", "data-activate": v.version, onclick: () => activate(v.version) }, "Activate");
    return el("tr", { "data-version": v.version, class: isActive ? "active" : null },
      el("td", {}, `v${v.version}`), el("td", { class: "wide" }, v.name ?? "–"), el("td", {}, v.parent ? `v${v.parent}` : "–"),
      el("td", { class: "wide" }, dataset(v.dataset)), el("td", { class: "wide" }, classes(v, active)),
      el("td", { class: "num" }, fmt(v.val_map50)),
      el("td", { class: "wide" }, v.created_at ? fmtTime(v.created_at) : "–"), el("td", {}, state),
      el("td", {}, el("button", { type: "button", "data-download": v.version, onclick: () => download(v.version),
        "aria-label": `Download version ${v.version} as ONNX` }, "ONNX")));
  }));
}
