"""The PLC contract as docs/line-integration.md writes it, against what the code serves: a
PLC programmer maps the tags by the docs alone (plant controls review, session 51). The
handshake itself, with real asyncua and pymodbus peers, is in test_line_plc.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lineside_inspect.line.modbus import BLOCK, COILS, PLC_COILS, REGISTERS
from lineside_inspect.line.station import PLC_WRITES, TAGS

DOC = (Path(__file__).resolve().parents[2] / "docs" / "line-integration.md").read_text()
STATUS_COILS = len(COILS)  # Trigger .. WrongView: what a PLC reads to see a whole result


def _section(title: str) -> str:
    text = DOC[DOC.index(f"\n## {title}"):]
    end = text.find("\n## ", 4)
    return text if end < 0 else text[:end]


def test_the_opcua_table_is_the_address_space_served() -> None:
    rows = re.findall(r"^\| `(\w+)` \| `Stations/<cam>/(\w+)` \| (\w+) \| ([^|]+) \|",
                      _section("OPC UA"), re.M)
    assert {name: kind for name, _nid, kind, _access in rows} == TAGS
    assert all(name == nid for name, nid, _kind, _access in rows)
    assert {name for name, _nid, _kind, access in rows if "PLC writes" in access} == PLC_WRITES


def test_the_modbus_table_is_the_register_map_served() -> None:
    table = [[c.strip() for c in row.split("|")[1:-1]]
             for row in _section("Modbus TCP").splitlines() if re.match(r"\| \+\d+ \|", row)]
    table = [(o[1:], c, a, r, ra) for o, c, a, r, ra in table]
    coils = {int(o): re.match(r"\s*`(\w+)`", c).group(1)  # type: ignore[union-attr]
             for o, c, _a, _r, _ra in table if c.strip().startswith("`")}
    assert coils == dict(enumerate(COILS))
    writes = {int(o) for o, _c, access, _r, _ra in table if "PLC writes" in access}
    assert writes == set(PLC_COILS)
    registers = {int(o): r.strip() for o, _c, _a, r, _ra in table
                 if r.strip() and "reserved" not in r}
    named = {o: re.sub(r"[`\s]|\(.*", "", r).lower() for o, r in registers.items()}
    assert named == {i: n.lower() for i, n in enumerate(REGISTERS)}
    assert "+11…+15" in _section("Modbus TCP") and BLOCK == 16


def test_every_example_reads_every_status_coil() -> None:
    """The S7-1500 sketch and the CODESYS channel read coils 0-9, the pymodbus example and
    the OpenPLC device 0-8: a PLC mapped by them never saw ``BlankFrame`` (+9) or
    ``WrongView`` (+10), the two bits that tell "cannot judge" from "defect"."""
    s7, codesys = _section("Siemens S7-1500 (TIA Portal, SCL, Modbus TCP)"), \
        _section("CODESYS (IEC 61131-3 structured text, Modbus TCP)")
    sim = _section("Testing against a PLC simulator")
    # the S7 poll of the status coils (MB_DATA_ADDR 1 is coil 0)
    assert re.findall(r"MB_MODE := 0, MB_DATA_ADDR := 1, MB_DATA_LEN := (\d+)", s7) \
        == [str(STATUS_COILS)]
    assert f"coils 0–{STATUS_COILS - 1}" in s7 and f"Array[0..{STATUS_COILS - 1}] of Bool" in s7
    assert "#coils[10]" in s7  # WrongView: a camera to check too
    status = re.search(r"^\| status \| Read Coils \(FC 01\) \| 0 \| (\d+) \|(.*)$", codesys, re.M)
    assert status is not None and int(status.group(1)) == STATUS_COILS
    assert ", ".join(COILS) in status.group(2) and "xWrongView" in codesys
    assert "xCheckCamera := xBlankFrame OR xWrongView" in codesys
    counts = re.findall(r"read_coils\(0, count=(\d+)", sim)
    assert counts and set(counts) == {str(STATUS_COILS)}
    assert f"coils start 0 size {STATUS_COILS}" in sim


def test_more_stations_than_modbus_addresses_are_refused_at_start(tmp_path: Path) -> None:
    """Station n owns addresses 16n..16n+15: 4097 cameras went past address 65535, and the
    Modbus server did not start, with pymodbus's TypeError as a traceback (plant review,
    session 51). Now one line at load naming ``line.modbus``; the last count that fits is
    the one pymodbus's tables take."""
    from pymodbus.simulator import DataType, SimData

    from lineside_inspect.config import load_settings
    from lineside_inspect.errors import ConfigError
    from lineside_inspect.line.config import MODBUS_MAX_STATIONS

    def config(cameras: int) -> Path:
        path = tmp_path / f"{cameras}.yaml"
        path.write_text("line: {modbus: {port: 0}}\ncameras:\n" + "".join(
            f"  - {{id: c{i}, source: '0'}}\n" for i in range(cameras)))
        return path

    with pytest.raises(ConfigError) as refused:
        load_settings(config(MODBUS_MAX_STATIONS + 1))
    message = str(refused.value)
    assert "line.modbus:" in message and f"at most {MODBUS_MAX_STATIONS} cameras" in message
    assert "\n" not in message and "Traceback" not in message
    assert len(load_settings(config(MODBUS_MAX_STATIONS)).cameras) == MODBUS_MAX_STATIONS
    # the adapter's register table (line/modbus.py) of the last count that fits, then one more
    SimData(0, count=BLOCK * MODBUS_MAX_STATIONS, values=0, datatype=DataType.REGISTERS)
    with pytest.raises(TypeError):  # what the server met one station further
        SimData(0, count=BLOCK * (MODBUS_MAX_STATIONS + 1), values=0, datatype=DataType.REGISTERS)
