"""One exception hierarchy for Lineside.

Every error a user can cause is a :class:`LinesideError`; each subclass carries a
stable ``code`` and the HTTP status the server answers with, so the CLI and the API
report the same problem the same way and never show a traceback for bad input.
"""

from __future__ import annotations

import collections.abc
import difflib
import math
import types
import typing
from dataclasses import dataclass
from typing import Any, Self

ECHO_CHARS = 140  # a full name (128 characters, names.NAME_RE) and its quotes


def echo(value: object) -> str:
    """``value`` as an error message repeats a caller's name or id: ``repr``, cut to
    ``ECHO_CHARS`` characters (a URL may carry kilobytes, which no message should repeat)."""
    text = repr(value)
    if len(text) <= ECHO_CHARS:
        return text
    return f"{text[:ECHO_CHARS - 1]}\u2026 ({len(str(value))} characters)"


class LinesideError(Exception):
    """Base class: a problem the caller can fix, described in one message."""

    code = "lineside_error"
    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def prefixed(self, prefix: str) -> Self:
        """The same error with ``prefix: `` before its message (what was at fault: the
        reference image, a file), to raise in its place."""
        return type(self)(f"{prefix}: {self.message}")


class DatasetError(LinesideError):
    """A dataset that cannot be read, imported or written; ``problems`` lists every finding."""

    code = "invalid_dataset"
    status = 422

    def __init__(self, message: str, problems: list[Problem] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []

    def prefixed(self, prefix: str) -> Self:
        return type(self)(f"{prefix}: {self.message}", self.problems)


class ImageError(LinesideError):
    """An image that is empty, corrupt, too large or of an unsupported type."""

    code = "invalid_image"
    status = 400


class ImageTooLargeError(ImageError):
    code = "image_too_large"
    status = 413


class BodyTooLargeError(LinesideError):
    """A request body over the route's limit (``max_body_bytes`` or ``max_json_bytes``)."""

    code = "body_too_large"
    status = 413


class AnswerTooLargeError(LinesideError):
    """An OIP v2 answer of more values than one response may carry."""

    code = "answer_too_large"
    status = 413


class BodyTimeoutError(LinesideError):
    """A request body that stopped arriving (``body_timeout_s``)."""

    code = "body_timeout"
    status = 408


class UnsupportedMediaError(ImageError):
    code = "unsupported_media_type"
    status = 415


class ReferenceImageError(ImageError):
    """A reference model got no reference image, or one that does not match the frame."""

    code = "invalid_reference"
    status = 422


class PackageError(LinesideError):
    """A model package that is missing, tampered with, or disagrees with its card."""

    code = "invalid_model_package"
    status = 422


class Overloaded(LinesideError):
    """More requests in the system than ``max_concurrency + max_queue``: retry shortly."""

    code = "overloaded"
    status = 503


class DeadlineExceeded(LinesideError):
    """No inference slot came free within the request's deadline."""

    code = "deadline_exceeded"
    status = 503


class Unauthorized(LinesideError):
    """No API key or review session, or an unknown or expired one."""

    code = "unauthorized"
    status = 401


class TooManyFailedSignIns(LinesideError):
    """Too many unknown keys from one address lately (``server/throttle.py``): retry after
    ``retry_after_s`` seconds."""

    code = "too_many_failed_sign_ins"
    status = 429

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def prefixed(self, prefix: str) -> Self:
        return type(self)(f"{prefix}: {self.message}", self.retry_after_s)


class Forbidden(LinesideError):
    """The caller's role may not do this."""

    code = "forbidden"
    status = 403


class BadTensor(LinesideError):
    """An OIP v2 tensor that does not fit the model's input."""

    code = "invalid_tensor"
    status = 400


class CameraUnavailable(LinesideError):
    """Offline camera or no fresh frame in time: never a verdict on a stale frame."""

    code = "camera_unavailable"
    status = 503

    def __init__(self, message: str, health: dict[str, Any]) -> None:
        super().__init__(message)
        self.health = health

    def prefixed(self, prefix: str) -> Self:
        return type(self)(f"{prefix}: {self.message}", self.health)


class InvalidReferenceName(LinesideError):
    """A reference name that breaks the name rule (``names.py``)."""

    code = "invalid_reference_name"
    status = 422


class NotFoundError(LinesideError):
    code = "not_found"
    status = 404


class UnreadableRecord(LinesideError):
    """A stored inspection whose fields do not read as one (a hand-edited row, one an
    older or foreign writer left, a damaged database): its record and a review of it are
    refused naming what is wrong, not a 500; its images are still served."""

    code = "unreadable_inspection"
    status = 422


class UnreadableGateReport(UnreadableRecord):
    """A stored gate report whose text does not read as one (a hand edit, another
    writer's): it admits nothing, and reading it is refused naming it, not a 500."""

    code = "unreadable_gate_report"


class ConfigError(LinesideError):
    code = "invalid_config"
    status = 422


class RecipeDoesNotFitFrame(ConfigError):
    """A recipe whose rules cannot judge the frame given: its regions of interest lie wholly
    outside it, where no defect can count (a ConfigError still, 422 ``invalid_config``; a
    PLC's ``ErrorCode`` 7, recipe not usable). Every such part passed (session 54)."""


class RecipesCannotFollow(ConfigError):
    """A version a recipe following the active version cannot serve, refused activation
    (a ConfigError still, 422 ``invalid_config``; a fleet box takes the version once more
    once an admin activated it, as after a gate refusal, or once its recipes changed:
    session 48)."""


class GateTooLarge(ConfigError):
    """A gate under every recipe (``"recipe": "*"``, a promotion with ``require_gate``)
    that would replay more images than ``lifecycle.gate.max_every_recipe_images`` while
    it holds the one gate lock: refused before anything runs (session 47)."""

    code = "gate_too_large"
    status = 422


class ReviewError(ConfigError):
    """A review the inspection cannot take (a box outside the image, an unknown class,
    a relabel without a box to relabel, a remove_box of the last box). A ConfigError
    still, for whoever catches those."""

    code = "invalid_review"
    status = 422


class RecordError(ConfigError):
    """A forwarded inspection the fleet hub will not store (a field out of range, an
    image that is not what its record says). A ConfigError still, for whoever catches
    those; its own code, so a box's log does not read as a fault of the hub's settings."""

    code = "invalid_record"
    status = 422


def install_hint(extra: str) -> str:
    """How to add an extra: from the package index, or in a checkout (where the package is
    not on an index: ``pip install 'lineside[train]'`` found no distribution)."""
    return (f"pip install 'lineside[{extra}]' (in a checkout: .venv/bin/pip install -e "
            f"'.[{extra}]')")


class MissingExtraError(LinesideError):
    """A command needs an optional dependency group that is not installed."""

    code = "missing_extra"
    status = 500


@dataclass(frozen=True)


class Problem:
    """One finding of validation: where (file, line or field), what is wrong, and which
    image it concerns (``subject``, the image's file name) so ``--skip-invalid`` can drop it."""

    file: str
    location: str
    message: str
    subject: str | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.location}" if self.location else self.file
        return f"{where}: {self.message}"


def retry_after(exc: LinesideError) -> int | None:
    """Seconds the caller should wait before trying again (the ``Retry-After`` header):
    the error's own, else 1 for a busy (429, 503) answer, else None."""
    seconds: int | None = getattr(exc, "retry_after_s", None)
    if seconds is not None:
        return seconds
    return 1 if exc.status in (429, 503) else None


def error_body(code: str, message: str) -> dict[str, Any]:
    """The one error shape of the HTTP API: ``{"error": {"code", "message"}}``. A lone
    surrogate the message repeats from a request (JSON's ``"\\ud800"``) is escaped: it
    cannot be encoded as UTF-8, and the answer itself would fail (a 500)."""
    text = message.encode("utf-8", "backslashreplace").decode("utf-8")
    return {"error": {"code": code, "message": text}}


_BOUNDS = {"less_than", "less_than_equal", "greater_than", "greater_than_equal"}


def _finite(value: object) -> bool:
    try:
        return math.isfinite(float(value))  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return True  # not a number at all: the bound's own words stand


def model_of(annotation: Any) -> Any:
    """The pydantic model a field's annotation holds (itself, or inside ``X | None``,
    ``list[X]``, ``dict[str, X]``), else None."""
    if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
        return annotation
    for arg in typing.get_args(annotation):
        if (found := model_of(arg)) is not None:
            return found
    return None


def _keyed(annotation: Any) -> bool:
    """Whether a field's annotation is a mapping (``dict[str, X]``, maybe ``| None``): its
    items' place in a ``loc`` follows a key of the user's, not a field's name."""
    if typing.get_origin(annotation) in (dict, collections.abc.Mapping):
        return True
    return typing.get_origin(annotation) in (typing.Union, types.UnionType) and any(
        _keyed(arg) for arg in typing.get_args(annotation))


def nearest_keys(schema: Any, loc: tuple[Any, ...]) -> list[str] | None:
    """The keys of the model at ``loc`` in ``schema`` nearest ``loc``'s last part (a key
    given that it does not have), or None where no model is there to name keys from.
    Inside a ``dict[str, Model]`` field the user's own key is passed over to the model of
    its value: a misspelt key there had no hint (session 42)."""
    fields = _fields_at(schema, loc)
    if not fields or not loc:
        return None
    names = [n for n, f in fields.items() if not f.exclude] + \
        [f.alias for f in fields.values() if f.alias]
    return difflib.get_close_matches(str(loc[-1]), names, 3)


def _fields_at(schema: Any, loc: tuple[Any, ...]) -> dict[str, Any] | None:
    """The fields of the model holding ``loc``'s last part in ``schema``, or None where no
    model is there (:func:`nearest_keys`)."""
    model, keyed = schema, False
    for part in loc[:-1]:
        if keyed:  # the user's key of a mapping: its value is the mapping's model
            keyed = False
            continue
        if isinstance(part, int):
            continue  # an item of a list: the list's own model
        field = getattr(model, "model_fields", {}).get(str(part))
        if field is None:
            return None  # a union member's tag: no model to name keys from
        model, keyed = model_of(field.annotation), _keyed(field.annotation)
    if keyed:
        return None  # loc ends on a mapping's key: the user's to name, no field
    return getattr(model, "model_fields", None)


# pydantic's types for a value that is not a time; its own message ("Input should be a
# valid datetime or date, input is too short") says neither the format nor an example
_TIME_ERRORS = {"datetime_from_date_parsing", "datetime_parsing", "datetime_type"}
_TIME_HINT = ("not a time: this {what} takes an ISO 8601 time, such as "
              "2026-12-07T08:00:00Z (without an offset: UTC), or a date, 2026-12-07")


def with_time_hints(errors: list[Any]) -> list[Any]:
    """``errors`` with each time that does not parse (``?since=yesterday``, a body's
    ``"since": "yesterday"``, a year 0 or 99999, an offset of +99:00, a NaN or endless
    number) saying what the field takes, with an example, and why it did not parse
    (pydantic's reason: "month value is outside expected range of 1-12"). The value is
    not echoed. A query's parameter since session 47, a body's field since session 48."""
    out = []
    for e in errors:
        if e.get("type") in _TIME_ERRORS:
            what = "parameter" if tuple(e.get("loc", ()))[:1] == ("query",) else "field"
            reason = (e.get("ctx") or {}).get("error")
            e = {**e, "msg": _TIME_HINT.format(what=what) + (f" ({reason})" if reason else "")}
        out.append(e)
    return out


def missing_key_hint(schema: Any, loc: tuple[Any, ...]) -> str:
    """`` (golden: a golden set's name ...)`` for a pydantic ``missing`` error at ``loc``
    in ``schema``: what the field is, as its description (the API's schema) says it.
    ``POST /v1/models/{name}/promote`` without golden said only "body.golden: Field
    required" (session 47, QA walk)."""
    field = (_fields_at(schema, loc) or {}).get(str(loc[-1])) if loc else None
    description = getattr(field, "description", None)
    return f" ({loc[-1]}: {description})" if description else ""


def unknown_key_hint(schema: Any, loc: tuple[Any, ...]) -> str:
    """`` (no such key; did you mean min_size_px?)`` for a pydantic ``extra_forbidden``
    error at ``loc`` in ``schema``: the keys of the model there nearest the one given.
    A misspelt recipe or server setting said only "Extra inputs are not permitted", where
    the training config named the key meant (session 41, a new user)."""
    near = nearest_keys(schema, loc)
    if near is None:
        return ""
    return f" (no such key; did you mean {' or '.join(near)}?)" if near else " (no such key)"


def describe_validation(errors: list[Any], schema: Any = None) -> str:
    """One line naming every invalid field of a pydantic ``ValidationError.errors()`` (a
    check of the whole document has no field: its message alone, without pydantic's
    "Value error, " prefix). Given the ``schema`` validated, a key it does not have is
    followed by the nearest keys it has."""
    def one(e: Any) -> str:
        msg = str(e["msg"]).removeprefix("Value error, ")
        if schema is not None and e.get("type") == "extra_forbidden" and e["loc"]:
            msg += unknown_key_hint(schema, tuple(e["loc"]))
        value, ctx = e.get("input"), e.get("ctx") or {}
        if e.get("type") == "too_long" and isinstance(value, str) and "max_length" in ctx:
            # a length checked after a validator (PlainLine and its kind): pydantic counts
            # "items"; a text is characters
            msg = f"String should have at most {ctx['max_length']} characters, not {len(value)}"
        elif e.get("type") in _BOUNDS and not _finite(value):
            msg = "Input should be a finite number"  # NaN passed no bound: not "<= 1"
        return f"{'.'.join(str(x) for x in e['loc'])}: {msg}" if e["loc"] else msg

    return "; ".join(one(e) for e in errors)


class DataDirLockedError(LinesideError):
    """Another process (or another store in this one) holds the data folder's lock."""

    code = "data_dir_locked"
    status = 409


class UnstorableValueError(LinesideError):
    """A value the database refused to store (a NUL in PostgreSQL text, a number out of
    its range) that no check before it caught."""

    code = "unstorable_value"
    status = 422


class InvalidUrlError(LinesideError):
    """A request URL whose path or query holds a control character (NUL, CR, LF, ...):
    no name, id or filter of this API has one, and some databases cannot store them; or
    whose query holds bytes that are no UTF-8 (each was read as U+FFFD, two ids as one)."""

    code = "invalid_url"
    status = 400


class ForeignOriginError(LinesideError):
    """A state-changing request sent by a page of another origin (or a cross-site one)."""

    code = "foreign_origin"
    status = 403


class MisdirectedHostError(LinesideError):
    """Without API keys only loopback ``Host`` names are answered (DNS rebinding)."""

    code = "invalid_host"
    status = 421


class CsrfError(LinesideError):
    """A state-changing call signed in by the review cookie without its CSRF token."""

    code = "csrf_failed"
    status = 403


class PathNotAllowedError(LinesideError):
    """A path from a request that lies outside the folders configured for it."""

    code = "path_not_allowed"
    status = 403


class GoldenSetError(LinesideError):
    """A golden set that cannot be made, read or used (lifecycle/golden.py)."""

    code = "invalid_golden_set"
    status = 422


class GateRefused(LinesideError):
    """A model version whose gate failed (or, with ``require_gate``, that was never gated)
    asked to judge parts without an admin's explicit ``force`` and reason."""

    code = "gate_failed"
    status = 409

    def __init__(self, message: str, *, failed: str | None = None) -> None:
        super().__init__(message)
        self.failed = failed  # the failed gate report that refuses it, when that is why


class RecipeBreaksCamera(LinesideError):
    """A recipe put over the API that a configured camera triggers with, whose model needs
    a golden image the camera does not name (or the reverse): every trigger of that camera
    would fail. Nothing was changed."""

    code = "recipe_breaks_camera"
    status = 409


class RecipeNameTaken(LinesideError):
    """A recipe put over the API under a name that differs only in case from one the server
    holds (``DeepPCB`` beside ``deeppcb``): a PLC, a page or a person choosing by name
    would take one product's rules for the other's. Nothing was changed (session 54)."""

    code = "recipe_name_taken"
    status = 409


class RecipeVersionNotRaised(LinesideError):
    """A recipe put over the API with other rules (thresholds, roi, model, ...) than the
    server's recipe of its name, under a version that is not above that one's, or under a
    version that judged before with other rules: two rule sets would share one version,
    and a stored verdict's "recipe X version 3" would no longer say which rules judged it.
    Nothing was changed (session 55)."""

    code = "recipe_version_not_raised"
    status = 409


class ReferenceBreaksCamera(LinesideError):
    """A golden image deleted over the API that a configured camera names: every trigger
    of that camera would fail. Nothing was changed."""

    code = "reference_breaks_camera"
    status = 409


class Busy(LinesideError):
    """A one-at-a-time job (a gate run, a promotion) is already running."""

    code = "busy"
    status = 409


class ReviewConflict(LinesideError):
    """A review sent by someone who had not seen the inspection's latest review: another
    reviewer saved one meanwhile. Nothing was saved; look at it again."""

    code = "review_conflict"
    status = 409


class ObjectStoreUnavailable(LinesideError):
    """The fleet's S3-compatible object store cannot be reached or refused the request."""

    code = "object_store_unavailable"
    status = 503


class ActiveChanged(LinesideError):
    """Another admin made another version active meanwhile (a promotion's gate compared
    the candidate with a version no longer active; a rollback from a version no longer
    active would go back twice): nothing changed; look again."""

    code = "active_changed"
    status = 409


class VersionInUse(LinesideError):
    """A model version asked to be unloaded still judges parts (active, pinned, fused, a
    shadow run, a rollout's way back) or is the one a rollback goes back to."""

    code = "version_in_use"
    status = 409


class DiskUnavailable(LinesideError):
    """A server could not write to its own data folder (a full disk, a quota, an I/O
    error): passing, not the request's fault; nothing was half-stored. Retry when there
    is room (a box retries a model pull by itself)."""

    code = "disk_unavailable"
    status = 503

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno  # the system's, when it came from one


class DamagedObject(LinesideError):
    """An object in the hub's store that the hub wrote cannot be read back as what it
    wrote (changed or cut short in the bucket by hand or by a fault): the hub names it;
    publishing the version again writes it anew."""

    code = "damaged_object"
    status = 409


class DatabaseUnavailable(LinesideError):
    """The hub's database cannot be reached (the box keeps what it sent and retries)."""

    code = "database_unavailable"
    status = 503


class SequenceBehind(LinesideError):
    """A box forwarded an inspection the hub does not hold under a sequence number the hub
    has already passed for that box: the box's outbox went back (its data folder was reset
    or restored, or two boxes share one id). Nothing was stored: storing it would break the
    box's order, skipping it would lose it."""

    code = "sequence_behind"
    status = 409


class InspectionIdTaken(LinesideError):
    """A box forwarded an inspection whose id the hub already holds from another box:
    ids are random, so this is a copied record or a hostile one. Nothing was stored, and
    the other box's record is untouched."""

    code = "inspection_id_taken"
    status = 409


class HubUnavailable(LinesideError):
    """The fleet hub cannot be reached (a box keeps recording and serving meanwhile)."""

    code = "hub_unavailable"
    status = 503


class HubRefused(LinesideError):
    """The fleet hub answered a box's request with a client error (a wrong key, a box id
    that is not the key's, a body it could not take): retrying the same request will not
    help until the box's settings or the hub's are fixed."""

    code = "hub_refused"
    status = 502


class ServerUnreachable(LinesideError):
    """A Lineside server a command reads from (``lineside data pull URL``) cannot be
    reached: a malformed URL, a refused connection, a TLS handshake that fails, a
    timeout. The message names the URL and the reason."""

    code = "server_unreachable"
    status = 503


class SignatureError(LinesideError):
    """A model package whose sha256 or ed25519 signature does not verify."""

    code = "invalid_signature"
    status = 422


class VersionExists(LinesideError):
    """A model version published on the hub with other bytes: a version names one package
    for good (publish a new version instead)."""

    code = "version_exists"
    status = 409


class RemoteInferenceUnavailable(LinesideError):
    """A recipe's remote inference endpoint (OIP v2: Triton, KServe, another Lineside)
    did not answer in time, refused the connection or answered a server error: the
    box keeps serving its other recipes; retry when the endpoint is back."""

    code = "remote_inference_unavailable"
    status = 503


class RemoteInferenceRefused(LinesideError):
    """A recipe's remote inference endpoint answered a client error (a wrong token or
    model name) or outputs that do not fit the model card: retrying will not help until
    the recipe or the endpoint is fixed."""

    code = "remote_inference_refused"
    status = 502


class BenchError(LinesideError):
    """A benchmark that could not finish: a server it started or measured failed, refused
    a request or dropped the connection (the message says which and how)."""

    code = "bench_failed"
    status = 502


class StoreQuotaFull(OSError):
    """The store's own ``store_max_bytes`` is full and nothing in it can be removed: a
    save answers not stored (logged once per period by the store, not per inspection).
    Distinct from the filesystem's own EDQUOT, which is logged on every save."""
