"""A training run's torch threads: set, inherited from OMP_NUM_THREADS, or the cores the
load average leaves free."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from lineside_training import threads as threads_mod
from lineside_training.threads import choose_threads, own_load


@pytest.fixture(autouse=True)
def _restore_threads(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    yield
    torch.set_num_threads(before)


def test_a_busy_host_leaves_the_run_the_free_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    """Beside a one-thread job on 2 cores the run takes one thread (two thrashed: 5-17
    img/s against 30); on an idle host both; never fewer than one."""
    monkeypatch.setattr(threads_mod, "_TORCH_DEFAULT", 2)
    assert choose_threads(None, load=1.0, cores=2, own=0.0)[0] == 1
    assert torch.get_num_threads() == 1
    n, why = choose_threads(None, load=0.1, cores=2, own=0.0)
    assert (n, torch.get_num_threads()) == (2, 2)
    assert "2 cores, 1-minute load 0.1 from other work" in why
    assert choose_threads(None, load=7.5, cores=2, own=0.0)[0] == 1
    # no more than torch itself would take (it counts physical cores, not hyper-threads)
    assert choose_threads(None, load=0.0, cores=16, own=0.0)[0] == 2


def test_its_own_last_run_is_not_other_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Out-of-fold calibration trains its folds one after another in one process: the load
    of the fold before (2 threads for 30 minutes) must not leave the next fold one."""
    monkeypatch.setattr(threads_mod, "_TORCH_DEFAULT", 2)
    assert own_load(cpu_s=2 * 1800, wall_s=1800) == pytest.approx(2.0)
    assert own_load(cpu_s=5, wall_s=5) == pytest.approx(0.080, abs=0.001)  # loading a set
    assert own_load(cpu_s=1, wall_s=0) == 0.0
    assert choose_threads(None, load=2.1, cores=2, own=own_load(3600, 1800))[0] == 2
    # beside it, another job's core still counts
    assert choose_threads(None, load=3.0, cores=2, own=2.0)[0] == 1


def test_a_set_number_or_omp_num_threads_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    assert choose_threads(3, load=9.0, cores=2) == (3, "set by threads")
    assert torch.get_num_threads() == 3
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # torchrun's per-process setting
    assert choose_threads(None, load=0.0, cores=2) == (1, "from OMP_NUM_THREADS")


def test_the_run_log_says_its_threads(tiny_run: Path) -> None:
    log = (tiny_run / "train.log").read_text()
    assert "torch threads: 2 (set by threads)" in log


def test_work_that_has_ended_does_not_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """The load average lags a minute: right after a bench or a test run it still says a
    core is busy. What other processes use now bounds it; a job running now counts in both."""
    monkeypatch.setattr(threads_mod, "_TORCH_DEFAULT", 2)
    n, why = choose_threads(None, load=1.5, cores=2, own=0.0, busy=0.1)
    assert n == 2 and "1-minute load 1.5 from other work, 0.1 cores busy now" in why
    assert choose_threads(None, load=1.0, cores=2, own=0.0, busy=1.0)[0] == 1
    # a job that started a moment ago has not reached the average yet: it is not counted
    assert choose_threads(None, load=0.2, cores=2, own=0.0, busy=1.0)[0] == 2


def test_busy_cores_sees_a_spinning_process() -> None:
    import subprocess
    import sys

    idle = threads_mod.busy_cores(0.3)
    assert idle is not None and idle >= 0.0
    # measured once the spinner runs (a fixed 0.3 s could pass before a loaded host had
    # even started the interpreter): it says so, then spins
    spin = subprocess.Popen([sys.executable, "-c", "print('spinning', flush=True)\nwhile True: pass"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert spin.stdout is not None and spin.stdout.readline() == "spinning\n"
        seen = threads_mod.busy_cores(0.5)
    finally:
        spin.kill()
        spin.wait()
        if spin.stdout is not None:
            spin.stdout.close()
    assert seen is not None and seen >= 0.5
