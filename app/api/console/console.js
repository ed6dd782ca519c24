// PromptHub console: a small hash-routed app over the JSON API. No build step, no external URL.
// The API key (if any) lives in sessionStorage and goes out as `Authorization: Bearer …`.
"use strict";

const KEY = "prompthub.key";
const main = document.getElementById("main");
const statusBox = document.getElementById("status");
let timer = null; // the current page's polling timer
let routeSeq = 0; // bumped on each render of a page: GETs begun for an older one are dropped
const jobPoints = new Map(); // job id -> Map(epoch -> [epoch, loss]) seen while polling

// ------------------------------------------------------------------ helpers
function esc(v) {
  return String(v ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}
function fmt(x, d = 3) {
  if (x === null || x === undefined || x === "") return "—";
  if (typeof x !== "number") return esc(x);
  return Math.abs(x) >= 1000 ? x.toLocaleString("en") : String(+x.toFixed(d));
}
function bytes(n) {
  if (n == null) return "—";
  return n < 1024 ? `${n} B` : n < 1048576 ? `${(n / 1024).toFixed(1)} kB` : `${(n / 1048576).toFixed(1)} MB`;
}
function when(t) { return t ? esc(String(t).replace("T", " ").slice(0, 19)) : "—"; }
function say(msg) { statusBox.textContent = msg; }

async function api(method, path, body) {
  const seq = routeSeq;
  const headers = {};
  const key = sessionStorage.getItem(KEY);
  if (key) headers.Authorization = `Bearer ${key}`;
  const init = { method, headers };
  if (body instanceof FormData) init.body = body;
  else if (body !== undefined) { headers["Content-Type"] = "application/json"; init.body = JSON.stringify(body); }
  let res;
  try { res = await fetch(path, init); } catch (e) { return { ok: false, status: 0, data: { detail: `network error: ${e}` } }; }
  const text = await res.text();
  // a read for a page the user has left must not draw over the new one: it never resolves
  if (method === "GET" && seq !== routeSeq) return new Promise(() => {});
  if (res.status === 401) document.getElementById("key-state").textContent = headers.Authorization ? "this key was refused" : "this server needs a key";
  let data = text;
  try { data = JSON.parse(text); } catch (_) { /* plain text, e.g. /metrics */ }
  return { ok: res.ok, status: res.status, data, next: res.headers.get("X-Next-Cursor") };
}

// A list route (/tasks, /jobs, /datasets) page after page: its cursor comes in X-Next-Cursor
async function apiAll(path) {
  const sep = path.includes("?") ? "&" : "?";
  let r = await api("GET", `${path}${sep}limit=1000`);
  const rows = r.ok ? [...r.data] : null;
  while (r.ok && r.next) {
    r = await api("GET", `${path}${sep}limit=1000&cursor=${encodeURIComponent(r.next)}`);
    if (r.ok) rows.push(...r.data);
  }
  return r.ok ? { ...r, data: rows } : r;
}

// The API's errors: {"detail": "message"} or {"detail": [{"loc": [...], "msg": ...}]}
function errorHtml(r) {
  const d = r.data && r.data.detail !== undefined ? r.data.detail : r.data;
  let hint = "";
  if (r.status === 401) hint = " Type an API key above (keys are needed when the server is not on loopback).";
  if (r.status === 403) hint = " This key lacks the scope or the task.";
  if (Array.isArray(d)) {
    const items = d.map((e) => {
      const loc = (e.loc || []).filter((p) => p !== "body").join(".");
      return `<li><code>${esc(loc)}</code>: ${esc(e.msg)}</li>`;
    }).join("");
    return `<div class="error" role="alert"><strong>${r.status} error</strong><ul>${items}</ul></div>`;
  }
  return `<div class="error" role="alert"><strong>${r.status || "network"} error:</strong> ${esc(typeof d === "string" ? d : JSON.stringify(d))}${esc(hint)}</div>`;
}

function confirmDialog(text, okLabel) {
  const dlg = document.getElementById("confirm");
  document.getElementById("confirm-text").textContent = text;
  document.getElementById("confirm-ok").textContent = okLabel;
  return new Promise((resolve) => {
    dlg.addEventListener("close", () => resolve(dlg.returnValue === "ok"), { once: true });
    dlg.returnValue = "";
    dlg.showModal();
  });
}

function bars(entries, { max = null, digits = 3 } = {}) {
  if (!entries.length) return '<p class="muted">none</p>';
  const top = max ?? Math.max(...entries.map(([, v]) => v), 1e-9);
  return `<div class="bars">${entries.map(([k, v], i) => `
    <span>${esc(k)}</span>
    <div role="img" aria-label="${esc(k)}: ${fmt(v, digits)}"><div class="bar${i === 0 ? " top" : ""}" style="width:${Math.max(0, Math.min(100, (100 * v) / top))}%"></div></div>
    <span>${fmt(v, digits)}</span>`).join("")}</div>`;
}

// A line chart as SVG: series = [{name, points: [[x, y], ...]}]
function lineChart(title, series, xLabel) {
  // drawn about as wide as it is shown, so its text stays readable on a phone
  const W = Math.max(300, Math.min(520, (main.clientWidth || 520) - 60)), H = 200, L = 44, R = 10, T = 22, B = 30;
  const pts = series.flatMap((s) => s.points);
  if (!pts.length) return `<figure><figcaption>${esc(title)}</figcaption><p class="muted">no points yet</p></figure>`;
  let [x0, x1] = [Math.min(...pts.map((p) => p[0])), Math.max(...pts.map((p) => p[0]))];
  let [y0, y1] = [Math.min(...pts.map((p) => p[1])), Math.max(...pts.map((p) => p[1]))];
  if (x1 === x0) { x0 = Math.max(0, x0 - 1); x1 += 1; }
  if (y1 === y0) { y0 -= 0.5; y1 += 0.5; }
  const sx = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
  const sy = (y) => H - B - ((y - y0) / (y1 - y0)) * (H - T - B);
  const colors = ["#1f5fbf", "#c2571a", "#1d7a3a", "#7a3dbf"];
  const lines = series.map((s, i) => {
    const d = s.points.map((p, j) => `${j ? "L" : "M"}${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join("");
    const dots = s.points.length < 40 ? s.points.map((p) => `<circle cx="${sx(p[0]).toFixed(1)}" cy="${sy(p[1]).toFixed(1)}" r="3" fill="${colors[i % 4]}"/>`).join("") : "";
    return `<path d="${d}" fill="none" stroke="${colors[i % 4]}" stroke-width="2"/>${dots}
      <text x="${L + 6 + i * 150}" y="14" style="fill:${colors[i % 4]}">${esc(s.name)}</text>`;
  }).join("");
  const last = series.map((s) => s.points.length ? `${s.name} ${fmt(s.points[s.points.length - 1][1], 4)}` : "").join(", ");
  return `<figure><figcaption>${esc(title)}</figcaption>
    <svg class="chart" viewBox="0 0 ${W} ${H}" role="img" aria-label="${esc(title)}: ${esc(last)}">
      <line x1="${L}" y1="${H - B}" x2="${W - R}" y2="${H - B}" stroke="#aab2c0"/><line x1="${L}" y1="${T}" x2="${L}" y2="${H - B}" stroke="#aab2c0"/>
      <text x="2" y="${T + 4}">${fmt(y1, 3)}</text><text x="2" y="${H - B}">${fmt(y0, 3)}</text>
      <text x="${L}" y="${H - 8}">${fmt(x0, 2)}</text><text x="${W - R - 40}" y="${H - 8}">${fmt(x1, 2)}</text>
      <text x="${W / 2 - 20}" y="${H - 8}">${esc(xLabel)}</text>${lines}
    </svg></figure>`;
}

function primaryMetric(metrics) {
  if (!metrics) return null;
  for (const k of ["accuracy", "f1", "token_accuracy", "pearson", "spearman", "exact_match"]) if (k in metrics) return k;
  return Object.keys(metrics).find((k) => typeof metrics[k] === "number" && k !== "n" && k !== "loss") || null;
}

// ------------------------------------------------------------------ 1. tasks
async function pageTasks() {
  const r = await apiAll("/tasks");
  if (!r.ok) return (main.innerHTML = `<h2>Tasks</h2>${errorHtml(r)}`);
  const rows = r.data.map((t) => `<tr>
      <th scope="row" data-label="Name"><a href="#/tasks/${encodeURIComponent(t.name)}">${esc(t.name)}</a></th><td data-label="Type">${esc(t.task_type)}</td>
      <td data-label="Labels">${t.labels.length ? esc(t.labels.slice(0, 8).join(", ")) + (t.labels.length > 8 ? ` … (${t.labels.length})` : "") : "—"}</td>
      <td data-label="Active">${t.active_version ? "v" + t.active_version : "—"}</td><td data-label="Updated">${when(t.updated_at)}</td></tr>`).join("");
  main.innerHTML = `<h2>Tasks</h2>
    <p><a href="#/new">Train a new task</a></p>
    <div class="card table-wrap"><table class="stack" id="task-list"><caption class="muted">${r.data.length} task(s)</caption>
      <thead><tr><th scope="col">Name</th><th scope="col">Type</th><th scope="col">Labels</th><th scope="col">Active</th><th scope="col">Updated</th></tr></thead>
      <tbody>${rows || '<tr><td colspan="5">No tasks yet.</td></tr>'}</tbody></table></div>`;
}

function exampleInput(type, labels) {
  if (type === "question-answering") return { question: "When was the tower built?", context: "The tower was built in 1889." };
  if (type === "token-classification") return { text: "Alice flew to Paris on Monday." };
  if (type === "regression") return { text: "a man plays guitar", text_pair: "someone plays music" };
  return "an example sentence";
}

function curlFor(task) {
  const body = JSON.stringify({ inputs: [exampleInput(task.task_type)] });
  const auth = sessionStorage.getItem(KEY) ? " -H \"authorization: Bearer $PROMPTHUB_KEY\"" : "";
  return `curl -s ${location.origin}/predict/${task.name} -H 'content-type: application/json'${auth} -d '${body.replace(/'/g, "'\\''")}'`;
}

function configSummary(v) {
  const s = v.spec || {}, t = v.training || {};
  const cfg = t.config || t;
  const parts = [
    s.method && `method ${s.method}`, s.prefix_length != null && `prefix ${s.prefix_length}`,
    s.layers != null && `layers ${Array.isArray(s.layers) ? s.layers.join(",") : s.layers}`,
    s.head && `head ${s.head}`, s.max_length && `max_length ${s.max_length}`,
    cfg.epochs != null && `epochs ${cfg.epochs}`, cfg.lr != null && `lr ${cfg.lr}`, cfg.batch_size != null && `batch ${cfg.batch_size}`,
  ].filter(Boolean);
  return parts.join(" · ") || "—";
}

async function pageTask(name) {
  const r = await api("GET", `/tasks/${encodeURIComponent(name)}`);
  if (!r.ok) return (main.innerHTML = `<h2>Task ${esc(name)}</h2>${errorHtml(r)}`);
  const t = r.data;
  const versions = [...t.versions].reverse().map((v) => {
    const m = v.metrics || {};
    const metrics = Object.entries(m).filter(([, x]) => typeof x === "number").map(([k, x]) => `${esc(k)} ${fmt(x)}`).join(", ");
    return `<tr${v.active ? ' class="active"' : ""}>
      <th scope="row" data-label="Version">v${v.version} ${v.active ? '<span class="badge active">active</span>' : ""}</th>
      <td data-label="Metrics">${metrics || "—"}</td><td data-label="Config">${esc(configSummary(v))}</td><td data-label="Size">${bytes(v.size_bytes)}</td><td data-label="Created">${when(v.created_at)}</td>
      <td data-label="Actions" class="actions">${v.active ? "" : `<button class="secondary" data-activate="${v.version}">${v.version < t.active_version ? "Roll back to" : "Activate"} v${v.version}</button>`}
          <a href="#/try/${encodeURIComponent(t.name)}/${v.version}">Try</a></td></tr>`;
  }).join("");
  main.innerHTML = `<h2>Task <code>${esc(t.name)}</code></h2>
    <div id="task-msg"></div>
    <div class="card"><dl class="kv">
      <dt>Type</dt><dd>${esc(t.task_type)}</dd>
      <dt>Labels</dt><dd>${t.labels.length ? esc(t.labels.join(", ")) : "—"}</dd>
      <dt>Active version</dt><dd id="active-version">${t.active_version ? "v" + t.active_version : "—"}</dd>
      <dt>Versions</dt><dd>${t.versions.length}</dd></dl>
      <div class="row" style="margin-top:10px">
        <a href="#/try/${encodeURIComponent(t.name)}">Try it</a>
        <button type="button" class="secondary" id="copy-curl">Copy curl example</button>
        <button type="button" class="danger" id="delete-task">Delete task…</button>
      </div>
      <pre id="curl" aria-label="curl example">${esc(curlFor(t))}</pre></div>
    <h3>Versions</h3>
    <div class="card table-wrap"><table class="stack" id="versions">
      <thead><tr><th scope="col">Version</th><th scope="col">Metrics</th><th scope="col">Config</th><th scope="col">Size</th><th scope="col">Created</th><th scope="col">Actions</th></tr></thead>
      <tbody>${versions}</tbody></table></div>`;
  document.getElementById("copy-curl").onclick = async () => {
    const text = curlFor(t);
    try { await navigator.clipboard.writeText(text); say("curl example copied"); }
    catch (_) {
      const range = document.createRange(); range.selectNodeContents(document.getElementById("curl"));
      getSelection().removeAllRanges(); getSelection().addRange(range); say("curl example selected: press Ctrl+C to copy");
    }
  };
  main.querySelectorAll("[data-activate]").forEach((b) => (b.onclick = async () => {
    const v = b.dataset.activate;
    if (!(await confirmDialog(`Serve version ${v} of ${t.name} from now on?`, `Activate v${v}`))) return;
    const a = await api("POST", `/tasks/${encodeURIComponent(t.name)}/versions/${v}/activate`);
    if (!a.ok) return (document.getElementById("task-msg").innerHTML = errorHtml(a));
    say(`${t.name}: version ${v} is active`);
    pageTask(name);
  }));
  document.getElementById("delete-task").onclick = async () => {
    if (!(await confirmDialog(`Delete ${t.name} and all its ${t.versions.length} version(s)? This cannot be undone.`, "Delete"))) return;
    const d = await api("DELETE", `/tasks/${encodeURIComponent(t.name)}`);
    if (!d.ok) return (document.getElementById("task-msg").innerHTML = errorHtml(d));
    say(`${t.name} deleted`);
    location.hash = "#/tasks";
  };
}

// ------------------------------------------------------------------ 2. new task
const SHOWN_OPTIONS = ["epochs", "lr", "batch_size", "prefix_length", "max_length", "holdout_fraction"];
const TYPES = ["classification", "token-classification", "question-answering", "regression"];
let upload = null; // the dataset chosen on the new-task page: {id, preview}

async function pageNew() {
  const [opts, dsets] = await Promise.all([api("GET", "/ui/api/options"), api("GET", "/ui/api/datasets")]);
  const options = opts.ok ? opts.data : [];
  upload = null;
  const hp = options.filter((o) => SHOWN_OPTIONS.includes(o.name)).map((o) => {
    const range = [o.ge != null && `≥ ${o.ge}`, o.gt != null && `> ${o.gt}`, o.le != null && `≤ ${o.le}`].filter(Boolean).join(", ");
    // a default that depends on the task type is left empty (the server picks it) and listed
    const per = o.task_defaults ? Object.entries(o.task_defaults).map(([t, v]) => `${t} ${fmt(v, 6)}`).join(", ") : "";
    const shown = per ? "" : o.default ?? "";
    return `<div class="field"><label for="hp-${o.name}">${esc(o.name)}</label>
      <input id="hp-${o.name}" name="${o.name}" type="number" step="any" value="${shown}" data-default="${shown}" data-type-defaults="${per ? esc(JSON.stringify({ ...o.task_defaults, "*": o.default })) : ""}" aria-describedby="hp-${o.name}-help">
      <small id="hp-${o.name}-help">${esc(o.help)} (default ${per ? esc(per) + "; otherwise " : ""}${fmt(o.default, 6)}${range ? "; " + esc(range) : ""})</small></div>`;
  }).join("");
  const datasetOptions = dsets.ok ? dsets.data.map((d) => `<option value="${esc(d.id)}">${esc(d.filename)} · ${d.rows} rows${d.task_type ? " · " + esc(d.task_type) : ""}</option>`).join("") : "";
  main.innerHTML = `<h2>New task</h2>
    <form id="new-form" class="card" novalidate>
      <div class="row">
        <div class="field"><label for="task-name">Task name</label><input id="task-name" required pattern="[a-z0-9][a-z0-9_.-]*" placeholder="e.g. sentiment"></div>
        <div class="field"><label for="task-type">Task type</label><select id="task-type">${TYPES.map((t) => `<option>${t}</option>`).join("")}</select></div>
      </div>
      <h3>Training data</h3>
      <div class="drop" id="drop"><label for="file">Drop a JSONL, JSON, CSV or TSV file here, or choose one</label>
        <input id="file" type="file" accept=".jsonl,.ndjson,.json,.csv,.tsv"></div>
      <div class="field" style="margin-top:10px"><label for="dataset">…or pick an uploaded dataset</label>
        <select id="dataset"><option value="">(none)</option>${datasetOptions}</select></div>
      <div id="upload-result" aria-live="polite"></div>
      <h3>Hyperparameters</h3>
      <div class="row">${hp || errorHtml(opts)}</div>
      <div class="row"><button type="submit" id="start">Start training</button></div>
      <div id="train-result" aria-live="polite"></div>
    </form>`;
  const drop = document.getElementById("drop"), file = document.getElementById("file");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); if (e.dataTransfer.files[0]) uploadFile(e.dataTransfer.files[0]); });
  file.addEventListener("change", () => file.files[0] && uploadFile(file.files[0]));
  document.getElementById("dataset").addEventListener("change", (e) => e.target.value && showPreview(e.target.value));
  // a default that depends on the task type is shown for the chosen type, as a placeholder
  const showTypeDefaults = () => {
    const type = document.getElementById("task-type").value;
    main.querySelectorAll("input[data-type-defaults]").forEach((i) => {
      if (!i.dataset.typeDefaults) return;
      const d = JSON.parse(i.dataset.typeDefaults);
      i.placeholder = `${d[type] ?? d["*"]} for ${type}`;
    });
  };
  showTypeDefaults();
  document.getElementById("task-type").addEventListener("change", () => {
    showTypeDefaults();
    if (file.files[0]) uploadFile(file.files[0]); else if (upload) showPreview(upload.id);
  });
  document.getElementById("new-form").addEventListener("submit", startTraining);
}

async function uploadFile(f) {
  const out = document.getElementById("upload-result");
  out.innerHTML = `<p class="muted">Uploading ${esc(f.name)}…</p>`;
  const form = new FormData();
  form.append("file", f, f.name);
  form.append("task_type", document.getElementById("task-type").value);
  const r = await api("POST", "/datasets", form);
  if (!r.ok) { upload = null; return (out.innerHTML = errorHtml(r)); }
  document.getElementById("dataset").insertAdjacentHTML("beforeend", `<option value="${esc(r.data.id)}">${esc(r.data.filename)} · ${r.data.rows} rows</option>`);
  document.getElementById("dataset").value = r.data.id;
  await showPreview(r.data.id);
}

async function showPreview(id) {
  const out = document.getElementById("upload-result");
  const type = document.getElementById("task-type").value;
  const r = await api("GET", `/ui/api/datasets/${encodeURIComponent(id)}/preview?task_type=${encodeURIComponent(type)}`);
  if (!r.ok) { upload = null; return (out.innerHTML = errorHtml(r)); }
  const p = r.data;
  upload = { id, preview: p };
  const cols = Object.keys(p.first_rows[0] || {}).filter((c) => p.first_rows.some((row) => row[c] != null));
  const cell = (v) => esc(typeof v === "object" && v !== null ? JSON.stringify(v) : v);
  const labels = Object.entries(p.labels);
  out.innerHTML = `<div class="card" id="preview">
    <p><strong>${esc(p.filename)}</strong>: <span id="preview-rows">${p.rows}</span> rows as ${esc(p.task_type)};
      columns <code>${esc(p.columns.join(", "))}</code></p>
    ${labels.length ? `<h3>Label distribution (${labels.length})</h3>${bars(labels.slice(0, 30), { digits: 0 })}` : ""}
    ${p.scores ? `<p>Scores: min ${fmt(p.scores.min)}, mean ${fmt(p.scores.mean)}, max ${fmt(p.scores.max)}</p>` : ""}
    <h3>First rows</h3><div class="table-wrap"><table class="stack" id="preview-table"><thead><tr>${cols.map((c) => `<th scope="col">${esc(c)}</th>`).join("")}</tr></thead>
    <tbody>${p.first_rows.map((row) => `<tr>${cols.map((c) => `<td data-label="${esc(c)}">${cell(row[c])}</td>`).join("")}</tr>`).join("")}</tbody></table></div></div>`;
}

async function startTraining(e) {
  e.preventDefault();
  const out = document.getElementById("train-result");
  const name = document.getElementById("task-name").value.trim();
  if (!upload) return (out.innerHTML = `<div class="error" role="alert">Upload a file or pick a dataset first.</div>`);
  const hyperparameters = {};
  main.querySelectorAll("input[id^=hp-]").forEach((i) => {
    if (i.value !== "" && i.value !== i.dataset.default) hyperparameters[i.name] = Number(i.value);
  });
  const body = { task: name, task_type: document.getElementById("task-type").value, train: { dataset_id: upload.id }, hyperparameters };
  document.getElementById("start").disabled = true;
  const r = await api("POST", "/train", body);
  document.getElementById("start").disabled = false;
  if (!r.ok) return (out.innerHTML = errorHtml(r));
  say(`training ${name}: job ${r.data.job_id} ${r.data.state}`);
  location.hash = `#/jobs/${r.data.job_id}`;
}

// ------------------------------------------------------------------ 3. jobs
const TERMINAL = ["succeeded", "failed", "cancelled"];

async function pageJobs() {
  const r = await api("GET", "/jobs?limit=50");
  if (!r.ok) return (main.innerHTML = `<h2>Jobs</h2>${errorHtml(r)}`);
  const rows = r.data.map((j) => {
    const p = j.progress || {};
    return `<tr><th scope="row" data-label="Job"><a href="#/jobs/${esc(j.id)}">${esc(j.id.slice(0, 8))}</a></th><td data-label="Tasks">${esc(j.task_names.join(", "))}</td>
      <td data-label="State"><span class="badge ${esc(j.state)}">${esc(j.state)}</span></td>
      <td data-label="Steps">${p.total ? `${p.step}/${p.total}` : "—"}</td><td data-label="Created">${when(j.created_at)}</td></tr>`;
  }).join("");
  main.innerHTML = `<h2>Jobs</h2><div class="card table-wrap"><table class="stack" id="job-list">
    <thead><tr><th scope="col">Job</th><th scope="col">Tasks</th><th scope="col">State</th><th scope="col">Steps</th><th scope="col">Created</th></tr></thead>
    <tbody>${rows || '<tr><td colspan="5">No jobs yet.</td></tr>'}</tbody></table></div>`;
  if (r.data.some((j) => !TERMINAL.includes(j.state))) timer = setTimeout(route, 2000);
}

async function pageJob(id) {
  const r = await api("GET", `/jobs/${encodeURIComponent(id)}`);
  if (!r.ok) return (main.innerHTML = `<h2>Job</h2>${errorHtml(r)}`);
  const j = r.data, p = j.progress || {};
  // the loss by (fractional) epoch: what each poll saw while it ran, and each epoch's end from the
  // history (so a job that ran between two polls, or a page opened later, still has its curve)
  // a refit (the second run, on all of train, after the held-out split chose the epochs) is its
  // own series; its epochs go on from the first run's
  const seen = jobPoints.get(id) || new Map();
  if (p.loss != null && p.epoch != null) seen.set(Number(p.epoch).toFixed(4), [Number(p.epoch), p.loss, p.stage || ""]);
  jobPoints.set(id, seen);
  const history = p.history || [];
  const curve = new Map(seen);
  for (const h of history) if (h.loss != null) curve.set(Number(h.epoch).toFixed(4), [Number(h.epoch), h.loss, h.stage || ""]);
  const byStage = (stage) => [...curve.values()].filter((c) => c[2] === stage).map((c) => [c[0], c[1]]).sort((a, b) => a[0] - b[0]);
  const lossSeries = [{ name: "loss", points: byStage("") }];
  if (byStage("refit").length) lossSeries.push({ name: "refit on all of train", points: byStage("refit") });
  const metricSeries = {};
  for (const h of history) for (const [task, m] of Object.entries(h.metrics || {})) {
    const k = primaryMetric(m);
    if (k) (metricSeries[`${task} ${k}`] ||= []).push([h.epoch, m[k]]);
  }
  const produced = j.result ? Object.entries(j.result).map(([t, v]) => `<a href="#/tasks/${encodeURIComponent(t)}">${esc(t)} v${esc(typeof v === "object" ? v.version : v)}</a>`).join(", ") : "";
  const running = !TERMINAL.includes(j.state);
  main.innerHTML = `<h2>Job <code>${esc(j.id.slice(0, 8))}</code> · ${esc(j.task_names.join(", "))}</h2>
    <div class="card">
      <p>State: <span class="badge ${esc(j.state)}" id="job-state">${esc(j.state)}</span> ${j.cancel_requested && running ? "(cancel requested)" : ""}
        ${running ? '<button type="button" class="danger" id="cancel">Cancel job</button>' : ""}</p>
      ${p.total ? `<label for="job-progress">Step ${p.step} of ${p.total}</label><progress id="job-progress" max="${p.total}" value="${p.step}">${p.step}/${p.total}</progress>` : ""}
      <dl class="kv"><dt>Epoch</dt><dd>${fmt(p.epoch, 2)}</dd><dt>Loss</dt><dd id="job-loss">${fmt(p.loss, 4)}</dd>
        <dt>Message</dt><dd>${esc(p.message || "—")}</dd>
        ${produced ? `<dt>Version produced</dt><dd id="job-version">${produced}</dd>` : ""}
        ${j.promotion ? `<dt>Activated</dt><dd id="job-promotion">${Object.entries(j.promotion).map(([t, d]) => `${esc(t)}: ${d.promoted ? "yes" : "no"} (${esc(d.reason || "")})`).join("; ")}</dd>` : ""}
        ${j.metrics ? `<dt>Final metrics</dt><dd>${esc(Object.entries(j.metrics).map(([k, v]) => `${k}: ${typeof v === "object" ? JSON.stringify(v) : fmt(v)}`).join("; "))}</dd>` : ""}</dl>
      ${j.error ? `<div class="error" role="alert" id="job-error"><strong>Failed:</strong> ${esc(j.error)}</div>` : ""}
    </div>
    <div class="grid2">
      <div class="card" id="loss-chart">${lineChart("Training loss (running mean in the epoch)", lossSeries, "epoch")}</div>
      <div class="card" id="metric-chart">${lineChart("Eval metric per epoch", Object.entries(metricSeries).map(([name, pts]) => ({ name, points: pts })), "epoch")}
        ${history.length && !Object.keys(metricSeries).length ? '<p class="muted">No eval data: set holdout_fraction (files of 20 rows or more) to see a metric per epoch.</p>' : ""}</div>
    </div>`;
  const c = document.getElementById("cancel");
  if (c) c.onclick = async () => {
    if (!(await confirmDialog("Cancel this training job?", "Cancel job"))) return;
    const x = await api("POST", `/jobs/${encodeURIComponent(id)}/cancel`);
    if (!x.ok) main.insertAdjacentHTML("afterbegin", errorHtml(x));
    else route();
  };
  if (running) timer = setTimeout(route, 1000);
}

// ------------------------------------------------------------------ 4. try it
function inputFields(type, n) {
  const f = (id, label, tag = "input", extra = "") => `<div class="field"><label for="${id}">${label}</label>${tag === "textarea" ? `<textarea id="${id}" rows="4" ${extra}></textarea>` : `<input id="${id}" style="width:100%" ${extra}>`}</div>`;
  if (type === "question-answering") return f("in-question", "Question") + f("in-context", "Context", "textarea");
  if (type === "token-classification") return f("in-text", "Text", "textarea");
  if (type === "regression") return f("in-text", "Text") + f("in-pair", "Second text (text_pair)");
  return f("in-text", "Text", "textarea") + f("in-pair", "Second text (text_pair, optional)");
}

function readInput(type) {
  const v = (id) => (document.getElementById(id) || {}).value || "";
  if (type === "question-answering") return { question: v("in-question"), context: v("in-context") };
  const x = { text: v("in-text") };
  if (v("in-pair")) x.text_pair = v("in-pair");
  return x;
}

function renderPrediction(type, input, p) {
  if (type === "question-answering") {
    const c = input.context, s = p.start, e = p.end;
    const ctx = s != null && e != null && e > s ? `${esc(c.slice(0, s))}<mark>${esc(c.slice(s, e))}</mark>${esc(c.slice(e))}` : esc(c);
    return `<p>Answer: <strong class="answer">${esc(p.answer || "(none)")}</strong> <span class="muted">score ${fmt(p.score)}</span></p><p class="highlight">${ctx}</p>`;
  }
  if (type === "token-classification") {
    const text = input.text, ents = [...(p.entities || [])].sort((a, b) => a.start - b.start);
    let html = "", at = 0;
    for (const en of ents) {
      html += esc(text.slice(at, en.start)) + `<mark>${esc(text.slice(en.start, en.end))}<span class="tag">${esc(en.type)}</span></mark>`;
      at = en.end;
    }
    html += esc(text.slice(at));
    const tokens = (p.tokens || []).map((t, i) => `<span>${esc(t)}<small>${esc((p.tags || [])[i] || "")}</small></span>`).join("");
    return `<p class="highlight">${html}</p><p class="muted">${ents.length} span${ents.length === 1 ? "" : "s"} marked; tags per word:</p><div class="tokens">${tokens}</div>`;
  }
  if (type === "regression") return `<p class="muted">Score</p><p class="big">${fmt(p.score, 3)}</p>`;
  const scores = Object.entries(p.scores || { [p.label]: p.score }).sort((a, b) => b[1] - a[1]).slice(0, 12);
  return `<p>Label: <strong class="answer">${esc(p.label)}</strong> <span class="muted">${fmt(p.score)}</span></p>${bars(scores, { max: 1 })}`;
}

async function pageTry(name, version) {
  const list = await apiAll("/tasks");
  if (!list.ok) return (main.innerHTML = `<h2>Try it</h2>${errorHtml(list)}`);
  if (!list.data.length) return (main.innerHTML = `<h2>Try it</h2><p>No tasks yet: <a href="#/new">train one</a>.</p>`);
  name = name || list.data[0].name;
  const d = await api("GET", `/tasks/${encodeURIComponent(name)}`);
  if (!d.ok) return (main.innerHTML = `<h2>Try it</h2>${errorHtml(d)}`);
  const t = d.data;
  const vopts = (sel) => t.versions.map((v) => `<option value="${v.version}"${String(v.version) === String(sel) ? " selected" : ""}>v${v.version}${v.active ? " (active)" : ""}</option>`).join("");
  main.innerHTML = `<h2>Try it</h2>
    <form id="try-form" class="card">
      <div class="row">
        <div class="field"><label for="try-task">Task</label><select id="try-task">${list.data.map((x) => `<option${x.name === name ? " selected" : ""}>${esc(x.name)}</option>`).join("")}</select></div>
        <div class="field"><label for="try-a">Version</label><select id="try-a">${vopts(version || t.active_version)}</select></div>
        <div class="field"><label for="try-b">Compare with</label><select id="try-b"><option value="">(no comparison)</option>${vopts("")}</select></div>
      </div>
      <p class="muted">${esc(t.task_type)}${t.labels.length ? " · labels: " + esc(t.labels.slice(0, 12).join(", ")) + (t.labels.length > 12 ? ` … (${t.labels.length} in all)` : "") : ""}</p>
      ${inputFields(t.task_type)}
      <button type="submit">Predict</button>
    </form>
    <div id="try-out" class="grid2"></div>`;
  document.getElementById("try-task").onchange = (e) => (location.hash = `#/try/${encodeURIComponent(e.target.value)}`);
  document.getElementById("try-form").onsubmit = async (e) => {
    e.preventDefault();
    const input = readInput(t.task_type);
    const picks = [document.getElementById("try-a").value, document.getElementById("try-b").value].filter(Boolean);
    const results = await Promise.all(picks.map((v) => api("POST", `/predict/${encodeURIComponent(t.name)}`, { inputs: [input], version: Number(v) })));
    const out = document.getElementById("try-out");
    if (!out) return; // the user went to another page meanwhile
    out.innerHTML = results.map((r, i) => `<section class="card" aria-label="version ${picks[i]}">
      <h3>v${esc(picks[i])}</h3>${r.ok ? renderPrediction(t.task_type, input, r.data.predictions[0]) : errorHtml(r)}</section>`).join("");
  };
}

// ------------------------------------------------------------------ 5. hub overview
function parseProm(text) {
  const out = [];
  for (const line of text.split("\n")) {
    if (!line || line[0] === "#") continue;
    const m = line.match(/^([a-zA-Z_:][\w:]*)(\{(.*)\})?\s+(\S+)/);
    if (!m) continue;
    const labels = {};
    (m[3] || "").replace(/(\w+)="((?:[^"\\]|\\.)*)"/g, (_, k, v) => (labels[k] = v));
    out.push({ name: m[1], labels, value: Number(m[4]) });
  }
  return out;
}
const sum = (xs) => xs.reduce((a, b) => a + b, 0);

function quantile(buckets, q) { // buckets: [[le, cumulative]] sorted, last +Inf
  const total = buckets.length ? buckets[buckets.length - 1][1] : 0;
  if (!total) return null;
  for (const [le, c] of buckets) if (c >= q * total) return le;
  return null;
}

function workerHtml(rd) {
  // the embedded worker's supervisor, as /readyz reports it ("external": workers run elsewhere)
  const w = rd.worker;
  const training = rd.training || "external";
  if (!w) return `<p class="muted">Workers: ${esc(training === "external" ? "run outside this server (prompthub worker, Celery); those alive are listed below" : training)}.</p>`;
  const badge = training === "up" ? "ok" : "failed";
  const exit = w.last_exit != null ? `, last exit: ${esc(String(w.last_exit))}` : "";
  return `<dl class="kv" id="worker-state"><dt>Embedded worker</dt><dd><span class="badge ${badge}">${esc(w.state || training)}</span>
    pid ${esc(String(w.pid ?? "—"))}, ${fmt(w.restarts || 0, 0)} restarts${exit}${w.error ? `; ${esc(w.error)}` : ""}</dd></dl>`;
}

async function pageHub() {
  const [m, ready, workers] = await Promise.all([api("GET", "/metrics"), api("GET", "/readyz"), api("GET", "/workers")]);
  if (!m.ok) return (main.innerHTML = `<h2>Hub</h2>${errorHtml(m)}`);
  const s = parseProm(String(m.data));
  const one = (n) => sum(s.filter((x) => x.name === n || x.name === n + "_total").map((x) => x.value));
  // per task: requests (all routes that name it; /predict apart), errors, mean latency
  const byTask = {};
  const taskRow = (t) => (byTask[t] ||= { requests: 0, predict: 0, errors: 0, sum: 0, count: 0, psum: 0, pcount: 0 });
  for (const x of s.filter((y) => y.name === "prompthub_requests_total" && y.labels.task)) {
    const r = taskRow(x.labels.task);
    r.requests += x.value;
    if (x.labels.route === "/predict/{task}") r.predict += x.value;
    if (!String(x.labels.status).startsWith("2")) r.errors += x.value;
  }
  for (const x of s.filter((y) => y.name.startsWith("prompthub_task_request_latency_seconds") && y.labels.task)) {
    const r = taskRow(x.labels.task), predict = x.labels.route === "/predict/{task}";
    if (x.name.endsWith("_sum")) { r.sum += x.value; if (predict) r.psum += x.value; }
    if (x.name.endsWith("_count")) { r.count += x.value; if (predict) r.pcount += x.value; }
  }
  const ms = (total, n) => (n ? `${fmt((1000 * total) / n, 1)} ms` : "—");
  const taskRows = Object.entries(byTask).sort((a, b) => b[1].requests - a[1].requests).slice(0, 50).map(([t, r]) => `<tr>
      <th scope="row" data-label="Task">${t === "_unknown" ? '<span class="muted">other names (not found)</span>' : `<a href="#/tasks/${encodeURIComponent(t)}">${esc(t)}</a>`}</th>
      <td data-label="Requests">${fmt(r.requests, 0)}</td><td data-label="Predictions">${fmt(r.predict, 0)}</td>
      <td data-label="Errors">${fmt(r.errors, 0)}</td><td data-label="Mean latency, predict">${ms(r.psum, r.pcount)}</td>
      <td data-label="Mean latency, all">${ms(r.sum, r.count)}</td></tr>`).join("");
  const routes = {};
  for (const x of s.filter((y) => y.name.startsWith("prompthub_request_latency_seconds"))) {
    const r = (routes[x.labels.route] ||= { sum: 0, count: 0, buckets: {} });
    if (x.name.endsWith("_sum")) r.sum += x.value;
    else if (x.name.endsWith("_count")) r.count += x.value;
    else if (x.name.endsWith("_bucket")) r.buckets[x.labels.le] = (r.buckets[x.labels.le] || 0) + x.value;
  }
  const latRows = Object.entries(routes).filter(([, r]) => r.count).sort((a, b) => b[1].count - a[1].count).map(([route, r]) => {
    const b = Object.entries(r.buckets).map(([le, c]) => [le === "+Inf" ? Infinity : Number(le), c]).sort((x, y) => x[0] - y[0]);
    const q = (v) => (v == null ? "—" : v === Infinity ? "> 30 s" : `≤ ${v * 1000} ms`);
    return `<tr><th scope="row" data-label="Route"><code>${esc(route)}</code></th><td data-label="Requests">${fmt(r.count, 0)}</td><td data-label="Mean">${fmt((1000 * r.sum) / r.count, 1)} ms</td><td data-label="p50">${q(quantile(b, 0.5))}</td><td data-label="p95">${q(quantile(b, 0.95))}</td></tr>`;
  }).join("");
  const batch = s.filter((x) => x.name === "prompthub_batch_size_bucket").map((x) => [x.labels.le === "+Inf" ? Infinity : Number(x.labels.le), x.value]).sort((a, b) => a[0] - b[0]);
  const batchCount = one("prompthub_batch_size_count"), batchSum = one("prompthub_batch_size_sum");
  const batchHist = batch.filter(([le]) => le !== Infinity).map(([le, c], i) => [`≤ ${le}`, c - (i ? batch[i - 1][1] : 0)]).filter(([, c]) => c > 0);
  const hits = one("prompthub_cache_hits"), misses = one("prompthub_cache_misses");
  const jobs = s.filter((x) => x.name === "prompthub_jobs").map((x) => [x.labels.state, x.value]);
  const rd = ready.data || {};
  // the training workers' heartbeats (GET /workers: embedded, local and Celery workers alike)
  const workerRows = workers.ok ? workers.data.map((w) => `<tr>
      <th scope="row" data-label="Worker"><code>${esc(w.id.slice(0, 12))}</code></th><td data-label="Host">${esc(w.host)} (pid ${esc(String(w.pid))})</td>
      <td data-label="Executor">${esc(w.executor)}${w.queue ? ` · ${esc(w.queue)}` : ""}</td><td data-label="Device">${esc(w.device)}</td>
      <td data-label="Job">${w.job_id ? `<a href="#/jobs/${esc(w.job_id)}">${esc(w.job_tasks.join(", "))}</a>${w.job_progress && w.job_progress.total ? ` ${w.job_progress.step}/${w.job_progress.total}` : ""}` : "idle"}</td>
      <td data-label="Heartbeat">${when(w.heartbeat_at)}</td></tr>`).join("") : "";
  const workersHtml = workers.ok
    ? `<table class="stack" id="workers"><thead><tr><th scope="col">Worker</th><th scope="col">Host</th><th scope="col">Executor</th><th scope="col">Device</th><th scope="col">Job</th><th scope="col">Heartbeat</th></tr></thead>
      <tbody>${workerRows || '<tr><td colspan="6">No training worker is running.</td></tr>'}</tbody></table>`
    : errorHtml(workers);
  main.innerHTML = `<h2>Hub overview</h2>
    <p class="muted">From <a href="/metrics">/metrics</a> (Prometheus), refreshed every 5 s.</p>
    <div class="grid2">
      <section class="card"><h3>Serving</h3><dl class="kv">
        <dt>Ready</dt><dd>${one("prompthub_ready") ? `<span class="badge ok">ready</span> ${esc(rd.backbone || "")}` : esc(rd.status || "not ready")}</dd>
        <dt>Devices</dt><dd>${esc((rd.devices || []).join(", ") || "—")}</dd>
        <dt>Queue depth (rows)</dt><dd id="queue-depth">${fmt(one("prompthub_queue_rows"), 0)}</dd>
        <dt>Batches</dt><dd>${fmt(batchCount, 0)} forwards, mean ${batchCount ? fmt(batchSum / batchCount, 2) : "—"} rows</dd>
        <dt>Cache</dt><dd>${fmt(hits, 0)} hits, ${fmt(misses, 0)} misses (${hits + misses ? fmt((100 * hits) / (hits + misses), 1) + "% hits" : "—"}), ${fmt(one("prompthub_cache_entries"), 0)} versions, ${bytes(one("prompthub_cache_bytes"))}</dd>
      </dl></section>
      <section class="card"><h3>Training jobs</h3>${bars(jobs, { digits: 0 })}
        ${workerHtml(rd)}</section>
      <section class="card"><h3>Batch sizes (rows per forward)</h3>${bars(batchHist, { digits: 0 })}</section>
      <section class="card"><h3>Cache</h3>${bars([["hits", hits], ["misses", misses]], { digits: 0 })}</section>
    </div>
    <section class="card table-wrap"><h3>Training workers</h3>${workersHtml}</section>
    <section class="card table-wrap"><h3>Requests and latency per task</h3><table class="stack" id="task-requests">
      <thead><tr><th scope="col">Task</th><th scope="col">Requests</th><th scope="col">Predictions</th><th scope="col">Errors</th><th scope="col">Mean latency, predict</th><th scope="col">Mean latency, all</th></tr></thead>
      <tbody>${taskRows || '<tr><td colspan="6">No requests for a task yet.</td></tr>'}</tbody></table></section>
    <section class="card table-wrap"><h3>Latency by route</h3><table class="nowrap" id="route-latency">
      <thead><tr><th scope="col">Route</th><th scope="col">Requests</th><th scope="col">Mean</th><th scope="col">p50</th><th scope="col">p95</th></tr></thead>
      <tbody>${latRows || '<tr><td colspan="5">No requests yet.</td></tr>'}</tbody></table></section>`;
  timer = setTimeout(route, 5000);
}

// ------------------------------------------------------------------ routing and the key
async function route() {
  clearTimeout(timer);
  const seq = ++routeSeq;
  // a refresh of the same page (polling) keeps the keyboard focus where it was
  const focused = main.contains(document.activeElement) && document.activeElement.id ? document.activeElement.id : null;
  const parts = (location.hash || "#/tasks").slice(2).split("/").map(decodeURIComponent);
  const page = parts[0] || "tasks";
  document.querySelectorAll("nav a[data-page]").forEach((a) => (a.dataset.page === page ? a.setAttribute("aria-current", "page") : a.removeAttribute("aria-current")));
  const first = main.dataset.page !== location.hash;
  main.dataset.page = location.hash;
  const pages = {
    tasks: () => (parts[1] ? pageTask(parts[1]) : pageTasks()),
    new: pageNew,
    jobs: () => (parts[1] ? pageJob(parts[1]) : pageJobs()),
    try: () => pageTry(parts[1], parts[2]),
    hub: pageHub,
  };
  await (pages[page] || pageTasks)();
  if (seq !== routeSeq) return;
  if (first) document.title = `PromptHub · ${page}`;
  else if (focused && document.getElementById(focused)) document.getElementById(focused).focus({ preventScroll: true });
  main.dataset.rendered = location.hash || "#/tasks"; // what the tests wait on: this page is drawn
}

function showKeyState() {
  const key = sessionStorage.getItem(KEY);
  document.getElementById("key-state").textContent = key ? `key …${key.slice(-4)} in use` : "no key (none needed on loopback)";
}
document.getElementById("key-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const input = document.getElementById("api-key");
  if (input.value.trim()) sessionStorage.setItem(KEY, input.value.trim());
  input.value = "";
  showKeyState(); route();
});
document.getElementById("key-forget").addEventListener("click", () => { sessionStorage.removeItem(KEY); showKeyState(); route(); });
// charts are drawn for the width they are shown at: a page with one is drawn again when it changes
let resizeTimer = null;
window.addEventListener("resize", () => {
  clearTimeout(resizeTimer);
  resizeTimer = setTimeout(() => document.querySelector("main .chart") && route(), 250);
});
window.addEventListener("hashchange", () => { say(""); main.focus({ preventScroll: true }); route(); });
showKeyState();
route();
