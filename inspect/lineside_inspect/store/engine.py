"""The store's SQLAlchemy engine: how Lineside connects to its database. SQLite gets its
write-ahead log, full sync and foreign keys, and a log kept small (the disk quota counts
it); PostgreSQL gets bounded waits (connect, a host gone from an open connection, a lock
another session holds), unless the operator's URL or libpq environment sets its own.

Apart from :mod:`lineside_inspect.store.store` so that the read-only checks made before a
store opens (:mod:`lineside_inspect.store.checks`) connect as the store does without
importing the store.
"""

from __future__ import annotations

import os
import re
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine, make_url

# the disk quota (``max_bytes``, :meth:`Store.enforce_retention`). SQLite checkpoints its
# write-ahead log once it holds WAL_CHECKPOINT_PAGES and cuts the file back to that size when
# it starts over, so the log holds little more than the last transaction; the quota counts it
# at no less than WAL_ROOM_PAGES: the frames of a transaction adding an inspection (a page of
# each of its table's 12 B-trees, the outbox's, the database header: 18 measured for one row)
WAL_CHECKPOINT_PAGES = 8
WAL_ROOM_PAGES = 32
WAL_FRAME_HEADER, WAL_HEADER = 24, 32
def _wal_bytes(pages: int, page_size: int) -> int:
    """The size of a SQLite write-ahead log holding ``pages`` frames."""
    return WAL_HEADER + pages * (page_size + WAL_FRAME_HEADER)



CONNECT_TIMEOUT_S = 10  # PostgreSQL (libpq's connect_timeout, seconds)
# PostgreSQL: libpq's parameters that notice a host gone from an open connection
DEAD_HOST_ARGS = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5,
                  "keepalives_count": 4, "tcp_user_timeout": 30_000}
# PostgreSQL: the most a statement waits for a lock another session holds (lock_timeout)
LOCK_TIMEOUT_S = 10.0
# SQLite: the most a statement waits for another connection's lock (sqlite3's timeout,
# its busy handler) before "database is locked"
SQLITE_BUSY_S = 30.0
# PostgreSQL refusing the login: invalid_password, invalid_authorization_specification (no
# such role, a role that may not log in, no pg_hba.conf entry). psycopg sets no sqlstate on
# a connection that failed (libpq gives none before a session), so the server's own words
# (English, as PostgreSQL and libpq write them) are matched too, only these, and only as
# what the server said FATAL (or libpq's fe_sendauth): anywhere in the text, a database
# named "password authentication failed for user x" that is not there was taken for a
# refused login, as was an error of a running session whose words held them (attack
# pass, session 50)
LOGIN_CODES = frozenset({"28P01", "28000"})
# ("<method> authentication failed for user": password, SCRAM's, peer, ident, LDAP, cert)
_LOGIN_WORDS = re.compile(
    r'(?:^|: )(?:FATAL:\s+(?:\w+ authentication failed for user "|no pg_hba\.conf entry for '
    r'|pg_hba\.conf rejects connection |role ".*" (?:is not permitted to log in|does not '
    r'exist)$)|fe_sendauth: no password supplied)', re.MULTILINE)
# what an operator is told (a 503 of the API, the start-up's line): never the driver's
# words alone, which name only the user
LOGIN_REFUSED = ("refused the login (wrong password or no such role, or pg_hba.conf does "
                 "not let this host in)")


def login_refused(orig: BaseException | None) -> bool:
    """Whether a driver's error is PostgreSQL refusing the login (:data:`LOGIN_CODES`):
    the password changed or the role dropped under a running server, or a wrong
    ``database_url`` at start. It was told as "unreachable" (session 50). An error with
    a code is judged by it alone; one without (a connection that failed) by what the
    server said FATAL, not by words anywhere in it."""
    if orig is None:
        return False
    code = getattr(orig, "sqlstate", None)
    if code is not None:
        return code in LOGIN_CODES
    return bool(_LOGIN_WORDS.search(str(orig)))


# one attempt of several in psycopg's message ("Multiple connection attempts failed. All
# failures were:", each line "- host: %r, port: %r, hostaddr: %r: <error>"), its reason
# without libpq's "connection to server at/on socket ... failed:". A repr is quoted '...'
# or, holding a ', "..."; the error is "connection failed: ...", "connection is bad: ..."
# (a Unix socket) or "connection timeout expired" (psycopg's own)
_REPR = r"(?:'(?:[^'\\\n]|\\.)*'|\"(?:[^\"\\\n]|\\.)*\"|None)"
_ATTEMPT = re.compile(
    rf"^- host: (?P<host>{_REPR}), port: (?P<port>{_REPR}), hostaddr: (?P<addr>{_REPR}): "
    r"(?:connection (?:failed|is bad): )?(?:connection to server (?:at|on socket) \"[^\"\n]*\""
    r"(?:, port \S+)? failed: )?(?:FATAL:\s+)?(?P<reason>.*)$")
_ATTEMPTS_HEAD = "\nMultiple connection attempts failed"


def _unquoted(value: str) -> str:
    return "" if value == "None" else value[1:-1]


def driver_said(orig: BaseException | None) -> str:
    """A driver's error as one line: its first, or where psycopg tried several addresses
    (a host that resolves to both ::1 and 127.0.0.1, a list of hosts) each attempt's
    address and reason. The first line alone was the last attempt's: "Connection
    refused" on ::1 beside a refused login on 127.0.0.1 (session 51). Every attempt is
    named: one the pattern does not know (a Unix socket's "connection is bad", a
    timeout, a host quoted "...") is shown as psycopg said it, never left out of the
    count (session 51, adversarial pass). Never a password: the driver's words name
    host, port and user only; whitespace (a newline) is one space."""
    if orig is None:
        return ""
    text = str(orig).strip()
    first = " ".join(text.split("\n", 1)[0].split())

    def where(host: str, port: str, addr: str | None) -> str:
        shown = f"[{host}]" if ":" in host else host
        return f"{shown}:{port}" + (f" ({addr})" if addr and addr != host else "")

    if _ATTEMPTS_HEAD not in text:
        return first or type(orig).__name__
    attempts = []
    for line in text.split(_ATTEMPTS_HEAD, 1)[1].splitlines():
        if not line.startswith("- host: "):
            continue  # (libpq's hint lines, the rest of a path holding a newline)
        m = _ATTEMPT.match(line)
        if m is None:
            attempts.append((" ".join(line[2:].split()), ""))
            continue
        attempts.append((where(_unquoted(m["host"]), _unquoted(m["port"]),
                               _unquoted(m["addr"]) or None),
                         " ".join(m["reason"].split())))
    if not attempts:
        return first or type(orig).__name__
    reasons = dict.fromkeys(reason for _, reason in attempts)
    if len(reasons) == 1 and "" not in reasons:
        return (f"{len(attempts)} attempts ({', '.join(w for w, _ in attempts)}), each: "
                f"{next(iter(reasons))}")
    return "; ".join(f"{where}: {reason}" if reason else where for where, reason in attempts)


def database_unavailable(orig: BaseException | None, whose: str, fix: str) -> str:
    """What a 503 says of a database call that failed with the driver's error ``orig``
    (an OperationalError's): a login PostgreSQL refused (:func:`login_refused`) as such,
    with ``fix``; anything else as unreachable. The edge server's and the hub's routes
    say it alike (the hub said "unreachable" of a wrong password: session 51)."""
    if login_refused(orig):
        return f"{whose} {LOGIN_REFUSED}: {fix}"
    return f"{whose} is unreachable; retry later"


def _operator_set(url: str) -> set[str]:
    """The libpq settings a PostgreSQL URL's operator set: its query's parameters, libpq's
    environment's connect timeout, and ``lock_timeout`` when the URL's ``options`` or
    ``PGOPTIONS`` set it (``-c lock_timeout=5s``)."""
    query = make_url(url).query
    given = set(query)
    if os.environ.get("PGCONNECT_TIMEOUT"):
        given.add("connect_timeout")
    options = query.get("options", "")
    options = " ".join(options) if isinstance(options, tuple) else options
    if "lock_timeout" in f"{options} {os.environ.get('PGOPTIONS', '')}":
        given.add("lock_timeout")
    return given


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False,
                                                     "timeout": SQLITE_BUSY_S})

        @event.listens_for(engine, "connect")
        def _pragmas(conn: Any, _: Any) -> None:
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")  # an acknowledged row survives power loss
            cur.execute("PRAGMA foreign_keys=ON")
            # the log stays small (the quota counts it: see WAL_ROOM_PAGES)
            page = int(cur.execute("PRAGMA page_size").fetchone()[0])
            cur.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
            cur.execute(f"PRAGMA journal_size_limit={_wal_bytes(WAL_CHECKPOINT_PAGES, page)}")
            cur.close()

        return engine
    # a database host that drops packets would hold each connection attempt (a request's
    # thread, a hub's readiness probe) for the kernel's ~2 minutes. A database host gone
    # from an open connection (a pulled cable, a failed-over VM) held the statement in
    # flight, and the writer's apply lock with it, for the kernel's ~15 minutes of
    # retransmissions: libpq's keepalives and TCP_USER_TIMEOUT end it in ~30 s. A live
    # server acknowledges both during a long statement. The operator's own settings win
    # (the URL's parameters, or libpq's PGCONNECT_TIMEOUT): a value passed here would
    # override the environment's, and a substring test took a password holding the word
    given = _operator_set(url)
    args: dict[str, Any] = {k: v for k, v in
                            {"connect_timeout": CONNECT_TIMEOUT_S, **DEAD_HOST_ARGS}.items()
                            if k not in given}
    engine = create_engine(url, pool_pre_ping=True, connect_args=args)
    if "lock_timeout" not in given:
        wait_ms = max(1, int(LOCK_TIMEOUT_S * 1000))

        @event.listens_for(engine, "connect")
        def _lock_timeout(conn: Any, _: Any) -> None:
            # a lock another session holds (a DBA's LOCK TABLE, a long transaction) held
            # the writer's batch for as long as it lasted, with the apply lock: every read,
            # and with a quota every save (the line's verdicts), waited behind it for good.
            # Now the statement fails after LOCK_TIMEOUT_S: the writer retries, the journal
            # keeps the inspections, a request answers 503
            cur = conn.cursor()
            try:
                cur.execute(f"SET lock_timeout = {wait_ms}")
            finally:
                cur.close()
            conn.commit()

    return engine
