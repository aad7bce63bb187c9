"""Reading an HTTP answer whole within a byte and a time bound: httpx's timeout is per
read, so a peer sending a byte every few seconds never timed out, and its answer had no
size limit. The fleet box's hub client and ``data pull`` read what another server sends
this way."""

from __future__ import annotations

import time

import httpx


class AnswerTooSlow(Exception):
    """The answer did not come whole before the deadline (callers name their peer)."""


def read_at_most(resp: httpx.Response, limit: int, deadline: float | None = None) -> bytes | None:
    """The answer's body, or None once it is (or declares itself) over ``limit`` bytes:
    reading stops there (the connection is dropped with the rest unread). Past
    ``deadline`` (``time.monotonic``), :class:`AnswerTooSlow`."""
    declared = resp.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    for chunk in resp.iter_bytes():  # decoded: a compressed answer is bounded as it unpacks
        size += len(chunk)
        if size > limit:
            return None
        if deadline is not None and time.monotonic() > deadline:
            raise AnswerTooSlow
        chunks.append(chunk)
    return b"".join(chunks)
