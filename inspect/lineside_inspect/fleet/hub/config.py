"""The hub's settings (``lineside hub --config hub.yaml``): where records go (PostgreSQL;
SQLite for a dev hub), the object store images and packages go to, who may call it, and
the limits its HTTP front shares with the edge server (the same gate and guard)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from lineside_inspect.config import (
    MIN_BODY_RATE,
    ApiKeys,
    Settings,
    describe_settings_error,
    drop_empty_api_keys,
    read_config_file,
)
from lineside_inspect.errors import ConfigError
from lineside_inspect.fleet.config import ObjectStoreSettings
from lineside_inspect.store.models import HUB_BOX_ID

# whose database a 503 names, and what fixes a login PostgreSQL refused (the app's
# ``database_words``, read by server.handlers.database_failed; session 51)
HUB_DATABASE_WORDS = ("the hub's database", "fix the hub's database_url credentials (and "
                      "restart the hub) or give the role its password back; boxes keep "
                      "what they forward and send it again")
# what a hub's database that lost its tables keeps meanwhile, and what makes them again (the
# app's ``database_keeps``, read by server.handlers; session 52)
HUB_DATABASE_KEEPS = ("boxes keep what they forward and send it again",
                      "restart the hub to make the tables again")


class HubSettings(BaseSettings):
    """Every field can be set as ``LINESIDE_HUB_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="LINESIDE_HUB_", env_nested_delimiter="__",
                                      extra="forbid")
    host: str = "127.0.0.1"
    port: int = Field(8100, ge=1, le=65535)
    database_url: str = Field(..., description=(
        "SQLAlchemy URL of the hub's records: postgresql+psycopg://... (sqlite:///... for a "
        "dev hub)"))
    objects: ObjectStoreSettings = Field(..., description="images and model packages")
    data_dir: str = Field(..., description=(
        "the hub's own folder: its lock (one hub per folder) and the store's journal"))
    api_keys: ApiKeys = Field(default_factory=list, description=(
        "role box (name = the box id), reviewer and admin keys"))
    insecure: bool = False
    forwarded_allow_ips: list[str] | None = Field(None, description=(
        "peers trusted for X-Forwarded-For/-Proto: an HTTP reverse proxy in front (see "
        "the edge server's setting of the same name)"))
    allowed_hosts: list[str] = Field(default_factory=list)
    cors_origins: list[str] = Field(default_factory=list)
    max_body_bytes: int = Field(64 * 1024 * 1024, gt=0, description=(
        "a forwarded batch (inspections with their images, base64)"))
    max_json_bytes: int = Field(1024 * 1024, gt=0, description=(
        "every other route's body (review batches, status reports, sign-ins)"))
    max_forward_bodies: int = Field(4, ge=1, description=(
        "forwarded batches read and applied at once (each up to max_body_bytes, about 4x "
        "that in memory at peak while parsed): beyond, 503 + Retry-After before the body "
        "is read, and the box retries"))
    body_timeout_s: float = Field(30.0, gt=0, description=(
        "longest wait for the next part of a request body; see also min_body_rate"))
    min_body_rate: float = Field(MIN_BODY_RATE, ge=0, description=(
        "bytes/s a body must average once its first body_timeout_s has passed (else 408 "
        "body_timeout, and the box halves its next batch). A forwarded batch may take "
        "body_timeout_s + its size / this: at the default 8 KiB/s a batch of 8 MiB of "
        "images (11 MB in base64) gets 23 min, and holds a forward place that long. Lower "
        "it for boxes on slower uplinks; 0: no rate, only body_timeout_s between parts"))
    header_timeout_s: float = Field(10.0, gt=0)
    max_connections: int = Field(256, ge=1)
    drain_s: float = Field(0.5, ge=0, le=300, description=(
        "on SIGTERM, /readyz answers 503 this long before the hub stops accepting"))
    session_ttl_s: float = Field(12 * 3600, gt=0)
    session_cookie: str | None = Field(None, pattern=r"^[A-Za-z0-9_-]{1,64}$", description=(
        "the review session cookie's name (see the edge server's setting)"))
    retention_days: float | None = Field(None, gt=0, le=36500, description=(
        "inspections the hub received longer ago than this leave it with their reviews "
        "and images (a reference image with the last inspection pointing at it). None: "
        "the hub keeps everything"))
    retention_interval_s: float = Field(3600.0, gt=0, le=86400, description=(
        "how often the retention runs (first at start-up)"))

    @field_validator("api_keys")
    @classmethod
    def _no_box_named_hub(cls, keys: list[Any]) -> list[Any]:
        # a box key's name is its box id: box "hub"'s inspections and reviews were filed
        # under the hub's own name, its qa and the hub's one reviewer (session 51)
        if any(k.role == "box" and k.name == HUB_BOX_ID for k in keys):
            raise ValueError(f"a box key named {HUB_BOX_ID!r}: that is the hub's own name "
                             "(its reviews are filed under it); name the box key, and the "
                             "box's box_id, otherwise")
        return keys

    def server_settings(self) -> Settings:
        """The edge server's settings the shared HTTP parts read (gate, guard, sessions,
        key lookup): this hub's keys, limits and names; no models, no store of its own."""
        return Settings(
            host=self.host, port=self.port, models=[], api_keys=self.api_keys,
            insecure=self.insecure, allowed_hosts=self.allowed_hosts,
            forwarded_allow_ips=self.forwarded_allow_ips,
            cors_origins=self.cors_origins, max_body_bytes=self.max_body_bytes,
            max_json_bytes=self.max_json_bytes, body_timeout_s=self.body_timeout_s,
            min_body_rate=self.min_body_rate,
            header_timeout_s=self.header_timeout_s, max_connections=self.max_connections,
            drain_s=self.drain_s,
            session_ttl_s=self.session_ttl_s, session_cookie=self.session_cookie,
            data_dir=self.data_dir,
            database_url=self.database_url, store=False, box_id="hub")


def load_hub_settings(config: str | Path | None = None, **overrides: Any) -> HubSettings:
    """Settings from the YAML file (plain ``key`` entries in ``api_keys`` are hashed by the
    setting's validator, a relative ``data_dir`` is taken from the file's folder), then
    environment, then ``overrides`` (None values ignored)."""
    doc: dict[str, Any] = {}
    if config is not None:
        path = Path(config)
        doc = read_config_file(path, "a hub config")
        if doc.get("data_dir") and not Path(str(doc["data_dir"])).is_absolute():
            doc["data_dir"] = str((path.parent / str(doc["data_dir"])).resolve())
    drop_empty_api_keys(doc)
    doc.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return HubSettings(**doc)
    except (ValidationError, SettingsError) as exc:
        raise ConfigError(describe_settings_error(exc, config or "hub settings", "LINESIDE_HUB_",
                                                  overrides, nested="__", file_wins=doc,
                                                  schema=HubSettings)) \
            from None
