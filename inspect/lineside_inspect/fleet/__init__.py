"""The fleet: many edge boxes, one plant view (docs/fleet.md).

- ``config``: a box's ``fleet:`` settings and the hub's object store settings;
- ``protocol``: the box <-> hub wire contract (paths, shapes, the idempotency rules);
- ``objects``: the S3-compatible object store (images, model packages) through ``minio``.

The hub keeps records in PostgreSQL and images in the object store; each box keeps
recording locally and forwards when the hub is reachable.
"""
