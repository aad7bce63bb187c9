"""The fleet hub (``lineside hub``): records from every box in PostgreSQL, images in an
S3-compatible object store, one plant view. No models, no cameras.

- ``config``: :class:`HubSettings`;
- ``app``: :func:`create_hub_app` (the edge server's gate, guard, sessions and error
  answers around the hub's routers);
- ``ingest``: boxes forward inspections (``fleet.protocol.FORWARD``);
- ``images``: the store's images kept in the object store;
- ``tables``: the hub's own tables (per-box cursors).
"""
