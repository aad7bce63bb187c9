"""A query parameter a route does not take is refused, named (GET /v1/inspections,
/v1/stats, /v1/stats.csv): ignored, a guess (``?status=fail``, ``?part=SN-1``) answered
as if it had narrowed the answer (QA review, sessions 47 and 48)."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from functools import cache
from inspect import signature
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError

# what a caller means by a name no spelling is near; a hint is given only where the
# route takes the name meant
_MEANT = {"from": "since", "start": "since", "after": "since", "to": "until", "end": "until",
          "before": "until", "status": "verdict", "result": "verdict", "page": "offset",
          "skip": "offset", "size": "limit", "page_size": "limit", "per_page": "limit",
          "class": "label", "defect": "label", "reviewed": "review_state",
          "state": "review_state", "camera": "camera_id", "cam": "camera_id",
          "score": "min_score", "part": "part_id", "serial": "part_id", "sn": "part_id",
          "serial_number": "part_id", "part_number": "part_id", "part_no": "part_id",
          "window": "hours", "period": "hours", "box": "box_id"}


@cache
def taken(endpoint: Callable[..., Any]) -> tuple[str, ...]:
    """The names ``endpoint`` takes from the query string (its parameters but the request
    and the caller's identity, which FastAPI fills)."""
    return tuple(p for p in signature(endpoint).parameters if p not in ("request", "who"))


def meant(name: str, names: tuple[str, ...]) -> str | None:
    """The parameter of ``names`` that ``name`` most likely meant, if any (``part``,
    ``serial``, ``sn``: ``part_id``)."""
    key = name.lower().replace("-", "_")
    if key in names:  # a case or dash away
        return key
    if _MEANT.get(key) in names:
        return _MEANT[key]
    near = difflib.get_close_matches(key, names, n=1, cutoff=0.75)
    return near[0] if near else None


def refuse_unknown(request: Request, endpoint: Callable[..., Any], what: str,
                   example: str = "") -> None:
    """A 422 naming the parameters ``endpoint`` (the route's function) does not take, the
    ones it takes, and a guess at the one meant; names cut to 40 characters, in the JSON
    error only. ``what`` names the route in the message; ``example`` ends the hints."""
    names = taken(endpoint)
    params = request.query_params
    unknown = sorted({k for k in params if k not in names})
    if unknown:
        shown, hints = said_unknown(unknown, names)
        tail = "; ".join([*hints, *([example] if example else [])])
        raise RequestValidationError([{
            "type": "extra_forbidden", "loc": ("query",), "input": None,
            "msg": (f"{shown}: not a parameter of {what}, which takes "
                    f"{', '.join(names)}" + (f" ({tail})" if tail else ""))}])
    # a name given twice: FastAPI takes the last value, so ?part_id=A&part_id=B answered
    # as B's figures alone, read as both parts' (review, session 48): each takes one value
    twice = sorted({k for k in params if len(params.getlist(k)) > 1})
    if twice:
        raise RequestValidationError([{
            "type": "extra_forbidden", "loc": ("query",), "input": None,
            "msg": (f"{', '.join(twice)}: given more than once; {what} takes one value "
                    "of each parameter")}])


def said_unknown(unknown: list[str], names: tuple[str, ...]) -> tuple[str, list[str]]:
    """The first five of ``unknown`` (sorted) as a message names them (``a, b (and 3
    more)``), and a guess at the name meant for each that has one (``part: part_id?``):
    one wording for the API's 422 and the pages' note on a link (``pages._link_note``)."""
    more = f" (and {len(unknown) - 5} more)" if len(unknown) > 5 else ""
    hints = [f"{_shown(k)}: {m}?" for k in unknown[:5] if (m := meant(k, names))]
    return ", ".join(_shown(k) for k in unknown[:5]) + more, hints


def _shown(name: str) -> str:
    """A name as the message shows it: cut to 40 characters, an empty one as ''."""
    return repr(name) if not name else name if len(name) <= 40 else name[:40] + "..."
