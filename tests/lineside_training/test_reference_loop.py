"""Reference models end to end: train on image + golden-template pairs, export (parity
through the runtime with references), serve with a named and an uploaded reference,
review, pull the pairs back, and train on them."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lineside_inspect.dataset import read_dataset, save_annotations, split_dataset, validate_dir
from lineside_inspect.errors import ReferenceImageError
from lineside_inspect.imageio import read_image
from lineside_inspect.opencv import cv2
from lineside_inspect.runtime.detector import Detector
from lineside_inspect.store.pull import pull_from_server
from lineside_training.engine import train
from lineside_training.export import export

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SAMPLE = ROOT / "datasets" / "deeppcb-sample"
sys.path.insert(0, str(ROOT / "tests" / "lineside_inspect"))
from conftest import keyed, start_server  # noqa: E402

from .conftest import tiny_config  # noqa: E402


@pytest.fixture(scope="module")
def ref_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(2)
    tmp = tmp_path_factory.mktemp("ref")
    # two epochs (one evaluation) show the pairs are learnt from, as four did; four parity
    # images check the runtime's pairs against torch's as eight did, in half the time
    run = train(tiny_config(tmp / "runs", name="tinyref", reference=True, epochs=2), quiet=True)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["loss"] < rows[0]["loss"]
    out = tmp / "models" / "tinyref" / "1"
    assert export(run, out, parity_images=4)["parity_images"] == 4
    return out


def _pair(stem: str) -> tuple[Path, Path]:
    test = next((SAMPLE / "images").rglob(f"{stem}_test.jpg"))
    return test, test.with_name(f"{stem}_temp.jpg")


def test_card_and_runtime_need_the_reference(ref_package: Path) -> None:
    card = json.loads((ref_package / "model.json").read_text())
    assert card["input"]["color"] == "grey+reference+difference"
    det = Detector(ref_package, device="cpu", threads=1)
    assert det.needs_reference
    test, temp = _pair("00041000")
    image, reference = read_image(test), read_image(temp)
    with pytest.raises(ReferenceImageError, match="send one with the image"):
        det.predict([image])
    batch, _ = det.pre_process([image], [reference])
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    assert (batch[0, 0] == grey).all() and (batch[0, 1] == cv2.cvtColor(reference, cv2.COLOR_BGR2GRAY)).all()
    assert (batch[0, 2] == cv2.absdiff(batch[0, 0], batch[0, 1])).all()
    # the template against itself shows no change: the model must not see defects there
    same = det.predict([reference], [reference])[0]
    assert len(same) == 0 or same.scores.max() < 0.5


def test_serve_review_pull_train(ref_package: Path, tmp_path: Path,
                                 caplog: pytest.LogCaptureFixture) -> None:
    running, stop = start_server(keyed(models=[str(ref_package)], data_dir=tmp_path / "store",
                                       store_pass_rate=1.0))
    stems = ["00041000", "00041001", "13000000", "13000001"]
    try:
        with running.client("admin") as admin:
            admin.put("/v1/recipes/low", json={"name": "low", "model": "tinyref",
                                               "default_min_score": 0.05})
            r = admin.put("/v1/references/board41", content=_pair("00041000")[1].read_bytes(),
                          headers={"content-type": "image/jpeg"})
            assert r.status_code == 200 and r.json()["width"] == 640
        with running.client("line") as c:
            assert c.get("/v1/references").json()["items"] == ["board41"]
            test, temp = _pair("00041000")
            r = c.post("/v1/inspect", content=test.read_bytes(),
                       params={"recipe": "low", "reference": "board41"},
                       headers={"content-type": "image/jpeg"})
            assert r.status_code == 200, r.text
            named = r.json()
            assert named["reference"]["name"] == "board41" and named["stored"]
            ids = [named["id"]]
            for stem in stems[1:]:
                test, temp = _pair(stem)
                r = c.post("/v1/inspect", params={"recipe": "low"}, files={
                    "image": (test.name, test.read_bytes(), "image/jpeg"),
                    "reference": (temp.name, temp.read_bytes(), "image/jpeg")})
                assert r.status_code == 200, r.text
                assert r.json()["reference"]["name"] is None
                ids.append(r.json()["id"])
            # the same reference sent twice, named or not, gives the same verdict
            again = c.post("/v1/inspect", params={"recipe": "low"}, files={
                "image": ("a.jpg", _pair("00041000")[0].read_bytes(), "image/jpeg"),
                "reference": ("b.jpg", _pair("00041000")[1].read_bytes(), "image/jpeg")}).json()
            assert again["defects"] == named["defects"]
            assert again["reference"]["sha256"] == named["reference"]["sha256"]
            ids.append(again["id"])
            # what a caller can get wrong, each a 4xx JSON error naming the problem
            r = c.post("/v1/inspect", content=test.read_bytes(), params={"recipe": "low"},
                       headers={"content-type": "image/jpeg"})
            assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_reference"
            assert "known: board41" in r.json()["error"]["message"]
            small = cv2.imencode(".png", np.zeros((100, 100, 3), np.uint8))[1].tobytes()
            r = c.post("/v1/inspect", params={"recipe": "low"}, files={
                "image": ("a.jpg", test.read_bytes(), "image/jpeg"),
                "reference": ("r.png", small, "image/png")})
            assert r.status_code == 422 and "is 100x100 but the frame is 640x640" in r.text
            r = c.post("/v1/inspect", content=test.read_bytes(),
                       params={"recipe": "low", "reference": "nope"},
                       headers={"content-type": "image/jpeg"})
            assert r.status_code == 404 and "no reference image named 'nope'" in r.text
            assert c.put("/v1/references/x", content=small,
                         headers={"content-type": "image/png"}).status_code == 403
        with running.client("reviewer") as c:
            item = c.get(f"/v1/inspections/{ids[0]}").json()
            assert item["reference"] == {"name": "board41", "has_image": True, "shift": None,
                                         "sha256": named["reference"]["sha256"],
                                         "unchanged": None, "difference": None}
            ref = c.get(f"/v1/inspections/{ids[0]}/reference")
            assert ref.status_code == 200 and ref.content == _pair("00041000")[1].read_bytes()
            for n, iid in enumerate(ids):
                body = {"action": "missed_defect",
                        "boxes": [{"label": "short", "box": [10, 10, 40, 40]}]} if n == 0 \
                    else {"action": "confirm"}
                assert c.post(f"/v1/inspections/{iid}/reviews", json=body).status_code == 200
        pulled = tmp_path / "pulled"
        with caplog.at_level(logging.WARNING, "lineside.store"):
            pull_from_server(running.url, pulled, key="reviewer-secret")
    finally:
        stop()
    # the same frame inspected twice and reviewed two ways (a missed defect added on one,
    # the other confirmed after it): validate and train refused the whole pull, naming the
    # copies (session 41); the pull now keeps the copy reviewed last, the reviewers' last
    # word, and says so (session 52): the set validates and trains as pulled
    assert validate_dir(pulled) == []
    assert any(f"(e.g. inspection {ids[0]} [" in m and f"a copy of inspection {ids[4]} [" in m
               and "short" in m for m in caplog.messages)
    ds = read_dataset(pulled)
    inspected = [r for r in ds.images if r.reference is not None]
    references = [r for r in ds.images if r.file_name.startswith("references/")]
    assert sorted(r.file_name.split("/")[-1][:32] for r in inspected) == sorted(ids[1:])
    assert len(references) == 4  # 00041000's template, named once and sent once, is one image
    assert all(not r.boxes for r in references)
    split_dataset(ds, val=0.25, by="image", seed=0)
    save_annotations(ds)
    cfg = tiny_config(tmp_path / "runs", data=str(pulled), epochs=1, max_steps_per_epoch=2,
                      eval_every=1, reference=True, extra_data=[str(SAMPLE)])
    run = train(cfg, quiet=True)
    assert (run / "last.pt").is_file()
