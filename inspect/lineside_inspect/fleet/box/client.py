"""The box's one HTTP client to its hub (httpx): the box's bearer key, bounded timeouts,
and two kinds of failure a caller can act on:

- :class:`~lineside_inspect.errors.HubUnavailable`: the hub cannot be reached, timed out,
  or answered 5xx / 408 / 429 — retry later with backoff; the box keeps recording
  meanwhile. :class:`HubCutBody`, one of them: the hub cut the request's body (408: it
  came slower than the hub's ``min_body_rate``) or the connection broke while it was
  being sent — a smaller body may get through;
- :class:`~lineside_inspect.errors.HubRefused`: the hub answered 4xx — the request (or the
  box's key) is wrong; retrying the same request will not help (a 413,
  :class:`HubBodyTooLarge`, is one: a smaller request may go).

Every call is made under ``fleet.protocol`` paths with this box's id filled in (the id is
the key's name on the hub), so callers never build URLs by hand.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from lineside_inspect.bounded_read import IDENTITY, AnswerEncoded, AnswerTooSlow, read_at_most
from lineside_inspect.errors import HubRefused, HubUnavailable
from lineside_inspect.fleet.config import FleetSettings, shown_url
from lineside_inspect.fleet.protocol import FEATURES_HEADER, HUB_FEATURES_HEADER, REVIEW_WAITING
from lineside_inspect.names import scrub_text
from lineside_inspect.version import __version__

M = TypeVar("M", bound=BaseModel)
# an answer's body is read only up to this (a JSON answer; packages use download())
MAX_ANSWER_BYTES = 16 * 1024 * 1024
ERROR_BYTES = 64 * 1024  # of an error answer, for its message
# an answer (not a package download) must come whole within this many timeout_s of its
# start: 60 s with the default 10 s
ANSWER_TIMEOUTS = 6
# a package download may take long, but past ANSWER_TIMEOUTS x timeout_s it must average
# this (64 kbit/s): a hub sending a byte every 0.5 s held the model puller and its lock
# for as long as it liked, and no failure was ever counted (review, session 34)
MIN_DOWNLOAD_RATE = 8 * 1024


class HubUnreachable(HubUnavailable):
    """No answer at all from the hub's address: refused, reset, timed out, DNS, TLS (a
    request to it now fails alike, whatever it asks)."""


class HubCutBody(HubUnavailable):
    """The hub answered 408 to the request's body (it came slower than the hub's
    ``min_body_rate``), or the connection broke while the body was being sent."""


# the hub's codes for a record it will not store (fleet/hub/ingest.py): the body's
# content, not the box's key or settings, is at fault
RECORD_CODES = frozenset({"invalid_record", "invalid_request", "inspection_id_taken"})


class HubRefusedRecord(HubRefused):
    """The hub refused what the body holds (``RECORD_CODES``: a field out of range, an
    image that is not what its record says, an id another box holds): the same body will
    never go, a smaller one without the culprit may (fleet/box/forward.py)."""


class HubBodyTooLarge(HubRefused):
    """The hub answered 413: the request's body is over its ``max_body_bytes`` (a refusal,
    counted as one; the forwarder sends smaller batches, fleet/box/forward.py)."""


class HubClient:
    """Talks to ``settings.hub_url`` as box ``box_id``. Thread-safe (httpx.Client is);
    :meth:`close` ends its connections."""

    def __init__(self, settings: FleetSettings, box_id: str,
                 transport: httpx.BaseTransport | None = None,
                 max_answer_bytes: int = MAX_ANSWER_BYTES) -> None:
        if not settings.hub_url:
            raise ValueError("fleet.hub_url is not set")
        self.box_id = box_id
        self.max_answer_bytes = max_answer_bytes
        self.base_url = settings.hub_url.rstrip("/")
        # (in messages: a user:password@ of the URL hidden; they reach logs and statuses)
        self.shown_url = shown_url(self.base_url, limit=200)
        # the answers this box reads beyond version 1 (a hub leaves them out otherwise)
        headers = {"user-agent": f"lineside-box/{__version__}", FEATURES_HEADER: REVIEW_WAITING,
                   **IDENTITY}
        if settings.token is not None:
            headers["authorization"] = f"Bearer {settings.token.get_secret_value()}"
        t = self.timeout_s = settings.timeout_s
        self._http = httpx.Client(base_url=self.base_url, headers=headers,
                                  timeout=httpx.Timeout(t, connect=min(t, 5.0)),
                                  transport=transport, follow_redirects=False)
        self._closed = threading.Event()
        # what the hub said it takes (protocol.HUB_FEATURES_HEADER) in its last answer of its
        # own (2xx, or a refusal in its error shape: a proxy's 502 or 413 says nothing of
        # the hub behind it); None until it answered
        self.hub_features: frozenset[str] | None = None

    def takes(self, feature: str) -> bool:
        """Whether the hub said it takes ``feature`` (``protocol.HUB_FEATURES``). Before its
        first answer, ``HEAD /healthz`` asks; a hub that answers it with a refusal or an
        error of its own (or a proxy's) takes nothing (the field is left out, never
        refused). One that does not answer at all raises :class:`HubUnreachable`: what
        would have been sent next fails alike, and waiting for it too doubled a round's
        wait (past the forwarder's ``stop_timeout_s``), or sent a batch without its
        ``tiles`` to a hub back the moment after (review, session 47)."""
        if self.hub_features is None:
            try:
                self.request("HEAD", "/healthz")
            except HubUnreachable:
                raise
            except (HubUnavailable, HubRefused):
                return False
        return feature in (self.hub_features or ())

    def _heard(self, resp: httpx.Response) -> None:
        said = resp.headers.get(HUB_FEATURES_HEADER, "")
        self.hub_features = frozenset(f.strip() for f in said.split(",") if f.strip())

    def close(self) -> None:
        self._closed.set()
        self._http.close()

    def path(self, template: str, **parts: str) -> str:
        """``template`` (a ``fleet.protocol`` path) with ``{box_id}`` and ``parts`` filled."""
        return template.format(box_id=self.box_id, **parts)

    # -- calls ---------------------------------------------------------------------
    def request(self, method: str, path: str, *, body: BaseModel | None = None,
                params: dict[str, Any] | None = None) -> bytes:
        """One request; the answer's body when it is 2xx, else HubUnavailable / HubRefused.
        The answer is streamed and refused once it passes ``max_answer_bytes`` (a declared
        length over it: before reading any): a broken or hostile hub cannot make the box
        hold more than that."""
        content = body.model_dump_json().encode() if body is not None else None
        headers = {"content-type": "application/json"} if content is not None else None
        try:
            with self._http.stream(method, path, content=content, params=params,
                                   headers=headers) as resp:
                if resp.status_code >= 400:
                    code, detail = _error_parts(resp.status_code, resp.reason_phrase,
                                                _read_at_most(resp, ERROR_BYTES))
                    if code is not None and resp.status_code < 500:  # the hub's own refusal
                        self._heard(resp)
                    if resp.status_code == 408:
                        raise HubCutBody(f"hub {self.shown_url} answered 408: {detail}")
                    if resp.status_code == 413:  # a refusal of this size: smaller may go
                        raise HubBodyTooLarge(f"hub {self.shown_url} answered 413: {detail}")
                    if resp.status_code >= 500 or resp.status_code == 429:
                        raise HubUnavailable(f"hub {self.shown_url} answered "
                                             f"{resp.status_code}: {detail}")
                    refused = HubRefusedRecord if code in RECORD_CODES else HubRefused
                    raise refused(f"hub refused {method} {path}: {resp.status_code} {detail}")
                self._heard(resp)
                data = _read_at_most(resp, self.max_answer_bytes,
                                     time.monotonic() + ANSWER_TIMEOUTS * self.timeout_s)
        except httpx.WriteError:  # the hub closed while the body went: cut, or gone
            raise HubCutBody(f"hub {self.shown_url} closed the connection while the request "
                             "body was being sent") from None
        except httpx.HTTPError as exc:  # refused, reset, timed out, DNS, TLS, bad encoding
            raise HubUnreachable(f"hub {self.shown_url} unreachable: {type(exc).__name__}") from None
        if data is None:
            raise HubRefused(f"hub answer to {method} {path} is over {self.max_answer_bytes} "
                             "bytes: not read")
        return data

    def post(self, path: str, body: BaseModel, answer: type[M]) -> M:
        return _parse(self.request("POST", path, body=body), answer, path)

    def get(self, path: str, answer: type[M], params: dict[str, Any] | None = None) -> M:
        return _parse(self.request("GET", path, params=params), answer, path)

    def download(self, path: str, dest: Path, max_bytes: int) -> int:
        """Stream ``path`` into ``dest`` (a file the caller then checks); its size. Refused
        past ``max_bytes`` (the partial file is removed)."""
        size = 0
        try:
            with self._http.stream("GET", path) as resp:
                if resp.status_code >= 500 or resp.status_code in (408, 429):
                    raise HubUnavailable(f"hub answered {resp.status_code} for {path}")
                if resp.status_code >= 400:
                    _, detail = _error_parts(resp.status_code, resp.reason_phrase,
                                             _read_at_most(resp, ERROR_BYTES))
                    raise HubRefused(f"hub refused GET {path}: {resp.status_code} {detail}")
                encoding = resp.headers.get("content-encoding", "identity").strip().lower()
                if encoding != "identity":
                    # a package is already compressed: decoded, 4 MiB of gzip on the wire
                    # wrote 2 GiB to the box's disk before the sha256 check (hostile hub)
                    raise HubRefused(f"hub sent {path} with Content-Encoding {encoding[:32]!r}; "
                                     "a package is taken only as it is")
                start, grace = time.monotonic(), ANSWER_TIMEOUTS * self.timeout_s
                with dest.open("wb") as f:
                    for chunk in resp.iter_raw():
                        size += len(chunk)
                        if size > max_bytes:
                            raise HubRefused(f"{path} is over {max_bytes} bytes")
                        f.write(chunk)
                        late = time.monotonic() - start - grace
                        if late > 0 and size < MIN_DOWNLOAD_RATE * late:
                            raise HubUnavailable(
                                f"hub {self.shown_url} sends {path} slower than "
                                f"{MIN_DOWNLOAD_RATE * 8 // 1024} kbit/s: download given up")
        except httpx.HTTPError as exc:
            dest.unlink(missing_ok=True)
            raise HubUnavailable(f"hub {self.shown_url} unreachable: {type(exc).__name__}") from None
        except BaseException:
            dest.unlink(missing_ok=True)
            raise
        return size


def _read_at_most(resp: httpx.Response, limit: int, deadline: float | None = None) -> bytes | None:
    """:func:`read_at_most`, late answers being the hub's unavailability."""
    try:
        return read_at_most(resp, limit, deadline)
    except AnswerTooSlow:
        raise HubUnavailable("the hub's answer did not come whole in time") from None
    except AnswerEncoded as exc:
        raise HubRefused(f"hub answer refused: {exc}") from None


def _parse(content: bytes, answer: type[M], path: str) -> M:
    try:
        return answer.model_validate_json(content)
    except ValidationError:
        pass
    # a lone surrogate in one text field ("\ud800") made a whole batch of reviews unreadable,
    # and the box asked for it again for good: taken as U+FFFD, as the hub takes the box's
    try:
        doc = json.loads(content, parse_constant=_no_constant)
        return answer.model_validate(scrub_text(doc))
    except (ValueError, RecursionError):  # ValidationError is a ValueError
        raise HubRefused(f"hub answer to {path} is not a {answer.__name__}") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number an answer may hold")


def _error_parts(status: int, reason: str, content: bytes | None) -> tuple[str | None, str]:
    """The hub's ``{"error": {...}}``: its code (None when the answer has none) and
    ``code: message`` (short), else the status text."""
    code: str | None = None
    try:
        err = json.loads(content or b"")["error"]
        code = str(err["code"])[:64]
        text = f"{code}: {str(err['message'])[:300]}"
    except Exception:
        text = reason or f"status {status}"
    # the hub's words go into the box's log: a line break in them forged a log line
    return code, "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
