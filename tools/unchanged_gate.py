"""Does the unchanged-part gate (runtime/unchanged.py) ever pass a defective part, and
how many good parts does it let skip the detector?

DeepPCB pairs each defective image with the defect-free template of its board. Good
parts are the templates *re-photographed* (sensor noise, gain and offset change, JPEG
re-encoding, and a shift of 0-2 px with sub-pixel part), compared with the template;
defective parts are the defective images re-photographed the same way, and, one by one,
each annotated defect alone: its box of the defective image pasted on the template (a
whole DeepPCB board carries 3-12 defects, and one caught hides the others), as it is and
re-photographed. Boards are split by group: the floor is calibrated on the good parts of
the calibration boards only and judged on the other boards. Usage:

    python tools/unchanged_gate.py ../shared/datasets/deeppcb [--calib-share 0.3]

Prints the floor, the share of good parts passed without the detector, every escape
(a defective part the gate passed: the detector would never have seen it), and the
gate's time per part.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from lineside_inspect.bench import rephotographed
from lineside_inspect.opencv import cv2
from lineside_inspect.runtime.unchanged import UnchangedGate, calibrate_floor, check


def pairs(root: Path) -> dict[str, list[tuple[Path, Path]]]:
    """DeepPCB's (defective, template) files by board group."""
    out: dict[str, list[tuple[Path, Path]]] = {}
    for test in sorted(root.rglob("*_test.jpg")):
        temp = test.with_name(test.name.replace("_test", "_temp"))
        if temp.exists():
            out.setdefault(test.parent.parent.name, []).append((test, temp))
    return out


def boxes(test: Path) -> list[tuple[int, int, int, int]]:
    """A DeepPCB defective image's boxes (``x1 y1 x2 y2 class`` lines in ``NNN_not/``)."""
    label = test.parent.parent / f"{test.parent.name}_not" / test.name.replace("_test.jpg", ".txt")
    out = []
    for line in label.read_text().splitlines() if label.exists() else []:
        v = line.replace(",", " ").split()
        if len(v) >= 5:
            x1, y1, x2, y2 = map(int, v[:4])
            out.append((x1, y1, x2, y2))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data", type=Path)
    ap.add_argument("--calib-share", type=float, default=0.3, help="share of boards to calibrate on")
    ap.add_argument("--tolerance", type=int, default=1)
    ap.add_argument("--max-shift", type=int, default=2)
    ap.add_argument("--tile", type=int, default=32)
    ap.add_argument("--margin", type=float, default=1.5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    groups = pairs(args.data)
    names = sorted(groups)
    rng.shuffle(names)
    n_cal = max(1, round(len(names) * args.calib_share))
    cal, held = names[:n_cal], names[n_cal:]

    def good_pairs(boards: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        out = []
        for g in boards:
            for _, temp in groups[g]:
                ref = cv2.imread(str(temp), cv2.IMREAD_COLOR)
                out.append((rephotographed(ref, rng), ref))
        return out

    calib = calibrate_floor(good_pairs(cal), tolerance_px=args.tolerance, tile=args.tile,
                            max_shift_px=args.max_shift, margin=args.margin)
    gate = UnchangedGate(floor=calib["floor"], tolerance_px=args.tolerance, tile=args.tile,
                         max_shift_px=args.max_shift)
    print(f"calibrated on {len(cal)} boards ({calib['good_pairs']} good parts): {calib}")
    skipped = good = 0
    times: list[float] = []
    for frame, ref in good_pairs(held):
        t = time.perf_counter()
        skipped += check(frame, ref, gate).unchanged
        times.append(time.perf_counter() - t)
        good += 1
    escapes: list[str] = []
    defective = defective_escapes = 0
    scores: list[float] = []
    for g in held:
        for test, temp in groups[g]:
            ref = cv2.imread(str(temp), cv2.IMREAD_COLOR)
            frame = rephotographed(cv2.imread(str(test), cv2.IMREAD_COLOR), rng)
            result = check(frame, ref, gate)
            defective += 1
            scores.append(result.score)
            if result.unchanged:
                defective_escapes += 1
                escapes.append(f"{test.name} (score {result.score:.1f})")
    single = single_escapes = photographed_escapes = 0
    for g in held:
        for test, temp in groups[g]:
            ref = cv2.imread(str(temp), cv2.IMREAD_COLOR)
            whole = cv2.imread(str(test), cv2.IMREAD_COLOR)
            for x1, y1, x2, y2 in boxes(test):
                frame = ref.copy()
                frame[y1:y2, x1:x2] = whole[y1:y2, x1:x2]  # this one defect, nothing else
                single += 1
                if check(frame, ref, gate).unchanged:
                    single_escapes += 1
                    escapes.append(f"{test.name} defect {(x1, y1, x2, y2)} alone")
                if check(rephotographed(frame, rng), ref, gate).unchanged:
                    photographed_escapes += 1
                    escapes.append(f"{test.name} defect {(x1, y1, x2, y2)} alone, re-photographed")
    print(f"single defects: {single}; passed by the gate: {single_escapes} as they are, "
          f"{photographed_escapes} re-photographed")
    print(f"held-out boards: {len(held)}; good parts passed without the detector: {skipped}/{good} "
          f"({100 * skipped / max(good, 1):.1f}%); defective boards passed by the gate (escapes): "
          f"{defective_escapes}/{defective}")
    for e in escapes:
        print("  escape:", e)
    print(f"defective parts' highest tile score: min {min(scores):.1f}, p1 "
          f"{float(np.percentile(scores, 1)):.1f}, median {float(np.median(scores)):.1f} "
          f"(floor {gate.floor})")
    print(f"gate time per part: p50 {1000 * float(np.percentile(times, 50)):.2f} ms, "
          f"p95 {1000 * float(np.percentile(times, 95)):.2f} ms")


if __name__ == "__main__":
    main()
