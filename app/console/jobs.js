// Jobs: upload a data set (with progress), start a job, the live list; one job's page
// follows its event stream: status, progress, ETA, curves that grow, cancel.

import { api, el, events, fmtTime, guarded, toast, upload } from "./api.js";
import { lineChart } from "./chart.js";

let following = null; // the AbortController of the job page's stream

function percent(job) {
  const p = job.progress || {};
  if (job.status === "succeeded") return 1;
  if (!p.epochs || !p.steps) return 0;
  return Math.min(1, ((p.epoch - 1) * p.steps + p.step) / (p.epochs * p.steps));
}

function outcome(job) {
  if (job.error) return job.error;
  const r = job.result;
  if (!r) return "";
  return r.reason || "";
}

export async function refreshJobs() {
  const body = document.querySelector("#jobs-table tbody");
  let list;
  try {
    list = await api("/v1/jobs?limit=50");
  } catch (e) {
    body.replaceChildren(el("tr", {}, el("td", { colspan: 5 }, `Jobs are unavailable: ${e.message}`)));
    return;
  }
  body.replaceChildren(...list.items.map((j) => el("tr", { "data-job": j.id },
    el("td", {}, el("a", { href: `#job/${j.id}` }, j.id.slice(0, 8))),
    el("td", { class: `status-${j.status}` }, j.status),
    el("td", {}, el("progress", { max: 1, value: percent(j), "aria-label": `progress of ${j.id.slice(0, 8)}` })),
    el("td", { class: "wide" }, fmtTime(j.created_at)),
    el("td", {}, outcome(j)))));
  if (!list.items.length) body.append(el("tr", {}, el("td", { colspan: 5 }, "No job yet.")));
}

function renderJob(job) {
  const p = job.progress || {};
  document.getElementById("job-title").textContent = `Job ${job.id.slice(0, 8)}`;
  const status = document.getElementById("job-status");
  const started = job.status === "running" && p.step > 0;
  status.textContent = job.status + (started ? ` (epoch ${p.epoch} of ${p.epochs})`
    : job.status === "running" ? " (reading the data, scoring the base model)" : "");
  status.className = `status-${job.status}`;
  status.dataset.status = job.status;
  const frac = percent(job);
  document.getElementById("job-progress").value = frac;
  document.getElementById("job-progress-text").textContent = `${Math.round(frac * 100)}%`;
  document.getElementById("job-eta").textContent = started && p.eta_s !== undefined ? `${Math.round(p.eta_s)} s` : "–";
  document.getElementById("job-speed").textContent = p.images_per_s ? `${p.images_per_s.toFixed(1)} images/s` : "–";
  const r = job.result;
  document.getElementById("job-outcome").textContent = job.error ? `Failed: ${job.error}` :
    r ? r.reason : "–";  // the reason says the baseline, the kept epoch and what was done
  document.getElementById("job-cancel").disabled = !["queued", "running"].includes(job.status);
  const m = job.metrics || [];
  lineChart(document.getElementById("chart-loss"), [
    { name: "train", color: "#0b57d0", points: m.filter((e) => e.epoch > 0).map((e) => [e.epoch, e.train?.total ?? null]) },
    { name: "validation", color: "#e37400", points: m.map((e) => [e.epoch, e.val?.total ?? null]) },
  ]);
  const kept = r?.best_epoch ? { x: r.best_epoch, label: `kept: epoch ${r.best_epoch}` } : null;
  lineChart(document.getElementById("chart-map"), [
    { name: "val mAP@0.5", color: "#146c2e", points: m.map((e) => [e.epoch, e.val_map ?? null]) },
  ], { yMin: 0, yMax: 1, mark: kept });
  const skipped = job.info?.skipped || [];
  document.getElementById("job-log").textContent = skipped.length ? skipped.join("\n") : "none";
}


export async function showJob(id) {
  following?.abort();
  const ctrl = new AbortController();
  following = ctrl;
  const job = await guarded(() => api(`/v1/jobs/${id}`));
  if (!job || ctrl.signal.aborted) return;
  renderJob(job);
  const cancel = document.getElementById("job-cancel");
  cancel.onclick = () => guarded(async () => { renderJob(await api(`/v1/jobs/${id}`, { method: "DELETE" })); toast("Cancel requested.", "info"); });
  let last = job.rev;
  // Reconnect with Last-Event-ID after a drop, as EventSource would.
  while (!ctrl.signal.aborted) {
    try {
      for await (const ev of events(`/v1/jobs/${id}/events`, { signal: ctrl.signal, lastEventId: last })) {
        if (ev.event === "job") { const j = JSON.parse(ev.data); last = j.rev; renderJob(j); }
        if (ev.event === "end") return;
      }
      return;
    } catch (e) {
      if (ctrl.signal.aborted) return;
      await new Promise((r) => setTimeout(r, 1500));
    }
  }
}

export function leaveJob() { following?.abort(); following = null; }

// The fields the form shows itself; every other job field of the API's schema goes under
// "All options", built from /openapi.json so the form never falls behind the API.
const SHOWN = { epochs: "job-epochs", batch_size: "job-batch", learning_rate: "job-lr" };
const NOT_OPTIONS = new Set(["dataset", "auto_activate", ...Object.keys(SHOWN)]);

function numberOrUndefined(v) {
  return v.trim() === "" ? undefined : Number(v);
}

// An option's value as the API takes it; undefined (an empty field) leaves the default.
function optionValue(input) {
  const v = input.value;
  if (v === "") return undefined;
  if (input.dataset.kind === "boolean") return v === "true";
  if (input.dataset.kind === "integer" || input.dataset.kind === "number") return numberOrUndefined(v);
  return v;
}

// Only the fields of the chosen data source are shown: a count for generated shapes,
// an id (an upload fills it in) or a folder, with its format, for the others.
function showSourceFields() {
  const source = document.getElementById("job-source").value;
  for (const box of document.querySelectorAll("#job-form [data-source]")) {
    box.hidden = !box.dataset.source.split(" ").includes(source);
  }
  const upload = source === "upload";
  document.getElementById("job-dataset-label").textContent = upload ? "Data set id" : "Folder under the data root";
  document.getElementById("job-dataset").placeholder = upload ? "filled in by an upload" : "e.g. my-shapes (YOLOV1_DATA_ROOT/my-shapes)";
}

function jobRequest() {
  const source = document.getElementById("job-source").value;
  const ds = document.getElementById("job-dataset").value.trim();
  const format = document.getElementById("job-format").value;
  const dataset = source === "shapes" ? { format: "shapes", images: Number(document.getElementById("job-images").value) }
    : source === "upload" ? { format, dataset_id: ds } : { format, path: ds };
  // Empty fields are left out: the service's fine-tuning defaults apply.
  const request = { dataset, auto_activate: document.getElementById("job-activate").checked };
  for (const [name, id] of Object.entries(SHOWN)) request[name] = numberOrUndefined(document.getElementById(id).value);
  for (const input of document.querySelectorAll("#job-options [data-field]")) {
    request[input.dataset.field] = optionValue(input);
  }
  return request;
}

// One job field's input: a number with the schema's bounds, or a choice (booleans and
// enums) whose first entry is the default; the description is its hint.
function optionInput(name, prop) {
  const schema = (prop.anyOf || [prop]).find((s) => s.type !== "null") || prop;
  const id = `job-opt-${name}`;
  const dflt = prop.default === undefined || prop.default === null ? null : String(prop.default);
  let input;
  if (schema.type === "boolean" || schema.enum) {
    const values = schema.enum || ["true", "false"];
    input = el("select", { id, dataset: { field: name, kind: schema.type } },
      el("option", { value: "" }, dflt === null ? "default" : `default (${dflt})`),
      values.map((v) => el("option", { value: String(v) }, String(v))));
  } else {
    const integer = schema.type === "integer";
    input = el("input", {
      id, type: "number", dataset: { field: name, kind: schema.type },
      min: schema.minimum ?? schema.exclusiveMinimum, max: schema.maximum ?? schema.exclusiveMaximum,
      step: integer ? (schema.multipleOf || 1) : "any",
      placeholder: dflt === null ? (prop.description ? "default" : "the service's default") : `default ${dflt}`,
    });
  }
  const hint = prop.description ? el("span", { class: "hint", id: `${id}-hint` }, prop.description) : null;
  if (hint) input.setAttribute("aria-describedby", hint.id);
  // Labelled with the API's own name, so what is set here can be repeated through the API.
  return [el("label", { for: id }, el("code", {}, name)), input, hint];
}

// The defaults come from the API's own schema, so the form says what an empty field means.
async function showDefaults() {
  try {
    const spec = await (await fetch("/openapi.json")).json();
    const props = spec.components.schemas.JobRequest.properties;
    for (const [name, id] of Object.entries(SHOWN)) {
      if (props[name]?.default !== undefined) document.getElementById(id).placeholder = `default ${props[name].default}`;
    }
    const options = Object.entries(props).filter(([name]) => !NOT_OPTIONS.has(name));
    document.getElementById("job-options").replaceChildren(...options.flatMap(([n, p]) => optionInput(n, p)));
  } catch { /* the generic placeholders stay; the options stay unlisted */ }
}

export function initJobs() {
  showDefaults();
  document.getElementById("job-source").addEventListener("change", showSourceFields);
  showSourceFields();
  document.getElementById("job-form").addEventListener("submit", (e) => {
    e.preventDefault();
    guarded(async () => {
      const r = await api("/v1/jobs", { method: "POST", json: jobRequest() });
      toast(`Job ${r.id.slice(0, 8)} queued.`, "info");
      location.hash = `#job/${r.id}`;
    });
  });
  document.getElementById("upload-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const file = document.getElementById("upload-file").files[0];
    if (!file) return;
    const form = new FormData();
    form.append("file", file, file.name);
    const fmtSel = document.getElementById("upload-format").value;
    if (fmtSel) form.append("format", fmtSel);
    const bar = document.getElementById("upload-progress");
    bar.hidden = false; bar.value = 0;
    const out = document.getElementById("upload-result");
    out.textContent = "Uploading…";
    guarded(async () => {
      try {
        const s = await upload("/v1/datasets", form, (f) => { bar.value = f; });
        bar.value = 1;
        out.replaceChildren(el("p", {}, `Data set ${s.id}: ${s.images} images, ${s.boxes} boxes (${s.format}).`),
          s.skipped.length ? el("pre", {}, s.skipped.join("\n")) : null);
        document.getElementById("job-source").value = "upload";
        document.getElementById("job-dataset").value = s.id;
        document.getElementById("job-format").value = s.format;
        showSourceFields();
      } catch (err) {
        out.textContent = "";
        throw err;
      }
    });
  });
}
