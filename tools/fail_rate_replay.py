"""A line replayed through the server's fail-rate alarm: the measurement behind "The
fail-rate alarm" in docs/lifecycle.md.

The groups (coils, batches, boards) of a dataset's split come down the line one after
another, the group named by ``--new-look`` last. Each group's good images are captured
``--captures`` times (re-photographed, as ``lineside calibrate`` does), and defective parts
of the same group are mixed in at ``--defect-rate``. Every capture is inspected as the
server inspects it (``lineside_inspect.inspector.inspect`` with the package's own recipe,
through onnxruntime), and every inspection is offered to the alarm the server hangs off its
inspection service (``lifecycle.alarm.FailRateAlarm``, default settings unless given).

    python tools/fail_rate_replay.py models/mypart-good/1 data/mypart --split val --new-look coil23

Prints each group's inspections and fail rate, and every alarm raised or cleared: where,
and after how many of that group's inspections. ``--seeds N`` replays the line N times in
other orders; ``--sweep`` judges the replays under a grid of settings (false alarms before
the new look, and how soon it raised one); ``--score-watch`` compares a watch on the
good-only scores. Needs ``pip install -e '.[train]'`` (the
re-photographing lives there).
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Iterator
from typing import Any

import numpy as np

from lineside_inspect.dataset import read_dataset
from lineside_inspect.imageio import read_image
from lineside_inspect.inspector import Inspection, inspect
from lineside_inspect.lifecycle.alarm import FailRateAlarm, judge_rate
from lineside_inspect.lifecycle.config import FailRateAlarmSettings
from lineside_inspect.lifecycle.manager import card_recipe
from lineside_inspect.recipes import Recipe
from lineside_inspect.runtime.detector import Detector
from lineside_training.anomaly.data import split_images
from lineside_training.anomaly.synth import rephotograph

Event = tuple[int, str, int, str, str]  # inspection number, group, how many into it, state, why
_NO_IMAGE = np.zeros((1, 1, 3), np.uint8)


def line(images: dict[str, tuple[list[np.ndarray], list[np.ndarray]]], order: list[str],
         captures: int, defect_rate: float, rng: np.random.Generator,
         ) -> Iterator[tuple[str, np.ndarray, bool]]:
    """(group, capture, defective) in the order the line makes them."""
    for g in order:
        good, bad = images[g]
        parts = [(i, False) for i in good for _ in range(captures)]
        rng.shuffle(parts)  # type: ignore[arg-type]
        for img, _ in parts:
            if bad and rng.random() < defect_rate:
                yield g, bad[int(rng.integers(len(bad)))], True
            yield g, rephotograph(img, rng), False


def replay(detector: Detector, recipe: Recipe,
           images: dict[str, tuple[list[np.ndarray], list[np.ndarray]]], order: list[str],
           captures: int, defect_rate: float, seed: int) -> list[tuple[str, bool, Inspection]]:
    """(group, defective, inspection) for every part of the line, inspected as the server
    does; the inspections keep no image (a replay holds thousands)."""
    out = []
    rng = np.random.default_rng(seed)
    for group, img, defective in line(images, order, captures, defect_rate, rng):
        result = inspect(img, detector, recipe)
        out.append((group, defective, dataclasses.replace(result, image=_NO_IMAGE)))
    return out


def alarms(parts: list[tuple[str, bool, Inspection]],
           settings: FailRateAlarmSettings) -> tuple[list[Event], dict[str, Any]]:
    """The alarm's changes along the line: (inspection number, group, how many into it,
    state, why); and its last status."""
    events: list[Event] = []
    at: list[tuple[int, str, int]] = [(0, "", 0)]  # inspection number, group, how many into it
    alarm = FailRateAlarm(settings, on_change=lambda c: events.append((*at[0], c.state, c.why)))
    for n, (group, _, result) in enumerate(parts, 1):
        at[0] = (n, group, 1 if group != at[0][1] else at[0][2] + 1)
        alarm.offer(result)
    return events, alarm.status()[0]


def score_alarms(parts: list[tuple[str, bool, Inspection]], q: float,
                 settings: FailRateAlarmSettings) -> list[tuple[str, int]]:
    """A watch on a good-only model's image scores instead of its verdicts, for comparison
    (not in the server): the share of inspections whose score exceeds the baseline's
    ``q``-quantile, judged with the alarm's rule (:func:`judge_rate`: usual share from the
    baseline, cleared halfway to the bound). Returns (group, how many into it) of each alarm."""
    scores = np.array([r.anomaly.score if r.anomaly is not None else 0.0 for _, _, r in parts])
    n0 = settings.baseline_inspections
    level = float(np.quantile(scores[:n0], q))
    over = scores > level
    usual = float(over[:n0].mean())
    alarm, events, into, last = False, [], 0, ""
    for n in range(n0, len(parts)):
        group = parts[n][0]
        into = into + 1 if group == last else 1
        last = group
        rate = float(over[max(0, n + 1 - settings.window):n + 1].mean())
        raised = judge_rate(usual, rate, alarm, settings)
        if raised and not alarm:
            events.append((group, into))
        alarm = raised
    return events


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("package")
    ap.add_argument("data")
    ap.add_argument("--split", default="val")
    ap.add_argument("--new-look", required=True, help="the group that comes last")
    ap.add_argument("--captures", type=int, default=4, help="captures of each good part")
    ap.add_argument("--defect-rate", type=float, default=0.03)
    ap.add_argument("--seeds", type=int, default=1, help="replays, each in another order")
    ap.add_argument("--sweep", action="store_true", help=(
        "judge every replay under a grid of settings, not only the defaults"))
    ap.add_argument("--score-watch", action="store_true", help=(
        "also judge a watch on the good-only scores (share above a baseline quantile), "
        "for comparison with the fail-rate alarm"))
    args = ap.parse_args()
    detector = Detector(args.package, device="cpu", threads=1)
    recipe = card_recipe(detector.card)
    dataset = read_dataset(args.data)
    images: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {}
    for r in split_images(dataset, args.split):
        good, bad = images.setdefault(r.group or r.file_name, ([], []))
        (good if r.is_good else bad).append(read_image(dataset.image_path(r)))
    if args.new_look not in images:
        raise SystemExit(f"no group {args.new_look} in split {args.split}: "
                         f"{', '.join(sorted(images))}")
    order = [g for g in sorted(images) if g != args.new_look] + [args.new_look]
    print(f"{detector.card.name} {detector.card.version}, recipe {recipe.name}; groups in "
          f"order {', '.join(order)}; {args.captures} captures of each good part, "
          f"{args.defect_rate:.0%} defective parts mixed in", flush=True)
    replays = [replay(detector, recipe, images, order, args.captures, args.defect_rate, seed)
               for seed in range(args.seeds)]
    for g in order:
        rejected = [r.verdict == "fail" for parts in replays for gg, d, r in parts
                    if gg == g and not d]
        escaped = [r.verdict == "pass" for parts in replays for gg, d, r in parts if gg == g and d]
        print(f"group {g}: {len(rejected)} good captures, {sum(rejected)} failed "
              f"({sum(rejected) / max(len(rejected), 1):.1%}); {len(escaped)} defective, "
              f"{sum(escaped)} passed")
    grid = [FailRateAlarmSettings()]
    if args.sweep:
        grid = [FailRateAlarmSettings(window=w, max_fail_rate_ratio=k, max_fail_rate_increase=a)
                for w in (200, 400) for k in (2.0, 3.0) for a in (0.05, 0.1)]
    for s in grid:
        false, delays, last = 0, [], []
        for seed, parts in enumerate(replays):
            events, status = alarms(parts, s)
            false += sum(e[3] == "alarm" and e[1] != args.new_look for e in events)
            hit = [e[2] for e in events if e[3] == "alarm" and e[1] == args.new_look]
            delays.append(hit[0] if hit else None)
            last.append(status)
            if not args.sweep:
                print(f"replay {seed}: usual fail rate {status['usual_fail_rate']:.2%} over the "
                      f"first {status['baseline_inspections']}; at the end {status['state']}")
                for at, g, k, state, why in events:
                    print(f"  inspection {at} ({k} into {g}): {state}: {why}")
        seen = [d for d in delays if d is not None]
        before = sum(sum(g != args.new_look for g, _, _ in parts) for parts in replays)
        judged = before - len(replays) * min(s.baseline_inspections, before // len(replays))
        print(f"window {s.window}, bound max(usual x {s.max_fail_rate_ratio}, usual + "
              f"{s.max_fail_rate_increase:.0%}): {false} false alarms in {judged} inspections "
              f"judged before {args.new_look} ({len(replays)} replays); {args.new_look} "
              f"raised it in {len(seen)}/{len(replays)}, after {_median(seen)} of its inspections (median; "
              f"{min(seen, default='-')}-{max(seen, default='-')})", flush=True)
    if args.score_watch:
        _score_watch(replays, args.new_look)


def _score_watch(replays: list[list[tuple[str, bool, Inspection]]], new_look: str) -> None:
    for q in (0.9, 0.95):
        for window, inc in ((400, 0.05), (400, 0.1), (200, 0.1)):
            s = FailRateAlarmSettings(window=window, max_fail_rate_increase=inc)
            events = [score_alarms(parts, q, s) for parts in replays]
            false = sum(g != new_look for e in events for g, _ in e)
            hits = [next((k for g, k in e if g == new_look), None) for e in events]
            seen = [h for h in hits if h is not None]
            print(f"score watch: share above the baseline's q{q}, window {window}, bound "
                  f"max(usual x 2, usual + {inc:.0%}): {false} false alarms before {new_look}; "
                  f"{new_look} raised it in {len(seen)}/{len(replays)}, after {_median(seen)} "
                  f"of its inspections (median; {min(seen, default='-')}-"
                  f"{max(seen, default='-')})", flush=True)


def _median(values: list[int]) -> str:
    return f"{float(np.median(values)):.0f}" if values else "-"


if __name__ == "__main__":
    main()
