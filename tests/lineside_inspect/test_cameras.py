"""Camera workers against real video: generated files and an HTTP MJPEG stream on
loopback that the tests kill, restart, freeze and hang."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lineside_inspect.cameras import CameraManager, CameraUnavailable
from lineside_inspect.cameras.simulator import MJPEGSimulator, counter_frame
from lineside_inspect.cameras.sources import OpenCVSource, make_source
from lineside_inspect.cameras.worker import CameraWorker, Frame
from lineside_inspect.config import CameraConfig
from lineside_inspect.errors import ImageTooLargeError
from lineside_inspect.opencv import cv2
from lineside_inspect.serve_process import free_port


def fresh(manager: CameraManager, camera_id: str, *, timeout_s: float) -> Frame:
    """The manager's async trigger wait (triggered now), run to completion from a test thread."""
    return asyncio.run(manager.fresh_frame(camera_id, after=time.monotonic(), timeout_s=timeout_s))


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


def _worker(source: str, *, stale: float = 1.0, detect_frozen: bool = False,
            read_timeout_s: float = 0.6) -> CameraWorker:
    opts = {"open_timeout_s": 1.0, "read_timeout_s": read_timeout_s, "loop": True, "fps": 30.0}
    w = CameraWorker("cam", lambda: make_source(source, **opts), stale_after_s=stale,  # type: ignore[arg-type]
                     backoff_base_s=0.05, backoff_max_s=0.4, detect_frozen=detect_frozen)
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
        t = time.monotonic()
        frame = w.wait_frame_after(t, WAIT_S)
        assert frame is not None and frame.monotonic > t and frame.image.shape == (120, 160, 3)
        seq = frame.seq
        # older frames were replaced, not queued: the newest is handed out (waited for,
        # not a fixed 0.3 s a starved capture thread may not have had)
        assert _wait(lambda: w.latest().seq > seq)  # type: ignore[union-attr]
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
        frame = fresh(manager, "net", timeout_s=WAIT_S)
        assert frame.image.shape == (120, 160, 3)
        stream.kill()
        assert _wait(lambda: not w.online())
        with pytest.raises(CameraUnavailable) as info:
            fresh(manager, "net", timeout_s=0.5)
        assert info.value.health["state"] in ("offline", "stale")
        stream.start()  # same port
        assert _wait(w.online, timeout=10)
        assert w.health()["reconnects"] >= 1
        assert fresh(manager, "net", timeout_s=WAIT_S) is not None
    finally:
        stopped = manager.stop(2.0)
    assert all(stopped.values())


@pytest.mark.slow
def test_ten_drop_reconnect_cycles_leak_nothing(stream: MJPEGSimulator) -> None:
    w = _worker(stream.url)
    assert _wait(w.online)
    threads, fds = threading.active_count(), len(os.listdir("/proc/self/fd"))
    # ten cycles (were twenty, 13 s): a thread or descriptor kept per cycle still goes
    # past the margins below more than twice over
    for _ in range(10):
        stream.kill()
        assert _wait(lambda: not w.online())
        stream.start()
        assert _wait(w.online)
    assert w.reconnects >= 10

    def settled() -> bool:  # the last cycle's threads and descriptors gone (was a fixed 0.5 s)
        return (threading.active_count() <= threads + 2
                and len(os.listdir("/proc/self/fd")) <= fds + 4)

    _wait(settled, timeout=5)
    assert threading.active_count() <= threads + 2  # the stream server's own handler threads
    assert len(os.listdir("/proc/self/fd")) <= fds + 4
    assert w.stop()


def test_frozen_stream_is_detected(stream: MJPEGSimulator) -> None:
    w = _worker(stream.url, detect_frozen=True)  # as a continuous camera's
    try:
        assert _wait(w.online)
        stream.mode = "frozen"
        assert _wait(lambda: w.health()["last_error"] is not None and "frozen" in w.health()["last_error"])
        # reconnected to the same frozen picture: no frame of it is handed out again (each
        # reconnect judged it anew for stale_after_s; camera review, session 32)
        assert _wait(lambda: w.reconnects >= 1)
        frames = w.frames
        time.sleep(0.6)
        assert w.frames == frames
        assert _wait(lambda: not w.online())  # no new frame: stale
        stream.mode = "hang"  # connection open, no bytes: the read timeout fires
        assert _wait(lambda: not w.online())
    finally:
        w.stop()


def test_an_mjpeg_stream_changing_resolution_gives_its_true_frames() -> None:
    # OpenCV's FFmpeg reader scaled every frame to the size it opened at: 640x480 went on
    # as a stretched 160x120 until a reconnect, and a frame over max_pixels was decoded
    # whole, then shrunk under the limit and judged (camera review, session 38)
    size = [(120, 160)]
    stream = MJPEGSimulator(lambda i: np.full((*size[0], 3), i % 200, np.uint8), fps=30)
    # read_timeout_s and stale_after_s well past a starved thread's pause (0.6 s and 1 s
    # were a reconnect, or "stale", on a loaded CI host): no reconnect is pinned below
    opts = {"open_timeout_s": 1.0, "read_timeout_s": 5.0, "loop": True, "fps": None,
            "max_pixels": 1_000_000}
    w = CameraWorker("cam", lambda: make_source(stream.url, **opts), stale_after_s=5.0,  # type: ignore[arg-type]
                     backoff_base_s=0.05, backoff_max_s=0.4)
    w.start()
    try:
        assert _wait(w.online)
        assert w.wait_frame_after(time.monotonic(), WAIT_S).image.shape == (120, 160, 3)  # type: ignore[union-attr]
        size[0] = (480, 640)
        assert _wait(lambda: w.latest().image.shape == (480, 640, 3))  # type: ignore[union-attr]
        assert w.online() and w.reconnects == 0  # the same connection, no reconnect needed
        size[0] = (1200, 1600)  # 1.92 Mpx, over the limit: refused before it is decoded
        assert _wait(lambda: "over the limit of 1000000" in (w.health()["last_error"] or ""))
        assert w.health()["last_error"].startswith("a frame refused: image is 1600x1200")
        assert w.latest().image.shape == (480, 640, 3)  # type: ignore[union-attr]
    finally:
        w.stop()
        stream.kill()


def test_a_cut_short_jpeg_in_an_mjpeg_stream_is_refused_not_judged(stream: MJPEGSimulator) -> None:
    # FFmpeg decoded a JPEG cut short (a lossy link) with its missing rows filled in, and
    # the worker handed it out as a frame to judge (camera review, session 38)
    w = _worker(stream.url)
    try:
        assert _wait(w.online)
        seen: list[Frame] = []
        stream.mode = "cut"
        # whole frames already on their way when the stream changed come first (a fixed
        # 0.1 s let one arrive later on a loaded host): listened to from the first cut one
        # the worker refused, which every frame after it is too
        assert _wait(lambda: (w.health()["last_error"] or "").startswith("a frame refused: "))
        unsubscribe = w.subscribe(seen.append)
        w.last_error = None  # refused again while listened to
        assert _wait(lambda: (w.health()["last_error"] or "").startswith("a frame refused: "))
        assert "truncated" in w.health()["last_error"] or "corrupt" in w.health()["last_error"]
        time.sleep(0.3)
        unsubscribe()
        assert seen == []
        stream.mode = "live"
        assert _wait(w.online)
    finally:
        w.stop()


def test_a_lone_broken_jpeg_is_skipped_without_a_reconnect(stream: MJPEGSimulator) -> None:
    # each refused frame ended the connection: on a link losing a frame now and then the
    # camera went offline and opened its stream again each time (review, session 38).
    # A read timeout well past a starved thread's pause (0.6 s was a reconnect on a loaded
    # CI host); a broken frame's reconnect comes at once, not from it
    w = _worker(stream.url, stale=5.0, read_timeout_s=5.0)
    try:
        assert _wait(w.online)
        stream.mode = "lossy"
        before = w.health()
        assert _wait(lambda: (w.health()["last_error"] or "").startswith("a frame refused: "))
        assert _wait(lambda: w.health()["frames"] > before["frames"] + 10)
        after = w.health()
        assert after["reconnects"] == before["reconnects"] and after["state"] == "online"
    finally:
        stream.mode = "live"
        w.stop()


def test_shutdown_returns_within_two_seconds_during_a_blocked_read(stream: MJPEGSimulator) -> None:
    stream.mode = "hang"
    opts = {"open_timeout_s": 60.0, "read_timeout_s": 60.0, "loop": True, "fps": 30.0}
    w = CameraWorker("cam", lambda: make_source(stream.url, **opts), stale_after_s=10)  # type: ignore[arg-type]
    w.start()
    # the worker is in its source's open, which blocks (was a fixed 0.5 s: a thread not yet
    # there saw the stop first and ended, True)
    assert _wait(lambda: w._source is not None)
    # stop gives up on the blocked read (it ends with its own 60 s timeout, in a daemon
    # thread) rather than wait for it: False, the thread still in its read, and stopped
    assert w.stop(2.0) is False
    assert w._thread is not None and w._thread.is_alive() and w._thread.daemon
    assert w.health()["state"] == "stopped"


def test_unknown_camera_and_missing_source(tmp_path: Path) -> None:
    manager = CameraManager([CameraConfig(id="gone", source=str(tmp_path / "missing.avi"),
                                          open_timeout_s=0.5)])
    manager.start()
    try:
        assert _wait(lambda: manager.workers["gone"].health()["last_error"] is not None)
        with pytest.raises(CameraUnavailable):
            fresh(manager, "gone", timeout_s=0.2)
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

    def __init__(self, codec: str = "mjpeg", mode: str = "") -> None:
        self.proc: subprocess.Popen[str] | None = None
        self.codec = codec
        self.mode = mode  # see tests/tools/rtsp_server.py
        # a port free when picked can be taken before the server binds it: a fresh one
        for _attempt in range(3):
            self.port = free_port()
            if self.start():
                return
        raise AssertionError("the RTSP server could not bind a port in 3 attempts")

    def start(self) -> bool:
        """Start on ``self.port``; False when the port was taken (the server said nothing)."""
        self.proc = subprocess.Popen(["/usr/bin/python3", str(RTSP_SERVER), str(self.port), self.codec,
                                      *([self.mode] if self.mode else [])],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip()
        if not self.url:
            self.kill()
        return bool(self.url)

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
        frame = fresh(manager, "rtsp", timeout_s=WAIT_S)
        assert frame.image.shape == (240, 320, 3)
        rtsp.kill()
        assert _wait(lambda: not w.online(), timeout=20)
        with pytest.raises(CameraUnavailable):
            fresh(manager, "rtsp", timeout_s=0.5)
        assert rtsp.start(), "the RTSP server's port was taken while it was down"
        assert _wait(w.online, timeout=20)
        assert w.health()["reconnects"] >= 1
        after = time.monotonic()
        assert asyncio.run(manager.fresh_frame("rtsp", after=after, timeout_s=WAIT_S)).monotonic > after
    finally:
        manager.stop(2.0)
        rtsp.kill()


def _encoder_available(codec: str) -> bool:
    element = {"h264": "openh264enc", "h265": "x265enc"}[codec]
    probe = ("import gi, sys; gi.require_version('Gst', '1.0'); from gi.repository import Gst; "
             f"Gst.init(None); sys.exit(Gst.ElementFactory.find({element!r}) is None)")
    return subprocess.run(["/usr/bin/python3", "-c", probe], capture_output=True).returncode == 0


@pytest.mark.parametrize("codec", ["h264", "h265"])
def test_an_h26x_stream_changing_resolution_gives_its_true_frames(codec: str) -> None:
    # OpenCV's FFmpeg reader scaled every frame to the size the stream opened at: a camera
    # switched from 160x120 to 320x240 went on as a stretched 160x120 (session 40)
    if not Path("/usr/bin/python3").exists() or not _rtsp_available() or not _encoder_available(codec):
        pytest.skip(f"GStreamer's RTSP server or {codec} encoder is not installed")
    rtsp = RtspServer(codec)
    seen: list[tuple[tuple[int, ...], float]] = []
    w = CameraWorker("cam", lambda: make_source(rtsp.url, open_timeout_s=3, read_timeout_s=1,
                                                loop=True, fps=None, max_pixels=1_000_000),
                     stale_after_s=1.0, backoff_base_s=0.05, backoff_max_s=0.4)
    w.subscribe(lambda f: seen.append((f.image.shape, float(f.image.mean()))))
    w.start()
    try:
        # the server sends 160x120 grey 50 for two seconds, then 320x240 grey 200
        assert _wait(lambda: any(shape == (240, 320, 3) for shape, _ in seen), timeout=30)
        assert w.reconnects == 0  # the same connection: a new decoder, no reconnect
        shapes = [shape for shape, _ in seen]
        first_big = shapes.index((240, 320, 3))
        assert first_big > 0 and set(shapes[:first_big]) == {(120, 160, 3)}
        assert set(shapes[first_big:]) == {(240, 320, 3)}
        # never the new picture squeezed into the old size, nor the old one blown up
        assert all(mean < 125 for shape, mean in seen if shape == (120, 160, 3))
        assert all(mean > 125 for shape, mean in seen if shape == (240, 320, 3))
        assert w.health()["last_error"] == ("a frame refused: the stream switched from 160x120 "
                                            "to 320x240: the frames of the switch skipped, "
                                            "never stretched")
    finally:
        w.stop()
        rtsp.kill()


def test_an_h264_stream_whose_sps_the_parser_misreads_is_decoded_as_before(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    # a profile the SPS parser does not know (144, High 4:4:4 of 2005, which FFmpeg still
    # decodes) was read as 48x32 and its 320x240 frames judged on that size: a stream the
    # packet path cannot read is decoded by OpenCV's reader, as before it (session 40)
    if not Path("/usr/bin/python3").exists() or not _rtsp_available() or not _encoder_available("h264"):
        pytest.skip("GStreamer's RTSP server or h264 encoder is not installed")
    from lineside_inspect.cameras import sources

    monkeypatch.setattr(sources, "_OPENCV_DECODES", {})
    rtsp = RtspServer("h264", "profile144")
    made: list[sources.OpenCVSource] = []

    def make() -> sources.OpenCVSource:
        made.append(sources.OpenCVSource(rtsp.url, open_timeout_s=3, read_timeout_s=1))
        return made[-1]

    seen: list[tuple[tuple[int, ...], float]] = []
    w = CameraWorker("cam", make, stale_after_s=1.0, backoff_base_s=0.05, backoff_max_s=0.4)
    w.subscribe(lambda f: seen.append((f.image.shape, float(f.image.mean()))))
    caplog.set_level(logging.WARNING, logger="lineside.cameras")
    w.start()
    try:
        assert _wait(lambda: len(seen) >= 10, timeout=30)
        assert {shape for shape, _ in seen} == {(240, 320, 3)}
        assert all(60 < mean < 140 for _, mean in seen)  # the grey 100 sent
        assert w.reconnects == 0 and made[0].h26x is None  # reopened in place
        said = [r.getMessage() for r in caplog.records if "decoded by OpenCV" in r.getMessage()]
        assert len(said) == 1 and said[0].endswith("its SPS was read as 48x32, its frames are 320x240")
        again = make()  # a reconnect: straight to OpenCV's reader, not said again
        again.open()
        try:
            assert again.h26x is None and again.read() is not None
        finally:
            again.close()
        assert len([r for r in caplog.records if "decoded by OpenCV" in r.getMessage()]) == 1
    finally:
        w.stop()
        rtsp.kill()


def test_an_h264_stream_over_max_pixels_is_refused_from_its_sps() -> None:
    # refused from the parameter set, no decoder started: not a pixel of it decoded
    if not Path("/usr/bin/python3").exists() or not _rtsp_available() or not _encoder_available("h264"):
        pytest.skip("GStreamer's RTSP server or h264 encoder is not installed")
    rtsp = RtspServer("h264")  # 160x120 = 19,200 pixels first
    source = OpenCVSource(rtsp.url, open_timeout_s=3, read_timeout_s=1, max_pixels=10_000)
    try:
        source.open()
        assert source.h26x is not None
        with pytest.raises(ImageTooLargeError, match="160x120 = 19200 pixels, over the limit of 10000"):
            source.read()
        assert source.h26x is not None and source.h26x.decoder is None
    finally:
        source.close()
        rtsp.kill()


_ENCODE_H264 = """
import sys, gi
gi.require_version("Gst", "1.0")
from gi.repository import Gst
Gst.init(None)
pipe = Gst.parse_launch("videotestsrc num-buffers=30 pattern=ball ! video/x-raw,format=I420,"
    "width=64,height=48,framerate=30/1 ! openh264enc gop-size=30 ! video/x-h264,"
    "stream-format=byte-stream,alignment=au ! appsink name=sink sync=false")
sink = pipe.get_by_name("sink")
pipe.set_state(Gst.State.PLAYING)
while (sample := sink.emit("pull-sample")) is not None:
    b = sample.get_buffer()
    print(b.extract_dup(0, b.get_size()).hex())
pipe.set_state(Gst.State.NULL)
"""


def _no_key_frame_stream(tmp_path: Path, packets: int) -> Any:
    """The raw packets (CAP_PROP_FORMAT -1) of a 30 fps H.264 stream that starts at a
    parameter set and then sends only slices that need a key frame it never sends."""
    from lineside_inspect.cameras import h26x

    if not Path("/usr/bin/python3").exists() or not _encoder_available("h264"):
        pytest.skip("GStreamer's h264 encoder is not installed")
    out = subprocess.run(["/usr/bin/python3", "-c", _ENCODE_H264], capture_output=True,
                         text=True, check=True).stdout.split()
    units = [bytes.fromhex(line) for line in out]
    assert h26x._keyframe("h264", units[0]) and not any(h26x._keyframe("h264", u) for u in units[1:])
    sets = h26x._parameter_sets("h264", units[0])
    sent = [sets + units[1]] + [units[2 + i % (len(units) - 2)] for i in range(packets - 1)]
    path = tmp_path / "no-key.mkv"
    path.write_bytes(h26x._matroska_header("h264", sets, (64, 48), 30.0)
                     + b"".join(h26x._block(p, i * 33) for i, p in enumerate(sent)))
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    assert cap.isOpened() and cap.set(cv2.CAP_PROP_FORMAT, -1)
    return cap


def test_an_h26x_stream_that_never_makes_a_frame_is_given_up_not_read_for_ever(
        tmp_path: Path) -> None:
    # the decoder's read pulled packets until one made a frame (FFmpeg's "needs more input"
    # is not counted): slices that never decode, each within the read timeout, kept one
    # read going for ever: no reconnect, no "offline", and the worker could not stop
    from lineside_inspect.cameras.h26x import FIRST_FRAME_S, H26xStream, StreamStalled

    limit = FIRST_FRAME_S * 30  # the first frame's bound at the stream's 30 fps
    cap = _no_key_frame_stream(tmp_path, limit + 60)
    stream = H26xStream(cap, "h264", 1_000_000)
    with pytest.raises(StreamStalled, match=f"^{limit} H264 packets without a frame: "):
        stream.read()
    ok, _ = cap.read()
    assert ok  # ended at the bound, not at the end of the packets
    cap.release()


def test_a_stop_ends_an_h26x_read_at_the_next_packet(tmp_path: Path) -> None:
    from lineside_inspect.cameras.h26x import H26xStream

    cap = _no_key_frame_stream(tmp_path, 400)
    stop = threading.Event()
    stream = H26xStream(cap, "h264", 1_000_000, stop)
    real = stream._packet
    taken = 0

    def packet() -> bytes | None:  # the worker's stop() comes while the read is pulling
        nonlocal taken
        if taken == 100:
            stop.set()
        data = real()
        taken += data is not None
        return data

    stream._packet = packet  # type: ignore[method-assign]
    assert stream.read() is None  # no frame, no error, no fallback to OpenCV's reader
    assert taken == 100 and stream.ended  # not one packet read from the camera after it
    cap.release()


# -- freshness, first frame, still scenes (the PLC's "never a stale verdict") -------------
def _online_manager(*cams: CameraConfig) -> CameraManager:
    manager = CameraManager(list(cams))
    manager.start()
    for w in manager.workers.values():
        w.backoff_base_s, w.backoff_max_s = 0.05, 0.4
    assert _wait(lambda: all(w.online() for w in manager.workers.values()))
    return manager


def test_a_wall_clock_step_back_never_hands_out_an_older_frame(
        stream: MJPEGSimulator, monkeypatch: pytest.MonkeyPatch) -> None:
    """Freshness is monotonic: with the system clock stepped back (NTP, PTP) after the
    camera stalled, a trigger does not take the frame from before the stall for fresh."""
    manager = _online_manager(CameraConfig(id="net", source=stream.url, read_timeout_s=5,
                                           stale_after_s=5))
    try:
        w = manager.workers["net"]
        stream.mode = "hang"  # connected, no frames
        before = w.latest()
        assert before is not None
        real = time.time
        monkeypatch.setattr(time, "time", lambda: real() - 3.0)
        trigger = time.monotonic()
        try:
            frame = fresh(manager, "net", timeout_s=0.5)
        except CameraUnavailable:
            pass  # no frame after the trigger: the right answer
        else:  # only a frame still in flight when the stream hung may come
            assert frame.seq > before.seq and frame.monotonic > trigger
        age = w.health()["last_frame_age_s"]
        assert age is not None and age >= 0  # not 3 s in the future
        stream.mode = "live"
        trigger = time.monotonic()
        assert asyncio.run(manager.fresh_frame("net", after=trigger, timeout_s=5)).monotonic > trigger
    finally:
        manager.stop()


def test_a_trigger_gets_the_first_frame_after_it_even_when_the_loop_is_late(
        stream: MJPEGSimulator) -> None:
    manager = _online_manager(CameraConfig(id="net", source=stream.url))
    w = manager.workers["net"]
    seen: list[Frame] = []
    unsubscribe = w.subscribe(seen.append)

    async def run() -> tuple[Frame, float]:
        t = time.monotonic()
        task = asyncio.create_task(manager.fresh_frame("net", after=t, timeout_s=WAIT_S))
        await asyncio.sleep(0)  # the wait is set up
        # the event loop is held up (inference, a busy core) while frames keep coming
        deadline = time.monotonic() + WAIT_S
        while len([f for f in seen if f.monotonic > t]) < 3:
            assert time.monotonic() < deadline, "no frames"
            time.sleep(0.01)
        return await task, t

    try:
        frame, t = asyncio.run(run())
        first = next(f for f in seen if f.monotonic > t)
        assert frame.seq == first.seq
        latest = w.latest()
        assert latest is not None and latest.seq > frame.seq  # not merely the newest one
    finally:
        unsubscribe()
        manager.stop()


WAIT_S = 15.0


def test_a_still_or_dark_scene_keeps_a_triggered_camera_online(stream: MJPEGSimulator) -> None:
    """An idle station shows the same picture (or a dark one between strobes) for minutes:
    a triggered camera stays online. A continuous one takes a picture unchanged for
    stale_after_s for a frozen source and reconnects (it would judge one frame again and again)."""
    dark = MJPEGSimulator(lambda i: np.zeros((120, 160, 3), np.uint8))
    stream.mode = "frozen"
    cams = [CameraConfig(id="still", source=stream.url, stale_after_s=0.5),
            CameraConfig(id="dark", source=dark.url, stale_after_s=0.5),
            CameraConfig(id="cont", source=stream.url, stale_after_s=0.5, mode="continuous")]
    manager = CameraManager(cams)
    manager.start()
    try:
        workers = manager.workers
        # 90 identical frames: 3x the old limit of 30, and 3 s at 30 fps, 6x stale_after_s
        assert _wait(lambda: all(workers[c].frames >= 90 for c in ("still", "dark")), timeout=30)
        for cid in ("still", "dark"):
            # online: its newest frame within stale_after_s (0.5 s), waited for: a process
            # paused that long just as the count was reached is not what is pinned here
            assert _wait(workers[cid].online), workers[cid].health()
            h = workers[cid].health()
            assert (h["reconnects"], h["last_error"]) == (0, None), h
        assert _wait(lambda: "frozen" in (workers["cont"].health()["last_error"] or ""))
    finally:
        manager.stop()
        dark.kill()


# -- the inspection service's cameras ---------------------------------------------------
ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / "datasets" / "deeppcb-sample" / "images"
STATION = ROOT / "configs" / "line"


def test_startup_refuses_only_what_the_config_contradicts(caplog: pytest.LogCaptureFixture) -> None:
    """A camera whose recipe's model takes no golden image but which names one can never
    inspect: the server stops at start-up naming it, before any camera or PLC station is
    started. A recipe that is not loaded may still come (a fleet box's first pull, the
    admin API): a WARNING names the camera and the loaded recipes, and the server runs."""
    from lineside_inspect.errors import ConfigError
    from lineside_inspect.server.app import create_app

    from .conftest import keyed

    gold = CameraConfig(id="gold", source=str(IMAGES),
                        reference=str(STATION / "station1-reference.jpg"))
    cont = CameraConfig(id="cont", source=str(IMAGES), mode="continuous", recipe="deepcb")

    async def start(app: Any) -> None:
        async with app.router.lifespan_context(app):
            assert app.state.ready

    app = create_app(keyed(cameras=[cont, gold], store=False))
    try:
        with pytest.raises(ConfigError) as info:
            asyncio.run(start(app))
    finally:
        app.state.cameras.stop()
    message = info.value.message
    assert "camera gold has a reference configured (station1-reference.jpg)" in message
    assert "cont" not in message
    assert app.state.cameras.workers == {}  # refused before the cameras started

    app = create_app(keyed(cameras=[cont], store=False))
    try:
        with caplog.at_level("WARNING", logger="lineside.service"):
            asyncio.run(start(app))
    finally:
        app.state.cameras.stop()
    assert any("camera cont: unknown recipe 'deepcb' (loaded: deeppcb-default)" in r.getMessage()
               for r in caplog.records if r.levelname == "WARNING"), caplog.records


def _service(cams: list[CameraConfig], recipes: list[Path], models: list[Path]) -> Any:
    from lineside_inspect.recipes import load_recipe
    from lineside_inspect.references import ReferenceLibrary
    from lineside_inspect.server.limiter import Limiter
    from lineside_inspect.server.metrics import Metrics
    from lineside_inspect.server.registry import Registry
    from lineside_inspect.server.service import InspectionService

    registry = Registry(device="cpu", threads=1)
    for m in models:
        registry.load_model(str(m))
    for r in recipes:
        registry.add_recipe(load_recipe(r))
    manager = CameraManager(cams)
    manager.start()
    library = ReferenceLibrary(Path(tempfile.mkdtemp()), 64_000_000)
    return InspectionService(registry=registry, limiter=Limiter(1, 4, 10.0), metrics=Metrics(),
                             references=library, max_pixels=64_000_000, cameras=manager)


def test_a_failing_continuous_camera_is_warned_about_once_a_minute(
        caplog: pytest.LogCaptureFixture) -> None:
    """Its recipe gone after start-up: every frame fails; the log says so at WARNING, once
    (not once a frame), and says when it inspects again."""
    cam = CameraConfig(id="cont", source=str(IMAGES), fps=20, mode="continuous", rate_hz=20,
                       recipe="deeppcb")
    service = _service([cam], [], [ROOT / "models" / "deeppcb" / "1"])
    attempts: list[int] = []
    real = service.inspect_frame

    async def counted(camera_id: str, image: Any) -> Any:
        attempts.append(1)
        return await real(camera_id, image)

    service.inspect_frame = counted

    async def run() -> None:
        service.start_continuous()
        try:
            deadline = time.monotonic() + WAIT_S
            while len(attempts) < 6:
                assert time.monotonic() < deadline, "continuous camera never tried"
                await asyncio.sleep(0.05)
            from lineside_inspect.recipes import load_recipe

            service.registry.add_recipe(load_recipe(ROOT / "configs" / "recipes" / "deeppcb.yaml"))
            while not any("inspecting again" in r.message for r in caplog.records):
                assert time.monotonic() < deadline, "never inspected again"
                await asyncio.sleep(0.05)
        finally:
            await service.stop_continuous()

    try:
        with caplog.at_level("INFO", logger="lineside.service"):
            asyncio.run(run())
    finally:
        service.cameras.stop()
    warned = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and "continuous cont" in warned[0].message
    assert "unknown recipe 'deeppcb'" in warned[0].message


def test_the_golden_image_is_read_off_the_event_loop() -> None:
    cam = CameraConfig(id="ref", source=str(STATION / "station1"), fps=10, recipe="deeppcb-ref",
                       reference=str(STATION / "station1-reference.jpg"))
    service = _service([cam], [ROOT / "configs" / "recipes" / "deeppcb-ref.yaml"],
                       [ROOT / "models" / "deeppcb-ref" / "1"])
    threads: list[str] = []
    real = service.references.lookup

    def lookup(value: str) -> Any:
        threads.append(threading.current_thread().name)
        return real(value)

    service.references.lookup = lookup
    try:
        assert _wait(service.cameras.workers["ref"].online)
        result = asyncio.run(service.inspect_camera("ref", timeout_s=WAIT_S))
        assert result.verdict in ("pass", "fail") and result.frame.trigger_to_frame_ms > 0
    finally:
        service.cameras.stop()
        service.limiter.close()
    assert threads and all(name.startswith("inspect") for name in threads), threads


def test_camera_ids_are_unique_and_a_source_is_never_empty() -> None:
    """A repeated id replaced the first camera unsaid and moved every later station's
    block on the PLC; an empty source made the working folder a camera."""
    from pydantic import ValidationError

    from lineside_inspect.config import Settings

    cams = [{"id": "press", "source": "a"}, {"id": "oven", "source": "b"},
            {"id": "press", "source": "c"}]
    with pytest.raises(ValidationError, match=r"camera id 'press' is used twice \(cameras.0 and cameras.2\)"):
        Settings(cameras=cams)
    with pytest.raises(ValidationError, match=r"cameras.0.source\n.*must not be empty"):
        Settings(cameras=[{"id": "a", "source": " "}])
    with pytest.raises(Exception, match="must not be empty"):
        make_source("", open_timeout_s=1, read_timeout_s=1, loop=True, fps=None)


def test_a_folder_camera_skips_a_file_it_cannot_read(tmp_path: Path) -> None:
    """An unreadable image ended the source; the reopen began at the first image again,
    so the images after it never showed."""
    for i, name in enumerate(("a.png", "b.png", "c.png")):
        cv2.imwrite(str(tmp_path / name), counter_frame(i))
    (tmp_path / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    source = make_source(str(tmp_path), open_timeout_s=1, read_timeout_s=1, loop=True, fps=1000.0)
    source.open()
    seen = [source.read() for _ in range(4)]
    assert all(s is not None for s in seen)
    expected = [counter_frame(i) for i in (0, 2, 0, 2)]
    assert all(np.abs(s.astype(int) - e).mean() < 8 for s, e in zip(seen, expected, strict=True))
    (tmp_path / "a.png").write_bytes(b"")  # none readable any more: the source ends
    (tmp_path / "c.png").write_bytes(b"")
    assert source.read() is None


def test_a_source_that_opens_and_fails_at_once_backs_off_more_each_time(tmp_path: Path) -> None:
    """The count of failed attempts went back to 0 on every successful open, so a stream
    dropped right after connecting was retried every 0.1-0.2 s forever."""
    (tmp_path / "only.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")  # opens, reads nothing
    w = CameraWorker("cam", lambda: make_source(str(tmp_path), open_timeout_s=1, read_timeout_s=1,
                                                loop=True, fps=1000.0),
                     backoff_base_s=0.01, backoff_max_s=5.0)
    attempts: list[int] = []
    backoff = w._backoff
    w._backoff = lambda attempt: (attempts.append(attempt), backoff(min(attempt, 2)))  # type: ignore[method-assign]
    w.start()
    try:
        assert _wait(lambda: len(attempts) >= 4)
    finally:
        w.stop()
    assert attempts[:4] == [1, 2, 3, 4], attempts


def test_a_slow_cameras_stale_limit_follows_its_frame_interval() -> None:
    """A folder camera at 0.4 fps went stale between every two frames with the default
    2 s: online/stale twice a frame on the page, the metrics and retained MQTT messages."""
    assert CameraConfig(id="slow", source="frames", fps=0.4).stale_after_s == 6.25
    assert CameraConfig(id="fast", source="frames", fps=10).stale_after_s == 2.0
    assert CameraConfig(id="set", source="frames", fps=0.4, stale_after_s=9).stale_after_s == 9
    # set too tight (a config that loaded before): raised, with a warning, not refused
    assert CameraConfig(id="tight", source="frames", fps=0.4, stale_after_s=2).stale_after_s == 6.25


def test_a_folder_camera_reads_only_regular_files(tmp_path: Path) -> None:
    """A '.jpg' link to /dev/zero was read until the process was killed, and a FIFO
    named b.jpg blocked the camera for good (camera review, session 32)."""
    cv2.imwrite(str(tmp_path / "a.png"), counter_frame(0))
    (tmp_path / "z.jpg").symlink_to("/dev/zero")
    os.mkfifo(tmp_path / "b.jpg")
    source = make_source(str(tmp_path), open_timeout_s=1, read_timeout_s=1, loop=True, fps=1000.0)
    source.open()
    seen = [source.read() for _ in range(3)]  # returns at once: only a.png, again and again
    assert all(s is not None and np.abs(s.astype(int) - counter_frame(0)).mean() < 8
               for s in seen)


def test_a_file_url_plays_paced_and_loop_false_plays_once(video: Path) -> None:
    """file:///... was no file (played unpaced, 58 reconnects in 10 s), and loop: false
    started the file again after each backoff (camera review, session 32)."""
    source = make_source(video.as_uri(), open_timeout_s=1, read_timeout_s=1, loop=True,
                         fps=None)
    assert getattr(source, "is_file", False)
    w = CameraWorker("cam", lambda: make_source(str(video), open_timeout_s=1, read_timeout_s=1,
                                                loop=False, fps=240.0),
                     stale_after_s=1.0, backoff_base_s=0.05, backoff_max_s=0.2)
    w.start()
    try:
        assert _wait(lambda: w.health()["state"] == "stopped")
        health = w.health()
        assert health["frames"] == 60 and health["reconnects"] == 0, health
        assert "played to its end (loop: false)" in health["last_error"]
    finally:
        w.stop()


def test_a_source_whose_read_raises_is_reopened_not_dead() -> None:
    """fps 1e-300 made time.sleep raise in read(): the capture thread died and the camera
    showed 'stale' with no error for ever (camera review, session 32)."""

    class Raising:
        ended = False

        def open(self) -> None: ...

        def read(self) -> np.ndarray | None:
            raise OverflowError("sleep length is too large")

        def close(self) -> None: ...

    w = CameraWorker("cam", Raising, backoff_base_s=0.01, backoff_max_s=0.05)
    w.start()
    try:
        assert _wait(lambda: (w.health()["last_error"] or "").startswith("read failed"))
        assert w._thread is not None and w._thread.is_alive()
    finally:
        assert w.stop()


def test_a_stalled_stream_reconnects_at_once_and_a_stop_interrupts_its_read() -> None:
    """Session 49: a packet path's read that took packets and no frame (StreamStalled) was
    one of the 5 refused frames in a row; it ends the connection at once, said as
    "stalled". And stop() interrupts a source's read in progress (the packet path pulls
    packets until one makes a frame): the worker stopped only at the read's own end."""
    from lineside_inspect.cameras.h26x import StreamStalled

    opened: list[int] = []

    class Stalling:
        ended = False

        def open(self) -> None:
            opened.append(1)

        def read(self) -> np.ndarray | None:
            raise StreamStalled("900 H264 packets without a frame")

        def close(self) -> None: ...

    w = CameraWorker("cam", Stalling, backoff_base_s=0.01, backoff_max_s=0.05)
    w.start()
    try:
        assert _wait(lambda: len(opened) >= 2)  # reconnected after one read, not five
        assert (w.health()["last_error"] or "").startswith("stalled: 900 H264 packets")
    finally:
        assert w.stop()

    reading, interrupted = threading.Event(), threading.Event()

    class Interruptible:
        ended = False

        def open(self) -> None: ...

        def read(self) -> np.ndarray | None:
            reading.set()
            interrupted.wait(60)  # a read that goes on until interrupted
            return None

        def interrupt(self) -> None:
            interrupted.set()

        def close(self) -> None: ...

    w = CameraWorker("cam", Interruptible, backoff_base_s=0.01, backoff_max_s=0.05)
    w.start()
    assert reading.wait(30)
    assert w.stop()  # ended within stop's wait: the read was interrupted
    assert interrupted.is_set()


def test_the_manager_interrupts_every_read_before_waiting_for_any(tmp_path: Path) -> None:
    """Session 49: CameraManager.stop interrupted each camera's read in that worker's own
    stop(), one after another: a camera stuck opening took the whole wait, and the stream
    after it was interrupted with no time left, said as not stopped (waited for at exit)."""
    release, reading = threading.Event(), threading.Event()

    class OpenStuck:  # an open blocked up to its timeout: nothing interrupts it
        ended = False

        def open(self) -> None:
            release.wait(60)

        def read(self) -> np.ndarray | None:
            return None

        def close(self) -> None: ...

    class Interruptible:
        ended = False

        def __init__(self) -> None:
            self.interrupted = threading.Event()

        def open(self) -> None: ...

        def read(self) -> np.ndarray | None:
            reading.set()
            self.interrupted.wait(60)
            return None

        def interrupt(self) -> None:
            self.interrupted.set()

        def close(self) -> None: ...

    manager = CameraManager([CameraConfig(id=i, source=str(tmp_path), open_timeout_s=1,
                                          read_timeout_s=1) for i in ("stuck", "stream")])
    manager.workers = {"stuck": CameraWorker("stuck", OpenStuck),
                       "stream": CameraWorker("stream", Interruptible)}
    for w in manager.workers.values():
        w.start()
    try:
        assert reading.wait(30)
        # 2 s: the interrupted stream's thread ends within the stuck one's wait even when
        # starved (0.5 s was not always enough on a loaded host); interrupted only after
        # that wait, it would still be in its read at its join(0)
        stopped = manager.stop(timeout_s=2.0)
        assert stopped == {"stuck": False, "stream": True}, stopped
    finally:
        release.set()
        assert manager.workers["stuck"].stop()


@pytest.mark.parametrize("field", [{"fps": 1e9}, {"fps": 1e-300}, {"open_timeout_s": 1e7},
                                   {"read_timeout_s": 1e-5}, {"rate_hz": 1e6}])
def test_absurd_camera_settings_are_refused(field: dict[str, float]) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        CameraConfig(id="c", source="0", **field)


@pytest.mark.parametrize("name", ["fps", "rate_hz", "open_timeout_s", "read_timeout_s",
                                  "stale_after_s"])
def test_a_nan_camera_setting_is_refused_as_not_a_number(name: str) -> None:
    # NaN was refused as "less than or equal to 240": the bound, not the value, looked wrong
    from lineside_inspect.config import ConfigError, load_settings

    with pytest.raises(ConfigError, match=rf"cameras\.0\.{name}: Input should be a finite number"):
        load_settings(None, cameras=[{"id": "c", "source": "0", name: float("nan")}])


@pytest.mark.parametrize(("source", "said"), [
    ("htpp://admin:s3cret@cam/stream", "unknown URL scheme 'htpp'"),
    ("ftp://admin:s3cret@cam/a.avi", "unknown URL scheme 'ftp'"),
    ("admin:s3cret@cam://x", "unknown URL scheme: a camera URL starts with rtsp://"),
    ("file://cam/s3cret.avi", "a file URL is file:///absolute/path")])
def test_a_camera_url_of_no_camera_scheme_is_refused_at_start(source: str, said: str) -> None:
    # a typo'd scheme was offline for good, retried every few seconds; file://cam/a.avi was
    # the file /a.avi (camera review, session 38). One line, and never the password
    from lineside_inspect.config import ConfigError, load_settings

    with pytest.raises(ConfigError) as info:
        load_settings(None, cameras=[{"id": "c", "source": source}])
    message = str(info.value)
    assert said in message and "cameras.0.source" in message
    assert "s3cret" not in message and "\n" not in message
    # what cameras do speak still loads, a pipeline holding a URL too
    for ok in ("rtsp://admin:pw@cam/s", "HTTP://cam/x.mjpg", "file:///v/a.avi",
               "file://localhost/v/a.avi", "rtspsrc location=rtsp://cam/s ! decodebin ! appsink"):
        assert load_settings(None, cameras=[{"id": "c", "source": ok}]).cameras[0].source == ok


@pytest.mark.parametrize(("source", "said"), [
    ("-1", "a device index is plain digits"), ("+0", "a device index is plain digits"),
    ("2147483648", "device index 2147483648 is over 2147483647")])
def test_a_device_index_that_is_none_is_refused_at_start(source: str, said: str) -> None:
    # "-1" was opened as a file of that name and stayed offline ("cannot open"); an index
    # past a C int made OpenCV raise its overload list at every retry (mopup, session 38)
    from lineside_inspect.config import ConfigError, load_settings

    with pytest.raises(ConfigError) as info:
        load_settings(None, cameras=[{"id": "c", "source": source}])
    assert said in str(info.value) and "cameras.0.source" in str(info.value)
    assert "\n" not in str(info.value)
    for ok in ("0", "2147483647"):
        assert load_settings(None, cameras=[{"id": "c", "source": ok}]).cameras[0].source == ok


def test_only_ascii_digits_are_a_device_index() -> None:
    # "\u00b2".isdigit() is true, and int() of it raised: the camera's open failed with a
    # ValueError, not "cannot open" (mopup, session 38)
    from lineside_inspect.cameras.sources import OpenCVSource
    from lineside_inspect.errors import ImageError

    source = OpenCVSource("\u00b2", open_timeout_s=0.1, read_timeout_s=0.1)
    with pytest.raises(ImageError, match="cannot open video source"):
        source.open()


def test_an_outage_is_logged_once_and_its_end_on_a_frame(caplog: pytest.LogCaptureFixture) -> None:
    """A frozen continuous camera logged 'offline' and 'online again' at every reconnect
    (8 pairs in 5 s), though it never delivered a frame (review, session 32)."""
    still = counter_frame(0)

    class Still:
        ended = False

        def open(self) -> None: ...

        def read(self) -> np.ndarray | None:
            time.sleep(0.01)
            return still

        def close(self) -> None: ...

    caplog.set_level("INFO", logger="lineside.cameras")
    w = CameraWorker("cam", Still, stale_after_s=0.2, backoff_base_s=0.01, backoff_max_s=0.05,
                     detect_frozen=True)
    w.start()
    try:
        assert _wait(lambda: w.reconnects >= 3)
    finally:
        assert w.stop()
    lines = [r.getMessage() for r in caplog.records if r.name == "lineside.cameras"]
    assert sum("offline" in m for m in lines) == 1, lines
    assert not any("online again" in m for m in lines), lines


def test_live_views_without_keys_have_no_share() -> None:
    """With API keys off every caller is holder None: capped at half the views as one key
    (the limiter gives None no share; review, session 32)."""
    from lineside_inspect.errors import Overloaded
    from lineside_inspect.server.routes.cameras import LiveViews

    views = LiveViews(4)
    for _ in range(4):
        views.take(None)
    with pytest.raises(Overloaded, match="4 live views are open"):
        views.take(None)
    keyed = LiveViews(4)
    keyed.take("k")
    keyed.take("k")  # a key's share: half
    with pytest.raises(Overloaded, match="this key has 2 live views open"):
        keyed.take("k")
    keyed.take("other")


def test_a_camera_is_starting_until_its_first_frame_not_stale() -> None:
    """Opened, its first frame 0.7 s away: it was "stale" meanwhile, published retained
    over MQTT at every start and reconnect, and an MES alarm on stale flickered (line
    review, session 34)."""
    release = threading.Event()

    class SlowFirstFrame:
        ended = False

        def open(self) -> None:
            pass

        def read(self) -> np.ndarray | None:
            release.wait(10)
            time.sleep(0.02)
            return counter_frame(1)

        def close(self) -> None:
            pass

    w = CameraWorker("cam", SlowFirstFrame, stale_after_s=5.0)
    w.start()
    try:
        assert _wait(lambda: w.state == "online")  # opened
        assert w.health()["state"] == "starting" and not w.online()
        release.set()
        assert _wait(w.online)
    finally:
        release.set()
        w.stop()


def test_a_trigger_waiting_on_a_stalled_camera_ends_when_the_server_stops() -> None:
    """SIGTERM with a trigger (timeout_s=30) waiting on a camera whose stream stalled (the
    socket open, no bytes): the trigger held the shutdown for its whole 30 s, past docker
    stop's 10 s (camera review, session 36). The server's SIGTERM hooks end its wait, with
    a 503 naming the stop, within STOPPING_WAIT_S."""
    from lineside_inspect.server.app import create_app

    from .conftest import keyed

    released = threading.Event()

    class Stalled:
        ended = False

        def open(self) -> None: ...

        def read(self) -> np.ndarray | None:
            released.wait()  # a read blocked on a stalled stream
            return None

        def close(self) -> None: ...

    app = create_app(keyed(cameras=[CameraConfig(id="cam", source="0")], store=False))
    manager: CameraManager = app.state.cameras
    worker = manager.workers["cam"] = CameraWorker("cam", Stalled)
    worker.start()

    async def trigger_then_sigterm() -> CameraUnavailable:
        wait = asyncio.ensure_future(manager.fresh_frame("cam", after=time.monotonic(),
                                                         timeout_s=30))
        while not worker._listeners:  # the trigger is waiting for its frame
            await asyncio.sleep(0.01)
        for hook in app.state.on_signal:  # as serve.py runs them on SIGTERM
            await hook()
        with pytest.raises(CameraUnavailable) as caught:
            await wait
        return caught.value

    try:
        # well within the trigger's 30 s: it held the stop for all of them
        exc = asyncio.run(asyncio.wait_for(trigger_then_sigterm(), 15))
        assert "the server is stopping" in exc.message and not worker._listeners
    finally:
        released.set()
        assert worker.stop()


def test_a_trigger_still_gets_a_frame_that_comes_while_the_server_stops() -> None:
    """Stopping cuts only a wait no frame ends: a live camera's trigger, waiting at the
    signal or sent during a long drain_s (which serves on), is answered."""
    frames = threading.Semaphore(0)

    class OnDemand:
        ended = False

        def open(self) -> None: ...

        def read(self) -> np.ndarray | None:
            frames.acquire()
            return counter_frame(1)

        def close(self) -> None: ...

    manager = CameraManager([CameraConfig(id="cam", source="0")])
    worker = CameraWorker("cam", OnDemand)
    manager.workers["cam"] = worker
    worker.start()

    async def trigger(stop_first: bool) -> Frame:
        if stop_first:  # signalled long ago: a trigger within a long drain_s
            await manager.close()
            manager.stopping_at = time.monotonic() - 60
        wait = asyncio.ensure_future(manager.fresh_frame("cam", after=time.monotonic(),
                                                         timeout_s=30))
        while not worker._listeners:
            await asyncio.sleep(0.01)
        if not stop_first:
            await manager.close()
        frames.release()  # the camera's next frame
        return await wait

    try:
        assert asyncio.run(asyncio.wait_for(trigger(False), 15)).seq == 1
        assert asyncio.run(asyncio.wait_for(trigger(True), 15)).seq == 2
    finally:
        frames.release()
        assert worker.stop()


_STOP_IN_A_READ = """
import atexit, sys, threading, time
import numpy as np
from lineside_inspect.cameras import manager
from lineside_inspect.config import CameraConfig

reading = threading.Event()

class Blocked:  # a source inside a read OpenCV blocks until its read timeout
    ended = False
    def open(self): pass
    def read(self):  # 2 s: ended long after stop's 0.05 s wait even on a paused host
        reading.set()
        time.sleep(2.0)
        return np.zeros((8, 8, 3), np.uint8)
    def close(self): pass

manager.make_source = lambda *a, **k: Blocked()
cams = manager.CameraManager([CameraConfig(id="c", source="rtsp://127.0.0.1:9/x",
                                           open_timeout_s=0.1, read_timeout_s=2.0)])
# registered first, so run last: what the interpreter finalizes under
atexit.register(lambda: print("alive" if thread.is_alive() else "ended", flush=True))
cams.start()
thread = cams.workers["c"]._thread
reading.wait(5)
print(cams.stop(0.05), flush=True)
"""


def test_a_worker_left_in_a_read_at_stop_ends_before_the_interpreter_finalizes() -> None:
    """A camera read in flight when the server stopped returned while the interpreter was
    finalizing: Python ended its thread through OpenCV's catch (...) and the process aborted
    ("FATAL: exception not rethrown", exit 134 on Ctrl-C; session 40's soak). The worker is
    waited for at exit, within its own timeouts, before finalizing."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        str(Path(__file__).resolve().parents[2] / d) for d in ("inspect", "training"))}
    proc = subprocess.run([sys.executable, "-c", _STOP_IN_A_READ], capture_output=True,
                          text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["{'c':", "False}", "ended"]


def test_a_folder_camera_closed_from_another_thread_mid_read_does_not_raise(
        tmp_path: Path) -> None:
    """close() (a camera stopped from the server's thread) empties the folder's list while
    the worker's read walks it: the read indexed the emptied list, an IndexError (session
    50). Here the close comes at the first file's check, where another thread's would."""
    cv2.imwrite(str(tmp_path / "a.png"), counter_frame(0))
    cv2.imwrite(str(tmp_path / "b.png"), counter_frame(1))
    source = make_source(str(tmp_path), open_timeout_s=1, read_timeout_s=1, loop=True, fps=1000.0)
    source.open()

    class ClosedAtItsCheck(type(tmp_path)):  # type: ignore[misc]
        def is_file(self) -> bool:
            source.close()  # as the other thread's close, mid-read
            return False

    first, second = source.files  # type: ignore[attr-defined]
    source.files = [ClosedAtItsCheck(first), second]  # type: ignore[attr-defined]
    frame = source.read()  # the list it began with: the next file
    assert frame is not None and np.abs(frame.astype(int) - counter_frame(1)).mean() < 8
    assert source.files == []  # type: ignore[attr-defined]


def test_a_video_file_removed_or_replaced_while_looping_is_reopened(
        video: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A looping video file camera rewound the capture it opened: a file deleted under it
    played on for ever, "online", and one replaced was never seen (camera review,
    session 53). At its end the file is checked: gone, the camera is offline saying why;
    replaced, the new one plays."""
    caplog.set_level(logging.WARNING, logger="lineside.cameras")
    w = CameraWorker("cam", lambda: make_source(str(video), open_timeout_s=1, read_timeout_s=1,
                                                loop=True, fps=240.0),
                     stale_after_s=1.0, backoff_base_s=0.05, backoff_max_s=0.2)
    w.start()
    try:
        assert _wait(lambda: w.health()["frames"] > 70)  # looped once at least
        assert w.health()["reconnects"] == 0
        video.unlink()
        assert _wait(lambda: w.health()["state"] == "offline"
                     and "open failed" in (w.health()["last_error"] or "")), w.health()
        assert "cannot open video source 'line.avi'" in w.health()["last_error"]
        # said as what it is, once (not five "frames refused" in a row)
        offline = [r.getMessage() for r in caplog.records if "offline" in r.getMessage()]
        assert offline[0] == ("camera cam offline: video file 'line.avi' was removed or "
                              "changed since it opened"), offline
        writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 30, (200, 100))
        for _ in range(10):
            writer.write(np.full((100, 200, 3), 200, np.uint8))
        writer.release()

        def replaced() -> bool:
            frame = w.latest()
            return w.online() and frame is not None and frame.image.shape == (100, 200, 3)

        assert _wait(replaced), w.health()
        # and a file rewritten in place (here cut short: no longer a video it can open)
        with video.open("r+b") as f:
            f.truncate(video.stat().st_size // 2)
        assert _wait(lambda: w.health()["state"] == "offline"), w.health()
    finally:
        assert w.stop()


def test_a_looping_video_file_touched_or_grown_plays_on_without_a_reconnect(video: Path) -> None:
    """A file only touched (its time changed) or being written (grown) is opened again in
    place at its end: it went offline for a back-off at each pass (review, session 53),
    its camera flickering on the line's outputs."""
    w = CameraWorker("cam", lambda: make_source(str(video), open_timeout_s=1, read_timeout_s=1,
                                                loop=True, fps=240.0),
                     stale_after_s=1.0, backoff_base_s=0.05, backoff_max_s=0.2)
    w.start()
    try:
        assert _wait(lambda: w.health()["frames"] > 10)
        for n in range(3):  # each a pass at least (the sample is 60 frames at 240 fps)
            seen = w.health()["frames"]
            os.utime(video, ns=(time.time_ns(), time.time_ns() + n + 1))
            assert _wait(lambda seen=seen: w.health()["frames"] > seen + 80), w.health()
        assert w.health()["state"] == "online" and w.health()["reconnects"] == 0, w.health()
    finally:
        assert w.stop()
