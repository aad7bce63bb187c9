// Shared by Lineside's pages (ES modules, no build step). Every value from the API
// reaches the page as text: elements are made with createElement / createElementNS and
// strings go in as text nodes, never parsed as markup.
export const $ = (s, root = document) => root.querySelector(s);
export const $$ = (s, root = document) => Array.from(root.querySelectorAll(s));
export const SVG = "http://www.w3.org/2000/svg";
export const CSRF = ($("meta[name=csrf-token]") || { content: "" }).content;

// What the pages keep in their tab (sessionStorage "lineside.*": the review page's filter
// and page, the dashboard's scope) is the signed-in user's: it went on to the next user
// signed in on that tab, their line, part and queue shown as the newcomer's own (a shared
// line PC, session 50). Signing out forgets it; a page signed in as someone else (after a
// session that expired) drops what another kept. The page names its user by a digest
// (meta kept-as); the same user signing in again keeps theirs. What was kept before a
// page named its user is taken as this one's
const KEPT_AS = ($('meta[name="kept-as"]') || { content: "" }).content;
const KEPT_BY = "lineside.kept-as";
const SIGNED_OUT = "-";  // never a digest (hex)
export function forgetKept() {
  try {
    for (const k of Object.keys(sessionStorage)) if (k.startsWith("lineside.")) sessionStorage.removeItem(k);
    // owned by nobody, not unowned: what a load still in flight keeps after this is the
    // signed-out user's, dropped by the next page (unowned state is taken as its user's)
    sessionStorage.setItem(KEPT_BY, SIGNED_OUT);
  } catch { /* storage off: nothing kept */ }
}
try {
  if (KEPT_AS) {
    const by = sessionStorage.getItem(KEPT_BY);
    if (by !== null && by !== KEPT_AS) forgetKept();
    sessionStorage.setItem(KEPT_BY, KEPT_AS);
  }
} catch { /* storage off: nothing kept */ }
for (const f of $$("form.signout")) f.addEventListener("submit", forgetKept);

// el("p", {class: "x"}, "text", child): an element; string children become text nodes
export function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) if (v !== undefined && v !== null) e.setAttribute(k, String(v));
  e.append(...children);
  return e;
}

export function svg(tag, attrs = {}, ...children) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) if (v !== undefined && v !== null) e.setAttribute(k, String(v));
  e.append(...children);
  return e;
}

export class ApiError extends Error {
  constructor(status, code, message) { super(message); this.status = status; this.code = code; }
}

// a call to the API with the session cookie (and its CSRF token for changes); a lost
// session reloads the page, which then asks to sign in
export async function api(path, opts = {}) {
  const r = await fetch(path, { credentials: "same-origin", ...opts,
    headers: { "content-type": "application/json", "x-csrf-token": CSRF, ...(opts.headers || {}) } });
  if (r.status === 401) { location.reload(); throw new ApiError(401, "unauthorized", "signed out"); }
  const doc = await r.json();
  if (!r.ok) throw new ApiError(r.status, doc.error ? doc.error.code : "http_error",
                                doc.error ? doc.error.message : r.statusText);
  return doc;
}

// a form field no longer as the page came with it: set by the user (or the browser) before
// the page's script ran, which a filter from the address or a kept one must not undo
export function changed(f) {
  if (f.tagName !== "SELECT") return f.value !== f.defaultValue;  // (a hidden one: never)
  return f.selectedIndex !== defaultIndex(f);
}
// a select's option as the page came with it (its first where none is marked)
export const defaultIndex = (f) => Math.max(0, Array.from(f.options).findIndex((o) => o.defaultSelected));

// the link note (the server's, over a page: names of its link it did not read; a page
// script's: values it could not take) is about the link's filter: it goes once the filter
// is changed (leaveLink), or with its Dismiss button; it stayed until a reload, about a list
// or figures no longer shown (review page, session 48; the dashboard's, session 49).
// `lead`: whose values it says (the dashboard's scope kept in the tab: not a link's)
export function sayLinkNote(text, before, lead = "This link: ") {
  let note = $("#linknote");
  if (!note) {
    note = el("p", { id: "linknote", class: "linknote", role: "status" }, lead);
    before.before(note);
    note.append(el("span", {}, text + "."));
    return;
  }
  // (said once the page's figures came, a 422 naming a link's value: before its Dismiss)
  const b = $("button", note), said = el("span", {}, text + ".");
  if (b) b.before(said, " "); else note.append(" ", said);
}
export function leaveLink() { const note = $("#linknote"); if (note) note.remove(); }
// its Dismiss button, once: the focus then goes to `next` (never <body>)
export function dismissable(next) {
  const note = $("#linknote");
  if (!note || $("button", note)) return;
  const b = el("button", { type: "button", class: "dismiss" }, "Dismiss");
  b.onclick = () => { leaveLink(); next().focus(); };
  note.append(" ", b);
}

// a value as shown: a control or bidi character as its code (a part id holding U+202E
// read the rest of the note backwards; a link's camera "U+202E1mac" was listed as "cam1",
// its empty figures read as cam1's: attack pass, session 49)
export const coded = (v) => v.replace(/[\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]/g,
                                      (c) => "U+" + c.charCodeAt(0).toString(16).toUpperCase().padStart(4, "0"));
// and as said in a note: its first 60 characters
export const cut = (v) => coded(v.length > 60 ? v.slice(0, 60) + "…" : v);

// On a hub: the sites, lines and boxes the fleet lists now (GET /fleet/v1/boxes), each
// field's values, or null when the list did not come (nothing is then judged by it)
export const FLEET_NAMES = { site: "site", line: "line", box_id: "box" };
export async function fleetLists() {
  let doc;
  try { doc = await api("/fleet/v1/boxes"); } catch { return null; }
  const of = (pick) => [...new Set(doc.boxes.map(pick).filter(Boolean))];
  return { site: of((b) => b.status && b.status.site), line: of((b) => b.status && b.status.line),
           box_id: of((b) => b.box_id) };
}
// a hub's site, line and box selects given the fleet's values (fleetLists) as options
export function addFleetOptions(form, lists) {
  for (const k of Object.keys(FLEET_NAMES)) addOptions(form.elements[k], lists[k].map((v) => [v, v]));
}
// A site, line or box a link or the kept scope names that the fleet no longer lists (a box
// retired, a site renamed): its list or figures, empty or old, read as an idle box's
// (session 50). Said as text, and kept: what the hub still holds for it is shown (a retired
// box's history is reached by no other way: the selects list only what the fleet lists).
// `values`: field -> the value set (and any option added for it). The phrases said
export function notOfFleet(form, values, lists) {
  const said = [];
  for (const [k, { v }] of values) {
    if (!v || !lists || lists[k].includes(v)) continue;
    if (form.elements[k].value !== v) continue;  // changed since (by the user): theirs
    said.push(`${FLEET_NAMES[k]} "${cut(v)}": not a ${FLEET_NAMES[k]} the fleet lists now (retired or renamed?): what the hub still holds for it is shown`);
  }
  return said;
}

// the [value, label] pairs a select lacks, added in order (the dashboard's cameras and
// recipes, a hub's sites, lines and boxes)
export function addOptions(select, pairs) {
  const have = new Set(Array.from(select.options, (o) => o.value));
  for (const [value, label] of pairs) if (!have.has(value)) { select.add(new Option(label, value)); have.add(value); }
}

// times in the browser's zone, which every page names once
export const ZONE = Intl.DateTimeFormat().resolvedOptions().timeZone || "local time";
export function zoneName() {
  const off = -new Date().getTimezoneOffset();
  const hh = String(Math.floor(Math.abs(off) / 60)).padStart(2, "0"), mm = String(Math.abs(off) % 60).padStart(2, "0");
  return `${ZONE} (UTC${off < 0 ? "-" : "+"}${hh}:${mm})`;
}
export function showZone() { for (const z of $$("[data-zone]")) z.textContent = `times in ${zoneName()}`; }
export const time = (iso) => new Date(iso).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
export const dateTime = (iso) => new Date(iso).toLocaleString([], { weekday: "short", day: "numeric", month: "short",
                                                                   hour: "2-digit", minute: "2-digit" });
export const hourLabel = (d) => d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
export const dayLabel = (d) => d.toLocaleDateString([], { weekday: "short", day: "numeric" });

export const num = (n) => Number(n).toLocaleString("en-US");
export const pct = (x, digits = 1) => (x === null || x === undefined ? "n/a" : `${Number(x).toFixed(digits)}%`);
// a yield from its counts, rounded once: the API's yield_pct is rounded to 2 digits, and
// 6 of 13 (46.1538...) showed 46.1% once rounded again (QA review, session 34)
export const yieldPct = (r) => (r && r.inspections ? pct((100 * r.passes) / r.inspections) : "n/a");
// the yield after review (overturned fails pass, escapes fail), said with the fails no
// review has judged yet: "after review 97.0%" of a shift nobody reviewed read as checked
export const reviewedPct = (r) => (r && r.inspections ? pct((100 * r.passes_after_review) / r.inspections) : "n/a");
export const afterReview = (r) => `after review ${reviewedPct(r)} · ${num(r.unreviewed_fails)} ${r.unreviewed_fails === 1 ? "fail" : "fails"} not reviewed`;
export const rate = (r) => (r === null || r === undefined ? "n/a" : `${(r * 100).toFixed(1)}%`);

// pass/fail never by colour alone: a mark and the word
export function verdict(v) {
  return el("span", { class: v === "pass" ? "pass" : "fail" }, v === "pass" ? "✔ PASS" : "✖ FAIL");
}
export const STATE_MARK = { online: "● online", starting: "◌ starting", stale: "▲ stale", offline: "✖ offline", stopped: "■ stopped" };
export const stateClass = (s) => (s === "online" ? "pass" : s === "starting" ? "warn" : "fail");
