"""Score an Ultralytics YOLO model with Lineside's own COCO scorer, on the same validation
images Lineside evaluates, for the side-by-side in docs/benchmarks.md (issue #18).

Ultralytics is never a Lineside dependency: it lives in its own venv, and this tool has
two halves that run in different interpreters.

    lineside data export -f yolo data/deeppcb /tmp/deeppcb-yolo     # same split, YOLO layout
    /tmp/yolo-venv/bin/yolo detect train model=yolo11n.yaml data=/tmp/deeppcb-yolo/data.yaml \\
        pretrained=False imgsz=640 time=0.4167 plots=False amp=False workers=0 device=cpu
    # 1. predictions (Ultralytics' venv): every val image, conf 0.001, at most 100 boxes
    YOLO_OFFLINE=1 /tmp/yolo-venv/bin/python tools/yolo_side_by_side.py predict \\
        runs/detect/train/weights/best.pt /tmp/deeppcb-yolo/images/val preds.json
    # 2. the score (Lineside's venv): pycocotools through lineside_training.metrics
    .venv/bin/python tools/yolo_side_by_side.py score preds.json data/deeppcb --split val

Box coordinates are original-image pixels on both sides; Lineside's scorer keeps at most
100 detections per image (COCO's maxDets), so the predictions are cut to 100 too.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

MAX_DETECTIONS = 100
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}


def predict(weights: Path, images: Path, out: Path, imgsz: int) -> None:
    from ultralytics import YOLO  # Ultralytics' venv only

    model = YOLO(str(weights))
    files = sorted(p for p in images.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    preds: dict[str, list[list[float]]] = {}
    for path in files:
        [r] = model.predict(str(path), imgsz=imgsz, conf=0.001, iou=0.7, max_det=MAX_DETECTIONS,
                            device="cpu", verbose=False)
        b = r.boxes
        rows = zip(b.xyxy.tolist(), b.conf.tolist(), b.cls.tolist(), strict=True)
        preds[path.relative_to(images).as_posix()] = [[*xyxy, s, c] for xyxy, s, c in rows]
    out.write_text(json.dumps(preds))
    print(f"{len(preds)} images predicted into {out}")


def score(preds_file: Path, data: Path, split: str) -> dict[str, Any]:
    import numpy as np

    from lineside_inspect.dataset import read_dataset
    from lineside_training.metrics import coco_metrics
    from lineside_training.predict import Prediction

    dataset = read_dataset(data)
    records = dataset.images if split == "all" else dataset.in_split(split)
    preds = json.loads(preds_file.read_text())
    # the YOLO export may drop a common top folder (IMAGES/x.jpg is images/val/x.jpg there)
    for rec in records:
        base = Path(rec.file_name).name
        if rec.file_name not in preds and base in preds:
            preds[rec.file_name] = preds[base]
    missing = [r.file_name for r in records if r.file_name not in preds]
    if missing:
        raise SystemExit(f"{len(missing)} {split} images have no prediction (first: {missing[0]})")
    out = []
    for rec in records:
        rows = np.asarray(preds[rec.file_name], dtype=np.float64).reshape(-1, 6)
        out.append(Prediction(rows[:, :4].astype(np.float32), rows[:, 4].astype(np.float32),
                              rows[:, 5].astype(np.int64)))
    return coco_metrics(records, out, list(dataset.categories))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("predict", help="in Ultralytics' venv")
    p.add_argument("weights", type=Path)
    p.add_argument("images", type=Path, help="the YOLO layout's images/<split> folder")
    p.add_argument("out", type=Path)
    p.add_argument("--imgsz", type=int, default=640)
    s = sub.add_parser("score", help="in Lineside's venv")
    s.add_argument("preds", type=Path)
    s.add_argument("data", type=Path, help="the canonical dataset the YOLO layout came from")
    s.add_argument("--split", default="val")
    args = ap.parse_args()
    if args.cmd == "predict":
        predict(args.weights, args.images, args.out, args.imgsz)
    else:
        m = score(args.preds, args.data, args.split)
        print(f"mAP@[.5:.95] {m['map']:.4f}  mAP@.5 {m['map50']:.4f}")
        for name, c in m["per_class"].items():
            if c is not None:
                print(f"  {name}: AP50 {c['ap50']:.3f}  AP {c['ap']:.3f}")


if __name__ == "__main__":
    main()
