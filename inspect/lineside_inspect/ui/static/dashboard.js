// The dashboard: GET /v1/stats drawn as SVG (createElementNS, no charting library) and
// tables, every number also in text; each figure links its numbers as CSV (/v1/stats.csv).
import { afterReview, $, $$, addFleetOptions, addOptions, api, changed, coded, cut, dateTime, dayLabel, defaultIndex, dismissable, el, FLEET_NAMES, fleetLists, hourLabel, leaveLink, notOfFleet, num, pct,
         rate, reviewedPct, sayLinkNote, showZone, svg, time, yieldPct } from "/static/common.js";

const form = $("#scope");
// on a hub (its site, line and box selects): a camera and a model version are a box's,
// so its tables name the box (cam1 of two boxes read as one camera)
const ON_HUB = Boolean(form.elements.box_id);
// and on a box sharing its database with others, whose figures hold theirs: its stations
// and model changes are per box too, and without the box they read as one camera twice
const severalBoxes = (s) => new Set([...s.stations, ...s.model_changes].map((r) => r.box_id || "")).size > 1;
let boxed = ON_HUB; // the figures shown name their box (render sets it)
const boxCol = (r) => (boxed ? [r.box_id || "-"] : []);
let shown = null; // the figures on screen and the scope they were asked for, redrawn on resize

function params() {
  const f = new FormData(form), p = new URLSearchParams({ hours: f.get("hours") });
  for (const k of ["camera_id", "recipe"]) if (f.get(k) !== "*") p.set(k, f.get(k));
  for (const k of ["part_id", "site", "line", "box_id"]) if (f.get(k)) p.set(k, f.get(k));  // (the fleet's: a hub's)
  return p;
}

// The scope shown outlives a reload in this tab, and Back from another page (as the review
// page's filter does): a line lead who had chosen a camera and 8 h, or opened a link to a
// part, got the whole line's 24 h after a reload, read as the part's or the camera's
// (session 49). Per tab, per page (the review page keeps its own) and per user (common.js
// forgets it at sign-out and drops another user's: session 50), never sent anywhere
const KEPT = "lineside.dashboard";
function keep(p) {
  const q = new URLSearchParams(p);
  q.set("per", new FormData(form).get("per"));
  try { sessionStorage.setItem(KEPT, q.toString()); } catch { /* storage off: not kept */ }
}
// The scope in the address wins over the kept one: the form sent before this script had
// run (Enter in the part field on a slow link: a plain GET /dashboard?...&part_id=..., and
// the line's figures shown, the part dropped) or a link (/dashboard?part_id=SN-1); a field
// it does not name keeps its default. A field changed since the page came keeps its value;
// the address is then cleared (a reload: the scope as kept, the link's once drawn).
// A value the page cannot take (a link's, or a kept one it no longer can) is said in the
// link note, as text, and the field keeps its default (hours=abc was added to the Window
// select and sent: the API's 422 showed in the status line, under figures of no scope said)
const MAX_HOURS = 24 * 90;  // (GET /v1/stats' bound)
const linked = new Map();   // a field the link (or the kept scope) set: its value and any option added, till the scope changes
let lead;                   // whose values the note says: the link's (the default) or the kept scope's
// (a value is shown with its control and bidi characters as codes: common.js' coded, cut)
const defaultText = (f) => f.options[defaultIndex(f)].text;
function restore() {
  let asked = new URLSearchParams(location.search);
  if ([...asked.keys()].length) history.replaceState(null, "", location.pathname);
  else {
    let kept = null;
    try { kept = sessionStorage.getItem(KEPT); } catch { /* storage off: nothing kept */ }
    if (kept === null) return;
    asked = new URLSearchParams(kept);
    lead = "The scope kept in this tab: ";
  }
  const seen = new Set(), notTaken = [];
  for (let [k, v] of asked) {
    // a name given twice: its first value, as the page's note says (the second was taken
    // where the first was the field's default)
    if (seen.has(k)) continue;
    seen.add(k);
    const f = form.elements[k];
    // (a field's own name only: form.elements["1"] is the form's second field, and ?1=x
    // set the camera the server's note said was left out)
    if (!(f instanceof HTMLInputElement || f instanceof HTMLSelectElement) || f.name !== k) continue;
    if (changed(f)) continue;  // set on the page before this script ran: it stays
    if (f instanceof HTMLInputElement) { f.value = v; linked.set(k, { v }); continue; }
    if (k === "per" && !Array.from(f.options, (o) => o.value).includes(v)) {
      notTaken.push(`per "${cut(v)}": not hourly or shifts, the default (${defaultText(f)}) shown`);
      continue;
    }
    if (k === "hours") {  // whole hours the API takes; one the Window select does not list is added
      const n = /^\d{1,5}$/.test(v) ? Number(v) : 0;
      if (n < 1 || n > MAX_HOURS) {
        notTaken.push(`hours "${cut(v)}": not a window of whole hours from 1 to ${MAX_HOURS}, the default (${defaultText(f)}) shown`);
        continue;
      }
      v = String(n);
    }
    // a camera or recipe the page lists once the figures come (text, never markup)
    let option = null;
    if (!Array.from(f.options, (o) => o.value).includes(v)) {
      option = new Option(k === "camera_id" && v === "" ? "(uploads)" : k === "hours" ? `${v} h` : coded(v), v);
      f.add(option);
    }
    f.value = v;
    linked.set(k, { v, option });
  }
  if (notTaken.length) sayLinkNote(notTaken.join("; "), $("#whose"), lead);
}

// a link's value the figures refuse (a 422 naming it: a camera of 200 characters, a part
// id holding U+202E): said in the link note, its field back to its default; true if any
function refusedByLink(message) {
  const why = new Map();
  for (const part of message.split("; ")) {
    const m = /^query\.(\w+): (.*)$/s.exec(part);
    if (m && linked.has(m[1]) && !why.has(m[1])) why.set(m[1], m[2]);
  }
  if (!why.size) return false;
  const said = [];
  for (const [k, reason] of why) {
    const f = form.elements[k], { v, option } = linked.get(k);
    linked.delete(k);
    if (option) option.remove();
    if (f instanceof HTMLSelectElement) f.selectedIndex = defaultIndex(f);
    else f.value = f.defaultValue;
    said.push(`${k} "${cut(v)}": refused by the figures (${reason}), ` +
              (f instanceof HTMLSelectElement ? `the default (${defaultText(f)}) shown` : "left out"));
  }
  sayLinkNote(said.join("; "), $("#whose"), lead);
  dismissable(() => form.elements.hours);
  return true;
}

// 1, 2 or 5 times a power of ten at or above max/steps: axis steps a person reads at once
function niceStep(max, steps = 5) {
  const raw = Math.max(1, max) / steps, mag = 10 ** Math.floor(Math.log10(raw));
  return [1, 2, 5, 10].map((k) => k * mag).find((s) => s >= raw);
}

const FONT = "12px system-ui, sans-serif";
const measure = (() => { const c = document.createElement("canvas").getContext("2d"); c.font = FONT;
  return (s) => c.measureText(s).width; })();

function hatch() {
  return svg("defs", {}, svg("pattern", { id: "hatch", width: 6, height: 6, patternUnits: "userSpaceOnUse",
                                          patternTransform: "rotate(45)" },
    svg("rect", { width: 6, height: 6, fill: "#c0392b" }), svg("line", { x1: 0, y1: 0, x2: 0, y2: 6, stroke: "#ff9a8f", "stroke-width": 2 })));
}

// yield and fails per hour or shift: stacked bars (passes, fails hatched) on the left
// axis, yield % on the right, model-version changes as dashed markers on the time axis
function trendChart(box, rows, changes, per) {
  const W = Math.max(320, box.clientWidth || 900);
  // the legend's items wrap onto a second row where the chart is narrow: at 320 px the
  // line ran past the chart's edge after "fails" (session 37's leftover); the plot starts
  // lower by the rows added
  const items = [["pass", "passes"], ["fail", "fails (count on top)"], ["dot", "yield % (right axis)"]];
  const placed = [];
  let lx = 0, ly = 0;
  for (const [what, text] of items) {
    const w = 16 + measure(text) + 14;
    if (lx && 56 + lx + w - 14 > W - 4) { lx = 0; ly += 15; }
    placed.push([what, text, lx, ly]);
    lx += w;
  }
  const H = 320 + ly, m = { l: 56, r: 56, t: 44 + ly, b: 44 };
  const iw = W - m.l - m.r, ih = H - m.t - m.b;
  const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img",
    "aria-label": `passes and fails per ${per === "shifts" ? "shift" : "hour"} with yield; numbers in the table below` });
  chart.append(hatch());
  if (!rows.length) { box.replaceChildren(chart); return; }
  const step = niceStep(Math.max(...rows.map((r) => r.inspections))), top = step * 5;
  const yC = (v) => m.t + ih - (v / top) * ih;
  const yields = rows.filter((r) => r.yield_pct !== null).map((r) => r.yield_pct);
  const yMin = yields.length ? Math.min(90, Math.floor(Math.min(...yields) / 5) * 5) : 0;
  const yY = (v) => m.t + ih - ((v - yMin) / (100 - yMin)) * ih;
  const t0 = Date.parse(rows[0].start), t1 = Date.parse(rows[rows.length - 1].end);
  const x = (t) => m.l + ((t - t0) / (t1 - t0)) * iw;
  const grid = svg("g", { class: "grid" }), axis = svg("g", { class: "axis" });
  for (let i = 0; i <= 5; i++) {
    const v = step * i, y = yC(v);
    grid.append(svg("line", { x1: m.l, x2: W - m.r, y1: y, y2: y }));
    axis.append(svg("text", { x: m.l - 6, y: y + 4, "text-anchor": "end" }, num(v)));
    const yv = yMin + ((100 - yMin) * i) / 5;
    axis.append(svg("text", { x: W - m.r + 6, y: yY(yv) + 4 }, `${Math.round(yv)}%`));
  }
  axis.append(svg("line", { x1: m.l, x2: W - m.r, y1: m.t + ih, y2: m.t + ih }),
              svg("text", { x: 4, y: m.t - 10, class: "dim" }, "inspections"),
              svg("text", { x: W - 4, y: m.t - 10, "text-anchor": "end", class: "dim" }, "yield"));
  chart.append(grid, axis);
  const bars = svg("g", { class: "bars" }), labels = svg("g", { class: "values" });
  let minGap = Infinity, lastLabel = -Infinity, lastDay = "";
  const points = [];
  rows.forEach((r, i) => {
    const a = Date.parse(r.start), b = Date.parse(r.end);
    const x0 = x(a), bw = Math.max(1, x(b) - x0 - 2), cx = x0 + 1 + bw / 2;
    // the first hour starts with the window (13:27-14:00), a part of the others' width:
    // whether counts fit is the whole bars' say
    if (i > 0 || rows.length === 1) minGap = Math.min(minGap, bw);
    const tip = `${dateTime(r.start)} – ${hourLabel(new Date(r.end))}: ${num(r.inspections)} inspections, ${num(r.fails)} fails, yield ${yieldOf(r)}`;
    bars.append(svg("rect", { class: "bar-pass", x: x0 + 1, width: bw, y: yC(r.inspections), height: yC(r.fails) - yC(r.inspections) },
                    svg("title", {}, tip)),
                svg("rect", { class: "bar-fail", x: x0 + 1, width: bw, y: yC(r.fails), height: yC(0) - yC(r.fails) },
                    svg("title", {}, tip)));
    if (r.yield_pct !== null) points.push([cx, yY(r.yield_pct)]);
    // x labels at least 64 px apart; the first label of each day carries the day (only
    // midnight did: on 3 or 7 days the labels skip most midnights, and "14:00" had no day)
    if (x0 - lastLabel >= 64 || i === 0) {
      const d = new Date(r.start), day = d.toDateString();
      const first = per === "shifts" ? dayLabel(d) : hourLabel(d);
      const second = per === "shifts" ? hourLabel(d) : (day !== lastDay ? dayLabel(d) : "");
      lastDay = day;
      axis.append(svg("text", { x: x0, y: m.t + ih + 16 }, first), svg("text", { x: x0, y: m.t + ih + 30, class: "dim" }, second));
      lastLabel = x0;
    }
  });
  // the fail count over each bar when there is room for it
  if (minGap >= 18) rows.forEach((r) => {
    const a = Date.parse(r.start), b = Date.parse(r.end), cx = (x(a) + x(b)) / 2;
    labels.append(svg("text", { class: "fails-value", x: cx, y: yC(r.inspections) - 4, "text-anchor": "middle" }, num(r.fails)));
  });
  const line = points.length ? svg("path", { class: "yield-line", d: "M" + points.map((p) => p.join(",")).join("L") }) : "";
  const dots = svg("g", {}, ...points.map(([cx, cy]) => svg("circle", { class: "yield-dot", cx, cy, r: 3 })));
  chart.append(bars, line, dots, labels);
  // model versions: where a model's version changed (the first inspection it judged)
  // one marker per change, even when several recipes of the model changed within a bar
  const marks = svg("g", { class: "markers" }), seen = [];
  let lastX = -Infinity, row = 0;
  for (const c of changes) {
    const t = Date.parse(c.at), what = `${c.model} ${c.previous} → ${c.version}`;
    if (c.previous === null || t < t0 || t > t1) continue;
    const mx = x(t), same = seen.find((s) => s.what === what && Math.abs(s.x - mx) < 24);
    const where = boxed && c.box_id ? `${c.recipe} on ${c.box_id}` : c.recipe;
    if (same) { same.title.textContent += `, ${where}`; continue; }
    row = mx - lastX < 150 ? (row + 1) % 2 : 0;
    lastX = mx;
    const title = svg("title", {}, `${dateTime(c.at)}: ${what}; recipes ${where}`);
    seen.push({ what, x: mx, title });
    marks.append(svg("g", { class: "marker" },
      svg("line", { x1: mx, x2: mx, y1: m.t - 4 - row * 13, y2: m.t + ih }),
      // ends at its marker where it would run past the chart's right edge (at 320 px)
      svg("text", mx + 3 + measure(`▼ ${what}`) > W ? { x: mx - 3, y: m.t - 8 - row * 13, "text-anchor": "end" }
                                                     : { x: mx + 3, y: m.t - 8 - row * 13 }, `▼ ${what}`), title));
  }
  chart.append(marks);
  const legend = svg("g", { class: "legend", transform: `translate(${m.l}, 12)` }, ...placed.flatMap(([what, text, x0, y0]) => [
    what === "dot" ? svg("circle", { class: "yield-dot", cx: x0 + 6, cy: y0 - 3, r: 4 })
                   : svg("rect", { class: what, x: x0, y: y0 - 9, width: 12, height: 12 }),
    svg("text", { x: x0 + 16, y: y0 + 1 }, text)]));
  chart.append(legend);
  box.replaceChildren(chart);
}

// defect Pareto: one bar per class, full names, most first, the count and cumulative share
function paretoChart(box, rows) {
  if (!rows.length) { box.replaceChildren(el("p", {}, "no defects in this window")); return; }
  const W = Math.max(300, box.clientWidth || 500), rowH = 26, m = { t: 22, b: 26 };
  const labelW = Math.min(W * 0.45, Math.max(...rows.map((r) => measure(r.label))) + 14);
  const right = 150, x0 = labelW, iw = W - labelW - right, H = m.t + rows.length * rowH + m.b;
  const step = niceStep(rows[0].parts, 4), top = step * 4;
  const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img",
                              "aria-label": "defect Pareto: inspections per defect class, most first; numbers in the table below" });
  chart.append(svg("text", { x: W - right + 8, y: 14, class: "dim" }, "parts"),
               svg("text", { x: W - 4, y: 14, "text-anchor": "end", class: "dim" }, "cumulative"));
  const axis = svg("g", { class: "axis" });
  for (let i = 0; i <= 4; i++) {
    const gx = x0 + (iw * i) / 4;
    axis.append(svg("line", { x1: gx, x2: gx, y1: m.t, y2: H - m.b + 4 }),
                svg("text", { x: gx, y: H - 8, "text-anchor": "middle" }, num(step * i)));
  }
  chart.append(axis);
  rows.forEach((r, i) => {
    const y = m.t + i * rowH, w = (r.parts / top) * iw;
    chart.append(svg("g", { class: "pareto-row" },
      svg("text", { class: "pareto-label", x: labelW - 8, y: y + rowH / 2 + 4, "text-anchor": "end" }, r.label),
      svg("rect", { class: "pareto-bar", x: x0, y: y + 4, width: Math.max(1, w), height: rowH - 8 },
          svg("title", {}, `${r.label}: ${num(r.parts)} parts, cumulative ${pct(r.cumulative_pct)}`)),
      svg("text", { class: "pareto-count", x: W - right + 8, y: y + rowH / 2 + 4 }, num(r.parts)),
      svg("text", { class: "pareto-cum", x: W - 4, y: y + rowH / 2 + 4, "text-anchor": "end" }, pct(r.cumulative_pct))));
  });
  box.replaceChildren(chart);
}

function table(target, head, rows, numeric = []) {
  const th = head.map((h, i) => el("th", { class: numeric.includes(i) ? "n" : null }, h));
  target.replaceChildren(el("thead", {}, el("tr", {}, ...th)),
    el("tbody", {}, ...rows.map((r) => el("tr", {}, ...r.map((v, i) => el("td", { class: numeric.includes(i) ? "n" : null }, v))))));
}

// the scope asked, in words: "camera cam9, recipe r2" ("" for the whole line's); each
// value as text, its control characters as their codes, cut at 60 characters
const SCOPE_WORDS = [["site", "site"], ["line", "line"], ["box_id", "box"], ["camera_id", "camera"],
                     ["recipe", "recipe"], ["part_id", "part"]];
const scopeWords = (p) => SCOPE_WORDS.filter(([k]) => p.has(k))
  .map(([k, name]) => (k === "camera_id" && p.get(k) === "" ? "uploads (no camera)" : `${name} ${cut(p.get(k))}`)).join(", ");
// a yield of no inspections: "–", never a 0% or 100% read as a shift's (session 49)
const yieldOf = (r) => (r && r.inspections ? yieldPct(r) : "–");
// first pass, then after review and the fails no review has judged (which it counts as fails)
const AFTER = ["after review", "fails not reviewed"];
const afterCols = (r) => [r && r.inspections ? reviewedPct(r) : "–", num(r.unreviewed_fails)];

function render(s, p) {
  boxed = ON_HUB || severalBoxes(s);
  const f = new FormData(form), per = f.get("per"), rows = s[per], hours = p.get("hours");
  const sum = (k) => s.hourly.reduce((a, r) => a + r[k], 0);
  const n = sum("inspections"), passes = sum("passes"), fails = sum("fails");
  const window_ = { inspections: n, passes_after_review: sum("passes_after_review"), unreviewed_fails: sum("unreviewed_fails") };
  // whose figures: one part's (as the server answered), said above them, as text; and a
  // scope holding no inspections in the window (a camera or recipe of a link or the kept
  // scope that exists nowhere, a part never seen, a box the fleet no longer lists) says
  // so: its figures were zeros with no reason, and "0 failed" read as a good shift
  // (session 49). About the figures, which the page knows: never "no such camera"
  const whose = $("#whose"), of = scopeWords(p);
  whose.hidden = !s.part_id && n > 0;
  whose.textContent = !n ? `No inspections${of ? " for " + of : ""} in the last ${hours} h: the figures below are empty, not a shift without fails`
    : s.part_id ? `Part ${s.part_id} only: its inspections at every station and re-inspection, those still kept` : "";
  $("#k-yield").textContent = n ? pct((100 * passes) / n, 2) : "–";
  $("#k-yield-detail").textContent = n ? `${num(passes)} of ${num(n)} passed · ${num(fails)} failed · last ${hours} h · ${afterReview(window_)}`
    : `no inspections in the last ${hours} h`;
  const shift = s.shifts[s.shifts.length - 1];
  $("#k-shift").textContent = yieldOf(shift);
  $("#k-shift-detail").textContent = !shift ? "" : shift.inspections
    ? `${num(shift.passes)} of ${num(shift.inspections)} passed since ${hourLabel(new Date(shift.start))} · ${afterReview(shift)}`
    : `no inspections since ${hourLabel(new Date(shift.start))}`;
  const q = s.quality;
  $("#fr-rate").textContent = n ? rate(q.false_reject_rate) : "–";
  $("#fr-detail").textContent = n ? `${num(q.false_rejects)} of ${num(q.reviewed_fails)} reviewed fails had no defect` : "no inspections to review";
  $("#escape-rate").textContent = n ? rate(q.escape_rate) : "–";
  $("#escape-detail").textContent = n ? `${num(q.escapes)} of ${num(q.reviewed_passes)} reviewed passes had a missed defect` : "no inspections to review";

  $("#trend-title").textContent = `Yield and fails per ${per === "shifts" ? "shift" : "hour"}`;
  // no bars of zero under a yield axis of 0-100%: said instead
  if (n) trendChart($("#trend"), rows, s.model_changes, per);
  else $("#trend").replaceChildren(el("p", {}, `no inspections in the last ${hours} h: nothing to draw`));
  table($("#trend-table"), [per === "shifts" ? "shift" : "hour", "inspections", "passes", "fails", "yield", ...AFTER],
        rows.map((r) => [`${dateTime(r.start)} – ${hourLabel(new Date(r.end))}`, num(r.inspections), num(r.passes), num(r.fails), yieldOf(r), ...afterCols(r)]),
        [1, 2, 3, 4, 5, 6]);
  if (n) paretoChart($("#pareto"), s.pareto);
  else $("#pareto").replaceChildren(el("p", {}, "no inspections in this window: no defects counted"));
  // the chart is an image to a screen reader (its labels and counts inside it are not
  // read): its numbers are a table too, as the trend's are (a11y pass, session 37)
  table($("#pareto-table"), ["class", "parts", "cumulative"],
        s.pareto.map((r) => [r.label, num(r.parts), pct(r.cumulative_pct)]), [1, 2]);
  const k = boxed ? 1 : 0;
  table($("#stations"), [...(boxed ? ["box"] : []), "camera", "recipe", "inspections", "passes", "fails", "yield", ...AFTER],
        s.stations.map((r) => [...boxCol(r), r.camera_id === null ? "(uploads)" : r.camera_id, r.recipe, num(r.inspections), num(r.passes), num(r.fails), yieldOf(r), ...afterCols(r)]),
        [2 + k, 3 + k, 4 + k, 5 + k, 6 + k, 7 + k]);
  // a promotion's effect: each version's yield beside the one before it
  table($("#versions"), [...(boxed ? ["box"] : []), "model", "recipe", "version", "from", "to", "inspections", "yield", ...AFTER],
        s.versions.map((r) => [...boxCol(r), r.model, r.recipe, r.version, r.first ? dateTime(r.first) : "–", r.last ? dateTime(r.last) : "–",
                               num(r.inspections), yieldOf(r), ...afterCols(r)]),
        [5 + k, 6 + k, 7 + k, 8 + k]);
  table($("#quality"), ["outcome", "count", "of reviewed", "rate"], [
    ["false rejects (fails with no defect)", num(q.false_rejects), `${num(q.reviewed_fails)} fails`, rate(q.false_reject_rate)],
    ["escapes (passes with a missed defect)", num(q.escapes), `${num(q.reviewed_passes)} passes`, rate(q.escape_rate)]], [1, 3]);
  const actions = [...new Set(s.reviewers.flatMap((r) => Object.keys(r.actions)))].sort();
  // a reviewer is one per box: qa of box a and qa of box b are two rows, each naming its box
  table($("#reviewers"), ["reviewer", ...(boxed ? ["box"] : []), "reviews", ...actions.map((a) => a.replace("_", " "))],
        // (on a box: the hub's reviewers, whose reviews it took down, "qa (hub)")
        s.reviewers.map((r) => [!boxed && r.box_id === "hub" ? `${r.reviewer} (hub)` : r.reviewer, ...boxCol(r), num(r.reviews), ...actions.map((a) => num(r.actions[a] || 0))]),
        [1 + k, ...actions.map((_, i) => i + 2 + k)]);
  table($("#models"), ["since", ...(boxed ? ["box"] : []), "model", "recipe", "version"],
        s.model_changes.map((c) => [dateTime(c.at), ...boxCol(c), c.model, c.recipe, c.previous === null ? `${c.version} (in use as the window opens)` : `${c.previous} → ${c.version}`]));
}

// each load is numbered: an answer that arrives after a newer load began is dropped, or a
// slow "7 days" drew its 169 bars under "8 h" (QA review, session 32)
let loads = 0, asked = "";
async function load() {
  const mine = ++loads;
  $("#status").textContent = "loading…";
  const p = params();
  try {
    asked = p.toString();
    const s = await api("/v1/stats?" + p);
    if (mine !== loads) return;
    addOptions(form.elements.camera_id, [...s.cameras.map((c) => [c.id, c.id]),
      ...s.stations.map((r) => (r.camera_id === null ? ["", "(uploads)"] : [r.camera_id, r.camera_id]))]);
    addOptions(form.elements.recipe, s.stations.map((r) => [r.recipe, r.recipe]));
    shown = [s, p];
    render(s, p);
    keep(p);
    const per = new FormData(form).get("per");
    for (const a of $$("a.csv")) {
      const q = new URLSearchParams(p);
      q.set("table", a.dataset.table === "hourly" ? per : a.dataset.table);
      a.href = "/v1/stats.csv?" + q;
    }
    $("#status").textContent = `updated ${time(new Date().toISOString())}; shifts start ${s.shift_starts.join(", ")} (${s.shift_timezone})`;
  } catch (e) {
    if (mine !== loads) return;
    asked = "";
    if (e.status === 422) {
      // a scope the server refuses: no figures drawn under it (those of the scope before
      // stayed, read as this one's), and it is said; a link's value it names goes (above)
      clearFigures();
      if (refusedByLink(e.message)) { load(); return; }
      $("#status").textContent = `this filter is refused (${e.message}): change it or clear it`;
      return;
    }
    $("#status").textContent = "could not load the figures: " + e.message;
  }
}

// no figures: the numbers, charts and tables drawn go, and the CSV links with them
function clearFigures() {
  shown = null;
  const whose = $("#whose");
  whose.hidden = true; whose.textContent = "";
  for (const id of ["k-yield", "k-shift", "fr-rate", "escape-rate"]) $("#" + id).textContent = "–";
  for (const id of ["k-yield-detail", "k-shift-detail", "fr-detail", "escape-detail"]) $("#" + id).textContent = "";
  for (const id of ["trend", "trend-table", "pareto", "pareto-table", "stations", "quality", "reviewers", "models", "versions"]) $("#" + id).replaceChildren();
  for (const a of $$("a.csv")) a.removeAttribute("href");
}

// on a hub: the fleet's sites, lines and boxes as choices (GET /fleet/v1/boxes); a site,
// line or box of the link or the kept scope the fleet no longer lists (a box retired, a
// site renamed) is said once the list comes (not waited for): "No inspections for box X"
// read as an idle box (session 50). Its figures are still shown: the hub keeps its history
async function loadFleet() {
  if (!ON_HUB) return;
  const lists = await fleetLists();
  if (!lists) return;
  addFleetOptions(form, lists);
  const fleetLinked = [...linked].filter(([k]) => Object.hasOwn(FLEET_NAMES, k));
  const said = notOfFleet(form, fleetLinked, lists);
  if (!said.length) return;
  sayLinkNote(said.join("; "), $("#whose"), lead);
  dismissable(() => form.elements.hours);
}

// the link's note (names of it the page did not read) is about the link's scope: it goes
// once the scope is changed, or with its Dismiss button (it stayed until a reload, over
// figures the link no longer chose: session 49, as the review page's since session 48)
const leave = () => { leaveLink(); linked.clear(); };
form.addEventListener("change", () => { leave(); load(); });
// Enter in the part field (the form's one text field) submits it: applied here, no page
// load; its change event, just before, may have asked for the same figures already
form.addEventListener("submit", (e) => { e.preventDefault(); if (params().toString() !== asked) { leave(); load(); } });
let pending = 0;
new ResizeObserver(() => { clearTimeout(pending); pending = setTimeout(() => shown && render(...shown), 150); }).observe($("#trend"));
showZone();
restore();
dismissable(() => form.elements.hours);
// (the fleet's list is not waited for: a hub slow to list its boxes, or never answering,
// left the page with no figures and no word why; what it says comes when it does. Attack
// pass, session 50)
load(); loadFleet();
