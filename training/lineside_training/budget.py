"""Training to a time budget: the schedule (warm-up, cosine, EMA) is planned in steps and
re-fitted to the budget from the throughput measured as the run goes.

A guess made before training (epochs read off ``bench train``, on a machine that may be
busy) is wrong in either direction; the run itself knows how long its steps and its
evaluations take. :class:`Budget` re-plans the total number of steps after the first few
steps and then regularly (each epoch, and a few times within long epochs) so that the
last step and the final evaluation end at the budget; the learning-rate and EMA
schedules read the plan (:class:`SchedulePlan`), so a re-fit stretches or shrinks the
whole cosine, not only where it is cut.
"""

from __future__ import annotations

import json
import math
import re
import statistics
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(min|sec|h|m|s)?", re.IGNORECASE)
_UNIT_S = {"h": 3600.0, "m": 60.0, "min": 60.0, "s": 1.0, "sec": 1.0}
EMA_WINDOW = 0.2  # a budgeted run's EMA averages over at most this share of its steps
EMA_RAMP = 0.1  # and ramps its decay up over this share (cf. the fixed 500 updates)
WARMUP_MAX = 0.2  # warm-up takes at most this share of a budgeted run
REFITS_PER_EPOCH = 4  # long epochs are re-planned within, not only at their end
# Until this share of the budget is spent a plan is provisional: it may not end the run
# before the next re-fit. The first steps on a busy machine (or a niced run while tests
# run) can be 50x slower than the rest; planned from them alone, a 25-minute run planned
# 2 steps and ended after its third.
PROVISIONAL = 0.25
LOG_CHANGE = 0.05  # a re-fit is logged when it moves the plan by this share
LOG_SPACING = 2  # or the evaluation spacing by this many epochs (by one it dithers)
EVAL_GUESS_MAX = 0.1  # while provisional, an untimed evaluation is guessed at most this share
NO_STRETCH_AFTER = 0.5  # past this share of the budget a nearly done cosine is not stretched
# A mid-run evaluation less than this share of a spacing before the run's last step is
# skipped: the final evaluation follows soon (a 15-minute run evaluated at 14.0 minutes
# and again at its end, 14.9; the 28 s of the first bought ~35 steps)
NEAR_FINAL = 0.5
# A step costs what the last this-many steps took on average, not the session's mean: on
# a machine another job began to load halfway through a 30-minute run, steps slowed 3x
# and the mean lagged behind them; with evaluations timed before the load, the run
# overran its budget (session 53). The mean of a window, not its median: a loader with
# workers gives fast and slow steps by turns, whose median is the fast ones.
RECENT_STEPS = 30


def parse_duration(text: str | float | int) -> float:
    """Seconds from ``30m``, ``90s``, ``1h``, ``1h30m`` or ``1.5h``; a bare number is
    minutes (as ``time_limit_minutes``). Raises ``ValueError`` naming the forms."""
    if not isinstance(text, str | int | float) or isinstance(text, bool):
        # a config's list, mapping or yes: an AttributeError traceback from the config's
        # validation, and from --resume saying the value is not applied (final read, 46)
        raise ValueError(f"{json.dumps(text, default=str)} is not a duration: write e.g. 30m, 90s, 1h or "
                         "1h30m (a bare number is minutes)")
    if isinstance(text, int | float):
        seconds = float(text) * 60
    else:
        s = text.strip().replace(" ", "")
        if re.fullmatch(r"\d+(?:\.\d+)?", s):
            seconds = float(s) * 60
        elif s and re.fullmatch(rf"(?:{_DURATION.pattern})+", s, re.IGNORECASE) and \
                all(u for _, u in _DURATION.findall(s)):
            seconds = sum(float(n) * _UNIT_S[u.lower()] for n, u in _DURATION.findall(s))
        else:
            raise ValueError(f"{text!r} is not a duration: write e.g. 30m, 90s, 1h or 1h30m "
                             "(a bare number is minutes)")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"{text!r}: a time budget must be positive")
    return seconds


def budget_text(text: str | float | int) -> str:
    """A budget as a config keeps it, in seconds (``1800s``), read back the same by
    :func:`parse_duration`: written with ``:g`` a budget of 278 hours or more was
    ``1.0008e+06s``, which no duration reads, and the run stopped on a traceback."""
    seconds = parse_duration(text)
    kept = f"{seconds:.3f}".rstrip("0").rstrip(".")
    if kept == "0":  # under half a millisecond: "0s", which the run refused as not positive
        kept = format(Decimal(repr(seconds)), "f")  # all its digits, never an exponent
    return kept + "s"


def format_duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


@dataclass
class SchedulePlan:
    """What the learning-rate and EMA schedules follow; mutable, so a re-fit moves them."""

    total_steps: int
    warmup_steps: int
    ema_decay: float
    ema_ramp: float = 500.0  # EMA updates over which the decay ramps up from 0


def fitted_ema(decay: float, total_steps: int) -> tuple[float, float]:
    """The EMA decay and ramp for a run of ``total_steps``: an average over at most
    ``EMA_WINDOW`` of the run (a 0.999 decay averages ~1000 steps, longer than a short
    budget's whole run), ramped over ``EMA_RAMP`` of it."""
    window = max(EMA_WINDOW * total_steps, 5.0)
    return min(decay, 1 - 1 / window), max(EMA_RAMP * total_steps, 5.0)


@dataclass
class Budget:
    """A training time budget in seconds, measured from the start of the run on the
    monotonic clock, which a clock change cannot move (a resumed run carries what it
    already spent); the run's ``elapsed_min`` counts on the same clock.

    Steps and evaluations are timed separately: training steps cost ``step_s`` each and
    every evaluation ``eval_s``; the plan leaves time for the evaluations the remaining
    epochs will do and for the final one."""

    seconds: float
    steps_per_epoch: int
    eval_every: int  # epochs between evaluations now: the config's, widened by eval_share
    plan: SchedulePlan
    warmup_wanted: int  # the config's warm-up in steps, before the WARMUP_MAX cap
    base_decay: float  # the config's EMA decay, before fitting
    # until an evaluation has been timed, its cost is guessed from the training step: a
    # forward pass (~1/3 of forward + backward) per validation image, at the input size
    # rather than the crop size
    eval_images: int = 0
    eval_pixel_ratio: float = 1.0  # (input size / crop size) ** 2
    batch_size: int = 1
    # the most of the budget evaluations may take: a 45 s evaluation every 2 epochs took a
    # fifth of a 15-minute run (and its steps); 1 keeps eval_every as the config sets it
    eval_share: float = 1.0
    spent_before: float = 0.0  # seconds of earlier (resumed) sessions
    clock: Callable[[], float] = time.monotonic  # what elapsed() reads (a test's own)
    started: float | None = None  # on clock; None: when made
    step: int = 0  # steps done (a resumed run starts at its saved step)
    train_s: float = 0.0  # measured seconds in training steps, this session
    steps_timed: int = 0
    eval_s: float = 0.0  # the median of the evaluations' seconds
    eval_times: list[float] = field(default_factory=list)
    eval_step_s: list[float] = field(default_factory=list)  # the step cost when each was timed
    recent: deque[float] = field(default_factory=lambda: deque(maxlen=RECENT_STEPS))
    eval_timed: bool = False
    refits: int = 0
    logged_steps: int = 0  # the plan's length when a re-fit was last logged
    first_seen: bool = False
    stopped: str = ""  # why the run ended early, if it did
    eval_every_wanted: int = 0  # the config's eval_every (set from eval_every when made)
    evaluated_epoch: int = 0  # epochs done at the last evaluation (or at the start)
    # the epoch running (epochs done before it) and the step it started at: epochs end
    # every steps_per_epoch steps from there (a resumed or shortened epoch moves the grid)
    epoch: int = 0
    epoch_start: int = 0
    logged_every: int = 0  # the spacing last said in the log

    def __post_init__(self) -> None:
        self.eval_every_wanted = self.eval_every_wanted or self.eval_every
        self.logged_every = self.eval_every
        if self.started is None:
            self.started = self.clock()

    def elapsed(self) -> float:
        assert self.started is not None  # set when made
        return self.spent_before + self.clock() - self.started

    def remaining(self) -> float:
        return self.seconds - self.elapsed()

    def record_step(self, seconds: float) -> None:
        self.step += 1
        if not self.first_seen:  # a session's first step pays for start-up, not for training
            self.first_seen = True
            return
        self.train_s += seconds
        self.steps_timed += 1
        self.recent.append(seconds)

    def record_steps(self, steps: int, seconds: float) -> None:
        """``steps`` taken in ``seconds`` in all, not timed one by one (several ranks: an
        epoch's time on rank 0's clock)."""
        self.step += steps
        self.train_s += seconds
        self.steps_timed += steps
        if steps:
            self.recent.extend([seconds / steps] * min(steps, RECENT_STEPS))

    def step_cost(self) -> float:
        """Seconds a step takes now: the mean of the last ``RECENT_STEPS`` timed steps."""
        if self.recent:
            return sum(self.recent) / len(self.recent)
        return self.train_s / self.steps_timed if self.steps_timed else 0.0

    def record_eval(self, seconds: float, epochs_done: int) -> None:
        """An evaluation took ``seconds`` after ``epochs_done`` epochs."""
        self.evaluated_epoch = epochs_done
        # the median of the evaluations so far: one slowed by a burst of load (or one
        # quick on a cache) would swing the plan, and the learning rate with it
        self.eval_times.append(seconds)
        self.eval_step_s.append(self.step_cost())
        self.eval_s, self.eval_timed = statistics.median(self.eval_times), True

    def eval_cost(self) -> float:
        """Seconds the next evaluation will take: the median of those timed, each scaled by
        how much slower (or quicker) steps are now than when it was timed (an evaluation
        timed on an idle machine took 3x as long once a job loaded it, and the final one
        overran the budget by that; session 53); guessed from the steps until one is."""
        if self.eval_timed:
            now = self.step_cost()
            return statistics.median(t * (now / then if now > 0 and then > 0 else 1.0)
                                     for t, then in zip(self.eval_times, self.eval_step_s, strict=True))
        if not self.steps_timed:
            return self.eval_s
        per_image = self.step_cost() / self.batch_size
        guess = per_image * self.eval_pixel_ratio * self.eval_images / 3
        if self.elapsed() < PROVISIONAL * self.seconds:  # from a few (maybe starved) steps
            guess = min(guess, EVAL_GUESS_MAX * self.seconds)
        return guess

    def due(self) -> bool:
        """Re-plan now? After 3 and 10 measured steps, then every quarter epoch."""
        every = max(1, self.steps_per_epoch // REFITS_PER_EPOCH)
        return self.steps_timed in (3, 10) or (self.steps_timed > 10 and self.step % every == 0)

    def refit(self) -> str | None:
        """Re-plan the total steps so the run ends at the budget; returns a log line when
        the plan changed (or None). Needs at least one measured step."""
        if not self.steps_timed:
            return None
        step_s = self.step_cost()
        eval_s = self.eval_cost()
        total = self._fit(step_s, eval_s)
        for _ in range(4):  # fewer evaluations leave time for more steps, which may widen again
            every = self.spacing(total, eval_s)
            if every == self.eval_every:
                break
            self.eval_every = every
            total = self._fit(step_s, eval_s)
        left = self.remaining() - eval_s
        provisional = self.elapsed() < PROVISIONAL * self.seconds and left > step_s
        if provisional:  # keep going to the next re-fit: a slow start is measured again
            total = max(total, self.step + max(1, self.steps_per_epoch // REFITS_PER_EPOCH))
        old = self.plan.total_steps
        if self.refits and total > old and self.step > 0.9 * old and \
                self.elapsed() > NO_STRETCH_AFTER * self.seconds:
            total = old  # the cosine is nearly done: stretching it now would raise the LR again
        self.plan.total_steps = max(total, self.step)
        # warm-up is re-planned until passed, and while the plan is provisional (a plan cut
        # short by a slow start would otherwise leave a stretched run a few steps of it)
        if self.step < self.plan.warmup_steps or self.refits == 0 or provisional:
            self.plan.warmup_steps = max(min(self.warmup_wanted, int(WARMUP_MAX * self.plan.total_steps)),
                                         min(self.step, self.plan.warmup_steps))
        self.plan.ema_decay, self.plan.ema_ramp = fitted_ema(self.base_decay, self.plan.total_steps)
        first, self.refits = self.refits == 0, self.refits + 1
        was = self.logged_steps or old
        if not self._worth_saying(first, old, was):
            return None
        self.logged_steps, self.logged_every = self.plan.total_steps, self.eval_every
        how = "measured" if self.eval_timed else "guessed"
        spaced = "" if self.eval_every == self.eval_every_wanted else (
            f" (widened from {self.eval_every_wanted} to keep evaluations within "
            f"{self.eval_share:.0%} of the budget)")
        return (f"time budget: {step_s:.2f} s/step measured, {eval_s:.1f} s per evaluation {how}, "
                f"{format_duration(self.remaining())} left: plan {self.plan.total_steps} steps "
                f"({self.plan.total_steps / self.steps_per_epoch:.1f} epochs; was {was}), "
                f"warm-up {self.plan.warmup_steps}, EMA decay {self.plan.ema_decay:.4f}, "
                f"an evaluation every {self.eval_every} epochs{spaced}")

    def _worth_saying(self, first: bool, old: int, was: int) -> bool:
        """Whether a re-fit goes in the log: the first (a measurement replaces the guess),
        then one that moves the plan by ``LOG_CHANGE`` or more since last said, or the
        evaluation spacing by ``LOG_SPACING`` epochs or more, or first widens it beyond
        the config's. A short run re-fits every few steps (a 1-minute run logged 67
        lines), and its spacing, a rounded share of the plan, goes back and forth by an
        epoch as the plan moves by a step or two: a 3-minute run logged "every 6 epochs",
        "7", "6", "7" with the plan moved by 0-4%. The next line said, and the run's
        last, give the plan as it is then."""
        steps = self.plan.total_steps
        if first:
            return old != steps or self.eval_every != self.logged_every
        widened = self.logged_every == self.eval_every_wanted < self.eval_every
        return abs(steps - was) >= max(1, LOG_CHANGE * was) or widened or \
            abs(self.eval_every - self.logged_every) >= LOG_SPACING

    def _fit(self, step_s: float, eval_s: float) -> int:
        """The most steps that fit the time left with the mid-run evaluations they bring
        (:meth:`evaluations_before`), the final evaluation kept aside."""
        left = self.remaining() - eval_s
        lo = self.step
        hi = self.step + max(0, math.floor(left / max(step_s, 1e-6)))
        # the cost only grows with the plan's length: bisect for the longest. A plan that
        # stops just short of keeping one more evaluation leaves up to that evaluation's
        # time over; the next re-fit, no longer counting it, gives the time to steps
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if (mid - self.step) * step_s + self.evaluations_before(mid) * eval_s <= left:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def evaluations_before(self, total_steps: int) -> int:
        """The mid-run evaluations still to come in a plan of ``total_steps`` (the final
        one aside): one every ``eval_every`` epochs since the last, except one that would
        come less than ``NEAR_FINAL`` of a spacing before the end (see :meth:`evaluate_now`)."""
        # epoch e (counted as epochs done) ends at epoch_start + (e - epoch) * steps_per_epoch;
        # the next evaluation is due at the end of the epoch running if it is overdue
        first = max(self.evaluated_epoch + self.eval_every, self.epoch + 1)
        last = self.epoch + math.floor(
            (total_steps - self._near_final() - self.epoch_start) / self.steps_per_epoch)
        return 0 if last < first else (last - first) // self.eval_every + 1

    def _near_final(self) -> float:
        return max(1.0, NEAR_FINAL * self.eval_every * self.steps_per_epoch)

    def spacing(self, total_steps: int, eval_s: float) -> int:
        """Epochs between evaluations for a plan of ``total_steps``: the config's
        ``eval_every``, widened (never below it) so that the run's evaluations, the final
        one included, take at most ``eval_share`` of the budget."""
        if self.eval_share >= 1 or eval_s <= 0:
            return self.eval_every_wanted
        allowed = max(1, math.floor(self.eval_share * self.seconds / eval_s))
        epochs = total_steps / self.steps_per_epoch
        return max(self.eval_every_wanted, math.ceil(epochs / allowed))

    def evaluate_now(self, epochs_done: int) -> bool:
        """Whether the epoch just done is due an evaluation (the final one aside):
        ``eval_every`` epochs since the last, which a widened spacing moves on, unless the
        final evaluation is less than ``NEAR_FINAL`` of a spacing away."""
        return epochs_done - self.evaluated_epoch >= self.eval_every and \
            self.steps_left() >= self._near_final()

    def steps_left(self) -> int:
        return max(0, self.plan.total_steps - self.step)

    def out_of_time(self) -> bool:
        """No room for another step and the final evaluation (a slowed machine)."""
        return self.remaining() < self.step_cost() + self.eval_cost()
