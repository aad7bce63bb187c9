"""Settings of the fleet: the ``fleet:`` section of a box's server config (where its hub
is, which site and line it serves, which keys may sign models) and the object store a hub
keeps images and model packages in."""

from __future__ import annotations

import re
from typing import Annotated

import httpx
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr

from lineside_inspect.redact import hide_secrets

# a site or line name: it appears in hub filters and object keys, so it is full-matched
SITE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")


def check_site(value: str | None) -> str | None:
    if value is not None and not SITE_RE.fullmatch(value):
        raise ValueError("site and line names must be 1-64 letters, digits, '_', '.' or '-', "
                         "starting with a letter or digit")
    return value


# a host name as resolvers take it (compose service names carry '_'), an IPv4 or [IPv6]
_ENDPOINT = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_][A-Za-z0-9_.\-]*)(:[0-9]{1,5})?")


def check_endpoint(value: str) -> str:
    if "://" in value:
        raise ValueError(f"{value[:80]!r}: objects.endpoint is host:port without a scheme "
                         "(set secure: true for HTTPS), e.g. 127.0.0.1:8333")
    match = _ENDPOINT.fullmatch(value)
    if match is None or (match.group(2) and not 0 < int(match.group(2)[1:]) < 65536):
        raise ValueError(f"{value[:80]!r} is not host:port (a host name or address, a port; "
                         "no path), e.g. 127.0.0.1:8333")
    return value


def shown_url(value: str, limit: int = 80) -> str:
    """A hub URL as messages and logs show it: its password (or a user alone, a token
    given as one) hidden *before* it is cut to ``limit`` characters (cut first, a password
    whose '@' lay past the cut was shown; attacker review, session 51)."""
    shown = hide_secrets(value)
    if "@" in shown and "://" not in shown:  # user:password@host, no scheme to find it by
        shown = "***@" + shown.rsplit("@", 1)[1]
    return shown if len(shown) <= limit else shown[:limit] + "\u2026"


def check_hub_url(value: str | None) -> str | None:
    """A box's ``fleet.hub_url``, checked when the config loads: one without its scheme
    (``hub.plant:8100``) was taken, and every call to the hub then failed as "hub
    unreachable: UnsupportedProtocol", retried for good (session 51). Nor one httpx takes
    that no call can reach: no host (``https://``), a space in the host, a port past
    65535, a query or fragment (the box's paths were appended after it; session 51,
    attacker review)."""
    if value is None:
        return value
    if not value.lower().startswith(("http://", "https://")):
        raise ValueError(f"{shown_url(value)!r}: give the hub's URL with its scheme, e.g. "
                         "https://hub.plant:8100")
    try:
        url = httpx.URL(value)
    except httpx.InvalidURL as exc:
        raise ValueError(f"{shown_url(value)!r}: not a valid URL "
                         f"({shown_url(str(exc), limit=120)})") from None
    for bad, why in (
            (not url.host, "it names no host"),
            (any(c.isspace() or ord(c) < 32 for c in value.strip()),
             "it holds a space or control character (a URL's own are %-encoded)"),
            (url.port is not None and not 0 < url.port < 0x10000,
             f"port {url.port} is not 1-65535"),
            (bool(url.query or url.fragment) or "?" in value or "#" in value,
             "it holds a query or fragment (a base URL is scheme, host, port and path)")):
        if bad:  # (the first that holds, in this order)
            raise ValueError(f"{shown_url(value)!r}: not a hub's base URL: {why}")
    return value


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ObjectStoreSettings(_Section):
    """An S3-compatible object store (AWS S3, MinIO, Ceph, SeaweedFS) reached with the
    ``minio`` client."""

    endpoint: Annotated[str, AfterValidator(check_endpoint)] = Field(
        ..., description="host:port of the S3 API, e.g. 127.0.0.1:8333 (no scheme: "
        "secure says HTTPS)")
    bucket: str = Field("lineside", pattern=r"[a-z0-9][a-z0-9.\-]{2,62}")
    access_key: SecretStr
    secret_key: SecretStr
    secure: bool = Field(False, description="HTTPS to the object store")
    region: str | None = None
    timeout_s: float = Field(5.0, gt=0, description="connect and read timeout per request")


class FleetSettings(_Section):
    """A box's link to its hub. Without ``hub_url`` the box is on its own (no forwarding,
    no model pulls); it records and serves the same either way."""

    hub_url: Annotated[str | None, AfterValidator(check_hub_url)] = Field(
        None, description="the hub's base URL, e.g. https://hub.plant:8100")
    token: SecretStr | None = Field(None, description="this box's key on the hub (role box)")
    site: Annotated[str | None, AfterValidator(check_site)] = None
    line: Annotated[str | None, AfterValidator(check_site)] = None
    forward_interval_s: float = Field(1.0, gt=0, le=3600, description=(
        "how often the forwarder looks for new records when it has caught up"))
    forward_batch: int = Field(32, ge=1, le=1000, description="inspections per request to the hub")
    timeout_s: float = Field(10.0, gt=0, description="per request to the hub")
    trusted_keys: list[str] = Field(default_factory=list, description=(
        "ed25519 public keys (PEM files or base64 raw keys) whose signatures make a model "
        "package acceptable; none: the box pulls no models"))
    pull_interval_s: float = Field(60.0, gt=0, description="how often assignments are checked")
    max_package_bytes: int = Field(256 * 1024 * 1024, gt=0, description=(
        "the largest package.tar.gz the box downloads (as it comes off the wire); a hub "
        "publishes up to its max_body_bytes, 64 MiB by default. It bounds what a broken "
        "or hostile hub can make the box write at each pull"))
    status_interval_s: float = Field(5.0, gt=0, le=3600, description=(
        "how often the box reports its models, readiness and backlog to the hub"))
    models_dir: str | None = Field(None, description=(
        "where pulled packages are unpacked; default <data_dir>/fleet-models"))
