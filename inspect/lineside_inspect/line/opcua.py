"""The PLC handshake over OPC UA (``asyncua``), on the server's event loop.

Address space: ``Objects/Stations/<camera_id>/<Tag>`` in the namespace ``urn:lineside``
(configurable), node ids ``ns=<index>;s=Stations/<camera_id>/<Tag>``. ``Trigger``,
``ResultAck`` and ``Recipe`` are writable; every other variable is read-only to clients.

Security: on a loopback endpoint without a certificate the one endpoint is unsecured and
anonymous (only processes on this machine can reach it). With ``certificate`` and
``private_key`` it is Basic256Sha256 (sign and encrypt) only, and with
``trusted_certificates`` only clients whose application certificate is in that folder
may open a channel; off loopback all three are required (see ``OpcUaConfig``). The
built-in "admin" user of asyncua, which bypasses access levels, is always disabled.

asyncua itself still opens a channel of security policy None to any client (discovery:
GetEndpoints) and would then create and activate a session on it: with a certificate a
session is activated only on a channel that carried a client certificate, so the None
channel serves discovery and nothing else. RegisterServer (a discovery server's service)
is refused: any peer could rewrite what FindServers answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from asyncua import Server, ua
from asyncua.common.callback import CallbackType, ServerItemCallback
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.crypto.truststore import TrustStore
from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions
from asyncua.server.user_managers import UserManager
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from lineside_inspect.errors import ConfigError
from lineside_inspect.line.config import OpcUaConfig
from lineside_inspect.line.peer_logs import BOUND, bound_peer_logs
from lineside_inspect.line.station import PLC_WRITES, TAGS, Changes, PlcWrite, Station, TagValue

log = logging.getLogger("lineside.line.opcua")
# asyncua logs every request at INFO: the server log stays about the line, unless a
# deployment set a level for asyncua itself
if logging.getLogger("asyncua").level == logging.NOTSET:
    logging.getLogger("asyncua").setLevel(logging.WARNING)

VARIANT = {name: getattr(ua.VariantType, kind) for name, kind in TAGS.items()}
APPLICATION_URI = "urn:lineside:server"  # unless the certificate names another
STOP_S = 2.0  # stop() waits this long for clients to take their last answers, then drops them


def node_id(namespace_index: int, station_id: str, tag: str | None = None) -> ua.NodeId:
    path = f"Stations/{station_id}" if tag is None else f"Stations/{station_id}/{tag}"
    return ua.NodeId(ua.String(path), ua.Int16(namespace_index))


class OpcUaAdapter:
    name = "OPC UA"

    def __init__(self, config: OpcUaConfig) -> None:
        self.config = config
        self.server: Server | None = None
        self.namespace_index = 0
        self._nodes: dict[tuple[str, str], ua.NodeId] = {}
        self._writable: dict[ua.NodeId, tuple[str, str]] = {}
        self._on_write: PlcWrite | None = None

    @property
    def endpoint(self) -> str:
        """The endpoint URL clients connect to (the bound port when 0 was configured)."""
        cfg = self.config
        port = cfg.port
        if self.server is not None and self.server.bserver is not None:
            port = self.server.bserver.port or port
        return f"opc.tcp://{cfg.host}:{port}{_path(cfg.endpoint)}"

    async def start(self, stations: Sequence[Station], on_write: PlcWrite) -> None:
        cfg = self.config
        self._on_write = on_write
        server = Server()
        await server.init()
        server.set_endpoint(cfg.endpoint)
        server.set_server_name("Lineside")
        server.allow_remote_admin(False)  # else user "admin" (any password) writes anything
        server.set_identity_tokens([ua.AnonymousIdentityToken])
        # Lineside is no discovery server: a RegisterServer from anyone (no session needed,
        # on the None channel too) replaced its own FindServers entry and grew without end
        server.iserver.register_server = _no_registration  # type: ignore[method-assign]
        # writes to the PLC's tags are checked for their shape before asyncua stores them
        server.iserver.attribute_service.write = self._checked_write(  # type: ignore[method-assign]
            server.iserver.attribute_service.write)
        if cfg.certificate is not None and cfg.private_key is not None:
            # checked as at configuration (a bad one is one line), read by content (a
            # PEM key named .key was read as DER)
            cert = check_security(cfg, warn=False)
            with _config_error("certificate / private_key"):
                await server.load_certificate(*_content(cfg.certificate))
                key, fmt = _content(cfg.private_key)
                await server.load_private_key(key, format=fmt)
            await server.set_application_uri((cert and _certificate_uri(cert)) or APPLICATION_URI)
            server.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt])
            # asyncua accepts a None channel for discovery and activated anonymous sessions
            # on it: a peer with no certificate wrote Trigger, Recipe and ResultAck
            server.iserver.set_user_manager(_SecureChannelsOnly())
            if cfg.trusted_certificates is not None:
                store = TrustStore([Path(cfg.trusted_certificates)], [])
                with _config_error("trusted_certificates (only .der/.pem certificates)"):
                    await store.load()
                server.set_certificate_validator(CertificateValidator(
                    CertificateValidatorOptions.TIME_RANGE | CertificateValidatorOptions.TRUSTED
                    | CertificateValidatorOptions.PEER_CLIENT, store))
        else:
            await server.set_application_uri(APPLICATION_URI)
            server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        idx = self.namespace_index = await server.register_namespace(cfg.namespace)
        root = await server.nodes.objects.add_object(ua.NodeId(ua.String("Stations"), ua.Int16(idx)),
                                                     ua.QualifiedName("Stations", idx))
        for station in stations:
            obj = await root.add_object(node_id(idx, station.id),
                                        ua.QualifiedName(station.id, idx))
            for tag, value in station.snapshot():
                nid = node_id(idx, station.id, tag)
                var = await obj.add_variable(nid, ua.QualifiedName(tag, idx),
                                             ua.Variant(value, VARIANT[tag]))
                if tag in PLC_WRITES:
                    await var.set_writable()
                    self._writable[nid] = (station.id, tag)
                self._nodes[(station.id, tag)] = nid
        server.subscribe_server_callback(CallbackType.PostWrite, self._post_write)
        await server.start()
        # asyncua quoted a refused write's whole value (a 1 MB string to Trigger): bounded
        bound_peer_logs("asyncua")
        self.server = server
        log.info("OPC UA at %s (namespace %s = ns=%d, %s)", self.endpoint, cfg.namespace, idx,
                 "Basic256Sha256" if cfg.certificate else "anonymous, loopback only")

    async def _post_write(self, event: ServerItemCallback, _dispatcher: Any) -> None:
        """Client writes (only; the server's own writes do not pass here)."""
        if self._on_write is None:
            return
        params: ua.WriteParameters = event.request_params
        for wv, status in zip(params.NodesToWrite, event.response_params or [], strict=False):
            target = self._writable.get(wv.NodeId)
            if target is None or wv.AttributeId != ua.AttributeIds.Value or not status.is_good():
                continue
            value = wv.Value.Value.Value if wv.Value is not None and wv.Value.Value is not None \
                and not _bad(wv.Value) else None
            if value is None:
                # a null (some stacks send "" so) is the type's empty value: a null Recipe
                # left the old recipe judging without a fault, and read back null. So is a
                # value sent with a bad status (OPC UA: the server stores null): its value,
                # of any type, went to the station (a String "0" with Bad_NotConnected
                # started a part)
                value = "" if VARIANT[target[1]] == ua.VariantType.String else False
            self._on_write(target[0], target[1], value)

    def _checked_write(self, write: Any) -> Any:
        """asyncua's attribute write, with a PLC tag's write refused unless its value is a
        scalar written whole: asyncua checks the variant type, not the value rank, and
        ignores an IndexRange (a Boolean array written to Trigger started a part and read
        back as an array; Recipe "xx" at range 0:1 replaced the whole name)."""
        async def checked(params: ua.WriteParameters, *args: Any, **kwargs: Any) -> Any:
            refused = {i: code for i, wv in enumerate(params.NodesToWrite)
                       if (code := self._refusal(wv)) is not None}
            if not refused:
                return await write(params, *args, **kwargs)
            rest = ua.WriteParameters(NodesToWrite=[
                wv for i, wv in enumerate(params.NodesToWrite) if i not in refused])
            done = iter(await write(rest, *args, **kwargs) if rest.NodesToWrite else [])
            return [ua.StatusCode(refused[i]) if i in refused else next(done)
                    for i in range(len(params.NodesToWrite))]
        return checked

    def _refusal(self, wv: ua.WriteValue) -> ua.UInt32 | None:
        if wv.NodeId not in self._writable or wv.AttributeId != ua.AttributeIds.Value:
            return None  # asyncua's own checks (access level, type)
        if wv.IndexRange:
            return ua.UInt32(ua.StatusCodes.BadIndexRangeInvalid)
        variant = wv.Value.Value if wv.Value is not None else None
        if variant is not None and not _bad(wv.Value) and (variant.is_array or variant.Dimensions):
            return ua.UInt32(ua.StatusCodes.BadTypeMismatch)
        return None

    async def write(self, station_id: str, changes: Changes) -> None:
        server = self.server
        if server is None:
            return
        now: Any = dt.datetime.now(dt.UTC)  # asyncua types it as its own DateTime alias
        for tag, value in changes:
            await server.write_attribute_value(
                self._nodes[(station_id, tag)],
                ua.DataValue(ua.Variant(_typed(tag, value), VARIANT[tag]), SourceTimestamp=now,
                             ServerTimestamp=now))

    async def stop(self) -> None:
        server, self.server = self.server, None
        if server is None:
            return
        # asyncua closes each connection gracefully and waits until all are gone: one whose
        # answers its client does not read (a PLC switched off or unplugged mid-subscription:
        # the data waits on TCP's retransmissions, ~15 min; one that stopped reading: for
        # ever) held the stop, and the server's shutdown behind it, until systemd killed it
        # asyncua's stop awaits the task that writes ServerStatus.CurrentTime, which sleeps
        # a second between writes: each stop took up to a second more; it is cancelled
        # first (the address space is in memory: nothing of a write is left half done)
        clock = getattr(server.iserver, "time_task", None)
        if clock is not None:
            clock.cancel()
            await asyncio.wait({clock})
            server.iserver.time_task = None
        stopping = asyncio.ensure_future(server.stop())
        done, _ = await asyncio.wait({stopping}, timeout=STOP_S)
        if not done:
            transports = list(server.iserver.asyncio_transports)
            log.warning("OPC UA: %d client connection(s) still unread after %.0f s: dropped",
                        len(transports), STOP_S)
            for transport in transports:
                transport.abort()
        await stopping
        BOUND.flush("asyncua", due_only=False)  # what the bound held back: counted


class _SecureChannelsOnly(UserManager):
    """With a certificate: a session is activated only on a secured channel, the one that
    carried the client's (validated) certificate; never as "admin"."""

    def get_user(self, iserver: Any, username: str | None = None, password: str | None = None,
                 certificate: Any = None) -> User | None:
        if not certificate:  # the None channel (discovery only): no certificate, b""
            log.warning("OPC UA: a session on an unsecured channel was refused")
            return None
        return User(role=UserRole.User)


def _no_registration(*_args: Any, **_kwargs: Any) -> None:
    from asyncua.common.utils import ServiceError

    raise ServiceError(ua.StatusCodes.BadServiceUnsupported)


def _bad(value: ua.DataValue) -> bool:
    return value.StatusCode is not None and value.StatusCode.is_bad()


@contextlib.contextmanager
def _config_error(what: str) -> Iterator[None]:
    """A file that is no certificate or key is a one-line config error, not a traceback."""
    try:
        yield
    except (ValueError, TypeError, OSError) as exc:
        raise ConfigError(f"line.opcua.{what}: cannot load: {exc}") from None


def _typed(tag: str, value: TagValue) -> TagValue:
    kind = TAGS[tag]
    if kind == "Boolean":
        return bool(value)
    if kind == "String":
        return str(value)
    return int(value)


def _path(endpoint: str) -> str:
    from urllib.parse import urlparse

    return urlparse(endpoint).path or "/"


def _content(path: str) -> tuple[bytes, str | None]:
    """A file's bytes and the format asyncua is to read them in (it goes by the name:
    anything but ``.pem`` was read as DER). PEM wherever its block starts: ``openssl pkcs12``
    exports (and ``openssl x509 -text``) put text before it ("Bag Attributes"), which the
    PEM reader skips; DER is binary and starts with a SEQUENCE."""
    data = Path(path).read_bytes()
    return data, ("pem" if not data.startswith(b"\x30") and b"-----BEGIN" in data else None)


def check_security(cfg: OpcUaConfig, *, warn: bool = True) -> x509.Certificate | None:
    """The certificate, its private key and the trusted certificates, checked when the
    server is configured (before any model, camera or station starts): one line naming
    the setting for what cannot serve Basic256Sha256. It was a 90-line traceback from the
    start-up hooks, and a key of another certificate (or not RSA) started a server every
    PLC timed out on. Returns the certificate (None: none configured)."""
    import os
    import re

    from cryptography.hazmat.primitives import serialization

    if cfg.certificate is None or cfg.private_key is None:
        return None
    try:
        data, fmt = _content(cfg.certificate)
        cert = x509.load_pem_x509_certificate(data) if fmt else x509.load_der_x509_certificate(data)
    except (ValueError, OSError) as exc:
        raise ConfigError(f"line.opcua.certificate: {cfg.certificate} is no certificate "
                          f"(DER or PEM): {exc}") from None
    try:
        data, fmt = _content(cfg.private_key)
        key = serialization.load_pem_private_key(data, None) if fmt else \
            serialization.load_der_private_key(data, None)
    except (ValueError, TypeError, OSError) as exc:
        raise ConfigError(f"line.opcua.private_key: {cfg.private_key} is no unencrypted "
                          f"private key (PEM or DER): {exc}") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ConfigError(f"line.opcua.private_key: Basic256Sha256 needs an RSA key, "
                          f"{cfg.private_key} holds {type(key).__name__.lstrip('_')}")
    public = cert.public_key()
    if not isinstance(public, rsa.RSAPublicKey) \
            or public.public_numbers() != key.public_key().public_numbers():
        raise ConfigError(f"line.opcua.private_key: {cfg.private_key} is not the key of "
                          f"line.opcua.certificate ({cfg.certificate})")
    now = dt.datetime.now(dt.UTC)
    if warn and not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        log.warning("line.opcua.certificate: %s is valid from %s to %s only: PLCs refuse it "
                    "outside that time", cfg.certificate, cert.not_valid_before_utc.date(),
                    cert.not_valid_after_utc.date())
    if warn and os.name == "posix" and Path(cfg.private_key).stat().st_mode & 0o077:
        log.warning("line.opcua.private_key: %s can be read by other users: whoever reads "
                    "it can pass for this server to the PLCs (chmod 600 it)", cfg.private_key)
    if cfg.trusted_certificates is not None:
        folder = Path(cfg.trusted_certificates)
        if not folder.is_dir():
            raise ConfigError(f"line.opcua.trusted_certificates: {folder} is not a folder "
                              "(put the PLCs' certificates in a folder, and name that)")
        # the files asyncua's trust store reads, and how it reads them (by the name)
        found = 0
        for file in sorted(folder.glob("*.*")):
            if not re.match(".*(der|pem)", file.name.lower()):
                continue
            try:
                data = file.read_bytes()
                if file.suffix.lower() == ".pem":
                    x509.load_pem_x509_certificate(data)
                else:
                    x509.load_der_x509_certificate(data)
            except (ValueError, OSError) as exc:
                raise ConfigError(
                    f"line.opcua.trusted_certificates: {file} is read as a "
                    f"{'PEM' if file.suffix.lower() == '.pem' else 'DER'} certificate and is "
                    f"none ({exc}); the folder holds only .der (DER) and .pem (PEM) "
                    "certificates") from None
            found += 1
        if not found:
            raise ConfigError(f"line.opcua.trusted_certificates: {folder} holds no .der or "
                              ".pem certificate: no PLC could connect")
    return cert


def _certificate_uri(cert: x509.Certificate) -> str | None:
    """The application URI a certificate's subjectAltName names (clients check that the
    server's application URI matches its certificate)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except (ValueError, x509.ExtensionNotFound):
        return None
    uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if uris else None
