"""Times in the database are UTC, whatever the backend.

SQLite keeps a ``DateTime`` as text without its offset, so an aware ``since`` of
10:00+05:00 used to be compared as 10:00 and rows came back naive. This column type
converts every value bound to it (stored rows and query parameters alike) to UTC, and
returns aware UTC datetimes. A naive datetime is taken to be UTC already (the server
and the store only ever make aware UTC times; a naive ``since``/``until`` in a query
means UTC).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator
from sqlalchemy import JSON, DateTime
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator


def as_utc(value: datetime) -> datetime:
    """``value`` as an aware UTC datetime; naive means UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def iso_times(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` with its datetime values as ISO text (an audit entry's or an event's JSON)."""
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in doc.items()}


def _utc_in_range(value: datetime) -> datetime:
    try:
        as_utc(value)
    except OverflowError:  # 0001-01-01T00:00+14:00 is before year 1 in UTC
        raise ValueError("out of range once taken to UTC") from None
    return value


# a time a request brings (a query's since/until): one that cannot be taken to UTC is a
# 422, not an OverflowError deep in the database layer
UTCTime = Annotated[datetime, AfterValidator(_utc_in_range)]


class UTCDateTime(TypeDecorator[datetime]):
    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        utc = as_utc(value)
        # SQLite would drop the offset anyway: store the UTC wall time, explicitly
        return utc.replace(tzinfo=None) if dialect.name == "sqlite" else utc

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        return None if value is None else as_utc(value)

    def result_processor(self, dialect: Dialect, coltype: Any) -> Callable[[Any], Any] | None:
        return _tolerant(super().result_processor(dialect, coltype), "an ISO time")


class StoredJSON(TypeDecorator[Any]):
    """JSON whose stored text may not be JSON (SQLite keeps any text in a JSON column: a
    hand-edited row, a foreign writer): it reads as :class:`Unreadable`, not an error
    that stops every query holding the row (a listing's page, a single row's page)."""

    impl = JSON
    cache_ok = True

    def result_processor(self, dialect: Dialect, coltype: Any) -> Callable[[Any], Any] | None:
        return _tolerant(super().result_processor(dialect, coltype), "JSON")


class Unreadable(str):
    """A stored value its column's type cannot read: the stored text, and what it should
    have been. ``Store.record`` refuses a row holding one, naming the column."""

    expected: str

    def __new__(cls, raw: Any, expected: str) -> Unreadable:
        out = super().__new__(cls, str(raw)[:80])
        out.expected = expected
        return out


def _tolerant(read: Callable[[Any], Any] | None, expected: str) -> Callable[[Any], Any] | None:
    if read is None:  # the driver reads it (PostgreSQL's json, timestamptz): never bad text
        return None

    def tolerant(value: Any) -> Any:
        try:
            return read(value)
        except (ValueError, TypeError):  # (json's JSONDecodeError is a ValueError)
            return Unreadable(value, expected)

    return tolerant
