"""Draw docs/lifecycle.png: how a model version comes to judge parts on a box, and where a
watched rollout rolls back.

The left half is the promotion flow. The right half is not drawn by hand: it asks the real
rollout rule (``lineside_inspect.lifecycle.rollout.judge_watch``, default bounds) whether a
new version's fail rate rolls back, over a grid of previous and new fail rates, so the
picture cannot drift from the code. Needs matplotlib (``pip install 'lineside[train]'``).
Usage:
    python tools/lifecycle_diagram.py [docs/lifecycle.png]
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

from lineside_inspect.lifecycle.config import RolloutSettings
from lineside_inspect.lifecycle.rollout import Watch, judge_watch

BLUE, GREEN, RED, GREY, AMBER = "#dbe9f6", "#d9f0d3", "#f8d7d3", "#eeeeee", "#fdebc8"
DARK_RED, DARK_GREEN, DARK_AMBER = "#b3261e", "#2b6e1f", "#8a5a00"


def box(ax: Axes, x: float, y: float, w: float, h: float, text: str, color: str) -> None:
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.02,rounding_size=0.02",
                                fc=color, ec="#555555", lw=1))
    ax.text(x, y, text, ha="center", va="center", fontsize=8.2, linespacing=1.35)


def arrow(ax: Axes, a: tuple[float, float], b: tuple[float, float], label: str = "",
          color: str = "#333333", rad: float = 0.0, where: float = 0.5) -> None:
    ax.add_patch(FancyArrowPatch(a, b, arrowstyle="-|>", mutation_scale=11, color=color, lw=1.1,
                                 connectionstyle=f"arc3,rad={rad}", shrinkA=2, shrinkB=2))
    if label:
        x, y = a[0] + (b[0] - a[0]) * where, a[1] + (b[1] - a[1]) * where
        ax.text(x + 0.01, y, label, fontsize=7.4, color=color, ha="left", va="center",
                bbox={"fc": "white", "ec": "none", "pad": 0.5})


def flow(ax: Axes) -> None:
    ax.set_xlim(0, 1.02)
    ax.set_ylim(-0.02, 1)
    ax.axis("off")
    ax.set_title("Promotion flow on the box", fontsize=11, loc="left")
    box(ax, 0.17, 0.93, 0.30, 0.09, "candidate package\ncard lineage: dataset revision, parent", BLUE)
    box(ax, 0.62, 0.93, 0.36, 0.09,
        "golden set NAME:VERSION (content-addressed)\ndataset split | good parts | reviewed inspections",
        BLUE)
    box(ax, 0.40, 0.74, 0.52, 0.10,
        "gate: replay both packages (edge runtime, each card's thresholds)\n"
        "pass: escapes <= active's (none new), false rejects <= active's + allowance", GREY)
    box(ax, 0.13, 0.53, 0.22, 0.10, "refused (409 gate_failed)\nunless force + reason", RED)
    box(ax, 0.13, 0.34, 0.22, 0.08, "audit log: who, when, why\nforce_activate / force_shadow", AMBER)
    box(ax, 0.55, 0.53, 0.36, 0.10,
        "shadow (optional): sampled live frames,\nown process at idle priority; verdicts untouched",
        GREY)
    box(ax, 0.55, 0.36, 0.36, 0.08, "disagreements, both results -> review queue\n"
        "GET /v1/models/{name}/shadow vs reviewer truth", GREY)
    box(ax, 0.40, 0.19, 0.52, 0.09,
        "promote: gate + activate (admission recorded with its gate report)\n"
        "then watch: fail rate vs previous version, confirmed false rejects", GREEN)
    box(ax, 0.17, 0.04, 0.30, 0.08,
        "past a bound: previous version back\n(auto_rollback, actor lineside)", RED)
    box(ax, 0.63, 0.04, 0.30, 0.08, "within bounds for N inspections\nand 30 min: complete", GREEN)
    arrow(ax, (0.17, 0.885), (0.30, 0.795))
    arrow(ax, (0.62, 0.885), (0.50, 0.795))
    arrow(ax, (0.24, 0.69), (0.15, 0.58), "failed", DARK_RED)
    arrow(ax, (0.13, 0.48), (0.13, 0.38), "forced", DARK_AMBER)
    arrow(ax, (0.52, 0.69), (0.55, 0.58), "passed (or forced)", DARK_GREEN, where=0.3)
    arrow(ax, (0.55, 0.48), (0.55, 0.40))
    arrow(ax, (0.50, 0.32), (0.45, 0.235), "reviewed: shadow right", DARK_GREEN, where=0.45)
    arrow(ax, (0.24, 0.30), (0.30, 0.235), "", DARK_AMBER)
    arrow(ax, (0.30, 0.145), (0.20, 0.075), "", DARK_RED)
    arrow(ax, (0.50, 0.145), (0.60, 0.075), "", DARK_GREEN)
    box(ax, 0.905, 0.45, 0.19, 0.30, "active learning\n\nnear-threshold, rare-class,\nrandom and shadow-\n"
        "disagreement frames\n-> 'to label' queue\n-> review -> data pull\n-> train -> candidate",
        "#f6f0fa")
    arrow(ax, (0.905, 0.60), (0.81, 0.93), "grows", "#6a3d8a", rad=0.25, where=0.6)


def bounds(ax: Axes) -> None:
    b = RolloutSettings()
    base = np.linspace(0, 0.4, 161)
    new = np.linspace(0, 0.6, 241)
    rolled = np.zeros((len(new), len(base)))
    n = b.min_inspections * 10  # enough inspections that the rate is judged
    for j, p in enumerate(base):
        for i, q in enumerate(new):
            w = Watch("m", "2", "1", "r", datetime.now(UTC), "admin", None, 1000, round(p * 1000))
            w.inspections, w.fails = n, round(q * n)
            rolled[i, j] = judge_watch(w, b)[0] == "rolled_back"
    ax.contourf(base * 100, new * 100, rolled, levels=[-0.5, 0.5, 1.5], colors=[GREEN, RED])
    ax.plot(base * 100, base * 100, color="#555555", lw=0.8, ls="--")
    ax.text(30, 27, "same rate", fontsize=7.5, color="#555555", rotation=28)
    ax.text(4, 50, "rolled back", fontsize=10, color="#8b1a10")
    ax.text(22, 8, "keeps running", fontsize=10, color="#1f5a17")
    ax.set_xlabel("previous version's fail rate, % (its last inspections of the recipe)")
    ax.set_ylabel("new version's fail rate, %")
    ax.set_title(f"Watched rollout: fail-rate bound (after {b.min_inspections} inspections)\n"
                 f"max(previous x {b.max_fail_rate_ratio:g}, previous + "
                 f"{b.max_fail_rate_increase * 100:g} points); also > {b.max_false_rejects} "
                 "confirmed false rejects", fontsize=9.5, loc="left")


def main(out: Path) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 6.4), gridspec_kw={"width_ratios": [1.45, 1]})
    flow(left)
    bounds(right)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs/lifecycle.png"))
