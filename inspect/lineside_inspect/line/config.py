"""Settings of the line outputs: the ``line:`` section of the server config."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from lineside_inspect.names import Name
from lineside_inspect.redact import hide_secrets


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


def is_loopback(host: str | None) -> bool:
    """Whether ``host`` names this machine only (127.0.0.0/8, ::1 or ``localhost``)."""
    if host is None:
        return False
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# what an OPC UA endpoint path may hold: RFC 3986's unreserved characters and '/'
_ENDPOINT_PATH_RE = re.compile(r"[A-Za-z0-9._~/-]*")


class OpcUaConfig(_Section):
    """The OPC UA server of the PLC handshake (see docs/line-integration.md).

    Anonymous access without security is offered only on a loopback endpoint; any other
    address needs the server's ``certificate`` and ``private_key`` (Basic256Sha256,
    sign and encrypt) and ``trusted_certificates``, the folder of the client (PLC, SCADA)
    application certificates allowed to connect."""

    endpoint: str = Field("opc.tcp://127.0.0.1:4840/lineside/", description=(
        "opc.tcp://HOST:PORT/PATH the server listens on and announces"))
    namespace: str = Field("urn:lineside", min_length=1, description="namespace URI of the station nodes")
    certificate: str | None = Field(None, description=(
        "the server's application certificate (DER or PEM): turns on Basic256Sha256 and "
        "turns off the unsecured endpoint"))
    private_key: str | None = Field(None, description="its private key (PEM)")
    trusted_certificates: str | None = Field(None, description=(
        "folder of client certificates (.der/.pem) allowed to connect; required off loopback"))

    @model_validator(mode="after")
    def _secure_off_loopback(self) -> OpcUaConfig:
        url = urlparse(self.endpoint)
        if url.scheme != "opc.tcp" or not url.hostname:
            # (its user and password, if one was written, not repeated)
            raise ValueError("endpoint must be opc.tcp://HOST:PORT/PATH, not "
                             f"{hide_secrets(self.endpoint)!r}")
        # the server announces the URL as written (GetEndpoints), and a PLC must match its
        # EndpointUrl: a space, query or fragment made one no client could name, and a
        # user:password was sent to anyone asking (mopup, session 38). Looked at before
        # the port, whose refusal quotes the endpoint (a bad port repeated the password)
        if url.username is not None or url.password is not None:
            raise ValueError("endpoint must be plain opc.tcp://HOST:PORT/PATH: no user or "
                             "password (OPC UA clients authenticate by certificate)")
        try:
            url.port  # noqa: B018 - parses the port (raises on a bad one)
        except ValueError:
            raise ValueError(f"endpoint {hide_secrets(self.endpoint)!r} has an invalid "
                             "port") from None
        # all after HOST:PORT, as written (looked for after the scheme: a host "opc" with
        # no port was found in "opc.tcp" itself, and its path refused; late review, 38)
        path = self.endpoint.partition("://")[2].partition(url.netloc)[2]
        # (urlparse drops tabs and newlines, so they are looked for in the text itself)
        if not _ENDPOINT_PATH_RE.fullmatch(path) or not self.endpoint.isprintable() \
                or " " in self.endpoint:
            raise ValueError(f"endpoint path must be plain (letters, digits, . _ ~ - /), with "
                             f"no space, ';', query (?) or fragment (#): not {path!r}")
        if (self.certificate is None) != (self.private_key is None):
            raise ValueError("certificate and private_key go together: give both or neither")
        if not is_loopback(url.hostname) and (self.certificate is None
                                              or self.trusted_certificates is None):
            raise ValueError(
                f"refusing an OPC UA endpoint on {url.hostname} without security: anonymous "
                "access is only allowed on loopback (127.0.0.1); give certificate, private_key "
                "and trusted_certificates (the PLC's certificates), or bind to 127.0.0.1")
        for name in ("certificate", "private_key", "trusted_certificates"):
            value = getattr(self, name)
            if value is not None and not Path(value).exists():
                raise ValueError(f"{name}: {value} does not exist")
        return self

    @property
    def host(self) -> str:
        return urlparse(self.endpoint).hostname or ""

    @property
    def port(self) -> int:
        return urlparse(self.endpoint).port or 4840


MODBUS_BLOCK = 16  # coils and holding registers per station (line/modbus.py)
# station n owns addresses 16n..16n+15, and a Modbus address is 0..65535: 4096 stations
MODBUS_MAX_STATIONS = 0x10000 // MODBUS_BLOCK


class ModbusConfig(_Section):
    """The Modbus TCP server of the PLC handshake (see docs/line-integration.md for the
    register map). Modbus TCP has no authentication: whoever reaches the port can trigger
    and switch recipes, so an address beyond loopback needs ``open_to_network: true``."""

    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(502, ge=0, le=65535, description="TCP port (0: any free port)")
    unit: int = Field(1, ge=1, le=247, description="the unit (device) id the PLC addresses")
    recipes: list[Name] | None = Field(None, max_length=0xFFFF, description=(
        "the recipe index table: index i is this list's i-th recipe name (one not loaded "
        "is refused with ErrorCode 6, as an index beyond the list). Default: the server's "
        "recipes in load order, which moves when recipes are put or dropped over the API, "
        "or a saved one is left out at start; a PLC program wants this table fixed"))
    open_to_network: bool = Field(False, description=(
        "allow a non-loopback host: only on a segregated line network, Modbus has no authentication"))

    @field_validator("recipes")
    @classmethod
    def _each_recipe_once(cls, value: list[str] | None) -> list[str] | None:
        # a name twice gave it two indexes, and a PLC writing the second read back the first
        # (its check that the switch was accepted then failed)
        seen: dict[str, int] = {}
        for i, name in enumerate(value or []):
            if name in seen:
                raise ValueError(f"recipe {name!r} is in the table twice (index {seen[name]} "
                                 f"and {i}): each recipe needs one index")
            seen[name] = i
        return value

    @model_validator(mode="after")
    def _loopback_unless_opened(self) -> ModbusConfig:
        if not is_loopback(self.host) and not self.open_to_network:
            raise ValueError(
                f"refusing to serve Modbus TCP on {self.host}: Modbus has no authentication, so "
                "anyone reaching the port could trigger inspections and switch recipes; bind to "
                "127.0.0.1, or set open_to_network: true on a segregated line network")
        return self


# topic levels Lineside writes: no MQTT wildcards (+ #), no empty level, no leading '/'
TOPIC_PREFIX_RE = re.compile(r"[A-Za-z0-9_.\-]+(/[A-Za-z0-9_.\-]+)*")
CLIENT_ID_RE = re.compile(r"[A-Za-z0-9_.\-]{1,128}")
MAX_MQTT_PACKET = 268_435_455  # the protocol's own bound (remaining length)


class MqttConfig(_Section):
    """Inspection events to an MQTT broker (``line/mqtt.py``): one QoS 1 message per
    inspection on ``<topic_prefix>/<box_id>/<camera_id or api>/inspection``, a retained
    ``<topic_prefix>/<box_id>/status`` (``online``/``offline``, with a last will) and
    retained camera states on ``<topic_prefix>/<box_id>/camera/<id>/state``. Events wait
    in the store's outbox while the broker is away, so the store must be on."""

    url: str = Field(..., description=(
        "mqtt://HOST[:PORT] (default port 1883) or mqtts://HOST[:PORT] (TLS, default 8883); "
        "credentials go in username/password, never in the URL"))
    topic_prefix: str = Field("lineside", description="first topic level(s), e.g. plant1/lineside")
    client_id: str | None = Field(None, description="default lineside-<box_id>")
    username: str | None = None
    password: SecretStr | None = Field(None, description="never logged nor shown")
    ca_file: str | None = Field(None, description=(
        "mqtts: CA bundle to verify the broker with (default: the system's)"))
    cert_file: str | None = Field(None, description="mqtts: client certificate (mutual TLS)")
    key_file: str | None = Field(None, description="mqtts: the client certificate's key")
    keepalive_s: int = Field(15, ge=5, le=3600, description=(
        "a silent broker is taken for gone after 1.5x this; so is this box by the broker, "
        "which then publishes the last will"))
    max_inflight: int = Field(8, ge=1, le=1000, description=(
        "events sent and not yet acknowledged; after a lost connection these few are sent "
        "again (QoS 1: at least once), so 1 means at most one duplicate per outage"))
    max_message_bytes: int = Field(128 * 1024, ge=1024, le=MAX_MQTT_PACKET, description=(
        "the largest PUBLISH packet (topic and payload) the broker takes; an event over it "
        "is set aside in the outbox, never sent (a broker closes the connection on one, "
        "so it and every event behind it were sent again and again), and sent again at "
        "the next start. Default 128 KiB, the smallest limit among common brokers"))
    keep_delivered_s: float = Field(600.0, ge=0, le=30 * 86400, description=(
        "delivered events stay in the outbox this long (for inspection), then are purged"))

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        parts = urlparse(value)
        if parts.scheme not in ("mqtt", "mqtts"):
            raise ValueError("must start with mqtt:// or mqtts://")
        if parts.username is not None or parts.password is not None:
            raise ValueError("must not hold credentials: set username and password instead")
        if not parts.hostname or parts.path not in ("", "/") or parts.params or parts.query \
                or parts.fragment:
            raise ValueError("must be mqtt://HOST[:PORT] or mqtts://HOST[:PORT]")
        try:
            port = parts.port
        except ValueError:
            raise ValueError("has an invalid port") from None
        if port == 0:  # it meant the default port, unsaid
            raise ValueError("has port 0: give the broker's port, or none for the default")
        return value

    @field_validator("topic_prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        if len(value) > 256 or not TOPIC_PREFIX_RE.fullmatch(value):
            raise ValueError("must be topic levels of letters, digits, '_', '.' or '-' "
                             "separated by '/' (no wildcards, no empty level)")
        return value

    @field_validator("client_id")
    @classmethod
    def _check_client_id(cls, value: str | None) -> str | None:
        if value is not None and not CLIENT_ID_RE.fullmatch(value):
            raise ValueError("must be 1-128 letters, digits, '_', '.' or '-'")
        return value

    @model_validator(mode="after")
    def _files_exist(self) -> MqttConfig:
        if self.password is not None and self.username is None:
            # MQTT sends no password without a user name: it was dropped without a word, and
            # the broker's "not authorized" pointed at the password (line review, session 36)
            raise ValueError("password needs username: MQTT sends no password without one")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together: give both or neither")
        for name in ("ca_file", "cert_file", "key_file"):
            value = getattr(self, name)
            if value is not None and not self.tls:
                raise ValueError(f"{name} needs an mqtts:// url")
            if value is not None and not Path(value).is_file():
                raise ValueError(f"{name}: {value} does not exist")
        return self

    @property
    def tls(self) -> bool:
        return urlparse(self.url).scheme == "mqtts"

    @property
    def host(self) -> str:
        return urlparse(self.url).hostname or ""

    @property
    def port(self) -> int:
        return urlparse(self.url).port or (8883 if self.tls else 1883)


class LineSettings(_Section):
    opcua: OpcUaConfig | None = Field(None, description="off unless configured")
    modbus: ModbusConfig | None = Field(None, description="off unless configured")
    trigger_timeout_s: float = Field(2.0, gt=0, le=60, description=(
        "PLC trigger: longest wait for a fresh frame and an inference slot; then Fail with "
        "ErrorCode 2 (no fresh frame) or 4 (overload)"))
    ack_timeout_s: float = Field(5.0, gt=0, le=3600, description=(
        "PLC handshake: a result not acknowledged (ResultAck) within this is dropped with "
        "ErrorCode 5 and the station is ready again"))
    close_hold_s: float = Field(1.0, ge=0, le=60, description=(
        "on shutdown, how long the OPC UA and Modbus servers go on serving after the "
        "stations closed (TriggerReady 0, an open part's ErrorCode 8), so a PLC that polls "
        "or subscribes reads them"))
    mqtt: MqttConfig | None = Field(None, description="off unless configured")
