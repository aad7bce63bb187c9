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
    unknown = sorted({k for k in request.query_params if k not in names})
    if not unknown:
        return
    shown = [k if len(k) <= 40 else k[:40] + "..." for k in unknown[:5]]
    hints = [f"{k}: {m}?" for k, m in ((k, meant(k, names)) for k in shown) if m]
    tail = "; ".join([*hints, *([example] if example else [])])
    raise RequestValidationError([{
        "type": "extra_forbidden", "loc": ("query",), "input": None,
        "msg": (f"{', '.join(shown)}: not a parameter of {what}, which takes "
                f"{', '.join(names)}" + (f" ({tail})" if tail else ""))}])
