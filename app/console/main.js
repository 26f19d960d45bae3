// The console: four views behind the hash (#detect, #score, #jobs, #job/ID, #models).
// No state on the server beyond the API's own; the API key lives in sessionStorage.

import { askKey, key } from "./api.js";
import { initDetect, setClasses, setDefaultConf } from "./detect.js";
import { initJobs, leaveJob, refreshJobs, showJob } from "./jobs.js";
import { onServedModel, refreshModels } from "./models.js";
import { initScore, setGrid } from "./score.js";

let jobsTimer = null;

function route() {
  const hash = location.hash.slice(1) || "detect";
  const [view, arg] = hash.split("/");
  const name = ["detect", "score", "jobs", "job", "models"].includes(view) ? view : "detect";
  for (const s of document.querySelectorAll("[data-view]")) s.hidden = s.dataset.view !== name;
  for (const a of document.querySelectorAll("nav a[data-tab]")) {
    const on = a.dataset.tab === name || (name === "job" && a.dataset.tab === "jobs");
    if (on) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  }
  clearInterval(jobsTimer);
  if (name !== "job") leaveJob();
  if (name === "jobs") { refreshJobs(); jobsTimer = setInterval(refreshJobs, 2000); }
  if (name === "job" && arg) showJob(arg);
  if (name === "models") refreshModels();
}

function init() {
  onServedModel((m) => { setClasses(m.classes); setGrid(m.grid); setDefaultConf(m.conf_threshold); });
  initDetect();
  initScore();
  initJobs();
  document.getElementById("key-button").addEventListener("click", () => askKey());
  document.getElementById("key-button").textContent = key() ? "API key (set)" : "API key";
  window.addEventListener("hashchange", route);
  refreshModels();
  setInterval(refreshModels, 1000);
  route();
}

init();
