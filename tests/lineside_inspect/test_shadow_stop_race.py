"""A shadow is stopped once: a shadow whose process died while it was being stopped (or
stopped while its death was being handled) had two ``shadow_stop`` entries in the audit
log, one by the operator and one by the server, and its run row marked stopped twice
(session 53). Whoever claims the session first ends it and records it; the other finds it
already ending. Real parts: the bundled model and a variant of it, a real shadow process
(killed for real), the real store (SQLite), records and audit log. Only the process's
``is_alive`` is wrapped, to hold the collector thread at the moment that decides the
interleaving."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lineside_inspect.errors import NotFoundError
from lineside_inspect.lifecycle.manager import Lifecycle
from lineside_inspect.server.registry import Registry
from lineside_inspect.server.service import InspectionService

from .conftest import MODEL, shadow_line
from .test_lifecycle_api import variant

WAIT_S = 120.0  # a loaded 2-core host: generous, never asserted


@pytest.fixture(scope="module")
def jumpy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return variant(tmp_path_factory.mktemp("stop-race"), "jumpy", 0.02)


@pytest.fixture
def line(jumpy: Path, tmp_path: Path) -> Iterator[tuple[InspectionService, Lifecycle]]:
    registry = Registry(device="cpu", threads=1)
    registry.load_model(MODEL)
    registry.load_model(jumpy, activate=False)
    with shadow_line(registry, tmp_path) as line:
        yield line


def _hold_the_collector(monkeypatch: pytest.MonkeyPatch, session: Any, nth: int
                        ) -> tuple[threading.Event, threading.Event]:
    """The ``nth`` time the shadow's collector thread learns its process is dead, it says
    so (first event) and waits for the second before going on."""
    proc, seen, go = session.process, threading.Event(), threading.Event()
    real = type(proc).is_alive
    calls = [0]

    def is_alive() -> bool:
        alive = real(proc)
        if not alive and threading.current_thread() is session.collector:
            calls[0] += 1
            if calls[0] == nth:
                seen.set()
                go.wait(WAIT_S)
        return alive

    monkeypatch.setattr(proc, "is_alive", is_alive)
    return seen, go


def _started(lc: Lifecycle) -> Any:
    """The jumpy variant started as deeppcb's shadow, every frame offered: its session."""
    lc.start_shadow("deeppcb", "jumpy", sample_rate=1.0, actor="admin")
    assert lc.shadow is not None
    session = lc.shadow.session("deeppcb")
    assert session is not None
    return session


def _stops(lc: Lifecycle) -> list[dict[str, Any]]:
    return lc.records.audit_log(model="deeppcb", action="shadow_stop")[1]


def _in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(fn())
        except Exception as exc:
            out.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


def _stopped_once(lc: Lifecycle, run_id: str) -> None:
    status = lc.shadow_status("deeppcb")
    assert not status["running"] and status["stopped_at"] is not None, status
    assert status["run_id"] == run_id
    row = lc.records.shadow_run("deeppcb", run_id)
    assert row is not None and row.stopped_at is not None


def test_a_stop_while_the_death_is_being_found_is_recorded_once(
        line: tuple[InspectionService, Lifecycle], monkeypatch: pytest.MonkeyPatch) -> None:
    """The collector found the process dead, not yet stopping; the operator's stop lands
    before it acts on it: the operator's stop is the one recorded."""
    _, lc = line
    session = _started(lc)
    seen, go = _hold_the_collector(monkeypatch, session, 1)
    os.kill(session.process.pid, signal.SIGKILL)
    assert seen.wait(WAIT_S), "the collector never found its process dead"
    stopper, out = _in_thread(lambda: lc.stop_shadow("deeppcb", actor="admin", reason="done"))
    assert session.stopping.wait(WAIT_S), "the stop never began"
    go.set()  # the collector goes on, with the answer it had before the stop began
    stopper.join(WAIT_S)
    assert not stopper.is_alive()
    assert session.collector is not None
    session.collector.join(WAIT_S)
    assert not isinstance(out[0], Exception), out
    assert not out[0]["running"]
    stops = _stops(lc)
    assert [(e["actor"], e["reason"]) for e in stops] == [("admin", "done")], stops
    _stopped_once(lc, session.run_id)


def test_a_stop_while_the_death_is_being_handled_is_recorded_once(
        line: tuple[InspectionService, Lifecycle], monkeypatch: pytest.MonkeyPatch) -> None:
    """The collector is ending the shadow whose process died; the operator's stop lands
    meanwhile: it finds no shadow running (404), and the server's stop is the one recorded,
    with the exit code."""
    _, lc = line
    session = _started(lc)
    # the second time: the first sent it into handling the death, the second is that
    # handling ending the process
    seen, go = _hold_the_collector(monkeypatch, session, 2)
    os.kill(session.process.pid, signal.SIGKILL)
    assert seen.wait(WAIT_S), "the collector never began handling its process's death"
    stopper, out = _in_thread(lambda: lc.stop_shadow("deeppcb", actor="admin", reason="done"))
    stopper.join(5)  # the stop answers at once, or (before) waited for the collector
    go.set()
    stopper.join(WAIT_S)
    assert not stopper.is_alive()
    assert session.collector is not None
    session.collector.join(WAIT_S)
    stops = _stops(lc)
    assert [e["actor"] for e in stops] == ["lineside"], stops
    assert isinstance(out[0], NotFoundError), out
    assert "deeppcb's shadow is being stopped already" in str(out[0]), out
    assert "its process ended (exit code -9)" in stops[0]["reason"]
    _stopped_once(lc, session.run_id)
    # and a shadow starts again
    assert lc.start_shadow("deeppcb", "jumpy", sample_rate=1.0, actor="admin")["running"]


def test_a_stop_whose_process_will_not_end_leaves_no_shadow_stuck(
        line: tuple[InspectionService, Lifecycle], monkeypatch: pytest.MonkeyPatch) -> None:
    """Ending the shadow's process raised (here the process's join, made to fail once): the
    claimed session stayed in the running set, status "running" for ever and every stop a
    404 (review, session 53). It leaves the running set all the same; a shadow starts
    again."""
    _, lc = line
    session = _started(lc)
    proc = session.process

    def join(timeout: float | None = None) -> None:
        monkeypatch.undo()  # once: its kill and later joins are the real ones
        raise OSError("join failed")

    monkeypatch.setattr(proc, "join", join)
    with pytest.raises(OSError):
        lc.stop_shadow("deeppcb", actor="admin", reason="done")
    assert lc.shadow.session("deeppcb") is None
    assert not lc.shadow_status("deeppcb")["running"]
    proc.kill()
    proc.join(WAIT_S)
    assert lc.start_shadow("deeppcb", "jumpy", sample_rate=1.0, actor="admin")["running"]
    lc.stop_shadow("deeppcb", actor="admin", reason="done")
