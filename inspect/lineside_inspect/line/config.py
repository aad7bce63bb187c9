"""Settings of the line outputs: the ``line:`` section of the server config."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OpcUaConfig(_Section):
    """The OPC UA server (PLC handshake); filled in by the PLC work."""


class ModbusConfig(_Section):
    """The Modbus TCP server (PLC handshake); filled in by the PLC work."""


class MqttConfig(_Section):
    """Inspection events to an MQTT broker; filled in by the MQTT work."""


class LineSettings(_Section):
    opcua: OpcUaConfig | None = Field(None, description="off unless configured")
    modbus: ModbusConfig | None = Field(None, description="off unless configured")
    mqtt: MqttConfig | None = Field(None, description="off unless configured")
