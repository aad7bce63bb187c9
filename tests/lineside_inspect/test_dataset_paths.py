"""A dataset from elsewhere must not read or write outside its own tree: a ``file_name``
that is absolute or climbs out of ``images/`` is refused when the dataset is read,
written or exported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lineside_inspect.dataset import read_dataset, write_dataset
from lineside_inspect.dataset.exporters import export_coco
from lineside_inspect.errors import DatasetError


@pytest.mark.parametrize("evil", ["../../escaped.jpg", "/tmp/escaped.jpg"])
def test_file_names_that_leave_the_images_folder_are_refused(sample: Path, tmp_path: Path,
                                                             evil: str) -> None:
    doc = json.loads((sample / "annotations.json").read_text())
    first = doc["images"][0]
    real = sample / "images" / first["file_name"]
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "escaped.jpg").write_bytes(real.read_bytes())
    first["file_name"] = evil if evil.startswith("/") else \
        "../" * (len(Path(first["file_name"]).parts) + 1) + str(outside.relative_to(tmp_path) / "x.jpg")
    (sample / "annotations.json").write_text(json.dumps(doc))
    ds = read_dataset(sample)  # reading the annotations is harmless; using the name is not
    with pytest.raises(DatasetError, match="leaves the dataset's images/ folder"):
        write_dataset(ds, tmp_path / "copy")
    with pytest.raises(DatasetError, match="leaves the dataset's images/ folder"):
        export_coco(ds, tmp_path / "coco")
    assert not (tmp_path / "copy").exists()
