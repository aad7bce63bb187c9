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
        self._failed: OrderedDict[str, deque[float]] = OrderedDict()  # per address
        self._networks: OrderedDict[str, list[float]] = OrderedDict()  # per IPv6 /64

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

    def _network_window(self, network: str, now: float) -> list[float]:
        """``[window start, failures]`` of an IPv6 /64: a fixed window, so a /64 costs two
        numbers however many failures it makes (ten times an address's)."""
        window = self._networks.get(network)
        if window is None or now - window[0] >= self.window_s:
            window = self._networks[network] = [now, 0.0]
            while len(self._networks) > self.max_addresses:
                self._networks.popitem(last=False)
        self._networks.move_to_end(network)
        return window

    def _refuse(self, count: int, since: float, now: float, what: str) -> None:
        wait = max(1, math.ceil(since + self.window_s - now))
        raise TooManyFailedSignIns(
            f"too many unknown keys from this {what} ({count} in the last "
            f"{self.window_s:g} s): try again in {wait} s", retry_after_s=wait)

    def check(self, address: str, network: str | None = None) -> None:
        """Raise :class:`TooManyFailedSignIns` while ``address`` (or its IPv6 /64,
        ``network``, at NETWORK_FACTOR times the limit: a /64 is one host's, or a whole
        plant LAN's, where one device with a stale key must not lock out every other) is
        refused."""
        with self._lock:
            now = self.clock()
            times = self._recent(address, now)
            if times is not None and len(times) >= self.failures:
                self._refuse(len(times), times[0], now, "address")
            if network is not None and network in self._networks:
                start, count = self._networks[network]
                if now - start < self.window_s and count >= self.failures * NETWORK_FACTOR:
                    self._refuse(int(count), start, now, "network (/64)")

    def failed(self, address: str, network: str | None = None) -> str | None:
        """Count one unknown key from ``address`` (in ``network``); what this one makes
        refused: "address", "network" (its /64), or None. Addresses and /64s are kept apart, each up
        to ``max_addresses``: new addresses, 300 a minute from each /64, must not push the
        /64s' counts out."""
        with self._lock:
            now = self.clock()
            times = self._recent(address, now)
            if times is None:
                times = self._failed[address] = deque(maxlen=self.failures)
                while len(self._failed) > self.max_addresses:
                    self._failed.popitem(last=False)
            self._failed.move_to_end(address)
            locked = "address" if len(times) == self.failures - 1 else None  # reached now
            times.append(now)
            if network is not None:
                window = self._network_window(network, now)
                window[1] += 1
                if window[1] == self.failures * NETWORK_FACTOR:
                    locked = locked or "network"
            return locked
