"""Inferences that overlap share the cores instead of each asking for all of them (issue
#12: on 2 cores, two runs of two threads each put four threads on two cores and cost ~9%
of throughput). A run alone keeps every core; one that starts while another is in
progress runs on a lean session of ``cores // overlap`` threads; ``threads`` set wins."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from lineside_inspect.config import Settings
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
    first = threading.Thread(target=lambda: out.__setitem__(0, s.run(batch)))
    first.start()
    while not served:  # the first run holds the wide session before the second starts
        threading.Event().wait(0.01)
    out[1] = s.run(batch)
    first.join()
    assert served == [s.session, _leans(s)[0]]
    for a, b in zip(out[0], out[1], strict=True):  # the same graph: the same answer
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3)
    monkeypatch.undo()
    assert s.run(batch) and s._running == 0  # alone again: wide, and nothing left counted
    assert s._lean is not None and s._lean.qsize() == 2  # every lean slot given back


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
