"""Sets sorted by verdict (MVTec AD, OK/NG folders): ``-f mvtec`` boxes each defect from
its mask, and ``-f good`` refuses them, where it imported an MVTec AD category as 25
good parts and a good-only model was trained and calibrated on its defects (review,
session 34)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from lineside_inspect.cli import app
from lineside_inspect.dataset import import_dataset, read_dataset
from lineside_inspect.errors import DatasetError


def _texture(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.tile(np.uint8([60, 180]), (95, 125))[:, :250]  # a woven 250x95 look
    return np.clip(base.astype(int) + rng.integers(-9, 9, base.shape), 0, 255).astype(np.uint8)


def _mvtec(root: Path) -> Path:
    """An MVTec AD category in its own case: Train/good, test/good, test/scratch with
    masks (one of two regions), test/hole without its mask."""
    cat = root / "carpet"
    for i in range(4):
        (cat / "Train" / "good").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(cat / "Train" / "good" / f"{i:03d}.png"), _texture(i))
    (cat / "test" / "good").mkdir(parents=True)
    cv2.imwrite(str(cat / "test" / "good" / "000.png"), _texture(10))
    for kind, n in (("scratch", 2), ("hole", 1)):
        (cat / "test" / kind).mkdir(parents=True)
        for i in range(n):
            cv2.imwrite(str(cat / "test" / kind / f"{i:03d}.png"), _texture(20 + i))
    masks = cat / "ground_truth" / "scratch"
    masks.mkdir(parents=True)
    one = np.zeros((95, 250), np.uint8)
    one[10:20, 30:80] = 255
    two = one.copy()
    two[60:70, 200:240] = 255
    cv2.imwrite(str(masks / "000_mask.png"), one)
    cv2.imwrite(str(masks / "001_mask.png"), two)
    (cat / "license.txt").write_text("CC BY-NC-SA 4.0")
    return cat


def test_an_mvtec_category_imports_with_its_defects_boxed_from_their_masks(tmp_path: Path) -> None:
    cat = _mvtec(tmp_path / "src")
    with pytest.raises(DatasetError) as info:
        import_dataset("mvtec", cat, tmp_path / "out")
    assert "no mask ground_truth/hole/000_mask.png: its defect cannot be boxed" in str(
        info.value.problems)
    ds, skipped = import_dataset("mvtec", cat, tmp_path / "out", skip_invalid=True)
    assert [p.subject for p in skipped] == ["test/hole/000.png"]
    ds = read_dataset(tmp_path / "out")
    by_name = {r.file_name: r for r in ds.images}
    assert sorted(by_name) == [*(f"Train/good/{i:03d}.png" for i in range(4)),
                               "test/good/000.png", "test/scratch/000.png", "test/scratch/001.png"]
    assert {r.split for n, r in by_name.items() if n.startswith("Train")} == {"train"}
    assert by_name["test/good/000.png"].split == "test" and by_name["test/good/000.png"].is_good
    assert [b.xyxy() for b in by_name["test/scratch/000.png"].boxes] == [(30, 10, 80, 20)]
    assert sorted(b.xyxy() for b in by_name["test/scratch/001.png"].boxes) == \
        [(30, 10, 80, 20), (200, 60, 240, 70)]
    assert ds.categories == ["scratch"]
    # a folder of categories is refused, naming them; the root of one is found
    _mvtec(tmp_path / "all" / "x")
    (tmp_path / "all" / "x" / "carpet").rename(tmp_path / "all" / "tile")
    _mvtec(tmp_path / "all")
    (tmp_path / "all" / "x").rmdir()
    with pytest.raises(DatasetError, match=r"holds 2 MVTec AD categories \(carpet, tile\)"):
        import_dataset("mvtec", tmp_path / "all", tmp_path / "out2")
    with pytest.raises(DatasetError, match=r"no train/ or test/ folder"):
        import_dataset("mvtec", cat / "test" / "good", tmp_path / "out3")


@pytest.mark.parametrize(("folders", "words"), [
    (None, "holds 2 defect mask(s) (e.g. ground_truth/scratch/000_mask.png)"),
    (["OK", "NG"], "holds 1 image(s) in folders named as defective (e.g. NG/1.png)"),
    (["good", "crack"], "and 1 are in no good folder (e.g. crack/1.png)"),
])
def test_good_refuses_a_set_sorted_by_verdict(tmp_path: Path, folders: list[str] | None,
                                               words: str) -> None:
    if folders is None:
        src = _mvtec(tmp_path / "src")
    else:
        src = tmp_path / "src"
        for i, folder in enumerate(folders):
            (src / folder).mkdir(parents=True)
            cv2.imwrite(str(src / folder / f"{i}.png"), _texture(i))
    r = CliRunner().invoke(app, ["data", "import", "-f", "good", str(src), str(tmp_path / "o")])
    assert r.exit_code != 0 and words in " ".join(r.output.split()), r.output
    assert "-f mvtec" in " ".join(r.output.split()) and not (tmp_path / "o").exists()


def test_good_images_in_train_and_test_sub_sets_keep_their_splits(tmp_path: Path) -> None:
    """A good-only run trains and calibrates on no split or train: test/ was merged in."""
    src = tmp_path / "src"
    for split in ("train", "valid", "test"):
        (src / split / "batch1").mkdir(parents=True)
        cv2.imwrite(str(src / split / "batch1" / "a.png"), _texture(len(split)))
    import_dataset("good", src, tmp_path / "out")
    got = {r.file_name: (r.split, r.group) for r in read_dataset(tmp_path / "out").images}
    assert got == {"train/batch1/a.png": ("train", "train/batch1"),
                   "valid/batch1/a.png": ("val", "valid/batch1"),
                   "test/batch1/a.png": ("test", "test/batch1")}


def test_a_good_image_behind_a_broken_link_is_named(tmp_path: Path) -> None:
    """A broken symlink `*.png` in a good folder was left out unsaid, where an image in
    a format Lineside does not read is named (review, session 34)."""
    src = tmp_path / "src"
    src.mkdir()
    cv2.imwrite(str(src / "a.png"), _texture(0))
    (src / "b.png").symlink_to(tmp_path / "gone.png")
    with pytest.raises(DatasetError) as info:
        import_dataset("good", src, tmp_path / "out")
    assert [(p.subject, p.message) for p in info.value.problems] == \
        [("b.png", "a link to nothing: its image cannot be read")]
    ds, skipped = import_dataset("good", src, tmp_path / "out", skip_invalid=True)
    assert [r.file_name for r in ds.images] == ["a.png"] and len(skipped) == 1


def test_mvtec_loco_masks_in_a_folder_per_image(tmp_path: Path) -> None:
    """MVTec LOCO keeps each image's masks in ground_truth/<defect>/<image>/000.png: keyed
    by file name alone, every image took the last image's mask (review, session 34)."""
    cat = tmp_path / "breakfast_box"
    (cat / "train" / "good").mkdir(parents=True)
    cv2.imwrite(str(cat / "train" / "good" / "000.png"), _texture(0))
    (cat / "test" / "logical_anomalies").mkdir(parents=True)
    for i, (box, extra) in enumerate((((2, 2, 10, 10), None), ((40, 40, 60, 60), (70, 5, 80, 15)))):
        cv2.imwrite(str(cat / "test" / "logical_anomalies" / f"{i:03d}.png"), _texture(i + 1))
        folder = cat / "ground_truth" / "logical_anomalies" / f"{i:03d}"
        folder.mkdir(parents=True)
        for j, (x1, y1, x2, y2) in enumerate(b for b in (box, extra) if b):
            m = np.zeros((95, 250), np.uint8)
            m[y1:y2, x1:x2] = 255
            cv2.imwrite(str(folder / f"{j:03d}.png"), m)
    import_dataset("mvtec", cat, tmp_path / "out")
    got = {r.file_name: sorted(b.xyxy() for b in r.boxes) for r in read_dataset(tmp_path / "out").images}
    assert got["test/logical_anomalies/000.png"] == [(2, 2, 10, 10)]
    assert got["test/logical_anomalies/001.png"] == [(40, 40, 60, 60), (70, 5, 80, 15)]


def test_good_parts_named_mask_are_good_parts(tmp_path: Path) -> None:
    """A PCB's "solder mask" captures, a face-mask line's masks/ folder: refused as defect
    masks, with no way round (review, session 34). Masks are those of an MVTec-like set."""
    src = tmp_path / "src"
    for rel in ("batch1/pcb7_solder_mask.png", "masks/0001.png"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(src / rel), _texture(1))
    ds, _ = import_dataset("good", src, tmp_path / "out")
    assert sorted(r.file_name for r in ds.images) == ["batch1/pcb7_solder_mask.png", "masks/0001.png"]


def test_an_mvtec_ad_2_category(tmp_path: Path) -> None:
    """MVTec AD 2 keeps its labelled test set in test_public/ (masks in its ground_truth/)
    and unlabelled ones in test_private*/: every image was a problem (session 34)."""
    cat = tmp_path / "can"
    for rel, seed in (("train/good/000.png", 0), ("validation/good/000.png", 1),
                      ("test_public/good/000.png", 2), ("test_public/bad/000.png", 3),
                      ("test_private/000.png", 4), ("test_private_mixed/000.png", 5)):
        (cat / rel).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(cat / rel), _texture(seed))
    mask = np.zeros((95, 250), np.uint8)
    mask[30:40, 100:140] = 255
    (cat / "test_public" / "ground_truth" / "bad").mkdir(parents=True)
    cv2.imwrite(str(cat / "test_public" / "ground_truth" / "bad" / "000_mask.png"), mask)
    ds, problems = import_dataset("mvtec", cat, tmp_path / "out")
    assert problems == []
    got = {r.file_name: (r.split, [b.xyxy() for b in r.boxes]) for r in read_dataset(tmp_path / "out").images}
    assert got == {"train/good/000.png": ("train", []), "validation/good/000.png": ("val", []),
                   "test_public/good/000.png": ("test", []),
                   "test_public/bad/000.png": ("test", [(100, 30, 140, 40)])}
    assert "2 unlabelled image(s) of test_private*/ left out" in ds.info["layout"]
    with pytest.raises(DatasetError, match="not all its images are good parts"):
        import_dataset("good", cat, tmp_path / "out2")
