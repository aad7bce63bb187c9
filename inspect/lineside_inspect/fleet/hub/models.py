"""Model distribution on the hub: published packages in the object store, and which
version each line runs (its assignment) in the hub's database.

Objects (each version immutable once published)::

    packages/<model>/<version>/package.tar.gz   the package folder (fleet/archive.py)
    packages/<model>/<version>/package.sig      ed25519 over its statement (fleet/signing.py)
    packages/<model>/<version>/manifest.json    what it is; written last: "published"

The hub holds no private key and trusts no signature: it stores the publisher's, and
every box verifies it against its own ``fleet.trusted_keys``. It checks what it can
without a key: the archive unpacks under the box's rules into a valid package whose card
names the model and version of the URL, and the signature has a signature's length.

Routes (admin unless said): ``PUT /fleet/v1/packages/{model}/{version}`` (the archive
as the body, the signature base64 in ``X-Lineside-Signature``), ``GET /fleet/v1/packages``,
``PUT``/``DELETE /fleet/v1/lines/{line}/models/{model}``, ``GET
/fleet/v1/lines/{line}/assignment``; for boxes (role box, their own id; admins too)
``protocol.ASSIGNMENT``, ``protocol.PACKAGE`` and ``protocol.SIGNATURE``.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import JSON, Engine, Integer, String, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Mapped, Session, mapped_column

from lineside_inspect.errors import (
    Busy,
    ConfigError,
    DamagedObject,
    DatabaseUnavailable,
    DiskUnavailable,
    Forbidden,
    LinesideError,
    NotFoundError,
    PackageError,
    SignatureError,
    VersionExists,
)
from lineside_inspect.fleet import archive
from lineside_inspect.fleet.hub.config import HUB_DATABASE_WORDS
from lineside_inspect.fleet.hub.pins import check_pinned
from lineside_inspect.fleet.hub.tables import HubBase
from lineside_inspect.fleet.objects import ObjectStore
from lineside_inspect.fleet.protocol import (
    ASSIGNMENT,
    NAME_PATTERN,
    PACKAGE,
    PREFIX,
    SIGNATURE,
    AssignedModel,
    Assignment,
    FleetName,
)
from lineside_inspect.fleet.signing import SIGNATURE_BYTES
from lineside_inspect.names import MAX_CLASS_NAME, MAX_CLASSES
from lineside_inspect.package import ModelCard, load_package, sha256_stream
from lineside_inspect.schemas import Precision
from lineside_inspect.server.deps import Admin, Principal, RoleFirstRoute, authenticate
from lineside_inspect.server.responses import errors, media
from lineside_inspect.store.engine import database_unavailable
from lineside_inspect.store.utc import UTCDateTime

log = logging.getLogger("lineside.hub.models")
router = APIRouter(route_class=RoleFirstRoute, tags=["fleet: models"])
SIGNATURE_HEADER = "X-Lineside-Signature"
_publishing = threading.Lock()
_NAME = re.compile(NAME_PATTERN)
# a manifest is a few hundred bytes, and at most its card's class names (1,000 of 128
# characters, up to 4 bytes each in UTF-8) more: a larger object was not written by the hub
MAX_MANIFEST_BYTES = 64 * 1024 + MAX_CLASSES * (4 * MAX_CLASS_NAME + 4)
_MANIFEST_KEY = re.compile(rf"packages/({NAME_PATTERN})/({NAME_PATTERN})/manifest\.json")
# what a package may unpack to on the hub, in bodies: ONNX weights hardly compress, so a
# real package unpacks to about its archive's size; 1 MB of gzipped zeros unpacked to
# 1 GiB and onnx.load held it all (fleet review)
UNPACKED_PER_BODY = 4


class AssignmentRow(HubBase):
    """One line's assignment: ``models`` is a list of ``AssignedModel`` documents."""

    __tablename__ = "fleet_assignments"

    line: Mapped[str] = mapped_column(String(64), primary_key=True)
    revision: Mapped[int] = mapped_column(Integer)
    models: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_by: Mapped[str] = mapped_column(String(128))


class Manifest(BaseModel):
    # fields a later hub adds are ignored: a manifest is the hub's own writing
    model_config = ConfigDict(extra="ignore", protected_namespaces=())
    name: FleetName
    version: FleetName
    sha256: str = Field(description="of package.tar.gz (what the signature covers)")
    size: int
    graph_sha256: str
    precision: Precision
    class_names: list[str]
    published_at: datetime
    published_by: str


class SetVersion(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: FleetName


def _key(model: str, version: str, leaf: str) -> str:
    if not (_NAME.fullmatch(model) and _NAME.fullmatch(version)):
        raise ConfigError(f"model and version must match {NAME_PATTERN}")
    return f"packages/{model}/{version}/{leaf}"


def _objects(request: Request) -> ObjectStore:
    objects: ObjectStore | None = request.app.state.objects
    if objects is None:
        raise NotFoundError("the hub has not started its object store")
    return objects


def _engine(request: Request) -> Engine:
    store = request.app.state.store
    if store is None:
        raise NotFoundError("the hub has not started its store")
    return store.engine  # type: ignore[no-any-return]


def _box_or_admin(request: Request) -> Principal:
    """A box for its own id (the path's), or an admin for any."""
    who = authenticate(request)
    assert who is not None
    box_id = request.path_params.get("box_id")
    if who.role == "admin" or (who.role == "box" and (box_id is None or who.name == box_id)):
        return who
    if who.role == "box":
        raise Forbidden(f"key {who.name!r} is box {who.name!r}: it may not speak for box "
                        f"{box_id!r}")
    raise Forbidden(f"key {who.name!r} has role {who.role!r}; this needs a box or an admin")


BoxOrAdmin = Annotated[Principal, Depends(_box_or_admin)]


def _checked(*names: str) -> None:
    for n in names:
        if not _NAME.fullmatch(n):
            raise ConfigError(f"{n[:70]!r} is not a name: 1-64 letters, digits, '_', '.' or '-', "
                              "starting with a letter or digit")


# -- publishing ----------------------------------------------------------------------------
@router.put(PREFIX + "/packages/{model}/{version}", status_code=201, responses={
    200: {"model": Manifest, "description": "this very package was published already"},
    **errors(401, 403, 408, 409, 413, 422, 503)}, openapi_extra={
    # the archive is read as a stream (not a parameter FastAPI knows): declared here, so
    # /docs shows it and the fuzzing sends one; as application/octet-stream too, which the
    # hub takes (it reads the archive, not the type) and generated clients can send
    "requestBody": {"content": {t: {"schema": {"type": "string", "format": "binary"}}
                                for t in ("application/gzip", "application/octet-stream")},
                    "required": True}})
async def publish(model: str, version: str, request: Request, response: Response,
                  who: Admin,
                  signature: Annotated[str, Header(alias=SIGNATURE_HEADER, max_length=200)]
                  ) -> Manifest:
    """Publish a signed package version (admin). The body is ``package.tar.gz``; the same
    bytes and signature again change nothing (200 and the same manifest; the archive and
    signature are written again, which repairs them if the bucket lost or changed
    them), other bytes or another signature under a published version are refused
    (409 ``version_exists``): a version names one package for good."""
    _checked(model, version)
    try:
        sig = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        sig = b""
    if len(sig) != SIGNATURE_BYTES:
        raise SignatureError(f"{SIGNATURE_HEADER} must be the {SIGNATURE_BYTES}-byte ed25519 "
                             "signature in base64 (lineside fleet publish makes it)")
    objects = _objects(request)
    hub = request.app.state.hub
    incoming = Path(hub.data_dir) / "incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    try:
        tmp = Path(tempfile.mkdtemp(dir=incoming))
    except OSError as exc:
        raise _disk(exc) from None
    try:
        tgz = tmp / "package.tar.gz"
        try:
            with tgz.open("wb") as f:  # the gate bounds the body (max_body_bytes)
                async for chunk in request.stream():
                    f.write(chunk)
        except OSError as exc:
            raise _disk(exc) from None
        manifest, new = await anyio.to_thread.run_sync(
            lambda: _publish(objects, model, version, tgz, sig, who.name,
                             UNPACKED_PER_BODY * hub.max_body_bytes))
        if not new:
            response.status_code = 200
        return manifest
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _disk(exc: OSError) -> DiskUnavailable:
    return DiskUnavailable(f"the hub could not write the upload to its data folder: "
                           f"{exc.strerror or type(exc).__name__}")


def _publish(objects: ObjectStore, model: str, version: str, tgz: Path, sig: bytes,
             actor: str, max_unpacked: int) -> tuple[Manifest, bool]:
    """The manifest, and whether it is new. One publish at a time: each may unpack and
    load a graph of ``max_unpacked`` bytes, and two of one version at once: one wins,
    whole."""
    from lineside_inspect.package import sha256_file

    with _publishing:
        digest = sha256_file(tgz)
        unpacked = tgz.parent / "package"
        unpacked.mkdir()
        archive.unpack(tgz, unpacked, max_bytes=max_unpacked)
        try:
            card = load_package(unpacked).card
        except LinesideError as exc:  # its message names the hub's folder: the caller's words
            raise type(exc)(exc.message.replace(str(unpacked), "the archive")) from None
        if (card.name, card.version) != (model, version):
            raise PackageError(f"the archive holds {card.name} {card.version}, not {model} "
                               f"{version}")
        return _store(objects, model, version, tgz, sig, actor, digest, card)


def _store(objects: ObjectStore, model: str, version: str, tgz: Path, sig: bytes, actor: str,
           digest: str, card: ModelCard) -> tuple[Manifest, bool]:
    try:
        existing = _manifest(objects, model, version)
    except DamagedObject as exc:
        # what was published is told by its archive, if that is still there: only the
        # same bytes write the version anew (a version names one package for good)
        stored = _stored_digest(objects, _key(model, version, "package.tar.gz"))
        if stored not in (None, digest):
            raise VersionExists(f"{model} {version} is published with other bytes "
                                f"({stored[:12]}…; its manifest is damaged): publish a new "
                                "version") from None
        log.warning("%s; publishing %s %s again over it", exc.message, model, version)
        existing = None
    if existing is not None:
        sig_key = _key(model, version, "package.sig")
        try:
            stored_sig: bytes | None = objects.get(sig_key, max_bytes=1024)
        except (NotFoundError, DamagedObject):
            stored_sig = None
        if existing.sha256 != digest or stored_sig not in (sig, None):
            raise VersionExists(f"{model} {version} is published with other bytes or another "
                                f"signature ({existing.sha256[:12]}…): publish a new version")
        # the same package: written again, which mends an archive or signature the bucket
        # lost or changed (the manifest, unchanged, stays)
        objects.put_file(_key(model, version, "package.tar.gz"), str(tgz), "application/gzip")
        objects.put(sig_key, sig)
        return existing, False
    manifest = Manifest(name=model, version=version, sha256=digest, size=tgz.stat().st_size,
                        graph_sha256=card.sha256, precision=card.precision,
                        class_names=card.class_names, published_at=datetime.now(UTC),
                        published_by=actor)
    objects.put_file(_key(model, version, "package.tar.gz"), str(tgz), "application/gzip")
    objects.put(_key(model, version, "package.sig"), sig)
    objects.put(_key(model, version, "manifest.json"), manifest.model_dump_json().encode(),
                "application/json")
    log.info("published %s %s (%s…) by %s", model, version, digest[:12], actor)
    return manifest, True


def _stored_digest(objects: ObjectStore, key: str) -> str | None:
    """The sha256 of the object at ``key``, read as a stream; None if there is none."""
    try:
        body = objects.open(key)
    except NotFoundError:
        return None
    with body:
        return sha256_stream(body)


def _manifest(objects: ObjectStore, model: str, version: str) -> Manifest | None:
    """The version's manifest; None if it is not published. :class:`DamagedObject` (409,
    naming it) when the bucket holds something the hub would not have written."""
    key = _key(model, version, "manifest.json")
    try:
        manifest = Manifest.model_validate_json(objects.get(key, max_bytes=MAX_MANIFEST_BYTES))
    except NotFoundError:
        return None
    except DamagedObject:
        raise DamagedObject(f"the manifest of {model} {version} in the hub's store is over "
                            f"{MAX_MANIFEST_BYTES} bytes: publish the version again to "
                            "repair it") from None
    except ValidationError as exc:
        raise DamagedObject(f"the manifest of {model} {version} in the hub's store is damaged "
                            f"({exc.errors()[0]['type']}): publish the version again to repair "
                            "it") from None
    if (manifest.name, manifest.version) != (model, version):
        raise DamagedObject(f"the manifest under {model} {version} in the hub's store names "
                            f"{manifest.name} {manifest.version}: publish the version again to "
                            "repair it")
    return manifest


@router.get(PREFIX + "/packages", responses=errors(401, 403, 503))
def list_packages(request: Request, who: Admin) -> list[Manifest]:
    """Every published version (admin). An object under ``packages/`` that is not a
    readable manifest under a valid name is left out and logged: one bad object must not
    hide the rest."""
    objects = _objects(request)
    found = []
    for k in objects.keys("packages/"):
        if not k.endswith("/manifest.json"):
            continue
        match = _MANIFEST_KEY.fullmatch(k)
        if match is None:
            log.warning("object store: %r is not a package's manifest key: left out of the "
                        "list", k[:200])
            continue
        try:
            manifest = _manifest(objects, *match.groups())
        except DamagedObject as exc:
            log.warning("%s: left out of the list", exc.message)
            continue
        if manifest is not None:  # (deleted since it was listed)
            found.append(manifest)
    return found


def _stream(objects: ObjectStore, key: str, media_type: str) -> StreamingResponse:
    body = objects.open(key)  # NotFoundError (404) before the answer starts

    def chunks() -> Iterator[bytes]:
        try:
            while chunk := body.read(1 << 20):
                yield chunk
        finally:
            body.close()

    return StreamingResponse(chunks(), media_type=media_type)


@router.get(PACKAGE, response_class=StreamingResponse, responses={
    **errors(401, 403, 404, 409, 422, 503), **media("the package archive", "application/gzip")})
def get_package(model: str, version: str, request: Request, who: BoxOrAdmin) -> StreamingResponse:
    _checked(model, version)
    objects = _objects(request)
    if _manifest(objects, model, version) is None:  # a half-published version is not served
        raise NotFoundError(f"{model} {version} is not published")
    return _stream(objects, _key(model, version, "package.tar.gz"), "application/gzip")


@router.get(SIGNATURE, response_class=StreamingResponse, responses={
    **errors(401, 403, 404, 409, 422, 503), **media("the 64-byte ed25519 signature",
                                               "application/octet-stream")})
def get_signature(model: str, version: str, request: Request,
                  who: BoxOrAdmin) -> StreamingResponse:
    _checked(model, version)
    objects = _objects(request)
    if _manifest(objects, model, version) is None:  # as the package: published ones only
        raise NotFoundError(f"{model} {version} is not published")
    return _stream(objects, _key(model, version, "package.sig"), "application/octet-stream")


# -- assignments ---------------------------------------------------------------------------
@contextmanager
def _database(line: str) -> Iterator[None]:
    try:
        yield
    except OperationalError as exc:  # unreachable, or gone mid-call: the caller retries;
        # a refused login said as such (session 51)
        said = database_unavailable(exc.orig, *HUB_DATABASE_WORDS)
        raise DatabaseUnavailable(f"{said} (reading or changing line {line}'s "
                                  "assignment)") from None


def _read(engine: Engine, line: str) -> Assignment:
    with _database(line), Session(engine) as s:
        row = s.get(AssignmentRow, line)
        if row is None:
            return Assignment(line=line, revision=0, models=[])
        return Assignment(line=line, revision=row.revision,
                          models=[AssignedModel.model_validate(m) for m in row.models])


def _change(engine: Engine, line: str, model: str, assigned: AssignedModel | None,
            actor: str) -> Assignment:
    """Set (or, with None, remove) one model of a line's assignment; the revision rises.
    Optimistic: the row is written only at the revision it was read at (a new row: only if
    none was made meanwhile), else read again, so two admins at once both land in turn."""
    for _ in range(20):
        current = _read(engine, line)
        models = [m for m in current.models if m.name != model]
        if assigned is not None:
            models.append(assigned)
        models.sort(key=lambda m: m.name)
        if models == current.models:
            return current
        if _write(engine, line, current.revision, [m.model_dump(mode="json") for m in models],
                  actor):
            log.info("line %s: %s %s by %s", line, model,
                     "removed" if assigned is None else f"at {assigned.version}", actor)
            return _read(engine, line)
    raise Busy(f"line {line}: the assignment kept changing under this change; retry")


def _write(engine: Engine, line: str, revision: int, doc: list[dict[str, Any]],
           actor: str) -> bool:
    """Whether the row moved from ``revision`` to the next with ``doc``."""
    now = datetime.now(UTC)
    try:
        with _database(line), Session(engine) as s, s.begin():
            if revision == 0:
                s.add(AssignmentRow(line=line, revision=1, models=doc, updated_at=now,
                                    updated_by=actor))
                return True
            res = s.execute(update(AssignmentRow)
                            .where(AssignmentRow.line == line, AssignmentRow.revision == revision)
                            .values(revision=revision + 1, models=doc, updated_at=now,
                                    updated_by=actor))
            return getattr(res, "rowcount", 0) == 1
    except IntegrityError:  # another admin made the line's row first
        return False


@router.put(PREFIX + "/lines/{line}/models/{model}",
            responses=errors(401, 403, 404, 408, 409, 413, 422, 503))
async def assign(line: str, model: str, body: SetVersion, request: Request,
                 who: Admin) -> Assignment:
    """Make ``line`` run ``model`` at ``version`` (admin); the version must be published."""
    _checked(line, model)
    objects = _objects(request)
    manifest = await anyio.to_thread.run_sync(lambda: _manifest(objects, model, body.version))
    if manifest is None:
        raise NotFoundError(f"{model} {body.version} is not published on this hub")
    assigned = AssignedModel(name=model, version=body.version, sha256=manifest.sha256)
    engine = _engine(request)
    return await anyio.to_thread.run_sync(
        lambda: _change(engine, line, model, assigned, who.name))


@router.delete(PREFIX + "/lines/{line}/models/{model}",
               responses=errors(401, 403, 408, 409, 413, 422, 503))
def unassign(line: str, model: str, request: Request, who: Admin) -> Assignment:
    """Stop assigning ``model`` to ``line`` (admin); boxes keep what they run."""
    _checked(line, model)
    return _change(_engine(request), line, model, None, who.name)


@router.get(PREFIX + "/lines/{line}/assignment", responses=errors(401, 403, 422, 503))
def line_assignment(line: str, request: Request, who: Admin) -> Assignment:
    _checked(line)
    return _read(_engine(request), line)


@router.get(ASSIGNMENT, responses=errors(401, 403, 422, 503))
def box_assignment(box_id: str, request: Request, who: BoxOrAdmin,
                   line: Annotated[str | None, Query(max_length=64)] = None) -> Assignment:
    """What the box's line runs (the box names its ``fleet.line``; none: nothing; a box
    key pinned to a line may read only that line's)."""
    _checked(box_id)
    check_pinned(who, who.site, line, "the assignment asked")
    if line is None:
        return Assignment(line=None, revision=0, models=[])
    _checked(line)
    return _read(_engine(request), line)


def install(app: Any, hub: Any) -> None:
    """The assignments table, made when the hub's store is open (after its start-up), and
    uploads a killed hub left half-read cleared."""

    def start() -> None:
        shutil.rmtree(Path(hub.data_dir) / "incoming", ignore_errors=True)  # cut-short uploads
        store = app.state.store
        if store is not None:
            HubBase.metadata.create_all(store.engine, tables=[AssignmentRow.__table__])  # type: ignore[list-item]

    app.state.on_startup.append(start)

