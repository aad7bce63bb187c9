"""A box key's site and line, when the hub's config pins them (``api_keys[].site`` and
``.line`` of a ``box`` key): what the box forwards, reports and reads must name them.

Unpinned, a box names its own site and line (its ``fleet.site`` and ``fleet.line``), and
the hub takes them as sent: a box key could file inspections under another line, move
that line's dashboard figures, and read any line's assignment (docs/security.md).
"""

from __future__ import annotations

from starlette.requests import Request

from lineside_inspect.config import ApiKey, Settings
from lineside_inspect.errors import Forbidden


def box_key(request: Request, box_id: str) -> ApiKey | None:
    """The hub's ``box`` key named ``box_id`` (the caller's: routes check that first)."""
    settings: Settings = request.app.state.settings
    return next((k for k in settings.api_keys if k.name == box_id and k.role == "box"), None)


def check_pinned(request: Request, box_id: str, site: str | None, line: str | None,
                 what: str) -> None:
    """Refuse (403) ``what`` naming a site or line other than the one ``box_id``'s key is
    pinned to; nothing when its key pins none."""
    key = box_key(request, box_id)
    if key is None:
        return
    for field, pinned, named in (("site", key.site, site), ("line", key.line, line)):
        if pinned is not None and named != pinned:
            raise Forbidden(f"box {box_id}'s key is pinned to {field} {pinned!r} in the hub's "
                            f"config; {what} names {field} {named!r}")
