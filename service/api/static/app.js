// The hubless diagnostics page: vanilla JS drawing inline SVG, talking only to this service.
// It polls GET info (cheap) and fetches GET diagnostics only when the gallery version changes.
// URLs are relative to the page (served at <root>/ui), so the page also works behind a proxy
// that mounts the service under a path prefix.
"use strict";

const POLL_MS = Number(new URLSearchParams(location.search).get("poll")) || 2000;
const KEY_STORAGE = "hubless.apiKey";
const SVG_NS = "http://www.w3.org/2000/svg";
const NA = "n/a";

// --- pure helpers (no DOM): exported on window.hubless for tests ------------------------

/** A number with `digits` decimals, or "n/a" when missing / not finite. */
function fmt(value, digits = 3) {
  return typeof value === "number" && Number.isFinite(value) ? value.toFixed(digits) : NA;
}

/** A share as a percentage, or "n/a". */
function pct(value, digits = 1) {
  return typeof value === "number" && Number.isFinite(value)
    ? `${(100 * value).toFixed(digits)}%`
    : NA;
}

/** The label of histogram bin i: edges[i] <= N_k < edges[i+1]. */
function binLabel(edges, i) {
  const lo = edges[i];
  const hi = edges[i + 1] - 1;
  return hi <= lo ? String(lo) : `${lo}–${hi}`;
}

/** Two histograms on one set of bins: contract edges are 0 then powers of two, so the longer
 * edge list extends the shorter one; the shorter counts are padded with zeros. */
function alignHistograms(a, b) {
  const edges = a.edges.length >= b.edges.length ? a.edges : b.edges;
  const pad = (counts) => edges.slice(1).map((_, i) => counts[i] || 0);
  return { edges, first: pad(a.counts), second: pad(b.counts) };
}

/** Log-scale height fraction of `count` on an axis topped at `top` (log10(1 + count)). */
function logFraction(count, top) {
  return Math.log10(1 + count) / Math.log10(1 + top);
}

/** The axis top: the smallest power of ten >= max(counts) (at least 10). */
function logTop(counts) {
  const max = Math.max(1, ...counts);
  return 10 ** Math.max(1, Math.ceil(Math.log10(max)));
}

/** The diagnostics entry of (method, invgc), or undefined. */
function entryOf(diag, method, invgc) {
  return (diag && diag.methods ? diag.methods : []).find(
    (m) => m.method === method && m.invgc === invgc,
  );
}

/** Δdeg of the original (invgc false) or InvGC gallery, or undefined. */
function degenerationOf(diag, invgc) {
  return (diag && diag.degeneration ? diag.degeneration : []).find((d) => d.invgc === invgc);
}

/** Parse probe JSONL: {"embedding": [...] | "text": "...", "truth_id": "..."} per line.
 * Returns the POST /diagnostics body; throws an Error naming the bad line. */
function parseProbes(text, allowText) {
  const vectors = [];
  const texts = [];
  const truthIds = [];
  text.split(/\r?\n/).forEach((raw, index) => {
    const line = raw.trim();
    if (!line) return;
    const where = `line ${index + 1}`;
    let row;
    try {
      row = JSON.parse(line);
    } catch (err) {
      throw new Error(`${where}: not JSON (${err.message})`);
    }
    if (row === null || typeof row !== "object" || Array.isArray(row)) {
      throw new Error(`${where}: expected a JSON object`);
    }
    if (typeof row.truth_id !== "string" || !row.truth_id) {
      throw new Error(`${where}: "truth_id" (the id of the item it should find) is missing`);
    }
    if (Array.isArray(row.embedding)) {
      vectors.push(row.embedding);
    } else if (typeof row.text === "string") {
      if (!allowText) {
        throw new Error(
          `${where}: "text" needs an encoder on the server (HUBLESS_ENCODER); send "embedding"`,
        );
      }
      texts.push(row.text);
    } else {
      throw new Error(`${where}: needs "embedding" (a list of numbers) or "text"`);
    }
    truthIds.push(row.truth_id);
  });
  if (vectors.length && texts.length) {
    throw new Error('mix of "embedding" and "text" lines: use one kind per run');
  }
  if (!truthIds.length) throw new Error("no probe lines");
  return texts.length
    ? { texts, truth_ids: truthIds }
    : { queries: vectors, truth_ids: truthIds };
}

// --- talking to the service --------------------------------------------------------------

class ApiFailure extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

let pendingKey = null; // one key prompt for all concurrent 401s

/** Show the key form; resolve with the key once submitted. */
function askKey() {
  if (!pendingKey) {
    pendingKey = new Promise((resolve) => {
      const form = document.getElementById("auth");
      const input = document.getElementById("auth-key");
      form.hidden = false;
      input.focus();
      form.onsubmit = (event) => {
        event.preventDefault();
        const key = input.value.trim();
        if (!key) return;
        sessionStorage.setItem(KEY_STORAGE, key);
        input.value = "";
        form.hidden = true;
        pendingKey = null;
        resolve(key);
      };
    });
  }
  return pendingKey;
}

/** fetch + JSON, with the stored key; a 401 asks for the key (again, if it was wrong). */
async function api(path, body) {
  for (;;) {
    const headers = { Accept: "application/json" };
    const key = sessionStorage.getItem(KEY_STORAGE);
    if (key) headers.Authorization = `Bearer ${key}`;
    const init = { headers, cache: "no-store" };
    if (body !== undefined) {
      init.method = "POST";
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(path, init);
    if (response.status === 401) {
      sessionStorage.removeItem(KEY_STORAGE);
      showMessage(key ? "That API key was refused; enter it again." : "This service needs its API key.");
      await askKey();
      showMessage("");
      continue;
    }
    const payload = await response.json().catch(() => null);
    if (!response.ok) {
      const detail = payload && payload.error ? payload.error.message : response.statusText;
      throw new ApiFailure(response.status, `${path}: ${response.status} ${detail}`);
    }
    return payload;
  }
}

// --- state and rendering -----------------------------------------------------------------

const state = { info: null, diag: null, version: null, method: null, invgc: false };

function $(id) {
  return document.getElementById(id);
}

function showMessage(text, isError = false) {
  const el = $("message");
  el.textContent = text;
  el.classList.toggle("error", isError);
}

function svg(tag, attrs, parent) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs)) el.setAttribute(name, String(value));
  if (parent) parent.appendChild(el);
  return el;
}

function cell(row, text, attrs = {}) {
  const td = document.createElement("td");
  td.textContent = text;
  for (const [name, value] of Object.entries(attrs)) td.setAttribute(name, value);
  row.appendChild(td);
  return td;
}

function viewName(invgc) {
  return invgc ? "InvGC" : "original";
}

function renderStatus() {
  const { info, diag } = state;
  const size = (diag || info || {}).gallery_size;
  $("gallery-size").textContent = size === undefined ? NA : `${size} items`;
  $("gallery-version").textContent = String((diag || {}).version ?? (info || {}).gallery_version ?? NA);
  const any = diag && diag.methods && diag.methods[0];
  $("probes").textContent = any
    ? `${any.hubness.probes} from ${diag.probe_source}, k = ${any.hubness.k}`
    : NA;
  const banks = diag && diag.bank_sizes;
  $("banks").textContent = banks
    ? `query ${banks.query_bank}, gallery ${banks.gallery_bank}`
    : NA;
  const live = diag ? diag.live_query_bank : null;
  $("live-bank-label").hidden = !live;
  $("live-bank").hidden = !live;
  if (live) {
    $("live-bank").textContent = `${live.size} (pending ${live.pending}, v${live.version})`;
  }
  $("service").textContent = info
    ? `${info.name} ${info.version}, dim ${info.dim}${info.encoder ? `, encoder ${info.encoder}` : ""}`
    : NA;
}

function renderControls() {
  const { info } = state;
  const select = $("method");
  if (!select.options.length) {
    for (const method of info.methods) select.add(new Option(method, method));
    state.method = info.default_method;
    state.invgc = info.invgc;
  }
  select.value = state.method;
  $("invgc").checked = state.invgc;
  $("invgc").disabled = !info.invgc;
  $("probe-hint").hidden = false;
  if (info.encoder) {
    $("probe-hint").textContent =
      'One JSON object per line: {"embedding": [...], "truth_id": "..."} or ' +
      `{"text": "...", "truth_id": "..."} (encoded by ${info.encoder}).`;
  }
}

function renderHistogram() {
  const root = $("histogram");
  root.replaceChildren();
  const { diag, method, invgc } = state;
  const baseline = entryOf(diag, "raw", false);
  const chosen = entryOf(diag, method, invgc);
  root.setAttribute("data-method", method);
  root.setAttribute("data-invgc", String(invgc));
  root.setAttribute("data-version", String(diag ? diag.version : ""));
  const W = 720, H = 300, left = 56, right = 12, top = 24, bottom = 52;
  let missing = null;
  if (!baseline || !chosen) {
    missing = baseline
      ? `no diagnostics of ${method} on the ${viewName(invgc)} gallery`
      : "no diagnostics of raw on the original gallery";
  } else if (!baseline.occurrence_histogram || !chosen.occurrence_histogram) {
    missing = "this server sends no occurrence_histogram";
  }
  if (missing) {
    svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "na" }, root).textContent =
      `histogram: n/a (${missing})`;
    root.setAttribute("data-rendered", "false");
    return;
  }
  const { edges, first: raw, second: counts } = alignHistograms(
    baseline.occurrence_histogram,
    chosen.occurrence_histogram,
  );
  const axisTop = logTop([...raw, ...counts]);
  const plotW = W - left - right, plotH = H - top - bottom;
  const band = plotW / counts.length;
  const y = (c) => top + plotH * (1 - logFraction(c, axisTop));
  // y axis: 0, 1, 10, 100, ... (log10(1 + count))
  for (let t = 0; t <= axisTop; t = t === 0 ? 1 : t * 10) {
    svg("line", { x1: left, x2: W - right, y1: y(t), y2: y(t), class: "grid" }, root);
    svg("text", { x: left - 6, y: y(t) + 4, "text-anchor": "end", class: "tick" }, root)
      .textContent = String(t);
  }
  counts.forEach((count, i) => {
    const x = left + i * band;
    const bar = svg("rect", {
      x: x + band * 0.12, width: band * 0.76, y: y(count), height: top + plotH - y(count),
      class: "bar method", "data-series": "method", "data-bin": i, "data-count": count,
    }, root);
    svg("title", {}, bar).textContent =
      `${method}${invgc ? " + InvGC" : ""}: ${count} items with Nₖ ${binLabel(edges, i)}`;
    const ghost = svg("rect", {
      x: x + band * 0.06, width: band * 0.88, y: y(raw[i]), height: top + plotH - y(raw[i]),
      class: "bar raw", "data-series": "raw", "data-bin": i, "data-count": raw[i],
    }, root);
    svg("title", {}, ghost).textContent = `raw: ${raw[i]} items with Nₖ ${binLabel(edges, i)}`;
    svg("text", {
      x: x + band / 2, y: top + plotH + 16, "text-anchor": "middle", class: "tick",
    }, root).textContent = binLabel(edges, i);
  });
  svg("text", { x: left + plotW / 2, y: H - 10, "text-anchor": "middle", class: "axis" }, root)
    .textContent = "Nₖ: times an item is in a probe's top-k";
  svg("text", {
    x: 14, y: top + plotH / 2, "text-anchor": "middle", class: "axis",
    transform: `rotate(-90 14 ${top + plotH / 2})`,
  }, root).textContent = "gallery items (log scale)";
  const legend = svg("g", { class: "legend" }, root);
  svg("rect", { x: W - 330, y: 6, width: 14, height: 10, class: "bar method" }, legend);
  svg("text", { x: W - 312, y: 15 }, legend).textContent =
    `${method}${invgc ? " + InvGC" : ""}`;
  svg("rect", { x: W - 180, y: 6, width: 14, height: 10, class: "bar raw" }, legend);
  svg("text", { x: W - 162, y: 15 }, legend).textContent = "raw cosine, original gallery";
  root.setAttribute("data-rendered", "true");
}

function renderMetrics() {
  const body = $("metrics").tBodies[0];
  body.replaceChildren();
  const { diag } = state;
  for (const entry of diag.methods || []) {
    const h = entry.hubness;
    const row = body.insertRow();
    row.dataset.method = entry.method;
    row.dataset.invgc = String(entry.invgc);
    row.classList.toggle("selected", entry.method === state.method && entry.invgc === state.invgc);
    cell(row, entry.method);
    cell(row, viewName(entry.invgc));
    cell(row, fmt(h.skewness, 2));
    const antihubs = Math.round(h.antihub_rate * h.gallery_size);
    cell(row, `${pct(h.antihub_rate)} (${antihubs} / ${h.gallery_size} items)`);
    const slots = h.probes * h.k;
    cell(row, `${pct(h.hub_occurrence)} of ${slots} slots (${h.probes} × ${h.k})`);
    const deg = degenerationOf(diag, entry.invgc);
    cell(row, deg ? `${fmt(deg.value)} (${deg.items} / ${deg.gallery_size} items)` : NA);
    row.addEventListener("click", () => select(entry.method, entry.invgc));
  }
}

function renderHubs() {
  const body = $("hubs").tBodies[0];
  body.replaceChildren();
  const { method, invgc } = state;
  $("hubs-of").textContent = `${method}, ${viewName(invgc)} gallery`;
  const hubs = (entryOf(state.diag, method, invgc) || {}).top_hubs;
  $("hubs").dataset.method = method;
  $("hubs").dataset.invgc = String(invgc);
  if (!hubs) {
    $("hubs-caption").textContent = "n/a (this server sends no top_hubs)";
    return;
  }
  $("hubs-caption").textContent =
    `z = (Nₖ − median) / scale; median ${fmt(hubs.median, 1)}, MAD ${fmt(hubs.mad, 1)}, ` +
    `scale = 1.4826·MAD = ${fmt(hubs.scale, 2)} (floored at 1 when MAD is 0)`;
  hubs.items.forEach((item, i) => {
    const row = body.insertRow();
    row.dataset.id = item.id;
    cell(row, String(i + 1));
    cell(row, item.id, { class: "id" });
    cell(row, String(item.occurrence));
    cell(row, fmt(item.z, 1), { class: item.z >= 3 ? "z high" : "z" });
    const meta = item.metadata == null ? "" : JSON.stringify(item.metadata);
    cell(row, meta.length > 120 ? `${meta.slice(0, 119)}…` : meta, { title: meta, class: "meta" });
  });
}

function render() {
  renderStatus();
  if (!state.info || !state.diag) return;
  renderControls();
  renderHistogram();
  renderMetrics();
  renderHubs();
  document.body.dataset.state = "ready";
  document.body.dataset.version = String(state.diag.version);
}

function select(method, invgc) {
  state.method = method;
  state.invgc = invgc;
  render();
}

// --- polling ---------------------------------------------------------------------------

let busy = false;

async function poll() {
  if (busy) return;
  busy = true;
  try {
    state.info = await api("info");
    if (state.info.gallery_version !== state.version) {
      showMessage(state.diag ? "gallery changed: recomputing diagnostics…" : "computing diagnostics…");
      const diag = await api("diagnostics");
      state.diag = diag;
      state.version = state.info.gallery_version;
      showMessage("");
    }
    render();
  } catch (err) {
    const starting = err instanceof ApiFailure && err.status === 503;
    showMessage(starting ? "service starting (precompute in progress)…" : String(err.message), !starting);
  } finally {
    busy = false;
  }
}

// --- probe form --------------------------------------------------------------------------

async function runProbe(event) {
  event.preventDefault();
  let body;
  try {
    body = parseProbes($("probe-input").value, Boolean(state.info && state.info.encoder));
  } catch (err) {
    showMessage(`probe: ${err.message}`, true);
    return;
  }
  showMessage(`probing ${body.truth_ids.length} queries on every method…`);
  try {
    const result = await api("diagnostics", body);
    const table = $("probe-results");
    const tbody = table.tBodies[0];
    tbody.replaceChildren();
    for (const entry of result.methods) {
      const r = entry.retrieval || {};
      const row = tbody.insertRow();
      row.dataset.method = entry.method;
      row.dataset.invgc = String(entry.invgc);
      cell(row, entry.method);
      cell(row, viewName(entry.invgc));
      cell(row, pct(r.r1));
      cell(row, pct(r.r5));
      cell(row, pct(r.r10));
      cell(row, fmt(r.mrr));
      cell(row, String(r.queries ?? NA));
    }
    table.hidden = false;
    showMessage("");
  } catch (err) {
    showMessage(String(err.message), true);
  }
}

async function loadFile() {
  const file = $("probe-file").files[0];
  if (file) $("probe-input").value = await file.text();
}

function start() {
  $("method").addEventListener("change", (e) => select(e.target.value, state.invgc));
  $("invgc").addEventListener("change", (e) => select(state.method, e.target.checked));
  $("probe").addEventListener("submit", runProbe);
  $("probe-file").addEventListener("change", loadFile);
  poll();
  setInterval(() => document.hidden || poll(), POLL_MS); // a background tab stays quiet
}

window.hubless = {
  fmt, pct, binLabel, alignHistograms, logFraction, logTop, entryOf, parseProbes, state, poll,
};
document.addEventListener("DOMContentLoaded", start);
