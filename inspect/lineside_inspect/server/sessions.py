"""Review sign-in sessions: a random token in the browser's cookie, everything else here.

The cookie never holds an API key: signing in with a key creates a session (the key's
name and role, a CSRF token, an expiry) kept in this process's memory, so signing out
revokes it at once and a restart signs every reviewer out. Sessions are keyed by the
token's sha256: a look-up never compares the secret itself character by character.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from dataclasses import dataclass

from starlette.requests import HTTPConnection

from lineside_inspect.config import Role

SESSION_COOKIE = "lineside_session"  # and the port the browser used: cookie_name()
CSRF_HEADER = "x-csrf-token"
MAX_SESSIONS = 10_000  # only key holders can sign in; this bounds memory all the same
# one key's sessions: its holder signing in again and again ends its own oldest, never
# (through MAX_SESSIONS) every other reviewer's
MAX_SESSIONS_PER_KEY = 100


def cookie_name(request: HTTPConnection) -> str:
    """The session cookie's name for this server as the browser reaches it: the
    ``session_cookie`` setting, else one with the port. Browsers scope cookies by host,
    not port: a box and a hub on one machine (ports 8000 and 8100) shared one cookie, and
    signing in to one signed the other out. So the port in the browser's address is part
    of the name (none for the scheme's default port: behind a proxy that hides it, set
    the name)."""
    configured: str | None = getattr(request.app.state.settings, "session_cookie", None)
    if configured:
        return configured
    port = request.url.port
    return f"{SESSION_COOKIE}_{port}" if port else SESSION_COOKIE


@dataclass(frozen=True)
class Session:
    name: str
    role: Role
    csrf: str
    expires: float  # time.monotonic(): immune to the wall clock being set


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class SessionStore:
    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def create(self, name: str, role: Role) -> tuple[str, Session]:
        """A new session for the key ``name``: (cookie token, session)."""
        token = secrets.token_urlsafe(32)
        session = Session(name, role, secrets.token_urlsafe(32), time.monotonic() + self.ttl_s)
        with self._lock:
            self._purge()
            mine = [k for k, s in self._sessions.items() if s.name == name]
            for k in mine[:max(0, len(mine) - MAX_SESSIONS_PER_KEY + 1)]:  # oldest first
                del self._sessions[k]
            while len(self._sessions) >= MAX_SESSIONS:  # the oldest go first (dicts keep order)
                del self._sessions[next(iter(self._sessions))]
            self._sessions[_digest(token)] = session
        return token, session

    def get(self, token: str) -> Session | None:
        """The live session of ``token``, None when unknown, signed out or expired."""
        key = _digest(token)
        with self._lock:
            session = self._sessions.get(key)
            if session is not None and session.expires <= time.monotonic():
                del self._sessions[key]
                return None
            return session

    def revoke(self, token: str) -> None:
        with self._lock:
            self._sessions.pop(_digest(token), None)

    def __len__(self) -> int:
        with self._lock:
            self._purge()
            return len(self._sessions)

    def _purge(self) -> None:
        now = time.monotonic()
        for key in [k for k, s in self._sessions.items() if s.expires <= now]:
            del self._sessions[key]
