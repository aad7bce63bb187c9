"""A card's recipe may tile frames larger than the scale its model learned (``lineside
export --tile``), and ``lineside evaluate`` of such a package judges frames tiled, as the
line does: its escapes, false rejects and mAP are the line's."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from lineside_inspect.dataset import read_dataset
from lineside_inspect.errors import ConfigError, PackageError
from lineside_inspect.imageio import read_image
from lineside_inspect.inspector import inspect
from lineside_inspect.opencv import cv2
from lineside_inspect.package import CARD_FORMAT, TILING_FORMAT, load_package, read_card
from lineside_inspect.recipes import Recipe, card_recipe
from lineside_inspect.runtime.detector import Detector
from lineside_inspect.runtime.tiles import Tiling
from lineside_training.commands import evaluate
from lineside_training.evaluate import evaluate_package
from lineside_training.export import export
from lineside_training.metrics import coco_metrics
from lineside_training.predict import Prediction
from lineside_training.quality import quality_metrics

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "datasets" / "deeppcb-sample"
BUNDLED = ROOT / "models" / "deeppcb" / "1"


def mosaic_set(folder: Path, defective: int = 3, good: int = 2) -> Path:
    """A set of 1280x1280 frames, each four 640 px sample images side by side at native
    scale (their boxes shifted with them): ``defective`` frames of defective images,
    ``good`` of the defect-free ones (templates)."""
    ds = read_dataset(SAMPLE)
    bad = [r for r in ds.images if r.boxes]
    fine = [r for r in ds.images if not r.boxes]
    (folder / "images").mkdir(parents=True)
    images, annotations = [], []
    cats = {c: i + 1 for i, c in enumerate(ds.categories)}
    for n, recs in enumerate([bad[i * 4:i * 4 + 4] for i in range(defective)]
                             + [fine[i * 4:i * 4 + 4] for i in range(good)]):
        frame = np.zeros((1280, 1280, 3), np.uint8)
        for k, rec in enumerate(recs):
            x, y = (k % 2) * 640, (k // 2) * 640
            frame[y:y + 640, x:x + 640] = read_image(ds.image_path(rec))
            annotations += [{"id": len(annotations) + 1, "image_id": n + 1,
                             "category_id": cats[b.label],
                             "bbox": [b.x1 + x, b.y1 + y, b.x2 - b.x1, b.y2 - b.y1]}
                            for b in rec.boxes]
        cv2.imwrite(str(folder / "images" / f"m{n}.png"), frame)
        images.append({"id": n + 1, "file_name": f"m{n}.png", "width": 1280, "height": 1280})
    (folder / "annotations.json").write_text(json.dumps({
        "images": images, "annotations": annotations,
        "categories": [{"id": i, "name": c} for c, i in cats.items()]}))
    return folder


def tiled_package(folder: Path) -> Path:
    """The bundled detector (trained on the sample's 640 px boards at 640) with a card
    whose recipe tiles at 640 px, as ``export --tile 640`` writes it."""
    pkg = folder / "deeppcb" / "1"
    shutil.copytree(BUNDLED, pkg)
    card = json.loads((pkg / "model.json").read_text())
    card["format_version"] = TILING_FORMAT
    card["default_recipe"]["tiling"] = {"tile": 640, "overlap": 0.2}
    (pkg / "model.json").write_text(json.dumps(card))
    return pkg


def test_a_card_that_tiles_is_of_the_tiling_format(tmp_path: Path) -> None:
    """A release before tiling reads format 1 only: a format-1 card carrying it is refused
    naming the format it takes; the bundled cards stay format 1."""
    assert TILING_FORMAT <= CARD_FORMAT
    assert read_card(BUNDLED).format_version == 1
    pkg = tiled_package(tmp_path)
    assert load_package(pkg).card.format_version == TILING_FORMAT
    card = json.loads((pkg / "model.json").read_text())
    (pkg / "model.json").write_text(json.dumps({**card, "format_version": 1}))
    with pytest.raises(PackageError, match="default_recipe names tiling, which takes "
                                           f"format_version {TILING_FORMAT}"):
        load_package(pkg)


def test_evaluate_refuses_a_good_only_card_that_tiles(tmp_path: Path) -> None:
    """A good-only package whose card's recipe tiles is refused as a server refuses to
    load it, naming the card's default_recipe (it was evaluated as if it did not tile)."""
    pkg = tmp_path / "deeppcb-good" / "2"
    shutil.copytree(ROOT / "models" / "deeppcb-good" / "1", pkg)
    card = json.loads((pkg / "model.json").read_text())
    card.update(version="2", format_version=TILING_FORMAT)
    card["default_recipe"]["tiling"] = {"tile": 640, "overlap": 0.2}
    (pkg / "model.json").write_text(json.dumps(card))
    with pytest.raises(PackageError, match=r"model deeppcb-good 2: its card's default_recipe: "
                                           r".*tiling takes single-image detectors"):
        evaluate(pkg, data=str(SAMPLE), split="all", out=tmp_path / "report")
    assert not (tmp_path / "report").exists()


def test_evaluate_judges_a_tiling_card_as_the_line_does(tmp_path: Path) -> None:
    """Its figures are those of ``inspect`` under the card's own recipe (frames cut into
    tiles), not of the frames letterboxed whole."""
    data = mosaic_set(tmp_path / "mosaics")
    pkg = tiled_package(tmp_path / "models")
    r = evaluate_package(pkg, data=data, split="all", out=tmp_path / "report", device="cpu")
    assert r["tiling"] == {"tile": 640, "overlap": 0.2}
    assert "tiled, 640 px tiles" in (tmp_path / "report" / "summary.md").read_text()

    det = Detector(pkg, device="cpu", threads=1)
    recipe = card_recipe(det.card)
    ds = read_dataset(data)
    thresholds = {n: det.card.threshold(n) for n in det.class_names}
    line, whole, verdicts = [], [], []
    for rec in ds.images:
        image = read_image(ds.image_path(rec))
        seen = inspect(image, det, recipe)
        d = seen.detections
        line.append(Prediction(d.xyxy, d.scores, d.class_ids))
        verdicts.append((bool(rec.boxes), seen.verdict))
        w = det.predict([image])[0]
        whole.append(Prediction(w.xyxy, w.scores, w.class_ids))
    q = quality_metrics(ds.images, line, det.class_names, thresholds)
    assert r["quality"]["escapes"] == q["escapes"] == sum(
        bad and v == "pass" for bad, v in verdicts)
    assert r["quality"]["false_rejects"] == q["false_rejects"] == sum(
        not bad and v == "fail" for bad, v in verdicts)
    assert r["quality"]["defect_recall"] == q["defect_recall"]
    assert r["coco"]["map50"] == pytest.approx(coco_metrics(ds.images, line, det.class_names)["map50"])
    # whole frames shrink the boards' defects 2x, below what the model learned
    assert coco_metrics(ds.images, whole, det.class_names)["map50"] < r["coco"]["map50"]


def test_export_tile_puts_tiling_in_the_cards_recipe(tiny_run: Path, tmp_path: Path) -> None:
    """``--tile`` at the scale the run trained at: the card's recipe tiles (format 2, said
    in the summary's notes; its fp16 figures say they are of tiled frames), and the
    package serves frames tiled through ``inspect`` under the card's recipe, with no
    recipe written."""
    out = tmp_path / "tiny" / "1"
    summary = export(tiny_run, out, parity_images=2, tile=640, fp16=True, latency_runs=3)
    assert summary["tiling"] == {"tile": 640, "overlap": 0.2}
    assert any("judges frames larger than 640 px as 640 px tiles" in n
               and n.endswith("the parity gate compared whole images")  # as the model learned
               for n in summary["notes"])
    card = json.loads((out / "model.json").read_text())
    assert card["format_version"] == TILING_FORMAT
    assert card["default_recipe"]["tiling"] == {"tile": 640, "overlap": 0.2}
    # the lower precision's figures say they are of frames judged tiled (refusals too)
    assert card["quantization"]["tiling"] == {"tile": 640, "overlap": 0.2}
    # and its latencies say they are one pass (one tile), not a frame's
    assert card["quantization"]["latency_of"].startswith("one forward pass of one input")

    det = Detector(out, device="cpu", threads=1)
    recipe = card_recipe(det.card)
    assert recipe.tiling == Tiling(tile=640)
    frame = read_image(mosaic_set(tmp_path / "m", defective=1, good=0) / "images" / "m0.png")
    _, letterboxes = det.pre_process([frame], tiling=recipe.tiling)
    assert len(letterboxes) == 9 and all(lb.origin is not None for lb in letterboxes)
    seen = inspect(frame, det, recipe).detections
    tiled = det.predict([frame], tiling=Tiling(tile=640))[0]
    np.testing.assert_array_equal(seen.xyxy, tiled.xyxy)
    plain = Recipe(name="plain", version="1", model=det.card.name)  # no tiling: whole
    assert inspect(frame, det, plain).detections.xyxy.shape == det.predict([frame])[0].xyxy.shape


@pytest.mark.parametrize(("options", "words"), [
    ({"tile": 256}, "--tile 256: the model learned defects at the scale of its training "
                    "images (median longer side 640 px letterboxed into its 640 px input, "
                    "1.00x), and 256 px tiles would show them 2.5x larger than that, more "
                    "than the 1.25x allowed; --tile 640 judges"),
    # a factor over 1, to three decimals: "0.62x smaller", and "1.25x" past a 1.25x slack,
    # read wrong
    ({"tile": 1024}, "1024 px tiles would show them 1.6x smaller than that"),
    ({"tile": 511}, "511 px tiles would show them 1.252x larger"),
    ({"tile": 801}, "801 px tiles would show them 1.252x smaller"),
    ({"tile": 640, "overlap": 0.7}, "--overlap: Input should be less than or equal to 0.5"),
    ({"tile": 8}, "--tile: Input should be greater than or equal to 32"),
    ({"overlap": 0.2}, "--overlap is the tiling's: give --tile too"),
])
def test_export_refuses_a_tile_off_the_trained_scale(tiny_run: Path, tmp_path: Path,
                                                     options: dict[str, float],
                                                     words: str) -> None:
    """A tile other than the size of the images the model trained on judges defects at a
    scale it never learned (training scales each image as inference does): refused
    before any work, naming the tile that matches."""
    out = tmp_path / "tiny" / "1"
    with pytest.raises(ConfigError) as exc:
        export(tiny_run, out, **options)  # type: ignore[arg-type]
    assert words in exc.value.message
    assert not out.exists()
