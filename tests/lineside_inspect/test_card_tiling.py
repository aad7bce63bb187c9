"""A card whose own recipe tiles (``lineside export --tile``, card format 2) through what
reads cards beside the inspection path: a shadow of a tiled version beside an untiled
one judges frames as the line will once it is active (its card's recipe follows it), and
a reference model's card that tiles is refused when loaded, in one line naming its card's
default_recipe (a server's start-up traceback before). Real parts: the bundled packages,
the real registry, service, SQLite store and shadow process."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from lineside_inspect.config import Settings
from lineside_inspect.dataset import read_dataset
from lineside_inspect.errors import PackageError
from lineside_inspect.imageio import read_image
from lineside_inspect.lifecycle.manager import Lifecycle
from lineside_inspect.lifecycle.schemas import ShadowDisagreements, ShadowStatus
from lineside_inspect.opencv import cv2
from lineside_inspect.package import TILING_FORMAT
from lineside_inspect.recipes import card_recipe
from lineside_inspect.serve import preflight
from lineside_inspect.server.registry import Registry
from lineside_inspect.server.service import InspectionService

from .conftest import MODEL, ROOT, SAMPLE, shadow_line

TILING = {"tile": 640, "overlap": 0.2}


def tiled(src: Path, dst: Path, version: str) -> Path:
    """``src`` as ``version`` with a card whose recipe tiles, as ``export --tile`` writes it."""
    shutil.copytree(src, dst)
    card = json.loads((dst / "model.json").read_text())
    card.update(version=version, format_version=TILING_FORMAT)
    card["default_recipe"]["tiling"] = TILING
    (dst / "model.json").write_text(json.dumps(card))
    return dst


def panel() -> bytes:
    """A 1280 px panel of four sample boards, one defective: letterboxed whole the bundled
    model passes it (its defects shrunk 2x), judged as 640 px tiles it fails it."""
    ds = read_dataset(SAMPLE)
    bad = [r for r in ds.images if r.boxes][1]
    good = [r for r in ds.images if not r.boxes][:3]
    frame = np.zeros((1280, 1280, 3), np.uint8)
    for k, rec in enumerate([bad, *good]):
        y, x = (k // 2) * 640, (k % 2) * 640
        frame[y:y + 640, x:x + 640] = read_image(ds.image_path(rec))
    ok, data = cv2.imencode(".png", frame)
    assert ok
    return bytes(data)


@pytest.fixture
def line(tmp_path: Path) -> Iterator[tuple[InspectionService, Lifecycle]]:
    """deeppcb 1 (format 1, judges whole) active, 2 (its card tiles) loaded; no recipe
    configured: the card's own recipe serves and follows the active card."""
    registry = Registry(device="cpu", threads=1)
    registry.load_model(MODEL)
    registry.load_model(tiled(MODEL, tmp_path / "deeppcb" / "2", "2"), activate=False)
    registry.add_recipe(card_recipe(registry.detector("deeppcb").card))  # as load_everything
    with shadow_line(registry, tmp_path) as line:
        yield line


def test_a_shadow_judges_by_the_recipe_its_card_brings(
        line: tuple[InspectionService, Lifecycle]) -> None:
    """The tiled 2 shadowing the untiled 1 judges the panel tiled (fail) beside 1's whole
    pass: a disagreement. Judged by 1's recipe it saw the panel whole and agreed, though
    the line judges it tiled once 2 is active (the recipe follows the card)."""
    service, lc = line
    lc.start_shadow("deeppcb", "2", sample_rate=1.0, actor="admin")
    served = asyncio.run(service.inspect_image(panel()))
    assert (served.verdict, served.recipe.name, served.recipe.tiling) == ("pass", "deeppcb-default", None)
    assert lc.shadow is not None
    lc.shadow.drain()
    status = ShadowStatus.model_validate(lc.shadow_status("deeppcb"))
    assert (status.compared, status.agreed, status.errors) == (1, 0, 0), status
    (row,) = ShadowDisagreements.model_validate(
        {"items": lc.records.disagreements(run_id=status.run_id)}).items
    assert (row.active.verdict, row.shadow.version, row.shadow.verdict) == ("pass", "2", "fail")
    # and once 2 is active the line judges the panel as its shadow did
    lc.stop_shadow("deeppcb", actor="admin")
    lc.activate("deeppcb", "2", actor="admin", force=True, reason="test")
    again = asyncio.run(service.inspect_image(panel()))
    assert (again.verdict, again.recipe.tiling is not None) == (row.shadow.verdict, True)


def test_a_reference_models_card_that_tiles_is_refused_when_loaded(tmp_path: Path) -> None:
    """Tiling cuts a frame from its golden: the card's default_recipe is refused by a
    server's preflight and the registry in one line, not by the application's start-up."""
    pkg = tiled(ROOT / "models" / "deeppcb-ref" / "1", tmp_path / "deeppcb-ref" / "2", "2")
    words = ("model deeppcb-ref 2: its card's default_recipe: recipe deeppcb-ref-default: "
             "tiling takes single-image detectors")
    with pytest.raises(PackageError, match=words):
        preflight(Settings(models=[str(pkg)], store=False))
    with pytest.raises(PackageError, match=words):
        Registry(device="cpu", threads=1).load_model(pkg)
