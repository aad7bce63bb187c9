"""The JSON the pages read besides the review API (reviewer role): the status overview,
reviews per reviewer, the reviews' audit trail, and the dashboard's figures as CSV."""

from __future__ import annotations

import csv
import io
import logging
import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lineside_inspect.errors import describe_validation
from lineside_inspect.names import PartId
from lineside_inspect.schemas import Outcome
from lineside_inspect.server.deps import Reviewer, RoleFirstRoute, Viewer, get_store
from lineside_inspect.server.query import refuse_unknown
from lineside_inspect.server.responses import (
    CameraHealth,
    ReviewerCounts,
    ReviewLog,
    ReviewLogEntry,
    errors,
    media,
)
from lineside_inspect.store import Store
from lineside_inspect.store import stats as figures
from lineside_inspect.store.utc import UTCTime, as_utc

log = logging.getLogger("lineside")
router = APIRouter(route_class=RoleFirstRoute, prefix="/v1", tags=["review"])
# a site, line or box name (fleet filters on a hub): full-matched, like the names themselves
FleetName = Annotated[str | None, Query(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$", description=(
    "on a hub: only this site's, line's or box's inspections"))]
# one part's inspections (GET /v1/inspections, /v1/stats, /v1/stats.csv): held to what POST
# /v1/inspect keeps as a part id (names.PartId), matched exactly, as stored
PartFilter = Annotated[PartId | None, Query(description=(
    "only this part's inspections: exactly this part id, as sent with the image "
    "(surrounding spaces too: POST /v1/inspect keeps them)"))]

class _Shape(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class YieldFigure(_Shape):
    """Inspections since ``since``, with those retention removed (store/history.py)."""

    since: datetime
    passes: int
    fails: int
    inspections: int
    yield_pct: float | None = Field(description=(
        "the machine's first pass: passes / inspections in %; None when none"))
    passes_after_review: int = Field(description=(
        "passes after review (false rejects overturned, escapes found: GET /v1/stats)"))
    unreviewed_fails: int = Field(description=(
        "fails no review has judged (retention's removed ones as when removed)"))
    reviewed_yield_pct: float | None = Field(description=(
        "passes_after_review / inspections in %; None when none"))


NotJudgedRule = Literal["blank_frame", "reference_mismatch"]


class LastVerdict(_Shape):
    id: str
    created_at: datetime
    verdict: Outcome
    defects: int
    labels: list[str] = Field(description="classes of the counted defects")
    not_judged: NotJudgedRule | None = Field(None, description=(
        "a fail with nothing judged: blank_frame (the frame or golden too flat: a lens cap, "
        "a lamp off) or reference_mismatch (not the golden's view); None otherwise"))


class NotJudgedFigure(_Shape):
    parts: int = Field(description="failed parts")
    last: datetime | None = Field(description="the latest of them")


class NotJudged(_Shape):
    """A station's fails this shift with nothing judged, of the inspections still kept: a
    camera to check, not bad parts. A blank frame counts as blank_frame only."""

    since: datetime
    blank_frame: NotJudgedFigure = Field(description="frame or golden too flat to judge")
    reference_mismatch: NotJudgedFigure = Field(description="not the golden's view")


class Station(_Shape):
    """A camera: what it sees, how it is judged, how its parts fare."""

    camera: CameraHealth
    recipe: str | None = Field(description="the recipe its inspections use")
    model: str | None
    model_version: str | None = Field(description="the version judging its parts now")
    stream: str = Field(description="the live MJPEG view with the last verdict drawn")
    last: LastVerdict | None = Field(description="its latest inspection since the server started")
    shift: YieldFigure | None = Field(description="this shift (None without a store)")
    day: YieldFigure | None = Field(description="the last 24 h (None without a store)")
    not_judged: NotJudged | None = Field(None, description=(
        "this shift's fails with nothing judged (None without a store)"))


class ModelSummary(_Shape):
    name: str
    active: str | None
    versions: list[str]
    described: str = Field(description="the versions as the status page lists them: "
                           "precision, and whether each needs a reference image")


def described_versions(slot: Any) -> str:
    """A model's versions as the status page lists them (its table and its refresh)."""
    return ", ".join(
        f"{v} ({d.card.precision}{', needs a reference' if d.card.needs_reference else ''})"
        for v, d in slot.versions.items())


class RecipeAlarm(_Shape):
    """A recipe whose recent fail rate jumped above the usual one (docs/lifecycle.md, 6)."""

    recipe: str
    judged_by: str
    changed_at: datetime | None = Field(description="when the alarm was raised")
    usual_fail_rate: float | None
    recent_fail_rate: float | None = Field(description="now, over the last recent_inspections")
    recent_inspections: int
    bound: float | None


class PlcStation(_Shape):
    """One station of the PLC handshake (docs/line-integration.md)."""

    id: str
    state: Literal["busy", "result ready", "ready", "not ready"] = Field(
        description="Busy, else ResultReady, else TriggerReady, as the status page says it")
    recipe: str | None = Field(description="the recipe the PLC chose (None: the camera's own)")
    error_code: int = Field(description="the ErrorCode tag in force (0: none)")
    error: str = Field(description="its name")
    failed_parts: int = Field(description="parts that ended without a verdict since start")


class PlcStatus(_Shape):
    protocols: list[str] = Field(description="the protocols served (OPC UA, Modbus TCP)")
    stations: list[PlcStation]


class MqttStatus(_Shape):
    broker: str
    topic: str
    connected: bool
    backlog: int = Field(description="events in the outbox not yet delivered")
    lag_s: float = Field(description="age of the oldest undelivered event")
    delivered: int
    last_error: str | None


class Overview(_Shape):
    """What the status page shows: stations, models, yield, fail-rate alarms, and the
    line's PLC handshake and MQTT events where configured."""

    now: datetime
    ready: bool
    shift_start: datetime
    shift_end: datetime
    shift_starts: list[str]
    shift_timezone: str
    models: list[ModelSummary]
    stations: list[Station]
    shift: YieldFigure | None = Field(description="every inspection this shift, uploads too")
    day: YieldFigure | None = Field(description="every inspection in the last 24 h")
    alarms: list[RecipeAlarm] = Field(description="recipes in fail-rate alarm now")
    plc: PlcStatus | None = Field(description="the PLC handshake; None without one")
    mqtt: MqttStatus | None = Field(description="MQTT event delivery; None without it")


def plc_status(request: Request) -> dict[str, Any] | None:
    """The PLC handshake's state (None when no station is configured). Duck-typed: the
    server does not import the line room."""
    line = getattr(request.app.state, "line_plc", None)
    if line is None or not line.stations:
        return None
    st = line.status()
    return {"protocols": st["protocols"], "stations": [{
        "id": s["id"], "recipe": s["recipe"], "error_code": s["error_code"], "error": s["error"],
        "failed_parts": s["failed_parts"],
        "state": ("busy" if s["busy"] else "result ready" if s["result_ready"]
                  else "ready" if s["trigger_ready"] else "not ready")} for s in st["stations"]]}


def mqtt_status(request: Request) -> dict[str, Any] | None:
    publisher = getattr(request.app.state, "mqtt", None)
    return None if publisher is None else dict(publisher.status())


def shared_box(request: Request) -> str | None:
    """This box's id where its database is shared with other boxes (its figures are its
    own: ``stats.Scope.of``); None on a box of its own (every row is its own) and on a hub
    (whose figures are the fleet's)."""
    store: Store | None = getattr(request.app.state, "store", None)
    if getattr(request.app.state, "hub", None) is not None or store is None \
            or store.own_database:
        return None
    return str(store.box_id)


def shifts_of(request: Request) -> figures.Shifts:
    settings = request.app.state.settings
    return figures.Shifts.configured(settings.shifts, settings.shift_timezone)


def _yield(since: datetime, counts: dict[str, int]) -> dict[str, Any]:
    return {"since": since, **figures.yield_figure(counts)}


def _station_recipe(request: Request, recipe: str | None) -> tuple[str | None, str | None, str | None]:
    """(recipe, model, version now) a camera's inspections get; Nones when it names none."""
    registry = request.app.state.registry
    try:
        rule = registry.recipe(recipe)
    except Exception:  # an unknown recipe: the camera's inspections fail with a 404 themselves
        return recipe, None, None
    slot = registry.models().get(rule.model)
    return rule.name, rule.model, rule.model_version or (slot.active if slot else None)


def overview(request: Request, now: datetime | None = None) -> dict[str, Any]:
    """The status page's figures (also its JSON, ``GET /v1/overview``)."""
    now = now or datetime.now(UTC)
    start, end = shifts_of(request).current(now)
    day_start = now - timedelta(hours=24)
    store: Store | None = request.app.state.store
    zero = figures.ZERO
    manager = request.app.state.cameras
    if store is not None:
        in_shift = store.read(lambda s: figures.yields(s, start, now))
        in_day = store.read(lambda s: figures.yields(s, day_start, now))
        # (for the station cards alone: a hub has none)
        unjudged = store.read(lambda s: figures.not_judged(s, start, now)) \
            if manager is not None else {}
    none = {"parts": 0, "last": None}
    stations = []
    for health in manager.health() if manager is not None else []:
        cid = health["id"]
        recipe, model, version = _station_recipe(request, health.get("recipe"))
        last = manager.last_results.get(cid)
        stations.append({
            "camera": CameraHealth.model_validate(health), "recipe": recipe, "model": model,
            "model_version": version, "stream": f"/v1/cameras/{cid}/stream",
            "last": None if last is None else {
                "id": last.id, "created_at": last.created_at, "verdict": last.verdict,
                "defects": len(last.defects.labels), "labels": sorted(set(last.defects.labels)),
                "not_judged": _not_judged(last.reasons)},
            # this box's camera: with boxes sharing a database, box-a's cam1 card counted
            # box-b's cam1 too, unlike the dashboard's row and /metrics (QA review, session 37)
            "shift": _yield(start, in_shift.get((store.box_id, cid), zero))
            if store is not None else None,
            "day": _yield(day_start, in_day.get((store.box_id, cid), zero))
            if store is not None else None,
            # a capped camera's run of fails read as bad parts (review, session 39)
            "not_judged": {"since": start, **unjudged.get(
                (store.box_id, cid), dict.fromkeys(figures.NOT_JUDGED, none))}
            if store is not None else None})

    here = shared_box(request)

    def total(per: dict[Any, dict[str, int]]) -> dict[str, int]:
        # this box's (and unowned rows'), as its station cards: with boxes sharing a
        # database, the page's yield was every box's beside its own cameras
        return {k: sum(c[k] for (box, _), c in per.items() if here is None or box in (here, None))
                for k in figures.ZERO}

    settings = request.app.state.settings
    return {
        "now": now, "ready": bool(request.app.state.ready), "shift_start": start, "shift_end": end,
        "shift_starts": settings.shifts, "shift_timezone": str(shifts_of(request).zone),
        "models": [{"name": n, "active": slot.active, "versions": list(slot.versions),
                    "described": described_versions(slot)}
                   for n, slot in request.app.state.registry.models().items()],
        "stations": stations,
        "shift": _yield(start, total(in_shift)) if store is not None else None,
        "day": _yield(day_start, total(in_day)) if store is not None else None,
        "alarms": _alarms(request),
        "plc": plc_status(request),
        "mqtt": mqtt_status(request),
    }


def _not_judged(reasons: list[Any]) -> str | None:
    """The rule of a fail with nothing judged, blank before mismatch (a blank frame matches
    no golden: the blank is its cause), as the line's BlankFrame and WrongView say it."""
    rules = {r.rule for r in reasons}
    return next((r for r in figures.NOT_JUDGED if r in rules), None)


def _alarms(request: Request) -> list[dict[str, Any]]:
    """The recipes in fail-rate alarm (none where the lifecycle's alarm is off)."""
    alarm = getattr(getattr(request.app.state, "lifecycle", None), "alarm", None)
    if alarm is None:
        return []
    keep = ("recipe", "judged_by", "changed_at", "usual_fail_rate", "recent_fail_rate",
            "recent_inspections", "bound")
    return [{k: t[k] for k in keep} for t in alarm.raised()]


@router.get("/overview", responses=errors(401, 403))
def get_overview(request: Request, who: Viewer) -> Overview:
    """The status page's figures: each camera's state, recipe, model, last verdict and
    yield this shift and over 24 h; the models; the box's yield."""
    return Overview.model_validate(overview(request))


@router.get("/reviewers", responses=errors(401, 403, 404, 422))
def reviewer_counts(request: Request, who: Reviewer,
                    since: Annotated[UTCTime | None, Query(description=(
                        "ISO time; without an offset: UTC; default: the current shift's start"))] = None,
                    site: FleetName = None, line: FleetName = None, box_id: FleetName = None,
                    ) -> ReviewerCounts:
    """Reviews per reviewer and action since the current shift started (or ``since``): on
    a box sharing its database with others, those made on this box; on a hub (every box's),
    each entry names the box it was made on. ``site``, ``line``, ``box_id``: of those
    inspections only, as the dashboard's tally (the hub's review page counted every box's
    beside a list of the box chosen)."""
    now = datetime.now(UTC)
    start = as_utc(since) if since is not None else shifts_of(request).current(now)[0]
    conds = figures.Scope.of(site=site, line=line, box_id=box_id,
                             here=shared_box(request)).reviews
    counts = get_store(request).read(lambda s: figures.reviewers(s, start, now, conds))
    return ReviewerCounts.model_validate({"since": start, "reviewers": counts})


@router.get("/reviews", responses=errors(401, 403, 404, 422))
def review_log(request: Request, who: Reviewer,
               reviewer: Annotated[str | None, Query(max_length=128)] = None,
               inspection_id: Annotated[str | None, Query(max_length=64)] = None,
               limit: Annotated[int, Query(ge=1, le=500)] = 50,
               offset: Annotated[int, Query(ge=0, le=10**9)] = 0) -> ReviewLog:
    """Every review, newest first: who did what to which inspection, and when."""
    total, items = get_store(request).read(lambda s: figures.review_log(
        s, limit=limit, offset=offset, reviewer=reviewer, inspection_id=inspection_id))
    entries: list[ReviewLogEntry] = []
    for item in items:
        # a stored review that does not read as one (a time, boxes or action a hand edit
        # or another writer left) is left out, counted and logged: the whole log was a 500
        try:
            entries.append(ReviewLogEntry.model_validate(item))
        except ValidationError as exc:
            log.warning("reviews: review %s left out of the log, its stored fields do not read "
                        "as a review: %s", item["id"], describe_validation(exc.errors()))
    return ReviewLog(total=total, limit=limit, offset=offset, items=entries,
                     left_out=len(items) - len(entries))


def _cell(value: Any) -> Any:
    """A CSV cell that a spreadsheet will not run: text starting like a formula is quoted
    (camera ids and class names come from callers), as OWASP's CSV injection advice says:
    a tab or CR first, or ``=``, ``+``, ``-``, ``@`` first after any spaces (a spreadsheet
    skips them: " =1+1" is a formula too). Numbers stay numbers, negative ones too."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, str):
        # a spreadsheet of a locale whose list separator is ';' splits the cell there:
        # each part is quoted as a cell of its own would be ("x;=HYPERLINK(...)")
        value = re.sub(r";([ \t\r]*[=+\-@\t\r])", r";'\1", value)
        if value[:1] in ("\t", "\r") or value.lstrip()[:1] in ("=", "+", "-", "@"):
            return "'" + value
    return "" if value is None else value


FLEET_SCOPE = ("site", "line", "box_id")


def csv_rows(doc: dict[str, Any], table: str,
             fleet: dict[str, str | None] | None = None) -> list[list[Any]]:
    """One of the dashboard's tables, header first, as the dashboard shows it. ``fleet``
    (a hub's: its site, line and box_id filters) adds them to the scope of each row, and
    the box to each camera's and model change's: a hub's file for box-b said "(all)" and
    read as the whole fleet's, and cam1 of two boxes as one camera."""
    scope = [doc["camera_id"] if doc["camera_id"] is not None else "(all)", doc["recipe"] or "(all)"]
    head = ["camera_id", "recipe"]
    if doc.get("part_id"):  # one part's figures: its rows say so (they read as the line's)
        scope, head = [*scope, doc["part_id"]], [*head, "part_id"]
    if fleet is not None:
        scope = [fleet.get(k) or "(all)" for k in FLEET_SCOPE] + scope
        head = [*FLEET_SCOPE, *head]
    box_head = ["box_id"] if fleet is not None else []

    def box(r: dict[str, Any]) -> list[Any]:
        return [r.get("box_id")] if fleet is not None else []

    # (the after-review columns last: a script reading the columns by position reads on)
    figure = ["passes", "fails", "inspections", "yield_pct", "passes_after_review",
              "unreviewed_fails", "reviewed_yield_pct"]
    if table in ("hourly", "shifts"):
        return [["start_utc", "end_utc", *head, *figure]] + [
            [r["start"], r["end"], *scope, *(r[k] for k in figure)] for r in doc[table]]
    if table == "pareto":
        return [["class", "parts", "cumulative_pct"]] + [
            [r["label"], r["parts"], r["cumulative_pct"]] for r in doc["pareto"]]
    if table == "stations":
        return [[*box_head, "camera_id", "recipe", *figure]] + [
            [*box(r), r["camera_id"] if r["camera_id"] is not None else "(upload)", r["recipe"],
             *(r[k] for k in figure)] for r in doc["stations"]]
    if table == "quality":
        q = doc["quality"]
        return [["measure", "count", "of_reviewed", "rate_pct"],
                ["false_rejects", q["false_rejects"], q["reviewed_fails"],
                 None if q["false_reject_rate"] is None else round(100 * q["false_reject_rate"], 2)],
                ["escapes", q["escapes"], q["reviewed_passes"],
                 None if q["escape_rate"] is None else round(100 * q["escape_rate"], 2)]]
    if table == "versions":
        # a row names its own box and recipe: the scope's of those names are left out (the
        # rows are of that box and recipe already), else a header naming "recipe" twice
        # read "(all)" as each row's recipe in a script keying columns by name
        own = {"box_id", "recipe"}
        kept = [i for i, h in enumerate(head) if h not in own]
        return [[*box_head, "model", "recipe", "version", "first_utc", "last_utc",
                 *(head[i] for i in kept), *figure]] + [
            [*box(r), r["model"], r["recipe"], r["version"], r["first"], r["last"],
             *(scope[i] for i in kept), *(r[k] for k in figure)] for r in doc["versions"]]
    if table == "reviewers":
        actions = sorted({a for r in doc["reviewers"] for a in r["actions"]})
        return [["reviewer", "reviews", *actions]] + [
            [r["reviewer"], r["reviews"], *(r["actions"].get(a, 0) for a in actions)]
            for r in doc["reviewers"]]
    return [["at_utc", *box_head, "model", "recipe", "version", "previous"]] + [
        [r["at"], *box(r), r["model"], r["recipe"], r["version"], r["previous"]]
        for r in doc["model_changes"]]


@router.get("/stats.csv", response_class=Response, responses={
    **media("one table of the dashboard as CSV (UTC times)", "text/csv"),
    **errors(401, 403, 404, 422)})
def stats_csv(request: Request, who: Viewer,
              table: Literal["hourly", "shifts", "pareto", "stations", "quality", "reviewers",
                             "model_changes", "versions"] = "hourly",
              hours: Annotated[int, Query(ge=1, le=24 * 90)] = 24,
              camera_id: Annotated[str | None, Query(max_length=128)] = None,
              recipe: Annotated[str | None, Query(max_length=128)] = None,
              part_id: PartFilter = None,
              site: FleetName = None, line: FleetName = None, box_id: FleetName = None) -> Response:
    """The numbers of one dashboard table, with the parameters of ``GET /v1/stats``:
    hourly, shifts and stations include the inspections retention removed; pareto,
    quality, reviewers and model_changes count the inspections still kept. A parameter
    it does not take is a 422 naming it, as on ``GET /v1/stats``."""
    refuse_unknown(request, stats_csv, "/v1/stats.csv")
    store = get_store(request)
    here = shared_box(request)
    doc = store.stats(hours, camera_id=camera_id, recipe=recipe, part_id=part_id, site=site,
                      line=line, box_id=box_id, shifts=shifts_of(request), here=here is not None)
    # on a hub its fleet filters are the file's scope, in its rows and its name (names
    # full-matched by FleetName: nothing to quote); so on a box sharing its database with
    # others, whose figures hold theirs: its file named no box, and read as this box's,
    # with cam1 of two boxes as one camera (as the dashboard names them)
    fleet = ({"site": site, "line": line, "box_id": box_id or here}
             if getattr(request.app.state, "hub", None) is not None or not store.own_database
             else None)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    for row in csv_rows(doc, table, fleet):
        writer.writerow([_cell(v) for v in row])
    named = "".join(f"-{k.removesuffix('_id')}-{v}" for k, v in (fleet or {}).items() if v)
    name = f"lineside-{table}-{hours}h{named}.csv"
    return Response(out.getvalue(), media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})
