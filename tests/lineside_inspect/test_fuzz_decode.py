"""Property tests (hypothesis) on the image decoder and on the request body path.

Decoder: for arbitrary bytes and for real JPEG/PNG/BMP files mutated (bit flips,
truncations, appended junk, header size fields set to huge or zero values, other header
fields changed), :func:`decode_image` returns a ``uint8`` HxWx3 array of the size the
header states, or raises :class:`ImageError`; nothing else, and a header over the pixel
limit is refused before any pixel buffer is allocated (the peak of traced memory stays
near the limit). ``header_size`` answers a size or an ``ImageError`` for any bytes.

Body path: multipart bodies with random boundaries, missing, extra and non-file fields,
part headers declaring huge lengths, and arbitrary content types, sent to a real server's
``/v1/inspect``: the answer is a 4xx JSON error or a 200 verdict, never a 5xx, and the
keep-alive connection is still the one a good request then goes over.

``LINESIDE_FUZZ_EXAMPLES`` scales the examples (small under ``make test``, more under
``make fuzz``). Deadlines are a hang guard only, not timing assertions.
"""

from __future__ import annotations

import os
import resource
import socket
import struct
import tracemalloc
import zlib
from collections.abc import Iterator
from datetime import timedelta

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from lineside_inspect.cameras.h26x import MAX_SPS_BYTES, _units, sps_size
from lineside_inspect.errors import ImageError, ImageTooLargeError
from lineside_inspect.imageio import decode_image, header_size
from lineside_inspect.opencv import cv2

from .conftest import SAMPLE, Running, keyed, start_server

SCALE = int(os.environ.get("LINESIDE_FUZZ_EXAMPLES", "8"))
DECODE_EXAMPLES = 40 * SCALE  # decodes of small images are cheap
HTTP_EXAMPLES = 3 * SCALE  # each one a request (and often an inference) on the real server
HANG_GUARD = timedelta(seconds=5)
COMMON = {"deadline": HANG_GUARD, "database": None, "derandomize": False,
          "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large]}

BOARD = next((SAMPLE / "images").rglob("*_test.jpg")).read_bytes()


def _encode(ext: str, image: np.ndarray, *params: int) -> bytes:
    ok, buf = cv2.imencode(ext, image, list(params))
    assert ok
    return bytes(buf.tobytes())


def _seeds() -> dict[str, bytes]:
    """Small real files of each format and common variant, cut from a real board image."""
    board = cv2.imdecode(np.frombuffer(BOARD, np.uint8), cv2.IMREAD_COLOR)
    bgr = np.ascontiguousarray(board[100:124, 200:232])  # 32x24
    grey = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    bgra = cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA)
    return {
        "jpeg": _encode(".jpg", bgr, cv2.IMWRITE_JPEG_QUALITY, 90),
        "jpeg-progressive": _encode(".jpg", bgr, cv2.IMWRITE_JPEG_PROGRESSIVE, 1),
        "jpeg-grey": _encode(".jpg", grey),
        "png": _encode(".png", bgr),
        "png-grey": _encode(".png", grey),
        "png-16bit": _encode(".png", bgr.astype(np.uint16) * 257),
        "png-alpha": _encode(".png", bgra),
        "bmp": _encode(".bmp", bgr),
        "bmp-grey": _encode(".bmp", grey),
        "bmp-32bit": _encode(".bmp", bgra),
    }


SEEDS = _seeds()
# values a size field is set to: zero, tiny, the format's maxima, sign-bit values
SIZE_VALUES = [0, 1, 2, 0x7FFF, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]


def _jpeg_sof(data: bytes | bytearray) -> int | None:
    """Offset of the first frame header marker (FFC0..FFCF but DHT, JPG, DAC)."""
    pos = 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return pos
        pos += 2 + struct.unpack(">H", bytes(data[pos + 2 : pos + 4]))[0]
    return None


def _fix_png_crc(data: bytearray) -> None:
    """Recompute IHDR's CRC, so a changed header reaches the decoder as a valid chunk."""
    if data[12:16] == b"IHDR" and len(data) >= 33:
        data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))


def _set_size(data: bytearray, width: int, height: int) -> None:
    if data.startswith(b"\x89PNG"):
        data[16:24] = struct.pack(">II", width & 0xFFFFFFFF, height & 0xFFFFFFFF)
        _fix_png_crc(data)
    elif data.startswith(b"BM"):
        data[18:26] = struct.pack("<II", width & 0xFFFFFFFF, height & 0xFFFFFFFF)
    elif (sof := _jpeg_sof(data)) is not None:
        data[sof + 5 : sof + 9] = struct.pack(">HH", height & 0xFFFF, width & 0xFFFF)


@st.composite
def mutated_images(draw: st.DrawFn) -> bytes:
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)), label="seed")])
    for op in draw(st.lists(st.sampled_from(["flip", "byte", "header", "size", "truncate",
                                             "append", "cut-middle"]), min_size=1, max_size=4)):
        if not data:
            break
        if op == "flip":  # a bit flip anywhere
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "byte":  # a byte of the header region set to an edge value
            i = draw(st.integers(0, min(len(data), 64) - 1))
            data[i] = draw(st.sampled_from([0x00, 0x01, 0x7F, 0x80, 0xFF, data[i] ^ 0xFF]))
        elif op == "header":  # a 16 or 32-bit header field set to an edge value
            i = draw(st.integers(0, max(0, min(len(data), 64) - 4)))
            value = draw(st.sampled_from(SIZE_VALUES))
            data[i : i + 4] = struct.pack(draw(st.sampled_from(["<I", ">I"])), value)[: len(data) - i]
            _fix_png_crc(data)
        elif op == "size":  # the image's size fields: huge, zero, or anything
            width = draw(st.sampled_from(SIZE_VALUES) | st.integers(0, 0xFFFFFFFF))
            height = draw(st.sampled_from(SIZE_VALUES) | st.integers(0, 0xFFFFFFFF))
            _set_size(data, width, height)
        elif op == "truncate":
            del data[draw(st.integers(0, len(data) - 1)) :]
        elif op == "append":
            data += draw(st.binary(max_size=64) | st.sampled_from([b"\xff\xd9", b"\x00" * 32,
                                                                   SEEDS["jpeg"], SEEDS["png"]]))
        elif op == "cut-middle":
            i = draw(st.integers(0, len(data) - 1))
            del data[i : i + draw(st.integers(1, 256))]
    return bytes(data)


def _check_decode(data: bytes, max_pixels: int | None = None) -> np.ndarray | None:
    """The decoder's contract for any input: a header-sized BGR uint8 image or ImageError."""
    if currently_in_test_context():  # the failing example, printable (hypothesis hides it)
        note(f"{len(data)} bytes: {data[:2048]!r}")
    try:
        image = decode_image(data) if max_pixels is None else decode_image(data, max_pixels)
    except ImageError as exc:
        assert exc.message and exc.status in (400, 413, 415, 422)
        return None
    assert isinstance(image, np.ndarray) and image.dtype == np.uint8
    assert image.ndim == 3 and image.shape[2] == 3
    width, height = header_size(data)
    assert image.shape[:2] == (height, width)
    return image


def test_every_seed_decodes() -> None:
    """The seeds are valid files (else the mutations below test nothing)."""
    for name, data in SEEDS.items():
        image = _check_decode(data)
        assert image is not None and image.shape == (24, 32, 3), name


@settings(max_examples=DECODE_EXAMPLES, **COMMON)  # type: ignore[arg-type]
@given(st.binary(max_size=512) | st.builds(lambda magic, rest: magic + rest, st.sampled_from(
    [b"\xff\xd8", b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"BM"]), st.binary(max_size=512)))
def test_arbitrary_bytes(data: bytes) -> None:
    _check_decode(data)
    try:
        width, height = header_size(data)
    except ImageError:
        return
    assert isinstance(width, int) and isinstance(height, int) and width >= 0 and height >= 0


@settings(max_examples=DECODE_EXAMPLES, **COMMON)  # type: ignore[arg-type]
@given(mutated_images())
def test_mutated_images(data: bytes) -> None:
    # 4 Mpx: over OpenCV's 2**20 side limit, small enough that a header claiming it
    # (a tiny file decoded to a grey 12 MB image) stays quick
    _check_decode(data, max_pixels=1 << 22)


LIMIT = 32 * 24  # the seeds' own pixel count: any larger claim must be refused up front


def _max_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


@settings(max_examples=DECODE_EXAMPLES, **COMMON)  # type: ignore[arg-type]
@given(mutated_images())
def test_no_allocation_beyond_the_pixel_limit(data: bytes) -> None:
    """With the limit at the seeds' size, a header claiming more is refused before decoding,
    and no decode allocates much more than a limit-sized image: traced memory (numpy,
    OpenCV's results) stays small, and so does the process's peak RSS (native buffers:
    a PNG chunk declaring 4 GB once took 4 GB there)."""
    try:
        width, height = header_size(data)
    except ImageError:
        width = height = 0
    rss = _max_rss()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        image = _check_decode(data, LIMIT)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * LIMIT * 3 + 4 * len(data) + 256 * 1024, f"{peak} bytes traced"
    assert _max_rss() - rss < 64 * 1024 * 1024, "the peak RSS grew by over 64 MiB"
    if image is not None:
        assert image.shape[0] * image.shape[1] <= LIMIT
    if width > 0 and height > 0 and width * height > LIMIT:  # refused by the header check
        with pytest.raises(ImageTooLargeError):
            decode_image(data, LIMIT)


# ---- the HTTP body path -------------------------------------------------------------

MAX_BODY = 64 * 1024  # the server's max_body_bytes here: over-limit bodies stay cheap


@pytest.fixture(scope="module")
def body_server() -> Iterator[Running]:
    running, stop = start_server(keyed(max_body_bytes=MAX_BODY, body_timeout_s=2.0))
    yield running
    stop()


BCHARS = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'()+_,-./:=?"
HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
PART_CONTENT = st.sampled_from([BOARD, SEEDS["png"], SEEDS["bmp"], b""]) | mutated_images() | \
    st.binary(max_size=300)


@st.composite
def multipart_requests(draw: st.DrawFn) -> tuple[dict[str, str], bytes]:
    """Headers and body of a multipart request, valid or broken in many ways."""
    boundary = draw(st.text(BCHARS, min_size=1, max_size=70) | HEADER_TEXT, label="boundary")
    body_boundary = draw(st.just(boundary) | st.text(BCHARS, min_size=1, max_size=20))
    eol = draw(st.sampled_from(["\r\n", "\n"]))
    parts = []
    for _ in range(draw(st.integers(0, 5))):
        name = draw(st.sampled_from(["image", "file", "reference", "other", "image"]) | HEADER_TEXT)
        disposition = f'form-data; name="{name}"'
        if draw(st.booleans()):  # a file field (else a plain form field)
            disposition += f'; filename="{draw(HEADER_TEXT)}"'
        headers = [f"Content-Disposition: {disposition}"]
        if draw(st.booleans()):
            part_type = draw(st.sampled_from(["image/jpeg", "image/png"]) | HEADER_TEXT)
            headers.append(f"Content-Type: {part_type}")
        if draw(st.booleans()):  # declared lengths the parser must not trust
            length = draw(st.sampled_from(["0", "1", str(2**63), str(2**64), "-1"]))
            headers.append(f"Content-Length: {length}")
        if draw(st.booleans()):
            headers.append(f"{draw(st.sampled_from(['Content-Transfer-Encoding', 'X-' + 'a' * 200]))}: "
                           f"{draw(st.sampled_from(['base64', 'binary', 'x' * 2000]))}")
        parts.append((eol.join(headers) + eol + eol).encode("latin-1") + draw(PART_CONTENT))
    body = draw(st.binary(max_size=16), label="preamble")
    for part in parts:
        body += f"--{body_boundary}{eol}".encode("latin-1") + part + eol.encode()
    if draw(st.booleans()):
        body += f"--{body_boundary}--{eol}".encode("latin-1")
    body += draw(st.binary(max_size=16), label="epilogue")
    if draw(st.integers(0, 9)) == 0:  # over max_body_bytes: refused (413), nothing spooled
        body += b"\x00" * (MAX_BODY + 1)
    ctype = draw(st.sampled_from([f"multipart/form-data; boundary={boundary}",
                                  f'multipart/form-data; boundary="{boundary}"',
                                  f"multipart/form-data;boundary={boundary};charset=utf-8",
                                  "multipart/form-data", "multipart/mixed; boundary=" + boundary,
                                  f"Multipart/Form-Data; BOUNDARY={boundary}"]) | HEADER_TEXT)
    ctype = ctype.strip()  # h11 will not send a header value with surrounding spaces
    return ({"Content-Type": ctype} if ctype else {}), body


@st.composite
def raw_requests(draw: st.DrawFn) -> tuple[dict[str, str], bytes]:
    """A raw (non-multipart) body with any content type, declared or not."""
    ctype = draw(st.sampled_from(["image/jpeg", "image/png", "image/bmp", "image/x-ms-bmp",
                                  "application/octet-stream", "image/jpg; charset=utf-8",
                                  "application/json", "text/plain", "", "image/gif",
                                  "IMAGE/JPEG"]) | HEADER_TEXT)
    ctype = ctype.strip()
    return ({"Content-Type": ctype} if ctype else {}), draw(PART_CONTENT)


def _client_port(response: httpx.Response) -> None:
    """Response hook (the socket is still open then): note the client's local port."""
    stream = response.extensions["network_stream"]
    response.extensions["client_port"] = stream.get_extra_info("client_addr")[1]


def _assert_answer(r: httpx.Response) -> None:
    assert r.status_code < 500, r.text
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    if r.status_code == 200:
        assert body["verdict"] in ("pass", "fail"), body
    else:
        assert 400 <= r.status_code < 500, r.status_code
        assert set(body) == {"error"} and isinstance(body["error"]["code"], str), body
        assert isinstance(body["error"]["message"], str) and body["error"]["message"]


def _send_then_good(server: Running, headers: dict[str, str], body: bytes) -> None:
    with server.client("line", event_hooks={"response": [_client_port]}) as c:
        r = c.post("/v1/inspect", content=body, headers=headers)
        _assert_answer(r)
        closing = r.headers.get("connection", "").lower() == "close"
        assert closing == (r.status_code in (408, 413)), (r.status_code, r.headers)
        good = c.post("/v1/inspect", content=BOARD, headers={"Content-Type": "image/jpeg"})
        assert good.status_code == 200, good.text
        if not closing:  # the same keep-alive connection carried the good request
            assert good.extensions["client_port"] == r.extensions["client_port"]


@settings(max_examples=HTTP_EXAMPLES, **COMMON)  # type: ignore[arg-type]
@given(multipart_requests())
def test_multipart_bodies(body_server: Running, request: tuple[dict[str, str], bytes]) -> None:
    _send_then_good(body_server, *request)


@settings(max_examples=HTTP_EXAMPLES, **COMMON)  # type: ignore[arg-type]
@given(raw_requests())
def test_raw_bodies_and_content_types(body_server: Running, request: tuple[dict[str, str], bytes]) -> None:
    _send_then_good(body_server, *request)


def _raw_exchange(server: Running, head: bytes, body: bytes) -> bytes:
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(head + body)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@settings(max_examples=max(4, SCALE), **COMMON)  # type: ignore[arg-type]
@given(st.integers(MAX_BODY + 1, 2**70) | st.sampled_from([2**63, 2**64, 10**30]),
       st.sampled_from(["image/jpeg", "multipart/form-data; boundary=x"]))
def test_huge_declared_length(body_server: Running, declared: int, ctype: str) -> None:
    """A Content-Length over the limit (up to absurd values) is refused at once with 413,
    before the body, and the connection is closed; the server goes on answering."""
    from .conftest import KEYS

    head = (f"POST /v1/inspect HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEYS['line']}\r\n"
            f"Content-Type: {ctype}\r\nContent-Length: {declared}\r\n\r\n").encode()
    answer = _raw_exchange(body_server, head, BOARD[:1000])
    status_line = answer.split(b"\r\n", 1)[0]
    # h11 itself refuses a length it cannot parse as a sane integer (400): also fine
    assert status_line.split()[1] in (b"413", b"400"), answer[:300]
    with body_server.client("line") as c:
        assert c.get("/healthz").status_code == 200




# ---- what the fuzz tests found, pinned as plain cases ---------------------------------


def _bmp_claiming(width: int, height: int) -> bytes:
    data = bytearray(SEEDS["bmp"])
    data[18:26] = struct.pack("<ii", width, height)
    return bytes(data)


def _png_with_huge_idat() -> bytes:
    """The 32x24 PNG seed with its IDAT length's top byte set: the chunk claims ~4 GB."""
    data = bytearray(SEEDS["png"])
    at = data.index(b"IDAT") - 4
    data[at] = 0xFF
    return bytes(data)


@pytest.mark.parametrize(("width", "height"), [(1, 2_000_000), (2_000_000, 1), (1, (1 << 20) + 1)])
def test_bmp_side_over_opencv_limit_is_an_image_error(width: int, height: int) -> None:
    """Within the pixel limit, but a side over OpenCV's 2**20: OpenCV raised cv2.error
    (a 500 from /v1/inspect) instead of answering None."""
    with pytest.raises(ImageError, match="corrupt or truncated BMP") as info:
        decode_image(_bmp_claiming(width, height))
    assert info.value.status == 400


def test_png_chunk_longer_than_the_file_is_refused_before_decoding() -> None:
    """A 4 GB IDAT length in a 128-byte PNG: OpenCV allocated (and zeroed) 4 GB and took
    seconds before refusing it. Now refused from the chunk walk, no buffer allocated."""
    data = _png_with_huge_idat()
    rss = _max_rss()
    with pytest.raises(ImageError, match="corrupt or truncated PNG image: a chunk declares") as info:
        decode_image(data)
    assert info.value.status == 400
    assert _max_rss() - rss < 64 * 1024 * 1024, "the peak RSS grew by over 64 MiB"


@pytest.mark.parametrize("case", ["bmp-tall", "png-huge-chunk"])
def test_found_cases_over_http(body_server: Running, case: str) -> None:
    """The same files sent to /v1/inspect: a 400 invalid_image on a connection that stays."""
    data = _bmp_claiming(1, 2_000_000) if case == "bmp-tall" else _png_with_huge_idat()
    ctype = "image/bmp" if case == "bmp-tall" else "image/png"
    with body_server.client("line", event_hooks={"response": [_client_port]}) as c:
        r = c.post("/v1/inspect", content=data, headers={"Content-Type": ctype})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == "invalid_image"
        good = c.post("/v1/inspect", content=BOARD, headers={"Content-Type": "image/jpeg"})
        assert good.status_code == 200
        assert good.extensions["client_port"] == r.extensions["client_port"]


# -- H.264 / H.265 parameter sets (cameras/h26x.py), read from every camera packet ------
# real ones, as a camera's RTSP SDP gives them (openh264 and x265, 640x480, session 40)
H26X_SEEDS = {
    "h264": bytes.fromhex("000000016742c01e8c8d40501ed00f08846a0000000168ce3c80"),
    "hevc": bytes.fromhex(
        "0000000140010c01ffff01600000030090000003000003005a9280900000000142010101600000030090"
        "000003000003005aa0050201e16592a4932bffc00040005a830303020000030002000003003c10000000"
        "014401c172b46240"),
}


def _escaped(bits: str) -> bytes:
    """An RBSP of ``bits`` (stop bit added), with emulation prevention as a stream has it."""
    bits += "1" + "0" * (-(len(bits) + 1) % 8)
    out, zeros = bytearray(), 0
    for byte in int(bits, 2).to_bytes(len(bits) // 8, "big"):
        if zeros >= 2 and byte <= 3:
            out.append(3)
            zeros = 0
        out.append(byte)
        zeros = zeros + 1 if byte == 0 else 0
    return bytes(out)


def _ue(value: int) -> str:
    code = bin(value + 1)[2:]
    return "0" * (len(code) - 1) + code


@st.composite
def h26x_packets(draw: st.DrawFn) -> tuple[str, bytes]:
    """A real parameter set mutated (bit flips, bytes set, cut, junk, start codes put in),
    or arbitrary bytes cut by start codes."""
    codec = draw(st.sampled_from(sorted(H26X_SEEDS)))
    if draw(st.booleans()):
        parts = draw(st.lists(st.binary(max_size=64), max_size=8))
        return codec, b"\x00\x00\x01".join(parts)
    data = bytearray(H26X_SEEDS[codec])
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["flip", "set", "cut", "junk", "start"]))
        i = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and data:
            data[i] = draw(st.sampled_from([0, 1, 3, 0x7F, 0x80, 0xFF]))
        elif kind == "cut":
            del data[i:]
        elif kind == "junk":
            data[i:i] = draw(st.binary(max_size=32))
        else:
            data[i:i] = b"\x00\x00\x01"
    return codec, bytes(data)


def test_every_h26x_seed_reads() -> None:
    """The seeds read (else the mutations below test nothing)."""
    for codec, data in H26X_SEEDS.items():
        assert sps_size(codec, data) == (640, 480), codec


@settings(max_examples=DECODE_EXAMPLES, **COMMON)  # type: ignore[arg-type]
@given(h26x_packets())
def test_h26x_packets_give_a_size_nothing_or_an_image_error(packet: tuple[str, bytes]) -> None:
    # any packet a stream (or an attacker on its link) sends: never another exception,
    # which crossed OpenCV's C++ read; the units split at every start code, none lost
    codec, data = packet
    note(f"{codec} {data.hex()}")
    assert len(_units(data)) == data.count(b"\x00\x00\x01")
    try:
        size = sps_size(codec, data)
    except ImageError:
        return
    assert size is None or (isinstance(size, tuple) and all(isinstance(v, int) for v in size))


def test_a_huge_parameter_set_is_read_no_further_than_a_real_one() -> None:
    # a 5 KB SPS (a POC cycle of 40,000 entries) that reads whole as 640x480: an SPS of
    # 1 MB so made cost 4.6 s of CPU in every packet that carried it; the parser reads
    # MAX_SPS_BYTES of it, where a real one ends well before
    head = "01000010" + "00000000" + "00011110" + _ue(0) + _ue(0) + _ue(1) + "0" + "1" + "1"
    tail = _ue(1) + "0" + _ue(39) + _ue(29) + "1" + "1" + "0"
    sps = b"\x00\x00\x01\x67" + _escaped(head + _ue(40_000) + "1" * 40_000 + tail)
    assert len(sps) > MAX_SPS_BYTES
    small = b"\x00\x00\x01\x67" + _escaped(head + _ue(40) + "1" * 40 + tail)
    assert sps_size("h264", small) == (640, 480)  # the same syntax, short: it reads
    with pytest.raises(ImageError, match="cut short"):
        sps_size("h264", sps)


def test_a_packet_of_many_parameter_sets_reads_its_last_only() -> None:
    # each SPS in a packet was read: a packet of many hostile ones cost as many reads; the
    # last one is the one the frames after it follow
    broken = H26X_SEEDS["h264"][:9]
    assert sps_size("h264", broken * 1000 + H26X_SEEDS["h264"]) == (640, 480)


def test_a_packet_without_a_start_code_holds_no_parameter_set() -> None:
    # an empty packet or a length-prefixed one (avcC, as MP4 and FLV carry them) raised
    # ValueError from the unit split: not an ImageError, from inside OpenCV's read
    sps = H26X_SEEDS["h264"][4:18]  # its SPS alone
    for data in (b"", len(sps).to_bytes(4, "big") + sps):
        assert _units(data) == []
        assert sps_size("h264", data) is None and sps_size("hevc", data) is None
