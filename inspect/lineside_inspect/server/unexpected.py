"""The answer to an error nobody anticipated: a generic 500 with an error id, and a
connection that stays usable.

The message names no exception, path or library (those go to the log, under the same
id, for whoever runs the box). Starlette's ``ServerErrorMiddleware`` answers an
unhandled exception and then re-raises it so that the server sees it; uvicorn then
closes the keep-alive connection, and the client's next request on it fails.
:class:`CatchUnexpected` sits inside that middleware, outside every other one, and
answers without re-raising, so the connection goes on. An exception raised after the
response has started cannot be answered any more: that one still propagates and the
server drops the connection, which is the only honest end of a half-sent response.
"""

from __future__ import annotations

import logging
import uuid

from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lineside_inspect.errors import error_body

log = logging.getLogger("lineside")


def internal_error(exc: BaseException, method: str, path: str) -> JSONResponse:
    """Log ``exc`` with its traceback under a fresh error id; answer the id alone.

    A client that went away before its body ended is not the server's error: one line at
    info, no traceback (an operator alerting on "internal error" saw one per dropped
    upload), and an answer nobody will read."""
    if isinstance(exc, ClientDisconnect):
        log.info("client disconnected during the request body on %s %r", method, path)
        return JSONResponse(error_body("client_disconnected", "the client went away before "
                                       "its request body ended"), status_code=400)
    error_id = uuid.uuid4().hex[:12]
    # the path quoted: a control character in it cannot forge a line of the log
    log.error("internal error %s on %s %r", error_id, method, path, exc_info=exc)
    return JSONResponse(error_body("internal_error", f"internal error {error_id}: the server "
                                   "could not complete the request; its log has the details "
                                   "under this id"),
                        status_code=500, headers={"X-Lineside-Error-Id": error_id})


class CatchUnexpected:
    """Pure ASGI middleware: answer an exception that escaped every handler (see above)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception as exc:
            if started:
                raise
            response = internal_error(exc, scope.get("method", ""), scope.get("path", ""))
            await response(scope, receive, send)
