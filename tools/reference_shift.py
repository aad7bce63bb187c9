"""How a reference model copes with frames not perfectly registered to their reference.

DeepPCB has no second photograph of a good board, so a good part's frame is its own
template and nothing differs. This shifts each validation template (the frame) by a few
pixels against itself (the reference) and counts the good parts the model would then
reject, and does the same to the defective images against their templates and counts
escapes. Usage:
    python tools/reference_shift.py models/deeppcb-ref/1 data/deeppcb --split val [--align]

With ``--align`` each frame is first translated onto its reference, as a recipe with
``align_reference: true`` does.
"""

from __future__ import annotations

import argparse

import numpy as np

from lineside_inspect.dataset import read_dataset
from lineside_inspect.imageio import read_image
from lineside_inspect.opencv import cv2
from lineside_inspect.recipes import Recipe, judge
from lineside_inspect.runtime.detector import Detector


def shifted(image: np.ndarray, dx: int, dy: int) -> np.ndarray:
    m = np.array([[1, 0, dx], [0, 1, dy]], dtype=np.float32)
    h, w = image.shape[:2]
    return np.asarray(cv2.warpAffine(image, m, (w, h), borderMode=cv2.BORDER_REPLICATE))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("package")
    ap.add_argument("data")
    ap.add_argument("--split", default="val")
    ap.add_argument("--shifts", default="0,1,2")
    ap.add_argument("--align", action="store_true")
    args = ap.parse_args()
    det = Detector(args.package, device="cpu")
    ds = read_dataset(args.data)
    recs = ds.in_split(args.split)
    good = [r for r in recs if not r.boxes]
    bad = [r for r in recs if r.boxes and r.reference]
    recipe = Recipe(name="card", model=det.card.name)
    print(f"{args.package}: {len(good)} good, {len(bad)} defective ({args.split})"
          f"{', frames aligned to their reference' if args.align else ''}")
    for s in (int(v) for v in args.shifts.split(",")):
        rejects = 0
        for r in good:
            t = read_image(ds.image_path(r))
            dets = det.predict([shifted(t, s, s)], [t], align=args.align)[0]
            if judge(dets, recipe, det.card.thresholds).verdict == "fail":
                rejects += 1
        escapes = 0
        for r in bad:
            ref_path = ds.reference_path(r)
            assert ref_path is not None
            img = read_image(ds.image_path(r))
            dets = det.predict([shifted(img, s, s)], [read_image(ref_path)], align=args.align)[0]
            verdict = judge(dets, recipe, det.card.thresholds).verdict
            escapes += verdict == "pass"
        print(f"shift {s} px (x and y): false-reject rate {rejects / len(good):.3f} "
              f"({rejects}/{len(good)}), escape rate {escapes / len(bad):.3f} ({escapes}/{len(bad)})")


if __name__ == "__main__":
    main()
