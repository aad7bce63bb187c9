"""Times in the database are UTC, whatever the backend.

SQLite keeps a ``DateTime`` as text without its offset, so an aware ``since`` of
10:00+05:00 used to be compared as 10:00 and rows came back naive. This column type
converts every value bound to it (stored rows and query parameters alike) to UTC, and
returns aware UTC datetimes. A naive datetime is taken to be UTC already (the server
and the store only ever make aware UTC times; a naive ``since``/``until`` in a query
means UTC).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator
from sqlalchemy import DateTime
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
