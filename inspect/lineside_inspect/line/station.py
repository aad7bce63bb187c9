"""The PLC handshake of one station (a configured camera), as a pure state machine.

No I/O and no clock of its own: the driver (:mod:`lineside_inspect.line.plc`) feeds it
what the PLC wrote, the inspection's outcome and the time, and writes the tag changes it
returns to every protocol adapter (OPC UA, Modbus TCP) through :class:`TagAdapter`. So
one station has one handshake whichever protocol (or both) the PLC uses.

The handshake (docs/line-integration.md has the timing diagram):

1. The PLC sets ``Trigger`` (only while ``TriggerReady``; otherwise it is ignored).
2. Lineside clears ``TriggerReady``, sets ``Busy``, clears the last result, and judges
   the first frame captured after the trigger.
3. It writes ``Pass``/``Fail``/``DefectCount``/``InspectionId``/``ErrorCode``, then sets
   ``ResultReady`` and clears ``Busy``.
4. The PLC reads the result and sets ``ResultAck``.
5. Lineside clears ``ResultReady``, ``Trigger`` and ``ResultAck``, then sets ``TriggerReady``.

Fail-safe: an error never yields ``Pass``. It ends step 3 with ``Fail`` and the reason in
``ErrorCode``. A PLC that never acknowledges cannot hold the station: after
``ack_timeout_s`` the result is dropped with ``ErrorCode`` 5 and the station is ready again.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

TagValue = bool | int | str
Changes = list[tuple[str, TagValue]]

# every tag of a station, in the order adapters create them; the type is the OPC UA one
TAGS: dict[str, str] = {
    "Trigger": "Boolean",
    "TriggerReady": "Boolean",
    "Busy": "Boolean",
    "ResultReady": "Boolean",
    "ResultAck": "Boolean",
    "Pass": "Boolean",
    "Fail": "Boolean",
    "DefectCount": "Int32",
    "InspectionId": "String",
    "ErrorCode": "Int32",
    "Heartbeat": "UInt32",
    "Recipe": "String",
}
PLC_WRITES = frozenset({"Trigger", "ResultAck", "Recipe"})  # the rest is read-only to clients
UINT32 = 1 << 32


class ErrorCode(enum.IntEnum):
    """``ErrorCode`` values (docs/line-integration.md). Any code but 0 comes with ``Fail``."""

    NONE = 0
    CAMERA_OFFLINE = 1  # the camera is offline (not connected, reconnecting)
    NO_FRESH_FRAME = 2  # no frame captured after the trigger within trigger_timeout_s
    MODEL_ERROR = 3  # inference failed (model, reference image)
    OVERLOAD = 4  # no inference slot in time (server busy)
    ACK_TIMEOUT = 5  # the PLC did not set ResultAck within ack_timeout_s: result dropped
    UNKNOWN_RECIPE = 6  # Recipe written names no loaded recipe (Modbus: index out of range)
    RECIPE_NOT_USABLE = 7  # a loaded recipe this camera cannot run (e.g. needs a reference)
    INTERNAL = 9  # anything else; the server log has the details


class Phase(enum.Enum):
    READY = "ready"  # TriggerReady: waiting for Trigger
    BUSY = "busy"  # inspecting
    RESULT = "result"  # ResultReady: waiting for ResultAck


@dataclass
class Step:
    """What a PLC write caused: tag changes to publish, and the recipe of an inspection to
    start when a trigger was accepted."""

    changes: Changes = field(default_factory=list)
    inspect_recipe: str | None = None


PlcWrite = Callable[[str, str, TagValue], None]  # (station id, tag, value) as the PLC wrote it


class TagAdapter(Protocol):
    """A protocol that shows the stations' tags to PLCs (OPC UA server, Modbus TCP server)."""

    name: str

    async def start(self, stations: Sequence[Station], on_write: PlcWrite) -> None:
        """Create every station's tags with their current values and start serving;
        call ``on_write`` (on the event loop) for each accepted PLC write of a
        :data:`PLC_WRITES` tag."""

    async def write(self, station_id: str, changes: Changes) -> None:
        """Show ``changes`` to clients, in order (data before the flags that announce it)."""

    async def stop(self) -> None: ...


RecipeCheck = Callable[[str], ErrorCode]  # NONE when the station can switch to the recipe


class Station:
    """One station's handshake. ``recipe`` is the recipe in force (the camera's own at
    start); ``check_recipe`` validates a ``Recipe`` write against the loaded recipes."""

    def __init__(self, station_id: str, recipe: str, *, ack_timeout_s: float,
                 check_recipe: RecipeCheck, now: float) -> None:
        self.id = station_id
        self.ack_timeout_s = ack_timeout_s
        self.check_recipe = check_recipe
        self.phase = Phase.READY
        self.tags: dict[str, TagValue] = {
            "Trigger": False, "TriggerReady": True, "Busy": False, "ResultReady": False,
            "ResultAck": False, "Pass": False, "Fail": False, "DefectCount": 0,
            "InspectionId": "", "ErrorCode": int(ErrorCode.NONE), "Heartbeat": 0,
            "Recipe": recipe,
        }
        self._started = now
        self._result_at = 0.0

    @property
    def recipe(self) -> str:
        return str(self.tags["Recipe"])

    def snapshot(self) -> Changes:
        """Every tag with its value, in :data:`TAGS` order (to create an adapter's tags)."""
        return [(name, self.tags[name]) for name in TAGS]

    def _set(self, changes: Changes, name: str, value: TagValue) -> None:
        self.tags[name] = value
        changes.append((name, value))

    # -- what the PLC writes ----------------------------------------------------------
    def plc_write(self, tag: str, value: TagValue, now: float) -> Step:
        if tag == "Trigger":
            return self._trigger(bool(value))
        if tag == "ResultAck":
            return Step(self._ack(bool(value)))
        if tag == "Recipe":
            return Step(self._recipe(str(value)))
        raise KeyError(f"{tag} is not written by the PLC")

    def _trigger(self, value: bool) -> Step:
        step = Step()
        self._set(step.changes, "Trigger", value)
        if not value or self.phase is not Phase.READY:
            # a trigger while busy or holding a result is not queued: the PLC waits for
            # TriggerReady (step 5 clears Trigger, so a stray one cannot start a part later)
            return step
        self.phase = Phase.BUSY
        self._set(step.changes, "TriggerReady", False)
        self._set(step.changes, "Busy", True)
        for name, cleared in (("Pass", False), ("Fail", False), ("DefectCount", 0),
                              ("InspectionId", ""), ("ErrorCode", int(ErrorCode.NONE))):
            self._set(step.changes, name, cleared)
        step.inspect_recipe = self.recipe
        return step

    def _ack(self, value: bool) -> Changes:
        changes: Changes = []
        if not value:
            self._set(changes, "ResultAck", False)
        elif self.phase is not Phase.RESULT:
            self._set(changes, "ResultAck", False)  # nothing to acknowledge: ignored
        else:
            self._to_ready(changes)
        return changes

    def _recipe(self, name: str) -> Changes:
        changes: Changes = []
        code = self.check_recipe(name)
        if code is ErrorCode.NONE:
            self._set(changes, "Recipe", name)  # the next trigger inspects with it
            if self.phase is Phase.READY and self.tags["ErrorCode"] in (
                    ErrorCode.UNKNOWN_RECIPE, ErrorCode.RECIPE_NOT_USABLE):
                self._set(changes, "ErrorCode", int(ErrorCode.NONE))
            return changes
        # refused: Recipe reads back the recipe in force; ErrorCode says why, unless a
        # part is in progress (its result owns ErrorCode until it is acknowledged)
        self._set(changes, "Recipe", self.recipe)
        if self.phase is Phase.READY:
            self._set(changes, "ErrorCode", int(code))
        return changes

    # -- what the inspection gave -------------------------------------------------------
    def finished(self, passed: bool, defect_count: int, inspection_id: str, now: float) -> Changes:
        """The verdict of the part triggered last (ignored unless the station is busy)."""
        return self._result(passed, defect_count, inspection_id, ErrorCode.NONE, now)

    def failed(self, code: ErrorCode, now: float, inspection_id: str = "") -> Changes:
        """No verdict: Fail with ``code`` (never NONE)."""
        return self._result(False, 0, inspection_id, ErrorCode(code) or ErrorCode.INTERNAL, now)

    def _result(self, passed: bool, defects: int, inspection_id: str, code: ErrorCode,
                now: float) -> Changes:
        changes: Changes = []
        if self.phase is not Phase.BUSY:
            return changes
        passed = passed and code is ErrorCode.NONE
        self._set(changes, "Pass", passed)
        self._set(changes, "Fail", not passed)
        self._set(changes, "DefectCount", max(0, min(int(defects), 2**31 - 1)))
        self._set(changes, "InspectionId", inspection_id)
        self._set(changes, "ErrorCode", int(code))
        # ResultReady before Busy drops: a PLC never sees neither while a part is open
        self._set(changes, "ResultReady", True)
        self._set(changes, "Busy", False)
        self.phase = Phase.RESULT
        self._result_at = now
        return changes

    # -- time -------------------------------------------------------------------------
    def tick(self, now: float) -> Changes:
        """The heartbeat (+1 each second since start, wrapping at 2^32) and the ack timeout."""
        changes: Changes = []
        beat = int(now - self._started) % UINT32
        if beat != self.tags["Heartbeat"]:
            self._set(changes, "Heartbeat", beat)
        if self.phase is Phase.RESULT and now - self._result_at >= self.ack_timeout_s:
            # the PLC missed this result: it must not be taken for a verdict later
            self._set(changes, "Pass", False)
            self._set(changes, "Fail", True)
            self._set(changes, "ErrorCode", int(ErrorCode.ACK_TIMEOUT))
            self._to_ready(changes)
        return changes

    def _to_ready(self, changes: Changes) -> None:
        self._set(changes, "ResultReady", False)
        self._set(changes, "Trigger", False)
        self._set(changes, "ResultAck", False)
        self._set(changes, "TriggerReady", True)  # last: announces everything above
        self.phase = Phase.READY

