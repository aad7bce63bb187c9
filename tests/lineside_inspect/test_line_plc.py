"""The PLC handshake (issue 13) with real peers: a real ``asyncua`` client and a real
``pymodbus`` client against a real server (uvicorn on loopback, onnxruntime, SQLite
store) reading simulated 30 fps MJPEG cameras. Every port is a free loopback one."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from asyncua import Client, ua
from pydantic import ValidationError
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.pdu.bit_message import WriteSingleCoilRequest

from lineside_inspect.cameras.simulator import MJPEGSimulator, counter_frame, folder_frames
from lineside_inspect.config import CameraConfig, load_settings
from lineside_inspect.errors import ConfigError
from lineside_inspect.line import peer_logs
from lineside_inspect.line.config import LineSettings, ModbusConfig, OpcUaConfig
from lineside_inspect.line.modbus import BLOCK, COILS, MAX_CONNECTIONS, REGISTERS
from lineside_inspect.line.opcua import OpcUaAdapter
from lineside_inspect.line.peer_logs import BOUND
from lineside_inspect.line.station import Changes, ErrorCode, Phase, Station, TagValue

from .conftest import CHROMIUM, KEYS, MODEL, Running, keyed, stall_stream, start_server
from .conftest import CHROMIUM_ARGS as ARGS
from .fleet_peers import free_port

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "datasets" / "deeppcb-sample" / "images"
REF_MODEL = ROOT / "models" / "deeppcb-ref" / "1"
GOOD_MODEL = ROOT / "models" / "deeppcb-good" / "1"
GOOD_BOARD = SAMPLE / "group00041" / "00041000_temp.jpg"  # the detector finds nothing
DEFECTIVE_BOARD = SAMPLE / "group00041" / "00041000_test.jpg"  # the detector fails it
STATION = ROOT / "configs" / "line"
NS = "urn:lineside"
WAIT_S = 15.0  # upper bound of every poll below (never a timing assertion)


# -- the state machine alone --------------------------------------------------------
def _station(check: Callable[[str], ErrorCode] | None = None, ack_timeout_s: float = 5.0) -> Station:
    known = {"deeppcb", "lenient"}
    return Station("s1", "deeppcb", ack_timeout_s=ack_timeout_s, now=100.0,
                   check_recipe=check or (lambda n: ErrorCode.NONE if n in known
                                          else ErrorCode.UNKNOWN_RECIPE))


def test_station_handshake_order_and_fail_safe() -> None:
    st = _station()
    step = st.plc_write("Trigger", True, 100.1)
    assert step.inspect_recipe == "deeppcb" and st.phase is Phase.BUSY
    names = [n for n, _ in step.changes]
    assert names.index("TriggerReady") < names.index("Busy")
    assert st.tags["TriggerReady"] is False and st.tags["Busy"] is True
    changes = st.finished(True, 0, "abc", 100.3, part=step.part)
    names = [n for n, _ in changes]
    # the data is written before ResultReady announces it, and ResultReady before Busy drops
    assert names.index("Pass") < names.index("ResultReady") < names.index("Busy")
    assert st.tags["Pass"] is True and st.tags["Fail"] is False and st.tags["ResultReady"] is True
    # an ack is the only way on; TriggerReady comes back last
    changes = st.plc_write("ResultAck", True, 100.4).changes
    assert changes[-1] == ("TriggerReady", True)
    assert st.tags["Trigger"] is False and st.tags["ResultAck"] is False
    assert st.tags["ResultReady"] is False and st.phase is Phase.READY
    # an error never yields Pass
    st.plc_write("Trigger", True, 101.0)
    st.failed(ErrorCode.NONE, 101.1)  # even a "no error" failure is a Fail with a code
    assert st.tags["Pass"] is False and st.tags["Fail"] is True
    assert st.tags["ErrorCode"] == ErrorCode.INTERNAL
    st.plc_write("ResultAck", True, 101.2)
    st.plc_write("Trigger", True, 101.3)
    st.failed(ErrorCode.CAMERA_OFFLINE, 101.4)
    assert (st.tags["Pass"], st.tags["Fail"], st.tags["ErrorCode"]) == (False, True, 1)
    # a trigger clears the last result
    st.plc_write("ResultAck", True, 101.5)
    st.plc_write("Trigger", True, 101.6)
    assert (st.tags["Fail"], st.tags["ErrorCode"], st.tags["InspectionId"]) == (False, 0, "")


def test_station_ack_timeout_stray_ack_and_heartbeat() -> None:
    st = _station(ack_timeout_s=2.0)
    assert st.plc_write("ResultAck", True, 100.0).changes == [("ResultAck", False)]  # stray: reset
    assert st.tick(100.5) == [] and st.tick(101.0) == [("Heartbeat", 1)]
    st.plc_write("Trigger", True, 101.0)
    st.finished(True, 0, "id1", 101.0)
    assert st.tick(102.9) == [("Heartbeat", 2)] and st.phase is Phase.RESULT
    st.tick(103.0)  # 2 s without ResultAck: dropped, Fail + ErrorCode 5, ready again
    assert st.phase is Phase.READY and st.tags["TriggerReady"] is True
    assert (st.tags["Pass"], st.tags["Fail"], st.tags["ErrorCode"]) == (False, True, 5)
    assert st.tags["ResultReady"] is False and st.tags["Trigger"] is False
    # a late result of a part no longer in progress changes nothing
    assert st.finished(True, 0, "late", 103.1) == []
    assert st.tick(100.0 + 2**32 + 5)[0] == ("Heartbeat", 5)  # UInt32 wraps


def test_station_recipe_switch() -> None:
    st = _station()
    assert st.plc_write("Recipe", "lenient", 100.0).changes == [("Recipe", "lenient")]
    assert st.plc_write("Trigger", True, 100.1).inspect_recipe == "lenient"
    # refused while a part is in progress: read back, the part's result untouched...
    assert st.plc_write("Recipe", "nope", 100.2).changes == [("Recipe", "lenient")]
    assert st.tags["ErrorCode"] == 0
    st.finished(False, 2, "x", 100.3)
    assert (st.tags["Fail"], st.tags["ErrorCode"], st.tags["DefectCount"]) == (True, 0, 2)
    # ...and shown once it is acknowledged, before TriggerReady
    changes = st.plc_write("ResultAck", True, 100.4).changes
    assert changes.index(("ErrorCode", ErrorCode.UNKNOWN_RECIPE)) < changes.index(("TriggerReady", True))
    # the fault shown leaves nothing of the acknowledged part ("x" was never judged faulty)
    assert (st.tags["Pass"], st.tags["Fail"], st.tags["DefectCount"], st.tags["InspectionId"]) \
        == (False, True, 0, "")
    # a usable recipe ends the fault, Fail with it: no Fail left to read as a defective part
    assert st.plc_write("Recipe", "deeppcb", 100.6).changes == [
        ("Recipe", "deeppcb"), ("Fail", False), ("ErrorCode", 0)]
    assert (st.tags["Pass"], st.tags["Fail"], st.tags["InspectionId"]) == (False, False, "")
    assert st.plc_write("Trigger", True, 100.7).inspect_recipe == "deeppcb"


def test_a_parts_end_names_the_recipe_it_was_judged_with() -> None:
    """The next product's Recipe written before ResultAck (as a line may): the part's end
    named the new recipe (review, session 34)."""
    from lineside_inspect.line.station import PartEnd

    st = _station()
    ended: list[PartEnd] = []
    st.on_part_end = ended.append
    assert st.plc_write("Trigger", True, 100.1).inspect_recipe == "deeppcb"
    st.finished(True, 0, "i1", 100.2)
    st.plc_write("Recipe", "lenient", 100.3)  # the next product, before the ack
    st.plc_write("ResultAck", True, 100.4)
    st.plc_write("Trigger", False, 100.5)
    st.plc_write("Trigger", True, 100.6)
    st.finished(False, 1, "i2", 100.7)
    st.tick(110.0)  # no ack: dropped
    assert [(e.part, e.recipe, e.inspection_id, e.passed, e.acknowledged, e.error_code)
            for e in ended] == [(1, "deeppcb", "i1", True, True, ErrorCode.NONE),
                                (2, "lenient", "i2", False, False, ErrorCode.ACK_TIMEOUT)]


def test_blank_frame_is_told_beside_fail_and_cleared_with_the_part() -> None:
    """A part failed as blank_frame (a lens cap, a lamp off) read as a plain Fail with
    ErrorCode 0: a PLC could not tell a camera to check from a part to scrap (review,
    session 39). ``BlankFrame`` says it beside ``Fail``; never beside ``Pass`` or an error
    code, cleared by the next trigger and by a dropped result; the part's end says it."""
    from lineside_inspect.line.station import TAGS, PartEnd

    assert list(TAGS).index("BlankFrame") == 13  # after the older tags: no address moves
    st = _station(ack_timeout_s=2.0)
    ended: list[PartEnd] = []
    st.on_part_end = ended.append
    part = st.plc_write("Trigger", True, 100.0)
    changes = st.finished(False, 0, "capped", 100.1, part=part.part, blank_frame=True)
    assert changes.index(("BlankFrame", True)) < changes.index(("ResultReady", True))
    assert (st.tags["Fail"], st.tags["ErrorCode"], st.tags["BlankFrame"]) == (True, 0, True)
    st.plc_write("ResultAck", True, 100.2)
    assert st.tags["BlankFrame"] is True  # read with the result until the next trigger
    st.plc_write("Trigger", False, 100.3)
    part = st.plc_write("Trigger", True, 100.4)
    assert ("BlankFrame", False) in part.changes and st.tags["BlankFrame"] is False
    st.finished(True, 0, "good", 100.5, part=part.part, blank_frame=True)  # never with Pass
    assert (st.tags["Pass"], st.tags["BlankFrame"]) == (True, False)
    st.plc_write("ResultAck", True, 100.6)
    st.plc_write("Trigger", False, 100.7)
    part = st.plc_write("Trigger", True, 100.8)
    st.finished(False, 0, "missed", 100.9, part=part.part, blank_frame=True)
    st.tick(103.0)  # no ack: dropped, ErrorCode 5, and no BlankFrame left beside it
    assert (st.tags["ErrorCode"], st.tags["BlankFrame"]) == (ErrorCode.ACK_TIMEOUT, False)
    assert [(e.inspection_id, e.blank_frame) for e in ended] == [
        ("capped", True), ("good", False), ("missed", False)]


def test_wrong_view_is_told_beside_fail_never_with_blank_frame() -> None:
    """A frame not of its golden's view (reason reference_mismatch: another product, the
    wrong golden, the camera knocked) read as a plain Fail with ErrorCode 0, as a defect
    did, though nothing was judged either (review, session 39). ``WrongView`` says it beside
    ``Fail``: never with Pass, an error code or ``BlankFrame`` (a blank frame matches no
    golden: the blank is the cause told), cleared by the next trigger and a dropped
    result; added after BlankFrame, so no address moves; the part's end says it."""
    from lineside_inspect.line.station import TAGS, PartEnd

    assert list(TAGS)[-2:] == ["BlankFrame", "WrongView"]
    st = _station(ack_timeout_s=2.0)
    ended: list[PartEnd] = []
    st.on_part_end = ended.append

    def part(t: float, passed: bool, iid: str, **why: bool) -> None:
        step = st.plc_write("Trigger", True, t)
        assert ("WrongView", False) in step.changes  # the last part's cleared
        changes = st.finished(passed, 0, iid, t + 0.1, part=step.part, **why)
        assert changes.index(("WrongView", st.tags["WrongView"])) < changes.index(
            ("ResultReady", True))

    part(100.0, False, "moved", wrong_view=True)
    assert (st.tags["Fail"], st.tags["ErrorCode"], st.tags["BlankFrame"],
            st.tags["WrongView"]) == (True, 0, False, True)
    st.plc_write("ResultAck", True, 100.2)
    assert st.tags["WrongView"] is True  # read with the result until the next trigger
    st.plc_write("Trigger", False, 100.3)
    part(100.4, False, "capped", wrong_view=True, blank_frame=True)
    assert (st.tags["BlankFrame"], st.tags["WrongView"]) == (True, False)
    st.plc_write("ResultAck", True, 100.6)
    st.plc_write("Trigger", False, 100.7)
    part(100.8, True, "good", wrong_view=True)  # never with Pass
    assert (st.tags["Pass"], st.tags["WrongView"]) == (True, False)
    st.plc_write("ResultAck", True, 101.0)
    st.plc_write("Trigger", False, 101.1)
    part(101.2, False, "missed", wrong_view=True)
    assert st.tags["WrongView"] is True
    st.tick(104.0)  # no ack: dropped, ErrorCode 5, and no WrongView left beside it
    assert (st.tags["ErrorCode"], st.tags["WrongView"]) == (ErrorCode.ACK_TIMEOUT, False)
    assert [(e.inspection_id, e.blank_frame, e.wrong_view) for e in ended] == [
        ("moved", False, True), ("capped", True, False), ("good", False, False),
        ("missed", False, False)]


def test_a_fault_after_a_good_part_leaves_nothing_of_it() -> None:
    """A good part acknowledged, then a refused Recipe: Fail, code 6 and no InspectionId
    (not 'good-part' beside Fail); a usable recipe then: neither Pass nor Fail, code 0."""
    st = _station()
    part = st.plc_write("Trigger", True, 100.0)
    st.finished(True, 0, "good-part", 100.1, part=part.part)
    st.plc_write("ResultAck", True, 100.2)
    st.plc_write("Recipe", "typo", 100.3)
    assert (st.tags["Pass"], st.tags["Fail"], st.tags["ErrorCode"], st.tags["InspectionId"],
            st.tags["DefectCount"]) == (False, True, ErrorCode.UNKNOWN_RECIPE, "", 0)
    st.plc_write("Recipe", "lenient", 100.4)
    assert (st.tags["Pass"], st.tags["Fail"], st.tags["ErrorCode"], st.tags["InspectionId"]) \
        == (False, False, 0, "")


def test_a_refused_recipe_is_a_fault_until_a_usable_one_is_written() -> None:
    """A failed product change is never judged with the old product's recipe: each trigger
    ends at once with Fail and the code, until the PLC writes a recipe the station takes."""
    st = _station()
    changes = st.plc_write("Recipe", "productB", 100.0).changes
    assert changes[0] == ("Recipe", "deeppcb")  # reads back the recipe in force
    # no Pass next to an error code (the last part's Pass is cleared with it)
    assert (st.tags["Pass"], st.tags["Fail"], st.tags["ErrorCode"]) == (False, True, 6)
    for t in (100.1, 100.3):
        step = st.plc_write("Trigger", True, t)
        assert step.inspect_recipe is None  # nothing is inspected
        names = [n for n, _ in step.changes]
        assert names.index("Busy") < names.index("ErrorCode") < names.index("ResultReady")
        assert (st.tags["Pass"], st.tags["Fail"], st.tags["ErrorCode"], st.tags["ResultReady"],
                st.tags["InspectionId"]) == (False, True, ErrorCode.UNKNOWN_RECIPE, True, "")
        st.plc_write("ResultAck", True, t + 0.1)
        assert st.tags["TriggerReady"] is True and st.tags["ErrorCode"] == 6
    # a recipe the camera cannot run is a fault of its own code; the same rules
    st.check_recipe = lambda n: ErrorCode.RECIPE_NOT_USABLE if n == "ref" else ErrorCode.NONE
    st.plc_write("Recipe", "ref", 100.5)
    assert st.plc_write("Trigger", True, 100.6).inspect_recipe is None
    assert st.tags["ErrorCode"] == ErrorCode.RECIPE_NOT_USABLE
    st.plc_write("ResultAck", True, 100.7)
    # writing a usable recipe (even the one in force) ends the fault
    assert st.plc_write("Recipe", "deeppcb", 100.8).changes == [
        ("Recipe", "deeppcb"), ("Fail", False), ("ErrorCode", 0)]
    step = st.plc_write("Trigger", True, 100.9)
    assert step.inspect_recipe == "deeppcb" and st.tags["ErrorCode"] == 0


def test_a_trigger_while_not_ready_is_refused_and_drops_the_open_part() -> None:
    """A new Trigger (0 then 1) at the wrong time reads back 0 at once, and the part the
    PLC gave up on can never be read as the answer to it."""
    st = _station()
    # part N's result waits for ResultAck; the PLC triggers part N+1 instead
    n = st.plc_write("Trigger", True, 100.0)
    st.finished(True, 0, "part-n", 100.1, part=n.part)
    st.plc_write("Trigger", False, 100.15)
    changes = st.plc_write("Trigger", True, 100.2).changes
    assert ("Trigger", False) in changes and st.tags["Trigger"] is False
    assert changes[-1] == ("TriggerReady", True)
    assert (st.tags["ResultReady"], st.tags["Pass"], st.tags["Fail"], st.tags["InspectionId"],
            st.tags["ErrorCode"]) == (False, False, True, "", ErrorCode.ACK_TIMEOUT)
    # a Trigger while busy: refused at once, and the part's result, when it comes, is dropped
    m = st.plc_write("Trigger", True, 101.0)
    assert m.inspect_recipe == "deeppcb" and m.part == n.part + 1
    st.plc_write("Trigger", False, 101.05)
    assert st.plc_write("Trigger", True, 101.1).changes == [("Trigger", False)]
    # the same 1 again (a cyclic writer) changes nothing more: Trigger still reads 0
    assert st.plc_write("Trigger", True, 101.15).changes == [("Trigger", False)]
    st.finished(True, 0, "part-m", 101.2, part=m.part)
    assert (st.tags["ResultReady"], st.tags["Pass"], st.tags["InspectionId"], st.tags["ErrorCode"],
            st.tags["Busy"], st.tags["TriggerReady"]) == (False, False, "", 5, False, True)
    # a result of an older part never answers the part in progress
    k = st.plc_write("Trigger", True, 102.0)  # ready: a 1 over the PLC's last 1 is a new part
    assert st.finished(True, 0, "part-m", 102.1, part=m.part) == []
    assert st.tags["Busy"] is True and st.tags["ResultReady"] is False
    st.finished(False, 1, "part-k", 102.2, part=k.part)
    assert (st.tags["ResultReady"], st.tags["InspectionId"]) == (True, "part-k")


def test_a_repeated_trigger_write_is_the_same_part() -> None:
    """A Modbus retry or a cyclic writer writes Trigger = 1 again over its own 1: the part
    in progress goes on and is answered; only a 0 between makes a new trigger."""
    st = _station()
    part = st.plc_write("Trigger", True, 100.0)
    retry = st.plc_write("Trigger", True, 100.02)  # while Busy
    assert retry.inspect_recipe is None and retry.changes == [("Trigger", True)]
    assert st.phase is Phase.BUSY and st.tags["Trigger"] is True
    st.finished(True, 2, "part-1", 100.1, part=part.part)
    assert st.plc_write("Trigger", True, 100.15).changes == [("Trigger", True)]  # ResultReady
    assert (st.tags["ResultReady"], st.tags["InspectionId"], st.tags["ErrorCode"]) == \
        (True, "part-1", 0)
    st.plc_write("ResultAck", True, 100.2)
    assert st.phase is Phase.READY and st.tags["Trigger"] is False
    # ready again: the next 1 is the next part, whatever the PLC wrote last
    assert st.plc_write("Trigger", True, 100.3).part == part.part + 1


def test_a_station_without_a_recipe_follows_the_default() -> None:
    st = Station("s1", "", follows_default=True, ack_timeout_s=5.0, now=100.0,
                 check_recipe=lambda n: ErrorCode.NONE)
    assert st.use_default("deeppcb-default") == [("Recipe", "deeppcb-default")]
    assert st.use_default("deeppcb-default") == []
    assert st.plc_write("Trigger", True, 100.1).inspect_recipe == "deeppcb-default"
    st.plc_write("Recipe", "lenient", 100.2)  # the PLC chose: the default no longer applies
    assert st.use_default("other") == [] and st.recipe == "lenient"


def test_the_alarm_tag_is_a_level_apart_from_the_handshake() -> None:
    st = _station()
    assert st.tags["FailRateAlarm"] is False and ("FailRateAlarm", False) in st.snapshot()
    assert st.show_alarm(True) == [("FailRateAlarm", True)]
    assert st.show_alarm(True) == []  # a level: told once per change
    step = st.plc_write("Trigger", True, 100.0)  # a station in alarm still takes triggers
    assert step.inspect_recipe == "deeppcb"
    changes = st.finished(True, 0, "id1", 100.1, part=step.part)
    assert ("Pass", True) in changes and st.tags["FailRateAlarm"] is True
    assert st.show_alarm(False) == [("FailRateAlarm", False)]


class _Recorder:
    """A protocol adapter that keeps each publication (a list of changes) per station."""

    name = "recorder"

    def __init__(self) -> None:
        self.published: dict[str, list[Changes]] = {}

    async def start(self, stations: Any, on_write: Any) -> None: ...

    async def write(self, station_id: str, changes: Changes) -> None:
        self.published.setdefault(station_id, []).append(list(changes))

    async def stop(self) -> None: ...


def test_sigterm_stops_triggers_but_lets_the_open_part_finish_and_failures_are_told() -> None:
    """At SIGTERM a station takes no trigger, but the part being judged still gets its
    verdict (it was scrapped with ErrorCode 8 while its inspection was stored as a pass);
    only the server's stop ends a part still open. Every part that ends without a verdict
    is told to the failure counter: a recipe fault, a part the PLC gave up, the stop."""
    told: list[ErrorCode] = []
    st = Station("s", "r1", follows_default=False, ack_timeout_s=5.0, now=100.0,
                 check_recipe=lambda n: ErrorCode.NONE)
    st.on_failure = told.append
    step = st.plc_write("Trigger", True, 100.0)
    assert st.stop_taking() == [("TriggerReady", False)]
    assert st.plc_write("Trigger", False, 100.01).changes == [("Trigger", False)]
    changes = st.finished(True, 0, "i1", 100.1, part=step.part)
    assert ("Pass", True) in changes and ("ResultReady", True) in changes and not told
    assert st.close(100.2) == [] and st.tags["TriggerReady"] is False  # nothing was open
    # a part still open at the stop: ErrorCode 8, told
    st2 = Station("t", "r1", follows_default=False, ack_timeout_s=5.0, now=100.0,
                  check_recipe=lambda n: ErrorCode.NONE)
    st2.on_failure = told.append
    st2.plc_write("Trigger", True, 100.0)
    st2.stop_taking()
    assert ("ErrorCode", int(ErrorCode.SHUTDOWN)) in st2.close(100.3)
    # a trigger after a refused recipe, and a part the PLC gave up (0 then 1 while busy)
    st3 = Station("u", "r1", follows_default=False, ack_timeout_s=5.0, now=100.0,
                  check_recipe=lambda n: ErrorCode.UNKNOWN_RECIPE if n == "nope" else ErrorCode.NONE)
    st3.on_failure = told.append
    st3.plc_write("Recipe", "nope", 100.0)
    st3.plc_write("Trigger", True, 100.1)
    st3.plc_write("ResultAck", True, 100.2)
    st3.plc_write("Trigger", False, 100.3)
    st3.plc_write("ResultAck", False, 100.3)
    st3.plc_write("Recipe", "r1", 100.4)
    part = st3.plc_write("Trigger", True, 100.5).part
    st3.plc_write("Trigger", False, 100.6)
    st3.plc_write("Trigger", True, 100.7)  # given up: dropped when its inspection ends
    st3.finished(True, 0, "i2", 100.8, part=part)
    assert told == [ErrorCode.SHUTDOWN, ErrorCode.UNKNOWN_RECIPE, ErrorCode.ACK_TIMEOUT]
    # after SIGTERM a part the PLC gives up (0 then 1) is still dropped: its late verdict
    # must not read as the answer to the refused trigger
    st4 = Station("v", "r1", follows_default=False, ack_timeout_s=5.0, now=100.0,
                  check_recipe=lambda n: ErrorCode.NONE)
    part = st4.plc_write("Trigger", True, 100.0).part
    st4.stop_taking()
    st4.plc_write("Trigger", False, 100.1)
    st4.plc_write("Trigger", True, 100.2)
    late = st4.finished(True, 0, "old", 100.3, part=part)
    assert ("ErrorCode", int(ErrorCode.ACK_TIMEOUT)) in late and ("ResultReady", True) not in late
    # a part that failed with a code and then went unacknowledged is counted once
    told.clear()
    st5 = Station("w", "r1", follows_default=False, ack_timeout_s=1.0, now=100.0,
                  check_recipe=lambda n: ErrorCode.NONE)
    st5.on_failure = told.append
    part = st5.plc_write("Trigger", True, 100.0).part
    st5.failed(ErrorCode.CAMERA_OFFLINE, 100.1, part=part)
    assert ("ErrorCode", int(ErrorCode.ACK_TIMEOUT)) in st5.tick(102.0)
    assert told == [ErrorCode.CAMERA_OFFLINE]


def test_closed_stations_are_served_a_while_before_the_adapters_stop() -> None:
    """The servers went 3 ms after ErrorCode 8 was set: a PLC polling every 100 ms never
    read why its part ended. They serve ``close_hold_s`` after the stations closed."""
    from types import SimpleNamespace

    from lineside_inspect.line.plc import PlcLine

    stopped: list[bool] = []

    class Adapter(_Recorder):
        async def stop(self) -> None:
            stopped.append(True)

    adapter = Adapter()
    service = SimpleNamespace(registry=SimpleNamespace(default_recipe="r1", recipes=lambda: []))
    line = PlcLine(service, LineSettings(close_hold_s=2.0), [adapter],  # type: ignore[arg-type]
                   lambda: frozenset())

    async def run() -> None:
        line.stations["a"] = Station("a", "r1", follows_default=False, ack_timeout_s=5.0,
                                     now=time.monotonic(), check_recipe=lambda n: ErrorCode.NONE)
        await line.close()  # SIGTERM: the stations close at once
        stopping = asyncio.create_task(line.stop())  # the drain is over at once
        await asyncio.sleep(0.2)
        assert not stopped and line.stations["a"].tags["TriggerReady"] is False
        await stopping
        assert stopped == [True]

    asyncio.run(run())


def test_the_alarm_tags_follow_each_stations_recipe_and_survive_a_failed_read(
        caplog: pytest.LogCaptureFixture) -> None:
    """Driven without servers: a Recipe write (over either protocol) or a trigger that picks
    up a new default publishes the new recipe's alarm in the same publication; stations
    are apart; an alarm that cannot be read leaves the tags as they were, told once."""
    from types import SimpleNamespace

    from lineside_inspect.line.plc import PlcLine

    in_alarm: set[str] = {"r1"}
    broken = [False]

    def recipes_in_alarm() -> frozenset[str]:
        if broken[0]:
            raise RuntimeError("the alarm is gone")
        return frozenset(in_alarm)

    async def inspect_camera(*_: Any, **__: Any) -> Any:
        return SimpleNamespace(verdict="pass", defects=[], id="i1")

    registry = SimpleNamespace(default_recipe="r1", recipes=lambda: [])
    service = SimpleNamespace(registry=registry, inspect_camera=inspect_camera)
    recorder = _Recorder()
    line = PlcLine(service, LineSettings(), [recorder], recipes_in_alarm)  # type: ignore[arg-type]
    line.check_recipe = lambda camera_id, name: ErrorCode.NONE  # type: ignore[method-assign]

    async def run() -> None:
        for sid, recipe in (("a", "r1"), ("b", "r2"), ("c", "")):
            line.stations[sid] = Station(sid, recipe, follows_default=not recipe,
                                         ack_timeout_s=5.0, now=time.monotonic(),
                                         check_recipe=lambda n: ErrorCode.NONE)
            line._locks[sid] = asyncio.Lock()

        async def settled() -> None:
            while line._writes or line._tasks:
                await asyncio.sleep(0)

        line.tick(time.monotonic())
        await settled()
        alarm = {sid: st.tags["FailRateAlarm"] for sid, st in line.stations.items()}
        assert alarm == {"a": True, "b": False, "c": True}  # c follows the default, r1
        assert [("FailRateAlarm", True)] in [p[-1:] for p in recorder.published["a"]]
        # a Recipe write: the alarm of the new recipe goes out with it
        line.plc_write("b", "Recipe", "r1")
        await settled()
        assert recorder.published["b"][-1] == [("Recipe", "r1"), ("FailRateAlarm", True)]
        line.plc_write("a", "Recipe", "r2")
        await settled()
        assert recorder.published["a"][-1] == [("Recipe", "r2"), ("FailRateAlarm", False)]
        # a trigger that takes up a new default publishes its alarm with the new Recipe
        registry.default_recipe = "r2"
        line.plc_write("c", "Trigger", True)
        first = line.stations["c"].tags
        assert first["Recipe"] == "r2" and first["FailRateAlarm"] is False
        await settled()
        trigger_publication = next(p for p in recorder.published["c"] if ("Recipe", "r2") in p)
        assert ("FailRateAlarm", False) in trigger_publication
        # the alarm cannot be read: every tag keeps its value, one log line for many ticks
        broken[0] = True
        in_alarm.clear()
        before = {sid: st.tags["FailRateAlarm"] for sid, st in line.stations.items()}
        for k in range(5):
            line.tick(time.monotonic() + k)
        line.plc_write("a", "Recipe", "r1")
        await settled()
        assert {sid: st.tags["FailRateAlarm"] for sid, st in line.stations.items()} == before
        assert caplog.text.count("reading the fail-rate alarms failed") == 1
        broken[0] = False  # readable again: the tags follow
        line.tick(time.monotonic())
        await settled()
        assert not any(st.tags["FailRateAlarm"] for st in line.stations.values())

    asyncio.run(run())


def test_a_closing_station_takes_no_trigger_and_answers_the_open_part() -> None:
    st = _station()
    step = st.plc_write("Trigger", True, 100.0)
    changes = st.close(100.1)
    assert changes[0] == ("TriggerReady", False)
    assert (st.tags["ResultReady"], st.tags["Fail"], st.tags["ErrorCode"]) == (True, True, 8)
    assert st.finished(True, 0, "late", 100.2, part=step.part) == []  # too late: ignored
    st.plc_write("ResultAck", True, 100.3)
    assert st.tags["ResultReady"] is False and st.tags["TriggerReady"] is False
    assert st.plc_write("Trigger", True, 100.4).changes == [("Trigger", False)]
    assert st.phase is Phase.READY and st.tags["Busy"] is False


def test_line_settings_refuse_unsecured_network_endpoints(tmp_path: Path) -> None:
    cfg = tmp_path / "serve.yaml"
    cfg.write_text("line:\n  opcua:\n    endpoint: opc.tcp://0.0.0.0:4840/lineside/\n")
    with pytest.raises(ConfigError, match="anonymous access is only allowed on loopback"):
        load_settings(cfg)
    cfg.write_text("line:\n  modbus:\n    host: 0.0.0.0\n")
    with pytest.raises(ConfigError, match="Modbus has no authentication"):
        load_settings(cfg)
    cfg.write_text("line:\n  modbus:\n    host: 0.0.0.0\n    open_to_network: true\n")
    assert load_settings(cfg).line.modbus == ModbusConfig(host="0.0.0.0", open_to_network=True)
    cfg.write_text("line:\n  opcua:\n    endpoint: opc.tcp://127.0.0.1:4840/lineside/\n"
                   "    certificate: /nonexistent.der\n    private_key: /nonexistent.pem\n")
    with pytest.raises(ConfigError, match=r"certificate: /nonexistent\.der does not exist"):
        load_settings(cfg)


@pytest.mark.parametrize("endpoint", [
    "opc.tcp://127.0.0.1:4840/x y", "opc.tcp://127.0.0.1:4840/x?q=1",
    "opc.tcp://127.0.0.1:4840/x#f", "opc.tcp://127.0.0.1:4840/x;p",
    "opc.tcp://user:s3cret@127.0.0.1:4840/x"])
def test_an_opcua_endpoint_path_of_more_than_a_path_is_refused(tmp_path: Path, endpoint: str) -> None:
    # it started and announced the URL as written to every client: a space, query or
    # fragment in the EndpointUrl a PLC must match, a password in GetEndpoints (mopup, 38)
    cfg = tmp_path / "serve.yaml"
    cfg.write_text(f"line:\n  opcua:\n    endpoint: '{endpoint}'\n")
    with pytest.raises(ConfigError, match=r"line\.opcua: endpoint .*plain") as info:
        load_settings(cfg)
    assert "s3cret" not in str(info.value) and "\n" not in str(info.value)
    for ok in ("opc.tcp://127.0.0.1:4840", "opc.tcp://127.0.0.1:4840/a-b_c.d~/e/"):
        cfg.write_text(f"line:\n  opcua:\n    endpoint: '{ok}'\n")
        assert load_settings(cfg).line.opcua.endpoint == ok


def test_an_opcua_endpoint_on_a_host_named_like_its_scheme_is_taken(tmp_path: Path) -> None:
    # the path was read from the first place the host appeared: a box named "opc" (the
    # port left to its default) had ".tcp://opc/lineside/" refused as its path (late, 38)
    for name in ("cert.der", "key.pem"):
        (tmp_path / name).write_bytes(b"")
    for endpoint in ("opc.tcp://opc/lineside/", "opc.tcp://tcp"):
        cfg = OpcUaConfig(endpoint=endpoint, certificate=str(tmp_path / "cert.der"),
                          private_key=str(tmp_path / "key.pem"), trusted_certificates=str(tmp_path))
        assert cfg.port == 4840


def test_an_endpoint_of_another_scheme_is_refused_without_its_password(tmp_path: Path) -> None:
    # the refusal quoted the endpoint whole, its user and password with it (session 38)
    cfg = tmp_path / "serve.yaml"
    cfg.write_text("line:\n  opcua:\n    endpoint: 'http://plc:s3cret@127.0.0.1:4840/x'\n")
    with pytest.raises(ConfigError, match=r"must be opc\.tcp://") as info:
        load_settings(cfg)
    assert "s3cret" not in str(info.value)


def test_an_endpoint_with_a_password_and_a_bad_port_is_refused_without_it(tmp_path: Path) -> None:
    # the port was parsed first, and its refusal quoted the endpoint whole: the password
    # the credentials check was there to keep out of the message (docs pass, session 38)
    cfg = tmp_path / "serve.yaml"
    for endpoint in ("opc.tcp://plc:s3cret@127.0.0.1:99999/x", "opc.tcp://plc:s3cret@127.0.0.1:x/"):
        cfg.write_text(f"line:\n  opcua:\n    endpoint: '{endpoint}'\n")
        with pytest.raises(ConfigError, match=r"line\.opcua: endpoint must be plain") as info:
            load_settings(cfg)
        assert "s3cret" not in str(info.value)
    cfg.write_text("line:\n  opcua:\n    endpoint: 'opc.tcp://127.0.0.1:99999/x'\n")
    with pytest.raises(ConfigError, match=r"has an invalid port"):
        load_settings(cfg)


def test_a_port_in_use_is_a_config_error() -> None:
    import socket

    from lineside_inspect.server.app import create_app

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        for line in (LineSettings(modbus=ModbusConfig(port=port)),
                     LineSettings(opcua=OpcUaConfig(endpoint=f"opc.tcp://127.0.0.1:{port}/lineside/"))):
            with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}: "):
                create_app(keyed(line=line, store=False))
    # both on one free port: each was free alone, and the second bind was a traceback
    port = free_port()
    both = LineSettings(modbus=ModbusConfig(port=port),
                        opcua=OpcUaConfig(endpoint=f"opc.tcp://127.0.0.1:{port}/lineside/"))
    with pytest.raises(ConfigError, match=f"line.modbus: port {port} is also line.opcua's"):
        create_app(keyed(line=both, store=False))
    # on the HTTP server's own port: the stations came up (TriggerReady) before the HTTP
    # server failed to bind, "address already in use" with nothing else on it (review, 36)
    for what, line in (("line.modbus", LineSettings(modbus=ModbusConfig(port=port))),
                       ("line.opcua", LineSettings(opcua=OpcUaConfig(
                           endpoint=f"opc.tcp://localhost:{port}/lineside/")))):
        with pytest.raises(ConfigError, match=f"{what}: port {port} is also the HTTP server's"):
            create_app(keyed(line=line, store=False, port=port))
    # another address of the box on the same port is no clash
    create_app(keyed(line=LineSettings(modbus=ModbusConfig(port=port)), store=False,
                     host="127.0.0.2", port=port))


def _board(path: Path, patch: bool = False) -> np.ndarray:
    """A DeepPCB board as the camera shows it; ``patch``: with a magenta square on bare
    board, which no defect class covers and the good-only model fails."""
    from lineside_inspect.imageio import read_image

    image = read_image(path)
    if patch:
        image[40:100, 520:580] = (200, 30, 200)
    return image


# -- a real server with both protocols ---------------------------------------------
class Line:
    """The running server, its cameras and the line endpoints."""

    def __init__(self, srv: Running, sim: MJPEGSimulator, flaky: MJPEGSimulator,
                 fused: list[np.ndarray] | None = None) -> None:
        self.srv, self.sim, self.flaky = srv, sim, flaky
        # what the fused station's camera shows from its next frame on (fused[0])
        self.fused = fused if fused is not None else []
        self._unplugged = threading.Event()  # ends the flaky camera's stall (stall_flaky)
        plc = srv.app.state.line_plc
        self.opcua_url = next(a for a in plc.adapters if a.name == "OPC UA").endpoint
        self.modbus_port = next(a for a in plc.adapters if a.name == "Modbus TCP").port

    async def show(self, frame: np.ndarray) -> None:
        """The fused station's camera shows ``frame`` from now on: waits until the server
        has received it (a frame of the board before, sent before the switch, could arrive
        after the trigger and be the part's: a fresh-clone failure, session 44). The boards
        differ where ``_board`` patches one."""
        self.fused[0] = frame
        worker, where = self.srv.app.state.cameras.worker("fused"), np.s_[40:100, 520:580]
        for _ in range(400):
            latest = worker.latest()
            if latest is not None and latest.image.shape == frame.shape and np.abs(
                    latest.image[where].astype(np.int16) - frame[where]).mean() < 20:
                return
            await asyncio.sleep(0.05)
        raise AssertionError("the fused camera never showed the new board")

    async def stall_flaky(self) -> None:
        """The flaky camera's stream stalls (its connection open, no bytes) once the server
        has every frame sent before (:func:`stall_stream`), until :meth:`unplug_flaky`."""
        worker = self.srv.app.state.cameras.worker("flaky")
        await asyncio.to_thread(stall_stream, self.flaky, worker, self._unplugged, WAIT_S)

    def unplug_flaky(self) -> None:
        """The flaky camera is gone: a stalled stream ends, its server stops."""
        self._unplugged.set()
        self.flaky.kill()

    def inspection(self, inspection_id: str) -> dict[str, Any]:
        with self.srv.client("reviewer") as c:
            r = c.get(f"/v1/inspections/{inspection_id}")
            assert r.status_code == 200, r.text
            return dict(r.json())


@pytest.fixture(scope="module")
def line(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Line]:
    tmp = tmp_path_factory.mktemp("line")
    # two recipes on the bundled model: the camera's own, and one a PLC switches to
    (tmp / "deeppcb.yaml").write_text("name: deeppcb\nversion: '1'\nmodel: deeppcb\n")
    (tmp / "lenient.yaml").write_text("name: lenient\nversion: '7'\nmodel: deeppcb\n"
                                      "max_count: {open: 99, short: 99, mousebite: 99, spur: 99,"
                                      " copper: 99, pin-hole: 99}\n")
    sim = MJPEGSimulator(folder_frames(SAMPLE), fps=30)
    flaky = MJPEGSimulator(counter_frame, fps=30)
    import cv2

    capped = MJPEGSimulator(lambda i: np.full((640, 640, 3), 3, np.uint8), fps=10)
    fused_frame = [_board(DEFECTIVE_BOARD)]
    fused = MJPEGSimulator(lambda i: fused_frame[0], fps=10)
    flipped = tmp / "flipped.png"
    cv2.imwrite(str(flipped), cv2.flip(cv2.imread(str(STATION / "station1-reference.jpg")), -1))
    cams = [CameraConfig(id="sim", source=sim.url, recipe="deeppcb", stale_after_s=2),
            # stalls for longer than the trigger timeout without going offline, then dies
            CameraConfig(id="flaky", source=flaky.url, recipe="deeppcb", stale_after_s=4,
                         read_timeout_s=5, open_timeout_s=1, max_frame_age_s=0.1),
            # a station judged against its golden image by the reference model
            CameraConfig(id="ref", source=str(STATION / "station1"), recipe="deeppcb-ref",
                         reference=str(STATION / "station1-reference.jpg"), fps=5),
            # the same golden, its camera's lens capped: flat dark frames (last: the other
            # stations keep their Modbus blocks)
            CameraConfig(id="capped", source=capped.url, recipe="deeppcb-ref",
                         reference=str(STATION / "station1-reference.jpg")),
            # the station's parts against another product's golden (the golden turned
            # over): not its view (last again, for the same reason)
            CameraConfig(id="moved", source=str(STATION / "station1"), recipe="deeppcb-ref",
                         reference=str(flipped), fps=2),
            # the bundled detector fused with the bundled good-only model (last again)
            CameraConfig(id="fused", source=fused.url, recipe="deeppcb-fused")]
    settings = keyed(cameras=cams, models=[str(MODEL), str(REF_MODEL), str(GOOD_MODEL)],
                     recipes=[str(tmp / "deeppcb.yaml"), str(tmp / "lenient.yaml"),
                              str(ROOT / "configs" / "recipes" / "deeppcb-ref.yaml"),
                              str(ROOT / "configs" / "recipes" / "deeppcb-fused.yaml")],
                     store_pass_rate=0.0, line=LineSettings(
                         opcua=OpcUaConfig(endpoint="opc.tcp://127.0.0.1:0/lineside/"),
                         # a PLC's cycle (nine tag reads, then the ack) gets room for a
                         # thread starved a second or two on a loaded CI host (the trigger
                         # timeout stays under the stalled camera's going offline)
                         modbus=ModbusConfig(port=0), trigger_timeout_s=2.0, ack_timeout_s=4.0,
                         # the servers' hold at stop (close_hold_s: its own test's, and the
                         # shutdown tests' keep the default) is 1 s per stop for nothing here
                         close_hold_s=0))
    srv, stop = start_server(settings)
    running = Line(srv, sim, flaky, fused_frame)
    with srv.client("reviewer") as c:
        deadline = time.time() + WAIT_S
        while {h["state"] for h in c.get("/v1/cameras").json()} != {"online"}:
            assert time.time() < deadline, "cameras did not come online"
            time.sleep(0.1)
    yield running
    stop()
    sim.kill()
    running.unplug_flaky()
    capped.kill()
    fused.kill()


async def _until(read: Callable[[], Awaitable[Any]], want: Any = True) -> Any:
    deadline = time.monotonic() + WAIT_S
    while (value := await read()) != want:
        assert time.monotonic() < deadline, f"still {value!r}, waiting for {want!r}"
        await asyncio.sleep(0.005)
    return value


class OpcStation:
    """A PLC's view of one station over OPC UA."""

    def __init__(self, client: Client, idx: int, station: str) -> None:
        self.client, self.idx, self.station = client, idx, station

    def node(self, tag: str) -> Any:
        return self.client.get_node(f"ns={self.idx};s=Stations/{self.station}/{tag}")

    async def read(self, tag: str) -> Any:
        return await self.node(tag).read_value()

    async def write(self, tag: str, value: Any, kind: ua.VariantType) -> None:
        await self.node(tag).write_value(ua.DataValue(ua.Variant(value, kind)))

    async def cycle(self, *, ack: bool = True) -> dict[str, Any]:
        """One part: Trigger, wait for ResultReady, read the result, ResultAck."""
        await _until(lambda: self.read("TriggerReady"))
        await self.write("Trigger", True, ua.VariantType.Boolean)
        await _until(lambda: self.read("ResultReady"))
        result = {t: await self.read(t) for t in ("Pass", "Fail", "DefectCount", "InspectionId",
                                                  "ErrorCode", "Busy", "Recipe", "BlankFrame",
                                                  "WrongView")}
        if ack:
            await self.write("ResultAck", True, ua.VariantType.Boolean)
            await _until(lambda: self.read("TriggerReady"))
            assert await self.read("ResultReady") is False
            assert await self.read("Trigger") is False and await self.read("ResultAck") is False
        return result


async def _opc(line: Line, station: str, fn: Callable[[OpcStation], Awaitable[None]]) -> None:
    async with Client(line.opcua_url, timeout=10) as client:
        idx = await client.get_namespace_index(NS)
        await fn(OpcStation(client, idx, station))


def test_opcua_contract_and_handshake(line: Line) -> None:
    async def run(plc: OpcStation) -> None:
        client, idx = plc.client, plc.idx
        # browse names exactly as in the contract, under Objects/Stations/<camera id>
        station = await client.nodes.objects.get_child([f"{idx}:Stations", f"{idx}:sim"])
        names = {(await n.read_browse_name()).Name: n for n in await station.get_children()}
        assert set(names) == {"Trigger", "TriggerReady", "Busy", "ResultReady", "ResultAck",
                              "Pass", "Fail", "DefectCount", "InspectionId", "ErrorCode",
                              "Heartbeat", "Recipe", "FailRateAlarm", "BlankFrame",
                              "WrongView"}
        types = {n: await names[n].read_data_type_as_variant_type() for n in names}
        assert types["Trigger"] == ua.VariantType.Boolean and types["Pass"] == ua.VariantType.Boolean
        assert types["DefectCount"] == types["ErrorCode"] == ua.VariantType.Int32
        assert types["Heartbeat"] == ua.VariantType.UInt32
        assert types["InspectionId"] == types["Recipe"] == ua.VariantType.String
        assert types["FailRateAlarm"] == types["BlankFrame"] == types["WrongView"] \
            == ua.VariantType.Boolean
        # Lineside's tags are read-only to clients; the PLC's are writable
        for tag in ("Pass", "ResultReady", "TriggerReady", "ErrorCode", "FailRateAlarm",
                    "BlankFrame", "WrongView"):
            with pytest.raises(ua.UaStatusCodeError):
                await plc.write(tag, 0 if tag == "ErrorCode" else True,
                                ua.VariantType.Int32 if tag == "ErrorCode" else ua.VariantType.Boolean)
        beat = await plc.read("Heartbeat")
        await _until(lambda: plc.read("Heartbeat"), beat + 1)
        # the full handshake on fresh frames; each part gets its own stored inspection
        ids = set()
        for _ in range(3):
            before = time.time()
            r = await plc.cycle()
            assert r["Pass"] != r["Fail"] and r["ErrorCode"] == 0 and r["Busy"] is False
            doc = line.inspection(r["InspectionId"])
            assert doc["camera_id"] == "sim" and doc["recipe"]["name"] == "deeppcb"
            assert (doc["verdict"] == "pass") is r["Pass"]
            assert len(doc["defects"]) == r["DefectCount"]
            last = line.srv.app.state.cameras.last_results["sim"]
            assert last.id == r["InspectionId"]
            assert last.frame.timestamp > before  # judged a frame captured after the trigger
            ids.add(r["InspectionId"])
        assert len(ids) == 3

    asyncio.run(_opc(line, "sim", run))


def test_opcua_recipe_switch(line: Line) -> None:
    async def run(plc: OpcStation) -> None:
        assert await plc.read("Recipe") == "deeppcb"
        await plc.write("Recipe", "lenient", ua.VariantType.String)
        await _until(lambda: plc.read("Recipe"), "lenient")
        r = await plc.cycle()
        assert line.inspection(r["InspectionId"])["recipe"] == {"name": "lenient", "version": "7"}
        # the camera list and the status page show the PLC's recipe beside the configured
        # one (which HTTP triggers still use)
        with line.srv.client("reviewer") as c:
            sim = {h["id"]: h for h in c.get("/v1/cameras").json()}["sim"]
            assert (sim["recipe"], sim["plc_recipe"]) == ("deeppcb", "lenient")
            stations = c.get("/v1/overview").json()["stations"]
            assert {s["camera"]["id"]: s["camera"]["plc_recipe"] for s in stations}["sim"] == "lenient"
        # an unknown recipe is refused: ErrorCode 6, Recipe reads back the one in force
        await plc.write("Recipe", "no-such-recipe", ua.VariantType.String)
        await _until(lambda: plc.read("ErrorCode"), ErrorCode.UNKNOWN_RECIPE)
        assert await plc.read("Recipe") == "lenient"
        assert (await plc.read("Pass"), await plc.read("Fail")) == (False, True)
        # the product change failed: parts fail with the code, none judged as "lenient"
        stored = line.srv.app.state.cameras.last_results["sim"].id
        for _ in range(2):
            r = await plc.cycle()
            assert (r["Pass"], r["Fail"], r["ErrorCode"], r["InspectionId"]) == \
                (False, True, ErrorCode.UNKNOWN_RECIPE, "")
        assert line.srv.app.state.cameras.last_results["sim"].id == stored  # nothing inspected
        await plc.write("Recipe", "deeppcb", ua.VariantType.String)
        await _until(lambda: plc.read("ErrorCode"), 0)
        r = await plc.cycle()
        assert r["ErrorCode"] == 0 and line.inspection(r["InspectionId"])["recipe"]["name"] == "deeppcb"
        # a null String (some stacks send "" so) is no recipe: refused, and Recipe reads
        # back the one in force (it read null, and the old recipe judged without a fault)
        await plc.write("Recipe", None, ua.VariantType.String)
        await _until(lambda: plc.read("ErrorCode"), ErrorCode.UNKNOWN_RECIPE)
        assert await plc.read("Recipe") == "deeppcb"
        await plc.write("Recipe", "deeppcb", ua.VariantType.String)
        await _until(lambda: plc.read("ErrorCode"), 0)

    asyncio.run(_opc(line, "sim", run))


def test_recipe_must_suit_the_camera(line: Line) -> None:
    """A reference model's recipe needs a camera with a golden image, and a single-image
    recipe cannot run on one that names one: refused with ErrorCode 7, not a Fail later."""
    async def on(station: str, recipe: str, keep: str) -> None:
        async def run(plc: OpcStation) -> None:
            await plc.write("Recipe", recipe, ua.VariantType.String)
            await _until(lambda: plc.read("ErrorCode"), ErrorCode.RECIPE_NOT_USABLE)
            assert await plc.read("Recipe") == keep
            r = await plc.cycle()  # a fault until a usable recipe is written: no verdict
            assert (r["Pass"], r["Fail"], r["ErrorCode"]) == (False, True, ErrorCode.RECIPE_NOT_USABLE)
            await plc.write("Recipe", keep, ua.VariantType.String)
            await _until(lambda: plc.read("ErrorCode"), 0)
            r = await plc.cycle()
            assert r["ErrorCode"] == 0 and r["Pass"] != r["Fail"]
            doc = line.inspection(r["InspectionId"])
            assert doc["recipe"]["name"] == keep and doc["camera_id"] == station

        await _opc(line, station, run)

    asyncio.run(on("sim", "deeppcb-ref", "deeppcb"))
    asyncio.run(on("ref", "deeppcb", "deeppcb-ref"))


def test_opcua_ack_timeout_recovers(line: Line) -> None:
    async def run(plc: OpcStation) -> None:
        r = await plc.cycle(ack=False)  # a PLC that never acknowledges
        assert r["ErrorCode"] == 0
        await _until(lambda: plc.read("TriggerReady"))  # ack_timeout_s later: ready again
        assert await plc.read("ErrorCode") == ErrorCode.ACK_TIMEOUT
        assert (await plc.read("Pass"), await plc.read("Fail")) == (False, True)
        assert await plc.read("ResultReady") is False and await plc.read("Trigger") is False
        r = await plc.cycle()
        assert r["ErrorCode"] == 0 and r["Pass"] != r["Fail"]

    asyncio.run(_opc(line, "sim", run))


def test_60_handshakes_back_to_back(line: Line) -> None:
    """60 parts on two stations at once (30 each), each station alternating OPC UA and
    Modbus: both protocols show one handshake per station, nothing gets stuck. (200 parts
    took 9 s of the suite's time for no more than these show: each of the 4 station and
    protocol pairs hands over to the other protocol 15 times, on both stations at once.)"""
    async def station(client: Client, idx: int, name: str, base: int, first: int) -> set[str]:
        plc = OpcStation(client, idx, name)
        mb = AsyncModbusTcpClient("127.0.0.1", port=line.modbus_port)
        assert await mb.connect()
        ids = set()
        try:
            for i in range(30):
                if i % 2 == first:
                    r = await plc.cycle()
                    assert r["ErrorCode"] == 0 and r["Pass"] != r["Fail"], r
                    ids.add(r["InspectionId"])
                else:
                    coils = await _modbus_cycle(mb, base)
                    assert coils["Error"] is False and coils["Pass"] != coils["Fail"], coils
            # nothing stuck, on either protocol
            assert (await plc.read("TriggerReady"), await plc.read("Busy"),
                    await plc.read("ResultReady"), await plc.read("Trigger"),
                    await plc.read("ResultAck")) == (True, False, False, False, False)
            coils = await _coils(mb, base)
            assert (coils["TriggerReady"], coils["Busy"], coils["ResultReady"],
                    coils["Trigger"], coils["ResultAck"]) == (True, False, False, False, False)
        finally:
            mb.close()
        return ids

    async def run() -> None:
        async with Client(line.opcua_url, timeout=10) as client:
            idx = await client.get_namespace_index(NS)
            sim, flaky = await asyncio.gather(station(client, idx, "sim", 0, 0),
                                              station(client, idx, "flaky", BLOCK, 1))
        assert len(sim) == len(flaky) == 15 and not sim & flaky

    asyncio.run(run())


# -- Modbus TCP ---------------------------------------------------------------------
async def _coils(mb: AsyncModbusTcpClient, base: int) -> dict[str, bool]:
    rr = await mb.read_coils(base, count=len(COILS), device_id=1)
    assert not rr.isError(), rr
    return dict(zip(COILS, rr.bits[:len(COILS)], strict=True))


async def _registers(mb: AsyncModbusTcpClient, base: int) -> dict[str, int]:
    rr = await mb.read_holding_registers(base, count=len(REGISTERS), device_id=1)
    assert not rr.isError(), rr
    return dict(zip(REGISTERS, rr.registers, strict=True))


async def _modbus_cycle(mb: AsyncModbusTcpClient, base: int, *, ack: bool = True) -> dict[str, Any]:
    async def coil(name: str) -> bool:
        return (await _coils(mb, base))[name]

    await _until(lambda: coil("TriggerReady"))
    assert not (await mb.write_coil(base + COILS.index("Trigger"), True, device_id=1)).isError()
    await _until(lambda: coil("ResultReady"))
    result: dict[str, Any] = {**await _coils(mb, base), **await _registers(mb, base)}
    if ack:
        assert not (await mb.write_coil(base + COILS.index("ResultAck"), True, device_id=1)).isError()
        await _until(lambda: coil("TriggerReady"))
    return result


def test_modbus_handshake_recipe_and_refused_writes(line: Line) -> None:
    async def run() -> None:
        mb = AsyncModbusTcpClient("127.0.0.1", port=line.modbus_port)
        assert await mb.connect()
        try:
            base = 0
            regs = await _registers(mb, base)
            assert regs["RecipeIndex"] == 0  # "deeppcb", first of the loaded recipes
            beat = regs["Heartbeat"]
            await _until(lambda: _registers(mb, base), {**await _registers(mb, base), "Heartbeat": beat + 1})
            r = await _modbus_cycle(mb, base)
            assert r["Pass"] != r["Fail"] and r["ErrorCode"] == 0 and r["Error"] is False
            # the recipe index switches the next part to "lenient" (index 1)
            assert not (await mb.write_register(base + REGISTERS.index("RecipeIndex"), 1,
                                                device_id=1)).isError()
            await _until(lambda: _reg(mb, base, "RecipeIndex"), 1)
            plc = line.srv.app.state.line_plc
            assert plc.stations["sim"].recipe == "lenient"
            r = await _modbus_cycle(mb, base)
            last = line.srv.app.state.cameras.last_results["sim"]
            assert last.recipe.name == "lenient" and (last.verdict == "pass") is r["Pass"]
            # an index with no recipe: ErrorCode 6, the register reads back the index in force
            await mb.write_register(base + REGISTERS.index("RecipeIndex"), 9, device_id=1)
            await _until(lambda: _reg(mb, base, "ErrorCode"), ErrorCode.UNKNOWN_RECIPE)
            assert await _reg(mb, base, "RecipeIndex") == 1 and (await _coils(mb, base))["Error"]
            await mb.write_register(base + REGISTERS.index("RecipeIndex"), 0, device_id=1)
            await _until(lambda: _reg(mb, base, "ErrorCode"), 0)
            # Lineside's coils and registers are not the PLC's to write
            before = await _coils(mb, base)
            for addr in (COILS.index("Pass"), COILS.index("TriggerReady"), 8,
                         BLOCK * len(plc.stations)):  # past the last station
                assert (await mb.write_coil(base + addr, True, device_id=1)).isError()
            assert (await mb.write_register(REGISTERS.index("ErrorCode"), 0, device_id=1)).isError()
            assert (await mb.write_coils(0, [True, True], device_id=1)).isError()  # Trigger+TriggerReady
            # FC 05 with a value that is neither FF00 nor 0000: exception 03, nothing
            # changes (pymodbus took it for on, and a part was triggered)
            bogus = WriteSingleCoilRequest(address=0, bits=[True], dev_id=1)
            bogus.encode = lambda: (0).to_bytes(2, "big") + (0x1234).to_bytes(2, "big")  # type: ignore[method-assign]
            answer = await mb.execute(False, bogus)
            assert answer.isError() and answer.exception_code == 0x03
            assert (await _coils(mb, 0))["Busy"] is False
            # the status bits are coils: read as discrete inputs they read 0 for ever
            di = await mb.read_discrete_inputs(0, count=16, device_id=1)
            assert di.isError() and di.exception_code == 0x02
            assert (await _coils(mb, base))["Pass"] is before["Pass"]
            # another unit id is not this station: "gateway target failed to respond"
            other = await mb.read_coils(0, count=8, device_id=5)
            assert other.isError() and other.exception_code == 0x0B
            assert (await mb.write_coil(0, True, device_id=5)).isError()
            coils = await _coils(mb, base)
            assert coils["Trigger"] is False and coils["TriggerReady"] is True
        finally:
            mb.close()

    asyncio.run(run())


def test_a_fused_recipes_plc_result_is_its_http_answer(line: Line) -> None:
    """A station judged by the bundled detector fused with the bundled good-only model:
    for a board the detector fails, and for a board only the good-only model fails (a
    square on bare board), the PLC reads over OPC UA and Modbus the verdict and the
    DefectCount of the inspection's HTTP answer (GET /v1/inspections/{id}): a Fail with
    ErrorCode 0, DefectCount the detector's boxes and the anomaly regions no box covers,
    at least 1 for the anomaly alone (line review, session 42: pinned here, session 43)."""
    boards = [(_board(DEFECTIVE_BOARD), "detector"), (_board(GOOD_BOARD, patch=True), "anomaly")]

    def agrees(result: dict[str, Any], which: str) -> None:
        doc = line.inspection(result["InspectionId"])
        assert doc["camera_id"] == "fused" and doc["recipe"]["name"] == "deeppcb-fused"
        labels, rules = [d["label"] for d in doc["defects"]], [r["rule"] for r in doc["reasons"]]
        assert doc["verdict"] == "fail" and (result["Pass"], result["Fail"]) == (False, True)
        assert result["ErrorCode"] == 0 and result["DefectCount"] == len(labels) >= 1
        if which == "anomaly":  # the good-only model alone: its region, its rule
            assert labels == ["anomaly"] and rules == ["anomaly"], doc
        else:  # the detector's defects, and the anomaly where no box covers it
            assert {"critical", "max_count"} & set(rules) and \
                [x for x in labels if x != "anomaly"], doc

    async def opc(plc: OpcStation) -> None:
        for frame, which in boards:
            await line.show(frame)
            agrees(await plc.cycle(), which)

    async def modbus() -> None:
        mb = AsyncModbusTcpClient("127.0.0.1", port=line.modbus_port)
        assert await mb.connect()
        try:
            for frame, which in boards:
                await line.show(frame)
                r = await _modbus_cycle(mb, 5 * BLOCK)  # "fused", the sixth camera
                agrees({**r, "InspectionId": line.srv.app.state.cameras.last_results[
                    "fused"].id}, which)
        finally:
            mb.close()

    asyncio.run(_opc(line, "fused", opc))
    asyncio.run(modbus())


def test_a_capped_camera_is_told_to_the_plc_and_metrics_as_not_judged(line: Line) -> None:
    """A lens cap on a reference station: each part failed as blank_frame, and a PLC read a
    plain Fail with ErrorCode 0, as for a defect; /metrics counted it only as a fail
    (review, session 39). Over OPC UA and Modbus ``BlankFrame`` reads 1 beside that Fail
    (0 for a part judged on a real frame), and /metrics counts fails by reason rule."""
    async def opc_capped(plc: OpcStation) -> None:
        r = await plc.cycle()
        assert (r["Pass"], r["Fail"], r["ErrorCode"], r["BlankFrame"]) == (False, True, 0, True)
        rules = {x["rule"] for x in line.inspection(r["InspectionId"])["reasons"]}
        assert "blank_frame" in rules, rules

    async def opc_board(plc: OpcStation) -> None:
        r = await plc.cycle()
        assert r["ErrorCode"] == 0 and r["BlankFrame"] is False
        assert "blank_frame" not in {x["rule"] for x in line.inspection(r["InspectionId"])["reasons"]}

    async def modbus() -> None:
        mb = AsyncModbusTcpClient("127.0.0.1", port=line.modbus_port)
        assert await mb.connect()
        try:
            base = 3 * BLOCK  # "capped", the fourth camera
            r = await _modbus_cycle(mb, base)
            assert (r["Pass"], r["Fail"], r["Error"], r["BlankFrame"]) == (False, True, False, True)
            assert r["ErrorCode"] == 0
            # the other stations' BlankFrame coils stay 0: a block of its own
            assert [(await _coils(mb, i * BLOCK))["BlankFrame"] for i in range(4)] == [
                False, False, False, True]
        finally:
            mb.close()

    asyncio.run(_opc(line, "capped", opc_capped))
    asyncio.run(_opc(line, "ref", opc_board))
    asyncio.run(modbus())
    with line.srv.client("reviewer") as c:
        text = c.get("/metrics").text
    counted = [ln for ln in text.splitlines() if ln.startswith("lineside_fail_reasons_total{")]
    blank = [ln for ln in counted if 'rule="blank_frame"' in ln]
    assert len(blank) == 1 and 'camera="capped"' in blank[0] and 'recipe="deeppcb-ref"' in blank[0]
    assert float(blank[0].split()[-1]) == 2  # its two parts, one over each protocol


def test_a_frame_not_of_its_goldens_view_is_told_to_the_plc_as_wrong_view(line: Line) -> None:
    """A station judging its parts against another product's golden (or knocked off its
    view) failed each as reference_mismatch, and a PLC read a plain Fail with ErrorCode 0,
    as for a defect (review, session 39). Over OPC UA and Modbus ``WrongView`` reads 1
    beside that Fail; 0 for a part judged on its view, and for a capped camera's (its
    BlankFrame says why); the other stations' coil +10 stays 0."""
    async def opc_moved(plc: OpcStation) -> None:
        r = await plc.cycle()
        assert (r["Pass"], r["Fail"], r["ErrorCode"], r["BlankFrame"], r["WrongView"]) == (
            False, True, 0, False, True)
        rules = {x["rule"] for x in line.inspection(r["InspectionId"])["reasons"]}
        assert "reference_mismatch" in rules and "blank_frame" not in rules, rules

    async def opc_others(plc: OpcStation) -> None:
        for station, blank in (("ref", False), ("capped", True)):
            other = OpcStation(plc.client, plc.idx, station)
            r = await other.cycle()
            assert (r["ErrorCode"], r["BlankFrame"], r["WrongView"]) == (0, blank, False)

    async def modbus() -> None:
        mb = AsyncModbusTcpClient("127.0.0.1", port=line.modbus_port)
        assert await mb.connect()
        try:
            assert COILS.index("WrongView") == 10  # the next reserved coil: none moved
            r = await _modbus_cycle(mb, 4 * BLOCK)  # "moved", the fifth camera
            assert (r["Pass"], r["Fail"], r["Error"], r["BlankFrame"], r["WrongView"]) == (
                False, True, False, False, True)
            assert [(await _coils(mb, i * BLOCK))["WrongView"] for i in range(5)] == [
                False, False, False, False, True]
        finally:
            mb.close()

    asyncio.run(_opc(line, "moved", opc_moved))
    asyncio.run(_opc(line, "moved", opc_others))
    asyncio.run(modbus())


def test_modbus_connections_are_bounded_the_oldest_closed(line: Line) -> None:
    """pymodbus kept any number of connections, idle for ever: a flood of them (or the
    half-open ones PLC power cuts leave) took every file descriptor of the server, and
    the store and the cameras with them. One more than the bound closes the oldest."""
    adapter = next(a for a in line.srv.app.state.line_plc.adapters if a.name == "Modbus TCP")
    extra = 3
    idle = [socket.create_connection(("127.0.0.1", line.modbus_port), timeout=WAIT_S)
            for _ in range(MAX_CONNECTIONS + extra)]
    try:
        for s in idle[:extra]:  # the oldest: closed by the server
            assert s.recv(1) == b""
        assert len(adapter.server.active_connections) <= MAX_CONNECTIONS

        async def run() -> None:  # a PLC connecting now is served
            mb = AsyncModbusTcpClient("127.0.0.1", port=line.modbus_port)
            assert await mb.connect()
            try:
                assert (await _coils(mb, 0))["TriggerReady"] is True
            finally:
                mb.close()

        asyncio.run(run())
        idle[-1].setblocking(False)
        with pytest.raises(BlockingIOError):  # the newest are still open
            idle[-1].recv(1)
    finally:
        for s in idle:
            s.close()



def _read_coils_raw(s: socket.socket, transaction: int) -> bytes:
    """FC 01 of 8 coils from 0, unit 1, as a PLC sends it on its one connection: the
    answer's bytes (b"" once the server has closed the connection)."""
    s.sendall(transaction.to_bytes(2, "big") + b"\x00\x00\x00\x06\x01\x01\x00\x00\x00\x08")
    try:
        return s.recv(64)
    except ConnectionResetError:
        return b""


def test_a_flood_of_idle_modbus_connections_does_not_cut_the_working_plc(line: Line) -> None:
    """The bound closed the oldest connection, and the oldest is the PLC's (connected at
    its start, polling since): a flood of idle ones from anyone on the network cut it
    off again and again, the very flood the bound is for. The one idle longest goes."""
    plc = socket.create_connection(("127.0.0.1", line.modbus_port), timeout=WAIT_S)
    idle: list[socket.socket] = []
    try:
        assert _read_coils_raw(plc, 1)[7:8] == b"\x01"
        for i in range(MAX_CONNECTIONS + 3):
            idle.append(socket.create_connection(("127.0.0.1", line.modbus_port),
                                                 timeout=WAIT_S))
            if i % 8 == 7:  # the PLC polls meanwhile
                assert _read_coils_raw(plc, 2 + i)[7:8] == b"\x01"
        assert _read_coils_raw(plc, 99)[7:8] == b"\x01"  # still its connection
    finally:
        for s in (plc, *idle):
            s.close()


def test_bad_modbus_frames_put_no_traffic_dump_in_the_log(
        line: Line, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """pymodbus logs a frame of a bad protocol id at ERROR with a hex dump of the last 20
    reads of any connection (each up to 64 kB, kept even when it was dropped as too
    long): megabytes per frame, told again for each other id. Anyone on the line network
    (Modbus has no authentication) filled the server's log, and its disk, at megabytes a
    second (line review, session 43). One short line is told, then at most one a minute with a count;
    the PLC is still served."""
    monkeypatch.setattr(BOUND, "_told", {})  # one for the process: other tests' told
    monkeypatch.setattr(BOUND, "_held", 0)
    with caplog.at_level(logging.WARNING):
        _send_bad_frames(line, caplog, 10)
        with socket.create_connection(("127.0.0.1", line.modbus_port), timeout=WAIT_S) as plc:
            assert _read_coils_raw(plc, 7)[7:8] == b"\x01"  # TriggerReady: still served
    told = [r.getMessage() for r in caplog.records if r.name.startswith("pymodbus")]
    assert len(told) == 1 and "Invalid Modbus protocol id" in told[0], [m[:80] for m in told]
    assert len(told[0]) < 400 and ">>>>>" not in told[0]


def _send_bad_frames(line: Line, caplog: pytest.LogCaptureFixture, n: int) -> None:
    """``n`` frames of a bad protocol id (another each time), each on a connection of its
    own, and wait until pymodbus has logged each (told, or held back by the bound)."""
    import struct

    bad = [socket.create_connection(("127.0.0.1", line.modbus_port), timeout=WAIT_S)
           for _ in range(n)]
    try:
        for protocol_id, s in enumerate(bad, start=1):
            s.sendall(struct.pack(">HHHBBHH", 1, protocol_id, 6, 1, 1, 0, 8))

        def seen() -> int:
            return BOUND.untold("pymodbus") + len(
                [r for r in caplog.records if r.name.startswith("pymodbus")])

        deadline = time.monotonic() + WAIT_S
        while seen() < n:
            assert time.monotonic() < deadline, f"{seen()} of the bad frames seen"
            time.sleep(0.01)
    finally:
        for s in bad:
            s.close()


def test_a_held_back_count_is_told_when_its_message_is_forgotten(
        caplog: pytest.LogCaptureFixture) -> None:
    """The bound remembers :data:`peer_logs.MAX_KEYS` messages: one forgotten to make room
    for a peer's new texts took its held-back count with it (line review, session 43)."""
    bound = peer_logs.PeerLogBound(clock=lambda: 0.0)
    logger = logging.getLogger("lineside.test_peer_logs")
    logger.addFilter(bound)
    try:
        with caplog.at_level(logging.WARNING, logger=logger.name):
            logger.warning("first %d", 1)
            logger.warning("first %d", 2)  # held
            for i in range(peer_logs.MAX_KEYS):  # as many other messages: "first" forgotten
                logger.warning(f"other {i} %d", i)
    finally:
        logger.removeFilter(bound)
    told = [r.getMessage() for r in caplog.records if r.name == logger.name]
    assert "first 1 (1 more such message(s) since last told)" in told
    assert len(told) == 2 + peer_logs.MAX_KEYS


def test_a_library_message_that_does_not_format_is_not_raised_into_the_library(
        caplog: pytest.LogCaptureFixture) -> None:
    """Formatting a record in the bound (a filter) raised into the library's call when its
    arguments did not format, or an argument's str() raised: the library's handling of a
    peer's request failed where a handler would have reported it and gone on (session
    43, late review). It passes now, said as it was sent and why it did not format."""
    class Peer:
        def __str__(self) -> str:
            raise ValueError("no text")

    bound = peer_logs.PeerLogBound(clock=lambda: 0.0)
    logger = logging.getLogger("lineside.test_peer_logs_format")
    logger.addFilter(bound)
    try:
        with caplog.at_level(logging.WARNING, logger=logger.name):
            logger.warning("value %d", "peer text")
            logger.error("write refused: %s", Peer())
    finally:
        logger.removeFilter(bound)
    told = [r.getMessage() for r in caplog.records if r.name == logger.name]
    assert told == ["value %d (its arguments did not format: TypeError)",
                    "write refused: %s (its arguments did not format: ValueError)"]


def test_a_modbus_adapter_stopping_tells_what_the_bound_held_back(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """A count held back when the Modbus server stops (a restart, a shutdown) was never
    told: it is, as the adapter stops (line review, session 43)."""
    import struct

    from lineside_inspect.line.modbus import ModbusAdapter

    monkeypatch.setattr(BOUND, "_told", {})
    monkeypatch.setattr(BOUND, "_held", 0)

    async def run() -> None:
        adapter = ModbusAdapter(ModbusConfig(port=0), lambda: ["deeppcb"])
        await adapter.start([_station()], lambda *w: None)
        try:
            for protocol_id in (1, 2, 3):
                _, writer = await asyncio.open_connection("127.0.0.1", adapter.port)
                writer.write(struct.pack(">HHHBBHH", 1, protocol_id, 6, 1, 1, 0, 8))
                await writer.drain()
                deadline = time.monotonic() + WAIT_S
                while BOUND.untold("pymodbus") + sum(
                        r.name.startswith("pymodbus") for r in caplog.records) < protocol_id:
                    assert time.monotonic() < deadline, "pymodbus never told the bad frame"
                    await asyncio.sleep(0.01)
                writer.close()
        finally:
            await adapter.stop()

    with caplog.at_level(logging.WARNING, logger="pymodbus"):
        asyncio.run(run())
    told = [r.getMessage() for r in caplog.records if r.name.startswith("pymodbus")]
    assert len(told) == 2 and told[1].endswith(" (2 more such message(s) since last told)"), \
        [m[:80] for m in told]
    assert BOUND.untold("pymodbus") == 0


def test_a_burst_of_bad_frames_that_stops_is_counted_in_the_log(
        line: Line, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """The count of the messages the bound held back was told only when the same message
    came again after the minute: a burst that stopped was never counted in the log (line
    review, session 43). The line's ticker tells it once the minute is over (the bound's
    clock driven here, no minute waited)."""
    clock = [1000.0]
    monkeypatch.setattr(BOUND, "_told", {})
    monkeypatch.setattr(BOUND, "_held", 0)
    monkeypatch.setattr(BOUND, "clock", lambda: clock[0])
    with caplog.at_level(logging.WARNING):
        _send_bad_frames(line, caplog, 4)
        assert BOUND.untold("pymodbus") == 3  # one told, three held: the burst is over
        clock[0] += peer_logs.EVERY_S
        deadline = time.monotonic() + WAIT_S
        while BOUND.untold("pymodbus"):
            assert time.monotonic() < deadline, "the held-back count was never told"
            time.sleep(0.01)
    told = [r.getMessage() for r in caplog.records if r.name.startswith("pymodbus")]
    assert len(told) == 2 and "Invalid Modbus protocol id" in told[1], [m[:80] for m in told]
    assert told[1].endswith(" (3 more such message(s) since last told)") and len(told[1]) < 400


def test_a_burst_of_connections_faster_than_the_plc_polls_does_not_cut_it(line: Line) -> None:
    """33 connections opened between two polls were each newer than the PLC's last
    request, so the PLC's was the one idle longest and went (docs pass, session 38): a
    connection that has never sent anything goes first."""
    plc = socket.create_connection(("127.0.0.1", line.modbus_port), timeout=WAIT_S)
    idle: list[socket.socket] = []
    try:
        assert _read_coils_raw(plc, 1)[7:8] == b"\x01"
        idle = [socket.create_connection(("127.0.0.1", line.modbus_port), timeout=WAIT_S)
                for _ in range(MAX_CONNECTIONS + 3)]
        # accepted in order: once the last one is answered, every one before it was taken
        assert _read_coils_raw(idle[-1], 2)[7:8] == b"\x01"
        assert _read_coils_raw(plc, 3)[7:8] == b"\x01"  # still its connection
        assert idle[0].recv(1) == b""  # a silent one went instead
    finally:
        for s in (plc, *idle):
            s.close()


async def _reg(mb: AsyncModbusTcpClient, base: int, name: str) -> int:
    return (await _registers(mb, base))[name]


def test_camera_loss_fails_with_error_code(line: Line) -> None:
    """Last (it takes the flaky camera down): never a Pass, always a reason."""
    from playwright.async_api import async_playwright, expect

    async def run(plc: OpcStation) -> None:
        mb = AsyncModbusTcpClient("127.0.0.1", port=line.modbus_port)
        await mb.connect()
        base = BLOCK  # "flaky" is the second camera
        pw = browser = None
        try:
            r = await plc.cycle()
            assert r["ErrorCode"] == 0
            # the stream stalls: no fresh frame within the trigger timeout (every frame sent
            # before the stall received first: one on its way would be the part's)
            await line.stall_flaky()
            r = await plc.cycle()
            assert (r["Pass"], r["Fail"], r["ErrorCode"]) == (False, True, ErrorCode.NO_FRESH_FRAME)
            assert r["InspectionId"] == ""
            # the status page, open from here on (not while the trigger above races its
            # frame-age limit on two loaded cores): its PLC section keeps up without a reload
            pw = await async_playwright().start()
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = await browser.new_page()
            await page.clock.install()  # runs on, but can jump to the page's next refresh
            await page.goto(line.srv.url + "/")
            await page.fill("#key", KEYS["reviewer"])
            await page.keyboard.press("Enter")
            shown = page.locator('#plc tr[data-station="flaky"]')
            await expect(shown.locator("[data-field=state]")).to_have_text("ready")
            await expect(shown.locator("[data-field=code]")).not_to_have_text("1 (camera_offline)")
            # the camera is gone: offline, answered at once
            line.unplug_flaky()
            with line.srv.client("reviewer") as c:
                deadline = time.time() + WAIT_S
                while next(h for h in c.get("/v1/cameras").json() if h["id"] == "flaky")["state"] \
                        != "offline":
                    assert time.time() < deadline
                    await asyncio.sleep(0.1)
            r = await plc.cycle()
            assert (r["Pass"], r["Fail"], r["ErrorCode"]) == (False, True, ErrorCode.CAMERA_OFFLINE)
            c = await _modbus_cycle(mb, base)
            assert (c["Pass"], c["Fail"], c["Error"], c["ErrorCode"]) == (False, True, True, 1)
            # the other station is not affected
            sim = await _modbus_cycle(mb, 0)
            assert sim["ErrorCode"] == 0
            # and /metrics counts each part that ended without a verdict (only the log said)
            with line.srv.client("reviewer") as cl:
                text = cl.get("/metrics").text
            counted = {code: float(x.split()[-1]) for code in ("no_fresh_frame", "camera_offline")
                       for x in text.splitlines() if x.startswith(
                           f'lineside_line_part_failures_total{{code="{code}",station="flaky"}}')}
            assert counted["no_fresh_frame"] >= 1 and counted["camera_offline"] >= 2
            # and the status page shows each station's handshake, the code in force and
            # its parts without a verdict
            with line.srv.client("reviewer") as cl:
                page = cl.get("/").text
            assert 'id="plc"' in page and "PLC handshake (OPC UA, Modbus TCP)" in page
            row = page.split('<tr data-station="flaky">')[1].split("</tr>")[0]
            assert "1 (camera_offline)" in row
            assert f'<td data-field="failed">{int(sum(counted.values()))}</td>' in row
            await shown.page.clock.fast_forward(5000)  # home.js REFRESH_MS: the next refresh
            await expect(shown.locator("[data-field=code]")).to_have_text(
                "1 (camera_offline)", timeout=WAIT_S * 1000)
            await expect(shown.locator("[data-field=code]")).to_have_class("fail")
            await expect(shown.locator("[data-field=failed]")).to_have_text(
                str(int(sum(counted.values()))), timeout=WAIT_S * 1000)
            # and its station card: it read only "Last verdict" and the yield, where its
            # parts without a verdict have no place (QA review, session 34)
            card = shown.page.locator('.station[data-camera="flaky"] [data-field=plc]')
            await expect(card).to_contain_text("✖ ErrorCode 1 (camera_offline)",
                                               timeout=WAIT_S * 1000)
            await expect(card).to_contain_text(
                f"{int(sum(counted.values()))} part(s) without a verdict since start")
            await expect(card).to_have_class("fail")
            with line.srv.client("reviewer") as cl:
                overview = cl.get("/v1/overview").json()
            flaky = next(s for s in overview["plc"]["stations"] if s["id"] == "flaky")
            assert flaky["error"] == "camera_offline" and overview["mqtt"] is None
        finally:
            mb.close()
            if browser is not None:
                await browser.close()
            if pw is not None:
                await pw.stop()

    asyncio.run(_opc(line, "flaky", run))


# -- OPC UA security ------------------------------------------------------------------
def _certificate(folder: Path, name: str, uri: str, *, server: bool) -> tuple[Path, Path]:
    import socket

    from asyncua.crypto.cert_gen import (
        dump_private_key_as_pem,
        generate_private_key,
        generate_self_signed_app_certificate,
    )
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding
    from cryptography.x509.oid import ExtendedKeyUsageOID

    key = generate_private_key()
    cert = generate_self_signed_app_certificate(
        key, name, {}, [x509.UniformResourceIdentifier(uri), x509.DNSName(socket.gethostname())],
        [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH])
    cert_path, key_path = folder / f"{name}.der", folder / f"{name}.pem"
    cert_path.write_bytes(cert.public_bytes(Encoding.DER))
    key_path.write_bytes(dump_private_key_as_pem(key))
    return cert_path, key_path


def test_opcua_basic256sha256_with_trusted_clients_only(tmp_path: Path) -> None:
    """With a certificate: only Basic256Sha256 (no unsecured endpoint), only the clients
    whose certificate is in trusted_certificates, and "admin" gets no more rights."""
    (tmp_path / "trusted").mkdir()
    server_cert, server_key = _certificate(tmp_path, "lineside", "urn:lineside:server", server=True)
    plc_cert, plc_key = _certificate(tmp_path, "plc", "urn:plc:client", server=False)
    (tmp_path / "trusted" / "plc.der").write_bytes(plc_cert.read_bytes())
    rogue_cert, rogue_key = _certificate(tmp_path, "rogue", "urn:rogue:client", server=False)
    cfg = OpcUaConfig(endpoint="opc.tcp://127.0.0.1:0/lineside/", certificate=str(server_cert),
                      private_key=str(server_key), trusted_certificates=str(tmp_path / "trusted"))
    writes: list[tuple[str, str, Any]] = []
    station = _station()

    async def client(cert: Path | None, key: Path | None, uri: str) -> Client:
        c = Client(adapter.endpoint, timeout=5)
        c.application_uri = uri
        if cert is not None and key is not None:
            await c.set_security_string(f"Basic256Sha256,SignAndEncrypt,{cert},{key},{server_cert}")
        return c

    async def run() -> None:
        await adapter.start([station], lambda *w: writes.append(w))
        try:
            c = await client(plc_cert, plc_key, "urn:plc:client")
            async with c:
                idx = await c.get_namespace_index(NS)
                await c.get_node(f"ns={idx};s=Stations/s1/Trigger").write_value(True)
                with pytest.raises(ua.UaStatusCodeError):
                    await c.get_node(f"ns={idx};s=Stations/s1/Pass").write_value(True)
            assert writes == [("s1", "Trigger", True)]
            for cert, key, uri in ((None, None, "urn:anon"), (rogue_cert, rogue_key, "urn:rogue:client")):
                with pytest.raises((ua.UaError, OSError, TimeoutError)):
                    async with await client(cert, key, uri):
                        pass
            # the admin user name of asyncua does not unlock read-only nodes
            c = await client(plc_cert, plc_key, "urn:plc:client")
            c.set_user("admin")
            c.set_password("anything")
            with pytest.raises((ua.UaError, OSError, TimeoutError)):
                async with c:
                    idx = await c.get_namespace_index(NS)
                    await c.get_node(f"ns={idx};s=Stations/s1/Pass").write_value(True)
            assert len(writes) == 1
        finally:
            await adapter.stop()

    adapter = OpcUaAdapter(cfg)
    asyncio.run(run())



def test_modbus_trigger_while_a_result_waits_drops_it(line: Line) -> None:
    """A PLC that triggers the next part (0, then 1) without acknowledging the last one
    never reads the last one's result as the new part's: the Trigger reads back 0, the
    result is gone."""
    async def run() -> None:
        mb = AsyncModbusTcpClient("127.0.0.1", port=line.modbus_port)
        assert await mb.connect()
        try:
            r = await _modbus_cycle(mb, 0, ack=False)
            assert r["ResultReady"] and r["ErrorCode"] == 0
            assert not (await mb.write_coil(COILS.index("Trigger"), False, device_id=1)).isError()
            assert not (await mb.write_coil(COILS.index("Trigger"), True, device_id=1)).isError()
            coils = await _until(lambda: _coils(mb, 0), {
                "Trigger": False, "TriggerReady": True, "Busy": False, "ResultReady": False,
                "ResultAck": False, "Pass": False, "Fail": True, "Error": True,
                "FailRateAlarm": False, "BlankFrame": False, "WrongView": False})
            assert coils["ResultReady"] is False
            assert await _reg(mb, 0, "ErrorCode") == ErrorCode.ACK_TIMEOUT
            r = await _modbus_cycle(mb, 0)  # the next part is judged as usual
            assert r["ErrorCode"] == 0 and r["Pass"] != r["Fail"]
        finally:
            mb.close()

    asyncio.run(run())


def test_modbus_trigger_written_again_is_the_same_part(line: Line) -> None:
    """A Modbus client that repeats its Trigger write (a retry after a late response, a
    cyclic write of its output) gets the part's result, not a dropped part (code 5)."""
    async def run() -> None:
        mb = AsyncModbusTcpClient("127.0.0.1", port=line.modbus_port)
        assert await mb.connect()
        trigger = COILS.index("Trigger")
        try:
            await _until(lambda: _coil(mb, 0, "TriggerReady"))
            for _ in range(3):  # the write, then the same write twice more at once
                assert not (await mb.write_coil(trigger, True, device_id=1)).isError()
            await _until(lambda: _coil(mb, 0, "ResultReady"))
            assert not (await mb.write_coil(trigger, True, device_id=1)).isError()  # and again
            coils = await _coils(mb, 0)
            assert (coils["ResultReady"], coils["Error"], coils["Trigger"]) == (True, False, True)
            assert coils["Pass"] != coils["Fail"] and await _reg(mb, 0, "ErrorCode") == 0
            judged = line.srv.app.state.line_plc.stations["sim"].tags["InspectionId"]
            assert judged == line.srv.app.state.cameras.last_results["sim"].id != ""
            assert not (await mb.write_coil(COILS.index("ResultAck"), True, device_id=1)).isError()
            await _until(lambda: _coil(mb, 0, "TriggerReady"))
            assert (await _coils(mb, 0))["Trigger"] is False
        finally:
            mb.close()

    asyncio.run(run())


async def _coil(mb: AsyncModbusTcpClient, base: int, name: str) -> bool:
    return (await _coils(mb, base))[name]


def test_a_refused_recipe_rewritten_every_scan_is_logged_once(
        line: Line, caplog: pytest.LogCaptureFixture) -> None:
    """A PLC writing an index the box lacks on every scan: one WARNING when the fault
    starts, one when it changes, not one per write."""
    async def run() -> None:
        mb = AsyncModbusTcpClient("127.0.0.1", port=line.modbus_port)
        assert await mb.connect()
        recipe = REGISTERS.index("RecipeIndex")
        try:
            for index in [9] * 100 + [8] * 100:
                assert not (await mb.write_register(recipe, index, device_id=1)).isError()
            await mb.write_register(recipe, 0, device_id=1)
            await _until(lambda: _reg(mb, 0, "ErrorCode"), 0)
        finally:
            mb.close()

    with caplog.at_level("WARNING", logger="lineside.line"):
        asyncio.run(run())
    told = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(told) == 2, told
    assert "'#9' refused" in told[0] and "'#8' refused" in told[1]


def test_shutdown_answers_the_part_in_progress_and_takes_no_trigger() -> None:
    """On shutdown a station stops offering TriggerReady and a part waiting for its frame
    ends with Fail and ErrorCode 8 (a PLC never waits for a result that cannot come)."""
    sim, ended = MJPEGSimulator(counter_frame, fps=30), threading.Event()
    cam = CameraConfig(id="sim", source=sim.url, stale_after_s=30, read_timeout_s=30)
    srv, stop = start_server(keyed(cameras=[cam], store=False, line=LineSettings(
        modbus=ModbusConfig(port=0), trigger_timeout_s=30.0)))
    written: list[tuple[str, TagValue]] = []
    try:
        plc = srv.app.state.line_plc
        adapter = plc.adapters[0]
        real_write = adapter.write

        async def recording(station_id: str, changes: Changes) -> None:
            written.extend(changes)
            await real_write(station_id, changes)

        adapter.write = recording
        deadline = time.monotonic() + WAIT_S
        while srv.app.state.cameras.workers["sim"].latest() is None:
            assert time.monotonic() < deadline, "camera did not come online"
            time.sleep(0.05)
        # connected, no frames: the trigger waits (trigger_timeout_s 30); every frame sent
        # before received first (on a loaded CI host one on its way answered the trigger:
        # the part ended normally before the shutdown)
        stall_stream(sim, srv.app.state.cameras.workers["sim"], ended, WAIT_S)

        async def trigger() -> None:
            mb = AsyncModbusTcpClient("127.0.0.1", port=adapter.port)
            assert await mb.connect()
            try:
                assert not (await mb.write_coil(COILS.index("Trigger"), True, device_id=1)).isError()
                await _until(lambda: _coils(mb, 0), {**await _coils(mb, 0), "Busy": True})
            finally:
                mb.close()

        asyncio.run(trigger())
        written.clear()
        real_drain = srv.app.state.limiter.drain

        def drain(timeout_s: float) -> bool:
            # the server waits here for its inspections (up to 10 s): the stations are
            # closed already, and the PLC can still read why its part ended
            from pymodbus.client import ModbusTcpClient

            with ModbusTcpClient("127.0.0.1", port=adapter.port) as mb:
                coils = mb.read_coils(0, count=len(COILS), device_id=1).bits
                regs = mb.read_holding_registers(0, count=len(REGISTERS), device_id=1).registers
                in_drain.append((coils[COILS.index("TriggerReady")],
                                 coils[COILS.index("ResultReady")],
                                 regs[REGISTERS.index("ErrorCode")]))
            return bool(real_drain(timeout_s))

        in_drain: list[tuple[bool, bool, int]] = []
        srv.app.state.limiter.drain = drain
    finally:
        stop()
        ended.set()
        sim.kill()
    assert in_drain == [(False, True, ErrorCode.SHUTDOWN)]
    station = srv.app.state.line_plc.stations["sim"]
    written = [c for c in written if c[0] != "Heartbeat"]  # the ticker ran until stop()
    assert written[0] == ("TriggerReady", False)  # first: no new part is taken
    assert ("ErrorCode", ErrorCode.SHUTDOWN) in written
    assert written.index(("ErrorCode", ErrorCode.SHUTDOWN)) < written.index(("ResultReady", True))
    assert (station.tags["Pass"], station.tags["Fail"], station.tags["Busy"],
            station.tags["TriggerReady"]) == (False, True, False, False)


def test_stop_completes_a_publication_in_flight() -> None:
    """An adapter whose writes await (as OPC UA's do) is halfway through a station's new
    state when the server stops: the rest is still written, so the PLC never reads half of
    it (ResultReady 1 beside the dropped part's Fail and code 5)."""
    sim = MJPEGSimulator(counter_frame, fps=30)
    cam = CameraConfig(id="sim", source=sim.url)
    srv, stop = start_server(keyed(cameras=[cam], store=False, line=LineSettings(
        modbus=ModbusConfig(port=0), ack_timeout_s=0.5)))
    plc = srv.app.state.line_plc
    adapter = plc.adapters[0]
    real_write = adapter.write
    shown: dict[str, TagValue] = {}
    halfway = threading.Event()

    async def slow(station_id: str, changes: Changes) -> None:
        if ("ErrorCode", ErrorCode.ACK_TIMEOUT) in changes:  # the ack timeout's drop
            await real_write(station_id, changes[:1])
            shown.update(changes[:1])
            halfway.set()
            deadline = time.monotonic() + WAIT_S
            while plc._ticker is not None and time.monotonic() < deadline:  # stop() began
                await asyncio.sleep(0.01)
            changes = changes[1:]
        await real_write(station_id, changes)
        shown.update(changes)

    adapter.write = slow
    try:
        async def trigger() -> None:  # a part the PLC never acknowledges
            mb = AsyncModbusTcpClient("127.0.0.1", port=adapter.port)
            assert await mb.connect()
            try:
                await _modbus_cycle(mb, 0, ack=False)
            finally:
                mb.close()

        asyncio.run(trigger())
        assert halfway.wait(WAIT_S)
    finally:
        stop()
        sim.kill()
    station = plc.stations["sim"]
    keys = ("ResultReady", "Pass", "Fail", "ErrorCode", "TriggerReady", "Busy")
    assert {k: shown[k] for k in keys} == {k: station.tags[k] for k in keys} == {
        "ResultReady": False, "Pass": False, "Fail": True, "ErrorCode": ErrorCode.ACK_TIMEOUT,
        "TriggerReady": False, "Busy": False}


# -- configs that become valid once the server runs -----------------------------------
def test_a_reference_registered_after_start_up(caplog: pytest.LogCaptureFixture) -> None:
    """A camera naming a golden image to be registered with PUT /v1/references: the server
    starts (a WARNING names the camera and the reference), triggers fail with ErrorCode 7
    until it is registered, then are judged."""
    cam = CameraConfig(id="station1", source=str(STATION / "station1"), fps=5,
                       recipe="deeppcb-ref", reference="station1")
    with caplog.at_level("WARNING", logger="lineside.service"):
        srv, stop = start_server(keyed(
            cameras=[cam], models=[str(REF_MODEL)], store=False,
            recipes=[str(ROOT / "configs" / "recipes" / "deeppcb-ref.yaml")],
            line=LineSettings(modbus=ModbusConfig(port=0), close_hold_s=0)))
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("camera station1" in m and "'station1'" in m and "PUT /v1/references/station1"
               in m for m in warned), warned
    port = srv.app.state.line_plc.adapters[0].port

    async def cycle() -> dict[str, Any]:
        mb = AsyncModbusTcpClient("127.0.0.1", port=port)
        assert await mb.connect()
        try:
            return await _modbus_cycle(mb, 0)
        finally:
            mb.close()

    try:
        r = asyncio.run(cycle())
        assert (r["Pass"], r["Fail"], r["ErrorCode"]) == (False, True, ErrorCode.RECIPE_NOT_USABLE)
        with srv.client("line") as c:  # an HTTP trigger hears the same reason
            r2 = c.post("/v1/cameras/station1/trigger")
            assert r2.status_code == 422 and r2.json()["error"]["code"] == "invalid_reference"
            assert "PUT /v1/references/station1" in r2.json()["error"]["message"]
        with srv.client("admin") as c:
            put = c.put("/v1/references/station1", headers={"content-type": "image/jpeg"},
                        content=(STATION / "station1-reference.jpg").read_bytes())
            assert put.status_code in (200, 201), put.text
        r = asyncio.run(cycle())
        assert r["ErrorCode"] == 0 and r["Pass"] != r["Fail"]
    finally:
        stop()


def test_a_box_without_models_starts_and_takes_its_recipes_when_they_come() -> None:
    """A fleet box with ``models: []``: its cameras' recipes come with the first pull. It
    starts; until then triggers fail with ErrorCode 6; then the station that names the
    recipe and the one that follows the default recipe (shown in its Recipe) both judge."""
    from lineside_inspect.recipes import card_recipe

    cams = [CameraConfig(id="named", source=str(SAMPLE), fps=5, recipe="deeppcb-default"),
            CameraConfig(id="plain", source=str(SAMPLE), fps=5)]
    srv, stop = start_server(keyed(cameras=cams, models=[], store=False,
                                   line=LineSettings(modbus=ModbusConfig(port=0), close_hold_s=0)))
    port = srv.app.state.line_plc.adapters[0].port

    async def cycles() -> list[dict[str, Any]]:
        mb = AsyncModbusTcpClient("127.0.0.1", port=port)
        assert await mb.connect()
        try:
            return [await _modbus_cycle(mb, base) for base in (0, BLOCK)]
        finally:
            mb.close()

    async def recipe_of_plain() -> int:
        mb = AsyncModbusTcpClient("127.0.0.1", port=port)
        assert await mb.connect()
        try:
            return await _until(lambda: _reg(mb, BLOCK, "RecipeIndex"), 0)
        finally:
            mb.close()

    try:
        for r in asyncio.run(cycles()):
            assert (r["Pass"], r["Fail"], r["ErrorCode"]) == (False, True, ErrorCode.UNKNOWN_RECIPE)
        # what the box's first pull does: the model, and the recipe its card brings
        registry = srv.app.state.registry
        registry.load_model(str(MODEL))
        registry.add_recipe(card_recipe(registry.detector("deeppcb").card))
        asyncio.run(recipe_of_plain())  # "plain" shows the default it now uses: index 0
        assert srv.app.state.line_plc.stations["plain"].recipe == "deeppcb-default"
        for r in asyncio.run(cycles()):
            assert r["ErrorCode"] == 0 and r["Pass"] != r["Fail"]
        assert srv.app.state.cameras.last_results["plain"].recipe.name == "deeppcb-default"
    finally:
        stop()


def _one_camera_two_recipes(tmp_path: Path, line: LineSettings,
                            **more: Any) -> tuple[MJPEGSimulator, Any]:
    """A 10 fps camera "sim" judged with recipe "deeppcb"; "lenient" beside it; no store."""
    (tmp_path / "deeppcb.yaml").write_text("name: deeppcb\nversion: '1'\nmodel: deeppcb\n")
    (tmp_path / "lenient.yaml").write_text("name: lenient\nversion: '7'\nmodel: deeppcb\n")
    sim = MJPEGSimulator(folder_frames(SAMPLE), fps=10)
    return sim, keyed(
        cameras=[CameraConfig(id="sim", source=sim.url, recipe="deeppcb")],
        recipes=[str(tmp_path / "deeppcb.yaml"), str(tmp_path / "lenient.yaml")],
        store=False, line=line, **more)


def _on_modbus(srv: Running, stop: Callable[[], None], sim: MJPEGSimulator,
               body: Callable[[AsyncModbusTcpClient, Station], Awaitable[None]]) -> None:
    """``body`` with a Modbus client on ``srv``'s PLC port and its station ``sim``; then the
    server and the camera are stopped, whatever happened."""
    try:
        plc = srv.app.state.line_plc
        port = next(a for a in plc.adapters if a.name == "Modbus TCP").port

        async def run() -> None:
            mb = AsyncModbusTcpClient("127.0.0.1", port=port)
            assert await mb.connect()
            try:
                await body(mb, plc.stations["sim"])
            finally:
                mb.close()

        asyncio.run(run())
    finally:
        stop()
        sim.kill()


def test_a_modbus_recipe_table_in_the_config_holds_whatever_the_api_puts(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The recipe index counted the server's recipes in load order, which moves with
    recipes put or dropped over the API (and a saved one left out at start): a PLC's index
    could come to name another recipe. ``modbus.recipes`` fixes the table."""
    with pytest.raises(ValidationError, match=r"recipe 'a' is in the table twice \(index 0 and 2\)"):
        ModbusConfig(recipes=["a", "b", "a"])  # the PLC writing 2 read back 0: "refused"
    sim, settings = _one_camera_two_recipes(tmp_path, LineSettings(modbus=ModbusConfig(
        port=0, recipes=["lenient", "spare", "deeppcb"]), close_hold_s=0))
    with caplog.at_level("WARNING", logger="lineside.line"):
        srv, stop = start_server(settings)
    # a table entry not loaded (yet): said at start, not only as ErrorCode 6 on the line
    assert any("line.modbus.recipes: not loaded now" in r.getMessage() and "1: spare" in r.getMessage()
               for r in caplog.records), caplog.records

    async def run(mb: AsyncModbusTcpClient, station: Station) -> None:
        async def in_force() -> str | None:
            return station.recipe

        index = REGISTERS.index("RecipeIndex")
        assert await _reg(mb, 0, "RecipeIndex") == 2  # deeppcb: third in the table
        with srv.client("admin") as c:  # a recipe put first in load order changes nothing
            body = {"name": "aaa", "version": "1", "model": "deeppcb"}
            assert c.put("/v1/recipes/aaa", json=body).status_code == 200
        await mb.write_register(index, 0, device_id=1)
        await _until(in_force, "lenient")
        # an entry not loaded yet, and an index beyond the table: ErrorCode 6
        for bad in (1, 3):
            await mb.write_register(index, bad, device_id=1)
            await _until(lambda: _reg(mb, 0, "ErrorCode"), ErrorCode.UNKNOWN_RECIPE)
            assert station.recipe == "lenient"  # the one in force stays
            await mb.write_register(index, 0, device_id=1)
            await _until(lambda: _reg(mb, 0, "ErrorCode"), 0)
        with srv.client("admin") as c:  # once "spare" is put, its index is good
            body = {"name": "spare", "version": "1", "model": "deeppcb"}
            assert c.put("/v1/recipes/spare", json=body).status_code == 200
        await mb.write_register(index, 1, device_id=1)
        await _until(in_force, "spare")
        assert await _reg(mb, 0, "RecipeIndex") == 1
        assert await _reg(mb, 0, "ErrorCode") == 0

    _on_modbus(srv, stop, sim, run)


def test_the_fail_rate_alarm_reaches_the_plc_over_opcua_and_modbus(tmp_path: Path) -> None:
    """A jump of the recipe's fail rate sets the station's FailRateAlarm on both protocols;
    it follows the station's recipe when the PLC switches, leaves the handshake alone, and
    clears with the alarm."""
    sim, settings = _one_camera_two_recipes(
        tmp_path, LineSettings(opcua=OpcUaConfig(endpoint="opc.tcp://127.0.0.1:0/lineside/"),
                               modbus=ModbusConfig(port=0), close_hold_s=0),
        lifecycle={"fail_rate_alarm": {"baseline_inspections": 4, "window": 4,
                                       "max_fail_rate_increase": 0.3}})
    srv, stop = start_server(settings)
    good = sorted(SAMPLE.rglob("*_temp.jpg"))
    defective = sorted(SAMPLE.rglob("*_test.jpg"))

    def inspect(files: list[Path], verdict: str) -> None:
        with srv.client("line") as c:
            for f in files:
                r = c.post("/v1/inspect", content=f.read_bytes(), params={"recipe": "deeppcb"},
                           headers={"content-type": "image/jpeg"})
                assert r.status_code == 200 and r.json()["verdict"] == verdict, r.text

    try:
        plc_line = srv.app.state.line_plc
        opcua = next(a for a in plc_line.adapters if a.name == "OPC UA").endpoint
        port = next(a for a in plc_line.adapters if a.name == "Modbus TCP").port
        alarm_coil = COILS.index("FailRateAlarm")

        async def run(plc: OpcStation) -> None:
            mb = AsyncModbusTcpClient("127.0.0.1", port=port)
            assert await mb.connect()

            async def both() -> tuple[bool, bool]:
                return (await plc.read("FailRateAlarm"), await _coil(mb, 0, "FailRateAlarm"))

            try:
                assert alarm_coil == 8 and await both() == (False, False)
                await asyncio.to_thread(inspect, good[:4], "pass")  # the usual rate: 0
                await asyncio.to_thread(inspect, defective[:2], "fail")  # 2 of 4: above 30%
                await _until(both, (True, True))
                # another recipe on the station is not in alarm: the tag follows at once
                await plc.write("Recipe", "lenient", ua.VariantType.String)
                await _until(both, (False, False))
                assert not (await mb.write_register(REGISTERS.index("RecipeIndex"), 0,
                                                    device_id=1)).isError()  # back to deeppcb
                await _until(both, (True, True))
                # the handshake goes on in alarm: a verdict, no error
                r = await plc.cycle()
                assert r["Pass"] != r["Fail"] and r["ErrorCode"] == 0
                assert await both() == (True, True)
                with pytest.raises(ua.UaStatusCodeError):  # the PLC cannot silence it
                    await plc.write("FailRateAlarm", False, ua.VariantType.Boolean)
                assert (await mb.write_coil(alarm_coil, False, device_id=1)).isError()
                assert await both() == (True, True)
                await asyncio.to_thread(inspect, good[:4], "pass")  # back to usual: cleared
                await _until(both, (False, False))
            finally:
                mb.close()

        async def opc() -> None:
            async with Client(opcua, timeout=10) as client:
                await run(OpcStation(client, await client.get_namespace_index(NS), "sim"))

        asyncio.run(opc())
    finally:
        stop()
        sim.kill()


def test_a_camera_switches_its_golden_image_with_the_recipe(tmp_path: Path) -> None:
    """``cameras[].references``: one golden image per product. A station that the PLC
    switches between two reference recipes and a single-image one compared every frame
    with its one golden, whatever the product (and a single-image recipe was refused on
    it), so a product switch meant a camera entry per product."""
    import cv2

    from lineside_inspect.server.app import create_app

    other = tmp_path / "other-ref.yaml"
    other.write_text((ROOT / "configs" / "recipes" / "deeppcb-ref.yaml").read_text()
                     .replace("name: deeppcb-ref", "name: other-ref"))
    golden = STATION / "station1-reference.jpg"
    flipped = tmp_path / "flipped.png"  # another product's golden: nothing like the frames
    cv2.imwrite(str(flipped), cv2.flip(cv2.imread(str(golden)), -1))
    recipes = [str(ROOT / "configs" / "recipes" / n) for n in ("deeppcb.yaml", "deeppcb-ref.yaml")]
    cam = CameraConfig(id="station1", source=str(STATION / "station1"), fps=5,
                       recipe="deeppcb-ref", references={"deeppcb-ref": "gold-a",
                                                         "other-ref": str(flipped)})
    plain = CameraConfig(id="plain", source=str(STATION / "station1"), fps=5,
                         recipe="deeppcb-ref", reference="gold-a")
    srv, stop = start_server(keyed(
        cameras=[cam, plain], models=[str(MODEL), str(REF_MODEL)], store=False,
        recipes=[*recipes, str(other)],
        line=LineSettings(modbus=ModbusConfig(port=0), close_hold_s=0)))
    try:
        plc = srv.app.state.line_plc
        assert plc.check_recipe("station1", "other-ref") == ErrorCode.NONE
        assert plc.check_recipe("station1", "deeppcb") == ErrorCode.NONE  # no golden for it
        assert plc.check_recipe("plain", "deeppcb") == ErrorCode.RECIPE_NOT_USABLE
        with srv.client("admin") as c:
            put = c.put("/v1/references/gold-a", headers={"content-type": "image/jpeg"},
                        content=golden.read_bytes())
            assert put.status_code in (200, 201), put.text
        with srv.client("line") as c:
            def trigger(recipe: str) -> dict[str, Any]:
                r = c.post(f"/v1/cameras/station1/trigger?recipe={recipe}&timeout_s=15")
                assert r.status_code == 200, r.text
                return dict(r.json())

            same = trigger("deeppcb-ref")
            assert same["reference"]["name"] == "gold-a"
            assert "reference_mismatch" not in {x["rule"] for x in same["reasons"]}
            switched = trigger("other-ref")  # the other product's golden
            assert switched["reference"]["sha256"] != same["reference"]["sha256"]
            assert switched["verdict"] == "fail"
            assert "reference_mismatch" in {x["rule"] for x in switched["reasons"]}
            single = trigger("deeppcb")
            assert single["reference"] is None and single["verdict"] in ("pass", "fail")
        with srv.client("admin") as c:  # a golden a camera names for a recipe stays
            gone = c.delete("/v1/references/gold-a")
            assert gone.status_code == 409, gone.text
            assert "station1" in gone.json()["error"]["message"]
            # a recipe a camera names a golden for may not become a single-image one
            put = c.put("/v1/recipes/other-ref", json={"name": "other-ref", "model": "deeppcb",
                                                       "version": "4"})
            assert put.status_code == 409, put.text
            assert "camera(s) station1 name one" in put.json()["error"]["message"]
    finally:
        stop()

    # a golden for a recipe whose model takes none contradicts the config: refused at start
    bad = CameraConfig(id="station1", source=str(STATION / "station1"), recipe="deeppcb-ref",
                       reference="gold-a", references={"deeppcb": "gold-a"})
    app = create_app(keyed(cameras=[bad], models=[str(MODEL), str(REF_MODEL)], store=False,
                           recipes=recipes))

    async def start() -> None:
        async with app.router.lifespan_context(app):
            pass

    try:
        with pytest.raises(ConfigError) as info:
            asyncio.run(start())
    finally:
        app.state.cameras.stop()
    assert "camera station1 has a reference configured" in info.value.message
    assert "recipe deeppcb's model" in info.value.message


def test_a_cameras_golden_files_are_found_beside_its_config(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes((STATION / "station1-reference.jpg").read_bytes())
    (tmp_path / "serve.yaml").write_text(
        "cameras:\n  - id: s1\n    source: frames\n    reference: a.jpg\n"
        "    references: {other: a.jpg, named: station9}\n")
    cam = load_settings(tmp_path / "serve.yaml").cameras[0]
    assert cam.reference == str(tmp_path / "a.jpg")
    assert cam.references == {"other": str(tmp_path / "a.jpg"), "named": "station9"}
    assert cam.reference_for("other") == str(tmp_path / "a.jpg")
    assert cam.reference_for("unnamed") == cam.reference
    with pytest.raises(ValidationError):
        CameraConfig(id="s1", source="frames", references={"../x": "a"})


def test_modbus_recipe_index_follows_the_load_order_it_reads_back(tmp_path: Path) -> None:
    """Without ``modbus.recipes`` the index register reads back the recipe in force: a
    recipe put before it dropped moved the load order, and the register kept the old
    index, which then named another recipe (line review, session 34)."""
    sim, settings = _one_camera_two_recipes(tmp_path, LineSettings(modbus=ModbusConfig(port=0),
                                                                   close_hold_s=0))
    srv, stop = start_server(settings)

    async def run(mb: AsyncModbusTcpClient, station: Station) -> None:
        async def in_force() -> str:
            return station.recipe

        with srv.client("admin") as c:  # load order: deeppcb, lenient, aaa, bbb
            for name in ("aaa", "bbb"):
                body = {"name": name, "version": "1", "model": "deeppcb"}
                assert c.put(f"/v1/recipes/{name}", json=body).status_code == 200
        await mb.write_register(REGISTERS.index("RecipeIndex"), 3, device_id=1)
        await _until(in_force, "bbb")
        assert await _reg(mb, 0, "RecipeIndex") == 3
        with srv.client("admin") as c:  # bbb is now index 2; then ccc takes index 3
            assert c.delete("/v1/recipes/aaa").status_code == 200
            body = {"name": "ccc", "version": "1", "model": "deeppcb"}
            assert c.put("/v1/recipes/ccc", json=body).status_code == 200
            names = [r["name"] for r in c.get("/v1/recipes").json()]
        assert names == ["deeppcb", "lenient", "bbb", "ccc"]
        # the register follows the recipe in force (a few ticks later)
        await _until(lambda: _reg(mb, 0, "RecipeIndex"), names.index("bbb"))
        assert station.recipe == "bbb"

    _on_modbus(srv, stop, sim, run)


def test_a_refused_recipe_write_does_not_copy_the_whole_value_into_the_log(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A PLC (or anything that reaches the OPC UA port) writing long, distinct recipe
    names: each refused write was logged with the whole value (the once-a-minute limit
    was per value): 20 writes of 200 kB put 4 MB in the server log (line review, 34)."""
    sim = MJPEGSimulator(folder_frames(SAMPLE), fps=10)
    (tmp_path / "deeppcb.yaml").write_text("name: deeppcb\nversion: '1'\nmodel: deeppcb\n")
    url = f"opc.tcp://127.0.0.1:{free_port()}/lineside/"
    settings = keyed(cameras=[CameraConfig(id="sim", source=sim.url, recipe="deeppcb")],
                     recipes=[str(tmp_path / "deeppcb.yaml")], store=False,
                     line=LineSettings(opcua=OpcUaConfig(endpoint=url), close_hold_s=0))
    _srv, stop = start_server(settings)
    try:
        async def run() -> None:
            async with Client(url, timeout=10) as client:
                idx = await client.get_namespace_index(NS)
                node = client.get_node(f"ns={idx};s=Stations/sim/Recipe")
                for i in range(20):
                    await node.write_value(ua.DataValue(ua.Variant(f"{i}" + "x" * 200_000,
                                                                   ua.VariantType.String)))
                await asyncio.sleep(0.3)

        with caplog.at_level("WARNING", logger="lineside.line"):
            asyncio.run(run())
        told = [r.getMessage() for r in caplog.records if r.name == "lineside.line"]
        assert len(told) == 20 and all(len(m) < 400 for m in told), told  # the value cut
        assert "(200001 characters)" in told[0]
    finally:
        stop()
        sim.kill()


def test_a_polling_plc_at_shutdown_logs_no_pymodbus_error(caplog: pytest.LogCaptureFixture) -> None:
    """A PLC polling every 5 ms while the server stopped: pymodbus logged "Cancel send,
    because not connected!" at ERROR (with traffic dumps), which tripped alerting on a
    plain restart (line review, session 34; about one stop in four)."""
    told: list[str] = []
    for _ in range(3):
        sim = MJPEGSimulator(counter_frame, fps=30)
        srv, stop = start_server(keyed(cameras=[CameraConfig(id="sim", source=sim.url)],
                                       store=False, line=LineSettings(modbus=ModbusConfig(port=0))))
        port = srv.app.state.line_plc.adapters[0].port
        done = threading.Event()

        def poll(port: int = port, done: threading.Event = done) -> None:
            # a raw Modbus TCP client (read coils 0-8), so every pymodbus line is the server's
            import socket
            import struct

            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                tid = 0
                while not done.is_set():
                    tid = (tid + 1) & 0xFFFF
                    try:
                        sock.sendall(struct.pack(">HHHBBHH", tid, 0, 6, 1, 1, 0, 9))
                        if not sock.recv(64):
                            return
                    except OSError:  # the server went: the poll ends
                        return
                    time.sleep(0.005)

        poller = threading.Thread(target=poll)
        with caplog.at_level("DEBUG", logger="pymodbus"):
            poller.start()
            time.sleep(0.3)  # polling (not a timing assertion)
            stop()
            done.set()
            poller.join()
        sim.kill()
        told += [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert not [m for m in told if "Cancel send" in m], told


def test_a_tick_that_raises_does_not_end_the_heartbeat(caplog: pytest.LogCaptureFixture) -> None:
    """An exception in one tick ended the ticker task without a word: the heartbeat and
    the ack timeouts stopped for good while inspections went on."""
    from types import SimpleNamespace

    from lineside_inspect.line.plc import PlcLine

    registry = SimpleNamespace(default_recipe="r1", recipes=lambda: [])
    line = PlcLine(SimpleNamespace(registry=registry), LineSettings(), [])  # type: ignore[arg-type]
    calls: list[float] = []

    def tick(now: float) -> None:
        calls.append(now)
        if len(calls) <= 2:
            raise RuntimeError("a publication met something unforeseen")

    line.tick = tick  # type: ignore[method-assign]

    async def run() -> None:
        ticker = asyncio.create_task(line._tick())
        while len(calls) < 4 and not ticker.done():
            await asyncio.sleep(0.01)
        assert not ticker.done(), ticker.exception()
        ticker.cancel()

    with caplog.at_level(logging.ERROR, logger="lineside.line"):
        asyncio.run(run())
    told = [r for r in caplog.records if "a heartbeat tick failed" in r.getMessage()]
    assert len(told) == 1 and "unforeseen" in told[0].getMessage()  # once, not per tick


def test_a_camera_whose_recipe_is_not_in_the_modbus_table_is_said_at_start(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Its recipe index read back 65535 ("no recipe") while its triggers were judged with
    a recipe, and nothing at start said why."""
    sim, settings = _one_camera_two_recipes(tmp_path, LineSettings(modbus=ModbusConfig(
        port=0, recipes=["lenient"]), close_hold_s=0))
    with caplog.at_level("WARNING", logger="lineside.line"):
        srv, stop = start_server(settings)

    async def body(mb: AsyncModbusTcpClient, station: Station) -> None:
        said = [r.getMessage() for r in caplog.records if "not in the table" in r.getMessage()]
        assert len(said) == 1 and "camera(s) sim (deeppcb) judge with a recipe" in said[0]
        assert station.recipe == "deeppcb"
        assert (await _registers(mb, 0))["RecipeIndex"] == 0xFFFF  # what the warning explains

    _on_modbus(srv, stop, sim, body)
