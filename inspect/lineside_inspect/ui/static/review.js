// Lineside review page: plain JavaScript, no build step. Talks to /v1 with the
// session cookie set at sign-in, and the session's CSRF token the server put in the page.
// Every value from the API reaches the page as text: elements are built with
// createElement/createElementNS, strings go in as text nodes, never parsed as markup.
"use strict";
const $ = (s) => document.querySelector(s);
const CSRF = (document.querySelector("meta[name=csrf-token]") || { content: "" }).content;
const SVG = "http://www.w3.org/2000/svg";

// el("p", {class: "x"}, "text", child): an element; string children become text nodes
function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  e.append(...children);
  return e;
}

function svg(tag, attrs = {}, ...children) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  e.append(...children);
  return e;
}

const verdictClass = (v) => (v === "pass" ? "pass" : "fail");
const state = { items: [], total: 0, offset: 0, limit: 24, sel: 0, open: null, box: 0,
                classes: [], drawing: false, start: null };

async function api(path, opts = {}) {
  const r = await fetch(path, { credentials: "same-origin", ...opts,
    headers: { "content-type": "application/json", "x-csrf-token": CSRF, ...(opts.headers || {}) } });
  if (r.status === 401 || r.status === 403) { location.href = "/review"; throw new Error("auth"); }
  const doc = await r.json();
  if (!r.ok) throw new Error(doc.error ? doc.error.message : r.statusText);
  return doc;
}

function query() {
  const p = new URLSearchParams();
  for (const [k, v] of new FormData($("#filters"))) if (v !== "") p.set(k, v);
  p.set("limit", state.limit); p.set("offset", state.offset);
  return p;
}

async function load() {
  const doc = await api("/v1/inspections?" + query());
  state.items = doc.items; state.total = doc.total;
  state.sel = Math.min(state.sel, Math.max(0, doc.items.length - 1));
  if (doc.items.length && !state.classes.length) setClasses(doc.items[0].class_names);
  $("#count").textContent = doc.total ? `${state.offset + 1}–${state.offset + doc.items.length} of ${doc.total}` : "nothing to review";
  const grid = $("#grid"); grid.replaceChildren();
  doc.items.forEach((it, i) => {
    const c = el("div", { class: "card" + (i === state.sel ? " sel" : "") });
    c.dataset.id = it.id;
    c.append(
      it.has_image ? el("img", { loading: "lazy", alt: "", src: `/v1/inspections/${encodeURIComponent(it.id)}/annotated` })
                   : el("p", {}, "(no image kept)"),
      el("p", {}, el("b", { class: verdictClass(it.verdict) }, it.verdict),
         ` · ${it.defects.length} defect(s) · ${it.review_state}`),
      el("p", { class: "where" }, `${it.camera_id || "upload"} · ${new Date(it.created_at).toLocaleString()}`));
    c.onclick = () => { state.sel = i; open(i); };
    grid.appendChild(c);
  });
}

function setClasses(names) {
  state.classes = names;
  const lab = $("#filters select[name=label]");
  names.forEach((n) => lab.add(new Option(n, n)));
  names.forEach((n, i) => $("#d-label").add(new Option(`${i + 1} ${n}`, n)));
}

function select(i) {
  state.sel = Math.max(0, Math.min(state.items.length - 1, i));
  document.querySelectorAll(".card").forEach((c, j) => c.classList.toggle("sel", j === state.sel));
  const el = document.querySelectorAll(".card")[state.sel];
  if (el) el.scrollIntoView({ block: "nearest" });
}

async function open(i) {
  const it = state.items[i]; if (!it) return;
  state.open = await api(`/v1/inspections/${encodeURIComponent(it.id)}`); state.box = 0;
  $("#grid").hidden = true; $("#pager").hidden = true; $("#detail").hidden = false;
  state.showRef = false;
  $("#b-ref").hidden = !(state.open.reference && state.open.reference.has_image);
  const img = $("#big"); img.src = `/v1/inspections/${encodeURIComponent(it.id)}/image`;
  img.onload = () => { $("#overlay").setAttribute("viewBox", `0 0 ${state.open.width} ${state.open.height}`); draw(); };
  render();
}

function truth() {
  const o = state.open;
  return o.reviews.length ? o.reviews[o.reviews.length - 1].boxes : o.defects;
}

function render() {
  const o = state.open;
  $("#d-title").replaceChildren(el("span", { class: verdictClass(o.verdict) }, o.verdict), ` ${o.id.slice(0, 8)}`);
  const ref = o.reference ? ` · reference ${o.reference.name || "(sent with the frame)"}` : "";
  $("#d-meta").textContent = `${o.camera_id || "upload"} · part ${o.part_id || "-"} · ${o.recipe.name} v${o.recipe.version} · model ${o.model.name}:${o.model.version}${ref} · ${o.review_state}`;
  const list = $("#d-defects"); list.replaceChildren();
  truth().forEach((d, i) => {
    const li = document.createElement("li");
    li.textContent = `${d.label}${d.score !== undefined ? " " + d.score.toFixed(2) : ""} [${d.box.map(Math.round).join(", ")}]`;
    li.className = i === state.box ? "sel" : ""; li.onclick = () => { state.box = i; render(); };
    list.appendChild(li);
  });
  const rv = $("#d-reviews"); rv.replaceChildren();
  o.reviews.forEach((r) => { const li = document.createElement("li");
    li.textContent = `${new Date(r.created_at).toLocaleString()} ${r.reviewer}: ${r.action}`; rv.appendChild(li); });
  draw();
}

function rect(b, attrs) {
  const [x1, y1, x2, y2] = b.map(Number);
  return svg("rect", { x: x1, y: y1, width: x2 - x1, height: y2 - y1, "stroke-width": 2, ...attrs });
}

function draw(extra) {
  if (!state.open) return;
  const boxes = truth().map((d, i) => rect(d.box, { fill: "none", stroke: i === state.box ? "#fc3" : "#f44" }));
  if (extra) boxes.push(rect(extra, { id: "drawn", fill: "rgba(80,200,255,.2)", stroke: "#5cf" }));
  $("#overlay").replaceChildren(...boxes);
}

async function review(body) {
  const o = state.open;
  try {
    state.open = await api(`/v1/inspections/${encodeURIComponent(o.id)}/reviews`, { method: "POST", body: JSON.stringify(body) });
    $("#d-status").textContent = `saved: ${body.action}`; render();
  } catch (e) { $("#d-status").textContent = "error: " + e.message; }
}

function point(ev) {
  const r = $("#overlay").getBoundingClientRect();
  return [(ev.clientX - r.left) * state.open.width / r.width, (ev.clientY - r.top) * state.open.height / r.height];
}

const overlay = $("#overlay");
overlay.addEventListener("mousedown", (ev) => { if (!state.drawing) return; state.start = point(ev); });
overlay.addEventListener("mousemove", (ev) => {
  if (!state.start) return; const p = point(ev), s = state.start;
  draw([Math.min(s[0], p[0]), Math.min(s[1], p[1]), Math.max(s[0], p[0]), Math.max(s[1], p[1])]);
});
overlay.addEventListener("mouseup", async (ev) => {
  if (!state.start) return; const p = point(ev), s = state.start; state.start = null; state.drawing = false;
  const box = [Math.min(s[0], p[0]), Math.min(s[1], p[1]), Math.max(s[0], p[0]), Math.max(s[1], p[1])].map((v) => Math.round(v * 10) / 10);
  if (box[2] - box[0] < 2 || box[3] - box[1] < 2) { draw(); return; }
  await review({ action: "missed_defect", boxes: [{ label: $("#d-label").value, box }] });
});

// reference models: flip between the frame and the golden image it was compared with
function toggleRef() {
  const o = state.open; if (!o || !(o.reference && o.reference.has_image)) return;
  state.showRef = !state.showRef;
  $("#big").src = `/v1/inspections/${encodeURIComponent(o.id)}/${state.showRef ? "reference" : "image"}`;
  $("#stage").classList.toggle("ref", state.showRef);
  $("#d-status").textContent = state.showRef ? "showing the reference image (r: back to the frame)" : "showing the frame";
}

function back() { $("#detail").hidden = true; $("#grid").hidden = false; $("#pager").hidden = false; state.open = null; load(); }
function startDraw() { state.drawing = true; $("#d-status").textContent = "drag on the image to draw the missed defect"; }

$("#b-confirm").onclick = () => review({ action: "confirm" });
$("#b-false").onclick = () => review({ action: "false_reject" });
$("#b-draw").onclick = startDraw;
$("#b-ref").onclick = toggleRef;
$("#b-relabel").onclick = () => review({ action: "relabel", index: state.box, label: $("#d-label").value });
$("#filters").onsubmit = (e) => { e.preventDefault(); document.activeElement.blur(); state.offset = 0; state.sel = 0; load(); };
$("#prev").onclick = () => { state.offset = Math.max(0, state.offset - state.limit); load(); };
$("#next").onclick = () => { if (state.offset + state.limit < state.total) { state.offset += state.limit; load(); } };
let scale = 1;
$("#stage").addEventListener("wheel", (e) => { e.preventDefault(); scale = Math.max(0.5, Math.min(6, scale * (e.deltaY < 0 ? 1.2 : 1 / 1.2))); $("#zoom").style.transform = `scale(${scale})`; });

const KEYS = new Set(["Escape", "Enter", "ArrowLeft", "ArrowRight", "+", "-", "c", "f", "d", "j", "k", "r",
                      "1", "2", "3", "4", "5", "6", "7", "8", "9"]);
document.addEventListener("keydown", (e) => {
  if (e.target.matches("input, select, textarea") || e.ctrlKey || e.metaKey || e.altKey) return;
  // a shortcut must not also press the focused button (Enter would re-submit the filters)
  if (KEYS.has(e.key)) e.preventDefault();
  if (state.open) {
    if (e.key === "Escape") back();
    else if (e.key === "c") review({ action: "confirm" });
    else if (e.key === "f") review({ action: "false_reject" });
    else if (e.key === "d") startDraw();
    else if (e.key === "r") toggleRef();
    else if (e.key === "+" || e.key === "-") { scale = Math.max(0.5, Math.min(6, scale * (e.key === "+" ? 1.25 : 0.8))); $("#zoom").style.transform = `scale(${scale})`; }
    else if (/^[1-9]$/.test(e.key) && state.classes[+e.key - 1]) $("#d-label").value = state.classes[+e.key - 1];
    else if (e.key === "j" || e.key === "ArrowRight") { if (state.sel < state.items.length - 1) open(++state.sel); }
    else if (e.key === "k" || e.key === "ArrowLeft") { if (state.sel > 0) open(--state.sel); }
    return;
  }
  if (e.key === "j" || e.key === "ArrowRight") select(state.sel + 1);
  else if (e.key === "k" || e.key === "ArrowLeft") select(state.sel - 1);
  else if (e.key === "Enter") open(state.sel);
});

function bars(title, data, color) {
  const keys = Object.keys(data), max = Math.max(1, ...keys.map((k) => Number(data[k]) || 0));
  const w = 400, h = 160, bw = keys.length ? w / keys.length : w;
  const chart = svg("svg", { width: w, height: h + 30 });
  keys.forEach((k, i) => {
    const bh = (Number(data[k]) || 0) / max * h;
    chart.append(svg("rect", { x: i * bw + 2, y: h - bh, width: Math.max(0, bw - 4), height: bh, fill: color },
                     svg("title", {}, `${k}: ${data[k]}`)));
    if (keys.length <= 12) chart.append(svg("text", { x: i * bw + 4, y: h + 14, "font-size": 10, fill: "#aaa" }, k.slice(-5)));
  });
  return el("figure", {}, el("figcaption", {}, title), chart);
}

async function dashboard() {
  const s = await api("/v1/stats?hours=24");
  const fails = {}, passes = {};
  for (const [k, v] of Object.entries(s.verdicts_per_hour)) { fails[k] = v.fail; passes[k] = v.pass; }
  const fr = s.false_reject_rate_reviewed;
  const rate = el("b", { id: "fr-rate" }, fr === null ? "n/a" : (fr * 100).toFixed(1) + "%");
  const cams = el("table", {}, ...s.cameras.map((c) => el("tr", {},
    el("td", {}, c.id), el("td", { class: c.state === "online" ? "pass" : "fail" }, c.state),
    el("td", {}, `${c.fps} fps`), el("td", {}, `${c.reconnects} reconnects`))));
  $("#dash").replaceChildren(
    bars("fails per hour (24 h)", fails, "#e55"), bars("passes per hour (24 h)", passes, "#4b4"),
    bars("defects per class", s.defects_per_class, "#fb3"),
    el("figure", {}, el("figcaption", {}, "reviews"),
       el("p", {}, "false-reject rate among reviewed fails: ", rate, ` (${s.false_rejects_confirmed} of ${s.reviewed_fails})`),
       cams));
}
$("#tab-grid").onclick = () => { $("#dash").hidden = true; $("#grid").hidden = false; $("#pager").hidden = false; $("#tab-grid").classList.add("on"); $("#tab-dash").classList.remove("on"); };
$("#tab-dash").onclick = () => { $("#detail").hidden = true; $("#grid").hidden = true; $("#pager").hidden = true; $("#dash").hidden = false; $("#tab-dash").classList.add("on"); $("#tab-grid").classList.remove("on"); dashboard(); };

load();
