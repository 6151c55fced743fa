// promptroute dashboard: reads /activity, /models, /experiments and /artifact; no dependencies.
// Every number shown keeps its raw value in a data-value attribute (the browser test compares
// them with /metrics and /models).
"use strict";

// Distinct hues first: the busiest models get them (colours are assigned by traffic, once).
const PALETTE = ["#5aa9ff", "#ff6b6b", "#3ecf8e", "#f5b945", "#b48cff", "#4dd4d4", "#ff9f5a",
  "#f06292", "#9ccc65", "#7986cb", "#ffd54f", "#4db6ac", "#e57373", "#aed581", "#90a4ae",
  "#ce93d8", "#80deea", "#ffab91", "#c5e1a5", "#b0bec5"];
const KEY_STORE = "promptroute.adminKey";
const SVG = "http://www.w3.org/2000/svg";
const ui = { minutes: 15, timer: null, loads: 0, colors: new Map(), pending: null };

// ---------------------------------------------------------------------------- helpers
const $ = (sel) => document.querySelector(sel);

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined) continue;
    if (k === "class") el.className = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function s(tag, attrs = {}, text) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  return el;
}

const fmtInt = (n) => Number(n).toLocaleString("en-US");
function fmtUsd(x) {
  if (x === null || x === undefined) return "–";
  if (x === 0) return "$0";
  if (x >= 100) return "$" + x.toFixed(0);
  if (x >= 1) return "$" + x.toFixed(2);
  return "$" + Number(x.toPrecision(3)).toString();
}
const fmtPct = (x) => (x === null || x === undefined ? "–" : (100 * x).toFixed(1) + "%");
const fmtMs = (x) => (x === null || x === undefined ? "–" : x < 10 ? x.toFixed(1) : Math.round(x).toString());
function fmtUs(sec) {
  if (sec === null || sec === undefined) return "–";
  return sec < 1e-3 ? Math.round(sec * 1e6) + " µs" : (sec * 1e3).toFixed(sec < 0.1 ? 1 : 0) + " ms";
}
const fmtNum = (x, digits = 3) => (x === null || x === undefined ? "–" : Number(x).toFixed(digits));
const fmtTime = (ts) => new Date(ts * 1000).toLocaleTimeString("en-GB");

function cell(text, value, field, cls) {
  return h("td", { class: cls, "data-field": field, "data-value": value === undefined || value === null ? "" : String(value) }, text);
}

function color(model) {
  if (!ui.colors.has(model)) ui.colors.set(model, PALETTE[ui.colors.size % PALETTE.length]);
  return ui.colors.get(model);
}

function notice(text, kind = "warn") {
  const el = $("#notice");
  el.textContent = text;
  el.className = "notice " + kind;
  el.hidden = !text;
}

async function getJSON(url) {
  const response = await fetch(url, { headers: { accept: "application/json" } });
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    const message = body && body.error ? body.error.message : response.statusText;
    throw new Error(`${url}: ${response.status} ${message}`);
  }
  return body;
}

// ---------------------------------------------------------------------------- admin actions
function adminKey() {
  return sessionStorage.getItem(KEY_STORE);
}

function askKey() {
  const dialog = $("#key-dialog");
  $("#key-input").value = "";
  return new Promise((resolve) => {
    ui.pending = resolve;
    dialog.showModal();
  });
}

function closeKeyDialog(key) {
  $("#key-dialog").close();
  const resolve = ui.pending;
  ui.pending = null;
  if (resolve) resolve(key);
}

async function admin(path, body) {
  let key = adminKey();
  if (!key) key = await askKey();
  if (!key) return null;
  const response = await fetch(path, {
    method: "POST",
    headers: { "content-type": "application/json", "x-api-key": key },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const answer = await response.json().catch(() => null);
  if (response.status === 401) sessionStorage.removeItem(KEY_STORE);
  if (!response.ok) {
    const message = answer && answer.error ? answer.error.message : response.statusText;
    notice(`${path}: ${response.status} ${message}`, "bad");
    return null;
  }
  return answer;
}

async function resetBreaker(model) {
  const answer = await admin(`/admin/breakers/${model}/reset`);
  if (answer) notice(`circuit of ${model} reset: ${answer.breaker.state}`, "ok");
  await refresh();
}

async function reloadArtifact(event) {
  event.preventDefault();
  const path = $("#reload-path").value.trim();
  const answer = await admin("/admin/reload", path ? { artifact: path } : {});
  if (answer) {
    notice(`reloaded ${answer.artifact}: router ${answer.previous_version} → ${answer.router_version}`, "ok");
  }
  await refresh();
}

// ---------------------------------------------------------------------------- sections
function renderKpis(activity, models, artifact) {
  for (const el of document.querySelectorAll(".win")) el.textContent = `· last ${ui.minutes} min`;
  const n = activity.decisions;
  const kd = $("#kpi-decisions");
  kd.textContent = fmtInt(n);
  kd.dataset.value = n;
  const seconds = Math.max(activity.window_seconds, 1);
  $("#kpi-rate").textContent = `${(n / seconds).toFixed(2)} per second`;
  const ks = $("#kpi-spend");
  ks.textContent = fmtUsd(activity.estimated_spend_usd);
  ks.dataset.value = activity.estimated_spend_usd;
  $("#kpi-per-request").textContent = n ? `${fmtUsd(activity.estimated_spend_usd / n)} per request` : "";
  const d = activity.decision_seconds;
  const kl = $("#kpi-latency");
  kl.textContent = `${fmtUs(d.p50)} / ${fmtUs(d.p99)}`;
  kl.dataset.p50 = d.p50 === null ? "" : d.p50;
  kl.dataset.p99 = d.p99 === null ? "" : d.p99;
  $("#kpi-latency-mean").textContent = d.mean === null ? "" : `mean ${fmtUs(d.mean)} · p90 ${fmtUs(d.p90)}`;
  const states = models.models.map((m) => m.breaker.state);
  const open = states.filter((x) => x === "open").length;
  const half = states.filter((x) => x === "half_open").length;
  const kb = $("#kpi-breakers");
  kb.textContent = open ? `${open} open` : half ? `${half} half-open` : "all closed";
  kb.style.color = open ? "var(--bad)" : half ? "var(--warn)" : "var(--ok)";
  $("#kpi-breakers-sub").textContent = `${states.length - open - half} closed · ${half} half-open · ${open} open`;
  const kk = $("#kpi-knob");
  kk.textContent = fmtNum(artifact.knobs.balanced, 4);
  kk.dataset.value = artifact.knobs.balanced;
  $("#kpi-strategy").textContent = `${artifact.default_strategy} head · default priority ${artifact.default_priority}`;
}

function renderTraffic(activity, models) {
  const body = $("#traffic tbody");
  body.replaceChildren();
  const names = new Set([...Object.keys(activity.models), ...Object.keys(activity.totals)]);
  const order = models.models.map((m) => m.name).filter((m) => names.has(m));
  for (const m of names) if (!order.includes(m)) order.push(m);
  order.sort((a, b) => ((activity.models[b] || {}).decisions || 0) - ((activity.models[a] || {}).decisions || 0)
    || ((activity.totals[b] || {}).decisions || 0) - ((activity.totals[a] || {}).decisions || 0));
  for (const m of order) {
    const w = activity.models[m] || { decisions: 0, estimated_spend_usd: 0, share: 0, by_stage: {} };
    const t = activity.totals[m] || { decisions: 0, estimated_spend_usd: 0 };
    const stages = Object.entries(w.by_stage).map(([k, v]) => h("span", { class: "tag" }, `${k} ${fmtInt(v)}`));
    body.append(h("tr", { "data-model": m },
      h("td", { class: "model" }, h("span", { class: "swatch", style: `background:${color(m)}` }), m),
      h("td", { "data-field": "share", "data-value": String(w.share) },
        h("div", { class: "bar" }, h("span", { style: `width:${(100 * w.share).toFixed(2)}%;background:${color(m)}` }),
          h("em", {}, fmtPct(w.share)))),
      cell(fmtInt(w.decisions), w.decisions, "decisions", "num"),
      cell(fmtUsd(w.estimated_spend_usd), w.estimated_spend_usd, "spend", "num"),
      h("td", {}, stages),
      cell(fmtInt(t.decisions), t.decisions, "total-decisions", "num"),
      cell(fmtUsd(t.estimated_spend_usd), t.estimated_spend_usd, "total-spend", "num"),
    ));
  }
  $("#traffic-empty").hidden = activity.decisions > 0;
  renderTimeline(activity, order);
}

function renderTimeline(activity, order) {
  const W = 960, H = 150, L = 36, B = 18, T = 8;
  const slots = Math.max(1, Math.round(activity.window_seconds / activity.bucket_seconds));
  const first = activity.now - activity.window_seconds;
  const totals = activity.timeline.map((b) => Object.values(b.decisions).reduce((a, c) => a + c, 0));
  const max = Math.max(1, ...totals);
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, role: "img" });
  const bw = (W - L) / slots;
  svg.append(s("line", { x1: L, y1: H - B, x2: W, y2: H - B, class: "axis" }));
  svg.append(s("text", { x: L - 6, y: T + 8, "text-anchor": "end" }, String(max)));
  svg.append(s("text", { x: L - 6, y: H - B, "text-anchor": "end" }, "0"));
  svg.append(s("text", { x: L, y: H - 3 }, `−${Math.round(activity.window_seconds / 60)} min`));
  svg.append(s("text", { x: W, y: H - 3, "text-anchor": "end" }, "now"));
  for (const b of activity.timeline) {
    const slot = Math.min(slots - 1, Math.max(0, Math.floor((b.start - first) / activity.bucket_seconds)));
    let y = H - B;
    for (const m of order) {
      const n = b.decisions[m] || 0;
      if (!n) continue;
      const height = ((H - B - T) * n) / max;
      y -= height;
      const rect = s("rect", { x: L + slot * bw + 0.5, y, width: Math.max(bw - 1, 1), height, fill: color(m) });
      rect.append(s("title", {}, `${fmtTime(b.start)} ${m}: ${n} decisions, ${fmtUsd(b.spend[m])}`));
      svg.append(rect);
    }
  }
  $("#timeline").replaceChildren(svg);
}

function renderHealth(models) {
  const body = $("#health tbody");
  body.replaceChildren();
  // What needs attention first: open and half-open circuits, then the models with traffic.
  const rank = { open: 0, half_open: 1, closed: 2 };
  const rows = models.models.map((m, i) => [m, i]).sort(([a, i], [b, j]) =>
    (rank[a.breaker.state] ?? 3) - (rank[b.breaker.state] ?? 3)
    || b.stats.calls - a.stats.calls || Number(b.routable) - Number(a.routable) || i - j);
  for (const [m] of rows) {
    const st = m.stats, br = m.breaker, lat = st.latency_ms;
    const latency = lat ? `${fmtMs(lat.p50)} / ${fmtMs(lat.p95)} / ${fmtMs(lat.p99)} ms` : `est. ${fmtMs(m.latency_ms)} ms`;
    const tags = m.capabilities.map((c) => h("span", { class: "tag" }, c));
    if (!m.routable) tags.push(h("span", { class: "tag warn", title: m.why_not_routable || "not routable" }, "no learned scores"));
    body.append(h("tr", { "data-model": m.name },
      h("td", { class: "model" }, h("span", { class: "swatch", style: `background:${color(m.name)}` }), m.name,
        h("div", { class: "muted" }, m.provider)),
      h("td", { "data-field": "breaker", "data-value": br.state },
        h("span", { class: `state ${br.state}` }, br.state.replace("_", "-")),
        br.trips ? h("span", { class: "muted" }, ` ${br.trips} trip${br.trips > 1 ? "s" : ""}`) : null),
      cell(fmtPct(br.error_rate), br.error_rate, "error-rate", "num"),
      cell(fmtInt(st.calls), st.calls, "calls", "num"),
      cell(fmtPct(st.success_rate), st.success_rate, "success-rate", "num"),
      cell(latency, lat ? lat.p50 : null, "latency-p50", "num"),
      cell(fmtNum(st.mean_quality), st.mean_quality, "quality", "num"),
      h("td", { class: "num" }, `${m.input_price_per_1m} · ${m.output_price_per_1m}`),
      h("td", { class: "num" }, fmtInt(m.context_window)),
      h("td", {}, tags),
      h("td", {}, h("button", { type: "button", class: "small ghost", "data-action": "reset", onclick: () => resetBreaker(m.name) }, "reset")),
    ));
  }
}

function renderTransitions(activity) {
  const list = $("#transitions");
  list.replaceChildren(...activity.breaker_transitions.map((t) => h("li", { "data-model": t.model },
    h("time", {}, fmtTime(t.ts)), h("b", {}, t.model), " ",
    h("span", { class: `state ${t.from}` }, t.from.replace("_", "-")), " → ",
    h("span", { class: `state ${t.to}` }, t.to.replace("_", "-")),
    t.reason ? h("span", { class: "muted" }, ` ${t.reason}`) : null)));
  $("#transitions-empty").hidden = activity.breaker_transitions.length > 0;
}

function ci(pair, fmt) {
  return pair ? h("span", { class: "ci" }, ` [${fmt(pair[0])}, ${fmt(pair[1])}]`) : null;
}

function renderExperiments(data) {
  const root = $("#experiments");
  root.replaceChildren();
  for (const e of data.experiments) {
    const rows = e.variants.map((v) => {
      const treatment = v.model ? `model ${v.model}` : v.knob !== null ? `knob ${v.knob}` : v.artifact ? `artifact ${v.artifact}` : "router";
      const p = v.p_value_vs_control;
      return h("tr", { "data-variant": v.name },
        h("td", {}, h("b", {}, v.name), h("div", { class: "muted" }, treatment)),
        cell(fmtInt(v.assigned), v.assigned, "assigned", "num"),
        cell(fmtInt(v.feedback), v.feedback, "feedback", "num"),
        h("td", { class: "num", "data-field": "success-rate", "data-value": String(v.success_rate) }, fmtPct(v.success_rate), ci(v.success_rate_ci95, fmtPct)),
        h("td", { class: "num" }, fmtMs(v.mean_latency_ms), ci(v.mean_latency_ms_ci95, fmtMs)),
        h("td", { class: "num" }, fmtNum(v.mean_quality), ci(v.mean_quality_ci95, (x) => fmtNum(x))),
        h("td", { class: "num " + (p !== null && p < 0.05 ? "sig" : ""), "data-field": "p-value", "data-value": String(p) },
          p === null ? (v === e.variants[0] ? "control" : "–") : p.toPrecision(2)));
    });
    root.append(h("div", { class: "experiment", "data-experiment": e.name },
      h("h3", {}, e.name, h("span", { class: "muted" },
        ` · ${e.enabled ? "enabled" : "disabled"} · ${fmtPct(e.traffic_share)} of traffic` +
        (e.task_types ? ` · ${e.task_types.join(", ")}` : ""))),
      h("table", { class: "grid" },
        h("thead", {}, h("tr", {}, h("th", {}, "variant"), h("th", { class: "num" }, "assigned"),
          h("th", { class: "num" }, "feedback"), h("th", { class: "num" }, "success (95% CI)"),
          h("th", { class: "num" }, "latency ms"), h("th", { class: "num" }, "quality"),
          h("th", { class: "num" }, "p vs control"))),
        h("tbody", {}, rows))));
  }
  $("#experiments-empty").hidden = data.experiments.length > 0;
}

function nearest(curve, knob) {
  let best = null;
  for (const p of curve) if (!best || Math.abs(p.knob - knob) < Math.abs(best.knob - knob)) best = p;
  return best;
}

function renderCurve(artifact) {
  const curve = artifact.cv_curve.filter((p) => p.cost > 0).sort((a, b) => a.cost - b.cost);
  const root = $("#curve");
  if (!curve.length) {
    root.replaceChildren(h("p", { class: "muted" }, "This artifact carries no cross-validated curve (trained before it was recorded)."));
    return;
  }
  const W = 560, H = 300, L = 48, R = 12, T = 12, B = 34;
  const lx = curve.map((p) => Math.log10(p.cost));
  const qs = curve.map((p) => p.quality);
  let [x0, x1] = [Math.min(...lx), Math.max(...lx)];
  if (x1 - x0 < 1e-9) { x0 -= 0.5; x1 += 0.5; }
  let [y0, y1] = [Math.min(...qs), Math.max(...qs)];
  const pad = Math.max((y1 - y0) * 0.08, 0.005);
  y0 -= pad; y1 += pad;
  const X = (c) => L + ((Math.log10(c) - x0) / (x1 - x0)) * (W - L - R);
  const Y = (q) => H - B - ((q - y0) / (y1 - y0)) * (H - B - T);
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, role: "img" });
  svg.append(s("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis" }));
  svg.append(s("line", { x1: L, y1: T, x2: L, y2: H - B, class: "axis" }));
  for (let e = Math.ceil(x0); e <= Math.floor(x1); e++) {
    const x = X(10 ** e);
    svg.append(s("line", { x1: x, y1: T, x2: x, y2: H - B, stroke: "#1c2430" }));
    svg.append(s("text", { x, y: H - B + 14, "text-anchor": "middle" }, `$1e${e}`));
  }
  for (let i = 0; i <= 4; i++) {
    const q = y0 + ((y1 - y0) * i) / 4;
    svg.append(s("text", { x: L - 6, y: Y(q) + 4, "text-anchor": "end" }, q.toFixed(3)));
  }
  svg.append(s("text", { x: (L + W) / 2, y: H - 4, "text-anchor": "middle" }, "mean cost per request (log)"));
  svg.append(s("path", {
    d: curve.map((p, i) => `${i ? "L" : "M"}${X(p.cost).toFixed(1)},${Y(p.quality).toFixed(1)}`).join(""),
    fill: "none", stroke: "#5aa9ff", "stroke-width": 2,
  }));
  const marks = [["quality", "#3ecf8e"], ["balanced", "#f5b945"], ["cost", "#ff6b6b"]];
  marks.forEach(([name, fill], i) => {
    const p = nearest(artifact.cv_curve, artifact.knobs[name]);
    if (!p || p.cost <= 0) return;
    const dot = s("circle", { cx: X(p.cost), cy: Y(p.quality), r: name === "balanced" ? 6 : 4.5, fill, stroke: "#0e1217", "stroke-width": 1.5, "data-knob": name });
    dot.append(s("title", {}, `${name}: λ=${artifact.knobs[name]} → quality ${p.quality.toFixed(4)} at ${fmtUsd(p.cost)}/request (cross-validated)`));
    svg.append(dot);
    svg.append(s("circle", { cx: L + 16, cy: T + 8 + i * 16, r: 4.5, fill }));
    svg.append(s("text", { x: L + 26, y: T + 12 + i * 16 }, `${name} λ=${fmtNum(artifact.knobs[name], 3)}`));
  });
  root.replaceChildren(svg);
}

function renderArtifact(artifact) {
  $("#router-version").textContent = artifact.router_version;
  const facts = [
    ["version", artifact.router_version],
    ["path", artifact.path],
    ["created", artifact.created_at || "–"],
    ["strategy", artifact.default_strategy],
    ["default knob", fmtNum(artifact.default_knob, 4)],
    ["knobs now", `quality ${artifact.knobs.quality} · balanced ${fmtNum(artifact.knobs.balanced, 4)} · cost ${artifact.knobs.cost}`],
    ["trained on", (artifact.training.files || []).join(", ") + (artifact.training.split ? ` (${artifact.training.split} side)` : "")],
    ["records", artifact.training.records_used === null || artifact.training.records_used === undefined ? "–" : fmtInt(artifact.training.records_used)],
    ["models", `${artifact.scored.length} with learned scores, of ${artifact.catalog_models} in the catalog`],
  ];
  $("#artifact-facts").replaceChildren(...facts.flatMap(([k, v]) => [h("dt", {}, k), h("dd", { "data-field": k }, v)]));
  renderCurve(artifact);
}

// ---------------------------------------------------------------------------- refresh loop
async function refresh() {
  try {
    const [models, activity, experiments, artifact] = await Promise.all([
      getJSON("/models"), getJSON(`/activity?minutes=${ui.minutes}`), getJSON("/experiments"), getJSON("/artifact"),
    ]);
    const busiest = Object.keys(activity.totals).sort((a, b) => activity.totals[b].decisions - activity.totals[a].decisions);
    for (const m of busiest) color(m);
    for (const m of models.models) color(m.name);
    renderKpis(activity, models, artifact);
    renderTraffic(activity, models);
    renderHealth(models);
    renderTransitions(activity);
    renderExperiments(experiments);
    renderArtifact(artifact);
    const status = $("#status");
    status.textContent = "ready";
    status.className = "pill ok";
    $("#updated").textContent = `updated ${fmtTime(activity.now)}`;
    if ($("#notice").classList.contains("bad") && $("#notice").textContent.startsWith("/models")) notice("");
  } catch (error) {
    const status = $("#status");
    status.textContent = "unreachable";
    status.className = "pill bad";
    notice(String(error.message || error), "bad");
  }
  ui.loads += 1;
  document.body.dataset.loaded = String(ui.loads);
}

function schedule() {
  clearInterval(ui.timer);
  ui.timer = $("#auto").checked ? setInterval(refresh, 5000) : null;
}

document.addEventListener("DOMContentLoaded", () => {
  $("#minutes").addEventListener("change", (e) => { ui.minutes = Number(e.target.value); refresh(); });
  $("#auto").addEventListener("change", schedule);
  $("#refresh").addEventListener("click", refresh);
  $("#reload-form").addEventListener("submit", reloadArtifact);
  $("#key-button").addEventListener("click", async () => {
    const key = await askKey();
    if (key) notice("admin key set for this tab", "ok");
  });
  $("#key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const key = $("#key-input").value;
    if (key) sessionStorage.setItem(KEY_STORE, key);
    closeKeyDialog(key || null);
  });
  $("#key-cancel").addEventListener("click", () => closeKeyDialog(null));
  $("#key-forget").addEventListener("click", () => { sessionStorage.removeItem(KEY_STORE); closeKeyDialog(null); notice("admin key forgotten", "ok"); });
  refresh();
  schedule();
});
