// The hub's fleet page: every box from GET /fleet/v1/boxes (what it runs, when it last
// reported, its forwarding backlog and lag, what it holds on the hub), refreshed every
// few seconds. Every value reaches the page as text (see common.js).
import { $, addOptions, api, dateTime, el, num, showZone, time } from "/static/common.js";

const REFRESH_MS = 5000;
const form = $("#fleet-filter");

function age(s) {
  if (s === null || s === undefined) return "never";
  if (s < 90) return `${Math.round(s)} s ago`;
  if (s < 5400) return `${Math.round(s / 60)} min ago`;
  return `${(s / 3600).toFixed(1)} h ago`;
}

// a box's state, never by colour alone: a mark and the word
function state(b) {
  if (!b.status) return el("span", { class: "fail" }, "✖ never reported");
  if (b.silent) return el("span", { class: "fail" }, `✖ silent (${age(b.silent_s)})`);
  return b.status.ready ? el("span", { class: "pass" }, "● ready") : el("span", { class: "warn" }, "◌ starting");
}

function models(b) {
  if (!b.status || !b.status.models.length) return "-";
  return b.status.models.map((m) => `${m.name} ${m.version}${m.role === "active" ? "" : ` (${m.role})`} · ${m.sha256.slice(0, 12)}`).join("\n");
}

// the live regions (#summary, #status) are written only when what they say changes: a
// screen reader read "updated 14:02:05" and the box count out every 5 s (a11y pass, 37)
function say(node, text) { if (node.textContent !== text) node.textContent = text; }

function render(doc) {
  const f = new FormData(form), site = f.get("site"), line = f.get("line");
  const named = (pick) => doc.boxes.map(pick).filter(Boolean).map((v) => [v, v]);
  addOptions(form.elements.site, named((b) => b.status && b.status.site));
  addOptions(form.elements.line, named((b) => b.status && b.status.line));
  const shown = doc.boxes.filter((b) => (!site || (b.status && b.status.site === site)) && (!line || (b.status && b.status.line === line)));
  const silent = shown.filter((b) => b.silent).length;
  say($("#summary"), `${num(shown.length)} box(es)` + (silent ? ` · ${num(silent)} silent for ${doc.silent_after_s} s or more` : " · all reporting"));
  const head = ["box", "site", "line", "state", "last report", "models", "Lineside", "backlog", "lag", "on the hub", "newest on the hub", "fail-rate alarms", "problems"];
  const rows = shown.map((b) => {
    const st = b.status;
    const tr = el("tr", { "data-box": b.box_id, class: b.silent ? "down" : "" },
      el("td", {}, b.box_id), el("td", {}, (st && st.site) || "-"), el("td", {}, (st && st.line) || "-"),
      el("td", {}, state(b)), el("td", { title: b.reported_at || "" }, b.reported_at ? `${time(b.reported_at)} (${age(b.silent_s)})` : "never"),
      el("td", { class: "pre" }, models(b)), el("td", {}, st ? st.version : "-"),
      el("td", { class: "n" }, st ? num(st.forward_backlog) : "-"),
      el("td", { class: "n" }, st && st.forward_lag_s !== null ? `${st.forward_lag_s.toFixed(1)} s` : "-"),
      el("td", { class: "n" }, num(b.inspections_held)),
      el("td", {}, b.last_inspection_at ? dateTime(b.last_inspection_at) : "-"),
      el("td", { class: "pre fail" }, st && st.alarms && st.alarms.length ? st.alarms.map((a) => "⚠ " + a).join("\n") : ""),
      el("td", {}, st && st.model_errors.length ? st.model_errors.join("\n") : ""));
    return tr;
  });
  $("#boxes").replaceChildren(el("thead", {}, el("tr", {}, ...head.map((h) => el("th", {}, h)))),
                              el("tbody", {}, ...rows));
}

// one request at a time: a hub slow to answer (thousands of boxes, a busy database) had a
// new one sent every REFRESH_MS on top of those waiting, each adding to its load. A
// refresh due meanwhile is skipped (the next comes REFRESH_MS on); a filter changed
// meanwhile needs none: the answer is filtered as it is rendered (hub pages review, 36)
let loading = false;
async function load() {
  if (loading) return;
  loading = true;
  try {
    render(await api("/fleet/v1/boxes"));
    $("#updated").textContent = `updated ${time(new Date().toISOString())}`;  // not live
    say($("#status"), "");
  } catch (e) {
    say($("#status"), "could not load the fleet: " + e.message);
  } finally {
    loading = false;
  }
}

form.addEventListener("change", load);
showZone();
load();
setInterval(load, REFRESH_MS);
