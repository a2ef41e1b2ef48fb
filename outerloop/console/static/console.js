// outerloop console: three views (health, agents, one user) that poll the console's JSON every
// second, and the operator's control of agents. Plain DOM (all text set through textContent),
// charts by uPlot (vendored, MIT). Nothing is fetched from anywhere but this server.
"use strict";

const POLL_MS = 1000;
const state = { view: null, user: null, chainItem: null, timer: null, charts: {}, busy: false, seq: 0 };

// --- small helpers ----------------------------------------------------------------------------
function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const kid of kids.flat()) {
    if (kid === null || kid === undefined || kid === false) continue;
    el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  }
  return el;
}
const $ = (id) => document.getElementById(id);
const fmtMs = (v) => (v === null || v === undefined ? "–" : v >= 100 ? `${Math.round(v)} ms` : `${(+v).toFixed(1)} ms`);
const fmtRate = (v) => (v === null || v === undefined ? "–" : `${(100 * v).toFixed(1)}%`);
const fmtNum = (v) => (v === null || v === undefined ? "–" : Number(v).toLocaleString("en-US"));
function fmtTime(ms) {
  if (!ms) return "–";
  const d = new Date(ms);
  return d.toISOString().replace("T", " ").slice(0, 19) + " UTC";
}
function ago(ms, now) {
  if (ms === null || ms === undefined) return "–";
  const s = Math.max(0, ((now || Date.now()) - ms) / 1000);
  if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${(s / 3600).toFixed(1)} h ago`;
  return `${(s / 86400).toFixed(1)} d ago`;
}
function until(ms, now) {
  const s = Math.max(0, (ms - (now || Date.now())) / 1000);
  return s < 3600 ? `${Math.round(s / 60)} min` : s < 86400 ? `${(s / 3600).toFixed(1)} h` : `${(s / 86400).toFixed(1)} d`;
}
function pill(text, kind) { return h("span", { class: `pill ${kind}` }, text); }
function outcomePill(o) {
  return pill(o, o === "ok" ? "ok" : o === "killed" || o === "error" ? "bad" : "warn");
}
function table(headers, rows, attrs) {
  return h("table", attrs || {},
    h("thead", {}, h("tr", {}, headers.map((c) => h("th", { class: c.endsWith(" ") ? "num" : "" }, c.trim())))),
    h("tbody", {}, rows.length ? rows : [h("tr", {}, h("td", { colspan: headers.length, class: "empty" }, "nothing yet"))]));
}
const td = (v, cls) => h("td", { class: cls || "" }, v);
const num = (v) => td(v, "num");
function card(title, ...kids) { return h("section", { class: "card" }, h("h2", {}, title), ...kids); }
function kpi(label, value, attrs) { return h("div", { class: "kpi", ...(attrs || {}) }, h("div", { class: "v" }, value), h("div", { class: "l" }, label)); }
function fill(id, ...kids) { const el = $(id); if (el) el.replaceChildren(...kids.flat()); }

// --- talking to the server -----------------------------------------------------------------------
function key() { return sessionStorage.getItem("outerloop.key") || ""; }
async function api(path, opts) {
  const headers = { ...(opts && opts.headers) };
  if (key()) headers["X-API-Key"] = key();
  const r = await fetch(path, { ...opts, headers });
  let body = null;
  try { body = await r.json(); } catch (e) { body = null; }
  if (!r.ok) {
    const err = new Error((body && body.detail) || `${r.status} ${r.statusText}`);
    err.status = r.status;
    throw err;
  }
  return body;
}
function banner(text) {
  const b = $("banner");
  if (text) { b.textContent = text; b.hidden = false; } else { b.hidden = true; }
}
function live(ok, text) {
  const el = $("live");
  el.className = `live ${ok ? "ok" : "err"}`;
  el.textContent = text;
}

// --- charts (uPlot) --------------------------------------------------------------------------------
function chart(id, opts, data) {
  const host = $(id);
  if (!host) return;
  const width = Math.max(300, host.clientWidth || 400);
  const old = state.charts[id];
  if (old && old.root.isConnected && old._sig === opts._sig) {
    old.setData(data);
    if (Math.abs(old.width - width) > 20) old.setSize({ width, height: opts.height });
    return;
  }
  if (old) old.destroy();
  host.replaceChildren();
  const u = new uPlot({ ...opts, width }, data, host);
  u._sig = opts._sig;
  state.charts[id] = u;
}
function budgetLine(getBudget) {
  return (u) => {
    const b = getBudget();
    if (!b) return;
    const x = u.valToPos(b, "x", true);
    const ctx = u.ctx;
    ctx.save();
    ctx.strokeStyle = "#c4320a"; ctx.lineWidth = 2 * devicePixelRatio; ctx.setLineDash([6 * devicePixelRatio, 4 * devicePixelRatio]);
    ctx.beginPath(); ctx.moveTo(x, u.bbox.top); ctx.lineTo(x, u.bbox.top + u.bbox.height); ctx.stroke();
    ctx.fillStyle = "#c4320a"; ctx.font = `${11 * devicePixelRatio}px sans-serif`;
    ctx.fillText(`budget ${Math.round(b)} ms`, x + 4 * devicePixelRatio, u.bbox.top + 12 * devicePixelRatio);
    ctx.restore();
  };
}

// --- routing and polling ------------------------------------------------------------------------------
function route() {
  const m = location.hash.match(/^#\/(health|agents|user)(?:\/(.+))?$/);
  const view = m ? m[1] : "health";
  const user = view === "user" && m && m[2] ? decodeURIComponent(m[2]) : null;
  if (view !== state.view || user !== state.user) {
    state.view = view; state.user = user; state.chainItem = null; state.seq += 1;
    for (const c of Object.values(state.charts)) c.destroy();
    state.charts = {};
    document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("active", a.dataset.view === view));
    ({ health: skeletonHealth, agents: skeletonAgents, user: skeletonUser })[view]();
  }
  refresh();
}
async function refresh() {
  clearTimeout(state.timer);
  if (state.busy) { state.timer = setTimeout(refresh, POLL_MS); return; }
  state.busy = true;
  const seq = state.seq;
  try {
    if (state.view === "health") await updateHealth(seq);
    else if (state.view === "agents") await updateAgents(seq);
    else if (state.view === "user" && state.user) await updateUser(seq);
    banner(null);
    live(true, `live · updated ${new Date().toLocaleTimeString("en-GB")}`);
  } catch (e) {
    live(false, "not updating");
    banner(`Could not refresh: ${e.message}`);
  } finally {
    state.busy = false;
    if (document.visibilityState !== "hidden") state.timer = setTimeout(refresh, POLL_MS);
  }
}
document.addEventListener("visibilitychange", () => { if (document.visibilityState === "visible") refresh(); });

// --- health ---------------------------------------------------------------------------------------------
function skeletonHealth() {
  $("view").replaceChildren(
    h("h1", {}, "Is the outer loop healthy?"),
    h("div", { class: "kpis", id: "h-kpis" }),
    h("div", { class: "grid" },
      card("API: recommendation requests per second and P99 (ms)", h("div", { id: "c-api" })),
      card("Event → refreshed row (ms)", h("div", { id: "c-refresh" }), h("p", { class: "muted", id: "h-refresh-note" }))),
    card("Daemons (heartbeats)", h("div", { id: "h-daemons" })),
    h("div", { class: "grid" },
      card("Event stream, per shard", h("div", { id: "h-streams" })),
      card("API processes", h("div", { id: "h-api" }))),
    card("Dead letters", h("div", { id: "h-dead" })));
}
async function updateHealth(seq) {
  const d = await api("console/api/health");
  if (seq !== state.seq) return;
  const liveD = d.daemons.filter((x) => x.live);
  const lag = d.streams.reduce((a, s) => a + (s.lag || 0), 0);
  const pending = d.streams.reduce((a, s) => a + (s.pending || 0), 0);
  fill("h-kpis",
    kpi("daemons alive", `${liveD.length} / ${d.daemons.length}`, { "data-testid": "daemons-alive" }),
    kpi("stream lag / pending", `${fmtNum(lag)} / ${fmtNum(pending)}`),
    kpi("dead letters", fmtNum(d.dead_letters.total)),
    kpi("API requests/s (10 s)", d.api.rate_10s.toFixed(1)),
    kpi("API P50 / P99 (60 s)", `${fmtMs(d.api.p50_ms_60s)} / ${fmtMs(d.api.p99_ms_60s)}`, { "data-testid": "api-latency" }),
    kpi("degraded answers (60 s / all)", `${d.api.degraded_60s} / ${d.api.degraded_total}`),
    kpi("event → row P50 / P99", `${fmtMs(d.refresh.p50_ms)} / ${fmtMs(d.refresh.p99_ms)}`));
  $("recent-users").replaceChildren(...d.recent_users.map((u) => h("option", { value: u })));
  fill("h-daemons", table(["consumer", "state", "last beat", "pid", "events applied", "cycles", "cycle P50 ", "cycle P99 ",
    "kills ", "dead letters ", "plan cache ", "tool cache "],
    d.daemons.map((x) => {
      const s = x.stats || {}; const cycles = Object.values(s.cycles || {}).reduce((a, b) => a + b, 0);
      const loop = x.loop || {};
      return h("tr", { "data-testid": "daemon" }, td(x.consumer, "mono"), td(x.live ? pill("alive", "ok") : pill("no heartbeat", "bad")),
        td(ago(x.beat_ms, d.now_ms)), td(x.pid ?? "–"), num(fmtNum(s.events_applied)), num(fmtNum(cycles)),
        num(fmtMs(s.cycle_p50_ms)), num(fmtMs(s.cycle_p99_ms)), num(fmtNum(s.kills)), num(fmtNum(s.dead_letters)),
        num(fmtRate(loop.plan_cache_hit_rate)), num(fmtRate(loop.tool_cache_hit_rate)));
    })));
  fill("h-streams", table(["stream", "group", "entries ", "lag ", "pending "],
    d.streams.map((s) => h("tr", {}, td(s.stream, "mono"), td(s.group), num(fmtNum(s.length)), num(fmtNum(s.lag)), num(fmtNum(s.pending))))));
  fill("h-api", table(["process", "requests ", "req/s ", "P50 ", "P99 ", "degraded "],
    d.api.instances.map((i) => h("tr", {}, td(i.name, "mono"), num(fmtNum(i.requests_total)), num(i.rate_10s.toFixed(1)),
      num(fmtMs(i.p50_ms_60s)), num(fmtMs(i.p99_ms_60s)), num(fmtNum(i.degraded_total))))));
  const reasons = Object.entries(d.dead_letters.by_reason).map(([r, n]) => `${r} (${n})`).join(", ");
  fill("h-dead", h("p", { class: "muted" }, `${fmtNum(d.dead_letters.total)} in the dead-letter stream` + (reasons ? `; recent reasons: ${reasons}` : "")),
    table(["when", "reason", "entry", "deliveries "], d.dead_letters.recent.map((x) => h("tr", {},
      td(fmtTime(x.dead_at_ms)), td(x.reason), td(`${x.stream} ${x.entry_id}`, "mono"), num(x.deliveries)))));
  $("h-refresh-note").textContent = `${d.refresh.n} recent refreshes, measured ${d.refresh.measured}.`;
  const s = d.api.series;
  const nowS = d.now_ms / 1000;
  chart("c-api", { _sig: "api", height: 200, scales: { x: { time: true, range: () => [nowS - 120, nowS] }, ms: { auto: true } },
    series: [{}, { label: "requests/s", stroke: "#2f6fed", width: 1.5 }, { label: "degraded/s", stroke: "#b54708" },
      { label: "P99 ms", stroke: "#c4320a", scale: "ms", dash: [4, 3] }],
    axes: [{}, { label: "req/s" }, { side: 1, scale: "ms", label: "ms", grid: { show: false } }] },
  [s.map((r) => r[0]), s.map((r) => r[1]), s.map((r) => r[2]), s.map((r) => r[4])]);
  const rs = d.refresh.series;
  chart("c-refresh", { _sig: "refresh", height: 200,
    scales: { x: { time: true, range: (u, lo, hi) => [Math.min(lo ?? nowS, nowS - 600), nowS + 5] } },
    series: [{}, { label: "event → row ms", stroke: "#1a7f37", width: 0, points: { show: true, size: 5, fill: "#1a7f37" } }],
    axes: [{}, { label: "ms" }] },
  [rs.map((r) => r[0] / 1000), rs.map((r) => r[1])]);
}

// --- agents --------------------------------------------------------------------------------------------
function skeletonAgents() {
  $("view").replaceChildren(
    h("h1", {}, "Agents"),
    h("div", { class: "kpis", id: "a-kpis" }),
    card("Runs per agent", h("div", { id: "a-table" }), h("p", { class: "muted", id: "a-window" })),
    card("Control (the API key is required)", controlPanel()),
    card("Run time against each agent's budget (recent runs; dashed line: the budget)", h("div", { class: "hists", id: "a-hists" })),
    h("div", { class: "grid" },
      card("Runs and kills per minute (last hour)", h("div", { id: "c-kills" })),
      card("Caches", h("div", { id: "a-caches" }))),
    card("Control log: every change, who and when", h("div", { id: "a-log" })));
}
function controlPanel() {
  return h("div", {},
    h("div", { class: "controls" },
      h("label", { for: "ctl-agent" }, "agent"), h("select", { id: "ctl-agent" }),
      h("button", { id: "ctl-pause", class: "danger", onclick: () => control("pause") }, "Pause"),
      h("button", { id: "ctl-resume", onclick: () => control("resume") }, "Resume"),
      h("label", { for: "ctl-budget" }, "budget ms"), h("input", { id: "ctl-budget", type: "number", min: "1", step: "1", style: "width:90px" }),
      h("button", { id: "ctl-set-budget", onclick: () => control("budget") }, "Set budget"),
      h("button", { id: "ctl-reset-budget", class: "secondary", onclick: () => control("reset_budget") }, "Declared budget"),
      h("label", { for: "ctl-note" }, "note"), h("input", { id: "ctl-note", placeholder: "why (recorded)", maxlength: "200" })),
    h("div", { id: "ctl-msg", class: "msg" }));
}
async function control(action) {
  const agent = $("ctl-agent").value;
  const msg = $("ctl-msg");
  const operator = (localStorage.getItem("outerloop.operator") || "").trim() || "operator";
  const body = { action, operator, note: $("ctl-note").value };
  if (action === "budget") body.latency_ms = Number($("ctl-budget").value);
  msg.className = "msg";
  msg.textContent = `${action} ${agent}…`;
  try {
    const r = await api(`console/api/control/${encodeURIComponent(agent)}`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
    msg.className = "msg ok";
    msg.textContent = `${r.change.action} ${agent}: recorded at ${fmtTime(r.change.at_ms)} by ${r.change.by}; the daemons apply it at their next cycle.`;
    refresh();
  } catch (e) {
    msg.className = "msg err";
    msg.textContent = `Refused (${e.status || "error"}): ${e.message}`;
  }
}
async function updateAgents(seq) {
  const d = await api("console/api/agents");
  if (seq !== state.seq) return;
  const runnable = d.agents.filter((a) => a.declared);
  const sel = $("ctl-agent");
  const names = runnable.map((a) => a.name).join(",");
  if (sel.dataset.names !== names) {
    const keep = sel.value;
    sel.replaceChildren(...runnable.map((a) => h("option", { value: a.name }, a.name)));
    if (keep && runnable.some((a) => a.name === keep)) sel.value = keep;
    sel.dataset.names = names;
  }
  const tot = (k) => d.agents.reduce((a, x) => a + x.totals[k], 0);
  fill("a-kpis", kpi("runs", fmtNum(tot("all"))), kpi("killed", fmtNum(tot("killed"))), kpi("errors", fmtNum(tot("error"))),
    kpi("over budget (tools/tokens)", fmtNum(tot("over_budget"))),
    kpi("retries (measured)", fmtNum(d.agents.reduce((a, x) => a + x.recent.retries, 0))),
    kpi("plan-cache hit rate (recent cycles)", fmtRate(d.caches.plan_cache_hit_rate_recent)),
    kpi("paused agents", d.agents.filter((a) => a.control.paused).map((a) => a.name).join(", ") || "none", { "data-testid": "paused-agents" }));
  fill("a-table", table(["agent", "state", "budget", "ok ", "killed ", "error ", "over budget ", "recent P50 ", "recent P99 ",
    "over deadline ", "overrun P99 ", "retries ", "tool calls/run ", "last run"],
    d.agents.map((a) => {
      const c = a.control, r = a.recent, decl = a.declared;
      const st = c.paused ? h("span", {}, pill("paused", "paused"), ` by ${c.paused_by} ${ago(c.paused_at_ms, d.now_ms)}`)
        : decl ? pill("running", "ok") : pill(a.name === "planner" ? "planning step" : "not reported by a daemon", "info");
      const budget = c.budget ? h("span", {}, h("b", {}, fmtMs(c.budget.latency_ms)), ` (declared ${fmtMs(decl && decl.budget_ms)}; set by ${c.budget_by} ${ago(c.budget_at_ms, d.now_ms)})`)
        : fmtMs(decl ? decl.budget_ms : r.budget_ms);
      return h("tr", { "data-testid": "agent-row", "data-agent": a.name, "data-paused": c.paused ? "1" : "0" },
        td(a.name, "mono"), td(st), td(budget), num(fmtNum(a.totals.ok)), num(fmtNum(a.totals.killed)), num(fmtNum(a.totals.error)),
        num(fmtNum(a.totals.over_budget)), num(fmtMs(r.p50_ms)), num(fmtMs(r.p99_ms)), num(fmtNum(r.over_deadline)),
        num(fmtMs(r.overrun_p99_ms)), num(fmtNum(r.retries)), num(r.tool_calls_per_run ?? "–"), td(ago(r.last_run_ms, d.now_ms)));
    })));
  $("a-window").textContent = `Totals since the journal started; "recent" = the last ${d.window.cycles} cycles` +
    (d.window.since_ms ? ` (since ${fmtTime(d.window.since_ms)})` : "") + ".";
  const hists = $("a-hists");
  for (const a of d.agents) {
    if (!a.recent.n) continue;
    const id = `c-hist-${a.name.replace(/[^A-Za-z0-9_-]/g, "_")}`;
    if (!$(id)) hists.append(h("div", { "data-testid": "hist" }, h("div", { class: "muted" }, a.name), h("div", { id })));
    const hist = a.recent.histogram, e = hist.edges_ms;
    const budget = (a.control.budget && a.control.budget.latency_ms) || a.recent.budget_ms;
    chart(id, { _sig: `hist-${a.name}`, height: 170, legend: { show: false },
      scales: { x: { time: false, range: () => [0, e[e.length - 1]] } },
      series: [{ label: "ms" }, { label: "runs", fill: "rgba(47,111,237,.35)", stroke: "#2f6fed", paths: uPlot.paths.bars({ size: [0.95, 100], align: 1 }) }],
      axes: [{ label: "run time (ms)" }, { label: "runs" }],
      hooks: { draw: [budgetLine(() => budget)] } },
    [e.slice(0, -1), hist.counts]);
  }
  chart("c-kills", { _sig: "kills", height: 200, scales: { x: { time: true } },
    series: [{}, { label: "runs/min", stroke: "#2f6fed" }, { label: "kills/min", stroke: "#c4320a", fill: "rgba(196,50,10,.15)", width: 2 }],
    axes: [{}, { label: "per minute" }] },
  [d.minutes.map((m) => m / 1000), d.runs_per_minute, d.kills_per_minute]);
  fill("a-caches", table(["daemon", "cycles ", "plan cache ", "tool cache ", "memory cache "],
    d.caches.daemons.map((x) => h("tr", {}, td(x.name, "mono"), num(fmtNum(x.cycles)), num(fmtRate(x.plan_cache_hit_rate)),
      num(fmtRate(x.tool_cache_hit_rate)), num(fmtRate(x.memory_cache_hit_rate))))));
  fill("a-log", table(["when", "agent", "change", "value", "by", "from", "note"],
    d.control_log.map((x) => h("tr", { "data-testid": "control-log" }, td(fmtTime(x.at_ms)), td(x.agent, "mono"), td(x.action),
      td(x.value, "mono"), td(x.by), td(x.source), td(x.note)))));
}

// --- one user --------------------------------------------------------------------------------------------
function skeletonUser() {
  if (!state.user) {
    $("view").replaceChildren(h("h1", {}, "One user"), card("Search", h("p", {}, "Type a user id in the box above (recent users are suggested).")));
    return;
  }
  $("view").replaceChildren(
    h("h1", {}, "User ", h("span", { class: "mono", id: "u-id" }, state.user)),
    h("div", { class: "kpis", id: "u-kpis" }),
    card("Rows served now (click an item for the chain that put it there)", h("div", { class: "rows", id: "u-served" })),
    h("div", { id: "u-chain" }),
    card("Memory facts", h("div", { id: "u-facts" })),
    card("Stored agent rows", h("div", { id: "u-stored" })),
    card("Last cycles: triggers, plan, every run", h("div", { id: "u-cycles" })),
    h("div", { class: "grid" },
      card("Recent history", h("div", { id: "u-history" })),
      card("Sessions", h("div", { id: "u-sessions" }))));
}
function evidenceText(ev) { return Array.isArray(ev) ? `${ev.length} event(s): ${ev.slice(0, 4).join(", ")}${ev.length > 4 ? ", …" : ""}` : String(ev); }
function factValue(f) {
  const skip = new Set(["kind", "key", "evidence", "confidence", "source", "version"]);
  return Object.entries(f).filter(([k]) => !skip.has(k)).map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`).join(", ");
}
async function updateUser(seq) {
  const user = state.user;
  const d = await api(`console/api/users/${encodeURIComponent(user)}`);
  if (seq !== state.seq) return;
  const served = d.served || { rows: [] };
  fill("u-kpis", kpi("history version", fmtNum(d.history_version)), kpi("memory version", fmtNum(d.memory.version)),
    kpi("facts", fmtNum(d.memory.facts.length)), kpi("rows served", fmtNum(served.rows.length)),
    kpi("cycles recorded", fmtNum(d.cycles.length)), kpi("local offset", d.profile.utc_offset_min !== undefined ? `${d.profile.utc_offset_min} min` : "UTC"),
    kpi("served", served.degraded ? "degraded" : served.cold_start ? "cold start" : `ranker: ${served.ranker || "–"}`));
  fill("u-served", served.rows.map((r) => h("div", { class: "row-card", "data-testid": "served-row", "data-row-id": r.row_id, "data-run-id": r.run_id || "" },
    h("h3", {}, r.title),
    h("div", { class: "meta" }, pill(r.source, r.source === "agent" ? "info" : "ok"), ` ${r.produced_by}`,
      r.run_id ? ` · run ${r.run_id.slice(0, 8)}` : "", r.expires_at ? ` · expires in ${until(r.expires_at, d.now_ms)}` : ""),
    h("div", { class: "meta" }, r.reason),
    h("ol", {}, r.items.map((it) => h("li", { class: state.chainItem === it.item_id ? "sel" : "", "data-item": it.item_id,
      onclick: () => { state.chainItem = it.item_id; refresh(); } }, `${it.title}`, h("span", { class: "muted" }, ` ${it.origin}`)))))));
  if (!served.rows.length) fill("u-served", h("p", { class: "empty" }, "nothing served (unknown user or Redis unavailable)"));
  fill("u-facts", table(["kind", "what", "evidence", "confidence ", "source agent", "version "],
    d.memory.facts.map((f) => h("tr", { "data-testid": "fact", "data-kind": f.kind },
      td(f.kind, "mono"), td(factValue(f) + (f.next_title ? ` (${f.next_title})` : "")), td(evidenceText(f.evidence), "mono"),
      num(f.confidence), td(f.source), num(f.version)))));
  fill("u-stored", table(["row", "produced by", "run", "age", "state", "reason"],
    d.stored_rows.map((r) => h("tr", { "data-testid": "stored-row", "data-row-id": r.row_id }, td(r.title || r.row_id),
      td(r.produced_by), td((r.run_id || "").slice(0, 8), "mono"), td(r.age_ms === null ? "–" : ago(d.now_ms - r.age_ms, d.now_ms)),
      td(r.live ? pill("live", "ok") : pill("expired", "warn")), td(r.reason)))));
  fill("u-history", table(["when (event time)", "event", "title"],
    d.history.slice(0, 25).map((x) => h("tr", {}, td(fmtTime(x.ts)), td(x.type), td(x.title)))));
  fill("u-sessions", h("div", {},
    table(["open session", "since", "last event", "events "], d.sessions.open.map((s) => h("tr", {}, td(s.state), td(fmtTime(s.start_ts)), td(fmtTime(s.last_ts)), num(s.events)))),
    h("br"),
    table(["closed session", "from", "to", "events ", "ended on"], d.sessions.closed.map((s) => h("tr", {}, td(s.sid, "mono"),
      td(fmtTime(s.start_ts)), td(fmtTime(s.end_ts)), num(s.n), td(s.last_item ? `item ${s.last_item}` : "–"))))));
  fill("u-cycles", d.cycles.map((c) => h("div", { class: "cycle", "data-testid": "cycle" },
    h("div", {}, h("b", {}, fmtTime(c.started_ms)), h("span", { class: "muted" }, ` · ${fmtMs(c.elapsed_ms)} · daemon ${c.daemon}`),
      c.refresh_ms !== null ? h("span", { class: "muted" }, ` · event → row ${fmtMs(c.refresh_ms)}`) : ""),
    h("div", {}, "triggers: ", c.triggers.map((t) => h("span", {}, pill(`${t.name}×${t.count}`, "info"), " ",
      h("span", { class: "muted mono" }, t.events.map((e) => `${e.type}:${e.item_id ?? "-"}`).join(" ")), " "))),
    h("div", {}, "plan: ", c.plans.map((p) => `[${p.policy}] ${p.rationale}`).join(" | ")),
    c.notes.length ? h("div", { class: "muted" }, "notes: ", c.notes.join("; ")) : "",
    table(["agent", "outcome", "run time ", "budget ", "overrun ", "tool calls ", "retries ", "writes ", "run id"],
      c.records.map((r) => h("tr", { "data-testid": "run", "data-agent": r.agent }, td(r.agent, "mono"), td(outcomePill(r.outcome)),
        num(fmtMs(r.elapsed_ms)), num(fmtMs(r.budget_ms)), num(r.overrun_ms ? fmtMs(r.overrun_ms) : "–"), num(r.tool_calls),
        num(r.retries), num(r.writes_committed), td(r.run_id.slice(0, 8), "mono")))))));
  if (!d.cycles.length) fill("u-cycles", h("p", { class: "empty" }, "no cycle recorded for this user yet"));
  if (state.chainItem !== null) renderChain(d, state.chainItem);
}
function renderChain(d, item) {
  const links = [];
  for (const r of (d.served || { rows: [] }).rows) {
    r.items.forEach((it, i) => { if (it.item_id === item) links.push({ r, it, pos: i + 1 }); });
  }
  const title = links.length ? links[0].it.title : `item ${item}`;
  const steps = links.map(({ r, it, pos }) => {
    const li = [h("li", {}, `Served at position ${pos} of the row “${r.title}” (${r.source}, produced by ${r.produced_by}; origin ${it.origin}).`)];
    if (r.source === "agent" && r.run_id) {
      const c = d.cycles.find((cy) => cy.records.some((x) => x.run_id === r.run_id));
      const rec = c && c.records.find((x) => x.run_id === r.run_id);
      li.push(h("li", {}, `The row was committed by run ${r.run_id} of ${r.produced_by}` +
        (rec ? ` (${rec.outcome}, ${fmtMs(rec.elapsed_ms)} of a ${fmtMs(rec.budget_ms)} budget, ${rec.writes_committed} write(s)).` : " (older than the cycles kept).")));
      li.push(h("li", {}, `Row reason: ${r.reason}`));
      if (c) {
        const steps2 = c.plans.flatMap((p) => p.steps.filter((s) => s.agent === r.produced_by && (!s.rows.length || s.rows.includes(r.row_id)))
          .map((s) => `${s.reason} [${p.policy}]`));
        li.push(h("li", {}, `The planner asked for it at ${fmtTime(c.started_ms)}: ${steps2.join("; ") || c.plans.map((p) => p.rationale).join(" | ")}`));
        li.push(h("li", {}, "Because of: ", c.triggers.map((t) => `${t.name} (${t.count}; events ${t.events.map((e) => `${e.type} of ${e.item_id ?? "-"} [${e.event_id}]`).join(", ") || "none"})`).join("; ")));
      }
    } else {
      li.push(h("li", {}, `The inner loop put it there: the transformer over the history (version ${d.history_version}), FAISS retrieval, the ranker (${d.served.ranker}).`));
    }
    return li;
  });
  fill("u-chain", h("section", { class: "card chain", "data-testid": "chain" }, h("h2", {}, `Why “${title}” is on the screen`),
    links.length ? h("ol", {}, steps.flat()) : h("p", { class: "empty" }, "not served any more"),
    h("button", { class: "secondary", onclick: () => { state.chainItem = null; fill("u-chain"); refresh(); } }, "Close")));
}

// --- start ------------------------------------------------------------------------------------------------
$("user-search").addEventListener("submit", (e) => {
  e.preventDefault();
  const q = $("user-q").value.trim();
  if (q) location.hash = `#/user/${encodeURIComponent(q)}`;
});
$("op-key").value = key();
$("op-key").addEventListener("input", (e) => sessionStorage.setItem("outerloop.key", e.target.value));
$("op-name").value = localStorage.getItem("outerloop.operator") || "";
$("op-name").addEventListener("input", (e) => localStorage.setItem("outerloop.operator", e.target.value));
window.addEventListener("hashchange", route);
window.addEventListener("resize", () => { for (const c of Object.values(state.charts)) c.setSize({ width: Math.max(300, c.root.parentElement.clientWidth), height: c.height }); });
route();
