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
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from asyncua import Server, ua
from asyncua.common.callback import CallbackType, ServerItemCallback
from asyncua.crypto import uacrypto
from asyncua.crypto.truststore import TrustStore
from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions
from cryptography import x509

from lineside_inspect.errors import ConfigError
from lineside_inspect.line.config import OpcUaConfig
from lineside_inspect.line.station import PLC_WRITES, TAGS, Changes, PlcWrite, Station, TagValue

log = logging.getLogger("lineside.line.opcua")
# asyncua logs every request at INFO: the server log stays about the line, unless a
# deployment set a level for asyncua itself
if logging.getLogger("asyncua").level == logging.NOTSET:
    logging.getLogger("asyncua").setLevel(logging.WARNING)

VARIANT = {name: getattr(ua.VariantType, kind) for name, kind in TAGS.items()}
APPLICATION_URI = "urn:lineside:server"  # unless the certificate names another


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
        if cfg.certificate is not None and cfg.private_key is not None:
            with _config_error("certificate / private_key"):
                await server.load_certificate(cfg.certificate)
                await server.load_private_key(cfg.private_key)
            await server.set_application_uri(_certificate_uri(cfg.certificate) or APPLICATION_URI)
            server.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt])
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
                else None
            if value is None:
                # a null (some stacks send "" so) is the type's empty value: a null Recipe
                # left the old recipe judging without a fault, and read back null
                value = "" if VARIANT[target[1]] == ua.VariantType.String else False
            self._on_write(target[0], target[1], value)

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
        if server is not None:
            await server.stop()


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


def _certificate_uri(path: str) -> str | None:
    """The application URI a certificate's subjectAltName names (clients check that the
    server's application URI matches its certificate)."""
    data = Path(path).read_bytes()
    try:
        cert = uacrypto.x509_from_der(data) if not data.startswith(b"-----") else \
            x509.load_pem_x509_certificate(data)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except (ValueError, x509.ExtensionNotFound):
        return None
    uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if uris else None
