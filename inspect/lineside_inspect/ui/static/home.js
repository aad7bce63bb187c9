// The status page: the server draws the station cards and the tables; this fills and
// refreshes their figures from GET /v1/overview every few seconds, and each card's
// picture from its camera's snapshot every second.
import { $, $$, afterReview, api, dateTime, el, hourLabel, num, rate, showZone, STATE_MARK, stateClass, time, verdict, yieldPct } from "/static/common.js";

const REFRESH_MS = 5000;

function yieldText(fig) {
  if (!fig) return ["no store", ""];
  if (!fig.inspections) return ["n/a", "no inspections yet"];
  // the big figure is the machine's first pass; after review beside it (session 56)
  return [yieldPct(fig), `${num(fig.passes)} of ${num(fig.inspections)} passed · ${num(fig.fails)} failed · ${afterReview(fig)}`];
}

function setField(root, key, ...content) {
  const f = $(`[data-field="${key}"]`, root);
  if (f) f.replaceChildren(...content);
  return f;
}

function fillKpi(id, fig, since) {
  const box = $(id);
  const [big, detail] = yieldText(fig);
  setField(box, "pct", big);
  setField(box, "detail", detail + (since ? ` · since ${since}` : ""));
}

// fails with nothing judged, as the review page names them: a camera to check (a lens
// cap, a knocked camera, the wrong golden), not bad parts (review, session 39)
const NOT_JUDGED = { blank_frame: "blank frame", reference_mismatch: "not the golden's view" };

function notJudged(fig) {
  if (!fig) return ["no store"];
  const parts = [];
  for (const [rule, name] of Object.entries(NOT_JUDGED)) {
    const f = fig[rule];
    if (!f || !f.parts) continue;
    if (parts.length) parts.push(" · ");
    parts.push(el("b", {}, `✖ ${num(f.parts)} × ${name}`), ", last ",
               el("time", { datetime: f.last }, time(f.last)));
  }
  return parts.length ? parts : ["none"];
}

function fillStation(card, st, handshake) {
  const s = st.camera.state;
  setField(card, "state", STATE_MARK[s] || s).className = "state " + stateClass(s);
  card.classList.toggle("down", s !== "online");
  const model = st.model ? `${st.model} v${st.model_version || "?"}` : "no model";
  // a PLC may have switched its station's recipe; HTTP triggers keep the configured one
  const plc = st.camera.plc_recipe && st.camera.plc_recipe !== st.recipe
    ? ` (PLC: ${st.camera.plc_recipe})` : "";
  setField(card, "recipe", `${st.recipe || "default recipe"} · ${model}${plc}`);
  if (st.last) {
    const why = st.last.not_judged && NOT_JUDGED[st.last.not_judged];
    const defects = why ? ` · not judged: ${why}`
      : st.last.defects ? ` · ${st.last.defects} defect(s): ${st.last.labels.join(", ")}` : " · no defect";
    setField(card, "last", verdict(st.last.verdict), defects, " · ",
             el("time", { datetime: st.last.created_at }, time(st.last.created_at)));
  } else setField(card, "last", "none since the server started");
  for (const key of ["shift", "day"]) {
    const [big, detail] = yieldText(st[key]);
    setField(card, key, el("b", {}, big), detail ? ` · ${detail}` : "");
  }
  const unjudged = setField(card, "judged", ...notJudged(st.not_judged));
  if (unjudged) unjudged.className = unjudged.textContent.startsWith("✖") ? "fail" : "";
  setField(card, "fps", `${st.camera.fps} fps · ${st.camera.mode}`);
  // the PLC's word on its parts: a fault in force fails every part with its code, and
  // those parts have no verdict (nor a place in the yield above)
  if (handshake) {
    const { error_code: code, error, failed_parts: lost } = handshake;
    const tail = lost ? ` · ${num(lost)} part(s) without a verdict since start` : "";
    const f = setField(card, "plc", code ? `✖ ErrorCode ${code} (${error})${tail}` : `no fault${tail}`);
    if (f) f.className = code ? "fail" : "";
  }
}

// recipes whose fail rate jumped (a new look of good parts, or a run of defects), as
// text; rebuilt only when it changes (a polite live region: read when it does)
let alarmsShown = "";
function fillAlarms(alarms) {
  const box = $("#alarms");
  const key = JSON.stringify(alarms);
  if (key === alarmsShown) return;
  alarmsShown = key;
  box.replaceChildren(...alarms.map((a) => el("p", {},
    el("b", {}, "⚠ Fail-rate alarm"), ` · recipe ${a.recipe} (${a.judged_by}) since `,
    el("time", { datetime: a.changed_at }, dateTime(a.changed_at)), el("br"),
    `${rate(a.recent_fail_rate)} of its last ${num(a.recent_inspections)} parts failed; usually `
    + `${rate(a.usual_fail_rate)}, alarm above ${rate(a.bound)}. A new look of good parts (a lot, `
    + "the light, the camera) or a run of defects: look at its fails on the review page.")));
  box.hidden = alarms.length === 0;
}

// the tables the server drew: the models and the cameras' health, kept current (a
// rollback or a camera going offline showed the old state until a reload, and a model
// loaded since was not listed at all)
function fillTables(o) {
  const models = new Map(o.models.map((m) => [m.name, m]));
  const table = $("#models");
  const rows = new Map($$("#models tr[data-model]").map((row) => [row.dataset.model, row]));
  for (const [name, row] of rows) if (!models.has(name)) row.remove();
  for (const m of o.models) {
    let row = rows.get(m.name);
    if (!row) {
      row = el("tr", { "data-model": m.name }, el("td", {}, m.name),
               el("td", { "data-field": "active" }), el("td", { "data-field": "versions" }));
      (table.tBodies[0] || table).append(row);
    }
    setField(row, "active", m.active || "-");
    setField(row, "versions", m.described);
  }
  for (const empty of $$("#models tr[data-empty]")) empty.hidden = o.models.length > 0;
  const cams = new Map(o.stations.map((st) => [st.camera.id, st.camera]));
  for (const row of $$("#cameras tr[data-camera]")) {
    const c = cams.get(row.dataset.camera);
    if (!c) continue;
    setField(row, "state", STATE_MARK[c.state] || c.state).className = stateClass(c.state);
    setField(row, "fps", String(c.fps));
  }
}

// each station's picture: the newest frame, fetched again a second after the last one
// came (an endless MJPEG stream per card held one of the browser's six connections to
// this server each: with a few cameras or tabs, no page loaded). A frame that cannot be
// had leaves the last one shown, dimmed by the card's state.
const SNAPSHOT_MS = 1000;
// a hidden page asks nothing until it is shown again
const shown = () => (document.hidden
  ? new Promise((done) => document.addEventListener("visibilitychange", done, { once: true })).then(shown)
  : Promise.resolve());

async function snapshots(img) {
  for (;;) {
    await shown();
    let wait = SNAPSHOT_MS;
    try {
      const r = await fetch(img.dataset.snapshot, { cache: "no-store" });
      if (r.ok) {
        const old = img.src;
        img.src = URL.createObjectURL(await r.blob());
        await img.decode().catch(() => {});
        if (old.startsWith("blob:")) URL.revokeObjectURL(old);
      } else wait = 5 * SNAPSHOT_MS;  // offline, or signed out (the next refresh says so)
    } catch (e) { wait = 5 * SNAPSHOT_MS; }
    await new Promise((done) => setTimeout(done, wait));
  }
}

// the line's sections, when configured: the PLC handshake per station and MQTT delivery
// (an ErrorCode raised or cleared, or the broker lost, showed only after a reload)
function fillLine(o) {
  for (const row of $$("#plc tr[data-station]")) {
    const s = o.plc && o.plc.stations.find((x) => x.id === row.dataset.station);
    if (!s) continue;
    setField(row, "state", s.state);
    setField(row, "recipe", s.recipe || "-");
    setField(row, "code", s.error_code ? `${s.error_code} (${s.error})` : "0").className = s.error_code ? "fail" : "";
    setField(row, "failed", String(s.failed_parts));
  }
  const m = o.mqtt;
  if (!m || !$("#mqtt")) return;
  const put = (key, text, cls) => {
    const cell = $(`#mqtt-${key}`);
    if (!cell) return;
    cell.textContent = text;
    if (cls !== undefined) cell.className = cls;
  };
  put("connection", m.connected ? "connected" : "disconnected", m.connected ? "pass" : "fail");
  put("outbox", String(m.backlog));
  put("delivery", String(m.lag_s));
  put("delivered", String(m.delivered));
  put("last", m.last_error || "none");
}

async function refresh() {
  try {
    const o = await api("/v1/overview");
    $("#ready").textContent = o.ready ? "ready" : "starting";
    fillKpi("#yield-shift", o.shift, hourLabel(new Date(o.shift_start)));
    fillKpi("#yield-day", o.day, null);
    fillAlarms(o.alarms);
    const byId = new Map(o.stations.map((st) => [st.camera.id, st]));
    for (const card of $$(".station")) {
      const st = byId.get(card.dataset.camera);
      const plc = o.plc && o.plc.stations.find((x) => x.id === card.dataset.camera);
      if (st) fillStation(card, st, plc);
    }
    fillTables(o);
    fillLine(o);
  } catch (e) {
    if (e.status !== 401) for (const k of $$(".kpi [data-field=detail]")) k.textContent = "could not refresh: " + e.message;
  }
}

showZone();
refresh();
setInterval(refresh, REFRESH_MS);
for (const img of $$("img[data-snapshot]")) snapshots(img);
