"""Errors under ``/v2`` in the Open Inference Protocol's shape.

The protocol's error body is ``{"error": "<message>"}``; everywhere else Lineside
answers ``{"error": {"code", "message"}}``. tritonclient put that object into its
exception, and ``str()`` of the exception raised TypeError: an integrator's logging of
any refusal crashed (OIP review, session 33). This pure-ASGI middleware, outermost so
that the gate's and the guard's refusals pass through it too, rewrites a ``/v2`` error
answer to ``{"error": message, "code": code}``: the protocol's string, and Lineside's
code beside it for clients that read it.
"""

from __future__ import annotations

import json

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lineside_inspect.server.headers import app_path

MAX_ERROR_BYTES = 64 << 10  # an error body is a line or two; anything larger passes as it is


def oip_error(body: bytes) -> bytes:
    """``body`` rewritten to the protocol's shape, or as it was when it is not Lineside's."""
    try:
        doc = json.loads(body)
    except ValueError:
        return body
    inner = doc.get("error") if isinstance(doc, dict) else None
    if not isinstance(inner, dict) or not isinstance(inner.get("message"), str):
        return body
    return json.dumps({"error": inner["message"], "code": inner.get("code")}).encode()


class OipErrors:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = app_path(scope) if scope["type"] == "http" else ""
        if not (path == "/v2" or path.startswith("/v2/")):
            await self.app(scope, receive, send)
            return
        held: Message | None = None  # an error answer's start, until its body is whole
        chunks: list[bytes] = []

        async def rewriting(message: Message) -> None:
            nonlocal held
            if message["type"] == "http.response.start":
                headers = MutableHeaders(raw=message["headers"])
                if message["status"] >= 400 and \
                        headers.get("content-type", "").startswith("application/json"):
                    held = message
                    return
            elif held is not None and message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                size = sum(map(len, chunks))
                if message.get("more_body", False) and size <= MAX_ERROR_BYTES:
                    return
                body = b"".join(chunks)
                if not message.get("more_body", False):
                    body = oip_error(body)
                    MutableHeaders(scope=held)["content-length"] = str(len(body))
                start, held = held, None
                await send(start)
                await send({**message, "body": body})
                return
            await send(message)

        await self.app(scope, receive, rewriting)
