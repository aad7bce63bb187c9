"""The EXIF orientation of a JPEG, read from its header, so that an import can say when
labels may have been drawn on another frame than the one Lineside reads.

Lineside reads pixels as stored (see :mod:`lineside_inspect.imageio`); Ultralytics,
Roboflow, labelling tools and image viewers first turn a JPEG as its orientation tag
says. Boxes drawn on the turned picture land elsewhere on the stored one.
"""

from __future__ import annotations

import struct
from pathlib import Path

from lineside_inspect.errors import ImageError
from lineside_inspect.imageio import jpeg_segments

ORIENTATION_TAG = 0x0112
HEAD_BYTES = 65536  # APP1 (EXIF) comes first in a camera's or a phone's JPEG
MAX_IFD_ENTRIES = 512  # a real IFD0 holds a few dozen; a hostile count is not walked

# what a viewer does to the stored picture before showing it, by orientation value
TURNS = {
    2: "mirrored left to right",
    3: "turned 180°",
    4: "mirrored top to bottom",
    5: "mirrored and turned 90°",
    6: "turned 90° clockwise",
    7: "mirrored and turned 90°",
    8: "turned 90° anticlockwise",
}
SWAPS_SIDES = frozenset({5, 6, 7, 8})  # shown as height x width
# the TIFF types an orientation value is read as, by PIL (any integer type) and OpenCV
# (the entry's first two bytes, whatever its type): SHORT as the standard says, and the
# LONG, SSHORT and SLONG some writers use (a LONG 6 was read as stored here and turned by
# both, so a pulled frame kept reading turned; review, session 55)
INT_TYPES = {3: "H", 4: "I", 8: "h", 9: "i"}


def orientation(data: bytes) -> int:
    """The EXIF orientation (2-8) a JPEG's header bytes carry; 1 (as stored) when none,
    when the bytes are not a JPEG, or when the tag cannot be read. Its segments are
    walked as every JPEG header is (:func:`lineside_inspect.imageio.jpeg_segments`)."""
    entry = _orientation_entry(data)
    return entry[0] if entry is not None and entry[0] in TURNS else 1


def as_stored(data: bytes) -> bytes:
    """``data`` (a JPEG) with an EXIF orientation that says to show it turned set to 1,
    "as stored": the same length, the same pixels, and every tool (OpenCV's ``imread``,
    PIL's ``exif_transpose``, Ultralytics) then reads it as Lineside does, boxes drawn on
    the stored pixels where they were drawn; anything else is returned as it is."""
    entry = _orientation_entry(data)
    if entry is None or entry[0] not in TURNS:
        return data
    _, at, fmt = entry
    one = struct.pack(fmt, 1)
    return data[:at] + one + data[at + len(one):]


def _orientation_entry(data: bytes) -> tuple[int, int, str] | None:
    """IFD0's orientation entry of a JPEG's first EXIF segment: (its value, where in
    ``data`` the value is, its struct format with the TIFF byte order); None without one."""
    if not data.startswith(b"\xff\xd8"):
        return None
    try:
        for marker, pos in jpeg_segments(data):
            if marker < 0 or marker in (0xDA, 0xD9):  # the scan (or the end): no header after
                return None
            if marker == 0xE1:
                (length,) = struct.unpack(">H", data[pos + 2:pos + 4])
                body = data[pos + 4:pos + 2 + length]
                if body.startswith(b"Exif\x00\x00"):
                    found = _tiff_orientation(body[6:])
                    return None if found is None else (found[0], pos + 10 + found[1], found[2])
    except (ImageError, struct.error):  # a marker flood, or cut short: as stored
        return None
    return None


def _tiff_orientation(tiff: bytes) -> tuple[int, int, str] | None:
    """The orientation entry of IFD0 of EXIF's TIFF structure: (its value, where in
    ``tiff`` the value is, its struct format with the byte order); None when absent or
    unreadable."""
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if order is None:
        return None
    try:
        (ifd,) = struct.unpack(order + "I", tiff[4:8])
        (count,) = struct.unpack(order + "H", tiff[ifd:ifd + 2])
        for i in range(min(count, MAX_IFD_ENTRIES)):
            start = ifd + 2 + 12 * i
            tag, kind, _, value = struct.unpack(order + "HHI4s", tiff[start:start + 12])
            if tag == ORIENTATION_TAG and kind in INT_TYPES:
                fmt = order + INT_TYPES[kind]
                (found,) = struct.unpack_from(fmt, value)
                return found, start + 8, fmt
    except struct.error:  # cut short: as stored
        return None
    return None


def file_orientation(path: Path) -> int:
    """:func:`orientation` of a file (1 for what is not a JPEG or cannot be read)."""
    if path.suffix.lower() not in (".jpg", ".jpeg"):
        return 1
    try:
        with path.open("rb") as f:
            return orientation(f.read(HEAD_BYTES))
    except OSError:
        return 1


def turned_hint(path: Path, said: tuple[int, int], size: tuple[int, int]) -> str:
    """Why labels may state ``said`` for an image of ``size``: sides swapped, by the
    JPEG's EXIF orientation (a viewer's frame) or by a rotated copy; "" otherwise."""
    if said != (size[1], size[0]) or said == size:
        return ""
    turn = file_orientation(path)
    if turn in SWAPS_SIDES:
        return (f" (turned: the JPEG's EXIF orientation {turn} says to show it "
                f"{TURNS[turn]}, and the labels were made on the turned picture; Lineside "
                "reads pixels as stored: save the image turned, then label sizes and boxes "
                "agree)")
    return " (turned: EXIF rotation, or a rotated copy)"
