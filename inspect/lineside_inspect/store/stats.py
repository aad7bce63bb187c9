"""The dashboard's figures, counted by the database: yield per hour and per shift, the
defect Pareto, model-version changes, escape and false-reject rates among reviewed
inspections, reviews per reviewer, and the review audit log.

Counting is done in SQL (GROUP BY, a window function for version changes), so a day of a
busy line costs a few grouped rows, not every inspection in Python. Times are UTC;
shifts are wall-clock start times in a zone (:class:`Shifts`), turned into UTC
boundaries here, daylight saving included.

The yield figures (hourly, per shift, per station, the status page's ``yields``) add the
passes and fails of the inspections retention removed (``store/history.py``), so a
window's yield stays what the line made; the Pareto, model changes and review figures
need the rows, and count only those still kept.

Each yield figure is the machine's first pass (``yield_pct``) beside the yield after
review (``reviewed_yield_pct``): a fail a reviewer overturned (a false reject) counts as a
pass, a pass a reviewer drew a missed defect on (an escape) as a fail, by
``models.reviewed_verdict``'s rule; an inspection nobody reviewed keeps its machine
verdict, and ``unreviewed_fails`` says how many fails that is, so a figure of a shift
nobody has reviewed yet is not read as a reviewed one. Retention counts the verdict after
review of each inspection it removes beside its machine verdict (``store/history.py``),
so a window's yield after review stays what it was, as its first pass does; those an
earlier release removed count at their machine verdict, their fails as unreviewed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from itertools import pairwise
from typing import Any
from zoneinfo import ZoneInfo

import tzlocal
from sqlalchemy import (
    ColumnElement,
    and_,
    case,
    exists,
    false,
    func,
    literal,
    literal_column,
    null,
    or_,
    select,
)
from sqlalchemy.orm import Session

from lineside_inspect.store.models import HUB_BOX_ID, InspectionRow, ReviewRow, YieldHistoryRow
from lineside_inspect.store.utc import as_utc

MAX_MARKERS = 200  # model-version changes listed per window (a flapping pin is not a chart)


@dataclass(frozen=True)
class Shifts:
    """Shift start times ("HH:MM") in ``zone``; a shift lasts until the next one starts."""

    starts: tuple[str, ...]
    zone: tzinfo

    @classmethod
    def configured(cls, starts: Sequence[str], zone: str | None) -> Shifts:
        """The settings' ``shifts`` in ``shift_timezone``, by default the box's own zone."""
        return cls(tuple(starts), ZoneInfo(zone) if zone else tzlocal.get_localzone())

    def _local_starts(self, day: date) -> list[datetime]:
        return [datetime.combine(day, time(int(s[:2]), int(s[3:])), self.zone) for s in self.starts]

    def boundaries(self, since: datetime, until: datetime) -> list[datetime]:
        """UTC shift starts from the last one at or before ``since`` to the first one after
        ``until`` (so consecutive pairs are whole shifts covering the window)."""
        since, until = as_utc(since), as_utc(until)
        day = since.astimezone(self.zone).date() - timedelta(days=1)
        last = until.astimezone(self.zone).date() + timedelta(days=1)
        found: list[datetime] = []
        while day <= last:
            found += [t.astimezone(UTC) for t in self._local_starts(day)]
            day += timedelta(days=1)
        found = sorted(set(found))
        first = max(i for i, t in enumerate(found) if t <= since)
        end = min(i for i, t in enumerate(found) if t > until)
        return found[first:end + 1]

    def current(self, now: datetime) -> tuple[datetime, datetime]:
        """The shift ``now`` is in: (start, end) in UTC."""
        b = self.boundaries(now, now)
        return b[0], b[1]


def _filters(camera_id: str | None, recipe: str | None, site: str | None = None,
             line: str | None = None, box_id: str | None = None,
             table: type[InspectionRow] | type[YieldHistoryRow] = InspectionRow,
             ) -> list[ColumnElement[bool]]:
    """The scope's conditions on the rows, or on the history of removed ones (``table``)."""
    conds: list[ColumnElement[bool]] = []
    if camera_id is not None:  # "" means inspections sent to /v1/inspect without a camera
        conds.append(table.camera_id == camera_id if camera_id or table is YieldHistoryRow
                     else table.camera_id.is_(None))  # (the history keeps none as "")
    if recipe:
        conds.append(table.recipe_name == recipe)
    for column, value in ((table.site, site), (table.line, line),
                          (table.box_id, box_id)):  # a hub's fleet filters
        if value:
            conds.append(column == value)
    return conds


def review_box() -> ColumnElement[str | None]:
    """The box a review was made on: its own ``box_id``, else (a review from before the
    column, or merged from elsewhere) its inspection's box."""
    return func.coalesce(ReviewRow.box_id, InspectionRow.box_id)


def made_on(box_id: str) -> ColumnElement[bool]:
    """Reviews made on box ``box_id``, the old ones of an inspection no box owns, and the
    hub's of box ``box_id``'s inspections (the box took them down: ``HUB_BOX_ID``)."""
    return or_(review_box() == box_id, review_box().is_(None),
               and_(ReviewRow.box_id == HUB_BOX_ID, InspectionRow.box_id == box_id))


def of_box(box_id: str) -> ColumnElement[bool]:
    """Box ``box_id``'s inspections, and those no box owns (rows from before box ids that
    no box adopted: store/models.py): every box counts them, as every box lists them.
    One coalesce, not ``box_id = x OR box_id IS NULL``: SQLite took the OR through the
    box_id index, reading every row the box ever made for a day's figures (5x the time on
    200k rows over 60 days, review session 39), where the created_at range reads the window's."""
    return func.coalesce(InspectionRow.box_id, box_id) == box_id


@dataclass(frozen=True)
class Scope:
    """What the figures are narrowed to: conditions on the rows (``rows``), on the
    history of the rows retention removed (``removed``, ``store/history.py``) and on the
    reviews the tally counts (``reviews``, with ``rows``' conditions but the box)."""

    rows: list[ColumnElement[bool]]
    removed: list[ColumnElement[bool]]
    reviews: list[ColumnElement[bool]] = field(default_factory=list)

    @classmethod
    def of(cls, camera_id: str | None = None, recipe: str | None = None,
           site: str | None = None, line: str | None = None,
           box_id: str | None = None, here: str | None = None,
           part_id: str | None = None) -> Scope:
        """``here``: on a box sharing its database with others, the box: every figure is
        its own (its inspections, the reviews made on it), as its status page, /metrics and
        lifecycle are; the dashboard's totals were every box's beside its own stations.
        An explicit ``box_id`` asks for that box's instead. ``part_id``: exactly this
        part's inspections, the kept ones: the history of removed ones has no part ids
        (its quarter-hour counts are every part's), so it adds nothing to a part's figures."""
        rows = _filters(camera_id, recipe, site, line, box_id)
        removed = _filters(camera_id, recipe, site, line, box_id, YieldHistoryRow)
        if part_id:  # ("" is no filter, as GET /v1/inspections has it: an empty form field)
            rows = [*rows, InspectionRow.part_id == part_id]
            removed = [*removed, false()]
        reviews = list(rows)
        if here and not box_id:
            rows, reviews = [*rows, of_box(here)], [*reviews, made_on(here)]
            removed = [*removed, YieldHistoryRow.box_id.in_((here, ""))]
        return cls(rows, removed, reviews)


def _none(key: str) -> str | None:
    """A history key's value as the rows have it ("" is none there)."""
    return key or None


def _removed(s: Session, since: datetime, until: datetime, scope: Scope,
             *keys: Any) -> list[Any]:
    """(keys..., verdict, n, of them counted after review, passes after review,
    unreviewed fails) of the removed inspections made in quarter hours starting in the
    window: a removed inspection counts as made at its quarter hour's start."""
    h = YieldHistoryRow
    return list(s.execute(select(*keys, h.verdict, func.sum(h.inspections),
                                 *(func.sum(func.coalesce(c, 0)) for c in (
                                     h.after_counted, h.passes_after_review, h.unreviewed_fails)))
                          .where(h.hour >= since, h.hour < until, *scope.removed)
                          .group_by(*keys, h.verdict)).all())


def _hour_key(dialect: str) -> Any:
    """SQL for the UTC hour of ``created_at`` as 'YYYY-MM-DD HH:00'."""
    if dialect == "postgresql":
        return func.to_char(func.date_trunc("hour", func.timezone("UTC", InspectionRow.created_at)),
                            "YYYY-MM-DD HH24:00")
    # SQLite keeps the UTC wall time as text (store/utc.py)
    return func.strftime("%Y-%m-%d %H:00", InspectionRow.created_at)


ZERO = {"pass": 0, "fail": 0, "pass_after": 0, "unreviewed_fail": 0}


def _counts(kept: Sequence[Any], removed: Sequence[Any] = ()) -> dict[Any, dict[str, int]]:
    """(key, passes, fails, passes after review, unreviewed fails) rows of the kept
    inspections (:func:`_tallied`) and (key, verdict, n, counted, passes after review,
    unreviewed fails) rows of the removed ones (:func:`_removed`) -> {key: counts}. Of
    the removed, those whose verdict after review was not counted (by a release before
    it, or after a downgrade: models.YieldHistoryRow) read at their machine verdict, a
    fail unreviewed."""
    out: dict[Any, dict[str, int]] = {}
    for key, passes, fails, after, unreviewed in kept:
        c = out.setdefault(key, dict(ZERO))
        c["pass"] += passes
        c["fail"] += fails
        c["pass_after"] += after
        c["unreviewed_fail"] += unreviewed
    for key, verdict, n, counted, after, unreviewed in removed:
        if verdict not in ("pass", "fail"):
            continue  # (a row of neither, hand-edited: in no count, as a kept one)
        c = out.setdefault(key, dict(ZERO))
        c[verdict] += n
        c["pass_after"] += after
        c["unreviewed_fail"] += unreviewed
        c["pass_after" if verdict == "pass" else "unreviewed_fail"] += max(0, n - counted)
    return out


def yield_figure(c: dict[str, int]) -> dict[str, Any]:
    """Counts -> the figure's numbers: first pass and after review (module docstring)."""
    total = c["pass"] + c["fail"]
    return {"passes": c["pass"], "fails": c["fail"], "inspections": total,
            "yield_pct": round(100 * c["pass"] / total, 2) if total else None,
            "passes_after_review": c["pass_after"], "unreviewed_fails": c["unreviewed_fail"],
            "reviewed_yield_pct": round(100 * c["pass_after"] / total, 2) if total else None}


def _figure(start: datetime, end: datetime, c: dict[str, int]) -> dict[str, Any]:
    return {"start": start, "end": end, **yield_figure(c)}


def _review_rule(final: Any) -> tuple[ColumnElement[bool], ColumnElement[bool]]:
    """models.reviewed_verdict's rule in SQL, of an inspection whose current review is the
    row ``final`` (an alias of the reviews; its boxes a list: ``is_list`` first): (a fail
    it overturns, a false reject: no box left, unless its last review confirmed it and
    nobody called it one; a pass it fails, an escape: a missed defect drawn, boxes left).
    One rule for the review figures (:func:`review_quality`) and each inspection's
    verdict after review (:func:`after_review`)."""
    boxless = func.json_array_length(final.c.boxes) == 0
    flagged = exists().where(ReviewRow.inspection_id == InspectionRow.id,
                             ReviewRow.action == "false_reject").correlate(InspectionRow)
    missed = exists().where(ReviewRow.inspection_id == InspectionRow.id,
                            ReviewRow.action == "missed_defect").correlate(InspectionRow)
    return and_(boxless, or_(final.c.action != "confirm", flagged)), and_(missed, ~boxless)


def after_review(dialect: str) -> Any:
    """Each inspection's verdict after review, 'pass' or 'fail', by models.reviewed_verdict's
    rule (as :func:`review_quality` counts it), read from its current review (the last in
    the merge rule's order, models.REVIEW_ORDER); NULL when it has none, or when that
    review's boxes are not a list (counts as nothing, ``is_list``). A correlated subquery,
    not a join: the window's inspections look theirs up by the inspection_id index, and
    SQLite still reads the window by created_at (joined, it took the stations' GROUP BY
    through the box_id index, every row ever kept: test_store_boxes)."""
    final = ReviewRow.__table__.alias("final")
    overturned, escaped = _review_rule(final)
    judged = case((InspectionRow.verdict == "fail", case((overturned, "pass"), else_="fail")),
                  else_=case((escaped, "fail"), else_="pass"))
    # the rule asks boxless only of a list (json_array_length of other text fails): in the CASE
    current = (select(case((is_list(dialect, final.c.boxes), judged)))
               .where(final.c.inspection_id == InspectionRow.id)
               .order_by(final.c.created_at.desc(), final.c.origin.desc().nulls_last(),
                         final.c.id.desc())
               .limit(1).correlate(InspectionRow).scalar_subquery())
    # asked only of a reviewed inspection (every review sets review_state, the store's and
    # the fleet merge's): most are not, and the lookup per row made the figures 1.6x slower
    return case((InspectionRow.review_state == "unreviewed", null()), else_=current)


def _tallied(s: Session, *keys: Any) -> Any:
    """SELECT keys..., passes, fails, passes after review, unreviewed fails FROM the
    inspections, to be narrowed and grouped by ``keys``; an inspection no review judged
    keeps its machine verdict (:func:`after_review`)."""
    after = after_review(s.get_bind().dialect.name)
    fail, passed = InspectionRow.verdict == "fail", InspectionRow.verdict == "pass"
    return select(*keys, func.count().filter(passed), func.count().filter(fail),
                  # (of a pass or a fail: a row of neither, hand-edited, is in no count)
                  func.count().filter(or_(passed, fail),
                                      func.coalesce(after, InspectionRow.verdict) == "pass"),
                  func.count().filter(fail, after.is_(None)))


def hourly(s: Session, since: datetime, until: datetime, scope: Scope) -> list[dict[str, Any]]:
    """Passes and fails per UTC hour, every hour of the window (empty ones as zeros), the
    removed inspections' too. The first row starts at ``since``, not on its hour: it
    counts from there, and a row named 13:00-14:00 that counted from 13:27 read as a slow
    first hour (QA review, session 37)."""
    key = _hour_key(s.get_bind().dialect.name).label("hour")
    got = _counts(s.execute(_tallied(s, key)
                            .where(InspectionRow.created_at >= since,
                                   InspectionRow.created_at < until, *scope.rows)
                            .group_by(key)).all(),
                  [(as_utc(hour).strftime("%Y-%m-%d %H:00"), *c) for hour, *c in
                   _removed(s, since, until, scope, YieldHistoryRow.hour)])
    out = []
    hour = since.replace(minute=0, second=0, microsecond=0)
    while hour < until:
        c = got.get(hour.strftime("%Y-%m-%d %H:00"), ZERO)
        out.append(_figure(max(hour, since), hour + timedelta(hours=1), c))
        hour += timedelta(hours=1)
    return out


def per_shift(s: Session, boundaries: list[datetime], scope: Scope) -> list[dict[str, Any]]:
    """Passes and fails per shift between consecutive ``boundaries`` (a CASE over the
    boundaries: shifts need not be whole hours nor equally long), the removed
    inspections' too (in the shift their quarter hour starts in)."""
    if len(boundaries) < 2:
        return []

    def index(at: Any) -> Any:
        return case(*[(at < b, i) for i, b in enumerate(boundaries[1:])],
                    else_=len(boundaries)).label("shift")

    at = index(InspectionRow.created_at)  # (one object: PostgreSQL groups by its SQL)
    got = _counts(s.execute(_tallied(s, at)
                            .where(InspectionRow.created_at >= boundaries[0],
                                   InspectionRow.created_at < boundaries[-1], *scope.rows)
                            .group_by(at)).all(),
                  _removed(s, boundaries[0], boundaries[-1], scope, index(YieldHistoryRow.hour)))
    return [_figure(a, b, got.get(i, ZERO))
            for i, (a, b) in enumerate(pairwise(boundaries))]


def pareto(s: Session, since: datetime, until: datetime,
           conds: list[ColumnElement[bool]]) -> list[dict[str, Any]]:
    """Inspections with a counted defect of each class, most first; ``cumulative_pct`` of
    all class occurrences (a part with two classes counts once for each)."""
    per: dict[str, int] = {}
    for labels, n in s.execute(select(InspectionRow.labels, func.count())
                               .where(InspectionRow.created_at >= since,
                                      InspectionRow.created_at < until, InspectionRow.labels != "",
                                      *conds)
                               .group_by(InspectionRow.labels)).all():
        for label in filter(None, (labels or "").split(",")):
            per[label] = per.get(label, 0) + n
    total, running, out = sum(per.values()), 0, []
    for label, n in sorted(per.items(), key=lambda kv: (-kv[1], kv[0])):
        running += n
        out.append({"label": label, "parts": n, "cumulative_pct": round(100 * running / total, 2)})
    return out


def stations(s: Session, since: datetime, until: datetime, scope: Scope) -> list[dict[str, Any]]:
    """Passes and fails per camera and recipe (camera None: sent to /v1/inspect), of each
    box, the removed inspections' too: on a hub, box-a's cam1 and box-b's cam1 are two
    stations (one row, they read as one camera at 50 % whose two lines were at 0 and 100 %)."""
    place = (InspectionRow.box_id, InspectionRow.camera_id, InspectionRow.recipe_name)
    got = _counts([((box, cam, rec), *c) for box, cam, rec, *c in s.execute(
        _tallied(s, *place)
        .where(InspectionRow.created_at >= since, InspectionRow.created_at < until, *scope.rows)
        .group_by(*place))], [
        ((_none(box), _none(cam), rec), *c) for box, cam, rec, *c in _removed(
            s, since, until, scope, YieldHistoryRow.box_id, YieldHistoryRow.camera_id,
            YieldHistoryRow.recipe_name)])
    out = []
    for (box, cam, rec), c in sorted(got.items(),
                                     key=lambda kv: (kv[0][1] or "", kv[0][2], kv[0][0] or "")):
        out.append({"camera_id": cam, "recipe": rec, "box_id": box, **yield_figure(c)})
    return out


def model_changes(s: Session, since: datetime, until: datetime,
                  conds: list[ColumnElement[bool]]) -> tuple[list[dict[str, Any]], bool]:
    """Where each box's (model, recipe) pair's version changes in the window, oldest
    first, and whether the list was cut at :data:`MAX_MARKERS` (the changes kept before
    the versions in use as the window opens). ``previous`` None: the version in use when
    the window opens (its first inspection in the window). Per box: on a hub two boxes
    mid-rollout (one on v1, one on v2) read as the model flipping 1 -> 2 -> 1 at every
    alternation of their inspections."""
    prev = func.lag(InspectionRow.model_version).over(
        partition_by=(InspectionRow.box_id, InspectionRow.model_name, InspectionRow.recipe_name),
        order_by=(InspectionRow.created_at, InspectionRow.id)).label("previous")
    sub = (select(InspectionRow.created_at, InspectionRow.model_name, InspectionRow.recipe_name,
                  InspectionRow.model_version, prev, InspectionRow.box_id)
           .where(InspectionRow.created_at >= since, InspectionRow.created_at < until, *conds)
           .subquery())
    rows = s.execute(select(sub).where(or_(sub.c.previous.is_(None),
                                           sub.c.previous != sub.c.model_version))
                     .order_by(sub.c.previous.is_(None), sub.c.created_at)
                     .limit(MAX_MARKERS + 1)).all()
    # a row whose stored time does not read as one (SQLite keeps any text; store/utc.py)
    # marks no change: its as_utc was the dashboard's 500 (review, session 40)
    out = [{"at": as_utc(at), "model": model, "recipe": recipe, "version": version,
            "previous": previous, "box_id": box}
           for at, model, recipe, version, previous, box in rows if isinstance(at, datetime)]
    return sorted(out[:MAX_MARKERS], key=lambda c: c["at"]), len(out) > MAX_MARKERS


def versions(s: Session, since: datetime, until: datetime,
             conds: list[ColumnElement[bool]]) -> list[dict[str, Any]]:
    """Passes and fails, first pass and after review, per box, model, recipe and model
    version in the window, with each version's first and last inspection in it: a
    promotion's effect, the old version beside the new. Of the kept inspections only
    (retention's history keeps no versions), so they need not add up to the hourly figures."""
    key = (InspectionRow.box_id, InspectionRow.model_name, InspectionRow.recipe_name,
           InspectionRow.model_version)
    rows = s.execute(_tallied(s, *key, func.min(InspectionRow.created_at),
                              func.max(InspectionRow.created_at))
                     .where(InspectionRow.created_at >= since, InspectionRow.created_at < until,
                            *conds)
                     .group_by(*key)).all()
    out = [{"box_id": box, "model": model, "recipe": recipe, "version": version,
            "first": _time(first), "last": _time(last_at),
            **yield_figure(dict(zip(ZERO, c, strict=True)))}
           for box, model, recipe, version, first, last_at, *c in rows]
    # (a first that does not read as a time, SQLite keeping any text: last, not a 500)
    return sorted(out, key=lambda v: (v["model"], v["recipe"], v["box_id"] or "",
                                      v["first"] is None, v["first"] or since))


def review_quality(s: Session, since: datetime | None, until: datetime | None,
                   conds: list[ColumnElement[bool]]) -> dict[str, Any]:
    """Among reviewed inspections of the window (None: unbounded): false rejects (a fail
    whose reviewed truth has no defect, unless its last review confirmed it) and escapes
    (a pass a reviewer drew a missed defect on, still defective after the last review)."""
    conds = [*conds, *([] if since is None else [InspectionRow.created_at >= since]),
             *([] if until is None else [InspectionRow.created_at < until])]
    # each inspection's current review: the last in the merge rule's order (models.REVIEW_ORDER)
    rank = func.row_number().over(partition_by=ReviewRow.inspection_id, order_by=(
        ReviewRow.created_at.desc(), ReviewRow.origin.desc().nulls_last(), ReviewRow.id.desc())
    ).label("rank")
    ranked = select(ReviewRow.inspection_id, ReviewRow.id.label("rid"), rank).subquery()
    last = select(ranked.c.inspection_id, ranked.c.rid).where(ranked.c.rank == 1).subquery()
    final = ReviewRow.__table__.alias("final")
    overturned, escaped = _review_rule(final)
    fail, passed = InspectionRow.verdict == "fail", InspectionRow.verdict == "pass"
    # an inspection whose current review's boxes are not a list (a hand-edited row, a
    # foreign writer: SQLite keeps any text) counts as nothing: json_array_length of text
    # that is not JSON failed in SQLite, of an object in PostgreSQL, and the dashboard
    # was a 500 (review, session 40)
    listed = is_list(s.get_bind().dialect.name, final.c.boxes)
    # models.reviewed_verdict's rule: a fail confirmed with no box (a frame not of the
    # golden's view, an anomaly with no region), never called a false reject, is a fail
    # the reviewer agreed with (QA review, session 34). Counted by the database: the
    # all-time figures (legacy) read every reviewed inspection
    n_fails, false_rejects, n_passes, escapes = s.execute(
        select(func.count().filter(fail),
               func.count().filter(fail, overturned),
               func.count().filter(passed),
               func.count().filter(passed, escaped))
        .select_from(InspectionRow)
        .join(last, last.c.inspection_id == InspectionRow.id)
        .join(final, final.c.id == last.c.rid)
        .where(*conds, listed)).one()
    return {"reviewed_fails": n_fails, "false_rejects": false_rejects,
            "false_reject_rate": false_rejects / n_fails if n_fails else None,
            "reviewed_passes": n_passes, "escapes": escapes,
            "escape_rate": escapes / n_passes if n_passes else None}


def reviewers(s: Session, since: datetime, until: datetime,
              conds: list[ColumnElement[bool]]) -> list[dict[str, Any]]:
    """Reviews made in the window per reviewer, the box they were made on
    (:func:`review_box`) and action, busiest first: qa of box a and qa of box b are two
    reviewers (boxes sharing a database, a hub)."""
    per: dict[tuple[str, str | None], dict[str, int]] = {}
    box = review_box().label("box")
    for who, where, action, n in s.execute(
            select(ReviewRow.reviewer, box, ReviewRow.action, func.count())
            .join(InspectionRow, InspectionRow.id == ReviewRow.inspection_id)
            .where(ReviewRow.created_at >= since, ReviewRow.created_at < until, *conds)
            .group_by(ReviewRow.reviewer, box, ReviewRow.action)).all():
        per.setdefault((who, where), {})[action] = n
    return sorted(({"reviewer": who, "box_id": where, "reviews": sum(c.values()), "actions": c}
                   for (who, where), c in per.items()),
                  key=lambda r: (-r["reviews"], r["reviewer"], r["box_id"] or ""))


def yields(s: Session, since: datetime, until: datetime,
           ) -> dict[tuple[str | None, str | None], dict[str, int]]:
    """Passes and fails (first pass and after review) per box and camera (None: sent to
    /v1/inspect) in the window, the removed inspections' too."""
    return _counts([((box, cam), *c) for box, cam, *c in s.execute(
        _tallied(s, InspectionRow.box_id, InspectionRow.camera_id)
        .where(InspectionRow.created_at >= since, InspectionRow.created_at < until)
        .group_by(InspectionRow.box_id, InspectionRow.camera_id))], [
        ((_none(box), _none(cam)), *c) for box, cam, *c in _removed(
            s, since, until, Scope([], []), YieldHistoryRow.box_id, YieldHistoryRow.camera_id)])


NOT_JUDGED = ("blank_frame", "reference_mismatch")  # fails with nothing judged: a camera to check


def is_list(dialect: str, column: Any) -> ColumnElement[bool]:
    """Whether the stored JSON of ``column`` is a list, by the database's JSON functions:
    false (never an error) for text that is not JSON (SQLite) or JSON of another type."""
    if dialect == "postgresql":
        return func.json_typeof(column) == "array"
    # json_type fails on text that is not JSON: asked only of valid JSON (a CASE is lazy)
    return case((func.json_valid(column) == 1, func.json_type(column))) == "array"


def _has_rule(dialect: str, rule: str) -> ColumnElement[bool]:
    """An inspection row one of whose reasons is ``rule``, by the database's JSON functions.
    A stored ``reasons`` that is not a list of objects (a hand-edited row, a damaged
    database) has none, rather than an error that breaks the status page."""
    reasons = InspectionRow.reasons
    # (a list: json_each of an object walks its members, and counted one as a reason)
    a_list = is_list(dialect, reasons)
    if dialect == "postgresql":
        listed = case((a_list, reasons), else_=literal_column("'[]'::json"))
        each = func.json_array_elements(listed).table_valued("value").alias("reason")
        return exists().select_from(each).where(each.c.value.op("->>")("rule") == rule)
    listed = case((a_list, reasons), else_=literal("[]"))
    each = func.json_each(listed).table_valued("value", "type").alias("reason")
    # json_extract parses its argument: only an object element is one to read
    return exists().select_from(each).where(
        case((each.c.type == "object", func.json_extract(each.c.value, "$.rule"))) == rule)


def not_judged(s: Session, since: datetime, until: datetime,
               ) -> dict[tuple[str | None, str | None], dict[str, dict[str, Any]]]:
    """Fails with nothing judged per box and camera in the window, of the rows still kept:
    ``blank_frame`` (a lens cap, a lamp off) and ``reference_mismatch`` (not the golden's
    view; a blank frame is counted as blank only, the cause to fix first), each
    ``{"parts": n, "last": time or None}``. A capped camera's run of fails read as bad
    parts on the status page (review, session 39)."""
    dialect = s.get_bind().dialect.name
    blank = _has_rule(dialect, "blank_frame")
    moved = and_(_has_rule(dialect, "reference_mismatch"), ~blank)
    got: dict[tuple[str | None, str | None], dict[str, dict[str, Any]]] = {}
    for box, cam, n_blank, last_blank, n_moved, last_moved in s.execute(
            select(InspectionRow.box_id, InspectionRow.camera_id,
                   func.count().filter(blank), func.max(InspectionRow.created_at).filter(blank),
                   func.count().filter(moved), func.max(InspectionRow.created_at).filter(moved))
            # the verdict through coalesce (never NULL): on its own, SQLite read every
            # fail ever stored through the verdict index, not the window's rows through
            # created_at's (review session 39)
            .where(func.coalesce(InspectionRow.verdict, "") == "fail",
                   InspectionRow.created_at >= since,
                   InspectionRow.created_at < until, or_(blank, moved))
            .group_by(InspectionRow.box_id, InspectionRow.camera_id)):
        got[(box, cam)] = {"blank_frame": {"parts": n_blank, "last": _time(last_blank)},
                           "reference_mismatch": {"parts": n_moved, "last": _time(last_moved)}}
    return got


def _time(value: Any) -> datetime | None:
    """A time read from the rows, or None: none, or stored text that does not read as one
    (store/utc.py; the latest by text can be such a row). It was the status page's 500."""
    return as_utc(value) if isinstance(value, datetime) else None


def legacy(s: Session, conds: Sequence[ColumnElement[bool]] = ()) -> dict[str, Any]:
    """The all-time review figures the dashboard has always had, of ``conds``' rows (the
    dashboard's filters; a box sharing its database: its own)."""
    # inspections, not reviews: three reviewers agreeing on one false reject counted 3,
    # and the rate passed 100% (QA review, session 32). By the reviewed truth, as the
    # window's false rejects: a false reject undone (the defect drawn back) still counted
    # here (QA review, session 37)
    q = review_quality(s, None, None, list(conds))
    fr, reviewed_fails = q["false_rejects"], q["reviewed_fails"]
    return {"reviewed_fails": reviewed_fails, "false_rejects_confirmed": fr,
            "false_reject_rate_reviewed": fr / reviewed_fails if reviewed_fails else None}


def dashboard(s: Session, *, hours: int, now: datetime, shifts: Shifts,
              camera_id: str | None = None, recipe: str | None = None, site: str | None = None,
              line: str | None = None, box_id: str | None = None,
              here: str | None = None, part_id: str | None = None) -> dict[str, Any]:
    """Every figure of the dashboard over the last ``hours`` (and the shifts they touch),
    for one camera and/or recipe (and on a hub site, line, box) when given; ``here``: see
    :meth:`Scope.of`; ``part_id``: one part's (kept) inspections."""
    until = as_utc(now)
    since = until - timedelta(hours=hours)
    scope = Scope.of(camera_id, recipe, site, line, box_id, here, part_id)
    conds = scope.rows  # (the figures below need the rows: retention's history has none)
    hours_ = hourly(s, since, until, scope)
    shift_rows = per_shift(s, shifts.boundaries(since, until), scope)
    classes = pareto(s, since, until, conds)
    places = stations(s, since, until, scope)
    changes, cut = model_changes(s, since, until, conds)
    per_camera: dict[str, int] = {}
    for p in places:
        cam = p["camera_id"] or "(upload)"
        per_camera[cam] = per_camera.get(cam, 0) + p["inspections"]
    return {
        "since": since, "until": until, "camera_id": camera_id, "recipe": recipe,
        "part_id": part_id or None,
        "shift_starts": list(shifts.starts), "shift_timezone": str(shifts.zone),
        "hourly": hours_, "shifts": shift_rows, "pareto": classes, "stations": places,
        "model_changes": changes, "model_changes_cut": cut,
        "versions": versions(s, since, until, conds),
        "quality": review_quality(s, since, until, conds),
        "reviewers": reviewers(s, since, until, scope.reviews),
        # the figures earlier releases answered, kept for their callers
        "verdicts_per_hour": {h["start"].strftime("%Y-%m-%d %H:00"): {"pass": h["passes"],
                                                                      "fail": h["fails"]}
                              for h in hours_ if h["inspections"]},
        "defects_per_class": {c["label"]: c["parts"] for c in classes},
        "inspections_per_camera": per_camera,
        # of the rows every other figure reads (a hub's site, line, box; a camera, a
        # recipe): they were the whole fleet's beside one box's figures (session 40)
        **legacy(s, conds),
    }


def review_log(s: Session, *, limit: int, offset: int, reviewer: str | None = None,
               inspection_id: str | None = None) -> tuple[int, list[dict[str, Any]]]:
    """Reviews newest first, with their inspection's verdict, camera and box: the audit
    trail (boxes sharing a database, and a hub, list every box's: cam1 of two boxes read
    as one camera without it)."""
    conds = [c for c in (ReviewRow.reviewer == reviewer if reviewer else None,
                         ReviewRow.inspection_id == inspection_id if inspection_id else None)
             if c is not None]
    total = s.scalar(select(func.count()).select_from(ReviewRow).where(*conds)) or 0
    rows = s.execute(select(ReviewRow, InspectionRow.verdict, InspectionRow.camera_id,
                            InspectionRow.box_id)
                     .join(InspectionRow, InspectionRow.id == ReviewRow.inspection_id)
                     .where(*conds).order_by(ReviewRow.id.desc()).limit(limit).offset(offset)).all()
    return total, [{"id": r.id, "created_at": r.created_at, "reviewer": r.reviewer,
                    "action": r.action, "inspection_id": r.inspection_id, "verdict": verdict,
                    "camera_id": camera, "box_id": box,
                    # (None: boxes that are not a list; len() of their text was a count)
                    "defects_after": len(r.boxes) if isinstance(r.boxes, list) else None,
                    "note": r.note}
                   for r, verdict, camera, box in rows]
