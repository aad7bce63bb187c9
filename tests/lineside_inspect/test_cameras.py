"""Camera workers against real video: generated files and an HTTP MJPEG stream on
loopback that the tests kill, restart, freeze and hang."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lineside_inspect.cameras import CameraManager, CameraUnavailable
from lineside_inspect.cameras.simulator import MJPEGSimulator, counter_frame
from lineside_inspect.cameras.sources import make_source
from lineside_inspect.cameras.worker import CameraWorker, Frame
from lineside_inspect.config import CameraConfig
from lineside_inspect.opencv import cv2


def fresh(manager: CameraManager, camera_id: str, *, trigger_time: float, timeout_s: float) -> Frame:
    """The manager's async trigger wait, run to completion from a test thread."""
    return asyncio.run(manager.fresh_frame(camera_id, trigger_time=trigger_time, timeout_s=timeout_s))


@pytest.fixture
def video(tmp_path: Path) -> Path:
    path = tmp_path / "line.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30, (160, 120))
    for i in range(60):
        writer.write(counter_frame(i))
    writer.release()
    return path


@pytest.fixture
def stream() -> Iterator[MJPEGSimulator]:
    s = MJPEGSimulator()
    yield s
    s.kill()


def _worker(source: str, **kw: float) -> CameraWorker:
    opts = {"open_timeout_s": 1.0, "read_timeout_s": 0.6, "loop": True, "fps": 30.0}
    w = CameraWorker("cam", lambda: make_source(source, **opts), stale_after_s=kw.get("stale", 1.0),  # type: ignore[arg-type]
                     backoff_base_s=0.05, backoff_max_s=0.4)
    w.start()
    return w


def _wait(predicate, timeout: float = 15.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_video_file_camera_keeps_only_the_newest_frame(video: Path) -> None:
    w = _worker(str(video))
    try:
        assert _wait(w.online)
        t = time.time()
        frame = w.wait_frame_after(t, 2.0)
        assert frame is not None and frame.timestamp > t and frame.image.shape == (120, 160, 3)
        seq = frame.seq
        time.sleep(0.3)
        newest = w.latest()
        assert newest is not None and newest.seq > seq  # older frames were replaced, not queued
        assert w.health()["fps"] > 5
    finally:
        assert w.stop()


def test_stream_killed_and_restarted(stream: MJPEGSimulator) -> None:
    cfg = CameraConfig(id="net", source=stream.url, open_timeout_s=1, read_timeout_s=0.6,
                       stale_after_s=1.0)
    manager = CameraManager([cfg])
    manager.start()
    w = manager.workers["net"]
    for worker in manager.workers.values():
        worker.backoff_base_s, worker.backoff_max_s = 0.05, 0.4
    try:
        assert _wait(w.online)
        frame = fresh(manager, "net", trigger_time=time.time(), timeout_s=2)
        assert frame.image.shape == (120, 160, 3)
        stream.kill()
        assert _wait(lambda: not w.online())
        with pytest.raises(CameraUnavailable) as info:
            fresh(manager, "net", trigger_time=time.time(), timeout_s=0.5)
        assert info.value.health["state"] in ("offline", "stale")
        stream.start()  # same port
        assert _wait(w.online, timeout=10)
        assert w.health()["reconnects"] >= 1
        assert fresh(manager, "net", trigger_time=time.time(), timeout_s=2) is not None
    finally:
        stopped = manager.stop(2.0)
    assert all(stopped.values())


@pytest.mark.slow
def test_twenty_drop_reconnect_cycles_leak_nothing(stream: MJPEGSimulator) -> None:
    w = _worker(stream.url)
    assert _wait(w.online)
    threads, fds = threading.active_count(), len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        stream.kill()
        assert _wait(lambda: not w.online())
        stream.start()
        assert _wait(w.online)
    assert w.reconnects >= 20
    time.sleep(0.5)
    assert threading.active_count() <= threads + 2  # the stream server's own handler threads
    assert len(os.listdir("/proc/self/fd")) <= fds + 4
    assert w.stop()


def test_frozen_stream_is_detected(stream: MJPEGSimulator) -> None:
    w = _worker(stream.url)
    try:
        assert _wait(w.online)
        stream.mode = "frozen"
        assert _wait(lambda: w.health()["last_error"] is not None and "frozen" in w.health()["last_error"])
        stream.mode = "hang"  # connection open, no bytes: the read timeout fires
        assert _wait(lambda: not w.online())
    finally:
        w.stop()


def test_shutdown_returns_within_two_seconds_during_a_blocked_read(stream: MJPEGSimulator) -> None:
    stream.mode = "hang"
    opts = {"open_timeout_s": 5.0, "read_timeout_s": 5.0, "loop": True, "fps": 30.0}
    w = CameraWorker("cam", lambda: make_source(stream.url, **opts), stale_after_s=10)  # type: ignore[arg-type]
    w.start()
    time.sleep(0.5)  # the worker is now blocked opening or reading
    start = time.monotonic()
    w.stop(2.0)
    assert time.monotonic() - start < 2.5
    assert w.health()["state"] == "stopped"


def test_unknown_camera_and_missing_source(tmp_path: Path) -> None:
    manager = CameraManager([CameraConfig(id="gone", source=str(tmp_path / "missing.avi"),
                                          open_timeout_s=0.5)])
    manager.start()
    try:
        assert _wait(lambda: manager.workers["gone"].health()["last_error"] is not None)
        with pytest.raises(CameraUnavailable):
            fresh(manager, "gone", trigger_time=time.time(), timeout_s=0.2)
        from lineside_inspect.errors import NotFoundError

        with pytest.raises(NotFoundError):
            manager.worker("nope")
    finally:
        manager.stop()


RTSP_SERVER = Path(__file__).resolve().parents[1] / "tools" / "rtsp_server.py"


def _rtsp_available() -> bool:
    probe = "import gi; gi.require_version('GstRtspServer', '1.0')"
    return subprocess.run(["/usr/bin/python3", "-c", probe], capture_output=True).returncode == 0


class RtspServer:
    """GStreamer's RTSP server in a child process (Debian's system Python has the bindings)."""

    def __init__(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc: subprocess.Popen[str] | None = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(["/usr/bin/python3", str(RTSP_SERVER), str(self.port)],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip()

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


@pytest.mark.skipif(not Path("/usr/bin/python3").exists() or not _rtsp_available(),
                    reason="GStreamer's RTSP server is not installed (make test installs it)")
def test_rtsp_stream_killed_and_restarted() -> None:
    rtsp = RtspServer()
    cfg = CameraConfig(id="rtsp", source=rtsp.url, open_timeout_s=3, read_timeout_s=1,
                       stale_after_s=1.0)
    manager = CameraManager([cfg])
    manager.start()
    w = manager.workers["rtsp"]
    w.backoff_base_s, w.backoff_max_s = 0.1, 0.5
    try:
        assert _wait(w.online, timeout=20)
        frame = fresh(manager, "rtsp", trigger_time=time.time(), timeout_s=3)
        assert frame.image.shape == (240, 320, 3)
        rtsp.kill()
        assert _wait(lambda: not w.online(), timeout=20)
        with pytest.raises(CameraUnavailable):
            fresh(manager, "rtsp", trigger_time=time.time(), timeout_s=0.5)
        rtsp.start()
        assert _wait(w.online, timeout=20)
        assert w.health()["reconnects"] >= 1
        after = time.time()
        assert fresh(manager, "rtsp", trigger_time=after, timeout_s=3).timestamp > after
    finally:
        manager.stop(2.0)
        rtsp.kill()
