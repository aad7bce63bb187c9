"""One hub process per database (PostgreSQL): a session advisory lock held while it runs.

Review ids on the hub must grow in commit order (``fleet/hub/reviews.py``): every review
is written under the store's review lock, which is a lock of one process. Two hubs on one
database (a second Deployment replica with a volume of its own, a second compose project,
a test hub pointed at production) each took reviews under their own lock, and a box's
cursor could pass a review that committed later: never sent down. The data folder's lock
(one hub per folder) did not see them: each had a folder of its own. The store's schema
is what they share, so that is what is locked: ``pg_try_advisory_lock(HUB_LOCK_CLASS,
hashtext(current_schema()))`` on a connection of its own (two hubs in two schemas of one
database, ``options=-csearch_path=...``, are two stores and both start).

A second hub stops at start-up in one line (exit 2: ``run_hub`` takes the lock before it
serves; an app made without it takes it as its store opens). The lock goes with its session: a
PostgreSQL restart (or a DBA ending the session) drops it, so a thread looks every
``every_s`` and takes it again on a new connection; if another hub took it meanwhile, an
ERROR says so (once, until it is held again) (the hub goes on serving: stopping it would cost the
boxes' forwarding more than a review sent late).

:meth:`release` waits at most ``release_wait_s`` for a look in flight (a database that holds
the connection open and answers nothing held the hub's shutdown for good: closing the
connection waited for the statement); the watch then closes what it holds when its look
ends, and once release began it keeps no lock it takes (session 51: one taken after
release kept a later hub on the database out for as long as the process lived).
"""

from __future__ import annotations

import contextlib
import logging
import threading

from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError

from lineside_inspect.errors import ConfigError
from lineside_inspect.store.checks import database_address
from lineside_inspect.store.engine import make_engine

log = logging.getLogger("lineside.hub")

HUB_LOCK_CLASS = 0x4C53_4842  # "LSHB": the advisory lock's first key; the second, the schema's
IDLE_END_S = 30  # the lock's session ended by PostgreSQL once idle this long (every_s < it)
_TRY = text("SELECT pg_try_advisory_lock(:cls, hashtext(current_schema())), current_schema()")


class HubDatabaseLock:
    """Held from :meth:`acquire` to :meth:`release`; SQLite URLs hold nothing here (a dev
    hub's database file is in its own data folder, or it is the operator's to keep)."""

    def __init__(self, url: str, every_s: float = 5.0, release_wait_s: float = 5.0) -> None:
        self.url = url
        self.where = database_address(url)[0]  # no user, password or query
        self.every_s = every_s
        self.release_wait_s = release_wait_s
        self.held = False
        self._said: str | None = None  # the other hub's lock said for this schema
        self._conn: Connection | None = None
        self._stop = threading.Event()
        self._looking = threading.Lock()  # held by a look (check) and by release's close
        self._thread: threading.Thread | None = None
        self._engine = make_engine(url) if url.startswith("postgresql") else None

    def _take(self) -> tuple[bool, str]:
        assert self._engine is not None
        conn = self._engine.connect()
        try:
            try:
                # a hub whose host vanished (no FIN) left its session, and the lock, to the
                # server's TCP keepalive (hours by default): idle past this, PostgreSQL
                # ends it. The watch's look every every_s keeps a live one from idling
                conn.execute(text(f"SET idle_session_timeout = '{IDLE_END_S}s'"))
                conn.commit()
            except DBAPIError:  # PostgreSQL before 14: no such setting
                conn.rollback()
            got, schema = conn.execute(_TRY, {"cls": HUB_LOCK_CLASS}).one()
            conn.commit()
        except BaseException:
            conn.close()
            raise
        if got:
            self._conn = conn
        else:
            conn.close()
        return bool(got), str(schema)

    def acquire(self) -> HubDatabaseLock:
        """Take the lock, or :class:`ConfigError` naming the database and what to do."""
        if self._engine is None:
            return self
        got, schema = self._take()
        if not got:
            self._engine.dispose()
            raise ConfigError(
                f"another hub is running on the hub's database {self.where} (schema "
                f"{schema}): one hub process per database, or it could skip reviews a box "
                "should receive; stop the other hub, or give this one a database (or a "
                "schema: options=-csearch_path=SCHEMA) of its own")
        self.held = True
        self._thread = threading.Thread(target=self._watch, name="hub-db-lock", daemon=True)
        self._thread.start()
        return self

    def check(self) -> None:
        """One look: the session alive, or the lock taken again on a new one; none once
        :meth:`release` began, and what it holds then is closed when the look ends."""
        with self._looking:
            try:
                if not self._stop.is_set():
                    self._check()
            finally:
                if self._stop.is_set():  # a lock taken meanwhile is not kept
                    self._close()

    def _check(self) -> None:
        if self._conn is not None:
            try:
                self._conn.execute(text("SELECT 1")).one()
                self._conn.commit()
                return
            except DBAPIError:
                self._drop()
        try:
            got, schema = self._take()
        except DBAPIError:  # the database is down: /readyz and every route say so
            return
        if got:
            log.info("hub: the hub's lock on %s is held again", self.where)
        elif self._said != schema:  # once, until it is held again
            log.error("hub: another hub took the hub's lock on %s (schema %s) while the "
                      "connection holding it was lost: one hub process per database; stop "
                      "one of them", self.where, schema)
        self.held = got
        self._said = None if got else schema

    def _drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(DBAPIError):  # closing a dead connection
                self._conn.invalidate()
                self._conn.close()
            self._conn = None
        if self.held:
            self.held = False
            log.warning("hub: the connection holding the hub's lock on %s was lost; taking "
                        "it again", self.where)

    def _watch(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.check()
            except Exception:  # never the end of the watch
                log.exception("hub: looking at the hub's database lock failed")

    def _close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(DBAPIError):
                self._conn.invalidate()  # its session ends now, and the lock with it
                self._conn.close()
            self._conn = None
        self.held = False

    def release(self) -> None:
        self._stop.set()
        if self._looking.acquire(timeout=self.release_wait_s):
            try:
                self._close()
            finally:
                self._looking.release()
            if self._thread is not None:
                self._thread.join(timeout=self.release_wait_s)
        else:  # the look in flight closes it when it ends (or the process's end does)
            log.warning("hub: the hub's database %s did not answer the lock's look within "
                        "%gs; its session ends when it does, or with this process",
                        self.where, self.release_wait_s)
        if self._engine is not None:
            self._engine.dispose()
        self.held = False
