"""``lineside fleet``: sign and publish model packages, assign them to lines.

The private key never leaves the publisher's machine: ``publish`` signs locally and
sends the archive and its signature; the hub stores both, each box verifies.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from lineside_inspect.errors import ConfigError, HubRefused, HubUnavailable, PackageError, echo
from lineside_inspect.fleet.config import check_hub_url, shown_url
from lineside_inspect.redact import hide_secrets

fleet_app = typer.Typer(help="Model distribution to a fleet of boxes (docs/fleet.md).",
                        no_args_is_help=True, rich_markup_mode=None)

Hub = Annotated[str, typer.Option("--hub", help="the hub's base URL, e.g. https://hub.plant:8100")]
Token = Annotated[str | None, typer.Option(
    "--token", envvar="LINESIDE_HUB_TOKEN",
    help="an admin key on the hub (or LINESIDE_HUB_TOKEN)")]


def _call(method: str, url: str, token: str | None, **kw: Any) -> Any:
    headers = dict(kw.pop("headers", {}))
    if token:
        headers["authorization"] = f"Bearer {token}"
    try:
        resp = httpx.request(method, url, headers=headers, timeout=120, **kw)
    except httpx.HTTPError as exc:  # why, too: refused, a name not found, https to http
        raise HubUnavailable(f"hub unreachable at {shown_url(url, limit=200)}: "
                             f"{type(exc).__name__} ({echo(hide_secrets(str(exc))[:200])})"
                             ) from None
    if resp.status_code == 401 and not token:  # a hub with keys; its 401 names a header
        raise HubRefused("hub answered 401: no admin key given: pass --token KEY or set "
                         "LINESIDE_HUB_TOKEN (a key of role admin in the hub's api_keys)")
    if resp.status_code >= 400:
        try:
            err = resp.json()["error"]
            why = f"{err['code']}: {err['message']}"
        except Exception:
            why = resp.reason_phrase
        cls = HubUnavailable if resp.status_code >= 500 else HubRefused
        raise cls(f"hub answered {resp.status_code}: {why}")
    return resp.json()


def hub_url(hub: str) -> str:
    """``--hub`` checked before anything is sent, as a box's ``fleet.hub_url`` is: a bad
    port was an ``InvalidURL`` traceback, a URL without its scheme "hub unreachable:
    UnsupportedProtocol"; a password in it is not echoed (session 51, attacker review)."""
    try:
        check_hub_url(hub)
    except ValueError as exc:
        raise ConfigError(f"--hub {exc}") from None
    return hub.strip().rstrip("/")


def keygen(out: Path) -> tuple[Path, str, str]:
    """A key pair at ``out`` (private, 0600) and ``<out stem>.pub.pem``; the public key's
    path, id and raw base64 form."""
    from lineside_inspect.fleet import signing

    public = out.with_name(out.name.removesuffix(".pem") + ".pub.pem")
    key = signing.generate(out, public)
    return public, key.id, signing.raw_public(key)


def publish(package_dir: Path, hub: str, key_path: Path, token: str | None) -> dict[str, Any]:
    from lineside_inspect.fleet import archive, signing
    from lineside_inspect.fleet.hub.models import SIGNATURE_HEADER
    from lineside_inspect.package import load_package

    hub = hub_url(hub)
    card = load_package(package_dir).card  # a broken package is refused here, not on boxes
    key = signing.load_private_key(key_path)
    data = archive.pack(package_dir)
    digest = archive.sha256_bytes(data)
    sig = signing.sign(key, card.name, card.version, digest)
    url = f"{hub}/fleet/v1/packages/{card.name}/{card.version}"
    result: dict[str, Any] = _call("PUT", url, token, content=data, headers={
        "content-type": "application/gzip", SIGNATURE_HEADER: base64.b64encode(sig).decode()})
    if result.get("sha256") != digest:
        raise PackageError(f"the hub answered sha256 {result.get('sha256')!r} for {digest}")
    return result


def assign(hub: str, line: str, model: str, version: str, token: str | None) -> dict[str, Any]:
    from lineside_inspect.fleet.protocol import NAME_PATTERN

    hub = hub_url(hub)
    for what, value in (("line", line), ("model", model), ("version", version)):
        if not re.fullmatch(NAME_PATTERN, value):
            raise ConfigError(f"{what} {value!r}: 1-64 letters, digits, '_', '.' or '-', "
                              "starting with a letter or digit")
    url = f"{hub}/fleet/v1/lines/{line}/models/{model}"
    result: dict[str, Any] = _call("PUT", url, token, json={"version": version})
    return result


def register(app: typer.Typer, friendly: Any, out: Any) -> None:
    """The ``fleet`` commands on the ``lineside`` app (``friendly``: its error wrapper)."""

    @fleet_app.command("keygen")
    @friendly
    def keygen_cmd(out_path: Annotated[Path, typer.Argument(
            help="private key file to write (PEM); the public key goes beside it as "
                 "NAME.pub.pem")] = Path("lineside-signing.pem")) -> None:
        """Make an ed25519 signing key pair for model packages."""
        public, key_id, raw = keygen(out_path)
        out.print(f"private key {out_path} (keep it off the hub and the boxes)")
        out.print(f"public key  {public} (id {key_id})")
        out.print(f"for a box's fleet.trusted_keys: {raw}")

    @fleet_app.command("publish")
    @friendly
    def publish_cmd(package_dir: Annotated[Path, typer.Argument(help="model package folder")],
                    hub: Hub, key: Annotated[Path, typer.Option("--key", help="private key PEM")],
                    token: Token = None) -> None:
        """Sign a model package with KEY and publish it on the hub."""
        out.print(json.dumps(publish(package_dir, hub, key, token), indent=1))

    @fleet_app.command("assign")
    @friendly
    def assign_cmd(hub: Hub, line: Annotated[str, typer.Option("--line")],
                   model: Annotated[str, typer.Option("--model")],
                   version: Annotated[str, typer.Option("--version")],
                   token: Token = None) -> None:
        """Make LINE's boxes run MODEL at VERSION (a published one)."""
        out.print(json.dumps(assign(hub, line, model, version, token), indent=1))

    app.add_typer(fleet_app, name="fleet")
