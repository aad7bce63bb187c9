"""The counts of one recipe judged by one set of models (:class:`Track`), and how they are
saved to a file and read back (:meth:`Track.saved`, :meth:`Track.from_saved`), for the
fail-rate alarm (``lifecycle/alarm.py``, ``lifecycle/alarm_file.py``)."""

from __future__ import annotations

import base64
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np

from lineside_inspect.lifecycle.config import FailRateAlarmSettings, bound_of
from lineside_inspect.store.utc import iso_times

State = Literal["learning", "ok", "alarm"]


@dataclass
class Track:
    """The counts of one recipe judged by one set of models."""

    recipe: str
    model: str
    version: str
    judged_by: str  # "model version" (+ " + good-only model version" when fused)
    content: str  # the recipe's content, hashed
    window: int
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    baseline_inspections: int = 0
    baseline_fails: int = 0
    recent: deque[bool] = field(init=False)
    recent_fails: int = 0
    state: State = "learning"
    changed_at: datetime | None = None  # when the alarm was last raised or cleared
    why: str = ""
    declared: float | None = None  # the recipe's usual_fail_rate: nothing to learn

    def __post_init__(self) -> None:
        self.recent = deque(maxlen=self.window)
        if self.declared is not None and self.state == "learning":
            self.state = "ok"

    @property
    def usual(self) -> float | None:
        if self.declared is not None:
            return self.declared
        n = self.baseline_inspections
        return self.baseline_fails / n if n else None

    @property
    def recent_rate(self) -> float | None:
        return self.recent_fails / len(self.recent) if self.recent else None

    def to_json(self, s: FailRateAlarmSettings) -> dict[str, Any]:
        usual = self.usual
        return {"recipe": self.recipe, "judged_by": self.judged_by, "state": self.state,
                "since": self.started_at, "changed_at": self.changed_at, "why": self.why,
                "baseline_inspections": self.baseline_inspections,
                "baseline_needed": 0 if self.declared is not None else s.baseline_inspections,
                "usual_from": "learned" if self.declared is None else "recipe",
                "usual_fail_rate": usual,
                "recent_inspections": len(self.recent), "recent_fail_rate": self.recent_rate,
                "bound": None if usual is None or self.state == "learning" else bound_of(usual, s)}

    def details(self, s: FailRateAlarmSettings) -> dict[str, Any]:
        """:meth:`to_json` with its times as ISO text: an audit entry's details."""
        return iso_times(self.to_json(s))

    # -- saved and read back ------------------------------------------------------------------
    def saved(self, recent: bytes) -> dict[str, Any]:
        """As JSON-able data, its window given apart (bytes of 0/1, copied under the
        alarm's lock): the verdicts packed 8 to a byte (fail is 1), base64."""
        bits = np.packbits(np.frombuffer(recent, np.uint8)).tobytes()
        return {"model": self.model, "version": self.version, "judged_by": self.judged_by,
                "content": self.content, "started_at": self.started_at.isoformat(),
                "baseline_inspections": self.baseline_inspections,
                "baseline_fails": self.baseline_fails,
                "recent": base64.b64encode(bits).decode("ascii"), "recent_len": len(recent),
                "state": self.state,
                "changed_at": None if self.changed_at is None else self.changed_at.isoformat(),
                "why": self.why, "declared": self.declared}

    @classmethod
    def from_saved(cls, recipe: str, d: dict[str, Any], s: FailRateAlarmSettings) -> Track:
        """:meth:`saved` read back (ValueError, KeyError or TypeError when it is not one:
        every field of its type, every count consistent with the others and ``s``)."""
        n, fails, size = (_int(d, k) for k in ("baseline_inspections", "baseline_fails",
                                                "recent_len"))
        state = d["state"]
        if state not in ("learning", "ok", "alarm"):
            raise ValueError(f"recipe {recipe}: state {state!r}")
        if not 0 <= size <= s.window or (state == "alarm" and size != s.window):
            raise ValueError(f"recipe {recipe}: {size} recent inspections in state {state}")
        packed = base64.b64decode(_str(d, "recent"), validate=True)
        if len(packed) != (size + 7) // 8:
            raise ValueError(f"recipe {recipe}: recent does not hold {size} inspections")
        recent = np.unpackbits(np.frombuffer(packed, np.uint8))[:size].astype(bool).tolist()
        declared = d.get("declared")
        if declared is not None:
            if type(declared) not in (int, float) or not 0 <= declared <= 1 or n or fails \
                    or state == "learning":
                raise ValueError(f"recipe {recipe}: usual {declared!r} given, baseline "
                                 f"{fails} of {n}, state {state}")
            declared = float(declared)
        elif not 0 <= fails <= n <= s.baseline_inspections or (state == "learning") != (
                n < s.baseline_inspections):
            raise ValueError(f"recipe {recipe}: baseline {fails} fails of {n} in state {state}")
        changed = d.get("changed_at")
        t = cls(recipe, _str(d, "model"), _str(d, "version"), _str(d, "judged_by"),
                _str(d, "content"), s.window, started_at=_utc(_str(d, "started_at")),
                baseline_inspections=n, baseline_fails=fails, state=state,
                changed_at=None if changed is None else _utc(_str(d, "changed_at")),
                why=_str(d, "why"), declared=declared)
        t.recent.extend(recent)
        t.recent_fails = sum(recent)
        return t


def _int(d: dict[str, Any], key: str) -> int:
    value = d[key]
    if type(value) is not int:  # not a bool, nor 2.9 taken for 2
        raise TypeError(f"{key}: {value!r} is not an integer")
    return value


def _str(d: dict[str, Any], key: str) -> str:
    value = d[key]
    if not isinstance(value, str) or len(value) > 4096:
        raise TypeError(f"{key}: not a string (up to 4096 characters)")
    return value


def _utc(text: str) -> datetime:
    when = datetime.fromisoformat(text)
    if when.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone")
    try:
        return when.astimezone(UTC)
    except OverflowError:  # year 1 at +05:00: shown nowhere
        raise ValueError(f"{text!r} is out of range in UTC") from None
