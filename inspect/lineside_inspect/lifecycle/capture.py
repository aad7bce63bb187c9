"""Active-learning capture: which inspections to keep for labelling, beyond the store's
fixed share of passes, within a cap per reason per hour.

Reasons, in the order they are tried (the first one under its cap wins):

- ``near_threshold``: a detection scored within ``near_threshold`` of its class's
  operating threshold, either side (a pass that almost failed, a fail that almost passed:
  where the model is least sure, and where a label teaches it most);
- ``rare_class``: a counted defect of a class under ``rare_share`` of the defects counted
  since the server started (the classes the training set is shortest of);
- ``random``: a small random sample of everything (an unbiased view);
- ``shadow_disagreement``: the shadow model disagreed (marked by the shadow worker after
  the verdict, see :mod:`.shadow`; capped here too).

The decision runs on the request path (inside the store's ``save``), so it is a few
comparisons and counters under a lock: nothing waits on disk or the database.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from typing import TYPE_CHECKING

import numpy as np

from lineside_inspect.lifecycle.config import CaptureSettings
from lineside_inspect.recipes.rules import anomaly_threshold, class_minimums

if TYPE_CHECKING:
    from lineside_inspect.inspector import Inspection

REASONS = ("near_threshold", "rare_class", "random", "shadow_disagreement")
MIN_DEFECTS_FOR_RARITY = 20  # below this many defects seen, no class is called rare yet


class CapturePolicy:
    def __init__(self, settings: CaptureSettings, *, seed: int | None = None) -> None:
        self.settings = settings
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._hour = -1
        self._used: Counter[str] = Counter()
        self.seen: Counter[str] = Counter()  # counted defects per class since start

    def _take(self, reason: str, now: float | None = None) -> bool:
        """One of this hour's ``per_hour`` places for ``reason``, if one is left."""
        hour = int((time.time() if now is None else now) // 3600)
        with self._lock:
            if hour != self._hour:
                self._hour, self._used = hour, Counter()
            if self._used[reason] >= self.settings.per_hour:
                return False
            self._used[reason] += 1
            return True

    def used(self) -> dict[str, int]:
        with self._lock:
            return {r: self._used[r] for r in REASONS}

    def reasons(self, inspection: Inspection) -> list[str]:
        """Every reason ``inspection`` would be kept for (caps aside)."""
        out = []
        raw = inspection.detections
        if raw is not None and len(raw):
            thr = class_minimums(inspection.recipe, inspection.detector.card.thresholds,
                                 raw.class_names)[raw.class_ids]
            if np.any(np.abs(raw.scores - thr) <= self.settings.near_threshold):
                out.append("near_threshold")
        finding = inspection.anomaly  # a good-only model: its image score is what is judged
        if finding is not None and "near_threshold" not in out and abs(
                finding.score - anomaly_threshold(inspection.recipe, finding)) \
                <= self.settings.near_threshold:
            out.append("near_threshold")
        labels = inspection.defects.labels
        with self._lock:
            total = sum(self.seen.values())
            rare = total >= MIN_DEFECTS_FOR_RARITY and any(
                self.seen[lb] < self.settings.rare_share * total for lb in set(labels))
            self.seen.update(labels)
        if rare:
            out.append("rare_class")
        if self._rng.random() < self.settings.random_rate:
            out.append("random")
        return out

    def __call__(self, inspection: Inspection) -> str | None:
        """The reason to keep ``inspection`` for labelling, or None (the store's hook)."""
        if not self.settings.enabled:
            return None
        for reason in self.reasons(inspection):
            if self._take(reason):
                return reason
        return None

    def allow(self, reason: str) -> bool:
        """A place for a capture decided elsewhere (a shadow disagreement), under the cap."""
        return self.settings.enabled and self._take(reason)
