"""Reference inputs: the pair image, the named reference library, and which requests
may or must carry a reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lineside_inspect._cv import cv2
from lineside_inspect.errors import ImageError, NotFoundError, ReferenceImageError
from lineside_inspect.references import (
    InvalidReferenceName,
    Reference,
    ReferenceLibrary,
    resolve_reference,
)
from lineside_inspect.runtime.reference import pair_image, with_difference


def _png(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", image)
    assert ok
    return bytes(buf.tobytes())


def test_pair_image_channels() -> None:
    frame = np.zeros((4, 5, 3), np.uint8)
    frame[1, 2] = (0, 0, 255)  # pure red in BGR: grey 76 by ITU-R 601 weights
    reference = np.full((4, 5, 3), 10, np.uint8)
    pair = pair_image(frame, reference)
    assert pair.shape == (4, 5, 3) and pair.dtype == np.uint8
    assert pair[1, 2, 0] == 76 and pair[0, 0, 0] == 0
    assert (pair[:, :, 1] == 10).all()
    assert pair[1, 2, 2] == 66 and pair[0, 0, 2] == 10  # |frame - reference|, no wrap-around
    grey = pair_image(frame[:, :, 2], reference[:, :, 0])  # single-channel inputs work too
    assert (grey[:, :, 2] == np.abs(frame[:, :, 2].astype(int) - 10)).all()


def test_with_difference_recomputes_after_changes() -> None:
    pair = np.zeros((2, 2, 3), np.uint8)
    pair[0, 0, 0], pair[0, 0, 1], pair[0, 0, 2] = 200, 50, 7
    assert with_difference(pair)[0, 0, 2] == 150


def test_pair_image_refuses_other_sizes() -> None:
    with pytest.raises(ReferenceImageError, match="reference image is 6x4 but the frame is 5x4"):
        pair_image(np.zeros((4, 5, 3), np.uint8), np.zeros((4, 6, 3), np.uint8))


def test_library_put_get_replace_delete(tmp_path: Path) -> None:
    lib = ReferenceLibrary(tmp_path / "refs")
    assert lib.names() == []
    a = np.full((8, 8, 3), 200, np.uint8)
    ref = lib.put("board-7.top", _png(a))
    assert (tmp_path / "refs" / "board-7.top.png").is_file()
    got = lib.get("board-7.top")
    assert got.sha256 == ref.sha256 and (got.image == a).all() and got.name == "board-7.top"
    _ok, jpg = cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))
    lib.put("board-7.top", bytes(jpg.tobytes()))  # replaced, in another format
    assert sorted(p.name for p in (tmp_path / "refs").iterdir()) == ["board-7.top.jpg"]
    assert lib.get("board-7.top").image.max() < 10
    assert lib.names() == ["board-7.top"]
    lib.delete("board-7.top")
    with pytest.raises(NotFoundError, match=r"no reference image named .board-7\.top."):
        lib.get("board-7.top")


def test_library_rejects_bad_names_and_images(tmp_path: Path) -> None:
    lib = ReferenceLibrary(tmp_path)
    for bad in ("../etc/passwd", ".hidden", "a/b", "x.png", "", "a" * 129):
        with pytest.raises(InvalidReferenceName):
            lib.put(bad, _png(np.zeros((2, 2, 3), np.uint8)))
    with pytest.raises(ImageError):
        lib.put("broken", b"not an image")
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_library_sees_files_changed_on_disk(tmp_path: Path) -> None:
    lib = ReferenceLibrary(tmp_path)
    (tmp_path / "cam1.png").write_bytes(_png(np.zeros((4, 4, 3), np.uint8)))
    assert lib.get("cam1").image.max() == 0
    path = tmp_path / "cam1.png"
    path.write_bytes(_png(np.full((4, 4, 3), 255, np.uint8)))
    stat = path.stat()
    import os
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert lib.get("cam1").image.min() == 255


def test_resolve_reference_rules(tmp_path: Path) -> None:
    lib = ReferenceLibrary(tmp_path)
    data = _png(np.zeros((4, 4, 3), np.uint8))
    lib.put("golden", data)
    assert resolve_reference(False, "m", lib) is None
    with pytest.raises(ReferenceImageError, match="takes no reference"):
        resolve_reference(False, "m", lib, name="golden")
    with pytest.raises(ReferenceImageError, match=r"known: golden"):
        resolve_reference(True, "m", lib)
    with pytest.raises(ReferenceImageError, match="not both"):
        resolve_reference(True, "m", lib, data=data, name="golden")
    sent = resolve_reference(True, "m", lib, data=data)
    assert isinstance(sent, Reference) and sent.name is None
    named = resolve_reference(True, "m", lib, name="golden")
    assert named is not None and named.name == "golden" and named.sha256 == sent.sha256


def test_paths_only_from_trusted_config(tmp_path: Path) -> None:
    lib = ReferenceLibrary(tmp_path / "lib")
    image = tmp_path / "station1.png"
    image.write_bytes(_png(np.full((4, 4, 3), 9, np.uint8)))
    ref = resolve_reference(True, "m", lib, name=str(image), trusted=True)
    assert ref is not None and ref.name == "station1" and ref.image.max() == 9
    with pytest.raises(InvalidReferenceName):  # a request cannot make the server read files
        resolve_reference(True, "m", lib, name=str(image))
    with pytest.raises(NotFoundError, match="neither a registered name nor an image file"):
        resolve_reference(True, "m", lib, name=str(tmp_path / "nope.png"), trusted=True)
