"""A new user's walk of the whole loop (serve, review, data pull, merge, train, evaluate,
export, gate, promote), session 36: what it found in the pull and the lifecycle."""

from __future__ import annotations

from pathlib import Path

import pytest

from lineside_inspect.dataset import read_dataset
from lineside_inspect.runtime.detector import Detector
from lineside_inspect.runtime.types import Detections
from lineside_inspect.store import Store
from lineside_inspect.store.pull import pull_from_store

from .conftest import MODEL
from .test_store import _inspection


@pytest.fixture(scope="module")
def detector() -> Detector:
    return Detector(MODEL, device="cpu", threads=1)


def test_an_unreviewed_fail_without_a_box_is_no_good_image(tmp_path: Path,
                                                           detector: Detector) -> None:
    """``data pull --no-reviewed`` took the model's word for truth: a fail with no box
    (``reference_mismatch``: another product, a wrong golden; an anomaly without a region)
    became a good image of the set, a "good" pair of a frame and a golden it does not
    match. The reviewed pull already left such a fail out (session 34)."""
    with Store(tmp_path / "store", pass_rate=1.0) as store:
        boxless = _inspection(detector, "fail")
        boxless.defects = Detections.empty(boxless.defects.class_names)
        boxed, good = _inspection(detector, "fail"), _inspection(detector, "pass")
        for m in (boxless, boxed, good):
            assert store.save(m)
        pull_from_store(store, tmp_path / "pulled", reviewed=False)
    images = {Path(r.file_name).stem: r for r in read_dataset(tmp_path / "pulled").images}
    assert boxless.id not in images
    assert images[boxed.id].boxes and images[good.id].is_good
