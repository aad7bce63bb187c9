"""Browser security headers on every response (pure ASGI, so static files get them too).

The pages load scripts, styles and images from this server only: the CSP forbids inline
scripts and event handlers (``script-src`` falls back to ``default-src 'self'``), so even
markup that slipped into a page could not run; ``frame-ancestors 'none'`` and
``X-Frame-Options`` stop another site framing the page to steal clicks (a click on
"confirm" or "roll back"). Every answer but the static files (:data:`CACHED`) is ``Cache-Control:
no-store``: a line PC is shared, and the review page (its CSRF token), inspection images
and the API's JSON stayed in its browser cache after sign-out; the pages' scripts and
styles are ``no-cache`` (revalidated, so an upgrade's are fetched). A route may set its own
value of any of these; it is kept.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CSP = "; ".join([
    "default-src 'self'",
    "img-src 'self' data: blob:",
    "object-src 'none'",
    "base-uri 'none'",
    "frame-ancestors 'none'",
    "form-action 'self'",
])
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}


# what may stay in a browser's cache: the pages' scripts and styles, and the API docs'
# bundle (1 MB, fetched again on every visit otherwise); none of it holds data. The
# pages' own files are "no-cache": asked again each time, answered 304 by their ETag
# while unchanged. Without a Cache-Control the browser kept them fresh by heuristic (a
# tenth of the file's age: days, for an install months old), and after an upgrade the
# tablets ran the old scripts against the new pages and API, a reload included
CACHED = ("/static/", "/docs/swagger-ui")
REVALIDATED = "/static/"


def app_path(scope: Scope) -> str:
    """An HTTP request's path within the app: behind a proxy's prefix, without it."""
    path, root = scope["path"], scope.get("root_path") or ""
    return path[len(root):] if root and path.startswith(root) else path


class SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        path = app_path(scope)
        cached = path.startswith(CACHED)
        control = "no-cache" if path.startswith(REVALIDATED) else None if cached else "no-store"

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
                if control:
                    headers.setdefault("cache-control", control)
            await send(message)

        await self.app(scope, receive, send_with_headers)
