"""A procedural surface-defect set for measuring the general single-image recipe on
something that is not a PCB (issue #18), when no public non-PCB set can be fetched.

It is a stand-in, not a benchmark of any real product: 200 x 200 greyscale pictures of a
rolled-metal-like surface (streaks along the rolling direction, grain, uneven light; each
"coil" its own look), with six kinds of defect drawn on it, one kind per picture, one to
four instances, boxed one box per instance, in a Pascal VOC layout with upper-case folders
(``IMAGES/`` + ``ANNOTATIONS/``, as Kaggle copies of steel sets ship). The kinds cover what
makes such sets hard for a detector: large low-contrast texture regions (crack networks,
rolled-in flakes), many tiny marks in a cluster (pits), long thin lines (scratches), small
elongated spots (inclusions) and large blobs (patches). Coils are the groups
(``lineside data split --by group`` keeps a coil on one side): write ``groups.json`` beside
the set, which ``import`` does not read, and this tool's ``--groups`` step sets them.

    python tools/synth_surfaces.py make /tmp/surfaces --images 1800
    lineside data import -f voc /tmp/surfaces data/surfaces
    python tools/synth_surfaces.py groups /tmp/surfaces data/surfaces
    lineside data split data/surfaces --val 0.2 --by group

``make --good N`` adds N defect-free pictures (empty annotations) for good-only models
(docs/training/good-only.md, "Other industries").
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from xml.sax.saxutils import escape

import cv2
import numpy as np

SIZE = 200
KINDS = ("crack_net", "inclusion", "patch", "pits", "scale", "scratch")
Box = tuple[int, int, int, int]


def _smooth_noise(rng: np.random.Generator, sx: float, sy: float,
                  shape: tuple[int, int] = (SIZE, SIZE)) -> np.ndarray:
    """Unit-variance noise blurred by a Gaussian of sigmas (sx, sy) pixels."""
    n = cv2.GaussianBlur(rng.standard_normal(shape).astype(np.float32), (0, 0), sigmaX=sx, sigmaY=sy)
    return n / max(float(n.std()), 1e-6)


def _coil(rng: np.random.Generator) -> dict[str, float]:
    """One coil's look: every picture of it shares these."""
    return {"base": rng.uniform(90, 170), "streak": rng.uniform(3, 12), "grain": rng.uniform(3, 8),
            "light": rng.uniform(0, 25), "streak_len": rng.uniform(15, 60)}


def _surface(rng: np.random.Generator, coil: dict[str, float]) -> np.ndarray:
    img = np.full((SIZE, SIZE), coil["base"], np.float32)
    img += coil["streak"] * _smooth_noise(rng, coil["streak_len"], 1.2)
    img += coil["grain"] * rng.standard_normal((SIZE, SIZE)).astype(np.float32)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / SIZE
    angle = rng.uniform(0, 2 * np.pi)
    img += coil["light"] * (np.cos(angle) * (xx - 0.5) + np.sin(angle) * (yy - 0.5))
    return img


def _region(rng: np.random.Generator, lo: int, hi: int, aspect: float = 1.0) -> Box:
    w = int(rng.uniform(lo, hi))
    h = int(np.clip(w * rng.uniform(1 / (1 + aspect), 1 + aspect), lo * 0.6, SIZE - 4))
    x = int(rng.uniform(2, SIZE - 2 - w))
    y = int(rng.uniform(2, SIZE - 2 - h))
    return x, y, x + w, y + h


def _mask_box(mask: np.ndarray) -> Box | None:
    ys, xs = np.nonzero(mask > 0.25)
    if len(xs) < 4:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _crack_net(rng: np.random.Generator, img: np.ndarray, contrast: float) -> list[Box]:
    box = _region(rng, 60, 170)
    x1, y1, x2, y2 = box
    mask = np.zeros_like(img)
    for _ in range(int(rng.integers(8, 20))):  # short jagged cracks that meet
        p = np.array([rng.uniform(x1, x2), rng.uniform(y1, y2)])
        heading = rng.uniform(0, np.pi)
        pts = [p.copy()]
        for _ in range(int(rng.integers(4, 12))):
            heading += rng.normal(0, 0.6)
            p = p + 5 * np.array([np.cos(heading), np.sin(heading)])
            p = np.clip(p, [x1, y1], [x2 - 1, y2 - 1])
            pts.append(p.copy())
        cv2.polylines(mask, [np.asarray(pts, np.int32)], False, 1.0, 1, cv2.LINE_AA)
    img -= contrast * mask
    return [b for b in [_mask_box(mask)] if b is not None]


def _inclusion(rng: np.random.Generator, img: np.ndarray, contrast: float) -> list[Box]:
    boxes = []
    for _ in range(int(rng.integers(1, 5))):
        mask = np.zeros_like(img)
        cx, cy = rng.uniform(15, SIZE - 15, 2)
        axes = (int(rng.uniform(6, 30)), int(rng.uniform(2, 6)))
        angle = rng.normal(0, 20) + (90 if rng.random() < 0.3 else 0)
        cv2.ellipse(mask, (int(cx), int(cy)), axes, angle, 0, 360, 1.0, -1, cv2.LINE_AA)
        mask = cv2.GaussianBlur(mask, (0, 0), 1.0) * (0.6 + 0.4 * _smooth_noise(rng, 2, 2).clip(-1, 1))
        img -= 1.6 * contrast * mask
        b = _mask_box(mask)
        if b is not None:
            boxes.append(b)
    return boxes


def _patch(rng: np.random.Generator, img: np.ndarray, contrast: float) -> list[Box]:
    boxes = []
    sign = -1 if rng.random() < 0.75 else 1
    for _ in range(int(rng.integers(1, 4))):
        x1, y1, x2, y2 = _region(rng, 25, 110)
        blob = _smooth_noise(rng, 6, 6)[y1:y2, x1:x2]
        yy, xx = np.mgrid[y1:y2, x1:x2].astype(np.float32)
        r = ((xx - (x1 + x2) / 2) / ((x2 - x1) / 2)) ** 2 + ((yy - (y1 + y2) / 2) / ((y2 - y1) / 2)) ** 2
        mask = np.zeros_like(img)
        mask[y1:y2, x1:x2] = np.clip((1 - r) * 2 + 0.6 * blob, 0, 1)
        mask = cv2.GaussianBlur(mask, (0, 0), 2.0)
        img += sign * 1.3 * contrast * mask
        b = _mask_box(mask)
        if b is not None:
            boxes.append(b)
    return boxes


def _pits(rng: np.random.Generator, img: np.ndarray, contrast: float) -> list[Box]:
    boxes = []
    for _ in range(int(rng.integers(1, 3))):
        x1, y1, x2, y2 = _region(rng, 25, 90, aspect=1.5)
        mask = np.zeros_like(img)
        for _ in range(int((x2 - x1) * (y2 - y1) / rng.uniform(40, 120))):
            cv2.circle(mask, (int(rng.uniform(x1, x2)), int(rng.uniform(y1, y2))),
                       int(rng.integers(1, 3)), 1.0, -1, cv2.LINE_AA)
        img -= 1.5 * contrast * mask
        b = _mask_box(mask)
        if b is not None:
            boxes.append(b)
    return boxes


def _scale(rng: np.random.Generator, img: np.ndarray, contrast: float) -> list[Box]:
    boxes = []
    for _ in range(int(rng.integers(1, 3))):
        x1, y1, x2, y2 = _region(rng, 40, 150, aspect=2.0)
        flakes = (_smooth_noise(rng, 3.0, 1.0) > 0.9).astype(np.float32)
        mask = np.zeros_like(img)
        mask[y1:y2, x1:x2] = flakes[y1:y2, x1:x2]
        mask = cv2.GaussianBlur(mask, (0, 0), 0.8)
        img -= contrast * mask
        img[y1:y2, x1:x2] += 0.4 * contrast * _smooth_noise(rng, 1.0, 1.0)[y1:y2, x1:x2]
        b = _mask_box(mask)
        if b is not None:
            boxes.append(b)
    return boxes


def _scratch(rng: np.random.Generator, img: np.ndarray, contrast: float) -> list[Box]:
    boxes = []
    sign = 1 if rng.random() < 0.5 else -1
    for _ in range(int(rng.integers(1, 4))):
        length = rng.uniform(40, 190)
        angle = rng.normal(np.pi / 2, 0.5) if rng.random() < 0.7 else rng.uniform(0, np.pi)
        cx, cy = rng.uniform(20, SIZE - 20, 2)
        d = 0.5 * length * np.array([np.cos(angle), np.sin(angle)])
        p1 = np.clip(np.array([cx, cy]) - d, 1, SIZE - 2)
        p2 = np.clip(np.array([cx, cy]) + d, 1, SIZE - 2)
        mask = np.zeros_like(img)
        cv2.line(mask, tuple(int(v) for v in p1), tuple(int(v) for v in p2), 1.0,
                 int(rng.integers(1, 3)), cv2.LINE_AA)
        img += sign * 1.4 * contrast * mask
        b = _mask_box(mask)
        if b is not None:
            x1, y1, x2, y2 = b  # a box of a straight line is at least 3 px thick
            boxes.append((max(x1 - 1, 0), max(y1 - 1, 0), min(x2 + 1, SIZE), min(y2 + 1, SIZE)))
    return boxes


DRAW = {"crack_net": _crack_net, "inclusion": _inclusion, "patch": _patch, "pits": _pits,
        "scale": _scale, "scratch": _scratch}


def _voc(name: str, boxes: list[tuple[str, Box]], with_suffix: bool) -> str:
    objects = "".join(
        f"<object><name>{escape(k)}</name><pose>Unspecified</pose><truncated>0</truncated>"
        f"<difficult>0</difficult><bndbox><xmin>{x1 + 1}</xmin><ymin>{y1 + 1}</ymin>"
        f"<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
        for k, (x1, y1, x2, y2) in boxes)
    file_name = f"{name}.jpg" if with_suffix else name
    return (f"<annotation><folder>IMAGES</folder><filename>{file_name}</filename>"
            f"<size><width>{SIZE}</width><height>{SIZE}</height><depth>1</depth></size>"
            f"<segmented>0</segmented>{objects}</annotation>\n")


def make(out: Path, images: int, coils: int, seed: int, good: int = 0) -> None:
    """``images`` defective pictures (one kind each, in turn) and ``good`` defect-free ones
    (an annotation without objects), each of a random coil."""
    rng = np.random.default_rng(seed)
    (out / "IMAGES").mkdir(parents=True, exist_ok=False)
    (out / "ANNOTATIONS").mkdir()
    looks = [_coil(rng) for _ in range(coils)]
    groups: dict[str, str] = {}
    for i in range(images):
        kind = KINDS[i % len(KINDS)]
        coil = int(rng.integers(coils))
        img = _surface(rng, looks[coil])
        # contrast against the coil's grain: from barely visible to plain
        contrast = looks[coil]["grain"] * rng.uniform(1.5, 4.0)
        boxes = DRAW[kind](rng, img, contrast)
        if not boxes:
            continue
        _write(out, f"{kind}_{i + 1}", img, [(kind, b) for b in boxes], rng)
        groups[f"{kind}_{i + 1}.jpg"] = f"coil{coil:02d}"
    # good pictures come after the defective ones, so a set made with --good 0 is the same
    # set as before this option existed (same seed, same draws)
    for i in range(good):
        coil = int(rng.integers(coils))
        _write(out, f"good_{i + 1}", _surface(rng, looks[coil]), [], rng)
        groups[f"good_{i + 1}.jpg"] = f"coil{coil:02d}"
    (out / "groups.json").write_text(json.dumps(groups, indent=0))


def _write(out: Path, name: str, img: np.ndarray, boxes: list[tuple[str, Box]],
           rng: np.random.Generator) -> None:
    quality = int(rng.integers(80, 96))
    ok, jpg = cv2.imencode(".jpg", np.clip(img, 0, 255).astype(np.uint8),
                           [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    (out / "IMAGES" / f"{name}.jpg").write_bytes(jpg.tobytes())
    # a tenth of the XMLs name their image without its extension, as real sets do
    (out / "ANNOTATIONS" / f"{name}.xml").write_text(
        _voc(name, boxes, with_suffix=rng.random() > 0.1))


def set_groups(src: Path, dataset: Path) -> None:
    """Copy the coils of ``src/groups.json`` into ``dataset/annotations.json``."""
    groups = json.loads((src / "groups.json").read_text())
    path = dataset / "annotations.json"
    doc = json.loads(path.read_text())
    missing = 0
    for rec in doc["images"]:
        key = Path(rec.get("origin") or rec["file_name"]).name
        group = groups.get(key) or groups.get(Path(rec["file_name"]).name)
        if group is None:
            missing += 1
            continue
        rec["group"] = group
    path.write_text(json.dumps(doc, indent=1))
    print(f"groups set on {len(doc['images']) - missing} images ({missing} without)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("out", type=Path)
    m.add_argument("--images", type=int, default=1800)
    m.add_argument("--coils", type=int, default=30)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--good", type=int, default=0,
                   help="also this many defect-free pictures (for good-only models)")
    g = sub.add_parser("groups")
    g.add_argument("src", type=Path)
    g.add_argument("dataset", type=Path)
    a = ap.parse_args()
    if a.cmd == "make":
        if min(a.images, a.good) < 0 or a.coils < 1:
            ap.error("--images and --good must be 0 or more, --coils 1 or more")
        if a.out.exists():
            ap.error(f"{a.out} already exists: make writes a new folder")
        make(a.out, a.images, a.coils, a.seed, a.good)
    else:
        set_groups(a.src, a.dataset)


if __name__ == "__main__":
    main()
