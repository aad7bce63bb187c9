"""A shadow is stopped once: a shadow whose process died while it was being stopped (or
stopped while its death was being handled) had two ``shadow_stop`` entries in the audit
log, one by the operator and one by the server, and its run row marked stopped twice
(session 53). Whoever claims the session first ends it and records it; the other finds it
already ending. Real parts: the bundled model and a variant of it, a real shadow process
(killed for real), the real store (SQLite), records and audit log. Only the process's
``is_alive`` is wrapped, to hold the collector thread at the moment that decides the
interleaving.

Session 54: a second stop while the first ends the shadow agrees with its status
(``state: stopping``), and the shutdown records its stop, over a real server; its process
ends and its stop is recorded later when the database answers nothing at that moment."""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from lineside_inspect.errors import NotFoundError
from lineside_inspect.lifecycle import shadow
from lineside_inspect.lifecycle.manager import Lifecycle
from lineside_inspect.server.registry import Registry
from lineside_inspect.server.service import InspectionService

from .conftest import MODEL, ROOT, Running, keyed, shadow_line, start_server
from .test_lifecycle_api import DEFECTIVE, inspect, variant

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


def _until(fn: Callable[[], Any], what: str) -> Any:
    """``fn()`` once it is truthy, polled for up to WAIT_S."""
    deadline = time.monotonic() + WAIT_S
    while not (got := fn()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return got


def _served(launch: Callable[..., Running], jumpy: Path, **kw: Any) -> Running:
    return launch(model_roots=[str(ROOT / "models"), str(jumpy.parent.parent)],
                  lifecycle={"shadow": {"queue": 16}}, **kw)


def test_a_second_stop_while_the_first_ends_the_shadow_agrees_with_its_status(
        launch: Callable[..., Running], jumpy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first ``DELETE .../shadow`` is ending the shadow (its process being joined); a
    second answered 404 "is being stopped already" while ``GET .../shadow`` said only
    ``running: true`` (session 54). The status says ``state: stopping`` then, the 404 says
    so; the first stop answers stopped, recorded once."""
    srv = _served(launch, jumpy)
    with srv.client("admin", timeout=WAIT_S) as admin, srv.client("reviewer") as rev:
        r = admin.post("/v1/models", json={"path": str(jumpy), "activate": False})
        assert r.status_code == 200, r.text
        r = admin.post("/v1/models/deeppcb/shadow", json={"version": "jumpy", "sample_rate": 1.0})
        assert r.status_code == 200, r.text
        assert (r.json()["running"], r.json()["state"]) == (True, "running"), r.text
        session = srv.app.state.lifecycle.shadow.session("deeppcb")
        proc, held, go = session.process, threading.Event(), threading.Event()
        real = type(proc).join

        def join(timeout: float | None = None) -> None:  # the first stop, ending the process
            held.set()
            go.wait(WAIT_S)
            real(proc, timeout)

        monkeypatch.setattr(proc, "join", join)

        def first_stop() -> httpx.Response:
            with srv.client("admin", timeout=WAIT_S) as c:
                return c.request("DELETE", "/v1/models/deeppcb/shadow")

        stopper, out = _in_thread(first_stop)
        try:
            assert held.wait(WAIT_S), "the first stop never began ending the process"
            s = rev.get("/v1/models/deeppcb/shadow").json()
            assert (s["running"], s["state"], s["stopped_at"]) == (True, "stopping", None), s
            second = admin.request("DELETE", "/v1/models/deeppcb/shadow")
            assert second.status_code == 404, second.text
            said = second.json()["error"]["message"]
            assert "is being stopped already" in said and "its status says stopping" in said, said
        finally:
            go.set()
            stopper.join(WAIT_S)
        assert not stopper.is_alive()
        assert out[0].status_code == 200, out[0].text
        first = out[0].json()
        assert (first["running"], first["state"]) == (False, "stopped"), first
        s = rev.get("/v1/models/deeppcb/shadow").json()
        assert (s["running"], s["state"], s["run_id"]) == (False, "stopped", first["run_id"]), s
        assert s["stopped_at"] is not None
        stops = rev.get("/v1/audit", params={"action": "shadow_stop"}).json()["items"]
        assert [e["actor"] for e in stops] == ["admin"], stops


def test_a_shadow_running_at_shutdown_is_stopped_in_the_audit_log(
        jumpy: Path, tmp_path: Path) -> None:
    """A server stopped with a shadow running marked its run stopped but wrote no
    ``shadow_stop``: after a restart the audit log showed a shadow started and never
    stopped while its status said stopped (session 54). The shutdown is a ``shadow_stop``
    by the server now, with the final counts, read over the API after the restart."""
    kw = {"model_roots": [str(ROOT / "models"), str(jumpy.parent.parent)],
          "data_dir": str(tmp_path), "lifecycle": {"shadow": {"queue": 16}}}
    srv, stop = start_server(keyed(**kw))
    try:
        with srv.client("admin", timeout=WAIT_S) as admin, srv.client("line") as line, \
                srv.client("reviewer") as rev:
            r = admin.post("/v1/models", json={"path": str(jumpy), "activate": False})
            assert r.status_code == 200, r.text
            r = admin.post("/v1/models/deeppcb/shadow",
                           json={"version": "jumpy", "sample_rate": 1.0})
            assert r.status_code == 200 and r.json()["running"], r.text
            run_id = r.json()["run_id"]
            inspect(line, DEFECTIVE[:2])
            _until(lambda: rev.get("/v1/models/deeppcb/shadow").json()["compared"] == 2,
                   "the shadow to judge two frames")
    finally:
        stop()
    srv, stop = start_server(keyed(**kw))
    try:
        with srv.client("reviewer") as rev:
            stops = rev.get("/v1/audit", params={"action": "shadow_stop"}).json()["items"]
            assert [(e["actor"], e["version"]) for e in stops] == [("lineside", "jumpy")], stops
            assert stops[0]["reason"].startswith("the server stopped"), stops
            assert stops[0]["details"]["run_id"] == run_id, stops
            assert stops[0]["details"]["compared"] == 2, stops
            s = rev.get("/v1/models/deeppcb/shadow").json()
            assert (s["running"], s["state"], s["run_id"]) == (False, "stopped", run_id), s
            assert s["stopped_at"] is not None and s["compared"] == 2
    finally:
        stop()


def test_a_shutdown_whose_database_answers_nothing_goes_on_and_records_later(
        line: tuple[InspectionService, Lifecycle], caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The shutdown's final writes meet a database that answers nothing (here SQLite held
    locked by another connection, as a frozen server holds a write): the shadow's process
    ends and ``close`` returns, saying so in the log, without raising; the stop is in the
    audit log once the database answers again."""
    _, lc = line
    session = _started(lc)
    assert lc.store is not None
    db = sqlite3.connect(lc.store.data_dir / "lineside.db", timeout=WAIT_S)
    db.isolation_level = None
    db.execute("BEGIN EXCLUSIVE")
    try:
        # what the shutdown gives the writes, shortened (the database's own busy wait is 30 s)
        monkeypatch.setattr(shadow, "SHUTDOWN_RECORD_S", 0.5, raising=False)
        with caplog.at_level(logging.WARNING, "lineside.shadow"):
            closer, out = _in_thread(lc.close)  # what the server's shutdown calls
            closer.join(WAIT_S)
            assert not closer.is_alive(), "the shutdown waited for the database"
        assert out == [None], out
        assert not session.process.is_alive()
        assert lc.shadow is not None and lc.shadow.session("deeppcb") is None
        assert "stopped with the server, not recorded within" in caplog.text, caplog.text
    finally:
        db.execute("ROLLBACK")
        db.close()
    stop = _until(lambda: next(iter(_stops(lc)), None), "the stop written once the lock went")
    assert (stop["actor"], stop["details"]["run_id"]) == ("lineside", session.run_id), stop
