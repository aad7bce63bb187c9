"""Yield history through retention: the passes and fails of the inspections retention
removes, counted per quarter hour (UTC), box, site, line, camera, recipe and verdict in
``yield_history`` (:class:`YieldHistoryRow`), so the dashboard's hourly, shift and
station figures, its CSV, ``/v1/stats``, the status page and a hub's merged views read
what the line made, not what is left of it (QA review, session 37: the quota removes
sampled passes with their rows first, and an older window's yield read lower).

Counted in the transaction that deletes the rows, from what the deletes removed: a
process that dies mid-way commits neither, and a row another process deleted first is
not counted twice. The upsert is per key, and a box's keys carry its box id, so boxes
sharing one PostgreSQL database never write one another's history rows.

A removed inspection counts as made at the start of its quarter hour (the ``hour``
column holds it): a window or shift that starts inside a quarter hour counts that quarter
hour's removed inspections only if it starts in it. A quarter, not an hour: every zone's
offset is whole quarter hours, and by the UTC hour a shift at 06:00 in Asia/Kolkata
(00:30 UTC) took the half hour after it from the shift before once retention removed it,
and a shift at 06:30 anywhere the same (review, session 37). Only verdicts are kept:
defect classes, model versions and reviews need the rows.

Each removed inspection's verdict after review is counted beside its machine verdict
(``passes_after_review``, ``unreviewed_fails``, of ``after_counted``: models.YieldHistoryRow),
read by the one rule the figures read the kept rows by (:func:`stats.after_review`) in the
transaction that deletes it, before its reviews go with it: without it, a window's yield
after review dropped once retention ran (the quota removes reviewed fails first; session
56). Rows of neither verdict are counted in ``after_counted`` only, in no figure.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Table, func
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from lineside_inspect.store.models import InspectionRow, YieldHistoryRow, delete_any
from lineside_inspect.store.stats import after_review
from lineside_inspect.store.utc import as_utc

# what a removed row is counted by, in this order (as a hub's DELETE ... RETURNING reads it)
KEY_COLUMNS: tuple[Any, ...] = (
    InspectionRow.created_at, InspectionRow.box_id, InspectionRow.site, InspectionRow.line,
    InspectionRow.camera_id, InspectionRow.recipe_name, InspectionRow.verdict)
NONE = ""  # a key's none (see YieldHistoryRow)
KEY_NAMES = ("hour", "box_id", "site", "line", "camera_id", "recipe_name", "verdict")
# how long the history is kept: the longest window the figures read (/v1/stats' hours,
# 90 days) and a day for its first shift or day that began before it. Older slots are
# never read: kept, a hub's grew by ~700,000 rows a year per 10 box cameras
KEPT = timedelta(days=91)
UPSERT_ROWS = 500  # history rows a statement upserts (SQLite bounds its parameters)


AFTER_NAMES = ("after_counted", "passes_after_review", "unreviewed_fails")


def key_of(row: InspectionRow, after: str | None) -> tuple[Any, ...]:
    """``row``'s values of :data:`KEY_COLUMNS` (read by their names: one list of them),
    then ``after``, its verdict after review (:func:`judged`)."""
    return (*(getattr(row, column.key) for column in KEY_COLUMNS), after)


def judged(s: Session) -> Any:
    """A removed row's verdict after review, to SELECT beside it before it is deleted
    (its reviews go with it): 'pass', 'fail', or NULL when no review judged it."""
    return after_review(s.get_bind().dialect.name).label("after_review")


def _after(verdict: Any, after: Any) -> tuple[int, int, int]:
    """A removed row's (counted, passes after review, unreviewed fails), as the figures
    count a kept one (stats._tallied): a row of neither verdict is in no count."""
    if verdict not in ("pass", "fail"):
        return 1, 0, 0
    return 1, int((after or verdict) == "pass"), int(verdict == "fail" and after is None)


SLOT_MINUTES = 15  # the history's grain: shifts and days start on one in every zone


def slot_of(at: datetime) -> datetime:
    """The start of ``at``'s quarter hour, UTC."""
    at = as_utc(at)
    return at.replace(minute=at.minute - at.minute % SLOT_MINUTES, second=0, microsecond=0)


def count_removed(s: Session, removed: Iterable[Sequence[Any]]) -> int:
    """Add ``removed`` (each a deleted row's :data:`KEY_COLUMNS` and its verdict after
    review, :func:`key_of`) to the history, in ``s``'s transaction; the rows counted."""
    per: Counter[tuple[Any, ...]] = Counter()
    after: dict[tuple[Any, ...], list[int]] = {}
    for at, box, site, line, camera, recipe, verdict, judged_as in removed:
        if not isinstance(at, datetime):
            # stored text that is not a time (SQLite keeps any: store/utc.py) has no
            # quarter hour, and no figure counted it: left out. Its slot_of failed the
            # whole retention pass, and no row left by age or quota (review, session 40)
            continue
        key = (slot_of(at), box or NONE, site or NONE, line or NONE, camera or NONE,
               recipe, verdict)
        per[key] += 1
        sums = after.setdefault(key, [0, 0, 0])
        for i, n in enumerate(_after(verdict, judged_as)):
            sums[i] += n
    if not per:
        return 0
    # in key order: two processes upserting overlapping keys take their locks in one order
    values = [{**dict(zip(KEY_NAMES, key, strict=True)), "inspections": n,
               **dict(zip(AFTER_NAMES, after[key], strict=True))}
              for key, n in sorted(per.items())]
    table: Table = YieldHistoryRow.__table__  # type: ignore[assignment]
    insert = pg_insert if s.get_bind().dialect.name == "postgresql" else sqlite_insert
    for start in range(0, len(values), UPSERT_ROWS):
        stmt = insert(table).values(values[start:start + UPSERT_ROWS])
        # (NULL: a row an earlier release wrote, none of its inspections counted after review)
        s.execute(stmt.on_conflict_do_update(
            index_elements=list(KEY_NAMES),
            set_={"inspections": table.c.inspections + stmt.excluded.inspections,
                  **{name: func.coalesce(table.c[name], 0) + stmt.excluded[name]
                     for name in AFTER_NAMES}}))
    return sum(per.values())


def prune(s: Session, now: datetime, box_id: str | None = None) -> int:
    """Delete the history older than :data:`KEPT`, in ``s``'s transaction: ``box_id``'s
    (a box: boxes sharing a database prune their own), or all of it (a hub); how many
    slots went."""
    conds = [YieldHistoryRow.hour < as_utc(now) - KEPT]
    if box_id is not None:
        conds.append(YieldHistoryRow.box_id == (box_id or NONE))
    return delete_any(s, YieldHistoryRow, *conds)
