// Talking to the API: the key (kept in this tab only), errors as the API words them,
// uploads with progress, and server-sent events read through fetch (EventSource
// cannot send the key).

const KEY = "yolov1-api-key";

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export function key() {
  return sessionStorage.getItem(KEY) || "";
}

function authHeaders(extra = {}) {
  const h = { ...extra };
  if (key()) h.Authorization = `Bearer ${key()}`;
  return h;
}

/** The API's own message: FastAPI's detail (text or a list of {loc, msg}), or KServe's error. */
export function describe(body, status) {
  if (body && typeof body === "object") {
    const d = body.detail ?? body.error;
    if (typeof d === "string") return d;
    if (Array.isArray(d)) {
      return d.map((e) => `${(e.loc || []).filter((p) => p !== "body").join(".")}: ${e.msg}`).join("; ");
    }
  }
  return `HTTP ${status}`;
}

async function errorOf(r) {
  let body = null;
  try { body = await r.json(); } catch { /* not JSON */ }
  return new ApiError(r.status, describe(body, r.status));
}

let asking = null;
/** Ask for a key once (one dialog for all requests waiting on it); true if one was given. */
export function askKey(why) {
  if (asking) return asking;
  const dialog = document.getElementById("key-dialog");
  const input = document.getElementById("key-input");
  document.getElementById("key-why").textContent = why ||
    "This server asks for a key (YOLOV1_API_KEYS) to change things: start or cancel jobs, " +
    "upload data sets, activate versions. It is kept in this tab only (sessionStorage).";
  input.value = key();
  asking = new Promise((resolve) => {
    dialog.addEventListener("close", () => {
      asking = null;
      if (dialog.returnValue === "ok" && input.value.trim()) {
        sessionStorage.setItem(KEY, input.value.trim());
        document.getElementById("key-button").textContent = "API key (set)";
        resolve(true);
      } else resolve(false);
    }, { once: true });
  });
  dialog.showModal();
  input.focus();
  return asking;
}

const UNAUTHORIZED = "The server refused this without a valid API key (401). " +
  "Enter one of the keys set in YOLOV1_API_KEYS; it stays in this tab only.";

/** fetch with the key; JSON in and out; a 401 asks for a key and tries once more. */
export async function api(path, { method = "GET", json, body, headers = {}, raw = false } = {}) {
  for (let attempt = 0; ; attempt++) {
    const h = authHeaders(headers);
    let payload = body;
    if (json !== undefined) {
      payload = JSON.stringify(json);
      h["Content-Type"] = "application/json";
    }
    const r = await fetch(path, { method, headers: h, body: payload });
    if (r.status === 401 && attempt === 0 && (await askKey(UNAUTHORIZED))) continue;
    if (!r.ok) throw await errorOf(r);
    if (raw) return r;
    return (r.headers.get("content-type") || "").includes("json") ? r.json() : r;
  }
}

/** POST a form with upload progress (fetch has none): resolves to the JSON answer. */
export function upload(path, form, onProgress) {
  const send = () => new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", path);
    if (key()) xhr.setRequestHeader("Authorization", `Bearer ${key()}`);
    xhr.upload.onprogress = (e) => e.lengthComputable && onProgress(e.loaded / e.total);
    xhr.onerror = () => reject(new ApiError(0, "the upload failed: the connection broke"));
    xhr.onload = () => {
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch { /* not JSON */ }
      if (xhr.status >= 200 && xhr.status < 300) resolve(body);
      else reject(new ApiError(xhr.status, describe(body, xhr.status)));
    };
    xhr.send(form);
  });
  return send().catch(async (e) => {
    if (e.status === 401 && (await askKey(UNAUTHORIZED))) return send();
    throw e;
  });
}

/** Server-sent events: yields {event, id, data}; ends with the stream or the signal. */
export async function* events(path, { signal, lastEventId } = {}) {
  const headers = authHeaders(lastEventId ? { "Last-Event-ID": String(lastEventId) } : {});
  const r = await fetch(path, { headers, signal });
  if (!r.ok) throw await errorOf(r);
  const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += value;
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      const ev = { event: "message", id: null, data: [] };
      for (const line of block.split("\n")) {
        if (line.startsWith(":")) continue; // keep-alive
        const i = line.indexOf(":");
        const field = i < 0 ? line : line.slice(0, i);
        const val = i < 0 ? "" : line.slice(i + 1).replace(/^ /, "");
        if (field === "event") ev.event = val;
        else if (field === "id") ev.id = val;
        else if (field === "data") ev.data.push(val);
      }
      if (ev.data.length) yield { ...ev, data: ev.data.join("\n") };
    }
  }
}

export function toast(text, kind = "error") {
  const t = document.getElementById("toast");
  t.textContent = text;
  t.className = kind === "error" ? "" : "info";
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.hidden = true; }, kind === "error" ? 8000 : 3000);
}

/** Run an action; an error shows as the API's message, never swallowed. */
export async function guarded(fn) {
  try {
    return await fn();
  } catch (e) {
    toast(e instanceof ApiError ? e.message : `Error: ${e.message}`);
    return undefined;
  }
}

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "dataset") Object.assign(node.dataset, v);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  node.append(...children.flat().filter((c) => c !== null && c !== undefined));
  return node;
}

export function fmtTime(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  return new Date(seconds * 1000).toLocaleString();
}
