// learnae node dashboard: refreshes the page from the node's own /status, /history and
// /ledger/recent (no other origin), draws the charts with uPlot and the ledger's top as SVG.
"use strict";

const learnae = (window.learnae = { status: null, history: [], charts: {}, updates: 0 });
const REFRESH_MS = 1000 * (window.LEARNAE_REFRESH_S || 2);
const CHART_EVERY = 3; // charts and the ledger picture: every third refresh

function get(obj, path) {
  return path.split(".").reduce((o, k) => (o == null ? undefined : o[k]), obj);
}

function localTime(ms) {
  return ms == null ? "-" : new Date(ms).toLocaleString();
}

// How long before the status a checkpoint was published: "42 s ago" (the same rule as the page the node renders).
function age(nowS, ms) {
  return ms == null ? "-" : `${Math.max(0, nowS - ms / 1000).toFixed(0)} s ago`;
}

function bytes(n) {
  if (n == null) return "-";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return i === 0 ? `${n} B` : `${n.toFixed(1)} ${units[i]}`;
}

// The text of a figure: the same rules as the page the node renders (learnae/dashboard).
function format(key, v) {
  if (v == null) return "-";
  if (key.endsWith(".accuracy")) return `${(100 * v).toFixed(2)} %`;
  if (key.endsWith(".loss")) return v.toFixed(4);
  if (key.endsWith("_bytes")) return bytes(v);
  if (key.endsWith("time_ms")) return localTime(v);
  if (key === "samples_per_s") return v.toFixed(1);
  if (key === "uptime_s") return `${v.toFixed(0)} s`;
  return String(v);
}

function cell(text) {
  const td = document.createElement("td");
  td.textContent = text;
  return td;
}

function rows(tbody, items, empty) {
  tbody.replaceChildren();
  for (const values of items) {
    const tr = document.createElement("tr");
    values.forEach((v) => tr.appendChild(cell(v)));
    tbody.appendChild(tr);
  }
  if (!items.length) {
    const tr = document.createElement("tr");
    const td = cell(empty);
    td.colSpan = 5;
    tr.appendChild(td);
    tbody.appendChild(tr);
  }
}

function render(s) {
  learnae.status = s;
  learnae.updates += 1;
  for (const el of document.querySelectorAll("[data-f]")) {
    const key = el.dataset.f;
    const v = get(s, key);
    el.dataset.v = v == null ? "" : JSON.stringify(v);
    el.textContent = format(key, v);
    if (key === "refused") el.hidden = !v;
  }
  const ckpts = get(s, "ledger.checkpoints_by_author") || {};
  const merged = s.merged_from || {};
  rows(document.querySelector("#peers tbody"), (get(s, "network.peers") || []).map((p) => [
    `${p.peer.slice(0, 12)}…`, p.member ? `${p.member.slice(0, 12)}…` : "-", p.via,
    age(s.now_s, (ckpts[p.author] || {}).time_ms), String(merged[p.author] || 0),
  ]), "no peer connected");
  rows(document.querySelector("#rejections tbody"),
    Object.entries(s.rejections || {}).sort().map(([k, n]) => [k, String(n)]), "none");
  rows(document.querySelector("#kinds tbody"),
    Object.entries(get(s, "ledger.by_kind") || {}).map(([k, n]) => [k, String(n)]), "-");
  const updated = document.getElementById("updated");
  updated.textContent = localTime(1000 * s.now_s);
  updated.dateTime = new Date(1000 * s.now_s).toISOString();
}

function chart(id, title, series, data) {
  const el = document.getElementById(id);
  const width = Math.max(240, el.clientWidth || 600);
  if (!learnae.charts[id]) {
    learnae.charts[id] = new uPlot({
      title, width, height: 220, scales: { x: { time: true } },
      series: [{ label: "time" }, ...series.map(([label, stroke]) => ({ label, stroke, width: 2 }))],
    }, data, el);
  } else {
    learnae.charts[id].setData(data);
  }
}

function drawCharts(history) {
  learnae.history = history;
  const t = history.map((h) => h.time_ms / 1000);
  const col = (k) => history.map((h) => (h[k] == null ? null : h[k]));
  chart("chart-accuracy", "accuracy (fraction of rows right)", [
    ["own held-out data", "#1565c0"], ["swarm test split", "#2e7d32"],
  ], [t, col("accuracy"), col("test_accuracy")]);
  chart("chart-loss", "loss (cross-entropy)", [
    ["own held-out data", "#1565c0"], ["swarm test split", "#2e7d32"], ["training", "#9e9e9e"],
  ], [t, col("loss"), col("test_loss"), col("train_loss")]);
  chart("chart-merges", "merges and rejections (count since start)", [
    ["merges", "#6a1b9a"], ["rejections", "#c62828"],
  ], [t, col("merges"), history.map((h) => Object.values(h.rejections || {}).reduce((a, b) => a + b, 0))]);
}

const KIND_COLOURS = {
  genesis: "#f9a825", checkpoint: "#64b5f6", data: "#81c784", snapshot: "#ce93d8",
  attestation: "#bdbdbd", admit: "#ffb74d", revoke: "#e57373",
};

function drawLedger(txs) {
  const svg = document.getElementById("dag");
  const ns = "http://www.w3.org/2000/svg";
  const heights = [...new Set(txs.map((t) => t.height))].sort((a, b) => a - b);
  const column = new Map(heights.map((h, i) => [h, i]));
  const place = new Map();
  const perHeight = new Map();
  for (const t of txs) {
    const row = perHeight.get(t.height) || 0;
    perHeight.set(t.height, row + 1);
    place.set(t.id, [20 + 28 * column.get(t.height), 16 + 22 * row]);
  }
  const width = 40 + 28 * heights.length;
  const height = 32 + 22 * Math.max(1, ...perHeight.values());
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.replaceChildren();
  for (const t of txs) {
    const [x, y] = place.get(t.id);
    for (const p of t.parents) {
      if (!place.has(p)) continue;
      const [px, py] = place.get(p);
      const line = document.createElementNS(ns, "line");
      Object.entries({ x1: x, y1: y, x2: px, y2: py, stroke: "#9e9e9e" }).forEach(([k, v]) => line.setAttribute(k, v));
      svg.appendChild(line);
    }
  }
  const own = get(learnae.status, "author_key");
  for (const t of txs) {
    const [x, y] = place.get(t.id);
    const dot = document.createElementNS(ns, "circle");
    const attrs = { cx: x, cy: y, r: t.author === own ? 8 : 6, fill: KIND_COLOURS[t.kind] || "#ffffff",
      stroke: t.author === own ? "#000000" : "#616161", "stroke-width": t.tip ? 2.5 : 1 };
    Object.entries(attrs).forEach(([k, v]) => dot.setAttribute(k, v));
    const title = document.createElementNS(ns, "title");
    title.textContent = `${t.kind} ${t.id.slice(0, 16)}… ${t.author === own ? "(this node)" : ""}${t.tip ? " tip" : ""}`;
    dot.appendChild(title);
    dot.classList.add("tx", t.kind);
    svg.appendChild(dot);
  }
}

async function json(path) {
  const response = await fetch(path, { cache: "no-store" });
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return response.json();
}

async function refresh(n) {
  try {
    render(await json("/status"));
    if (n % CHART_EVERY === 0) {
      drawCharts(await json("/history"));
      drawLedger(await json("/ledger/recent"));
    }
    document.body.classList.remove("offline");
  } catch (err) {
    document.body.classList.add("offline"); // the node stopped, or is restarting
  }
  setTimeout(() => refresh(n + 1), REFRESH_MS);
}

render(JSON.parse(document.getElementById("initial").textContent));
window.addEventListener("resize", () => {
  for (const [id, c] of Object.entries(learnae.charts)) {
    c.setSize({ width: Math.max(240, document.getElementById(id).clientWidth), height: 220 });
  }
});
refresh(0);
