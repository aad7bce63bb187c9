"""Failed key checks per client address, so a key cannot be guessed at network speed.

Keys are meant to be long random secrets, but a plant may configure a short one, and
nothing else slows a guesser: the API's ``Authorization`` header and the sign-in form
each check one key per request, thousands a second. After :data:`FAILURES` unknown keys
from one address within :data:`WINDOW_S` seconds, that address is refused (429 with
``Retry-After``) until the oldest of them leaves the window, without its key being
checked: a right guess during the refusal is refused too. Unknown or expired session
cookies do not count: they are 256-bit random tokens, and every reviewer's would expire
at once when the server restarts.

Behind a reverse proxy every client has the proxy's address unless the server trusts
its ``X-Forwarded-For`` (the ``forwarded_allow_ips`` setting, loopback by default), and
one guesser would then lock every client out. An IPv6 client counts as its address and,
at ten times the limit, as its /64 (``deps.client_address``). docs/security.md,
"Guessing keys", says what to set.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable

from lineside_inspect.errors import TooManyFailedSignIns

FAILURES = 30  # unknown keys per address within WINDOW_S before it is refused
WINDOW_S = 60.0
MAX_ADDRESSES = 10_000  # addresses followed at once (the least recently failed go first)
NETWORK_FACTOR = 10  # an IPv6 /64's limit, in multiples of one address's


class SignInThrottle:
    def __init__(self, failures: int = FAILURES, window_s: float = WINDOW_S,
                 max_addresses: int = MAX_ADDRESSES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.failures = failures
        self.window_s = window_s
        self.max_addresses = max_addresses
        self.clock = clock
        self._lock = threading.Lock()  # sync routes (the sign-in form) run in threads
        self._failed: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, address: str, now: float) -> deque[float] | None:
        times = self._failed.get(address)
        if times is None:
            return None
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if not times:
            del self._failed[address]
            return None
        return times

    def _keys(self, address: str, network: str | None) -> list[tuple[str, int]]:
        """What one failure counts against, and each one's limit: the address, and an
        IPv6 client's /64 at NETWORK_FACTOR times the limit (a /64 is one host's, or a
        whole plant LAN's, where one device with a stale key must not lock out every
        other)."""
        keys = [(address, self.failures)]
        if network is not None:
            keys.append((network, self.failures * NETWORK_FACTOR))
        return keys

    def check(self, address: str, network: str | None = None) -> None:
        """Raise :class:`TooManyFailedSignIns` while ``address`` (or its IPv6 /64,
        ``network``) is refused."""
        with self._lock:
            now = self.clock()
            for key, limit in self._keys(address, network):
                times = self._recent(key, now)
                if times is not None and len(times) >= limit:
                    wait = max(1, math.ceil(times[0] + self.window_s - now))
                    raise TooManyFailedSignIns(
                        f"too many unknown keys from this address ({len(times)} in the last "
                        f"{self.window_s:g} s): try again in {wait} s", retry_after_s=wait)

    def failed(self, address: str, network: str | None = None) -> None:
        """Count one unknown key from ``address`` (in ``network``)."""
        with self._lock:
            now = self.clock()
            for key, limit in self._keys(address, network):
                times = self._recent(key, now)
                if times is None:
                    times = self._failed[key] = deque(maxlen=limit)
                    while len(self._failed) > self.max_addresses:
                        self._failed.popitem(last=False)
                self._failed.move_to_end(key)
                times.append(now)
