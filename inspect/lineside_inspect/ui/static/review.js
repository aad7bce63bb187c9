// Lineside review page: queues (saved filters of GET /v1/inspections), the grid, one
// inspection at a time with its boxes and audit trail, batch confirmation, the reviews'
// audit trail. Talks to /v1 with the session cookie and the CSRF token the server put in
// the page. Every value from the API reaches the page as text (see common.js).
import { $, $$, addFleetOptions, api, changed, coded, cut, dateTime, dismissable, el, fleetLists, leaveLink, notOfFleet, num, sayLinkNote, showZone, svg, time,
         verdict } from "/static/common.js";

const state = { items: [], total: 0, offset: 0, shown: 0, limit: 24, sel: 0, open: null, box: 0, classes: [],
                // the part being fetched (review keys wait for it), a review being posted
                loading: null, saving: false, from: "grid",
                drawing: false, start: null, scale: 1, showRef: false, queues: [], queue: null, audit: 0,
                shadow: null, confirming: [], auditShown: 0, auditRow: 0 };
const form = $("#filters");
// site, line and box_id are there on a hub only (its review page covers every box)
const ON_HUB = Boolean(form.elements.box_id);
// this box's id where its database is shared with other boxes, whose inspections it
// lists: then every item names its box, as on a hub (cam1 of two boxes read as one, and
// another box's part read as this box's with "(no image kept)")
const HERE = document.querySelector('meta[name="shared-box"]')?.content || "";
const BOXED = ON_HUB || Boolean(HERE);
const elsewhere = (it) => Boolean(HERE && it.box_id && it.box_id !== HERE);
const FIELDS = ["verdict", "review_state", "camera_id", "part_id", "label", "min_score", "queue", "site", "line", "box_id"]
  .filter((k) => form.elements[k]);
// a queue is a filter within the fleet's site, line and box chosen: it counts their parts
// and keeps them (it counted every box's, and pressed, showed every plant's parts to a
// reviewer who had chosen one box, where Shift+C confirmed them)
const FLEET = ["site", "line", "box_id"].filter((k) => form.elements[k]);
const QUEUE_FIELDS = FIELDS.filter((k) => !FLEET.includes(k));
function fleetScope() {
  const p = new URLSearchParams();
  for (const k of FLEET) if (form.elements[k].value) p.set(k, form.elements[k].value);
  return p;
}

function query() {
  const p = new URLSearchParams();
  for (const [k, v] of new FormData(form)) if (v !== "") p.set(k, v);
  p.set("limit", state.limit); p.set("offset", state.offset);
  return p;
}

// the filters and the page shown outlive a reload in this tab (a session that expired, a
// server restarted: both reload the page): the reviewer was put back on the first page of
// the default filter, mid-shift (QA review, session 36). Per tab and per user (common.js
// forgets it at sign-out and drops another user's: session 50), never sent anywhere
const KEPT = "lineside.review";
function keep() {
  try { sessionStorage.setItem(KEPT, query().toString()); } catch { /* storage off: not kept */ }
}
// A filter in the address wins: the form sent before this script had run (a slow link or
// a loaded box: it went as a plain GET, and the list shown was the default one, the
// filter silently dropped) or a link to a list (/review?part_id=P7). A field it does not
// name keeps its default; the address is then cleared, so a reload shows the list as kept
// the values of a link the page could not take (min_score=abc: the number field held "",
// and the whole line's list showed, unsaid), each said in the link note as text
const notTaken = [];
const MAX_OFFSET = 1e9;  // (GET /v1/inspections' bound)
// on a hub: the site, line and box the link or the kept filter set (value, option added),
// checked against the fleet's once it comes (loadFleet); and whose values the note says
const fleetSet = new Map();
let lead = "This link: ";
// a hub has no lifecycle of its own: a box's queues (GET /v1/queues) are none of its page's
// (?queue=shadow listed nothing on a hub, said "not one of this page's queues": session 50)
const BOX_QUEUES = { shadow: "shadow comparisons are each box's, on that box's own review page (the hub has none)",
                     to_label: "the parts kept to label are each box's, on that box's own review page (the hub has none)" };
function restore() {
  const asked = new URLSearchParams(location.search);
  // (a link's offset alone is a link too: the default list's page; it was read as no
  // link, the kept list shown and the address left as it was)
  const linked = [...FIELDS, "offset"].some((k) => asked.has(k));
  let kept = null;
  if (linked) {
    kept = asked.toString();
    history.replaceState(null, "", location.pathname);
  } else {
    try { kept = sessionStorage.getItem(KEPT); } catch { return; }
    lead = "The filter kept in this tab: ";
  }
  if (kept === null) return;
  const p = new URLSearchParams(kept);
  // on a hub, a queue (a box's: the hub has none) is said and left out, with the queue's
  // own filter: the hub's unreviewed fails are shown instead of an empty list
  const hubQueue = ON_HUB && p.get("queue") && !changed(form.elements.queue) ? p.get("queue") : "";
  if (hubQueue) {
    p.delete("queue");
    notTaken.push(`queue "${cut(hubQueue)}": ${Object.hasOwn(BOX_QUEUES, hubQueue) ? BOX_QUEUES[hubQueue] : "not a queue of the hub's review page"}, left out`);
  }
  // a field the reviewer changed before this script had run keeps that choice (the kept
  // filter or the address's set it back, unsaid, and Filter then sent the old one), and
  // the list is then a new one: from its first page. (A value the browser put back on a
  // reload, the same as the kept one, is no choice: the page kept stays)
  const theirs = FIELDS.filter((k) => changed(form.elements[k]) && form.elements[k].value !== (p.get(k) || ""));
  // a link naming a queue shows the list its button shows: the queue's own params for the
  // fields the link does not give (?queue=to_label kept the default verdict, fail, and
  // listed that queue's fails only, under a button counting every verdict: session 49)
  const own = linked && p.get("queue") ? queueParams(p.get("queue")) : null;
  for (const k of FIELDS) {
    if (theirs.includes(k)) continue;
    const given = !linked || p.has(k);
    if (!given && !(own && QUEUE_FIELDS.includes(k))) continue;
    const f = form.elements[k], v = (given ? p.get(k) : own[k]) || "";
    // a class or a box the page has not listed yet (they come with the pages it loads, and
    // the fleet's: a site, line or box it no longer lists is then said, loadFleet)
    let option = null;
    if (f.tagName === "SELECT" && v && !Array.from(f.options, (o) => o.value).includes(v)) f.add(option = new Option(coded(v), v));
    f.value = v;
    if (FLEET.includes(k)) fleetSet.set(k, { v, option });
    // (a number field takes no text: the filter was dropped, unsaid; it keeps its default)
    if (linked && f.value !== v) { f.value = f.defaultValue; notTaken.push(`${k} "${cut(v)}": not a number from ${f.min} to ${f.max}, left out`); }
  }
  // the list's page: a whole number the API takes (offset=x or -24 read as the first page,
  // unsaid: session 49; an empty offset= too: session 50); one past the list's end shows
  // its last page (load)
  const off = p.get("offset") || "", at = /^\d+$/.test(off) && Number(off) <= MAX_OFFSET ? Number(off) : null;
  if (linked && p.has("offset") && at === null && !theirs.length) notTaken.push(`offset "${cut(off)}": not a whole number from 0 to ${MAX_OFFSET}, the first page shown`);
  if (notTaken.length) sayLinkNote(notTaken.join("; "), $("#queuebar"), lead);
  state.offset = theirs.length || at === null || hubQueue ? 0 : at;
}

// the queue the list is narrowed to, said and clearable: a link's queue=NAME showed fewer
// items than the counts said, no field named it, and only a reload under another link
// cleared it; a name the server has no queue for showed an empty grid with no reason
function showQueue() {
  const name = form.elements.queue.value, line = $("#queuenote");
  line.hidden = !name;
  const q = state.queues.find((x) => x.params.queue === name);
  const known = !state.queues.length || q;  // (the queues not yet loaded: said once they are)
  const said = name ? ["Queue: ", el("bdi", {}, name), q ? ` (${q.title})` : "", known ? "" : ": not one of this page's queues"] : [];
  // (redrawn only when it says something else: the focus stays on its button)
  const text = $("#queuetext");
  if (text.textContent !== said.map((x) => (typeof x === "string" ? x : x.textContent)).join("")) text.replaceChildren(...said);
}
$("#queue-clear").onclick = () => {
  form.elements.queue.value = ""; state.offset = 0; state.sel = 0; leaveLink();
  $("button[type=submit]", form).focus();
  showGrid(); load(); loadQueues(); showQueue();
};

// -- queues -----------------------------------------------------------------------------
function sameFilter(params) {
  const f = new FormData(form);
  return QUEUE_FIELDS.every((k) => (f.get(k) || "") === (params[k] || ""));
}

// the queue every store has; the lifecycle's (GET /v1/queues, where the server has it:
// shadow disagreements, to label) are added as GET /v1/inspections?queue=NAME
const UNREVIEWED_FAILS = { name: "unreviewed_fails", title: "Unreviewed fails", description: "fails no reviewer has looked at yet",
                           params: { verdict: "fail", review_state: "unreviewed" } };

// a lifecycle queue's filter (its button's; a link naming the queue takes it too): its
// unreviewed parts, of every verdict, as GET /v1/queues counts them
const queueParams = (name) => ({ queue: name, review_state: "unreviewed" });

// the queue counts, this shift's reviewers, the audit trail: an answer that did not come is
// said where it would have shown (they failed silently, the counts left stale: QA review, 36)
async function loadQueues() {
  try { await queuesNow(); } catch (e) { $("#reviewers").textContent = `could not load the queues (${e.message})`; }
}

async function queuesNow() {
  // (its text, not URLSearchParams.size: Safari before 17 and Chrome before 113 have no
  // size, and the count was the whole fleet's again there)
  const scope = fleetScope().toString();
  const fails = await api(`/v1/inspections?verdict=fail&review_state=unreviewed&limit=1${scope ? "&" + scope : ""}`);
  const queues = [{ ...UNREVIEWED_FAILS, count: fails.total }];
  if (!ON_HUB) {  // a hub has no lifecycle of its own: no queues to ask for (a 404 each time)
    try {
      const doc = await api("/v1/queues");
      for (const q of doc.items) queues.push({ name: q.name, title: q.title, description: q.description,
                                               params: queueParams(q.name), count: q.unreviewed });
    } catch (e) { if (e.status !== 404) throw e; }  // a server without the lifecycle's queues
  }
  state.queues = queues;
  state.queue = (queues.find((q) => sameFilter(q.params)) || {}).name || null;
  showQueue();
  // the focus on a queue button (pressed with the keyboard, or there as the counts came)
  // stays on the same queue's new button: the redraw dropped it to <body> (session 48)
  const bar = $("#queues"), active = document.activeElement;
  const focused = bar.contains(active) ? active.dataset.queue : null;
  bar.replaceChildren(...queues.map((q) => {
    const b = el("button", { type: "button", class: q.name === state.queue ? "on" : "", "aria-pressed": q.name === state.queue,
                             title: q.description, "data-queue": q.name }, `${q.title} (${num(q.count)})`);
    b.onclick = () => useQueue(q);
    return b;
  }));
  if (focused !== null && document.activeElement === document.body) {  // (not where it went since)
    const again = [...bar.children].find((b) => b.dataset.queue === focused) || bar.firstElementChild;
    if (again) again.focus();
  }
  // this shift's reviews of the parts of the site, line and box chosen (it was every box's)
  const who = await api(`/v1/reviewers${scope ? "?" + scope : ""}`);
  $("#reviewers").replaceChildren(...(who.reviewers.length
    ? ["Reviews this shift: ", ...who.reviewers.flatMap((r, i) => [i ? " · " : "", el("bdi", {}, byBox(r)), ` ${num(r.reviews)}`])]
    : ["No reviews yet this shift"]));
}

// a hub's tally is every box's: a reviewer is named with the box the reviews were made on
// (a box's reviewers already carry it, "qa (box-a)", from the hub's record of them); a
// box's tally names the hub's reviewers, whose reviews it took down, "qa (hub)"
function byBox(r) {
  return (ON_HUB || r.box_id === "hub") && r.box_id && !r.reviewer.endsWith(`(${r.box_id})`) ? `${r.reviewer} (${r.box_id})` : r.reviewer;
}

function useQueue(q) {
  for (const k of QUEUE_FIELDS) form.elements[k].value = q.params[k] || "";
  state.offset = 0; state.sel = 0; leaveLink();
  showGrid(); load(); loadQueues();
}

// -- boxes with readable labels: HTML over the image, placed in % of its size ---------------
function boxLayer(layer, boxes, w, h, selected = -1) {
  layer.replaceChildren(...boxes.map((d, i) => {
    const [x1, y1, x2, y2] = d.box.map(Number);
    const score = d.score !== undefined ? ` ${Number(d.score).toFixed(2)}` : "";
    // a label goes above its box, below one at the image's top, and inside one as tall as
    // the image (an anomaly fail reported as the whole image): below it, the card's picture
    // cut it off and the part's showed a sliver at the stage's edge (review, session 39)
    const place = y1 / h >= 0.06 ? "" : y2 / h > 0.94 ? " inside" : " low";
    const b = el("div", { class: "bx" + (i === selected ? " sel" : "") + place },
                 el("span", {}, i === selected ? "▶ " : "", el("bdi", {}, d.label), score));
    Object.assign(b.style, { left: `${(100 * x1) / w}%`, top: `${(100 * y1) / h}%`,
                             width: `${(100 * (x2 - x1)) / w}%`, height: `${(100 * (y2 - y1)) / h}%` });
    return b;
  }));
  return layer;
}

const truthOf = (o) => (o.reviews.length ? o.reviews[o.reviews.length - 1].boxes : o.defects);

// -- the grid ---------------------------------------------------------------------------
// the stored rows a page's window held: its items and the rows left out of it (rows that
// do not read: a hand edit, a foreign writer; GET /v1/inspections' left_out). A page of
// rows all left out is a page, not one emptied by confirms: read as one, it jumped to the
// last page, past every part after it (review, session 40)
const held = (doc) => doc.items.length + (Number(doc.left_out) || 0);
const unread = (n, what = "inspection") => (n ? ` · ${num(n)} ${what}${n === 1 ? "" : "s"} on this page could not be read` : "");

// each load is numbered: an answer that arrives after a newer load began is dropped, or a
// slow cam1 page showed under the filter cam2 and Shift+C confirmed it (QA review, session 32)
let loads = 0;
async function load() {
  const mine = ++loads;
  let doc;
  try {
    doc = await api("/v1/inspections?" + query());
    if (mine !== loads) return;
    if (!held(doc) && doc.total && state.offset) {
      // the page emptied under it (its last items confirmed away): its new last page
      state.offset = Math.floor((doc.total - 1) / state.limit) * state.limit;
      doc = await api("/v1/inspections?" + query());
      if (mine !== loads) return;
    }
  } catch (e) {
    // a list that did not come (server restarting, network down) is said, and the page
    // on screen stays the one the pager counts from: the offset had moved on, so n after
    // a failed n skipped a page of parts unseen, and nothing said the list was stale
    if (mine !== loads) return;
    if (e.status === 422) {
      // a filter the server refuses (a link's queue=NAME it has no queue for, min_score=5):
      // no list is shown for it, and the reason is said (it read "showing the list as it
      // was" over an empty grid, or over a list of another filter, which Shift+C confirmed)
      state.offset = 0; state.shown = 0; state.items = []; state.total = 0;
      $("#grid").replaceChildren();
      $("#count").textContent = `this filter is refused (${e.message}): change it or clear it`;
      showQueue();
      return;
    }
    state.offset = state.shown;
    $("#count").textContent = `could not load the list (${e.message}): showing the list as it was`;
    return;
  }
  state.shown = state.offset;
  keep(); showQueue();
  state.items = doc.items; state.total = doc.total;
  state.sel = Math.min(state.sel, Math.max(0, doc.items.length - 1));
  addFilterClasses(doc.items);
  $("#count").textContent = doc.total ? `${num(state.offset + 1)}–${num(state.offset + held(doc))} of ${num(doc.total)}${unread(Number(doc.left_out) || 0)}`
                                      : "nothing to review here";
  $("#grid").replaceChildren(...doc.items.map((it, i) => {
    // a fail no box explains says why on its card: "FAIL · 0 defect(s)" read as a false
    // reject waiting to be marked, and Shift+C confirmed such fails unseen (QA review, 34)
    const why = [...new Set(it.reasons.map((r) => WHY[r.rule]).filter(Boolean))].join(", ");
    // its name is its text, as shown: a name of its own ("fail from cam1, 2 defects") held
    // none of the words a voice-control user reads off it, and a name of its two lines left
    // out the class labels over its picture and "(no image kept)" (axe-core's
    // label-content-name-mismatch, session 39). The lines come first in the DOM, so the
    // name starts with the verdict; the picture is drawn above them (CSS order)
    const c = el("div", { class: "card" + (i === state.sel ? " sel" : ""), tabindex: 0, role: "button" });
    c.dataset.id = it.id;
    const pic = it.has_image
      ? el("div", { class: "pic" }, el("img", { loading: "lazy", alt: "", src: `/v1/inspections/${encodeURIComponent(it.id)}/image` }),
           boxLayer(el("div", { class: "boxes" }), truthOf(it), it.width, it.height))
      : el("p", { class: "nopic" }, ...(elsewhere(it) ? ["(its image is kept on box ", el("bdi", {}, it.box_id), ")"] : ["(no image kept)"]));
    const img = $("img", pic);
    if (img) img.onerror = () => pic.replaceChildren(el("p", {}, "(the image could not be loaded: removed from the store?)"));
    c.append(
      el("p", { id: `card-${i}-what` }, verdict(it.verdict), why ? ` · ${why}` : "", ` · ${it.defects.length} defect(s) · ${it.review_state.replace("unreviewed", "○ unreviewed")}`),
      // on a hub (or a box sharing its database) the box it came from too
      el("p", { class: "where", id: `card-${i}-where` }, ...(BOXED && it.box_id ? [el("bdi", {}, it.box_id), " · "] : []),
         el("bdi", {}, it.camera_id || "upload"), ` · ${time(it.created_at)}`),
      pic);
    c.onclick = () => { state.sel = i; open(i); };
    c.onfocus = () => select(i, false);
    return c;
  }));
}

// the reasons of a fail its boxes do not show, as its card says them
const WHY = { reference_mismatch: "not the golden's view", anomaly: "anomaly score", blank_frame: "blank frame" };

// the classes an open inspection may be given are its own model's (keys 1-9 pick them):
// a line with a detector and a good-only model has both kinds on one page
function setClasses(names) {
  if (names.join("\n") === state.classes.join("\n")) return;  // a class picked meanwhile stays
  const picked = $("#d-label").value;
  state.classes = names;
  $("#d-label").replaceChildren(...names.map((n, i) => new Option(`${i + 1} ${n}`, n)));
  if (names.includes(picked)) $("#d-label").value = picked;
}

// the class filter offers every class seen on the pages loaded so far
function addFilterClasses(items) {
  const lab = form.elements.label;
  const have = new Set(Array.from(lab.options, (o) => o.value));
  for (const it of items) for (const n of it.class_names) if (!have.has(n)) { lab.add(new Option(n, n)); have.add(n); }
}

function select(i, focus = true) {
  state.sel = Math.max(0, Math.min(state.items.length - 1, i));
  const cards = $$(".card");
  cards.forEach((c, j) => c.classList.toggle("sel", j === state.sel));
  if (focus && cards[state.sel]) cards[state.sel].focus();
}

function showGrid() {
  $("#detail").hidden = true; $("#audit").hidden = true; $("#grid").hidden = false; $("#pager").hidden = false;
  $("#tab-grid").classList.add("on"); $("#tab-audit").classList.remove("on");
  $("#tab-grid").setAttribute("aria-pressed", "true"); $("#tab-audit").setAttribute("aria-pressed", "false");
  state.open = null; state.loading = null;  // a fetch still running shows nothing then
}

// -- one inspection ---------------------------------------------------------------------
async function open(i) {
  const it = state.items[i]; if (!it) return;
  state.from = "grid";
  // a part that did not come leaves the one on screen (j moved the selection on first:
  // the next j skipped a part unseen)
  if (await openId(it.id) === false && state.open) state.sel = Math.max(0, state.items.findIndex((x) => x.id === state.open.id));
}

async function openId(id) {
  // reset before the fetch: a key pressed while it runs (d, a class) applies to this one
  hideDraw(); say("");
  // the part being opened, at once: until it is on screen a review key is held back (j
  // then f at once reviewed the part still shown, and its answer put it back on screen)
  state.loading = id;
  let doc;
  try { doc = await api(`/v1/inspections/${encodeURIComponent(id)}`); }
  catch (e) {
    if (state.loading !== id) return undefined;  // another part was opened meanwhile
    state.loading = null;
    const why = `could not open ${id.slice(0, 8)}: ${e.message}`;
    if (!$("#detail").hidden) say(why);
    else $(!$("#audit").hidden ? "#a-count" : "#count").textContent = why;  // (removed by retention?)
    return false;
  }
  if (state.loading !== id) return undefined;  // another part was opened meanwhile: that one shows
  state.loading = null;
  state.open = doc; state.box = 0; state.scale = 1;
  setClasses(state.open.class_names);
  $("#grid").hidden = true; $("#pager").hidden = true; $("#audit").hidden = true; $("#detail").hidden = false;
  state.showRef = false; $("#stage").classList.remove("ref");
  $("#boxes").hidden = false; $("#shadow-boxes").hidden = false;  // shown again after r
  $("#b-ref").hidden = !(state.open.reference && state.open.reference.has_image);
  const img = $("#big");
  img.onload = fit;
  img.onerror = () => say("the image could not be loaded (removed from the store?)");
  img.hidden = !state.open.has_image;  // passes are sampled: the boxes stay, on black
  if (state.open.has_image) img.src = `/v1/inspections/${encodeURIComponent(id)}/image`;
  else {
    img.removeAttribute("src");
    say(elsewhere(state.open) ? `its image is kept on box ${state.open.box_id}, not on this one`
                              : "no image was kept of this inspection (passes are sampled)");
  }
  $("#overlay").setAttribute("viewBox", `0 0 ${state.open.width} ${state.open.height}`);
  state.shadow = null;
  render(); fit();
  // the part opened takes the focus: the card pressed is hidden, and focus fell to <body>
  // (not from a box being drawn: d pressed while the part loaded set up its form, on the
  // part shown then: set up again on this one's size, focused)
  if (state.drawing) startDraw();
  else $("#d-title").focus({ preventScroll: true });
  loadShadow(id);
  return true;
}

// where a shadow model disagreed on this inspection, what it said (dashed boxes): the
// reviewer sees both answers before saying who was right
async function loadShadow(id) {
  if (ON_HUB) return;  // shadows run on boxes: a hub holds none
  let doc;
  try { doc = await api(`/v1/inspections/${encodeURIComponent(id)}/shadow`); }
  catch (e) { return; }  // no lifecycle here (a hub), or nothing to show
  if (!state.open || state.open.id !== id || !doc.items.length) return;
  state.shadow = doc.items[0];
  render();
}

// how the shadow judged the frame where the recipe fuses a detector with a good-only
// model (values from the store: text, never markup); a row judged alone, or stored before
// shadows said how (nulls), reads as before
function judgedAs(s) {
  if (!s.fused_with) return "";
  if (s.fused_kind === "anomaly") return ` · judged with the served good-only ${s.fused_with}`;
  if (s.fused_kind === "detector") return ` · its finding fused with the served detector ${s.fused_with}`;
  return ` · judged with ${s.fused_with}`;
}

// the image fills the panel at its own aspect; + and - zoom from there
function fit() {
  const o = state.open; if (!o) return;
  const stage = $("#stage"), k = Math.min(stage.clientWidth / o.width, stage.clientHeight / o.height) * state.scale;
  Object.assign($("#zoom").style, { width: `${Math.floor(o.width * k)}px`, height: `${Math.floor(o.height * k)}px` });
}
new ResizeObserver(fit).observe($("#stage"));

function render() {
  const o = state.open;
  $("#d-title").replaceChildren(verdict(o.verdict), ` ${o.id.slice(0, 8)}`);
  const ref = o.reference ? [" · reference ", el("bdi", {}, o.reference.name || "(sent with the frame)")] : [];
  // each value isolated (bdi): one holding a right-to-left override reversed the whole line
  const b = (v) => el("bdi", {}, String(v));
  $("#d-meta").replaceChildren(...(BOXED && o.box_id ? ["box ", b(o.box_id), " · "] : []), b(o.camera_id || "upload"), " · part ", b(o.part_id || "-"), " · ", b(o.recipe.name),
    " v", b(o.recipe.version), " · model ", b(o.model.name), ":", b(o.model.version), ...ref,
    // a recipe's tiling: the frame judged in this many tiles (absent when judged whole)
    ...(o.tiles ? [" · judged in ", b(o.tiles), " tiles"] : []), ` · ${dateTime(o.created_at)} · ${o.review_state}`);
  // why it failed, as judged (an anomaly model's reason carries its image score)
  // a part the unchanged gate passed was never seen by the detector: said, for a reviewer
  // hunting escapes (it read as the detector's pass; QA review, session 34)
  const gate = o.reference && o.reference.unchanged
    ? [`passed by the unchanged gate: the frame matched its golden image everywhere${o.reference.difference === null || o.reference.difference === undefined ? "" : ` (difference ${Number(o.reference.difference).toFixed(1)})`}, the detector did not run`] : [];
  $("#d-reasons").textContent = [...o.reasons.map((r) => r.message), ...gate].join(" · ");
  const truth = truthOf(o);
  // (a box removed, here or by another reviewer: the selection stays on the list)
  if (state.box >= truth.length) state.box = Math.max(0, truth.length - 1);
  // the list is drawn anew: the item focused (Enter on it, or c, b with it focused) was
  // removed and focus fell to <body>, Tab starting over from the page's top
  const inList = $("#d-defects").contains(document.activeElement);
  $("#d-defects").replaceChildren(...truth.map((d, i) => {
    // the class isolated (bdi): a right-to-left one read the box backwards, [40, 30, 20, 10]
    // each box but a last one has its own remove button (Tab reaches it; Enter or Space
    // presses it): a false detection beside real defects goes, the model's other boxes
    // kept (a false reject, then every real box drawn again, lost them: session 55). The
    // last box is no box to remove: the part is good, a false reject (f) says so
    const rm = truth.length > 1 ? [el("button", { type: "button", class: "rm", "aria-label": `remove box ${i + 1}, ${d.label}` }, "Remove")] : [];
    const li = el("li", { class: i === state.box ? "sel" : "", tabindex: 0 }, i === state.box ? "▶ " : "", el("bdi", {}, d.label),
                  `${d.score !== undefined ? " " + Number(d.score).toFixed(2) : ""} [${d.box.map(Math.round).join(", ")}]`, ...(rm.length ? [" ", ...rm] : []));
    li.onclick = () => { state.box = i; render(); };
    li.onkeydown = (e) => { if (e.target === li && (e.key === "Enter" || e.key === " ")) { e.preventDefault(); state.box = i; render(); } };
    if (rm.length) rm[0].onclick = (e) => { e.stopPropagation(); state.box = i; review({ action: "remove_box", index: i }); };
    return li;
  }));
  // a review the fleet hub's reviewer made says so, as the shift's tally does ("qa (hub)"):
  // it read as this box's own qa (session 52; a server before it sends no origin)
  $("#d-reviews").replaceChildren(...o.reviews.map((r) =>
    el("li", {}, `${dateTime(r.created_at)} · `, el("bdi", {}, r.reviewer), r.origin === "hub" ? " (hub)" : "",
       `: ${r.action.replace("_", " ")} (${r.boxes.length} defect(s) after)`)));
  if (inList) ($$("#d-defects li")[state.box] || $("#d-title")).focus({ preventScroll: true });
  if (!o.reviews.length) $("#d-reviews").append(el("li", { class: "none" }, "not reviewed yet"));
  boxLayer($("#boxes"), truth, o.width, o.height, state.box);
  const s = state.shadow;
  $("#d-shadow").hidden = !s;
  $("#d-shadow").textContent = s ? `Shadow ${s.model}:${s.shadow.version} said ${s.shadow.verdict}` +
    (s.shadow.defects.length ? `: ${s.shadow.defects.map((d) => d.label).join(", ")} (dashed boxes)` : ": no defect") +
    ` · active ${s.active.version} said ${s.active.verdict}${judgedAs(s)}` : "";
  boxLayer($("#shadow-boxes"), s ? s.shadow.defects : [], o.width, o.height);
  drawPreview();
  sayPull(o);
}

// what `lineside data pull` does with the part as reviewed: a confirmed good-only region or
// a fail with no box is left out of a pull, and nothing on this page said so: a reviewer
// confirming them believed they became training data (session 50). The server says it
// (the inspection's `pull`, by the pull's own rules: store/pull_rules.py), in the words
// the pull logs; this page had its own copy of the rules, which could drift (session 51).
// Said as text beside the status line while it is so; unreviewed, nothing is decided yet
// (the model's word), and an answer without `pull` (a server of an earlier release) says
// nothing rather than guess.
function pullNote(o) {
  const p = o.pull;
  if (!o.reviews.length || !p || typeof p !== "object" || p.kept !== false || typeof p.reason !== "string") return "";
  return `Not pulled for training as is: ${p.reason}.`;
}
function sayPull(o) {
  const said = pullNote(o), note = $("#d-pull");
  // (redrawn only when it says something else: a render for the shadow's answer announced it again)
  if (note.textContent !== said) note.textContent = said;
}

function drawPreview(box) {
  $("#overlay").replaceChildren(...(box ? [svg("rect", { id: "drawn", x: box[0], y: box[1], width: box[2] - box[0],
    height: box[3] - box[1], fill: "rgba(80,200,255,.2)", stroke: "#5cf", "stroke-width": 2, "vector-effect": "non-scaling-stroke" })] : []));
}

function say(text, conflict = false) {
  $("#d-status").textContent = text;
  $("#d-status").classList.toggle("conflict", conflict);
}

// the list's item of a part as the server now has it: after Esc the old list shows until
// its reload answers, and a Shift+C meanwhile confirmed the parts just reviewed again (each
// a conflict "reviewed by someone else", the reviewer's own save; QA flake hunt, session 35)
function listed(doc) {
  const it = state.items.find((x) => x.id === doc.id);
  if (it) { it.review_state = doc.review_state; it.reviews = doc.reviews; }
}

// a review carries how many reviews the page saw: if someone else saved one meanwhile the
// server answers 409, nothing is saved, and the newer state is shown here
async function review(body) {
  const o = state.open;
  if (!o) return;
  // one review at a time, on the part on screen: c twice at once answered the second with
  // a conflict against the reviewer's own first save
  if (state.loading || state.saving) { say("wait: the part is still loading or saving"); return; }
  state.saving = true;
  const here = () => state.open && state.open.id === o.id && !state.loading;
  try {
    const saved = await api(`/v1/inspections/${encodeURIComponent(o.id)}/reviews`,
                            { method: "POST", body: JSON.stringify({ ...body, seen_reviews: o.reviews.length }) });
    listed(saved);
    if (here()) { state.open = saved; say(`saved: ${body.action}`); render(); }
  } catch (e) {
    if (e.status !== 409) { if (here()) say("error: " + e.message); return; }
    const now = await api(`/v1/inspections/${encodeURIComponent(o.id)}`);
    listed(now);
    if (!here()) return;
    state.open = now;
    render();
    say(`not saved: ${e.message} The audit trail below shows it; review again if you still disagree.`, true);
  } finally {
    state.saving = false;
  }
}

// -- drawing a missed defect: drag on the image, or type the box --------------------------
// a point of the image under the pointer, held inside it (a drag may end past its edge)
function point(ev) {
  const r = $("#overlay").getBoundingClientRect(), o = state.open;
  const clamp = (v, hi) => Math.max(0, Math.min(hi, v));
  return [clamp((ev.clientX - r.left) * o.width / r.width, o.width), clamp((ev.clientY - r.top) * o.height / r.height, o.height)];
}

const norm = (s, p) => [Math.min(s[0], p[0]), Math.min(s[1], p[1]), Math.max(s[0], p[0]), Math.max(s[1], p[1])];
const drawForm = $("#draw-form");

function startDraw() {
  const o = state.open; if (!o) return;
  state.drawing = true;
  const w = o.width, h = o.height, box = [w * 0.45, h * 0.45, w * 0.55, h * 0.55].map(Math.round);
  ["x1", "y1", "x2", "y2"].forEach((k, i) => { drawForm.elements[k].value = box[i]; drawForm.elements[k].max = i % 2 ? h : w; });
  drawForm.hidden = false; drawPreview(box); drawError("");
  say("drag on the image, or type the box and press Enter");
  drawForm.elements.x1.focus();
}

const COORDS = ["x1", "y1", "x2", "y2"];
// a box refused is said at its fields, which are marked and keep what was typed (the form
// closed, the box typed lost, and the reason was said apart from the fields)
function drawError(text, bad = []) {
  $("#draw-error").textContent = text;
  for (const k of COORDS) {
    const f = drawForm.elements[k], wrong = bad.includes(k);
    if (wrong) { f.setAttribute("aria-invalid", "true"); f.setAttribute("aria-describedby", "draw-error"); }
    else { f.removeAttribute("aria-invalid"); f.removeAttribute("aria-describedby"); }
  }
  if (bad.length) drawForm.elements[bad[0]].focus();
}
// the form goes, and the focus with it to the button that opens it: it fell to <body>, and
// Tab started again from the top of the page
function hideDraw(refocus = false) {
  state.drawing = false; state.start = null; drawForm.hidden = true; drawPreview(); drawError("");
  if (refocus) $("#b-draw").focus();
}
const typedBox = () => COORDS.map((k) => Number(drawForm.elements[k].value));

async function saveBox(box) {
  const bad = [...(box[2] - box[0] < 2 ? ["x2"] : []), ...(box[3] - box[1] < 2 ? ["y2"] : [])];
  if (bad.length) {
    state.start = null; drawPreview(box);
    drawError(`a box needs ${bad.map((k) => (k === "x2" ? "x2 > x1" : "y2 > y1")).join(" and ")}`, bad);
    return;
  }
  hideDraw(true);
  await review({ action: "missed_defect", boxes: [{ label: $("#d-label").value, box: box.map((v) => Math.round(v * 10) / 10) }] });
}

// pointer events, so a finger draws as a mouse does: on a tablet a drag did nothing (the
// touch scrolled) and a tap ended the drawing with "a box needs x2 > x1" (the overlay's
// touch-action: none keeps the drag for the box)
const overlay = $("#overlay");
overlay.addEventListener("pointerdown", (ev) => {
  if (state.drawing && ev.isPrimary && ev.button === 0) { ev.preventDefault(); state.start = point(ev); }
});
// on the window: a drag released past the image's edge was lost, its box left following the pointer
window.addEventListener("pointermove", (ev) => { if (state.start && ev.isPrimary) drawPreview(norm(state.start, point(ev))); });
window.addEventListener("pointerup", async (ev) => {
  if (!state.start || !state.open || !ev.isPrimary) return;
  const box = norm(state.start, point(ev));
  // a tap or a click is no box: the form stays, with the box typed in it
  if (box[2] - box[0] < 2 && box[3] - box[1] < 2) { state.start = null; drawPreview(typedBox()); return; }
  await saveBox(box);
});
window.addEventListener("pointercancel", () => { if (state.start) { state.start = null; drawPreview(typedBox()); } });
drawForm.addEventListener("input", () => drawPreview(typedBox()));
drawForm.addEventListener("submit", (e) => { e.preventDefault(); saveBox(typedBox()); });
drawForm.addEventListener("keydown", (e) => { if (e.key === "Escape") { hideDraw(true); say("drawing cancelled"); } });
$("#draw-cancel").onclick = () => { hideDraw(true); say("drawing cancelled"); };

// reference models: flip between the frame and the golden image it was compared with
function toggleRef() {
  const o = state.open; if (!o || !(o.reference && o.reference.has_image)) return;
  state.showRef = !state.showRef;
  $("#big").src = `/v1/inspections/${encodeURIComponent(o.id)}/${state.showRef ? "reference" : "image"}`;
  $("#stage").classList.toggle("ref", state.showRef);
  $("#boxes").hidden = state.showRef; $("#shadow-boxes").hidden = state.showRef;
  say(state.showRef ? "showing the reference image (r: back to the frame)" : "showing the frame");
}

function back() {
  // back where it was opened from, on the row it was opened from (the focus fell to <body>)
  if (state.from === "audit") {
    showAudit().then(() => ($$("#audit-table tbody button")[state.auditRow] || $("#tab-audit")).focus());
    return;
  }
  const sel = state.sel;
  showGrid();
  load().then(() => select(sel)); loadQueues();
}

function zoom(k) { state.scale = k === 0 ? 1 : Math.max(0.5, Math.min(6, state.scale * k)); fit(); }
function relabel() { review({ action: "relabel", index: state.box, label: $("#d-label").value }); }
function nextBox() { const n = truthOf(state.open).length; if (n) { state.box = (state.box + 1) % n; render(); } }

// -- batch: confirm every visible unreviewed inspection -------------------------------------
function askConfirmAll() {
  const todo = state.items.filter((it) => it.review_state === "unreviewed");
  if (!todo.length) { $("#count").textContent = "nothing unreviewed on this page"; return; }
  // the parts the dialog counts are the ones confirmed: a page still loading (n, then
  // Shift+C) answered while it was open, and the next page's parts were confirmed unseen
  state.confirming = todo;
  $("#ca-text").textContent = `Confirm the verdicts of the ${todo.length} unreviewed inspection(s) on this page ` +
    `(${todo.filter((it) => it.verdict === "fail").length} fail, ${todo.filter((it) => it.verdict === "pass").length} pass)?`;
  const dlg = $("#confirm-all");
  dlg.returnValue = "";
  dlg.showModal();
  $("#ca-yes").focus();
}

$("#confirm-all").addEventListener("close", async () => {
  const todo = state.confirming;
  state.confirming = [];
  if ($("#confirm-all").returnValue !== "yes") return;
  let saved = 0, conflicts = 0, failed = 0;
  for (const it of todo) {
    try {
      await api(`/v1/inspections/${encodeURIComponent(it.id)}/reviews`,
                { method: "POST", body: JSON.stringify({ action: "confirm", seen_reviews: it.reviews.length }) });
      saved++;
    } catch (e) { if (e.status === 409) conflicts++; else failed++; }
  }
  await load(); await loadQueues();
  $("#count").textContent += ` · confirmed ${saved}` + (conflicts ? `, ${conflicts} reviewed by someone else meanwhile (left as they were)` : "") +
    (failed ? `, ${failed} failed` : "");
  select(0);
});

// -- the audit trail of every review, paged -------------------------------------------------
async function loadAudit() {
  let doc;
  try {
    doc = await api(`/v1/reviews?limit=25&offset=${state.audit}`);
  } catch (e) {
    state.audit = state.auditShown;  // the pager counts from the page on screen
    $("#a-count").textContent = `could not load the reviews (${e.message})`;
    return;
  }
  state.auditShown = state.audit;
  // the range is the stored rows the page held, those left out (GET /v1/reviews' left_out:
  // a review that does not read) said beside it: it counted the rows shown
  $("#a-count").textContent = doc.total ? `${num(state.audit + 1)}–${num(state.audit + held(doc))} of ${num(doc.total)} reviews${unread(Number(doc.left_out) || 0, "review")}` : "no reviews yet";
  const rows = doc.items.map((r, i) => {
    const b = el("button", { type: "button" }, r.inspection_id.slice(0, 8));
    b.onclick = () => { state.from = "audit"; state.auditRow = i; openId(r.inspection_id); };
    return el("tr", {}, el("td", {}, dateTime(r.created_at)), el("td", {}, r.reviewer), el("td", {}, r.action.replace("_", " ")),
              el("td", {}, b), el("td", {}, verdict(r.verdict)), ...(BOXED ? [el("td", {}, el("bdi", {}, r.box_id || "-"))] : []),
              el("td", {}, r.camera_id || "upload"),
              el("td", { class: "n" }, num(r.defects_after)), el("td", {}, r.note));
  });
  $("#audit-table").replaceChildren(
    el("thead", {}, el("tr", {}, ...["time", "reviewer", "action", "inspection", "verdict", ...(BOXED ? ["box"] : []), "camera", "defects after", "note"]
      .map((h) => el("th", {}, h)))), el("tbody", {}, ...rows));
  const was = document.activeElement;
  $("#a-prev").disabled = state.audit === 0; $("#a-next").disabled = state.audit + 25 >= doc.total;
  // the button pressed is off on the last (or first) page: the focus goes to the other
  // one (it fell to <body>, and Tab started again from the top of the page)
  if (was && was.disabled) (was === $("#a-next") ? $("#a-prev") : $("#a-next")).focus();
}

function showAudit() {
  $("#grid").hidden = true; $("#pager").hidden = true; $("#detail").hidden = true; $("#audit").hidden = false;
  $("#tab-audit").classList.add("on"); $("#tab-grid").classList.remove("on");
  $("#tab-audit").setAttribute("aria-pressed", "true"); $("#tab-grid").setAttribute("aria-pressed", "false");
  state.open = null; state.loading = null;
  return loadAudit();
}

// -- controls: every one by mouse and by key -------------------------------------------------
$("#b-confirm").onclick = () => review({ action: "confirm" });
$("#b-false").onclick = () => review({ action: "false_reject" });
$("#b-draw").onclick = startDraw;
$("#b-ref").onclick = toggleRef;
$("#b-relabel").onclick = relabel;
$("#b-back").onclick = back;
$("#b-all").onclick = askConfirmAll;
$("#tab-grid").onclick = () => { showGrid(); load(); };
$("#tab-audit").onclick = showAudit;
$("#a-prev").onclick = () => { state.audit = Math.max(0, state.audit - 25); loadAudit(); };
$("#a-next").onclick = () => { state.audit += 25; loadAudit(); };
// the focus leaves the field (where the review keys were typed into it) for the Filter
// button while the list loads, then the first card, where Enter opens it as before (on
// the button, Enter filtered again: review, session 37); never <body>, where Tab went on
// from the top of the page
form.onsubmit = (e) => { e.preventDefault(); $("button[type=submit]", form).focus(); state.offset = 0; state.sel = 0; form.elements.queue.value = ""; leaveLink();
                         showGrid(); load().then(() => select(0, $$(".card").length > 0)); loadQueues(); };
function page(d) {
  const to = state.offset + d * state.limit;
  if (to < 0 || to >= state.total) return;
  state.offset = to; state.sel = 0; load().then(() => select(0));
}
$("#prev").onclick = () => page(-1);
$("#next").onclick = () => page(1);
// the views, the pager and confirm-all come disabled in the page: pressed before this
// script had run (a slow link, a loaded box), a click went to a button without its
// handler and was lost, nothing said (CI, session 45, met it as a flaky test)
for (const b of ["#tab-grid", "#tab-audit", "#prev", "#next", "#b-all"]) $(b).disabled = false;
$("#stage").addEventListener("wheel", (e) => { e.preventDefault(); zoom(e.deltaY < 0 ? 1.2 : 1 / 1.2); });

document.addEventListener("keydown", (e) => {
  const t = e.target;
  if (t.matches("input, select, textarea") || e.ctrlKey || e.metaKey || e.altKey || $("#confirm-all").open) return;
  // Enter and Space belong to the focused button or link; a focused card opens
  if ((e.key === "Enter" || e.key === " ") && t.matches("button, a, summary, li")) return;
  const key = e.key;
  if (state.open) {
    if ((state.loading || state.saving) && /^[cfl]$/.test(key)) {
      // a review key before the part asked for is on screen would act on the one before
      // (d and a class key set up the next box, which is drawn once the part shows)
      e.preventDefault(); say("wait: the part is still loading or saving"); return;
    }
    const handled = { Escape: back, c: () => review({ action: "confirm" }), f: () => review({ action: "false_reject" }),
                      d: startDraw, r: toggleRef, l: relabel, b: nextBox, "+": () => zoom(1.25), "-": () => zoom(0.8), 0: () => zoom(0),
                      // (the grid's neighbours: a part opened from the audit trail has none)
                      j: () => state.from === "grid" && state.sel < state.items.length - 1 && open(++state.sel),
                      ArrowRight: () => state.from === "grid" && state.sel < state.items.length - 1 && open(++state.sel),
                      k: () => state.from === "grid" && state.sel > 0 && open(--state.sel),
                      ArrowLeft: () => state.from === "grid" && state.sel > 0 && open(--state.sel) }[key];
    if (handled) { e.preventDefault(); handled(); }
    else if (/^[1-9]$/.test(key) && state.classes[+key - 1]) { e.preventDefault(); $("#d-label").value = state.classes[+key - 1]; }
    return;
  }
  if (!$("#audit").hidden) return;
  const handled = { j: () => select(state.sel + 1), ArrowRight: () => select(state.sel + 1), k: () => select(state.sel - 1),
                    ArrowLeft: () => select(state.sel - 1), Enter: () => open(state.sel), " ": () => open(state.sel),
                    C: askConfirmAll, n: () => page(1), p: () => page(-1) }[key];
  if (handled) { e.preventDefault(); handled(); }
});

// on a hub: the fleet's sites, lines and boxes as choices (GET /fleet/v1/boxes); a site,
// line or box of the link or the kept filter the fleet no longer lists (a box retired, a
// site renamed) is said once the list comes (not waited for): its empty list read as an
// idle box (session 50). Its inspections are still listed: the hub keeps its history
async function loadFleet() {
  if (!ON_HUB) return;
  const lists = await fleetLists();
  if (!lists) return;
  addFleetOptions(form, lists);
  const said = notOfFleet(form, fleetSet, lists);
  fleetSet.clear();
  if (!said.length) return;
  sayLinkNote(said.join("; "), $("#queuebar"), lead);
  dismissable(() => $("#filters button[type=submit]"));
}

showZone();
restore();
dismissable(() => $("#filters button[type=submit]")); showQueue();
// (the fleet's list is not waited for: a hub slow to list its boxes, or never answering,
// left the page with no list and no word why; what it says comes when it does. Attack
// pass, session 50)
load(); loadQueues(); loadFleet();
