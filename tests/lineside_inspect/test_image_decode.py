"""Decoding edge cases: truncated JPEGs and PNGs are refused, EXIF orientation is ignored,
valid variants (progressive, trailing padding, CMYK) still decode."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from lineside_inspect.errors import ImageError
from lineside_inspect.imageio import decode_image
from lineside_inspect.opencv import cv2

from .conftest import KEYS, Running

SAMPLE = Path(__file__).resolve().parents[2] / "datasets" / "deeppcb-sample"


def _scene(width: int = 640, height: int = 640) -> np.ndarray:
    """A textured colour image, so the entropy-coded data is long enough to cut."""
    board = cv2.imread(str(next((SAMPLE / "images").rglob("*_test.jpg"))), cv2.IMREAD_COLOR)
    board = cv2.resize(board, (width, height))
    noise = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
    return cv2.addWeighted(board, 0.6, cv2.GaussianBlur(noise, (7, 7), 2), 0.4, 0)


def _jpeg(image: np.ndarray, *params: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90, *params])
    assert ok
    return buf.tobytes()


def _png(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", image)
    assert ok
    return buf.tobytes()


def _with_orientation(jpeg: bytes, orientation: int) -> bytes:
    """The JPEG with an EXIF APP1 segment (big-endian TIFF, one IFD0 entry: 0x0112)."""
    entry = struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0)  # SHORT, count 1, padded
    tiff = b"MM\x00\x2a" + struct.pack(">I", 8) + struct.pack(">H", 1) + entry + struct.pack(">I", 0)
    payload = b"Exif\x00\x00" + tiff
    app1 = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    return jpeg[:2] + app1 + jpeg[2:]


@pytest.mark.parametrize("fraction", [0.5, 0.9])
def test_jpeg_cut_and_closed_with_eoi_is_refused(fraction: float) -> None:
    data = _jpeg(_scene())
    cut = data[: int(len(data) * fraction)] + b"\xff\xd9"
    # OpenCV alone only warns on stderr and hands back a partly grey image
    assert cv2.imdecode(np.frombuffer(cut, np.uint8), cv2.IMREAD_COLOR).shape == (640, 640, 3)
    with pytest.raises(ImageError, match="truncated JPEG") as info:
        decode_image(cut)
    assert info.value.code == "invalid_image" and info.value.status == 400


def test_progressive_jpeg_cut_and_closed_is_refused() -> None:
    data = _jpeg(_scene(), cv2.IMWRITE_JPEG_PROGRESSIVE, 1)
    with pytest.raises(ImageError, match="truncated JPEG"):
        decode_image(data[: len(data) // 2] + b"\xff\xd9")


@pytest.mark.parametrize("cut", ["half", "no IEND", "half + IEND", "bad CRC"])
def test_truncated_or_damaged_png_is_refused(cut: str) -> None:
    data = _png(_scene())
    iend = data[-12:]
    assert iend[4:8] == b"IEND"
    damaged = {
        "half": data[: len(data) // 2],
        "no IEND": data[:-12],
        "half + IEND": data[: len(data) // 2] + iend,
        "bad CRC": data[:-20] + bytes([data[-20] ^ 0xFF]) + data[-19:],
    }[cut]
    with pytest.raises(ImageError, match="corrupt or truncated PNG") as info:
        decode_image(damaged)
    assert info.value.code == "invalid_image"


def test_valid_variants_still_decode() -> None:
    scene = _scene()
    reference = decode_image(_jpeg(scene))
    progressive = decode_image(_jpeg(scene, cv2.IMWRITE_JPEG_PROGRESSIVE, 1))
    padded = decode_image(_jpeg(scene) + b"\x00" * 64)  # some cameras pad to a block size
    assert progressive.shape == padded.shape == reference.shape == (640, 640, 3)
    assert np.array_equal(padded, reference)
    assert np.abs(progressive.astype(int) - reference).mean() < 2  # same picture
    # the same pixels OpenCV decodes, BGR order
    assert np.array_equal(reference, cv2.imdecode(np.frombuffer(_jpeg(scene), np.uint8),
                                                  cv2.IMREAD_COLOR))
    grey = decode_image(_jpeg(cv2.cvtColor(scene, cv2.COLOR_BGR2GRAY)))
    assert grey.shape == (640, 640, 3)
    assert np.array_equal(decode_image(_png(scene)), scene)


def test_exif_orientation_is_ignored() -> None:
    scene = _scene(640, 400)
    plain = _jpeg(scene)
    tagged = _with_orientation(plain, 6)  # "rotate 90° clockwise to display"
    # OpenCV applies the tag: the frame would come out 400 wide and 640 high
    rotated = cv2.imdecode(np.frombuffer(tagged, np.uint8), cv2.IMREAD_COLOR)
    assert rotated.shape[:2] == (640, 400)
    image = decode_image(tagged)
    assert image.shape[:2] == (400, 640)  # the sensor's frame, as the header says
    assert np.array_equal(image, decode_image(plain))


def test_png_exif_orientation_is_ignored() -> None:
    """PNG carries EXIF in an eXIf chunk; OpenCV's PNG path ignores it too."""
    import zlib

    scene = _scene(640, 400)
    png = _png(scene)
    entry = struct.pack(">HHIHH", 0x0112, 3, 1, 6, 0)
    exif = b"MM\x00\x2a" + struct.pack(">I", 8) + struct.pack(">H", 1) + entry + struct.pack(">I", 0)
    chunk = struct.pack(">I", len(exif)) + b"eXIf" + exif + struct.pack(">I", zlib.crc32(b"eXIf" + exif))
    tagged = png[:33] + chunk + png[33:]  # after IHDR
    assert np.array_equal(decode_image(tagged), scene)


def test_grey_jpeg_decodes_as_libjpeg_converts_it() -> None:
    """A mono camera's JPEG takes the grey path (decoded grey, repeated to BGR): the
    pixels must be exactly those of libjpeg's own grey-to-BGR decode."""
    import simplejpeg

    grey = cv2.cvtColor(_scene(), cv2.COLOR_BGR2GRAY)
    data = _jpeg(grey)
    assert simplejpeg.decode_jpeg_header(data)[2] == "Gray"
    image = decode_image(data)
    assert image.shape == (640, 640, 3)
    assert np.array_equal(image, simplejpeg.decode_jpeg(data, colorspace="BGR"))
    with pytest.raises(ImageError, match="truncated"):
        decode_image(data[: len(data) // 2] + b"\xff\xd9")


def test_keep_grey_keeps_a_grey_jpeg_grey_and_the_model_input_the_same() -> None:
    """The inspection path keeps a grey JPEG ``(H, W)``: the same pixels as one plane
    of its BGR decode, and the same model input batch; a colour JPEG stays BGR. The
    annotated answer drawn on the grey frame is BGR, boxes in colour."""
    from lineside_inspect.draw import annotate
    from lineside_inspect.runtime.detector import Detector
    from lineside_inspect.runtime.types import Detections

    grey_jpeg = _jpeg(cv2.cvtColor(_scene(), cv2.COLOR_BGR2GRAY))
    bgr = decode_image(grey_jpeg)
    grey = decode_image(grey_jpeg, keep_grey=True)
    assert grey.shape == (640, 640) and grey.flags["C_CONTIGUOUS"]
    assert np.array_equal(grey, bgr[:, :, 0]) and np.array_equal(grey, bgr[:, :, 2])
    assert decode_image(_jpeg(_scene()), keep_grey=True).shape == (640, 640, 3)
    det = Detector(Path(__file__).parents[2] / "models" / "deeppcb" / "1", device="cpu",
                   warmup=False)
    for image in (grey, cv2.resize(grey, (500, 300))):  # the input size, and letterboxed
        assert np.array_equal(det.pre_process([image])[0],
                              det.pre_process([cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)])[0])
    boxes = Detections(np.array([[10, 10, 90, 90]], np.float32), np.array([0.9], np.float32),
                       np.array([0]), ["open"])
    drawn = annotate(grey, boxes, "fail")
    assert drawn.shape == (640, 640, 3)
    assert np.array_equal(drawn, annotate(bgr, boxes, "fail"))


def test_a_jpeg_of_many_scans_is_refused_before_decoding(srv: Running) -> None:
    """Each scan of a progressive JPEG is decoded again: a 228 KB 8000x8000 one of 883
    scans held an inference slot for 14.7 s of CPU (attacker review). Over
    MAX_JPEG_SCANS it is refused from its markers; libjpeg's own progressive JPEGs (10
    scans) and ones with EXIF still decode."""
    from lineside_inspect.imageio import MAX_JPEG_SCANS, _jpeg_scans

    from .jpeg_bomb import progressive_bomb

    bomb, scans = progressive_bomb(256, 256)
    assert scans == 883 and _jpeg_scans(bomb) == scans
    with pytest.raises(ImageError, match=f"883 scans, over the limit of {MAX_JPEG_SCANS}"):
        decode_image(bomb)
    progressive = _jpeg(_scene(), cv2.IMWRITE_JPEG_PROGRESSIVE, 1)
    assert _jpeg_scans(progressive) == 10 and decode_image(progressive).shape == (640, 640, 3)
    assert _jpeg_scans(_with_orientation(progressive, 6)) == 10
    with srv.client() as c:
        r = c.post("/v1/inspect", content=bomb, headers={
            "content-type": "image/jpeg", "authorization": f"Bearer {KEYS['line']}"})
    assert r.status_code == 400 and "883 scans" in r.json()["error"]["message"], r.text


@pytest.mark.parametrize("before_scan", [b"\xff\xd0", b"\xff\x01", b"\x00", b"\xff\x00",
                                         b"\xff\xd7\xff\xff", b"junk\xff\x00"])
def test_markers_before_the_first_scan_do_not_hide_its_scans(before_scan: bytes) -> None:
    """libjpeg steps over RST/TEM markers and skips stray bytes before a marker (with a
    warning, decoding on); the scan count stopped there, counted 0 and let a progressive
    JPEG of 883 scans through, which held both inference slots for 28 s (attacker
    review)."""
    from lineside_inspect.imageio import MAX_JPEG_SCANS, _jpeg_scans

    from .jpeg_bomb import progressive_bomb

    bomb, scans = progressive_bomb(64, 64)
    first = bomb.index(b"\xff\xda")
    hidden = bomb[:first] + before_scan + bomb[first:]
    # libjpeg reads it (OpenCV's, warning at most; simplejpeg's header reader may refuse)
    assert cv2.imdecode(np.frombuffer(hidden, np.uint8), cv2.IMREAD_GRAYSCALE).shape == (64, 64)
    assert _jpeg_scans(hidden) == scans
    with pytest.raises(ImageError, match=f"883 scans, over the limit of {MAX_JPEG_SCANS}"):
        decode_image(hidden)
    with pytest.raises(ImageError, match="no scan"):  # a walk that finds none refuses
        decode_image(bomb[:first] + b"\xff\xd9")


def test_jpegs_simplejpeg_cannot_read_the_header_of_decode_and_a_marker_flood_is_refused() -> None:
    """A JFIF revision 2.01 (a harmless warning) decodes strictly, so a cut one is still
    refused (sent to OpenCV, it decoded half grey; third review); sampling layouts the
    simple API cannot describe (3x1; 1x4 raised a KeyError, a 500) decode through OpenCV;
    other header warnings (stray bytes) are refused as corrupt. 30 MB of RST markers before
    the frame header took 2 s of pure Python on the event loop (second review) and are
    refused at once; a run of fill bytes is one step."""
    from lineside_inspect.imageio import MAX_JPEG_HEADER_STEPS

    good = _jpeg(_scene())
    first = good.index(b"\xff\xda")
    with pytest.raises(ImageError, match=r"corrupt JPEG: .*extraneous bytes"):
        decode_image(good[:first] + b"\x00" + good[first:])
    jfif = bytearray(good)
    at = jfif.index(b"JFIF\x00")
    jfif[at + 5:at + 7] = b"\x02\x01"  # version 2.01: libjpeg warns
    assert decode_image(bytes(jfif)).shape == (640, 640, 3)
    cut = bytes(jfif[: (first + len(jfif)) // 2]) + b"\xff\xd9"  # cut in its scan, closed
    with pytest.raises(ImageError, match="corrupt or truncated JPEG"):
        decode_image(cut)
    exif = b"Exif\x00\x00" + b"\0" * 200  # its APP0 after an EXIF block: found all the same
    later = bytes(jfif[:2]) + b"\xff\xe1" + (len(exif) + 2).to_bytes(2, "big") + exif + bytes(jfif[2:])
    assert decode_image(later).shape == (640, 640, 3)
    odd = bytearray(good)
    sof = odd.index(b"\xff\xc0")
    for sampling in (0x31, 0x14):  # Y sampled 3x1, 1x4
        odd[sof + 11] = sampling
        assert decode_image(bytes(odd)).shape == (640, 640, 3)
    flood = good[:2] + b"\xff\xd0" * (MAX_JPEG_HEADER_STEPS + 1) + good[2:]
    with pytest.raises(ImageError, match=f"over {MAX_JPEG_HEADER_STEPS} markers"):
        decode_image(flood)
    filled = good[:first] + b"\xff" * 5000 + good[first:]
    assert decode_image(filled).shape == (640, 640, 3)


def test_an_image_over_jpegs_side_limit_gets_its_drawn_answer(srv: Running) -> None:
    """A valid 100000x1 strip was judged and stored, then answered 400 "could not encode
    image as JPEG" for ?annotated=1 (a retry stored it twice; attacker review): the
    drawing is scaled to JPEG's 65500 px limit."""
    from lineside_inspect.imageio import MAX_JPEG_SIDE, encode_jpeg

    strip = np.full((1, 100_000, 3), 128, np.uint8)
    drawn = decode_image(encode_jpeg(strip))
    assert drawn.shape == (1, MAX_JPEG_SIDE, 3)
    ok, png = cv2.imencode(".png", strip)
    assert ok
    with srv.client() as c:
        r = c.post("/v1/inspect", params={"annotated": 1}, content=png.tobytes(), headers={
            "content-type": "image/png", "authorization": f"Bearer {KEYS['line']}"})
    assert r.status_code == 200, r.text
    assert decode_image(r.content).shape == (1, MAX_JPEG_SIDE, 3)


def test_a_jpeg_with_a_trailer_after_its_end_decodes_and_a_cut_one_does_not() -> None:
    """A phone's JPEG carries data after its end-of-image marker (a motion photo's video):
    it was refused as truncated (second review). A JPEG cut short is still refused, also
    when an EXIF thumbnail before its image data has an end marker of its own."""
    good = _jpeg(_scene())
    trailer = good + b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 64
    assert decode_image(trailer).shape == (640, 640, 3)
    thumb = _jpeg(_scene()[:80, :80])
    app1 = b"Exif\x00\x00" + thumb  # a thumbnail's SOS and EOI inside the metadata
    with_thumb = good[:2] + b"\xff\xe1" + len(app1 + b"xx").to_bytes(2, "big") + app1 + good[2:]
    assert decode_image(with_thumb).shape == (640, 640, 3)
    with pytest.raises(ImageError, match="truncated JPEG"):
        decode_image(with_thumb[: len(with_thumb) // 2])
