// vramfit's page: every number shown comes from POST /api/estimate; this file only formats and draws.
// The page state lives in the URL's query string (only values that differ from the defaults), so a link
// reproduces the view. No framework, no build step, no CDN.
"use strict";

const FIELDS = {
  // input id: [path in Settings, kind, default]
  mode: [["workload", "mode"], "text", "inference"],
  batch_size: [["workload", "batch_size"], "int", "1"],
  seq_len: [["workload", "seq_len"], "int", "2048"],
  new_tokens: [["workload", "new_tokens"], "int", "0"],
  dtype: [["precision", "dtype"], "text", "bf16"],
  quant: [["precision", "quant"], "optional", ""],
  kv_dtype: [["precision", "kv_dtype"], "text", "auto"],
  finetune: [["training", "finetune"], "text", "full"],
  lora_rank: [["training", "lora", "rank"], "int", "8"],
  optimizer: [["training", "optimizer"], "text", "adamw"],
  grad_ckpt: [["training", "grad_ckpt"], "text", "none"],
  gpus: [["parallelism", "gpus"], "int", "1"],
  tensor: [["parallelism", "tensor"], "int", "1"],
  pipeline: [["parallelism", "pipeline"], "int", "1"],
  zero_stage: [["parallelism", "zero_stage"], "int", "0"],
  runtime: [["runtime", "name"], "text", "transformers"],
  gpu: [["gpu"], "optional", ""],
};
const PAGE_ONLY = { model: "", config: "", units: "GiB" };
const DIVISOR = { GiB: 1024 ** 3, GB: 1e9 };
const LEVEL_COLOURS = {
  allocated: ["#1f4e79", "#2e75b6", "#5b9bd5", "#9dc3e6", "#bdd7ee", "#deebf7"],
  reserved: ["#c55a11", "#f4b183"],
  device: ["#7f7f7f", "#bfbfbf"],
};
const $ = (id) => document.getElementById(id);
let gpus = [];
let sequence = 0;   // answers to superseded requests are dropped
let timer = null;

function allIds() { return [...Object.keys(FIELDS), ...Object.keys(PAGE_ONLY)]; }
function defaultOf(id) { return id in FIELDS ? FIELDS[id][2] : PAGE_ONLY[id]; }

function readUrl() {
  const params = new URLSearchParams(location.search);
  for (const id of allIds()) {
    if (params.has(id)) $(id).value = params.get(id);
  }
  if ($("config").value) $("paste").open = true;
}

function writeUrl() {
  const params = new URLSearchParams();
  for (const id of allIds()) {
    const value = $(id).value.trim();
    if (value !== defaultOf(id)) params.set(id, value);
  }
  const query = params.toString();
  history.replaceState(null, "", query ? `?${query}` : location.pathname);
}

function settings() {
  const out = {};
  for (const [id, [path, kind]] of Object.entries(FIELDS)) {
    const text = $(id).value.trim();
    let value = text;
    if (kind === "int") value = Number.parseInt(text, 10);
    if (kind === "optional") value = text === "" || text === "none" ? null : text;
    if (kind === "int" && !Number.isFinite(value)) throw new Error(`${id}: enter a whole number`);
    let node = out;
    for (const key of path.slice(0, -1)) node = node[key] ??= {};
    node[path[path.length - 1]] = value;
  }
  return out;
}

function requestBody() {
  const config = $("config").value.trim();
  if (config) {
    let parsed;
    try { parsed = JSON.parse(config); } catch (error) { throw new Error(`config.json: ${error.message}`); }
    return { config: parsed, settings: settings() };
  }
  const model = $("model").value.trim();
  if (!model) throw new Error("Pick a catalog model or paste a config.json.");
  return { model, settings: settings() };
}

function schedule() {
  writeUrl();
  clearTimeout(timer);
  timer = setTimeout(update, 250);
}

async function update() {
  const mine = ++sequence;
  let body;
  try { body = requestBody(); } catch (error) { return showError(error.message); }
  $("status").textContent = "estimating…";
  const response = await fetch("/api/estimate", {
    method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body),
  });
  const answer = await response.json();
  if (mine !== sequence) return;
  if (!response.ok) return showError(messageOf(answer));
  show(answer);
  if (body.settings.gpu) showLimits(body, mine);
  else $("limits").hidden = true;
}

async function showLimits(body, mine) {
  const ask = (route) => fetch(`/api/${route}`, {
    method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body),
  }).then((r) => (r.ok ? r.json() : null));
  const [batch, context] = await Promise.all([ask("max-batch"), ask("max-context")]);
  if (mine !== sequence || !batch || !context) return;
  const limits = $("limits");
  const name = (gpus.find((g) => g.id === body.settings.gpu) || { name: body.settings.gpu }).name;
  limits.textContent = `On one ${name}: largest batch ${batch.value.toLocaleString("en-US")} ` +
    `(limited by ${batch.limited_by}) at this context; longest context ${context.value.toLocaleString("en-US")} ` +
    `tokens (limited by ${context.limited_by}) at this batch.`;
  limits.dataset.maxBatch = batch.value;
  limits.dataset.maxContext = context.value;
  limits.hidden = false;
}

function messageOf(answer) {
  if (typeof answer.detail === "string") return answer.detail;
  if (Array.isArray(answer.detail)) {
    return answer.detail.map((d) => `${(d.loc || []).slice(1).join(".")}: ${d.msg}`).join("; ");
  }
  return "the server could not answer";
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
  $("status").textContent = "";
  document.body.dataset.state = "error";
}

function units() { return $("units").value; }
function sized(bytes) { return `${(bytes / DIVISOR[units()]).toFixed(2)} ${units()}`; }

function show(estimate) {
  $("error").hidden = true;
  $("status").textContent = "";
  const p = estimate.parameters;
  const training = estimate.settings.workload.mode === "training";
  $("headline").textContent = `${estimate.model}: ${p.total.toLocaleString("en-US")} parameters` +
    (training ? `, ${p.trainable.toLocaleString("en-US")} trainable` : "") +
    (p.active !== p.total ? `, ${p.active.toLocaleString("en-US")} active per token` : "");
  const components = estimate.memory.components;
  const colours = coloursFor(components);
  drawTable(components, colours, estimate.peak.device);
  drawChart(components, colours, estimate.peak.device, capacityOf($("gpu").value));
  $("peaks").textContent = `peak allocated ${sized(estimate.peak.allocated)} · reserved ` +
    `${sized(estimate.peak.reserved)} · device (nvidia-smi) ${sized(estimate.peak.device)}`;
  $("peaks").dataset.allocated = estimate.peak.allocated;
  $("peaks").dataset.reserved = estimate.peak.reserved;
  $("peaks").dataset.device = estimate.peak.device;
  drawVerdicts(estimate.peak.device);
  $("notes").replaceChildren(...estimate.notes.map((note) => element("li", note)));
  document.body.dataset.state = "ready";
  document.body.dataset.model = estimate.model;
}

function element(tag, text, attributes = {}) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  return node;
}

function coloursFor(components) {
  const used = { allocated: 0, reserved: 0, device: 0 };
  return components.map((c) => {
    const shades = LEVEL_COLOURS[c.level] || LEVEL_COLOURS.device;
    return shades[used[c.level]++ % shades.length];
  });
}

function drawTable(components, colours, total) {
  const rows = components.map((c, i) => {
    const row = element("tr", undefined, { "data-component": c.name, "data-bytes": String(c.bytes) });
    const swatch = element("span", "", { class: "swatch", style: `background:${colours[i]}` });
    const name = element("td");
    name.append(swatch, c.name);
    name.title = [c.formula, c.source].filter(Boolean).join("\n");
    row.append(name, element("td", c.level), element("td", sized(c.bytes), { class: "num" }),
      element("td", c.bytes.toLocaleString("en-US"), { class: "num" }));
    return row;
  });
  $("breakdown").tBodies[0].replaceChildren(...rows);
  const foot = element("tr", undefined, { "data-component": "total", "data-bytes": String(total) });
  foot.append(element("th", "total"), element("th", ""), element("th", sized(total), { class: "num" }),
    element("th", total.toLocaleString("en-US"), { class: "num" }));
  $("breakdown").tFoot.replaceChildren(foot);
}

function capacityOf(id) {
  const gpu = gpus.find((g) => g.id === id);
  return gpu ? gpu.usable_bytes : 0;
}

// One stacked bar, as wide as the larger of the total and the chosen GPU's usable memory (a red line).
function drawChart(components, colours, total, capacity) {
  const svg = $("chart");
  const ns = "http://www.w3.org/2000/svg";
  const parts = [];
  const scale = Math.max(total, capacity);
  let x = 0;
  components.forEach((c, i) => {
    const width = scale > 0 ? (100 * c.bytes) / scale : 0;
    const rect = document.createElementNS(ns, "rect");
    for (const [k, v] of Object.entries({ x: `${x}%`, y: 0, width: `${width}%`, height: 48, fill: colours[i] })) {
      rect.setAttribute(k, v);
    }
    rect.dataset.component = c.name;
    const title = document.createElementNS(ns, "title");
    title.textContent = `${c.name}: ${sized(c.bytes)}`;
    rect.append(title);
    parts.push(rect);
    if (width > 12) parts.push(label(ns, `${x + 0.5}%`, 30, c.name, "#fff"));
    x += width;
  });
  if (capacity) {
    const at = `${(100 * capacity) / scale}%`;
    const line = document.createElementNS(ns, "line");
    for (const [k, v] of Object.entries({ x1: at, x2: at, y1: 0, y2: 64, stroke: "#c00000", "stroke-width": 3 })) {
      line.setAttribute(k, v);
    }
    parts.push(line, label(ns, at, 62, ` capacity ${sized(capacity)}`, "#c00000"));
  }
  svg.replaceChildren(...parts);
}

function label(ns, x, y, text, colour) {
  const node = document.createElementNS(ns, "text");
  for (const [k, v] of Object.entries({ x, y, fill: colour, "font-size": 12 })) node.setAttribute(k, v);
  node.textContent = text;
  return node;
}

function drawVerdicts(deviceBytes) {
  const items = gpus.map((gpu) => {
    const fits = deviceBytes <= gpu.usable_bytes;
    const margin = Math.abs(gpu.usable_bytes - deviceBytes);
    const text = `${gpu.name} (${sized(gpu.usable_bytes)} usable): ` +
      (fits ? `fits, ${sized(margin)} free` : `does not fit, ${sized(margin)} short`);
    return element("li", text, { "data-gpu": gpu.id, "data-fits": String(fits), class: fits ? "fits" : "short" });
  });
  $("verdicts").replaceChildren(...items);
}

let catalogTicket = 0;   // only the latest search may fill the list: an earlier answer can arrive later

async function searchCatalog() {
  const ticket = ++catalogTicket;
  const q = $("model").value.trim();
  const response = await fetch(`/api/catalog?q=${encodeURIComponent(q)}&limit=30`);
  if (!response.ok || ticket !== catalogTicket) return;
  const entries = await response.json();
  if (ticket !== catalogTicket) return;
  $("catalog").replaceChildren(...entries.map((e) => element("option", undefined, { value: e.id })));
}

async function loadGpus() {
  const response = await fetch("/api/gpus");
  gpus = response.ok ? await response.json() : [];
  const chosen = new URLSearchParams(location.search).get("gpu") || "";
  $("gpu").append(...gpus.map((g) => element("option", g.name, { value: g.id })));
  $("gpu").value = chosen;
}

async function start() {
  readUrl();   // the shared state first (a GPU named there is chosen once the list below has loaded)
  for (const id of allIds()) $(id).addEventListener("input", schedule);   // before any await: typing while
  $("model").addEventListener("input", searchCatalog);                    // the page loads is not lost
  await Promise.all([loadGpus(), searchCatalog()]);
  update();
}

document.addEventListener("DOMContentLoaded", start);
