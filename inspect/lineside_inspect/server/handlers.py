"""The error answers of every Lineside app (edge server and hub): ``{"error": {code,
message}}`` with the error's status, a 500 with an error id for the unexpected."""

from __future__ import annotations

import logging
import sqlite3
from typing import Any

from fastapi import FastAPI, Request, params
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, InternalError, OperationalError, ProgrammingError
from starlette.exceptions import HTTPException as StarletteHTTPException

from lineside_inspect.errors import (
    DatabaseUnavailable,
    LinesideError,
    UnstorableValueError,
    describe_validation,
    error_body,
    missing_key_hint,
    model_of,
    retry_after,
    unknown_key_hint,
    with_time_hints,
)
from lineside_inspect.outage_log import OutageLog
from lineside_inspect.server import gate
from lineside_inspect.server.unexpected import internal_error
from lineside_inspect.store.engine import database_unavailable, driver_said, login_refused

# PostgreSQL's codes for values it cannot hold: out of range, a character (NUL) it cannot
# represent; psycopg refuses a NUL in text itself, before the server sees it (no code)
_VALUE_CODES = {"22003", "22021", "22P05"}
# PostgreSQL's codes of a statement that waited too long: a lock another session holds
# (lock_timeout, the store's LOCK_TIMEOUT_S), a statement_timeout
_WAITED_CODES = {"55P03", "57014"}
# ... and of a database that takes no writes: a hot standby (after a failover), or
# default_transaction_read_only (psycopg raises these as InternalError, not Operational)
_READ_ONLY_CODES = {"25006"}
# PostgreSQL's undefined_table: the store's tables gone from under a running server (its
# database dropped and made again empty, a restore not yet done, another database now at
# that address)
_NO_TABLE_CODES = {"42P01"}
log = logging.getLogger("lineside")


def _unstorable(exc: DataError) -> bool:
    code = getattr(exc.orig, "sqlstate", None)
    return code in _VALUE_CODES or (code is None and "NUL" in str(exc.orig))


def _unparsed(cause: BaseException | None) -> str | None:
    """What was wrong with a JSON body FastAPI could not parse, from the parser's error
    (FastAPI's own answer, "There was an error parsing the body", names nothing)."""
    if isinstance(cause, RecursionError):
        return ("the JSON body is nested too deeply to parse (thousands of levels); no "
                "request of this API nests more than a few")
    if isinstance(cause, UnicodeDecodeError):
        return ("the body is not UTF-8 JSON (a compressed body, Content-Encoding, is not "
                "accepted)")
    if isinstance(cause, ValueError) and "digits" in str(cause):
        return "a number in the JSON body has more digits than any value of this API"
    return None


def _takes_json(request: Request) -> bool:
    """Whether the request's route reads a JSON body (the sign-in form reads a form)."""
    route = request.scope.get("route")
    body = getattr(getattr(route, "dependant", None), "body_params", None) or []
    return bool(body) and not any(isinstance(p.field_info, params.Form) for p in body)


def _with_key_hints(request: Request, errors: list[Any]) -> list[Any]:
    """``errors`` with each unknown key of the JSON body followed by the keys meant, as
    the configuration files say them (``errors.unknown_key_hint``): a misspelt key of a
    ``PUT /v1/recipes`` body said only "Extra inputs are not permitted" (session 41); and
    each missing key by what it is, its description in the API's schema
    (``errors.missing_key_hint``; session 47). The hint is plain text, the schema's own
    words only: the key given is in ``loc``."""
    route = request.scope.get("route")
    body = getattr(getattr(route, "dependant", None), "body_params", None) or []
    if not body:
        return errors
    # FastAPI nests a body under its parameter's name when there are several (or embed)
    embedded = len({p.name for p in body}) > 1 or bool(getattr(body[0].field_info, "embed", False))
    out = []
    for e in errors:
        loc = tuple(e.get("loc", ()))
        kind = e.get("type")
        if kind in ("extra_forbidden", "missing") and loc[:1] == ("body",) and len(loc) > 1:
            if not embedded:
                schema, inner = body[0].field_info.annotation, loc[1:]
            else:
                param = next((p for p in body if p.alias == loc[1]), None)
                schema = param.field_info.annotation if param is not None else None
                inner = loc[2:]
            hint = unknown_key_hint if kind == "extra_forbidden" else missing_key_hint
            if (model := model_of(schema)) is not None and inner:
                e = {**e, "msg": f"{e['msg']}{hint(model, inner)}"}
        out.append(e)
    return out


def _has_body(request: Request) -> bool:
    """Whether the request came with a body: one missing altogether stays a 422."""
    length = request.headers.get("content-length")
    return (length is not None and length.strip() not in ("", "0")) \
        or "transfer-encoding" in request.headers


def said_path(path: str) -> str:
    """A request's path as a log line quotes it: as it is when it is printable text, else
    quoted (``repr``). The URL check refuses C0 controls only: a path holding U+2028,
    U+0085 (line breaks to Python's ``splitlines`` and many log viewers) or U+009B (a
    terminal's CSI) went raw into the database outage's lines (logs review, session 52)."""
    return path if path.isprintable() else repr(path)


def _outage_key(scope: Any) -> str:
    return f"{scope.get('method')} {said_path(str(scope.get('path', '')))}"


class _OutageEnds:
    """Says the end of the database's 503s (with their count) at the first success (2xx)
    to a request (method and path) one of them was given to (a review page polling it): a
    plain ASGI wrapper, nothing done per request while no outage is open. Only a success
    ends it: it sits outside the sign-in checks, and a 401 without a key, a 422 for a bad
    query, a 405 for HEAD or a CORS preflight's 200 (OPTIONS) to the same path never
    reached the database; any of them said the outage over while it went on, and the next
    poll's 503 was logged again as a new one (session 50's adversarial read)."""

    def __init__(self, app: Any, outages: OutageLog) -> None:
        self.app = app
        self.outages = outages

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not self.outages.open \
                or _outage_key(scope) not in self.outages.ends:
            await self.app(scope, receive, send)
            return

        async def watch(message: Any) -> None:
            if message["type"] == "http.response.start" and 200 <= message["status"] < 300 \
                    and self.outages.open:
                self.outages.ended(_outage_key(scope))
            await send(message)

        await self.app(scope, receive, watch)


# what a refused login's 503 says: whose database, and what to fix (the hub sets its own
# as app.state.database_words: its boxes keep what they send, there is no journal to wait in)
DATABASE_WORDS = ("the database", "fix database_url's credentials (and restart the server) "
                  "or give the role its password back; inspections acknowledged meanwhile "
                  "wait in the journal")
# what a database that takes no writes or lost its tables keeps meanwhile, and what makes
# its tables again: the hub sets its own as app.state.database_keeps (it named "the
# database", a journal it has not and "restart the server": session 52)
DATABASE_KEEPS = ("inspections acknowledged meanwhile wait in the journal",
                  "restart the server to make the tables again and apply them")


def database_failed(request: Request, exc: OperationalError) -> DatabaseUnavailable:
    """What a request's database call that failed with ``exc`` (PostgreSQL's login
    refused, or the database unreachable, too slow or locked) answers, logged once per
    outage and cause (the app's ``database_outages``) with the driver's words in one line
    (never a password): the app's handler's, and the hub's box routes', which catch
    their own. Whose database and what to fix: ``app.state.database_words`` (the hub's
    said "unreachable" of a wrong password: session 51)."""
    state = request.app.state
    whose, fix = getattr(state, "database_words", DATABASE_WORDS)
    cause = "refusing the login" if login_refused(exc.orig) else "unreachable"
    outages = getattr(state, "database_outages", None)
    if outages is not None:
        outages.failed(f"{whose} is {cause}", logging.WARNING, "%s %s: %s is %s: %s",
                       request.method, said_path(request.url.path), whose, cause,
                       driver_said(exc.orig)[:300], ends=_outage_key(request.scope))
    if cause == "unreachable" and getattr(exc.orig, "sqlstate", None) in _WAITED_CODES:
        return DatabaseUnavailable(f"{whose} did not answer in time (a lock another session "
                                   "holds, or a statement timeout); retry later")
    return DatabaseUnavailable(database_unavailable(exc.orig, whose, fix))


def add_error_handlers(app: FastAPI) -> None:
    """Install the handlers; errors are counted in ``app.state.metrics.errors``. The
    database's 503s are logged once per outage and cause (and each minute), with their
    count when it ends: a review page polling every few seconds added about a line a
    second to the log for the whole outage (session 50)."""
    outages = OutageLog(log)
    app.state.database_outages = outages
    app.add_middleware(_OutageEnds, outages=outages)

    def whose(request: Request) -> str:
        return str(getattr(request.app.state, "database_words", DATABASE_WORDS)[0])

    def refused(request: Request, cause: str, words: str) -> None:
        said = whose(request)
        outages.failed(f"{said} is {cause}", logging.WARNING,
                       "%s %s: %s is %s: %s", request.method, said_path(request.url.path), said,
                       cause, words, ends=_outage_key(request.scope))

    @app.exception_handler(LinesideError)
    async def lineside_error(request: Request, exc: LinesideError) -> JSONResponse:
        if not gate.answers(request.scope, exc):  # else the gate answers it, and counts it
            app.state.metrics.errors.labels(exc.code).inc()
        wait = retry_after(exc)
        headers = {"Retry-After": str(wait)} if wait is not None else {}
        if exc.status in (408, 413):
            # the rest of the body is unread: close, or the client keeps sending into a
            # connection the server must keep draining
            headers["Connection"] = "close"
        return JSONResponse(error_body(exc.code, exc.message), status_code=exc.status,
                            headers=headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        # FastAPI reads a body as JSON only under application/json or application/*+json
        parsed = kind == "application/json" or (kind.startswith("application/")
                                                 and kind.endswith("+json"))
        body_errors = [e for e in exc.errors() if e.get("loc", ())[:1] == ("body",)]
        if (not parsed and _takes_json(request) and _has_body(request) and body_errors
                and not all(e.get("type") == "missing" and tuple(e.get("loc", ())) == ("body",)
                            for e in body_errors)):  # an empty body: what is missing
            # a JSON route's body sent as text/plain (or without a type) is not JSON to
            # FastAPI: say which type to send, not "Input should be a valid dictionary"
            app.state.metrics.errors.labels("unsupported_media_type").inc()
            return JSONResponse(error_body(
                "unsupported_media_type", f"the body is sent as {kind or 'no content type'}: "
                "this route takes JSON (Content-Type: application/json)"), status_code=415)
        app.state.metrics.errors.labels("invalid_request").inc()
        errors = with_time_hints(_with_key_hints(request, list(exc.errors())))
        return JSONResponse(error_body("invalid_request", describe_validation(errors)),
                            status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {400: "invalid_request", 404: "not_found",  # 400: a body that cannot be parsed
                405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = _unparsed(exc.__cause__) or str(exc.detail)
        # keep the exception's headers: a 405 must say which methods are allowed (Allow)
        return JSONResponse(error_body(code, message), status_code=exc.status_code,
                            headers=exc.headers)

    @app.exception_handler(DataError)
    async def unstorable(request: Request, exc: DataError) -> JSONResponse:
        if not _unstorable(exc):  # a value too long, a bad cast...: the server's own fault
            return internal_error(exc, request.method, request.url.path)
        # a value the request brought that no check caught: the request's fault, a 422 (the
        # database's own words stay in the log: they may quote the statement). What ran
        # before the refused statement may have taken effect: the message does not say
        # that nothing did
        return await lineside_error(request, UnstorableValueError(
            "the database refused a value of this request (a NUL character in text, or a "
            "number out of range); look at the state before sending it again without it"))

    @app.exception_handler(OperationalError)
    async def database_down(request: Request, exc: OperationalError) -> JSONResponse:
        if _disk_full(exc.orig):
            # a full disk was the server's own 500 with an error id on SQLite (and "the
            # database is unreachable" on PostgreSQL): the reviewer could not tell it from a bug
            refused(request, "on a full disk", str(exc.orig).strip()[:300])
            return await lineside_error(request, DatabaseUnavailable(
                f"the disk holding {whose(request)} is full: nothing was saved; retry once "
                "room is made"))
        if isinstance(exc.orig, sqlite3.OperationalError) and "locked" not in str(exc.orig):
            # SQLite's other operational errors (no such table, disk full) are the
            # server's own: a 500 with the details logged under its id
            return internal_error(exc, request.method, request.url.path)
        # the login refused (the password changed or the role dropped under a running
        # server: it said "unreachable", only the log named the login, session 50); else
        # refused, reset, timed out (PostgreSQL), or locked (SQLite): every route says so,
        # as the box routes always did, not a 500 with a traceback per request
        return await lineside_error(request, database_failed(request, exc))

    @app.exception_handler(InternalError)
    async def database_read_only(request: Request, exc: InternalError) -> JSONResponse:
        if getattr(exc.orig, "sqlstate", None) not in _READ_ONLY_CODES:
            return internal_error(exc, request.method, request.url.path)
        # a review while PostgreSQL took no writes was a 500 with a traceback per request
        refused(request, "read-only", str(exc.orig).strip()[:300])
        return await lineside_error(request, DatabaseUnavailable(
            f"{whose(request)} takes no writes now (read-only: a standby, or set so); "
            "nothing was saved, retry later"))

    @app.exception_handler(ProgrammingError)
    async def tables_gone(request: Request, exc: ProgrammingError) -> JSONResponse:
        if getattr(exc.orig, "sqlstate", None) not in _NO_TABLE_CODES:
            return internal_error(exc, request.method, request.url.path)
        # a read after the database was dropped and made again empty was a 500 with a
        # traceback per request; the journal keeps what was acknowledged meanwhile
        refused(request, "without the store's tables",
                str(exc.orig).strip().splitlines()[0][:300])
        kept, again = getattr(request.app.state, "database_keeps", DATABASE_KEEPS)
        return await lineside_error(request, DatabaseUnavailable(
            f"the store's tables are not in {whose(request)} (dropped, or another database "
            f"at that address); {kept}: restore the database, or {again}"))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        # a generic answer with an error id; the details go to the log under that id
        return internal_error(exc, request.method, request.url.path)


def _disk_full(orig: BaseException | None) -> bool:
    """SQLite's SQLITE_FULL or PostgreSQL's disk_full (53100)."""
    if isinstance(orig, sqlite3.Error):
        return getattr(orig, "sqlite_errorname", "") == "SQLITE_FULL"
    return getattr(orig, "sqlstate", None) == "53100"
