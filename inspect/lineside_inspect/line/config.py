"""Settings of the line outputs: the ``line:`` section of the server config."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, model_validator


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
            raise ValueError(f"endpoint must be opc.tcp://HOST:PORT/PATH, not {self.endpoint!r}")
        try:
            url.port  # noqa: B018 - parses the port (raises on a bad one)
        except ValueError:
            raise ValueError(f"endpoint {self.endpoint!r} has an invalid port") from None
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


class ModbusConfig(_Section):
    """The Modbus TCP server of the PLC handshake (see docs/line-integration.md for the
    register map). Modbus TCP has no authentication: whoever reaches the port can trigger
    and switch recipes, so an address beyond loopback needs ``open_to_network: true``."""

    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(502, ge=0, le=65535, description="TCP port (0: any free port)")
    unit: int = Field(1, ge=1, le=247, description="the unit (device) id the PLC addresses")
    open_to_network: bool = Field(False, description=(
        "allow a non-loopback host: only on a segregated line network, Modbus has no authentication"))

    @model_validator(mode="after")
    def _loopback_unless_opened(self) -> ModbusConfig:
        if not is_loopback(self.host) and not self.open_to_network:
            raise ValueError(
                f"refusing to serve Modbus TCP on {self.host}: Modbus has no authentication, so "
                "anyone reaching the port could trigger inspections and switch recipes; bind to "
                "127.0.0.1, or set open_to_network: true on a segregated line network")
        return self


class MqttConfig(_Section):
    """Inspection events to an MQTT broker; filled in by the MQTT work."""


class LineSettings(_Section):
    opcua: OpcUaConfig | None = Field(None, description="off unless configured")
    modbus: ModbusConfig | None = Field(None, description="off unless configured")
    trigger_timeout_s: float = Field(2.0, gt=0, le=60, description=(
        "PLC trigger: longest wait for a fresh frame and an inference slot; then Fail with "
        "ErrorCode 2 (no fresh frame) or 4 (overload)"))
    ack_timeout_s: float = Field(5.0, gt=0, le=3600, description=(
        "PLC handshake: a result not acknowledged (ResultAck) within this is dropped with "
        "ErrorCode 5 and the station is ready again"))
    mqtt: MqttConfig | None = Field(None, description="off unless configured")
