"""A box key's site and line, when the hub's config pins them (``api_keys[].site`` and
``.line`` of a ``box`` key): what the box forwards, reports and reads must name them.

Unpinned, a box names its own site and line (its ``fleet.site`` and ``fleet.line``), and
the hub takes them as sent: a box key could file inspections under another line, move
that line's dashboard figures, and read any line's assignment (docs/security.md). The
pins are the key's that matched (``Principal``), so two keys of one box (a rotation)
each keep their own.
"""

from __future__ import annotations

from lineside_inspect.errors import Forbidden
from lineside_inspect.server.deps import Principal


def check_pinned(who: Principal, site: str | None, line: str | None, what: str) -> None:
    """Refuse (403) ``what`` naming a site or line other than the one ``who``'s key is
    pinned to; nothing when its key pins none (or it is not a box key)."""
    for field, pinned, named in (("site", who.site, site), ("line", who.line, line)):
        if pinned is not None and named != pinned:
            raise Forbidden(f"box {who.name}'s key is pinned to {field} {pinned!r} in the "
                            f"hub's config; {what} names {field} {named!r}")
