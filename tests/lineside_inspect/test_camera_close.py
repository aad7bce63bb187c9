"""Camera sources closed and stalled safely, against real streams on loopback: a close from
another thread during a read (it freed OpenCV's capture under the read: a segfault), a
stream sending packets that never decode slowly (held a read past its read timeout), and
``lineside`` ending on an exception with a camera in a read."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lineside_inspect.cameras import h26x
from lineside_inspect.cameras.simulator import MJPEGSimulator
from lineside_inspect.cameras.sources import OpenCVSource
from lineside_inspect.cameras.worker import CameraWorker

from .test_cameras import _ENCODE_H264, _encoder_available

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(str(ROOT / d) for d in ("inspect", "training"))}
PORTS = iter(range(49400, 49600))  # this file's servers: loopback, ports of their own


def _bind(handler: type[http.server.BaseHTTPRequestHandler]) -> http.server.ThreadingHTTPServer:
    for port in PORTS:
        try:
            server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
        except OSError:
            continue
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        return server
    raise AssertionError("no loopback port free in 49400-49599")


class MkvStream:
    """A live H.264 stream as a camera's HTTP Matroska: the packets of a real encoder, sent
    one a ``interval_s``; after ``idle_after`` of them the connection stays open, silent."""

    def __init__(self, packets: list[bytes], sets: bytes, *, interval_s: float,
                 idle_after: int) -> None:
        outer = self
        self.sent = 0
        self.closing = threading.Event()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "video/x-matroska")
                self.end_headers()
                try:
                    self.wfile.write(h26x._matroska_header("h264", sets, (64, 48), 30.0))
                    for i in range(idle_after):
                        self.wfile.write(h26x._block(packets[i % len(packets)], i * 33))
                        self.wfile.flush()
                        outer.sent = i + 1
                        if outer.closing.wait(interval_s):
                            return
                    outer.closing.wait(30)
                except OSError:
                    pass

            def log_message(self, *args: object) -> None:
                pass

        self.server = _bind(Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/camera.mkv"

    def kill(self) -> None:
        self.closing.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def h264_units() -> list[bytes]:
    """A real encoder's packets: a key frame (with its parameter sets) and 29 P frames."""
    if not Path("/usr/bin/python3").exists() or not _encoder_available("h264"):
        pytest.skip("GStreamer's h264 encoder is not installed")
    out = subprocess.run(["/usr/bin/python3", "-c", _ENCODE_H264], capture_output=True,
                         text=True, check=True).stdout.split()
    return [bytes.fromhex(line) for line in out]


@pytest.fixture
def mjpeg() -> Iterator[MJPEGSimulator]:
    for port in PORTS:
        try:
            s = MJPEGSimulator(port=port)
        except OSError:
            continue
        yield s
        s.kill()
        return
    raise AssertionError("no loopback port free in 49400-49599")


_RACES = """
import sys, threading
from lineside_inspect.cameras.sources import OpenCVSource
from lineside_inspect.errors import ImageError

RACES = 12

def race(url, reads_before_close):
    source = OpenCVSource(url, open_timeout_s=3, read_timeout_s=1)
    source.open()
    read = threading.Semaphore(0)
    def reader():
        while True:
            try:
                frame = source.read()
            except ImageError:  # a refused frame: the next read
                frame = True
            read.release()
            if frame is None:
                return
    thread = threading.Thread(target=reader)
    thread.start()
    for _ in range(reads_before_close):
        assert read.acquire(timeout=10)
    source.close()  # from this thread, the reader inside its next read
    thread.join(10)
    assert not thread.is_alive(), "a read went on after close"
    assert source.cap is None and source.read() is None  # released, by the reader

for url in sys.argv[1:]:
    for i in range(RACES):
        race(url, 1 + i % 3)
print("ok", flush=True)
"""


def test_a_close_from_another_thread_never_frees_a_read_in_progress(
        mjpeg: MJPEGSimulator, h264_units: list[bytes]) -> None:
    # close() released OpenCV's capture (and the packet path's raw reader) while the
    # worker's thread was inside read() on it: a segfault. Now the reader releases it as
    # its read returns. In a child process, so a crash fails this test, not pytest
    live = MkvStream(h264_units, h26x._parameter_sets("h264", h264_units[0]),
                     interval_s=1 / 30, idle_after=10**6)
    try:
        proc = subprocess.run([sys.executable, "-c", _RACES, mjpeg.url, live.url],
                              capture_output=True, text=True, timeout=120, env=ENV)
    finally:
        live.kill()
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["ok"]


def test_a_stream_sending_undecodable_packets_slowly_is_given_up_within_its_read_timeout(
        h264_units: list[bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    # the stall bound counted packets only (300; 900 before a first frame at 30 fps):
    # slices needing a key frame never sent, one a second, held one read for 15 minutes.
    # Now a read without a frame for over its read timeout is stalled too
    monkeypatch.setattr(h26x, "FIRST_FRAME_S", 0)  # the first frame's wait: the read timeout
    sets = h26x._parameter_sets("h264", h264_units[0])
    keyless = [sets + h264_units[1], *h264_units[2:]]
    # 120 packets then silence: without the time bound the read ended at the silence
    # (OpenCV's read timeout: "source failed or ended"), not as stalled
    # (read_timeout_s 1 s, not 0.3 s: a starved sender's pause on a loaded CI host outlasted
    # 0.3 s, and the read ended as silent, not as packets without a frame)
    live = MkvStream(keyless, sets, interval_s=0.02, idle_after=120)
    source = OpenCVSource(live.url, open_timeout_s=3, read_timeout_s=1.0)
    try:
        source.open()
        assert source.h26x is not None
        with pytest.raises(h26x.StreamStalled, match=r"^\d+ H264 packets without a frame "
                                                     r"in 1 s: the stream sends nothing"):
            source.read()
    finally:
        source.close()
        live.kill()
    live = MkvStream(keyless, sets, interval_s=0.02, idle_after=120)
    worker = CameraWorker("cam", lambda: OpenCVSource(live.url, open_timeout_s=3,
                                                      read_timeout_s=0.3),
                          backoff_base_s=0.05, backoff_max_s=0.2)
    worker.start()
    try:
        deadline = time.monotonic() + 20
        while not (worker.last_error or "").startswith("stalled: ") and time.monotonic() < deadline:
            time.sleep(0.02)
        assert (worker.last_error or "").startswith("stalled: ")  # ended, to reconnect
        assert worker.health()["state"] != "online"
    finally:
        assert worker.stop(5.0)
        live.kill()


_SERVE_RAISES = """
import sys
from lineside_inspect import cli
from lineside_inspect.cameras import CameraManager
from lineside_inspect.cameras.simulator import MJPEGSimulator
from lineside_inspect.config import CameraConfig

camera = MJPEGSimulator(port=int(sys.argv[1]))

def serve():  # `lineside serve` with its camera in a read, ending on a bug
    cams = CameraManager([CameraConfig(id="c", source=camera.url, open_timeout_s=5,
                                       read_timeout_s=60)])
    cams.start()
    assert cams.workers["c"].wait_frame_after(0.0, 10) is not None
    camera.mode = "hang"  # its next read waits for bytes that never come
    raise RuntimeError("boom")

cli.app = serve
cli.main()
"""


def test_lineside_ending_on_an_exception_interrupts_its_cameras_not_finalizing_under_them(
        mjpeg: MJPEGSimulator) -> None:
    # only Ctrl-C and typer's exits reached end_if_left_in_a_read: an ordinary exception
    # left the cameras running (their server never stopped them), the interpreter
    # finalizing under a read (an abort) or waiting out its read_timeout_s
    port = mjpeg.port
    mjpeg.kill()  # its port, for the child's own camera
    proc = subprocess.run([sys.executable, "-c", _SERVE_RAISES, str(port)], capture_output=True,
                          text=True, timeout=90, env=ENV)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "RuntimeError: boom" in proc.stderr  # said, as the interpreter says it
    assert "camera c still in a read of its source (a stalled stream): the process ends " \
           "without waiting for its read_timeout_s" in proc.stderr
