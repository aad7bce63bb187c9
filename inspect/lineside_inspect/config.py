"""Server settings: pydantic-settings from ``LINESIDE_*`` environment variables, a YAML
config file, and CLI flags (flags win, then environment, then the file)."""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict, SettingsError

from lineside_inspect.errors import ConfigError, unknown_key_hint
from lineside_inspect.fleet.config import FleetSettings, check_site
from lineside_inspect.lifecycle.config import LifecycleSettings
from lineside_inspect.line.config import MODBUS_BLOCK, MODBUS_MAX_STATIONS, LineSettings
from lineside_inspect.names import Name, OneLine
from lineside_inspect.opencv import MAX_IMAGE_PIXELS
from lineside_inspect.user_files import load_yaml, read_text

# box: an edge box speaking to its hub (fleet/protocol.py); its key's name is its box id
Role = Literal["line", "viewer", "reviewer", "admin", "box"]


class ApiKey(BaseModel):
    """A key is kept only as its sha256; give ``key`` (hashed on load) or ``sha256``."""

    model_config = ConfigDict(extra="forbid")
    # the reviewer of every review the key saves (128 characters in the store and the
    # fleet's review events: a longer name failed each hub-reviews pull naming it)
    name: OneLine = Field(min_length=1, max_length=128)
    role: Role
    sha256: str
    # a hub's box key held to its site and line: otherwise a box may file its inspections
    # and status under any site and line, and read any line's assignment
    site: Annotated[str | None, AfterValidator(check_site)] = Field(None, description=(
        "a hub's box key: the only site this box may name"))
    line: Annotated[str | None, AfterValidator(check_site)] = Field(None, description=(
        "a hub's box key: the only line this box may name"))

    @model_validator(mode="after")
    def _pins_are_a_boxs(self) -> ApiKey:
        if (self.site or self.line) and self.role != "box":
            raise ValueError(f"key {self.name!r}: site and line pin a box key (role box) on "
                             "a hub; this key has role " + repr(self.role))
        return self

    @classmethod
    def from_plain(cls, name: str, role: Role, key: str) -> ApiKey:
        return cls(name=name, role=role, sha256=hash_key(key))


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def hash_plain_key_list(value: Any) -> Any:
    """``api_keys`` with each plain ``key`` entry replaced by its sha256 (a missing name
    becomes ``key<i>``): a key is never kept as given. Runs on every source of the list
    (YAML file, ``LINESIDE_API_KEYS`` JSON, keyword arguments) so each takes the same form."""
    if not isinstance(value, list):
        return value  # pydantic names the type problem
    # a plain key's entry keeps its pins (a hub's box key); any other field was always
    # dropped with the plain key, and a config that has one must keep starting
    return [{**{f: k[f] for f in ("site", "line") if f in k}, "name": k.get("name", f"key{i}"),
             "role": k.get("role"), "sha256": hash_key(str(k["key"]))}
            if isinstance(k, dict) and "key" in k else k
            for i, k in enumerate(value)]


# the api_keys setting of the server and the hub: plain keys hashed whatever their source
ApiKeys = Annotated[list[ApiKey], BeforeValidator(hash_plain_key_list)]


# a box's name in a shared database and in messages; kept in <data_dir>/box_id
BOX_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")


def check_box_id(value: str | None) -> str | None:
    if value is not None and not BOX_ID_RE.fullmatch(value):
        raise ValueError("box_id must be 1-64 letters, digits, '_', '.' or '-', starting with "
                         "a letter or digit")
    return value


# a shift starts at a wall-clock time of the box's zone, "HH:MM" (24 h)
SHIFT_RE = re.compile(r"([01][0-9]|2[0-3]):[0-5][0-9]")


def check_shifts(value: list[str]) -> list[str]:
    bad = [v for v in value if not SHIFT_RE.fullmatch(v)]
    if bad or not value:
        raise ValueError(f"shifts must be start times \"HH:MM\" (24 h), at least one; got {bad or value}")
    if len(set(value)) != len(value):
        raise ValueError(f"shifts must not repeat a start time: {value}")
    return sorted(value)


def check_timezone(value: str | None) -> str | None:
    if value is not None:
        from zoneinfo import ZoneInfo

        try:
            ZoneInfo(value)
        except (ValueError, KeyError, OSError):  # not found is a KeyError; '../x' a ValueError
            raise ValueError(f"unknown time zone {value!r} (an IANA name, e.g. Europe/Berlin)") from None
    return value


def default_data_dir() -> str:
    """The per-user data folder of the XDG base directory spec (a relative
    ``XDG_DATA_HOME`` is ignored, as the spec says), ``lineside/store`` under it."""
    base = os.environ.get("XDG_DATA_HOME", "")
    root = Path(base) if base and Path(base).is_absolute() else Path.home() / ".local" / "share"
    return str(root / "lineside" / "store")


DEVICE_INDEX_MAX = 2**31 - 1  # OpenCV takes a C int


def device_index(source: str) -> int | None:
    """The camera device a source names (plain ASCII digits: "0" is the first), or None
    for a URL, pipeline, file or folder. ``str.isdigit`` alone also took superscript
    digits, which int() then refused."""
    return int(source) if source.isascii() and source.isdigit() else None


# what OpenCV's FFmpeg reader opens from a camera: a source with another scheme is refused
CAMERA_SCHEMES = ("rtsp", "rtsps", "http", "https", "rtmp", "rtmps", "rtp", "udp", "tcp", "srt",
                  "file")


class CameraConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: Name
    source: str = Field(..., description="device index, URL, GStreamer pipeline, video file or folder")
    recipe: str | None = None
    reference: str | None = Field(None, description=(
        "the reference image a reference model compares this camera's frames with: a "
        "name registered in references_dir, or an image file"))
    references: dict[Name, str] = Field(default_factory=dict, description=(
        "per recipe, the golden image of the product that recipe judges (recipe name: "
        "reference name or image file): a PLC switching this camera's recipe switches its "
        "golden with it; a recipe not named here uses `reference`"))
    mode: Literal["triggered", "continuous"] = "triggered"
    # bounded: fps 1e9 took a core on a folder, 1e-300 killed the capture thread, 1e-9
    # slept for 30 years; timeouts under 1 ms meant OpenCV's default (camera review).
    # Finite: NaN was refused as over the upper bound ("fps: ... less than or equal to
    # 240"), which sent the reader looking at the wrong end (session 38)
    rate_hz: float = Field(2.0, ge=0.01, le=100, allow_inf_nan=False, description=(
        "continuous mode: inspections per second"))
    fps: float | None = Field(None, ge=0.01, le=240, allow_inf_nan=False, description=(
        "folder/file sources: playback rate (default: a video file's own, 10 for a folder)"))
    loop: bool = Field(True, description=(
        "folder/file sources: start again at the end; false: play once, then the camera "
        "is stopped"))
    open_timeout_s: float = Field(5.0, ge=0.01, le=300, allow_inf_nan=False)
    read_timeout_s: float = Field(5.0, ge=0.01, le=300, allow_inf_nan=False)
    stale_after_s: float = Field(2.0, gt=0, le=3600, allow_inf_nan=False, description=(
        "no new frame for this long: offline (default 2 s, or 2.5 frame intervals of a "
        "slower fps)"))
    # kept so that configs written for it still load: a trigger never takes a frame from
    # before it (docs/line-integration.md), so there is no fallback to a recent one
    max_frame_age_s: float = Field(0.5, gt=0, description="no longer used: a trigger waits for "
                                   "a frame captured after it")

    @model_validator(mode="after")
    def _stale_after_frames(self) -> CameraConfig:
        # a camera at 0.4 fps went stale between every two frames: online/stale twice a
        # frame on the status page, the metrics and retained MQTT messages
        if self.fps is not None:
            interval = 1 / self.fps
            if "stale_after_s" not in self.model_fields_set:
                self.stale_after_s = max(self.stale_after_s, 2.5 * interval)
            elif self.stale_after_s <= interval:
                # a config that loaded before still starts (a refusal stopped the box after
                # an upgrade), with the limit it needs
                logging.getLogger("lineside").warning(
                    "camera %s: stale_after_s %g is not over its frame interval (%g s at fps "
                    "%g): %g s is used, or it would go stale between every two frames",
                    self.id, self.stale_after_s, interval, self.fps, 2.5 * interval)
                self.stale_after_s = 2.5 * interval
        return self

    def reference_for(self, recipe: str) -> str | None:
        """The golden image this camera's frames are compared with under ``recipe`` (None:
        the camera has none for it, so only a single-image model can judge them)."""
        return self.references.get(recipe, self.reference)

    def reference_names(self) -> set[str]:
        """Every golden image this camera may compare its frames with."""
        return {r for r in (self.reference, *self.references.values()) if r is not None}

    @field_validator("source")
    @classmethod
    def _source_given(cls, value: str) -> str:
        # "" is the working folder as a folder camera (an unset variable in a config): it
        # judged whatever images lay under it, searching it whole
        if not value.strip():
            raise ValueError("must not be empty: a device index, URL, pipeline, file or folder")
        # "-1" was opened as a file of that name, offline for good with "cannot open"; an
        # index past a C int had OpenCV raise its overload list at every retry (mopup, 38)
        if re.fullmatch(r"[+-][0-9]+", value) and not Path(value).exists():
            raise ValueError(f"a device index is plain digits (0 is the first camera): "
                             f"{value!r} is none")
        index = device_index(value)
        if index is not None and index > DEVICE_INDEX_MAX:
            raise ValueError(f"device index {index} is over {DEVICE_INDEX_MAX}")
        scheme, sep, rest = value.partition("://")
        if sep and "!" not in value:  # a URL (a pipeline's properties may hold URLs too)
            # a typo ("htpp://") or a scheme no camera speaks was offline for good, retried
            # every few seconds, with only "cannot open" to go on (camera review, session 38).
            # Only the scheme is named: the rest may hold a password
            if scheme.lower() not in CAMERA_SCHEMES:
                named = f" {scheme!r}" if re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]{0,15}", scheme) else ""
                raise ValueError(f"unknown URL scheme{named}: a camera URL starts with "
                                 f"{', '.join(s + '://' for s in CAMERA_SCHEMES)}")
            if scheme.lower() == "file" and rest.partition("/")[0] not in ("", "localhost"):
                # file://cam/a.avi was the file /a.avi, its "cam/" dropped unsaid
                raise ValueError("a file URL is file:///absolute/path (file://HOST/ names no "
                                 "file here); a relative path is written without file://")
        return value


# bytes/s a body must average after its first body_timeout_s (min_body_rate, edge server
# and hub): 64 kbit/s, under any camera link or box uplink that carries images at all,
# far over a trickle
MIN_BODY_RATE = 8 * 1024


class Settings(BaseSettings):
    """All server settings; every field can be set as ``LINESIDE_<FIELD>``."""

    # LINESIDE_FLEET__TOKEN: one setting of a section (the hub token in a systemd
    # EnvironmentFile) without the rest of that section (see load_settings)
    model_config = SettingsConfigDict(env_prefix="LINESIDE_", extra="forbid",
                                      env_nested_delimiter="__", protected_namespaces=())
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)  # 65536 listened on a port nobody asked for
    models: list[str] = Field(default_factory=lambda: ["models/deeppcb/1"])
    model_roots: list[str] = Field(default_factory=list, description=(
        "folders POST /v1/models may load packages from; default: the folder holding each "
        "configured package's NAME/VERSION folders (models/ for models/deeppcb/1)"))
    keep_loaded: int = Field(3, ge=1, le=100, description=(
        "versions of each model kept in memory (each holds its onnxruntime sessions): "
        "loading one more unloads the oldest that nothing uses. The active version, the one "
        "a rollback goes back to, and versions a recipe pins, a shadow run compares or a "
        "rollout watch may roll back to always stay, so more may be loaded. An unloaded "
        "version's package stays on disk: a rollback to it loads it again"))
    recipes: list[str] = Field(default_factory=list)
    default_recipe: str | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(None, ge=1, description=(
        "onnxruntime intra-op threads of every inference; default: an inference alone uses "
        "every core, and one that overlaps another cores / max_concurrency (on the CPU)"))
    onnx_spinning: bool = Field(False, description=(
        "let onnxruntime's threads spin-wait for work: a little quicker back to back on an "
        "otherwise idle machine, but the spinning takes the cores from everything else the "
        "server runs (HTTP, the store, cameras): off by default"))
    max_body_bytes: int = Field(32 * 1024 * 1024, gt=0)
    max_json_bytes: int = Field(64 * 1024, gt=0, description=(
        "body limit of every route that takes no image (admin, review, login)"))
    max_pixels: int = Field(MAX_IMAGE_PIXELS, gt=0, description=(
        "decoded pixels per image (default: LINESIDE_MAX_IMAGE_PIXELS, else 64 Mpx)"))
    max_concurrency: int = Field(2, ge=1, description="inferences running at once")
    max_queue: int = Field(16, ge=0, description="requests waiting beyond that; then 503")
    max_places_per_key: int | None = Field(None, ge=1, description=(
        "of those max_concurrency + max_queue places, the most one API key may hold at once "
        "(inspections and OIP v2 infers, from admission to answer); beyond it that key gets "
        "503. Default: max(max_concurrency, max_queue), so with the defaults every other key "
        "and the cameras keep max_concurrency places while one key's slow uploads hold the "
        "rest. Without API keys there is no share"))
    request_timeout_s: float = Field(10.0, gt=0)
    header_timeout_s: float = Field(10.0, gt=0, description=(
        "a connection's request headers must arrive complete within this"))
    body_timeout_s: float = Field(10.0, gt=0, description=(
        "longest wait for the next part of a request body; see also min_body_rate"))
    min_body_rate: float = Field(MIN_BODY_RATE, ge=0, description=(
        "bytes/s a request body must average once its first body_timeout_s has passed "
        "(else 408 body_timeout): a trickle of a byte per part would otherwise hold a "
        "request for hours. A body may take body_timeout_s + its size / this: at the "
        "default 8 KiB/s a 400 KB image gets 59 s, a 32 MiB one 68 min. Lower it for "
        "slower links; 0: no rate, only body_timeout_s between parts. An answer the "
        "client reads slower than this over each body_timeout_s (once the server's write "
        "buffer is full, or the answer is complete and not all sent) has its connection "
        "aborted"))
    max_connections: int = Field(256, ge=1, description=(
        "open connections and requests at once; at it, connections holding no request "
        "(headers unfinished, idle) are closed to make room, the longest waiting first; "
        "beyond the requests running, new requests get 503"))
    max_live_views: int = Field(32, ge=1, description=(
        "camera live views (MJPEG streams) open at once; one key at most half of them "
        "(at least 1). Each holds a connection for as long as it is watched: 260 of them "
        "from one viewer key took every connection, /healthz too"))
    drain_s: float = Field(0.5, ge=0, le=300, description=(
        "on SIGTERM, /readyz answers 503 and requests are still served this long before "
        "the server stops accepting: set it above your load balancer's probe period"))
    api_keys: ApiKeys = Field(default_factory=list)
    insecure: bool = False
    forwarded_allow_ips: list[str] | None = Field(None, description=(
        "peers trusted for X-Forwarded-For/-Proto (uvicorn's forwarded_allow_ips): an HTTP "
        "reverse proxy in front, so each client keeps its own address (the sign-in "
        "throttle counts per address). Not given: uvicorn's FORWARDED_ALLOW_IPS "
        "environment variable, else loopback. Empty when nothing on loopback is an HTTP "
        "proxy (a TCP tunnel passes a client's own X-Forwarded-For through); '*' trusts all"))
    cors_origins: list[str] = Field(default_factory=list, description=(
        "other origins (scheme://host[:port]) whose pages may call the API, state changes included"))
    allowed_hosts: list[str] = Field(default_factory=list, description=(
        "without API keys: Host names answered besides loopback ones (e.g. the box's address "
        "when serving keyless with --insecure)"))
    session_ttl_s: float = Field(12 * 3600, gt=0, description="review sign-in lifetime")
    session_cookie: str | None = Field(None, pattern=r"^[A-Za-z0-9_-]{1,64}$", description=(
        "the review session cookie's name; not given: lineside_session_<the port in the "
        "browser's address>. Set it when a reverse proxy hides the port (a box and a hub "
        "behind one host name must not share one cookie)"))
    shifts: Annotated[list[str], AfterValidator(check_shifts)] = Field(
        default_factory=lambda: ["06:00", "14:00", "22:00"], description=(
            "shift start times \"HH:MM\" in shift_timezone: the status page's and dashboard's "
            "current shift and yield per shift"))
    shift_timezone: Annotated[str | None, AfterValidator(check_timezone)] = Field(None, description=(
        "IANA zone the shifts are in, e.g. Europe/Berlin; default: the server's local zone"))
    database_url: str | None = Field(None, description="SQLAlchemy URL; default SQLite in data_dir")
    data_dir: str = Field(default_factory=default_data_dir, description=(
        "the store's folder (images, SQLite database, references); default a per-user data "
        "folder, $XDG_DATA_HOME/lineside/store or ~/.local/share/lineside/store, never the "
        "folder the server was started in"))
    box_id: Annotated[str | None, AfterValidator(check_box_id)] = Field(None, description=(
        "this box's name in a shared database; default: generated once and kept in "
        "<data_dir>/box_id"))
    references_dir: str | None = Field(None, description=(
        "named reference images for reference models; default <data_dir>/references"))
    store: bool = Field(True, description="record inspections (database + images)")
    store_pass_rate: float = Field(0.1, ge=0, le=1, description="share of passes whose image is kept")
    store_max_bytes: int | None = Field(None, gt=0, description=(
        "disk quota of the store: images, reference copies and a SQLite database with its "
        "-wal/-shm files (a PostgreSQL database lives elsewhere and is not counted)"))
    store_max_age_days: float | None = Field(None, gt=0, le=36500, description=(
        "inspections older than this many days are removed with their images (not rows "
        "waiting to be forwarded to a fleet hub); at most "
        "36500 (100 years): leave it unset to keep them until the quota needs room"))
    store_sync_interval_s: float = Field(0.05, gt=0, le=10, description=(
        "the journal is synced (power-loss safe) and applied this long after an inspection "
        "is acknowledged, together with whatever arrived meanwhile"))
    store_apply_interval_s: float = Field(1.0, gt=0, le=60, description=(
        "the synced journal is applied to the database and image files this often (at once "
        "when an inspection carries line-output or fleet events, or a read needs it): "
        "batches keep the database's cost off the inspections' CPU"))
    cameras: list[CameraConfig] = Field(default_factory=list)
    line: LineSettings = Field(default_factory=LineSettings, description=(
        "line outputs: PLC handshake over OPC UA / Modbus TCP, events over MQTT"))
    fleet: FleetSettings = Field(default_factory=FleetSettings, description=(
        "the box's hub: forwarding, review sync, model pulls (docs/fleet.md)"))
    lifecycle: LifecycleSettings = Field(default_factory=LifecycleSettings, description=(
        "model lifecycle: gate allowance, shadow sampling, rollout bounds, capture caps "
        "(docs/lifecycle.md)"))

    @property
    def references_path(self) -> Path:
        return Path(self.references_dir) if self.references_dir else Path(self.data_dir) / "references"

    @property
    def saved_recipes_path(self) -> Path:
        """Where recipes put over the API are kept (recipes/saved.py)."""
        return Path(self.data_dir) / "recipes"

    @property
    def places_per_key(self) -> int:
        """The most places (``max_concurrency + max_queue``) one API key may hold."""
        share = self.max_places_per_key or max(self.max_concurrency, self.max_queue)
        return min(share, self.max_concurrency + self.max_queue)

    @field_validator("cameras")
    @classmethod
    def _camera_ids_once(cls, cameras: list[CameraConfig]) -> list[CameraConfig]:
        # a second camera of one id replaced the first unsaid, and moved every later
        # camera's station block on the PLC (station n is the n-th camera)
        seen: dict[str, int] = {}
        for n, cam in enumerate(cameras):
            if cam.id in seen:
                raise ValueError(f"camera id {cam.id!r} is used twice (cameras.{seen[cam.id]} "
                                 f"and cameras.{n}): each camera needs an id of its own")
            seen[cam.id] = n
        return cameras

    @model_validator(mode="after")
    def _stations_fit_modbus(self) -> Settings:
        # each camera is a station of 16 coils and registers: past the last address the
        # Modbus server did not start, with a library's traceback (plant review, session 51)
        if self.line.modbus is not None and len(self.cameras) > MODBUS_MAX_STATIONS:
            raise ValueError(
                f"line.modbus: {len(self.cameras)} cameras are {len(self.cameras)} stations of "
                f"{MODBUS_BLOCK} addresses, past Modbus address 65535: at most "
                f"{MODBUS_MAX_STATIONS} cameras on one box's Modbus server")
        return self

    @model_validator(mode="after")
    def _gate_needs_store(self) -> Settings:
        if self.lifecycle.gate.require_gate and not self.store:
            raise ValueError("lifecycle.gate.require_gate needs store: true (gate reports are "
                             "kept in the store; without it nothing could be admitted)")
        return self

    def model_root_paths(self) -> list[Path]:
        """``model_roots`` resolved (symlinks too), or the default; never the filesystem root."""
        roots = self.model_roots or [str(Path(m).resolve().parent.parent) for m in self.models]
        resolved = [Path(r).resolve() for r in roots]
        return list(dict.fromkeys(r for r in resolved if r != Path(r.anchor)))

    @property
    def loopback_only(self) -> bool:
        """Whether ``host`` is a loopback address (only this machine can connect)."""
        try:
            return self.host == "localhost" or ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def check_bind(self) -> None:
        """With no API keys the server may only listen on loopback (unless insecure)."""
        if self.api_keys or self.insecure:
            return
        if not self.loopback_only:
            raise ConfigError(
                f"refusing to listen on {self.host} without API keys: configure api_keys "
                "(or LINESIDE_API_KEYS), bind to 127.0.0.1, or pass --insecure"
            )


def read_config_file(path: Path, what: str = "a config") -> dict[str, Any]:
    """A YAML config file as a mapping; unreadable, invalid or not a mapping: ConfigError."""
    text = read_text(path, "config")  # a FIFO, a device or not UTF-8: one line, not a hang
    try:
        doc = load_yaml(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: {what} is a mapping of settings")
    return doc


def drop_empty_api_keys(doc: dict[str, Any]) -> None:
    """An empty ``api_keys`` in a config file (``api_keys:`` with nothing under it reads
    as null) leaves the setting to its default, in place; the keys themselves are hashed
    by the setting's own validator (:data:`ApiKeys`), whatever their source."""
    if not doc.get("api_keys", True):
        doc.pop("api_keys")


def _env_name(prefix: str, loc: tuple[Any, ...], nested: str | None) -> str | None:
    """The environment variable set for the setting at ``loc`` (the deepest one, when
    nested settings may be given one by one), or None when the value is not from there."""
    names = {k.upper() for k in os.environ}
    fields = [str(x) for x in loc if not isinstance(x, int)]
    depth = len(fields) if nested else min(len(fields), 1)
    for n in range(depth, 0, -1):
        name = prefix + (nested or "__").join(fields[:n]).upper()
        if name in names:
            return name
    return None


def _given(doc: dict[str, Any], loc: tuple[Any, ...]) -> bool:
    """Whether the mapping ``doc`` holds a value at ``loc``."""
    node: Any = doc
    for part in loc:
        if isinstance(part, int) or not isinstance(node, dict) or part not in node:
            return isinstance(part, int)  # inside a list: the list itself was given
        node = node[part]
    return True


def describe_settings_error(exc: ValidationError | SettingsError, config: str | Path | None,
                            prefix: str, flags: dict[str, Any], nested: str | None = None,
                            file_wins: dict[str, Any] | None = None, schema: Any = None) -> str:
    """One line naming every invalid setting and where its value came from: a command-line
    flag, the environment variable, or the config file. The environment wins over the
    file unless ``file_wins`` (the file's settings) is given: then the file's own do. Given
    the ``schema`` validated, a key it does not have is followed by the nearest it has."""
    if isinstance(exc, SettingsError):  # a list or mapping in the environment that is not JSON
        m = re.search(r'field "([^"]+)"', str(exc))
        field = m.group(1) if m else ""
        return f"{prefix}{field.upper()}: not valid JSON (a list or mapping setting is given as JSON)"
    by_source: dict[str, list[str]] = {}
    for e in exc.errors():
        loc = tuple(e["loc"])
        msg = str(e["msg"]).removeprefix("Value error, ")
        if schema is not None and e["type"] == "extra_forbidden" and loc:
            msg += unknown_key_hint(schema, loc)
        env = _env_name(prefix, loc, nested) if loc else None
        if file_wins is not None and _given(file_wins, loc):
            env = None
        if loc and flags.get(str(loc[0])) is not None:
            source, where = "the command line", ".".join(str(x) for x in loc)
        elif env is not None:  # the rest of the path inside the variable's value
            source = env
            inner = [str(x) for x in loc[1:]]
            if nested:
                inner = inner[len(env.removeprefix(prefix).split(nested)) - 1:]
            where = ".".join(inner)
        else:
            source, where = str(config or "settings"), ".".join(str(x) for x in loc)
        by_source.setdefault(source, []).append(f"{where}: {msg}" if where else msg)
    return "; ".join(f"{src}: {'; '.join(found)}" for src, found in by_source.items())


def _config_file(base: Path, value: Any) -> Any:
    """A camera's golden image given as a file relative to its config's folder, resolved
    (a registered reference name, or anything else, as it is)."""
    if isinstance(value, str) and value and not Path(value).is_absolute() \
            and (base / value).is_file():
        return str((base / value).resolve())
    return value


def load_settings(config: str | Path | None = None, **overrides: Any) -> Settings:
    """Settings from the YAML file (plain ``key`` entries in ``api_keys`` are hashed here),
    then environment, then ``overrides`` (None values ignored)."""
    doc: dict[str, Any] = {}
    if config is not None:
        path = Path(config)
        doc = read_config_file(path, "a server config")
        base = path.parent
        for key in ("models", "recipes", "model_roots"):
            if key in doc:
                doc[key] = [str((base / p).resolve()) if not Path(p).is_absolute() else p
                            for p in doc[key]]
        for cam in doc.get("cameras") or []:
            src = str(cam.get("source", "")) if isinstance(cam, dict) else ""
            if src and device_index(src) is None and "://" not in src and "!" not in src \
                    and not Path(src).is_absolute() and (base / src).exists():
                cam["source"] = str((base / src).resolve())
            if isinstance(cam, dict) and "reference" in cam:
                cam["reference"] = _config_file(base, cam["reference"])
            if isinstance(cam, dict) and isinstance(cam.get("references"), dict):
                cam["references"] = {k: _config_file(base, v)
                                     for k, v in cam["references"].items()}
        for key in ("data_dir", "references_dir"):
            if doc.get(key) and not Path(doc[key]).is_absolute():
                doc[key] = str((base / doc[key]).resolve())
    drop_empty_api_keys(doc)
    doc.update({k: v for k, v in overrides.items() if v is not None})
    try:
        # the environment's values as given, merged into the file's section by section: a
        # LINESIDE_FLEET__TOKEN (or LINESIDE_FLEET='{"token": ...}') sets the token and
        # keeps the file's hub_url, line and keys (a whole section from the environment
        # replaced the file's: the box stopped forwarding, silently; deploy review)
        merged = _merge(doc, EnvSettingsSource(Settings)())
        merged.update({k: v for k, v in overrides.items() if v is not None})
        return Settings(**merged)
    except (ValidationError, SettingsError) as exc:
        raise ConfigError(describe_settings_error(exc, config, "LINESIDE_", overrides,
                                                  nested="__", schema=Settings)) from None


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``over``'s values on top; mappings in both are merged key by key."""
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged
