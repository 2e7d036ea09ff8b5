// The prunesearch page: jobs, each job's Pareto front as an SVG plot, a plan's per-layer bar chart and exports.
// Plain JavaScript on the /v1 JSON routes; no build step and nothing fetched from outside the server.
"use strict";

const TOKEN_KEY = "prunesearch.token";
const POLL_MS = 3000;
const EXPORT_POLL_MS = 2000;
const MAX_TRIALS = 2000; // trials drawn per job (pages of 500)
const SVG_NS = "http://www.w3.org/2000/svg";
const FINAL_EXPORT = ["succeeded", "failed"];

const state = {
  jobs: [],
  jobId: null,
  view: null, // {job, pareto, trials, key}: what the job panel shows
  exports: {}, // "jobId:trial" -> the latest export record asked for from this page
  activeTrial: null,
};

// ---- HTTP ----------------------------------------------------------------------------------------------------
// Paths are relative to the page, so the service also works behind a proxy that serves it under a prefix.

function authHeaders() {
  const token = localStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: `Bearer ${token}` } : {};
}

function relative(path) {
  return path.replace(/^\//, "");
}

async function api(path, options = {}) {
  const headers = { ...authHeaders(), ...(options.headers || {}) };
  const response = await fetch(path, { ...options, headers });
  if (!response.ok) {
    let detail = response.statusText;
    try {
      const body = await response.json();
      detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    } catch (_) {
      // not JSON: keep the status text
    }
    const hint = response.status === 401 || response.status === 403 ? " (save the API token above)" : "";
    throw new Error(`${path}: ${response.status} ${detail}${hint}`);
  }
  return response.status === 204 ? null : response.json();
}

async function allTrials(jobId) {
  const trials = [];
  while (trials.length < MAX_TRIALS) {
    const page = await api(`v1/jobs/${jobId}/trials?offset=${trials.length}&limit=500`);
    trials.push(...page.items);
    if (page.items.length === 0 || trials.length >= page.total) break;
  }
  return trials;
}

function showError(error) {
  const box = document.getElementById("error");
  box.hidden = !error;
  box.textContent = error ? String(error.message || error) : "";
}

// ---- small DOM and number helpers ----------------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  node.append(...children);
  return node;
}

function svg(tag, attrs = {}, text = null) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  if (text !== null) node.textContent = text;
  return node;
}

function fmt(value, digits = 4) {
  if (value === null || value === undefined) return "–";
  if (typeof value !== "number") return String(value);
  return Math.abs(value) >= 1000 ? value.toFixed(0) : Number(value.toPrecision(digits)).toString();
}

function niceTicks(lo, hi, count = 5) {
  const span = hi - lo || Math.abs(hi) || 1;
  const raw = span / count;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * magnitude).find((s) => s >= raw);
  const ticks = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) ticks.push(Number(t.toPrecision(12)));
  return ticks;
}

function scale(lo, hi, from, to) {
  const pad = (hi - lo) * 0.06 || Math.abs(hi) * 0.1 || 1;
  const [a, b] = [lo - pad, hi + pad];
  const map = (v) => from + ((v - a) / (b - a)) * (to - from);
  map.domain = [a, b];
  return map;
}

// ---- jobs table ----------------------------------------------------------------------------------------------

function modelName(spec) {
  const path = String(spec.model || "");
  return path.split("/").filter(Boolean).pop() || path;
}

function renderJobs() {
  const body = document.querySelector("#jobs tbody");
  body.replaceChildren();
  document.getElementById("no-jobs").hidden = state.jobs.length > 0;
  for (const job of state.jobs) {
    const progress = el("progress", { max: String(job.n_trials), value: String(job.trials_done) });
    const row = el(
      "tr",
      { "data-job-id": job.id, class: job.id === state.jobId ? "selected" : "" },
      el("td", {}, el("code", {}, job.id.slice(0, 8))),
      el("td", { class: `status status-${job.status}` }, job.status),
      el("td", { class: "num" }, progress, ` ${job.trials_done} / ${job.n_trials}`),
      el("td", { class: "num" }, String(job.front_size)),
      el("td", { class: "num" }, fmt(job.hypervolume)),
      el("td", {}, modelName(job.spec)),
      el("td", {}, new Date(job.created_at).toLocaleString()),
    );
    row.addEventListener("click", () => selectJob(job.id));
    body.append(row);
  }
}

async function refreshJobs() {
  const page = await api("v1/jobs?limit=100");
  state.jobs = page.items;
  if (!state.jobId && state.jobs.length) {
    const wanted = new URLSearchParams(location.hash.slice(1)).get("job");
    const shown = state.jobs.find((j) => j.id === wanted) || state.jobs.find((j) => j.trials_done > 0) || state.jobs[0];
    state.jobId = shown.id;
  }
  renderJobs();
}

// ---- the selected job ----------------------------------------------------------------------------------------

function selectJob(jobId) {
  state.jobId = jobId;
  state.activeTrial = null;
  history.replaceState(null, "", `#job=${jobId}`);
  renderJobs();
  refreshJob(true).catch(showError);
}

async function refreshJob(force = false) {
  const job = state.jobs.find((j) => j.id === state.jobId);
  if (!job) {
    document.getElementById("job").hidden = true;
    return;
  }
  const key = `${job.id}:${job.status}:${job.trials_done}`;
  if (!force && state.view && state.view.key === key) return;
  const [pareto, trials] = await Promise.all([api(`v1/jobs/${job.id}/pareto`), allTrials(job.id)]);
  if (job.id !== state.jobId) return; // another job was picked meanwhile
  state.view = { job, pareto, trials, key };
  renderJob();
}

function qualityOf(job) {
  return (job.spec.objectives && job.spec.objectives.quality) || "kl";
}

function renderJob() {
  const { job, pareto } = state.view;
  document.getElementById("job").hidden = false;
  const kind = job.draft ? " · draft search" : "";
  document.getElementById("job-title").textContent =
    `Job ${job.id.slice(0, 8)} · ${modelName(job.spec)} on ${job.spec.hardware}${kind} · ${job.status}`;
  document.getElementById("quality-head").textContent = qualityOf(job);
  for (const head of document.querySelectorAll("#front th.draft-col")) head.hidden = !job.draft;
  drawFront();
  renderFrontTable();
  const shown = pointByTrial(state.activeTrial) || pareto.front[0];
  showPlan(shown || null);
}

function pointByTrial(trial) {
  if (trial === null || !state.view) return null;
  const { pareto, trials } = state.view;
  return (
    pareto.front.find((p) => p.trial === trial) ||
    pareto.healed_front.find((p) => p.trial === trial) ||
    trials.find((t) => t.trial === trial)
  );
}

// ---- the front plot ------------------------------------------------------------------------------------------

const PLOT = { width: 640, height: 400, left: 64, right: 16, top: 16, bottom: 48 };

function drawFront() {
  const { job, pareto, trials } = state.view;
  const quality = qualityOf(job);
  const plot = document.getElementById("front-plot");
  plot.replaceChildren();
  const done = trials.filter((t) => t.state === "complete" && t.metrics && t.metrics.latency_ms !== undefined);
  const healed = pareto.healed_front.filter((p) => p.healed && p.healed[`healed_${quality}`] !== undefined);
  const xs = [...done, ...pareto.front].map((t) => t.metrics.latency_ms);
  const ys = [
    ...[...done, ...pareto.front].map((t) => t.metrics[quality]),
    ...healed.map((p) => p.healed[`healed_${quality}`]),
  ].filter((v) => Number.isFinite(v));
  if (!xs.length || !ys.length) {
    plot.append(svg("text", { x: PLOT.width / 2, y: PLOT.height / 2, "text-anchor": "middle" }, "no finished trials yet"));
    return;
  }
  const x = scale(Math.min(...xs), Math.max(...xs), PLOT.left, PLOT.width - PLOT.right);
  const y = scale(Math.min(...ys), Math.max(...ys), PLOT.height - PLOT.bottom, PLOT.top);
  drawAxes(plot, x, y, "latency (ms)", quality);

  const frontTrials = new Set(pareto.front.map((p) => p.trial));
  for (const t of done) {
    if (frontTrials.has(t.trial) || t.baseline) continue;
    const cls = t.feasible ? "trial" : "trial infeasible";
    addPoint(plot, svg("circle", { r: 3.5 }), x(t.metrics.latency_ms), y(t.metrics[quality]), t, cls);
  }
  const line = pareto.front.map((p) => [x(p.metrics.latency_ms), y(p.metrics[quality])]);
  plot.append(svg("path", { class: "front-line", d: stepPath(line) }));
  for (const p of pareto.front) {
    if (!p.baseline) addPoint(plot, svg("circle", { r: 5 }), x(p.metrics.latency_ms), y(p.metrics[quality]), p, "front");
  }
  for (const t of done.filter((t) => t.baseline)) {
    const [px, py] = [x(t.metrics.latency_ms), y(t.metrics[quality])];
    addPoint(plot, svg("path", { d: "M0,-7 L7,0 L0,7 L-7,0 Z" }), px, py, t, "baseline");
    plot.append(svg("text", { class: "baseline-label", x: px + 9, y: py - 6 }, t.baseline));
  }
  if (healed.length) {
    const points = healed.map((p) => [x(p.metrics.latency_ms), y(p.healed[`healed_${quality}`])]);
    for (const [i, p] of healed.entries()) {
      const [hx, hy] = points[i];
      plot.append(svg("line", { class: "heal-arrow", x1: hx, y1: y(p.metrics[quality]), x2: hx, y2: hy }));
    }
    plot.append(svg("path", { class: "healed-line", d: stepPath(points) }));
    for (const [i, p] of healed.entries()) {
      const [hx, hy] = points[i];
      addPoint(plot, svg("rect", { width: 9, height: 9, x: -4.5, y: -4.5 }), hx, hy, p, "healed");
    }
  }
}

function stepPath(points) {
  // The front is fastest first: quality improves as latency grows, so draw it as a staircase.
  const sorted = [...points].sort((a, b) => a[0] - b[0]);
  return sorted.map(([px, py], i) => (i === 0 ? `M${px},${py}` : `H${px} V${py}`)).join(" ");
}

function drawAxes(plot, x, y, xLabel, yLabel) {
  const [x0, x1] = [PLOT.left, PLOT.width - PLOT.right];
  const [y0, y1] = [PLOT.height - PLOT.bottom, PLOT.top];
  const axis = svg("g", { class: "axis" });
  for (const t of niceTicks(...x.domain)) {
    const px = x(t);
    if (px < x0 - 0.5 || px > x1 + 0.5) continue;
    axis.append(svg("line", { class: "grid", x1: px, x2: px, y1: y0, y2: y1 }));
    axis.append(svg("text", { x: px, y: y0 + 16, "text-anchor": "middle" }, fmt(t, 3)));
  }
  for (const t of niceTicks(...y.domain)) {
    const py = y(t);
    if (py > y0 + 0.5 || py < y1 - 0.5) continue;
    axis.append(svg("line", { class: "grid", x1: x0, x2: x1, y1: py, y2: py }));
    axis.append(svg("text", { x: x0 - 6, y: py + 4, "text-anchor": "end" }, fmt(t, 3)));
  }
  axis.append(svg("path", { d: `M${x0},${y1} V${y0} H${x1}`, fill: "none" }));
  axis.append(svg("text", { class: "axis-label", x: (x0 + x1) / 2, y: PLOT.height - 8, "text-anchor": "middle" }, xLabel));
  const yMid = (y0 + y1) / 2;
  axis.append(
    svg("text", { class: "axis-label", x: 14, y: yMid, "text-anchor": "middle", transform: `rotate(-90 14 ${yMid})` }, yLabel),
  );
  plot.append(axis);
}

function addPoint(plot, shape, px, py, record, cls) {
  shape.setAttribute("class", `point ${cls}`);
  shape.setAttribute("transform", `translate(${px},${py})`);
  shape.dataset.trial = String(record.trial);
  const label = record.baseline ? ` (${record.baseline})` : "";
  shape.append(svg("title", {}, `trial ${record.trial}${label}`));
  shape.addEventListener("mouseenter", () => showPlan(record));
  shape.addEventListener("click", () => {
    state.activeTrial = record.trial;
    showPlan(record);
  });
  plot.append(shape);
}

// ---- the plan chart ------------------------------------------------------------------------------------------

function fullShape() {
  // The widest plan seen stands for the base model (the dense baseline, when the search ran one).
  let heads = 0;
  let ffn = 0;
  const { pareto, trials } = state.view;
  for (const record of [...trials, ...pareto.front]) {
    for (const layer of (record.plan && record.plan.layers) || []) {
      heads = Math.max(heads, layer.heads);
      ffn = Math.max(ffn, layer.ffn);
    }
  }
  return { heads: heads || 1, ffn: ffn || 1 };
}

function showPlan(record) {
  const chart = document.getElementById("plan-chart");
  const title = document.getElementById("plan-title");
  chart.replaceChildren();
  for (const node of document.querySelectorAll(".point.active, #front tr.active")) node.classList.remove("active");
  if (!record || !record.plan || !record.plan.layers) {
    title.textContent = "Plan";
    chart.append(svg("text", { x: 210, y: 150, "text-anchor": "middle" }, "hover a point to see its plan"));
    return;
  }
  for (const node of document.querySelectorAll(`[data-trial="${record.trial}"]`)) node.classList.add("active");
  const quality = qualityOf(state.view.job);
  const m = record.metrics || {};
  title.textContent =
    `Trial ${record.trial}${record.baseline ? ` (${record.baseline})` : ""}: ` +
    `${fmt(m.latency_ms)} ms, ${quality} ${fmt(m[quality])}` +
    (state.view.job.draft ? `, acceptance ${fmt(m.acceptance)}, speedup ${fmt(m.speedup)}` : "") +
    (record.plan.vocab ? `, vocab ${record.plan.vocab}` : "");
  drawPlan(chart, record.plan.layers, fullShape());
}

function drawPlan(chart, layers, full) {
  const [left, width, top] = [40, 310, 8];
  const rowHeight = Math.min(40, (300 - top - 8) / layers.length);
  const bar = (rowHeight - 6) / 2;
  for (const [i, layer] of layers.entries()) {
    const y0 = top + i * rowHeight;
    chart.append(svg("text", { x: left - 6, y: y0 + bar + 4, "text-anchor": "end" }, `L${i}`));
    if (layer.heads === 0 && layer.ffn === 0) {
      chart.append(svg("text", { class: "removed", x: left + 4, y: y0 + bar + 4 }, "layer removed"));
      continue;
    }
    const rows = [
      ["heads", layer.heads, full.heads, y0],
      ["ffn", layer.ffn, full.ffn, y0 + bar + 2],
    ];
    for (const [kind, kept, total, by] of rows) {
      chart.append(svg("rect", { class: "bar-bg", x: left, y: by, width, height: bar }));
      const rect = svg("rect", { class: `bar ${kind}`, x: left, y: by, width: (width * kept) / total, height: bar });
      rect.append(svg("title", {}, `${kind === "heads" ? "heads" : "MLP width"} ${kept} / ${total}`));
      chart.append(rect);
      const label = `${kept}/${total}`;
      chart.append(svg("text", { x: left + width + 6, y: by + bar - 2 }, label));
    }
  }
}

// ---- the front table and exports -----------------------------------------------------------------------------

function renderFrontTable() {
  const { job, pareto } = state.view;
  const quality = qualityOf(job);
  const healedByTrial = new Map(pareto.healed_front.map((p) => [p.trial, p.healed]));
  const body = document.querySelector("#front tbody");
  body.replaceChildren();
  for (const point of pareto.front) {
    const healed = healedByTrial.get(point.trial);
    const row = el(
      "tr",
      { "data-trial": String(point.trial) },
      el("td", { class: "num" }, String(point.trial)),
      el("td", { class: "num" }, fmt(point.metrics.latency_ms)),
      el("td", { class: "num" }, fmt(point.metrics[quality])),
      ...draftCells(job, point.metrics),
      el("td", { class: "num" }, healed ? fmt(healed[`healed_${quality}`]) : "–"),
      el("td", {}, point.baseline || ""),
      exportCell(job.id, point.trial),
    );
    row.addEventListener("mouseenter", () => showPlan(point));
    body.append(row);
  }
}

// A draft job's trials: expected acceptance per drafted token, and the predicted speedup of target + draft.
function draftCells(job, metrics) {
  if (!job.draft) return [];
  return [el("td", { class: "num" }, fmt(metrics.acceptance)), el("td", { class: "num" }, fmt(metrics.speedup))];
}

function exportCell(jobId, trial) {
  const cell = el("td", { class: "export-cell" });
  const button = el("button", { type: "button", class: "export", "data-trial": String(trial) }, "Export");
  button.addEventListener("click", () => requestExport(jobId, trial, cell).catch(showError));
  cell.append(button);
  const known = state.exports[`${jobId}:${trial}`];
  if (known) showExport(cell, known);
  return cell;
}

async function requestExport(jobId, trial, cell) {
  const dtype = document.getElementById("dtype").value;
  const body = JSON.stringify({ trial, dtype });
  const exp = await api(`v1/jobs/${jobId}/exports`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body,
  });
  state.exports[`${jobId}:${trial}`] = exp;
  showExport(cell, exp);
  followExport(jobId, trial, exp.id);
}

async function followExport(jobId, trial, exportId) {
  const key = `${jobId}:${trial}`;
  while (state.exports[key] && state.exports[key].id === exportId && !FINAL_EXPORT.includes(state.exports[key].status)) {
    await new Promise((resolve) => setTimeout(resolve, EXPORT_POLL_MS));
    try {
      state.exports[key] = await api(`v1/exports/${exportId}`);
    } catch (error) {
      showError(error);
      return;
    }
    const cell = document.querySelector(`#front tr[data-trial="${trial}"] .export-cell`);
    if (cell && state.jobId === jobId) showExport(cell, state.exports[key]);
  }
}

function showExport(cell, exp) {
  for (const old of cell.querySelectorAll(".export-status")) old.remove();
  const phase = exp.progress && exp.progress.phase ? ` (${exp.progress.phase})` : "";
  const status = el("span", { class: "export-status", "data-export-id": exp.id }, ` ${exp.status}${phase}`);
  if (exp.status === "succeeded" && exp.download_url) {
    const size = exp.size ? ` ${(exp.size / 1e6).toFixed(1)} MB` : "";
    const link = el("a", { href: relative(exp.download_url), download: "" }, `download${size}`);
    link.addEventListener("click", (event) => downloadWithToken(event, exp));
    status.append(" ", link);
  } else if (exp.status === "failed") {
    status.classList.add("error");
    status.title = exp.error || "";
  }
  cell.append(status);
}

async function downloadWithToken(event, exp) {
  // A plain link cannot send the Authorization header: with a token, fetch the archive and save it from memory.
  if (!localStorage.getItem(TOKEN_KEY)) return;
  event.preventDefault();
  try {
    const response = await fetch(relative(exp.download_url), { headers: authHeaders() });
    if (!response.ok) throw new Error(`${exp.download_url}: ${response.status}`);
    const url = URL.createObjectURL(await response.blob());
    const save = el("a", { href: url, download: `${exp.id}.tar` });
    document.body.append(save);
    save.click();
    save.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  } catch (error) {
    showError(error);
  }
}

// ---- start ---------------------------------------------------------------------------------------------------

let refreshing = false;

async function refresh() {
  if (refreshing) return; // a slow server: skip a beat rather than pile requests up
  refreshing = true;
  try {
    await refreshJobs();
    await refreshJob();
    showError(null);
  } catch (error) {
    showError(error);
  } finally {
    refreshing = false;
  }
}

function setUpToken() {
  const input = document.getElementById("token");
  input.value = localStorage.getItem(TOKEN_KEY) || "";
  document.getElementById("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = input.value.trim();
    if (token) localStorage.setItem(TOKEN_KEY, token);
    else localStorage.removeItem(TOKEN_KEY);
    refresh();
  });
}

setUpToken();
refresh();
setInterval(refresh, POLL_MS);
