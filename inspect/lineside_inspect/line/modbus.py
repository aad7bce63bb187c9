"""The PLC handshake over Modbus TCP (``pymodbus`` 3.x server), on the server's event loop.

One unit (default 1). Station ``n`` (0-based, in the order of the configured cameras)
owns coils and holding registers ``16*n`` to ``16*n + 15``:

===========  ================  ==========================================================
offset       coil              holding register
===========  ================  ==========================================================
+0           Trigger (PLC)     DefectCount
+1           TriggerReady      ErrorCode
+2           Busy              Heartbeat (+1 each second, wraps at 65536)
+3           ResultReady       Recipe index (PLC writes; 0-based, into modbus.recipes or the loaded recipes)
+4           ResultAck (PLC)   (reserved, reads 0)
+5           Pass
+6           Fail
+7           Error (ErrorCode != 0)
+8           FailRateAlarm
+9           BlankFrame (with Fail: nothing to judge, reason blank_frame)
+10          WrongView (with Fail: not the golden's view, reason reference_mismatch)
+11..+15     (reserved, read False / 0)
===========  ================  ==========================================================

A write to anything but Trigger, ResultAck and the recipe index is refused with Modbus
exception 02 (illegal data address). The recipe index counts the server's recipes in
load order (``GET /v1/recipes``); an index with no recipe is refused with ErrorCode 6
and the register reads back the index in force.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.pdu import ExceptionResponse, ModbusPDU
from pymodbus.pdu.bit_message import WriteSingleCoilRequest
from pymodbus.server import ModbusTcpServer
from pymodbus.server.requesthandler import ServerRequestHandler
from pymodbus.simulator import DataType, SimData, SimDevice

from lineside_inspect.line.config import MODBUS_BLOCK, ModbusConfig
from lineside_inspect.line.peer_logs import BOUND, bound_peer_logs
from lineside_inspect.line.station import Changes, PlcWrite, Station, TagValue

log = logging.getLogger("lineside.line.modbus")
# pymodbus logs every request at INFO: the server log stays about the line, unless a
# deployment set a level for pymodbus itself
if logging.getLogger("pymodbus").level == logging.NOTSET:
    logging.getLogger("pymodbus").setLevel(logging.WARNING)

BLOCK = MODBUS_BLOCK  # coils and registers per station
COILS = ("Trigger", "TriggerReady", "Busy", "ResultReady", "ResultAck", "Pass", "Fail", "Error",
         "FailRateAlarm", "BlankFrame", "WrongView")
REGISTERS = ("DefectCount", "ErrorCode", "Heartbeat", "RecipeIndex")
PLC_COILS = {COILS.index("Trigger"): "Trigger", COILS.index("ResultAck"): "ResultAck"}
RECIPE_REGISTER = REGISTERS.index("RecipeIndex")
NO_RECIPE = 0xFFFF  # the station's recipe is not (or no longer) among the loaded ones
COIL_WRITES = (5, 15)  # write single / multiple coils
REGISTER_WRITES = (6, 16, 23)  # write single / multiple registers, read-write multiple


async def _no_such_unit(function_code: int, start_address: int, address: int, count: int,
                        registers: list[int], values: list[int] | list[bool] | None) -> ExcCodes:
    return ExcCodes.GATEWAY_NO_RESPONSE


READ_DISCRETE_INPUTS = 2  # FC 02
COIL_ON, COIL_OFF = 0xFF00, 0x0000  # the only values FC 05 may carry
# Modbus masters of one box at a time (a PLC, an HMI, a SCADA poller or two); one more
# closes one that never sent anything, else the one idle longest. pymodbus took any
# number: each a file descriptor, never closed while idle, so a flood of idle connections
# (or PLC power cuts leaving half-open ones) took every descriptor the server had, and
# the store and cameras with them
MAX_CONNECTIONS = 32
TELL_EVERY_S = 60.0  # the connection-limit warning again


class _StrictWriteCoil(WriteSingleCoilRequest):
    """FC 05 as the Modbus spec has it: FF00 is on, 0000 off, any other value exception 03
    with nothing changed. pymodbus took any value but 0 for on: a master sending 0x0001
    (a common misconfiguration) triggered a part."""

    def decode(self, data: bytes) -> None:
        super().decode(data)
        self.raw_value = int.from_bytes(data[2:4], "big")

    async def datastore_update(self, context: Any, device_id: int) -> ModbusPDU:
        if getattr(self, "raw_value", COIL_ON) not in (COIL_ON, COIL_OFF):
            return ExceptionResponse(self.function_code, ExcCodes.ILLEGAL_VALUE)
        return await super().datastore_update(context, device_id)


class _Handler(ServerRequestHandler):
    """A connection's handler that notes whether, and when, it last received anything."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.heard = False
        self.heard_at = time.monotonic()  # (its connect, until it sends)

    def callback_data(self, data: bytes, addr: tuple[Any, ...] | None = None) -> int:
        self.heard, self.heard_at = True, time.monotonic()
        return int(super().callback_data(data, addr))


class _BoundedServer(ModbusTcpServer):
    """A Modbus TCP server of at most :data:`MAX_CONNECTIONS` connections: when one more
    comes, one that has never sent anything goes (the first accepted: one of a flood),
    else the one idle longest (a half-open one, of a PLC switched off). Not the oldest:
    that is the PLC's, connected at its start and polling since, and a flood of idle
    connections cut it off again and again; nor by idle time alone: a burst of them between
    two polls was each newer than the PLC's last request."""

    _told_at: float | None = None
    _untold = 0

    def callback_new_connection(self) -> Any:
        return _Handler(self, self.trace_packet, self.trace_pdu, self.trace_connect)

    def handle_new_connection(self) -> Any:
        excess = len(self.active_connections) + 1 - MAX_CONNECTIONS
        # (sorted is stable: of those never heard, the first accepted goes first)
        idle = sorted(self.active_connections.values(),
                      key=lambda c: (getattr(c, "heard", False), getattr(c, "heard_at", 0.0)))
        for oldest in idle[:max(0, excess)]:
            oldest.close()
            self._untold += 1
            now = time.monotonic()
            if self._told_at is None or now - self._told_at >= TELL_EVERY_S:
                log.warning("Modbus TCP: more than %d connections at once: one that sent "
                            "nothing, else the one idle longest, closed (%d so since last "
                            "said)", MAX_CONNECTIONS, self._untold)
                self._told_at, self._untold = now, 0
        return super().handle_new_connection()


class ModbusAdapter:
    name = "Modbus TCP"

    def __init__(self, config: ModbusConfig, recipe_names: Callable[[], list[str]]) -> None:
        self.config = config
        self.recipe_names = recipe_names
        self.server: ModbusTcpServer | None = None
        self.port = config.port
        self._index: dict[str, int] = {}
        self._ids: list[str] = []
        self._on_write: PlcWrite | None = None
        self._internal = False  # set while Lineside writes its own tags

    async def start(self, stations: Sequence[Station], on_write: PlcWrite) -> None:
        cfg = self.config
        self._on_write = on_write
        self._ids = [s.id for s in stations]
        self._index = {sid: i for i, sid in enumerate(self._ids)}
        n = max(1, len(stations))
        device = SimDevice(
            id=cfg.unit,
            simdata=([SimData(0, values=[False] * BLOCK * n, datatype=DataType.BITS)],
                     [SimData(0, values=[False] * 16, datatype=DataType.BITS)],  # unused (pymodbus needs one)
                     [SimData(0, count=BLOCK * n, values=0, datatype=DataType.REGISTERS)],
                     [SimData(0, datatype=DataType.INVALID)]),  # no input registers
            action=self._action)
        # any other unit id gets "gateway target failed to respond" (0x0B) rather than
        # pymodbus's device failure with a traceback in the log for each request
        others = SimDevice(
            id=0,
            simdata=([SimData(0, values=[False] * BLOCK * n, datatype=DataType.BITS)],
                     [SimData(0, values=[False] * 16, datatype=DataType.BITS)],
                     [SimData(0, count=BLOCK * n, values=0, datatype=DataType.REGISTERS)],
                     [SimData(0, datatype=DataType.INVALID)]),
            action=_no_such_unit)
        server = _BoundedServer([device, others], address=(cfg.host, cfg.port),
                                 custom_pdu=[_StrictWriteCoil])
        await server.serve_forever(background=True)
        # pymodbus's errors quoted a peer's traffic in full (megabytes a frame): bounded
        bound_peer_logs("pymodbus")
        self.server = server
        sockets = getattr(server.transport, "sockets", None)
        if sockets:
            self.port = sockets[0].getsockname()[1]
        for station in stations:
            await self.write(station.id, station.snapshot())
        log.info("Modbus TCP at %s:%d unit %d, %d station(s) (blocks of %d from 0)",
                 cfg.host, self.port, cfg.unit, len(stations), BLOCK)

    async def _action(self, function_code: int, start_address: int, address: int, count: int,
                      registers: list[int], values: list[int] | list[bool] | None) -> ExcCodes | None:
        """Called by pymodbus before each request touches the data: refuses client writes
        to Lineside's tags and hands the PLC's writes to the handshake."""
        if function_code == READ_DISCRETE_INPUTS:
            # a master that maps the status bits as discrete inputs read TriggerReady 0
            # for ever, with no error on either side: they are coils (FC 01)
            return ExcCodes.ILLEGAL_ADDRESS
        if values is None or self._internal:
            return None
        n = len(values)
        if function_code in COIL_WRITES:
            targets = range(address, address + n)
            if any(a % BLOCK not in PLC_COILS or a // BLOCK >= len(self._ids) for a in targets):
                return ExcCodes.ILLEGAL_ADDRESS
            for a, v in zip(targets, values, strict=True):
                self._plc_write(a // BLOCK, PLC_COILS[a % BLOCK], bool(v))
            return None
        if function_code in REGISTER_WRITES:
            targets = range(address, address + n)
            if any(a % BLOCK != RECIPE_REGISTER or a // BLOCK >= len(self._ids) for a in targets):
                return ExcCodes.ILLEGAL_ADDRESS
            names = self.recipe_names()
            for a, v in zip(targets, values, strict=True):
                i = int(v)
                # an index with no recipe becomes a name no recipe can have: refused
                self._plc_write(a // BLOCK, "Recipe", names[i] if i < len(names) else f"#{i}")
            return None
        return ExcCodes.ILLEGAL_FUNCTION

    def _plc_write(self, station_index: int, tag: str, value: TagValue) -> None:
        if self._on_write is not None:
            # the handshake publishes from a task, after pymodbus has stored this write
            self._on_write(self._ids[station_index], tag, value)

    async def write(self, station_id: str, changes: Changes) -> None:
        server = self.server
        if server is None or station_id not in self._index:
            return
        base = self._index[station_id] * BLOCK
        unit = self.config.unit
        self._internal = True
        try:
            for tag, value in changes:
                if tag in COILS:
                    await server.async_setValues(unit, 5, base + COILS.index(tag), [bool(value)])
                if tag == "ErrorCode":
                    await server.async_setValues(unit, 5, base + COILS.index("Error"),
                                                 [int(value) != 0])
                if tag in ("DefectCount", "ErrorCode", "Heartbeat"):
                    reg = int(value) & 0xFFFF if tag == "Heartbeat" else min(int(value), 0xFFFF)
                    await server.async_setValues(unit, 6, base + REGISTERS.index(tag), [reg])
                if tag == "Recipe":
                    names = self.recipe_names()
                    index = names.index(str(value)) if value in names else NO_RECIPE
                    await server.async_setValues(unit, 6, base + RECIPE_REGISTER, [index])
        finally:
            self._internal = False

    async def stop(self) -> None:
        server, self.server = self.server, None
        if server is None:
            return
        # a PLC polling while the server goes sends requests whose answers find their
        # connection closed: pymodbus logs each at ERROR with a dump of the traffic, which
        # tripped alerting on a plain restart (line review, session 34); quiet meanwhile
        quiet = logging.getLogger("pymodbus")
        level = quiet.level
        quiet.setLevel(logging.CRITICAL)
        try:
            await server.shutdown()
            # the answers of requests being handled go out after shutdown() returns (to
            # connections it closed): their tasks run within the loop's next turns
            await asyncio.sleep(0.05)
        finally:
            quiet.setLevel(level)
        BOUND.flush("pymodbus", due_only=False)  # what the bound held back: counted
