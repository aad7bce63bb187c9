"""The whole loop: serve the bundled model, inspect sample images, review them through
the API, pull the reviewed set, and train one short epoch on it merged with the sample."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from lineside_inspect.dataset import read_dataset, save_annotations, split_dataset
from lineside_inspect.store.pull import pull_from_server
from lineside_training.engine import train

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "tests" / "lineside_inspect"))
from conftest import keyed, start_server  # noqa: E402

from .conftest import tiny_config  # noqa: E402


def test_inspect_review_pull_train(tmp_path: Path) -> None:
    running, stop = start_server(keyed(data_dir=tmp_path / "store", store_pass_rate=1.0))
    try:
        with running.client("admin") as admin:
            admin.put("/v1/recipes/strict", json={"name": "strict", "model": "deeppcb",
                                                  "default_min_score": 0.3})
        images = sorted((ROOT / "datasets" / "deeppcb-sample" / "images").rglob("*.jpg"))[:8]
        ids = []
        with running.client("line") as c:
            for i, f in enumerate(images):
                r = c.post("/v1/inspect", content=f.read_bytes(), params={"recipe": "strict",
                           "camera_id": f"cam{i % 2}"}, headers={"content-type": "image/jpeg"})
                assert r.status_code == 200 and r.json()["stored"]
                ids.append((r.json()["id"], r.json()["verdict"], f.name))
        with running.client("reviewer") as c:
            for n, (iid, verdict, name) in enumerate(ids):
                if name.endswith("_temp.jpg") and verdict == "fail":
                    body = {"action": "false_reject"}
                elif n % 3 == 0:
                    body = {"action": "missed_defect",
                            "boxes": [{"label": "open", "box": [100, 100, 140, 130]}]}
                else:
                    body = {"action": "confirm"}
                assert c.post(f"/v1/inspections/{iid}/reviews", json=body).status_code == 200
        pulled = tmp_path / "pulled"
        pull_from_server(running.url, pulled, key="reviewer-secret")
    finally:
        stop()
    ds = read_dataset(pulled)
    assert len(ds.images) == len(ids)
    split_dataset(ds, val=0.25, by="image", seed=0)
    save_annotations(ds)
    torch.set_num_threads(2)
    cfg = tiny_config(tmp_path / "runs", data=str(pulled), epochs=1, max_steps_per_epoch=2,
                      eval_every=1, extra_data=[str(ROOT / "datasets" / "deeppcb-sample")])
    run = train(cfg, quiet=True)
    assert (run / "last.pt").is_file() and (run / "metrics.jsonl").is_file()
