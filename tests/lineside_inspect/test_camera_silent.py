"""A camera whose connection stays open and sends nothing for its ``read_timeout_s`` (a
stream that sent a frame and stalled, a camera slower than the timeout) is said as such to
the operator, not as "source failed or ended", which reads as a dropped connection and
never points at ``read_timeout_s``; a dropped connection is still said as before. Real
streams on loopback (session 51)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lineside_inspect.cameras import h26x
from lineside_inspect.cameras.simulator import MJPEGSimulator
from lineside_inspect.cameras.sources import OpenCVSource

from . import test_camera_close as close
from .test_camera_close import MkvStream, h264_units  # noqa: F401 (a fixture)

PORTS = range(54000, 54400)  # this file's servers: loopback, ports of their own
SILENT = (r"^nothing came from the stream for read_timeout_s \({}\): it stalled, or "
          r"sends frames less often than that \(a slow camera needs read_timeout_s raised\)$")


@pytest.fixture
def ports(monkeypatch: pytest.MonkeyPatch) -> Iterator[Iterator[int]]:
    it = iter(PORTS)
    monkeypatch.setattr(close, "PORTS", it)  # MkvStream binds from them
    yield it


def _mjpeg(ports: Iterator[int]) -> MJPEGSimulator:
    for port in ports:
        try:
            return MJPEGSimulator(port=port)
        except OSError:
            continue
    raise AssertionError("no loopback port free in 54000-54399")


def test_an_mjpeg_stream_silent_for_its_read_timeout_is_said_so(ports: Iterator[int]) -> None:
    stream = _mjpeg(ports)
    # 1 s, not 0.3 s: the first read (of the live stream, before the hang) must get its
    # frame, and a starved server thread's pause on a loaded CI host outlasted 0.3 s
    source = OpenCVSource(stream.url, open_timeout_s=3, read_timeout_s=1.0)
    try:
        source.open()
        assert source.read() is not None
        stream.mode = "hang"  # the connection open, no more bytes
        with pytest.raises(h26x.StreamStalled, match=SILENT.format("1 s")):
            for _ in range(30):  # a frame already on its way may come first
                assert source.read() is not None
    finally:
        source.close()
        stream.kill()


def test_an_h264_stream_that_sends_frames_then_stalls_is_said_so_and_a_drop_is_not(
        ports: Iterator[int], h264_units: list[bytes]) -> None:  # noqa: F811
    sets = h26x._parameter_sets("h264", h264_units[0])
    live = MkvStream(h264_units, sets, interval_s=0.02, idle_after=20)  # then silent
    source = OpenCVSource(live.url, open_timeout_s=3, read_timeout_s=0.3)
    try:
        source.open()
        assert source.h26x is not None
        with pytest.raises(h26x.StreamStalled, match=SILENT.format(r"0\.3 s")):
            for _ in range(30):
                assert source.read() is not None
    finally:
        source.close()
        live.kill()
    # the connection dropped (the server gone): no wait for the timeout, "failed or ended"
    live = MkvStream(h264_units, sets, interval_s=0.02, idle_after=10**6)
    source = OpenCVSource(live.url, open_timeout_s=3, read_timeout_s=5)
    try:
        source.open()
        assert source.read() is not None
        live.kill()
        for _ in range(300):  # the frames already sent, then the end
            if source.read() is None:
                break
        else:
            raise AssertionError("read on after the connection dropped")
    finally:
        source.close()
