"""Reading an HTTP answer whole within a byte and a time bound: httpx's timeout is per
read, so a peer sending a byte every few seconds never timed out, and its answer had no
size limit. The fleet box's hub client and ``data pull`` read what another server sends
this way, asking for it unencoded (:data:`IDENTITY`) and taking nothing else: httpx
decodes each network chunk whole before a reader can count it (a few hundred bytes of
brotli are hundreds of MB)."""

from __future__ import annotations

import time

import httpx

IDENTITY = {"accept-encoding": "identity"}  # a client's headers: answers unencoded


class AnswerTooSlow(Exception):
    """The answer did not come whole before the deadline (callers name their peer)."""


class AnswerEncoded(Exception):
    """The answer came compressed though it was asked for as it is."""


def read_at_most(resp: httpx.Response, limit: int, deadline: float | None = None) -> bytes | None:
    """The answer's body, or None once it is (or declares itself) over ``limit`` bytes:
    reading stops there (the connection is dropped with the rest unread). Past
    ``deadline`` (``time.monotonic``), :class:`AnswerTooSlow`; an answer with a
    ``Content-Encoding``, :class:`AnswerEncoded` (nothing of it read)."""
    encoding = resp.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise AnswerEncoded(f"the answer came with Content-Encoding {encoding[:32]!r}; "
                            "only identity is taken")
    declared = resp.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    for chunk in resp.iter_raw():
        size += len(chunk)
        if size > limit:
            return None
        if deadline is not None and time.monotonic() > deadline:
            raise AnswerTooSlow
        chunks.append(chunk)
    return b"".join(chunks)
