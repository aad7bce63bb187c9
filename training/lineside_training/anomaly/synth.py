"""Synthetic anomalies on good images: what a good-only model learns to find.

No defect is ever seen in training, so each good crop may get one to three made-up ones,
drawn from the families known to transfer to real defects (DRAEM, CutPaste) plus strokes:
- texture: a Perlin-noise blob filled with foreign texture (another good image, rotated),
  blended at a random opacity (DRAEM);
- recolour: a Perlin blob inverted, darkened/brightened or tinted (pinholes, stains, missing
  or extra material on two-level images such as PCBs);
- cutpaste: a patch of the same image, flipped/rotated and colour-jittered, pasted elsewhere,
  or a thin long "scar" patch at any angle (CutPaste);
- stroke: a thin curve in a colour the image already has (scratches, shorts, spurs, opens).
The label is only the pixels that visibly changed: pasting white on white is no anomaly.
Then the whole crop is "re-photographed" (gain, offset, noise, blur, JPEG) so that capture
variation on good parts is learnt as normal.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lineside_inspect.opencv import cv2

VISIBLE = 25  # grey levels: by default a pixel changed by less than this is not labelled
MIN_LABEL_PX = 4  # an anomaly smaller than this after the visibility test is dropped
KINDS = ("texture", "recolour", "cutpaste", "stroke")


@dataclass(frozen=True)
class SynthSpec:
    """How often and how large; sizes are in pixels of the letterboxed input frame."""

    p_anomaly: float = 0.6
    max_anomalies: int = 3
    min_size: int = 4
    max_size: int = 64
    weights: tuple[float, float, float, float] = (0.3, 0.25, 0.25, 0.2)  # as KINDS
    visible: int = VISIBLE


def perlin(shape: tuple[int, int], res: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """2-D Perlin noise in about [-1, 1]; ``shape`` must be a multiple of ``res``."""
    def fade(t: np.ndarray) -> np.ndarray:
        return 6 * t**5 - 15 * t**4 + 10 * t**3

    d = (shape[0] // res[0], shape[1] // res[1])
    ys, xs = np.arange(shape[0]) * res[0] / shape[0], np.arange(shape[1]) * res[1] / shape[1]
    grid = np.stack(np.meshgrid(ys, xs, indexing="ij"), -1) % 1
    angles = 2 * np.pi * rng.random((res[0] + 1, res[1] + 1))
    grads = np.dstack((np.cos(angles), np.sin(angles)))

    def tile(sy: slice, sx: slice) -> np.ndarray:
        return np.asarray(grads[sy, sx].repeat(d[0], 0).repeat(d[1], 1))

    def dot(g: np.ndarray, ox: float, oy: float) -> np.ndarray:
        return np.asarray((np.dstack((grid[..., 0] + ox, grid[..., 1] + oy)) * g).sum(2))

    n00 = dot(tile(slice(0, -1), slice(0, -1)), 0, 0)
    n10 = dot(tile(slice(1, None), slice(0, -1)), -1, 0)
    n01 = dot(tile(slice(0, -1), slice(1, None)), 0, -1)
    n11 = dot(tile(slice(1, None), slice(1, None)), -1, -1)
    t = fade(grid[: shape[0], : shape[1]])
    n0 = n00 * (1 - t[..., 0]) + t[..., 0] * n10
    n1 = n01 * (1 - t[..., 0]) + t[..., 0] * n11
    return np.asarray(np.sqrt(2) * ((1 - t[..., 1]) * n0 + t[..., 1] * n1))


def _blob(size: int, rng: np.random.Generator) -> np.ndarray:
    """A ``size x size`` bool Perlin blob, kept inside an ellipse so it stays local."""
    res = int(rng.choice([1, 2, 4]))
    side = max(res, -(-size // res) * res)
    noise = perlin((side, side), (res, res), rng)[:size, :size]
    blob = noise > rng.uniform(-0.2, 0.3)
    yy, xx = np.mgrid[:size, :size]
    c = (size - 1) / 2
    ry, rx = c * rng.uniform(0.5, 1.0) + 0.5, c * rng.uniform(0.5, 1.0) + 0.5
    inside = ((yy - c) / ry) ** 2 + ((xx - c) / rx) ** 2 <= 1
    out = blob & inside
    if not out.any():
        out = inside
    return np.asarray(out)


def _place(h: int, w: int, size: int, rng: np.random.Generator) -> tuple[int, int]:
    return int(rng.integers(0, max(1, h - size + 1))), int(rng.integers(0, max(1, w - size + 1)))


def _texture(img: np.ndarray, foreign: np.ndarray, size: int, rng: np.random.Generator,
             ) -> tuple[np.ndarray, np.ndarray]:
    h, w = img.shape[:2]
    blob = _blob(size, rng)
    y, x = _place(h, w, size, rng)
    fy, fx = _place(foreign.shape[0], foreign.shape[1], size, rng)
    patch = np.rot90(foreign[fy:fy + size, fx:fx + size], int(rng.integers(4)))
    if rng.random() < 0.5:
        patch = patch[:, ::-1]
    out = img.copy()
    region = out[y:y + size, x:x + size]
    sh = region.shape[:2]
    beta = rng.uniform(0.5, 1.0)
    mixed = (1 - beta) * region + beta * patch[: sh[0], : sh[1]]
    b = blob[: sh[0], : sh[1]]
    region[b] = mixed[b].astype(np.uint8)
    mask = np.zeros((h, w), bool)
    mask[y:y + sh[0], x:x + sh[1]] = b
    return out, mask


def _recolour(img: np.ndarray, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    h, w = img.shape[:2]
    blob = _blob(size, rng)
    y, x = _place(h, w, size, rng)
    out = img.copy()
    region = out[y:y + size, x:x + size].astype(np.float32)
    sh = region.shape[:2]
    b = blob[: sh[0], : sh[1]]
    mode = rng.integers(3)
    new: np.ndarray
    if mode == 0:  # invert: a hole in material, or material where there is none
        new = 255 - region
    elif mode == 1:  # darker or brighter: a stain, a burn, a missing coating
        new = region + rng.choice([-1, 1]) * rng.uniform(40, 140)
    else:  # a tint toward a random colour
        colour = rng.uniform(0, 255, 3).astype(np.float32)
        a = rng.uniform(0.4, 0.9)
        new = (1 - a) * region + a * colour
    region[b] = np.clip(new, 0, 255)[b]
    out[y:y + sh[0], x:x + sh[1]] = region.astype(np.uint8)
    mask = np.zeros((h, w), bool)
    mask[y:y + sh[0], x:x + sh[1]] = b
    return out, mask


def _cutpaste(img: np.ndarray, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    h, w = img.shape[:2]
    scar = rng.random() < 0.5
    if scar:  # thin and long, at any angle
        ph, pw = int(rng.integers(2, 7)), int(rng.integers(max(8, size // 2), max(9, size) + 1))
    else:
        ph = int(rng.integers(max(2, size // 3), size + 1))
        pw = int(rng.integers(max(2, size // 3), size + 1))
    ph, pw = min(ph, h), min(pw, w)
    sy, sx = _place(h, w, max(ph, pw), rng)
    patch = img[sy:sy + ph, sx:sx + pw].astype(np.float32)
    patch = np.clip(patch * rng.uniform(0.8, 1.2) + rng.uniform(-20, 20), 0, 255)
    keep = np.ones(patch.shape[:2], np.float32)
    angle = rng.uniform(0, 360) if scar else float(rng.choice([0, 90, 180, 270]))
    side = int(np.ceil(np.hypot(ph, pw))) + 2
    m = cv2.getRotationMatrix2D((pw / 2, ph / 2), angle, 1.0)
    m[:, 2] += (side / 2 - pw / 2, side / 2 - ph / 2)
    patch = np.asarray(cv2.warpAffine(patch, m, (side, side), flags=cv2.INTER_NEAREST), np.float32)
    keep = np.asarray(cv2.warpAffine(keep, m, (side, side), flags=cv2.INTER_NEAREST)) > 0.5
    if patch.ndim == 2:
        patch = patch[..., None]
    y, x = _place(h, w, side, rng)
    out = img.copy()
    region = out[y:y + side, x:x + side]
    sh = region.shape[:2]
    k = keep[: sh[0], : sh[1]]
    region[k] = patch[: sh[0], : sh[1]][k].astype(np.uint8)
    mask = np.zeros((h, w), bool)
    mask[y:y + sh[0], x:x + sh[1]] = k
    return out, mask


def _stroke(img: np.ndarray, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    h, w = img.shape[:2]
    y, x = _place(h, w, size, rng)
    n = int(rng.integers(2, 5))
    pts = np.stack([x + rng.uniform(0, size, n), y + rng.uniform(0, size, n)], 1)
    # a colour the image has (its darkest or brightest tones), or any colour
    flat = img.reshape(-1, img.shape[2])
    grey = flat.mean(1)
    pick = rng.integers(3)
    colour = (flat[grey.argmin()] if pick == 0 else flat[grey.argmax()] if pick == 1
              else rng.integers(0, 256, img.shape[2]))
    layer = np.zeros((h, w), np.uint8)
    cv2.polylines(layer, [pts.astype(np.int32)], False, 255, int(rng.integers(1, 5)),
                  lineType=cv2.LINE_8)
    b = layer > 0
    out = img.copy()
    out[b] = np.asarray(colour, np.uint8)
    return out, b


def add_anomalies(img: np.ndarray, foreign: np.ndarray, rng: np.random.Generator,
                  spec: SynthSpec) -> tuple[np.ndarray, np.ndarray]:
    """``img`` (H, W, 3 uint8) with 0..max anomalies, and their float32 label mask (H, W)."""
    mask = np.zeros(img.shape[:2], bool)
    if rng.random() >= spec.p_anomaly:
        return img, mask.astype(np.float32)
    out: np.ndarray = img
    p = np.asarray(spec.weights, float) / sum(spec.weights)
    for _ in range(int(rng.integers(1, spec.max_anomalies + 1))):
        size = int(np.exp(rng.uniform(np.log(spec.min_size), np.log(spec.max_size))))
        kind = KINDS[int(rng.choice(len(KINDS), p=p))]
        if kind == "texture":
            new, region = _texture(out, foreign, size, rng)
        elif kind == "recolour":
            new, region = _recolour(out, size, rng)
        elif kind == "cutpaste":
            new, region = _cutpaste(out, size, rng)
        else:
            new, region = _stroke(out, size, rng)
        changed = np.abs(new.astype(np.int16) - out.astype(np.int16)).max(2) >= spec.visible
        region &= changed
        if region.sum() >= MIN_LABEL_PX:  # keep only the labelled change: labels are exact
            out, mask = np.where(region[..., None], new, out), mask | region
    return out, mask.astype(np.float32)


def rephotograph(img: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """The same part under another capture: gain and offset, sensor noise, slight blur,
    JPEG re-encoding. ``strength`` scales every effect (0: unchanged)."""
    out = img.astype(np.float32)
    out = out * (1 + strength * rng.uniform(-0.15, 0.15)) + strength * rng.uniform(-20, 20)
    if rng.random() < 0.3 * strength:
        out = np.asarray(cv2.GaussianBlur(out, (3, 3), rng.uniform(0.3, 0.8)), np.float32)
    out += rng.normal(0, strength * rng.uniform(0, 6), out.shape)
    out8 = np.clip(out, 0, 255).astype(np.uint8)
    if rng.random() < 0.7 * strength:
        ok, buf = cv2.imencode(".jpg", out8, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(60, 95))])
        decoded = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED) if ok else None
        if decoded is not None:
            out8 = np.asarray(decoded, np.uint8).reshape(out8.shape)
    return out8
