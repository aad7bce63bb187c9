"""H.264 / H.265 streams decoded at their true size.

OpenCV's FFmpeg reader scales every frame to the size the stream opened at: a camera
switched from 160x120 to 320x240 went on as a stretched 160x120 until a reconnect, and a
reference station compared it with its golden. So the stream is read as packets as sent
(``CAP_PROP_FORMAT`` -1), each sequence parameter set (SPS) gives the size of the frames
after it, and a decoder (OpenCV's FFmpeg again, fed from memory) is started afresh for
each new size: its frames are always the size they were encoded at.

The decoder is fed Matroska (one block a packet, the size and rate in its header), not
the bare stream: FFmpeg probed a bare stream for some 50 packets before its first frame
(1.7 s at 30 fps) and held each frame until the next packet came.
"""

from __future__ import annotations

import io
import math
import re
import threading
import time
from collections.abc import Callable

import numpy as np

from lineside_inspect.errors import ImageError, ImageTooLargeError
from lineside_inspect.opencv import cv2

# FFmpeg's names (CAP_PROP_FOURCC) for the codecs decoded here
CODECS = {b"h264": "h264", b"avc1": "h264", b"H264": "h264",
          b"hevc": "hevc", b"hev1": "hevc", b"hvc1": "hevc", b"H265": "hevc"}
_MATROSKA_CODEC = {"h264": b"V_MPEG4/ISO/AVC", "hevc": b"V_MPEGH/ISO/HEVC"}
_START = re.compile(b"\x00\x00\x01")
_SPS_TYPE = {"h264": 7, "hevc": 33}  # the NAL unit type of a sequence parameter set
NO_SPS_LIMIT = 300  # packets without a parameter set before the stream is given up
# packets fed to one decoder read without a frame before the stream is given up as stalled
# (StreamStalled): after the decoder's first frame each packet is about a frame; before it,
# a decoder started at a parameter set waits for a key frame, FIRST_FRAME_S of the stream
NO_FRAME_LIMIT = 300
FIRST_FRAME_S = 30
# and in time: a read without a frame for longer than the camera's read_timeout_s (before
# the decoder's first frame, FIRST_FRAME_S) ends the same way, however few packets came: a
# stream sending such packets slowly (one a second: 900 s before the packet bound) held
# the read, its trigger and a stop for as long
# an SPS's fields up to its size take well under 1 KiB (even with every scaling list): a
# hostile 1 MB one was read bit by bit for 4.6 s of CPU, each packet that carried one
MAX_SPS_BYTES = 4096


class PacketsUnusable(ImageError):
    """This stream cannot be read as packets here (an SPS this parser cannot read or reads
    wrong, no SPS, a decoder that does not open or gives no frame): the camera is read by
    OpenCV's own decoder instead, as it was before (see ``OpenCVSource``)."""


class StreamStalled(ImageError):
    """Packets keep coming and none makes a frame (only non-decodable slices, SEI, filler):
    the decoder's read would pull them for ever, so the connection is ended (reconnect).
    Also raised when nothing came at all for the read timeout (:func:`silent`)."""


def silent(read_timeout_s: float) -> StreamStalled:
    """A read given up by the source's read timeout, the connection open and silent (a
    stream that sent a frame and stalled, or a camera slower than the timeout): said as
    such, not as "source failed or ended", which an operator of a 0.2 fps camera could not
    tell from a dropped connection (session 51)."""
    return StreamStalled(f"nothing came from the stream for read_timeout_s ({read_timeout_s:g} s):"
                         " it stalled, or sends frames less often than that (a slow camera "
                         "needs read_timeout_s raised)")


class _Bits:
    """An RBSP's bits (emulation prevention bytes removed), read as the specs say."""

    def __init__(self, data: bytes) -> None:
        self.data = data.replace(b"\x00\x00\x03", b"\x00\x00")
        self.pos = 0

    def u(self, n: int) -> int:
        value = 0
        for _ in range(n):
            byte = self.pos >> 3
            if byte >= len(self.data):
                raise ValueError("parameter set cut short")
            value = value << 1 | (self.data[byte] >> (7 - (self.pos & 7)) & 1)
            self.pos += 1
        return value

    def ue(self) -> int:
        zeros = 0
        while self.u(1) == 0:
            zeros += 1
            if zeros > 31:
                raise ValueError("parameter set with a broken number")
        return (1 << zeros) - 1 + self.u(zeros)

    def se(self) -> int:
        k = self.ue()
        return (k + 1) // 2 if k & 1 else -(k // 2)


def _h264_size(rbsp: bytes) -> tuple[int, int]:
    """Width and height (after cropping) of an H.264 SPS (ITU-T H.264 7.3.2.1.1)."""
    b = _Bits(rbsp)
    profile = b.u(8)
    b.u(16)  # constraint flags, level
    b.ue()  # seq_parameter_set_id
    chroma, separate = 1, 0
    if profile in (100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135):
        chroma = b.ue()
        if chroma == 3:
            separate = b.u(1)
        b.ue()
        b.ue()  # bit depths
        b.u(1)
        if b.u(1):  # scaling matrices: skipped, only their length matters
            for i in range(12 if chroma == 3 else 8):
                if b.u(1):
                    last = nxt = 8
                    for _ in range(16 if i < 6 else 64):
                        if nxt:
                            nxt = (last + b.se() + 256) % 256
                        last = nxt or last
    b.ue()  # log2_max_frame_num_minus4
    poc_type = b.ue()
    if poc_type == 0:
        b.ue()
    elif poc_type == 1:
        b.u(1)
        b.se()
        b.se()
        for _ in range(b.ue()):
            b.se()
    b.ue()
    b.u(1)  # max_num_ref_frames, gaps allowed
    width_mbs, height_units = b.ue() + 1, b.ue() + 1
    frame_mbs_only = b.u(1)
    if not frame_mbs_only:
        b.u(1)
    b.u(1)  # direct_8x8_inference
    crop = [b.ue() for _ in range(4)] if b.u(1) else [0, 0, 0, 0]
    array_type = 0 if separate else chroma
    unit_x = 1 if array_type in (0, 3) else 2
    unit_y = (2 - frame_mbs_only) * (2 if array_type == 1 else 1)
    return (width_mbs * 16 - unit_x * (crop[0] + crop[1]),
            (2 - frame_mbs_only) * height_units * 16 - unit_y * (crop[2] + crop[3]))


def _hevc_size(rbsp: bytes) -> tuple[int, int]:
    """Width and height (after the conformance window) of an H.265 SPS (7.3.2.2)."""
    b = _Bits(rbsp)
    b.u(4)
    sub_layers = b.u(3)
    b.u(1)
    b.u(96)  # general profile, tier and level
    present = [(b.u(1), b.u(1)) for _ in range(sub_layers)]
    if sub_layers:
        b.u(2 * (8 - sub_layers))
    for profile, level in present:
        b.u(88 * profile + 8 * level)
    b.ue()  # sps_seq_parameter_set_id
    chroma = b.ue()
    if chroma == 3 and b.u(1):
        chroma = 0  # colour planes coded apart: cropped as monochrome
    width, height = b.ue(), b.ue()
    window = [b.ue() for _ in range(4)] if b.u(1) else [0, 0, 0, 0]
    unit_x = 2 if chroma in (1, 2) else 1
    unit_y = 2 if chroma == 1 else 1
    return width - unit_x * (window[0] + window[1]), height - unit_y * (window[2] + window[3])


def _units(data: bytes) -> list[bytes]:
    """The NAL units of an Annex B byte stream (start code prefixed), headers included."""
    starts = [m.end() for m in _START.finditer(data)]
    # none in an empty packet or a length-prefixed one (avcC): its ValueError crossed
    # OpenCV's C++ read (each packet is looked at from the decoder's read of its feed)
    ends = [*starts[1:], len(data) + 3] if starts else []
    return [data[s:e] for s, e in zip(starts, ends, strict=True)]


def _nal_type(codec: str, unit: bytes) -> int | None:
    """A NAL unit's type from its header (H.264: its low 5 bits; H.265: 6 bits after the
    first), None for an empty unit."""
    if not unit:
        return None
    return unit[0] & 0x1F if codec == "h264" else unit[0] >> 1 & 0x3F


def sps_size(codec: str, data: bytes) -> tuple[int, int] | None:
    """The frame size the last SPS in ``data`` gives, None when it holds no SPS."""
    last = None
    for unit in _units(data):
        # (an H.265 one needs a byte past its two-byte header)
        if _nal_type(codec, unit) == _SPS_TYPE[codec] and (codec == "h264" or len(unit) > 2):
            last = unit
    if last is None:
        return None
    # the last one only, and its start only: a packet of many or huge ones costs no more
    # than one real SPS (the next start code's leading zero stripped)
    unit = last[:MAX_SPS_BYTES].rstrip(b"\x00")
    try:
        return _h264_size(unit[1:]) if codec == "h264" else _hevc_size(unit[2:])
    except ValueError as exc:
        raise ImageError(f"a broken {codec.upper()} parameter set: {exc}") from exc


def _parameter_sets(codec: str, data: bytes) -> bytes:
    """The parameter sets (VPS, SPS, PPS) in ``data``, as an Annex B byte stream."""
    types = (7, 8) if codec == "h264" else (32, 33, 34)
    return b"".join(b"\x00\x00\x00\x01" + unit.rstrip(b"\x00") for unit in _units(data)
                    if _nal_type(codec, unit) in types)


def _element(ident: bytes, payload: bytes) -> bytes:
    return ident + b"\x01" + len(payload).to_bytes(7, "big") + payload


def _uint(ident: bytes, value: int) -> bytes:
    return _element(ident, value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big"))


def _matroska_header(codec: str, parameter_sets: bytes, size: tuple[int, int], fps: float) -> bytes:
    """A live Matroska stream's start: one video track of ``codec``, ``size``, ``fps``.
    The size and rate given spare FFmpeg reading packets to learn them."""
    ebml = _element(b"\x1a\x45\xdf\xa3", _uint(b"\x42\x86", 1) + _uint(b"\x42\xf7", 1)
                    + _uint(b"\x42\xf2", 4) + _uint(b"\x42\xf3", 8)
                    + _element(b"\x42\x82", b"matroska") + _uint(b"\x42\x87", 4)
                    + _uint(b"\x42\x85", 2))
    info = _element(b"\x15\x49\xa9\x66", _uint(b"\x2a\xd7\xb1", 1_000_000))  # ms ticks
    video = _element(b"\xe0", _uint(b"\xb0", size[0]) + _uint(b"\xba", size[1]))
    track = _element(b"\xae", _uint(b"\xd7", 1) + _uint(b"\x73\xc5", 1) + _uint(b"\x83", 1)
                     + _element(b"\x86", _MATROSKA_CODEC[codec])
                     + _uint(b"\x23\xe3\x83", int(1e9 / fps))
                     + _element(b"\x63\xa2", parameter_sets) + video)
    segment = b"\x18\x53\x80\x67\x01\xff\xff\xff\xff\xff\xff\xff"  # of unknown size: live
    # padding (Void): FFmpeg's probe reads 2 KiB before it looks, packets it would wait for
    return ebml + segment + info + _element(b"\x16\x54\xae\x6b", track) + _element(b"\xec", bytes(4096))


def _block(data: bytes, ms: int) -> bytes:
    """One packet as a Matroska cluster of its own, at ``ms``."""
    return _element(b"\x1f\x43\xb6\x75", _uint(b"\xe7", ms)
                    + _element(b"\xa3", b"\x81\x00\x00\x00" + data))


def _keyframe(codec: str, data: bytes) -> bool:
    # a frame a decoder can start at (H.264: an IDR slice, 5; H.265: BLA, IDR or CRA, 16-21)
    keys = {5} if codec == "h264" else set(range(16, 22))
    return any(_nal_type(codec, unit) in keys for unit in _units(data))


class _Feed(io.BufferedIOBase):
    """What a decoder reads: the packets handed to it, one at a time, then end of stream."""

    def __init__(self, first: bytes, pull: Callable[[], bytes | None]) -> None:
        super().__init__()
        self._buf = first
        self._pull = pull
        self._pos = 0

    def read(self, size: int | None = -1) -> bytes:
        if not self._buf:
            self._buf = self._pull() or b""
        n = len(self._buf) if size is None or size < 0 else size
        out, self._buf = self._buf[:n], self._buf[n:]
        self._pos += len(out)
        return out

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR and offset == 0:
            return self._pos
        return -1  # a live stream: no seeking, no size


class H26xStream:
    """Frames of an H.264 / H.265 stream read raw by ``cap``, each at its true size.

    A new size starts a new decoder at the packet carrying its SPS; the frames the old
    decoder still held are dropped (never scaled to a size they were not encoded at), and
    the switch is said once as a refused frame (:class:`ImageError`). Frames a decoder
    buffered while it opened are dropped too: they were sent before the read that hands
    them out, and a trigger must never get a frame from before it."""

    def __init__(self, cap: cv2.VideoCapture, codec: str, max_pixels: int,
                 stop: threading.Event | None = None, *, read_timeout_s: float = 5.0) -> None:
        self.cap = cap
        self.read_timeout_s = read_timeout_s
        # set from another thread (the worker's stop): the read in progress ends at the
        # next packet, as the end of the stream
        self.stop = stop or threading.Event()
        self.codec = codec
        self.max_pixels = max_pixels
        ok, extradata = cap.retrieve(flag=int(cap.get(cv2.CAP_PROP_CODEC_EXTRADATA_INDEX)))
        raw = extradata.tobytes() if ok and extradata is not None else b""
        # RTSP's parameter sets from the SDP (Annex B); MP4/FLV's avcC form is not used
        self.extradata = raw if raw.startswith((b"\x00\x00\x01", b"\x00\x00\x00\x01")) else b""
        try:
            self.size = sps_size(codec, self.extradata) if self.extradata else None
        except ImageError as exc:  # the SDP's: every open failed, a camera that worked dead
            raise PacketsUnusable(f"its parameter set (SPS) does not read: {exc}") from exc
        self.frames = 0  # frames handed out: before the first, a failure is the path's
        self.decoder: cv2.VideoCapture | None = None
        self.next: bytes | None = None  # the packet that starts the next decoder
        self.ended = False  # the raw stream failed or ended
        self.pulled = 0  # packets fed since the last read
        self.decoded = False  # the running decoder gave a frame
        self.stalled = 0  # the packets fed without a frame when the read was ended
        self.stalled_s = 0.0  # > 0: ended by the time bound, after this many seconds
        self._began = 0.0  # time.monotonic() the running read began (or its decoder started)
        self.broken: ImageError | None = None  # a packet the running decoder could not take
        self.silent = False  # the raw read ended by its read timeout (nothing came)
        rate = cap.get(cv2.CAP_PROP_FPS)  # the decoder's header only: not a pace
        self.fps = rate if math.isfinite(rate) and 1 <= rate <= 240 else 25.0
        self._t0 = 0.0

    def _ms(self) -> int:
        return int((time.monotonic() - self._t0) * 1000)

    def _no_frame_limit(self) -> int:
        """Packets one decoder read may take without a frame (see NO_FRAME_LIMIT)."""
        return NO_FRAME_LIMIT if self.decoded else max(NO_FRAME_LIMIT, int(FIRST_FRAME_S * self.fps))

    def _no_frame_s(self) -> float:
        """Seconds one decoder read may take without a frame (see FIRST_FRAME_S)."""
        return self.read_timeout_s if self.decoded else max(self.read_timeout_s, FIRST_FRAME_S)

    def _packet(self) -> bytes | None:
        if self.stop.is_set():
            self.ended = True  # asked to stop: the end of the stream here
        if self.ended:
            return None
        began = time.monotonic()
        ok, packet = self.cap.read()
        if not ok or packet is None:
            self.ended = True
            # OpenCV's interrupt ends a raw read after read_timeout_s of silence; a dropped
            # connection or the stream's end fails sooner
            self.silent = not self.stop.is_set() and \
                time.monotonic() - began >= self.read_timeout_s
            return None
        return packet.tobytes()

    def _pull(self) -> bytes | None:
        """The next packet for the running decoder; None (its end) at a new size."""
        if self.next is not None:
            return None
        if self.pulled >= self._no_frame_limit():
            # the decoder's read pulls until it has a frame, however many packets that
            # takes (FFmpeg's "needs more input" is not counted): ended here, said by read
            self.stalled = self.pulled
            return None
        if self.pulled and time.monotonic() - self._began > self._no_frame_s():
            self.stalled, self.stalled_s = self.pulled, self._no_frame_s()
            return None
        data = self._packet()
        if data is None:
            return None
        try:
            size = sps_size(self.codec, data)
        except ImageError as exc:  # raised here it would cross OpenCV's C++ read
            self.broken = exc
            return None
        if size is not None and size != self.size:
            self.next = data
            return None
        self.pulled += 1
        return _block(data, self._ms())

    def _start(self) -> str | None:
        """A decoder from the next packet with an SPS (or a key frame, the SDP's SPS known);
        the size switched from, if it was a switch."""
        old, data = self.size, self.next
        self.next = None
        for _ in range(NO_SPS_LIMIT):
            if data is None:
                data = self._packet()
                if data is None:
                    return None
            try:
                size = sps_size(self.codec, data)
            except ImageError as exc:
                if self.frames:  # it read before: a packet broken on the link
                    raise
                raise PacketsUnusable(f"its parameter set (SPS) does not read: {exc}") from exc
            if size is None and self.size is not None and _keyframe(self.codec, data):
                size = self.size  # the SDP's parameter sets, put in the decoder's header
            if size is not None:
                break
            data = None
        else:
            kind = ImageError if self.frames else PacketsUnusable
            raise kind(f"no {self.codec.upper()} parameter set (SPS) in "
                       f"{NO_SPS_LIMIT} packets: the stream cannot be decoded")
        self.size = size
        width, height = size
        if width <= 0 or height <= 0:
            raise ImageError(f"a {self.codec.upper()} parameter set says {width}x{height}")
        if width * height > self.max_pixels:
            raise ImageTooLargeError(
                f"image is {width}x{height} = {width * height} pixels, over the limit of "
                f"{self.max_pixels} (said by the stream before a pixel was decoded)")
        sets = _parameter_sets(self.codec, data) or _parameter_sets(self.codec, self.extradata)
        self._t0 = self._began = time.monotonic()
        self.pulled, self.decoded, self.stalled, self.stalled_s = 0, False, 0, 0.0
        first = _matroska_header(self.codec, sets, size, self.fps) + _block(data, 0)
        # the binding takes any io.BufferedIOBase; its stubs name only its C++ interface
        self.decoder = cv2.VideoCapture(_Feed(first, self._pull), cv2.CAP_FFMPEG, [])  # type: ignore[call-overload]
        if not self.decoder.isOpened():
            self.decoder = None  # never release(): see close
            raise PacketsUnusable(f"a {self.codec.upper()} decoder did not open on its packets")
        return None if old is None or old == size else f"{old[0]}x{old[1]}"

    def read(self) -> np.ndarray | None:
        """The next frame; None when the stream failed or ended. Raises :class:`ImageError`
        for a frame refused: a switch of size (once), a size over ``max_pixels``."""
        while True:
            if self.decoder is None:
                switched = self._start()
                if self.decoder is None:
                    if self.silent:
                        raise silent(self.read_timeout_s)
                    return None
                if switched is not None:
                    width, height = self.size or (0, 0)
                    raise ImageError(f"the stream switched from {switched} to {width}x{height}:"
                                     " the frames of the switch skipped, never stretched")
            self.pulled, self._began = 0, time.monotonic()
            ok, frame = self.decoder.read()
            if ok and frame is not None:
                if frame.shape[1::-1] != self.size:
                    # the SPS read wrong (a profile or syntax this parser does not know):
                    # its switches and max_pixels would be judged on a size not the frames'
                    self.decoder = None
                    width, height = self.size or (0, 0)
                    raise PacketsUnusable(f"its SPS was read as {width}x{height}, its frames "
                                          f"are {frame.shape[1]}x{frame.shape[0]}")
                self.decoded = True
                if self.pulled:
                    self.frames += 1
                    return frame
                continue  # from the decoder's opening buffer: sent before this read
            self.decoder = None  # never release(): see close
            if self.stop.is_set():
                return None  # asked to stop: no frame, no fallback, no error
            if self.stalled:
                stalled, self.stalled = self.stalled, 0
                took, self.stalled_s = self.stalled_s, 0.0
                within = f" in {took:g} s" if took else ""
                raise StreamStalled(f"{stalled} {self.codec.upper()} packets without a frame"
                                    f"{within}: the stream sends nothing that decodes")
            if self.broken is not None:
                broken, self.broken = self.broken, None
                if not self.frames:
                    raise PacketsUnusable(f"its parameter set (SPS) does not read: {broken}")
                raise broken
            if self.next is None and not self.frames and not self.ended:
                raise PacketsUnusable(f"its {self.codec.upper()} decoder gave no frame")
            if self.next is None:  # not a switch: the stream failed, ended or is broken
                if self.silent:
                    raise silent(self.read_timeout_s)
                return None

    def close(self) -> None:
        # dropped, never release()d: release() lets go of the GIL, then frees the feed (a
        # Python object) without it, and the interpreter aborts; Python frees it safely
        self.decoder = None
