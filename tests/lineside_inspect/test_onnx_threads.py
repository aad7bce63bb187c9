"""Inferences that overlap share the cores instead of each asking for all of them (issue
#12: on 2 cores, two runs of two threads each put four threads on two cores and cost ~9%
of throughput). A run alone keeps every core; one that starts while another is in
progress runs on a lean session of ``cores // overlap`` threads; ``threads`` set wins."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from lineside_inspect.config import Settings
from lineside_inspect.runtime import cores
from lineside_inspect.runtime import session as session_module
from lineside_inspect.runtime.detector import Detector
from lineside_inspect.runtime.session import OnnxSession
from lineside_inspect.server.app import create_app

MODEL = Path(__file__).resolve().parents[2] / "models" / "deeppcb" / "1"
GRAPH = MODEL / "model.onnx"


def _threads(s: ort.InferenceSession) -> int:
    return int(s.get_session_options().intra_op_num_threads)


def _leans(s: OnnxSession) -> list[ort.InferenceSession]:
    assert s._lean is not None
    leans = [s._lean.get() for _ in range(s._lean.qsize())]
    for lean in leans:
        s._lean.put(lean)
    return leans


def test_a_run_that_overlaps_another_goes_lean(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(session_module, "available_cores", lambda: 2)
    s = OnnxSession(GRAPH, device="cpu", overlap=2, spinning=False)
    assert s.lean_threads == 1 and {_threads(x) for x in _leans(s)} == {1}
    assert len({id(x) for x in _leans(s)}) == 1  # one-thread runs share one session
    served: list[ort.InferenceSession] = []
    both_in = threading.Barrier(2, timeout=30)
    run = s._run

    def held(session: ort.InferenceSession, batch: np.ndarray) -> list[np.ndarray]:
        served.append(session)
        both_in.wait()  # the first run is still in progress when the second starts
        return run(session, batch)

    monkeypatch.setattr(s, "_run", held)
    batch = np.random.default_rng(0).integers(0, 255, (1, 3, 640, 640), dtype=np.uint8)
    out: dict[int, list[np.ndarray]] = {}
    first = threading.Thread(target=lambda: out.__setitem__(0, s.run(batch)), daemon=True)
    first.start()
    _until(lambda: bool(served), first)  # the first run holds the wide session
    out[1] = s.run(batch)
    first.join(timeout=30)
    assert served == [s.session, _leans(s)[0]]
    for a, b in zip(out[0], out[1], strict=True):  # the same graph: the same answer
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3)
    monkeypatch.undo()
    assert s.run(batch) and session_module._RUNNING.count == 0  # alone again, none counted
    assert s._lean is not None and s._lean.qsize() == 2  # every lean slot given back


def _until(done: Callable[[], bool], thread: threading.Thread) -> None:
    deadline = time.monotonic() + 30
    while not done():
        assert thread.is_alive() and time.monotonic() < deadline, "the first run never started"
        time.sleep(0.01)


def test_another_models_run_counts_as_overlap(monkeypatch: pytest.MonkeyPatch) -> None:
    """The cores are the process's: a run of one model while another model's is in
    progress goes lean (two recipes, a fused good-only model, versions during a swap)."""
    monkeypatch.setattr(session_module, "available_cores", lambda: 2)
    a = OnnxSession(GRAPH, device="cpu", overlap=2, spinning=False)
    b = OnnxSession(GRAPH, device="cpu", overlap=2, spinning=False)
    served: list[ort.InferenceSession] = []
    release = threading.Event()
    run_a = a._run

    def held(session: ort.InferenceSession, batch: np.ndarray) -> list[np.ndarray]:
        served.append(session)
        assert release.wait(30)
        return run_a(session, batch)

    monkeypatch.setattr(a, "_run", held)
    batch = np.zeros((1, 3, 640, 640), dtype=np.uint8)
    first = threading.Thread(target=a.run, args=(batch,), daemon=True)
    first.start()
    _until(lambda: bool(served), first)
    seen_b: list[ort.InferenceSession] = []
    run_b = b._run
    monkeypatch.setattr(b, "_run", lambda session, x: seen_b.append(session) or run_b(session, x))
    b.run(batch)
    release.set()
    first.join(timeout=30)
    assert served == [a.session] and seen_b == _leans(b)[:1]
    assert session_module._RUNNING.count == 0


def test_a_run_that_raises_gives_back_its_lean_session(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(session_module, "available_cores", lambda: 2)
    s = OnnxSession(GRAPH, device="cpu", overlap=2, spinning=False)
    batch = np.zeros((1, 3, 640, 640), dtype=np.uint8)
    with session_module._RUNNING.lock:
        session_module._RUNNING.count += 1  # another inference in progress: this one goes lean
    try:
        with pytest.raises(Exception, match=r"(?i)invalid|shape|rank|dimension"):
            s.run(batch[0])  # rank 3: onnxruntime refuses it mid-run
        assert s.run(batch)  # lean again, and the session was given back
    finally:
        with session_module._RUNNING.lock:
            session_module._RUNNING.count -= 1
    assert session_module._RUNNING.count == 0 and s._lean is not None and s._lean.qsize() == 2


def test_fewer_cores_than_the_machine_has_caps_every_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """onnxruntime's default asks for the machine's cores; in a container limited to fewer
    (a cpuset, a quota) a run alone asks for those it has."""
    monkeypatch.setattr(session_module, "available_cores", lambda: 3)
    monkeypatch.setattr(session_module, "machine_cores", lambda: 16)
    s = OnnxSession(GRAPH, device="cpu", overlap=3)
    assert _threads(s.session) == 3 and s.lean_threads == 1
    monkeypatch.setattr(session_module, "available_cores", lambda: 16)
    assert _threads(OnnxSession(GRAPH, device="cpu").session) == 0  # onnxruntime's default


def test_cores_from_sysfs_and_cgroup_quota(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    sys_cpu, cgroup = tmp_path / "cpu", tmp_path / "cgroup"
    for n, (package, core) in enumerate([(0, 0), (0, 0), (0, 1), (0, 1), (1, 0), (1, 0)]):
        topology = sys_cpu / f"cpu{n}" / "topology"  # two hyper-threads per core
        topology.mkdir(parents=True)
        (topology / "physical_package_id").write_text(f"{package}\n")
        (topology / "core_id").write_text(f"{core}\n")
    monkeypatch.setattr(cores, "SYS_CPU", sys_cpu)
    monkeypatch.setattr(cores, "CGROUP", cgroup)
    assert cores.physical_cores(range(6)) == 3 and cores.physical_cores([0, 1]) == 1
    assert cores.physical_cores([0, 7]) == 2  # sysfs silent on cpu7: the logical count
    assert cores.cpu_quota() is None
    (cgroup / "cpu").mkdir(parents=True)
    (cgroup / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    (cgroup / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cores.cpu_quota() is None
    (cgroup / "cpu" / "cpu.cfs_quota_us").write_text("150000\n")
    assert cores.cpu_quota() == 2  # v1: 1.5 CPUs, rounded up
    (cgroup / "cpu.max").write_text("max 100000\n")
    assert cores.cpu_quota() is None  # v2 says: no quota
    (cgroup / "cpu.max").write_text("100000 100000\n")
    assert cores.cpu_quota() == 1
    monkeypatch.setattr(cores, "_allowed_cpus", lambda: [0, 1, 2, 3, 4, 5])
    assert cores.available_cores() == 1  # three cores, a quota of one
    (cgroup / "cpu.max").unlink()
    (cgroup / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cores.available_cores() == 3


def test_wider_lean_runs_each_get_a_thread_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(session_module, "available_cores", lambda: 8)
    s = OnnxSession(GRAPH, device="cpu", overlap=2)
    leans = _leans(s)
    assert s.lean_threads == 4 and [_threads(x) for x in leans] == [4, 4]
    assert len({id(x) for x in leans}) == 2


@pytest.mark.parametrize(("cores", "threads", "overlap"), [(2, 2, 2), (2, None, 1), (1, None, 2)])
def test_no_lean_session_when_it_would_change_nothing(monkeypatch: pytest.MonkeyPatch, cores: int,
                                                      threads: int | None, overlap: int) -> None:
    """``threads`` set is what every run uses; a caller that never overlaps, or one core,
    needs no second session."""
    monkeypatch.setattr(session_module, "available_cores", lambda: cores)
    s = OnnxSession(GRAPH, device="cpu", threads=threads, overlap=overlap)
    assert s._lean is None and s.lean_threads is None
    if threads:
        assert _threads(s.session) == threads


def test_the_server_gives_its_concurrency_to_the_runtime(monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path) -> None:
    monkeypatch.setattr(session_module, "available_cores", lambda: 2)
    for threads, lean in ((None, 1), (1, None)):
        doc: dict[str, Any] = {"models": [str(MODEL)], "device": "cpu", "threads": threads,
                               "max_concurrency": 2, "store": False,
                               "data_dir": str(tmp_path / str(threads))}
        registry = create_app(Settings.model_validate(doc)).state.registry
        detector: Detector = registry.load_model(MODEL)
        assert detector.session.lean_threads == lean, threads
