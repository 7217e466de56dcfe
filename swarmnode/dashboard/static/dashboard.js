// swarmnode dashboard: polls /api/swarm every second and redraws the tables and curves.
// Shipped inside the package; nothing is fetched from anywhere but this server.
"use strict";

const COLOURS = ["#2563eb", "#d9480f", "#2b8a3e", "#862e9c", "#c2255c", "#0b7285"];

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

function short(hex) {
  return hex ? hex.slice(0, 10) + "…" + hex.slice(-4) : "";
}

function fillBody(table, items, build) {
  const body = document.querySelector(table + " tbody");
  const rows = items.map(build);
  body.replaceChildren(...rows);
}

function drawCurve(svgId, series) {
  // series: [{name, points: [[x, y], ...]}]; a small hand-written line chart
  const svg = document.getElementById(svgId);
  const ns = "http://www.w3.org/2000/svg";
  svg.replaceChildren();
  const all = series.flatMap((s) => s.points);
  const add = (name, attrs, text) => {
    const el = document.createElementNS(ns, name);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
    if (text !== undefined) el.textContent = text;
    svg.appendChild(el);
    return el;
  };
  const [left, right, top, bottom] = [44, 410, 10, 150];
  add("line", { x1: left, y1: bottom, x2: right, y2: bottom, class: "axis" });
  add("line", { x1: left, y1: top, x2: left, y2: bottom, class: "axis" });
  if (all.length === 0) {
    add("text", { x: 150, y: 85, class: "label" }, "no data yet");
    return;
  }
  const xs = all.map((p) => p[0]);
  const ys = all.map((p) => p[1]);
  const [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  let [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  if (y0 === y1) { y0 -= 0.5; y1 += 0.5; }
  const sx = (x) => left + (x1 === x0 ? (right - left) / 2 : ((x - x0) / (x1 - x0)) * (right - left));
  const sy = (y) => bottom - ((y - y0) / (y1 - y0)) * (bottom - top);
  add("text", { x: 2, y: top + 8, class: "label" }, y1.toPrecision(3));
  add("text", { x: 2, y: bottom, class: "label" }, y0.toPrecision(3));
  add("text", { x: left, y: bottom + 14, class: "label" }, "round " + x0);
  add("text", { x: right - 50, y: bottom + 14, class: "label" }, "round " + x1);
  series.forEach((s, i) => {
    const colour = COLOURS[i % COLOURS.length];
    add("polyline", {
      points: s.points.map((p) => sx(p[0]) + "," + sy(p[1])).join(" "),
      stroke: colour,
    });
    for (const p of s.points) add("circle", { cx: sx(p[0]), cy: sy(p[1]), r: 3, fill: colour });
    add("text", { x: left + 6, y: bottom + 28, class: "label", fill: colour, dx: i * 140 }, s.name);
  });
}

function render(data) {
  const error = document.getElementById("error");
  error.hidden = !data.error;
  error.textContent = data.error || "";
  if (!data.swarm) return;
  const s = data.swarm;
  document.getElementById("address").textContent = s.address;
  document.getElementById("summary").textContent =
    "chain id " + s.chain_id + " · current round " + s.current_round +
    " · latest model round " + s.latest_model.round + " " + short(s.latest_model.digest) +
    " · " + (s.restricted ? "restricted" : "open") + " admission" +
    (s.rewinds ? " · chain rewound " + s.rewinds + "×" : "") +
    " · updated " + new Date(s.updated_at * 1000).toLocaleTimeString();

  fillBody("#roster", data.nodes, (n) => {
    const tr = document.createElement("tr");
    tr.dataset.account = n.account;
    cell(tr, n.account, "account");
    cell(tr, n.endpoint);
    cell(tr, n.admitted ? "yes" : "no", n.admitted ? "" : "no");
    cell(tr, n.active ? (n.finished ? "yes (finished training)" : "yes") : "no", n.active ? "" : "no");
    return tr;
  });

  fillBody("#rounds", data.rounds, (r) => {
    const tr = document.createElement("tr");
    tr.dataset.round = r.round;
    tr.className = r.status;
    cell(tr, r.round);
    cell(tr, r.status + (r.status === "failed" ? " (" + r.fail_reason + ")" : ""), "status");
    cell(tr, r.participants.map(short).join(" "), "account");
    cell(tr, r.attempts || "");
    cell(tr, r.dropped.map(short).join(" "), "account");
    cell(tr, r.withdrawn.map(short).join(" "), "account");
    cell(tr, r.digest ? short(r.digest) : "", "digest");
    cell(tr, r.seconds === null ? "" : r.seconds);
    cell(tr, r.gas === null ? "" : r.gas.toLocaleString("en"));
    return tr;
  });

  drawCurve("loss-curve", [{ name: "mean loss", points: data.curves.loss }]);
  drawCurve("accuracy-curve", Object.entries(data.curves.accuracy).map(
    ([url, points]) => ({ name: url.replace(/^https?:\/\//, ""), points })));

  const pages = data.metrics.length ? data.metrics : [null];
  fillBody("#metrics", pages, (m) => {
    if (m === null) {
      const tr = document.createElement("tr");
      cell(tr, "none named: pass --metrics URL for each node's metrics_listen").colSpan = 3;
      return tr;
    }
    const tr = document.createElement("tr");
    cell(tr, m.url, "mono");
    cell(tr, m.reachable ? "yes" : "no", m.reachable ? "" : "no");
    cell(tr, Object.entries(m.values).map(([k, v]) => k + " " + v).join("\n"), "mono");
    tr.lastChild.style.whiteSpace = "pre";
    return tr;
  });
}

async function poll() {
  try {
    const response = await fetch("/api/swarm", { cache: "no-store" });
    render(await response.json());
  } catch (err) {
    render({ error: "dashboard server unreachable (" + err + ")" });
  }
}

poll();
setInterval(poll, 1000);
