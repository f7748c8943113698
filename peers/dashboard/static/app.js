// multillmn peer dashboard: renders /dashboard/api/snapshot, then every server-sent snapshot; asks questions.
"use strict";

const state = { chart: null, chartKey: "", chartUpdates: 0, snapshots: 0 };
window.multillmnDashboard = state;

const $ = (id) => document.getElementById(id);
const short = (id) => (id ? String(id).slice(0, 10) : "");
const COLOURS = ["#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563"];

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const c of cells) {
    const td = document.createElement("td");
    if (c instanceof Node) td.appendChild(c); else td.textContent = c === null || c === undefined ? "—" : String(c);
    tr.appendChild(td);
  }
  return tr;
}

function renderHeader(me) {
  $("me").textContent = `${me.moniker} (${short(me.peer_id)})`;
  const parts = [`phase ${me.phase}`];
  if (me.height !== undefined) {
    parts.push(`chain ${me.chain_id}`, `height ${me.height}`, `${me.pending_queries} pending`,
               `weights digest ${short(me.weights_digest)}`);
  }
  $("summary").textContent = parts.join(" · ");
}

function renderPeers(peers) {
  const body = $("peers").tBodies[0];
  body.replaceChildren(...peers.map((p) => {
    const name = el("span", `${p.moniker} `);
    name.appendChild(el("span", short(p.peer_id), "mono small"));
    const link = el("span", p.link === "self" ? "this peer" : p.link, p.link === "down" ? "bad" : "ok");
    return row([name, p.model, p.phase, p.height, `${p.weight} (${(100 * p.share).toFixed(1)}%)`, link]);
  }));
}

function renderChart(weights) {
  const box = $("weights-chart");
  const heights = weights.heights;
  const key = weights.series.map((s) => s.peer_id).join(",");
  const data = [heights, ...weights.series.map((s) => s.weights)];
  if (!state.chart || state.chartKey !== key) {
    if (state.chart) state.chart.destroy();
    const series = [{ label: "height" }, ...weights.series.map((s, i) => ({
      label: `${s.moniker} ${short(s.peer_id)}`, stroke: COLOURS[i % COLOURS.length], width: 2,
      points: { show: heights.length < 30 },
    }))];
    state.chart = new uPlot({
      width: Math.max(320, box.clientWidth || 800), height: 260, series,
      scales: { x: { time: false } }, legend: { live: false },
      axes: [{ label: "height", incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000] }, { label: "weight" }],
    }, data, box);
    state.chartKey = key;
  } else {
    state.chart.setData(data);
  }
  state.chartUpdates += 1;
  box.dataset.heights = String(heights.length);
  box.dataset.lastHeight = String(heights.length ? heights[heights.length - 1] : 0);
  box.dataset.updates = String(state.chartUpdates);
}

function renderDecisions(decisions) {
  const box = $("decisions");
  if (!decisions.length) { box.replaceChildren(el("p", "No decisions at this peer yet.", "small")); return; }
  box.replaceChildren(...decisions.map((d) => {
    const div = el("div", null, "decision");
    div.dataset.height = d.height;
    div.appendChild(el("div", `height ${d.height}, round ${d.round}: ${d.question}`, "q"));
    const share = d.total_weight ? (100 * d.agreed_weight / d.total_weight).toFixed(0) : "?";
    div.appendChild(el("div", `→ ${d.answer}  (${share}% of the weight agreed, ${d.precommits} precommits)`));
    const table = el("table");
    table.appendChild(row(["peer", "model", "signed answer", "agreed", "signature"]));
    table.rows[0].className = "small";
    for (const a of d.answers) {
      table.appendChild(row([a.moniker || short(a.peer_id), a.model, a.text,
        el("span", a.agreed ? "agreed" : "disagreed", a.agreed ? "agree" : "disagree"),
        el("span", short(a.signature) + "…", "mono small")]));
    }
    div.appendChild(table);
    return div;
  }));
}

function renderLedger(ledger) {
  const body = $("ledger").tBodies[0];
  const ev = $("evidence");
  if (!ledger) {
    $("ledger-state").textContent = "This peer runs without a ledger.";
    body.replaceChildren(); ev.replaceChildren(el("li", "—")); return;
  }
  $("ledger-state").textContent = `${ledger.entries} entries · state ${short(ledger.state_hash)}`;
  body.replaceChildren(...ledger.tail.map((e) => {
    let what = "";
    if (e.type === "certificate") what = `height ${e.height}: ${e.answer}`;
    else if (e.type === "evidence") what = `${e.kind} by ${short(e.peer_id)}`;
    else if (e.type === "membership") what = `${e.action} ${short(e.peer_id)}`;
    else if (e.type === "weights") what = `height ${e.height}`;
    return row([e.index, e.type, what]);
  }));
  ev.replaceChildren(...(ledger.evidence.length
    ? ledger.evidence.map((e) => el("li", `${e.kind}: ${short(e.peer_id)}`, "bad"))
    : [el("li", "none", "small")]));
  if (ledger.evidence_count > ledger.evidence.length) {
    ev.appendChild(el("li", `(${ledger.evidence_count} in all)`, "small"));
  }
}

function render(snap) {
  state.snapshots += 1;
  state.last = snap;
  renderHeader(snap.self);
  renderPeers(snap.peers);
  renderChart(snap.weights);
  renderDecisions(snap.decisions);
  renderLedger(snap.ledger);
}

function live() {
  const pill = $("live");
  const source = new EventSource("/dashboard/api/events");
  source.addEventListener("snapshot", (e) => {
    pill.textContent = "live"; pill.className = "pill";
    render(JSON.parse(e.data));
  });
  source.onerror = () => {
    pill.textContent = "reconnecting…"; pill.className = "pill off";
    if (source.readyState === EventSource.CLOSED) {  // refused (too many streams): poll slowly instead
      pill.textContent = "polling";
      setInterval(() => fetch("/dashboard/api/snapshot").then((r) => r.json()).then(render).catch(() => {}), 5000);
    }
  };
}

async function ask(event) {
  event.preventDefault();
  const question = $("question").value.trim() || $("question").placeholder;
  const button = $("ask");
  button.disabled = true;
  $("ask-error").hidden = true;
  $("result").hidden = true;
  $("answer").textContent = "";
  $("verification").removeAttribute("data-valid");
  try {
    const r = await fetch("/v1/query", { method: "POST", headers: { "Content-Type": "application/json" },
                                         body: JSON.stringify({ question }) });
    const body = await r.json();
    if (!r.ok) throw new Error(typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail));
    $("answer").textContent = body.answer;
    $("agreed").textContent = `(height ${body.height}, ${(100 * body.agreed_share).toFixed(0)}% of the weight agreed)`;
    const blob = new Blob([JSON.stringify(body.certificate, null, 2)], { type: "application/json" });
    $("cert-link").href = URL.createObjectURL(blob);
    const v = $("verification");
    v.className = "pending"; v.textContent = "verifying…";
    $("result").hidden = false;
    const check = await fetch("/dashboard/api/verify", { method: "POST", headers: { "Content-Type": "application/json" },
                                                        body: JSON.stringify(body.certificate) });
    const res = await check.json();
    if (check.ok && res.valid) {
      v.className = "ok"; v.dataset.valid = "true";
      v.textContent = `Certificate verified: ${res.precommit_weight} of ${res.total_weight} weight precommitted ` +
        `height ${res.height}; checked by ${res.checked_by} against genesis ${short(res.genesis_digest)} ` +
        `(chain ${res.chain_id}).`;
    } else {
      v.className = "bad"; v.dataset.valid = "false";
      v.textContent = `Certificate NOT verified: ${res.reason || res.detail || check.status}`;
    }
  } catch (err) {
    $("ask-error").textContent = `The question failed: ${err.message}`;
    $("ask-error").hidden = false;
  } finally {
    button.disabled = false;
  }
}

$("ask-form").addEventListener("submit", ask);
fetch("/dashboard/api/snapshot").then((r) => r.json()).then(render).catch(() => {});
live();
