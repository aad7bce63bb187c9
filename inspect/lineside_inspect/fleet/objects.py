"""The hub's object store: images and model packages in an S3-compatible bucket, through
the ``minio`` client (a kept library; no home-made S3 signing).

Keys are made by Lineside, never taken whole from a request: each part is full-matched
before it becomes a key, so a key cannot climb out of its prefix.

A store that refuses (a wrong or rotated key, a bucket gone, a full or read-only store) or
cannot be reached is logged once while it lasts (and each minute, with the count), and
its end with the count (:class:`~lineside_inspect.outage_log.OutageLog`): a refusal was
never logged (every forward a 503, the hub's log silent), and an unreachable store was a
line per call (session 53).
"""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Iterator
from typing import IO, Any

from lineside_inspect.errors import DamagedObject, NotFoundError, ObjectStoreUnavailable
from lineside_inspect.fleet.config import ObjectStoreSettings
from lineside_inspect.names import is_object_key
from lineside_inspect.outage_log import OutageLog

log = logging.getLogger("lineside.hub")


def check_key(key: str) -> str:
    if not is_object_key(key):
        raise ValueError(f"not an object key: {key!r}")
    return key


class ObjectStore:
    """One bucket of an S3-compatible store. Every call raises
    :class:`~lineside_inspect.errors.ObjectStoreUnavailable` when the store cannot be
    reached or refuses, and :class:`~lineside_inspect.errors.NotFoundError` for a missing
    key (on :meth:`get`/:meth:`open`)."""

    def __init__(self, settings: ObjectStoreSettings) -> None:
        import urllib3
        from minio import Minio

        self.settings = settings
        self.bucket = settings.bucket
        # bounded: a store that is down must fail a call in seconds, not hang a forwarder
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=settings.timeout_s, read=settings.timeout_s),
            retries=urllib3.Retry(total=1, backoff_factor=0.1,
                                  status_forcelist=[500, 502, 503, 504]),
            maxsize=8)
        self.client = Minio(settings.endpoint, access_key=settings.access_key.get_secret_value(),
                            secret_key=settings.secret_key.get_secret_value(),
                            secure=settings.secure, region=settings.region, http_client=http)
        self.outages = OutageLog(log)  # refusals and unreachability, said once while they last
        self._unreachable = f"the object store {self.settings.endpoint} is unreachable"
        self._refuses = f"the object store {self.settings.endpoint}/{self.bucket} refuses requests"
        # the operations refused while a refusal lasts ("put", "get": a fixed few): only one
        # of them answering again ends it. A full or read-only store refuses puts and
        # answers gets and stats: any answer said "over", and the next put "refused" again,
        # two lines per forward while it lasted (session 53 review)
        self._refusing: set[str] = set()
        self._refusing_lock = threading.Lock()

    def _refused(self, what: str, code: str) -> None:
        # one cause whatever its code (a wrong key is SignatureDoesNotMatch to a put,
        # AccessDenied to a bucket check): the first one is said
        with self._refusing_lock:
            self._refusing.add(what)
        self.outages.failed(self._refuses, logging.WARNING,
                            "object store %s/%s refused %s: %s (a wrong or rotated key, a "
                            "bucket gone, a full store?); forwarded inspections wait on "
                            "their boxes", self.settings.endpoint, self.bucket, what, code)

    def _answered(self, what: str) -> None:
        """``what`` was answered: the store is reachable, and it no longer refuses if
        ``what`` is one of the operations it refused."""
        if not self.outages.open:
            return
        self.outages.ended("the object store", self._unreachable)
        with self._refusing_lock:
            over = what in self._refusing
            if over:
                self._refusing.clear()
        if over:
            self.outages.ended(f"the object store ({what})", self._refuses)

    def _call(self, what: str, fn: Any, *args: Any, lazy: bool = False, **kw: Any) -> Any:
        """``fn(*args, **kw)``, its failures said and raised as ours. ``lazy``: it returns
        an iterator whose requests are made as it is read (the caller says how it went)."""
        from minio.error import S3Error

        try:
            found = fn(*args, **kw)
        except S3Error as e:
            if e.code in ("NoSuchKey", "NoSuchObject"):  # an answer: the store works
                self._answered(what)
                raise NotFoundError(f"no object {args[1] if len(args) > 1 else ''!s}") from None
            self._refused(what, str(e.code)[:64])
            raise ObjectStoreUnavailable(f"object store refused {what}: {e.code}") from None
        except NotFoundError:
            raise
        except Exception as e:  # connection refused, timeouts, TLS: the store is unreachable
            # the store's address is the hub's business, not a box key's: logged only
            self.outages.failed(self._unreachable, logging.WARNING,
                                "object store %s unreachable during %s: %s",
                                self.settings.endpoint, what, type(e).__name__)
            raise ObjectStoreUnavailable(
                f"the object store is unreachable (during {what}); retry later") from None
        if not lazy:
            self._answered(what)
        return found

    def ensure_bucket(self) -> None:
        if not self._call("bucket check", self.client.bucket_exists, self.bucket):
            self._call("bucket creation", self.client.make_bucket, self.bucket)

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        check_key(key)
        self._call("put", self.client.put_object, self.bucket, key, io.BytesIO(data), len(data),
                   content_type=content_type)

    def put_file(self, key: str, path: str, content_type: str = "application/octet-stream") -> None:
        check_key(key)
        self._call("put", self.client.fput_object, self.bucket, key, path,
                   content_type=content_type)

    def get(self, key: str, max_bytes: int | None = None) -> bytes:
        """The object whole; with ``max_bytes``, :class:`DamagedObject` past it (only that
        much is read: the hub wrote it smaller, so someone else made it larger)."""
        with self.open(key) as f:
            if max_bytes is None:
                return f.read()
            data = f.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise DamagedObject(f"{key} in the object store is over {max_bytes} bytes")
        return data

    def open(self, key: str) -> IO[bytes]:
        """The object as a readable stream (read it whole, then close it)."""
        check_key(key)
        resp = self._call("get", self.client.get_object, self.bucket, key)
        return io.BufferedReader(_Body(resp))

    def exists(self, key: str) -> bool:
        check_key(key)
        try:
            self._call("stat", self.client.stat_object, self.bucket, key)
        except NotFoundError:
            return False
        return True

    def delete(self, key: str) -> None:
        check_key(key)
        self._call("delete", self.client.remove_object, self.bucket, key)

    def delete_many(self, keys: list[str]) -> list[str]:
        """Delete ``keys`` in batched requests (a missing one is no error); the keys the
        store would not delete."""
        from minio.deleteobjects import DeleteObject

        for key in keys:
            check_key(key)
        errors = self._call("delete", self.client.remove_objects, self.bucket,
                            [DeleteObject(k) for k in keys], lazy=True)
        try:  # lazy: the requests are made while the errors are read
            left = [e.name for e in errors]
        except Exception as e:
            self.outages.failed(self._unreachable, logging.WARNING,
                                "object store %s: deleting %d objects failed: %s",
                                self.settings.endpoint, len(keys), type(e).__name__)
            raise ObjectStoreUnavailable("the object store is unreachable (during delete); "
                                         "retry later") from None
        self._answered("delete")
        return left

    def keys(self, prefix: str = "") -> Iterator[str]:
        from minio.error import S3Error

        if prefix:
            check_key(prefix.rstrip("/"))
        objs = self._call("list", self.client.list_objects, self.bucket, prefix=prefix,
                          recursive=True, lazy=True)
        try:
            for o in objs:
                yield o.object_name
        except S3Error as e:  # a wrong key, a missing bucket: named, as put and get name it
            self._refused("list", str(e.code)[:64])
            raise ObjectStoreUnavailable(f"object store refused list: {e.code}") from None
        except Exception as e:
            raise ObjectStoreUnavailable(f"object store list failed: {type(e).__name__}") from None
        self._answered("list")


class _Body(io.RawIOBase):
    """A minio response as a file: closing it releases the connection."""

    def __init__(self, resp: Any) -> None:
        self.resp = resp

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        try:
            data = self.resp.read(len(b))
        except Exception as e:
            raise ObjectStoreUnavailable(f"object store read failed: {type(e).__name__}") from None
        b[:len(data)] = data
        return len(data)

    def read(self, size: int = -1) -> bytes:  # type: ignore[override]
        try:
            return self.resp.read() if size is None or size < 0 else self.resp.read(size)
        except Exception as e:
            raise ObjectStoreUnavailable(f"object store read failed: {type(e).__name__}") from None

    def close(self) -> None:
        if not self.closed:
            self.resp.close()
            self.resp.release_conn()
        super().close()
