"""The PLC handshake of one station (a configured camera), as a pure state machine.

No I/O and no clock of its own: the driver (:mod:`lineside_inspect.line.plc`) feeds it
what the PLC wrote, the inspection's outcome and the time, and writes the tag changes it
returns to every protocol adapter (OPC UA, Modbus TCP) through :class:`TagAdapter`. So
one station has one handshake whichever protocol (or both) the PLC uses.

The handshake (docs/line-integration.md has the timing diagram):

1. The PLC sets ``Trigger`` (only while ``TriggerReady``; a new trigger at any other
   time is refused and cleared at once, and the open part's result is dropped, while a
   repeated 1 over 1 is ignored: see :meth:`Station._trigger`).
2. Lineside clears ``TriggerReady``, sets ``Busy``, clears the last result, and judges
   the first frame captured after the trigger.
3. It writes ``Pass``/``Fail``/``DefectCount``/``InspectionId``/``ErrorCode`` (and
   ``BlankFrame``: a Fail for a frame too flat to judge; ``WrongView``: a Fail for a
   frame not of its golden's view), then sets ``ResultReady`` and clears ``Busy``.
4. The PLC reads the result and sets ``ResultAck``.
5. Lineside clears ``ResultReady``, ``Trigger`` and ``ResultAck``, then sets ``TriggerReady``.

Fail-safe: an error never yields ``Pass``. It ends step 3 with ``Fail`` and the reason in
``ErrorCode``. A PLC that never acknowledges cannot hold the station: after
``ack_timeout_s`` the result is dropped with ``ErrorCode`` 5 and the station is ready again.
A refused ``Recipe`` write is a standing fault: until a usable recipe is written, every
trigger ends with ``Fail`` and its code, never a verdict judged with the old recipe.

Beside the handshake, ``FailRateAlarm`` reads 1 while the recipe in ``Recipe`` is in
fail-rate alarm (see :meth:`Station.show_alarm`).
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
    "FailRateAlarm": "Boolean",
    # with Fail: the frame (or its golden) was too flat to judge, reason blank_frame (a
    # lens cap, a lamp off), not a defect found; added last, so no address moves
    "BlankFrame": "Boolean",
    # with Fail: the frame is not its golden's view, reason reference_mismatch (another
    # product, the wrong golden, the camera knocked): nothing judged either; after
    # BlankFrame, so no address moves. Never both: a blank frame matches no golden
    "WrongView": "Boolean",
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
    ACK_TIMEOUT = 5  # result dropped: no ResultAck within ack_timeout_s, or a new Trigger first
    UNKNOWN_RECIPE = 6  # Recipe written names no loaded recipe (Modbus: index out of range)
    RECIPE_NOT_USABLE = 7  # a loaded recipe this camera cannot run (e.g. needs a reference)
    SHUTDOWN = 8  # the server is stopping: the part in progress was not judged
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
    part: int = 0  # the accepted trigger's number: its result must name it (see finished)


PlcWrite = Callable[[str, str, TagValue], None]  # (station id, tag, value) as the PLC wrote it


@dataclass(frozen=True)
class PartEnd:
    """How a part ended for the line: what the PLC read and acknowledged, or that its
    result was dropped (no ResultAck in time, or a new Trigger first). An MES that counts
    parts reconciles with these: an inspection's verdict alone said "pass" for parts the
    line rejected unjudged, and parts that ended with a code told nothing (line review,
    session 34)."""

    station: str
    part: int  # the station's trigger count since start
    recipe: str
    inspection_id: str  # "" when the part has none (it ended with a code before one)
    passed: bool  # the line let the part pass: Pass read and acknowledged
    error_code: ErrorCode
    acknowledged: bool
    blank_frame: bool = False  # failed as blank_frame: not judged, not a defect
    wrong_view: bool = False  # failed as reference_mismatch (not blank): not judged either


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
    start); ``check_recipe`` validates a ``Recipe`` write against the loaded recipes.
    ``follows_default``: neither the config nor the PLC chose a recipe, so the station
    uses the server's default recipe, whichever it is when a trigger comes (a fleet box
    gets its recipes after the stations start): see :meth:`use_default`."""

    def __init__(self, station_id: str, recipe: str, *, ack_timeout_s: float,
                 check_recipe: RecipeCheck, now: float, follows_default: bool = False) -> None:
        self.id = station_id
        self.follows_default = follows_default
        self.ack_timeout_s = ack_timeout_s
        self.check_recipe = check_recipe
        self.phase = Phase.READY
        self.tags: dict[str, TagValue] = {
            "Trigger": False, "TriggerReady": True, "Busy": False, "ResultReady": False,
            "ResultAck": False, "Pass": False, "Fail": False, "DefectCount": 0,
            "InspectionId": "", "ErrorCode": int(ErrorCode.NONE), "Heartbeat": 0,
            "Recipe": recipe, "FailRateAlarm": False, "BlankFrame": False,
            "WrongView": False,
        }
        self._started = now
        self._result_at = 0.0
        self._part = 0  # accepted triggers so far: a result of an older part is ignored
        self._part_recipe = recipe  # the recipe the open (or last) part was judged with
        self._drop = False  # the part in progress was given up by the PLC (a new Trigger)
        # what the PLC itself last wrote to Trigger (not the tag, which Lineside clears):
        # a 1 over a 1 is a retry or a cyclic rewrite of the same trigger, not a new one
        self._plc_trigger = False
        self.recipe_fault = ErrorCode.NONE  # the last Recipe write was refused: no verdicts
        self.closed = False  # the server is stopping: no more triggers
        self._ended = False  # and the part in progress, if any, ended with ErrorCode 8
        # told of each part that ends without a verdict (the line's failure counter)
        self.on_failure: Callable[[ErrorCode], None] | None = None
        # told of each part as it ends for the line (acknowledged or dropped)
        self.on_part_end: Callable[[PartEnd], None] | None = None

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
            return self._trigger(bool(value), now)
        if tag == "ResultAck":
            return Step(self._ack(bool(value)))
        if tag == "Recipe":
            return Step(self._recipe(str(value)))
        raise KeyError(f"{tag} is not written by the PLC")

    def use_default(self, default: str) -> Changes:
        """The server's default recipe is now ``default``: a station that follows it shows
        it in ``Recipe`` (what its next trigger uses)."""
        changes: Changes = []
        if self.follows_default and default != self.recipe:
            self._set(changes, "Recipe", default)
        return changes

    def _trigger(self, value: bool, now: float) -> Step:
        step = Step()
        rising = value and not self._plc_trigger
        self._plc_trigger = value
        if not value:
            self._set(step.changes, "Trigger", False)
            return step
        if self.phase is not Phase.READY and not rising:
            # the PLC's 1 again without a 0 between (a Modbus retry after a late response, a
            # cyclic writer): the trigger of the part in progress, not a new one. The tag
            # is written back as the station has it, over what the adapter stored
            self._set(step.changes, "Trigger", self.tags["Trigger"])
            return step
        if self.phase is not Phase.READY or self.closed:
            # refused and cleared at once (as a stray ResultAck is): Trigger reading 1 always
            # means a part in progress. Nothing is queued, and a PLC that wrote 0 then 1
            # while a part is open has given up on that part: its result is dropped, so it
            # can never be read as the answer to this trigger
            self._set(step.changes, "Trigger", False)
            # (closed at SIGTERM, a part open still answers the PLC: given up, it drops as
            # ever; once ended by the stop, its code-8 result stays)
            if not self._ended:
                if self.phase is Phase.RESULT:
                    self._dropped(step.changes)
                elif self.phase is Phase.BUSY:
                    self._drop = True  # dropped when its inspection ends (see _result)
            return step
        self._set(step.changes, "Trigger", True)
        self._part += 1
        # its own recipe: a Recipe written before its ResultAck (the next product) is not it
        self._part_recipe = self.recipe
        self._drop = False
        self.phase = Phase.BUSY
        self._set(step.changes, "TriggerReady", False)
        self._set(step.changes, "Busy", True)
        self._no_verdict(step.changes, ErrorCode.NONE, fail=False)
        if self.recipe_fault is not ErrorCode.NONE:
            # the PLC asked for a product this station cannot judge: judging the part with
            # the recipe of the previous product would be a verdict for the wrong product
            step.changes += self._result(False, 0, "", self.recipe_fault, now)
            return step
        step.inspect_recipe = self.recipe
        step.part = self._part
        return step

    def _ack(self, value: bool) -> Changes:
        changes: Changes = []
        if not value:
            self._set(changes, "ResultAck", False)
        elif self.phase is not Phase.RESULT:
            self._set(changes, "ResultAck", False)  # nothing to acknowledge: ignored
        else:
            self._ended_part(str(self.tags["InspectionId"]), bool(self.tags["Pass"]),
                             ErrorCode(int(self.tags["ErrorCode"])), acknowledged=True,
                             blank_frame=bool(self.tags["BlankFrame"]),
                             wrong_view=bool(self.tags["WrongView"]))
            self._to_ready(changes)
        return changes

    def _ended_part(self, inspection_id: str, passed: bool, code: ErrorCode, *,
                    acknowledged: bool, blank_frame: bool = False,
                    wrong_view: bool = False) -> None:
        if self.on_part_end is not None:
            self.on_part_end(PartEnd(self.id, self._part, self._part_recipe, inspection_id,
                                     passed, code, acknowledged, blank_frame, wrong_view))

    def _recipe(self, name: str) -> Changes:
        changes: Changes = []
        code = self.check_recipe(name)
        if code is ErrorCode.NONE:
            self._set(changes, "Recipe", name)  # the next trigger inspects with it
            self.follows_default = False  # the PLC chose: a new default changes nothing
            self.recipe_fault = ErrorCode.NONE
            if self.phase is Phase.READY and self.tags["ErrorCode"] in (
                    ErrorCode.UNKNOWN_RECIPE, ErrorCode.RECIPE_NOT_USABLE):
                # the fault shown ends: no Fail left over to read as a defective part
                self._set(changes, "Fail", False)
                self._set(changes, "ErrorCode", int(ErrorCode.NONE))
            return changes
        # refused: Recipe reads back the recipe in force, and the station stays in fault
        # (each trigger a Fail with this code) until a usable recipe is written. ErrorCode
        # shows it now unless a part is open (its result owns ErrorCode until the ack)
        self.recipe_fault = code
        self._set(changes, "Recipe", self.recipe)
        if self.phase is Phase.READY:
            self._show_fault(changes)
        return changes

    def _show_fault(self, changes: Changes) -> None:
        # no Pass beside an error code, as after a part; and nothing left of the last part
        # (its InspectionId beside Fail would read as that part being defective)
        self._no_verdict(changes, self.recipe_fault, fail=True)

    def _no_verdict(self, changes: Changes, code: ErrorCode, *, fail: bool) -> None:
        """The result tags holding no verdict: cleared at a trigger (``fail`` False), or a
        Fail with ``code`` and nothing of a part (a recipe fault, an unacknowledged
        result). One list, so a result tag added later is cleared everywhere."""
        for name, value in (("Pass", False), ("Fail", fail), ("DefectCount", 0),
                            ("InspectionId", ""), ("ErrorCode", int(code)),
                            ("BlankFrame", False), ("WrongView", False)):
            self._set(changes, name, value)

    # -- what the inspection gave -------------------------------------------------------
    def finished(self, passed: bool, defect_count: int, inspection_id: str, now: float,
                 part: int | None = None, *, blank_frame: bool = False,
                 wrong_view: bool = False) -> Changes:
        """The verdict of part ``part`` (default: the one triggered last); ignored unless
        that part is the one in progress. ``blank_frame``: it failed as nothing to judge
        (``BlankFrame`` beside ``Fail``); ``wrong_view``: as not its golden's view
        (``WrongView`` beside ``Fail``, unless blank: that says it already)."""
        return self._result(passed, defect_count, inspection_id, ErrorCode.NONE, now, part,
                            blank_frame=blank_frame, wrong_view=wrong_view)

    def failed(self, code: ErrorCode, now: float, inspection_id: str = "",
               part: int | None = None) -> Changes:
        """No verdict: Fail with ``code`` (never NONE)."""
        return self._result(False, 0, inspection_id, ErrorCode(code) or ErrorCode.INTERNAL, now,
                            part)

    def stop_taking(self) -> Changes:
        """The server got SIGTERM: no trigger is taken any more (``TriggerReady`` 0); a part
        in progress still gets its verdict, if it comes before :meth:`close`."""
        changes: Changes = []
        if not self.closed:
            self.closed = True
            self._set(changes, "TriggerReady", False)
        return changes

    def close(self, now: float) -> Changes:
        """The server is stopping: no trigger is taken any more, and a part in progress
        ends now with Fail and ErrorCode 8 (its inspection's result is ignored)."""
        if self._ended:
            return []
        self._ended = True
        changes = self.stop_taking()
        if self.phase is Phase.BUSY:
            self._drop = False
            changes += self._result(False, 0, "", ErrorCode.SHUTDOWN, now)
        return changes

    def _result(self, passed: bool, defects: int, inspection_id: str, code: ErrorCode,
                now: float, part: int | None = None, *, blank_frame: bool = False,
                wrong_view: bool = False) -> Changes:
        changes: Changes = []
        if self.phase is not Phase.BUSY or (part is not None and part != self._part):
            return changes
        if self._drop:  # the PLC triggered again meanwhile: this result answers no one
            self._drop = False
            self._set(changes, "Busy", False)
            self._dropped(changes, inspection_id)
            return changes
        passed = passed and code is ErrorCode.NONE
        if code is not ErrorCode.NONE and self.on_failure is not None:
            self.on_failure(code)
        self._set(changes, "Pass", passed)
        self._set(changes, "Fail", not passed)
        self._set(changes, "DefectCount", max(0, min(int(defects), 2**31 - 1)))
        self._set(changes, "InspectionId", inspection_id)
        self._set(changes, "ErrorCode", int(code))
        # a verdict's own: never beside Pass nor an error code (those say it already)
        judged = not passed and code is ErrorCode.NONE
        self._set(changes, "BlankFrame", blank_frame and judged)
        # a blank frame matches no golden: one cause told, the one to fix first
        self._set(changes, "WrongView", wrong_view and judged and not blank_frame)
        # ResultReady before Busy drops: a PLC never sees neither while a part is open
        self._set(changes, "ResultReady", True)
        self._set(changes, "Busy", False)
        self.phase = Phase.RESULT
        self._result_at = now
        return changes

    def _dropped(self, changes: Changes, inspection_id: str | None = None) -> None:
        """The open part's result is not to be taken for a verdict: Fail, ErrorCode 5,
        no ResultReady, ready again. ``inspection_id``: the dropped result's, when it
        never showed (a new Trigger came while it was judged)."""
        if self.on_failure is not None and self.tags["ErrorCode"] == ErrorCode.NONE:
            # (a result that failed with a code was counted then: once per part)
            self.on_failure(ErrorCode.ACK_TIMEOUT)
        self._ended_part(str(self.tags["InspectionId"]) if inspection_id is None
                         else inspection_id, False, ErrorCode.ACK_TIMEOUT, acknowledged=False)
        self._no_verdict(changes, ErrorCode.ACK_TIMEOUT, fail=True)
        self._to_ready(changes)

    def show_alarm(self, raised: bool) -> Changes:
        """``FailRateAlarm``: whether the recipe in ``Recipe`` is in fail-rate alarm now
        (docs/lifecycle.md section 6). Apart from the handshake: it never holds a trigger
        nor changes a verdict, it tells the line to look at its parts."""
        changes: Changes = []
        if raised != self.tags["FailRateAlarm"]:
            self._set(changes, "FailRateAlarm", raised)
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
            self._dropped(changes)
        return changes

    def _to_ready(self, changes: Changes) -> None:
        self._set(changes, "ResultReady", False)
        self._set(changes, "Trigger", False)
        self._set(changes, "ResultAck", False)
        if self.recipe_fault is not ErrorCode.NONE:
            self._show_fault(changes)  # a refused switch during the part still stands
        # last: announces everything above (never again once the server is stopping)
        self._set(changes, "TriggerReady", not self.closed)
        self.phase = Phase.READY

