"""Frame sources: the one seam to OpenCV's ``VideoCapture`` (device index, RTSP/HTTP
URL, GStreamer pipeline, video file) and a folder of images as a simulated camera."""

from __future__ import annotations

import logging
import math
import threading
import time
from pathlib import Path
from typing import Protocol

import numpy as np

from lineside_inspect.cameras.h26x import CODECS, H26xStream, PacketsUnusable, silent
from lineside_inspect.config import device_index
from lineside_inspect.errors import ImageError
from lineside_inspect.imageio import IMAGE_SUFFIXES, decode_image, read_image
from lineside_inspect.opencv import MAX_IMAGE_PIXELS, cv2
from lineside_inspect.redact import file_path, shown_source

log = logging.getLogger("lineside.cameras")

# sources whose H.264/H.265 the packet path could not read (see h26x.PacketsUnusable),
# read by OpenCV's own decoder until a restart: a reconnect does not try them again, and
# the warning is said once; bounded, as a source reconfigured many times would grow it
_OPENCV_DECODES: dict[str, str] = {}
_OPENCV_DECODES_MAX = 256


class SourceChanged(ImageError):
    """A looping video file removed or changed since it opened: not a frame refused (the
    worker ends the connection at once and opens the file as it is now)."""


class FrameSource(Protocol):
    def open(self) -> None: ...

    def read(self) -> np.ndarray | None:
        """The next frame (BGR), or None when the source has failed or ended (``ended``
        then says it played to its end and is not to be opened again: ``loop: false``)."""
        ...

    @property
    def ended(self) -> bool: ...

    def close(self) -> None: ...

    # optional: ``interrupt()``, called from another thread (the worker's stop), ends a read
    # in progress soon, without a frame, rather than when the stream next fails


class OpenCVSource:
    """``cv2.VideoCapture`` with open/read timeouts, so a dead address or a frozen
    stream cannot block a worker for OpenCV's default 30 s. Files are paced at their
    own frame rate and looped when asked."""

    def __init__(self, source: str, *, open_timeout_s: float, read_timeout_s: float,
                 loop: bool = True, fps: float | None = None,
                 max_pixels: int = MAX_IMAGE_PIXELS) -> None:
        self.source = source
        self.max_pixels = max_pixels
        # an MJPEG stream's JPEGs as sent, decoded here (see ``open``)
        self.raw_jpeg = False
        self.h26x: H26xStream | None = None  # an H.264/H.265 stream's packets, decoded here
        self._stop = threading.Event()  # interrupt(): the packet path's read ends
        self.open_timeout_ms = int(open_timeout_s * 1000)
        self.read_timeout_ms = int(read_timeout_s * 1000)
        self.loop = loop
        self.is_file = Path(source).is_file()
        self.fps = fps
        self.cap: cv2.VideoCapture | None = None
        self._file: tuple[int, ...] | None = None  # a video file as it opened (_file_id)
        self._next = 0.0
        self.ended = False
        # close() from another thread (a stop, a shutdown) while this source's own thread
        # is inside open() or read() freed the capture under that read: a segfault. Such a
        # close is left to the reader (``_busy``, ``_close_asked``), under ``_guard``
        self._guard = threading.Lock()
        self._busy = False  # an open() or read() in progress
        self._close_asked = False  # close() came during it: the reader closes on its way out

    def _enter(self, *, opening: bool = False) -> bool:
        with self._guard:
            if opening and self._close_asked:  # opened again after a close
                self._close_asked = False
                self._stop.clear()
            elif self._close_asked:
                return False
            self._busy = True
            return True

    def _leave(self) -> None:
        with self._guard:
            self._busy = False
            if self._close_asked:
                self._release()

    def open(self) -> None:
        self._enter(opening=True)
        try:
            self._open()
        finally:
            self._leave()

    def _open(self) -> None:
        index = device_index(self.source)
        src: int | str = self.source if index is None else index
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, self.open_timeout_ms,
                  cv2.CAP_PROP_READ_TIMEOUT_MSEC, self.read_timeout_ms]
        backend = cv2.CAP_GSTREAMER if "!" in self.source else cv2.CAP_ANY
        # taken before the open: a file changed during it is then reopened at its end
        opening = _file_id(self.source) if self.is_file else None
        cap = cv2.VideoCapture(src, backend, params)
        if not cap.isOpened():
            cap.release()
            raise ImageError(f"cannot open video source {shown_source(self.source)!r}")
        self.cap = cap
        self._file = opening
        fourcc = int(cap.get(cv2.CAP_PROP_FOURCC)).to_bytes(4, "little")
        if not self.is_file and cap.getBackendName() == "FFMPEG" and fourcc in CODECS \
                and self.source not in _OPENCV_DECODES and cap.set(cv2.CAP_PROP_FORMAT, -1):
            # each frame at the size its SPS says (see h26x): FFmpeg's reader scaled a
            # camera switched to another resolution to the size it opened at, stretched
            try:
                self.h26x = H26xStream(cap, CODECS[fourcc], self.max_pixels, self._stop,
                                       read_timeout_s=self.read_timeout_ms / 1000)
            except PacketsUnusable as exc:
                self._opencv_decodes(exc)
                return
        elif not self.is_file and cap.getBackendName() == "FFMPEG" and fourcc == b"MJPG":
            # an MJPEG stream's frames are decoded here, each at its own size: FFmpeg's
            # reader scaled every frame to the size it opened at (a camera switched to
            # 640x480 went on as a stretched 160x120, and a frame over max_pixels was
            # decoded whole, then shrunk under the limit), and it decoded a JPEG cut
            # short half grey, judged as a frame
            self.raw_jpeg = bool(cap.set(cv2.CAP_PROP_FORMAT, -1))
        if self.is_file and self.fps is None:
            # a container's own rate, if it is one (a variable-rate or broken file says NaN,
            # 0 or 90000: unpaced, a busy loop); a time-lapse's 0.2 is kept
            rate = cap.get(cv2.CAP_PROP_FPS)
            self.fps = rate if math.isfinite(rate) and 0.01 <= rate <= 120 else 25.0
        self._next = time.monotonic()

    def read(self) -> np.ndarray | None:
        if not self._enter():
            return None  # closed from another thread
        try:
            return self._read()
        finally:
            self._leave()

    def _read(self) -> np.ndarray | None:
        if self.cap is None:
            return None
        if self.h26x is not None:
            try:
                return self.h26x.read()
            except PacketsUnusable as exc:
                self._opencv_decodes(exc)
                return self._read()
        if self.is_file:  # pace a file like a live camera
            self._next += 1.0 / (self.fps or 25.0)
            delay = self._next - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        began = time.monotonic()
        ok, frame = self.cap.read()
        if not ok and not self.is_file and not self._stop.is_set() and \
                time.monotonic() - began >= self.read_timeout_ms / 1000:
            raise silent(self.read_timeout_ms / 1000)  # (the worker: "stalled: ...")
        if not ok and self.is_file and self.loop:
            now = _file_id(self.source)
            if now == self._file:
                self.cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            elif not self._reopened(gone=now is None):
                return None  # a close was asked meanwhile
            ok, frame = self.cap.read()
        elif not ok and self.is_file:
            self.ended = True  # played once, as asked: not opened again
        if not ok or frame is None:
            return None
        if self.raw_jpeg:
            # the size from its header before any pixel (ImageTooLargeError), a cut or
            # broken JPEG refused (ImageError): the worker names it and reconnects
            return decode_image(frame.tobytes(), self.max_pixels)
        return frame

    def _reopened(self, *, gone: bool) -> bool:
        """At its end, a looping video file that is no longer the one opened, opened again
        here as it is now (False: a close was asked). The open capture went on looping the
        file it opened: a deleted one for ever, "online", and a video replaced or cut short
        was never seen (camera review, session 53). A file gone or no longer a video is
        :class:`SourceChanged`: the worker takes the camera offline, saying so; one only
        touched or still being written plays on, with no reconnect."""
        changed = f"video file {shown_source(self.source)!r} was removed or changed since it opened"
        if gone:
            raise SourceChanged(changed)
        self._release()
        if self._stop.is_set() or self._close_asked:
            return False
        try:
            self._open()  # on this thread, inside the read: a close from another is deferred
        except ImageError:
            raise SourceChanged(changed) from None
        return True

    def _opencv_decodes(self, why: PacketsUnusable) -> None:
        """Reopen the source to be decoded by OpenCV's reader, as before session 40: a
        camera that worked must not stop because the packet path cannot read its stream."""
        if self.source not in _OPENCV_DECODES:
            if len(_OPENCV_DECODES) >= _OPENCV_DECODES_MAX:
                _OPENCV_DECODES.pop(next(iter(_OPENCV_DECODES)))
            log.warning("camera source %r: decoded by OpenCV's reader (a change of resolution "
                        "is then scaled to the size it opened at until a reconnect), as its "
                        "H.264/H.265 packets cannot be read here: %s",
                        shown_source(self.source), why)
        _OPENCV_DECODES[self.source] = str(why)
        self._release()
        if not self._stop.is_set() and not self._close_asked:  # (read: None, cap None)
            self._open()  # on this thread, inside the read: a close from another is deferred

    def interrupt(self) -> None:
        # the packet path's decoder pulls packets until one makes a frame: it stops at
        # the next packet (OpenCV's own reader ends within its read timeout)
        self._stop.set()

    def close(self) -> None:
        """Safe from any thread. During an open() or read() on another (the worker's), that
        read is interrupted (the packet path stops at its next packet, OpenCV's own reader
        within its read timeout) and the capture is released by the reader as it returns,
        never under it; this returns at once. Reads after it give None."""
        with self._guard:
            if self._busy:
                self._close_asked = True
                self._stop.set()
                return
            self._release()

    def _release(self) -> None:
        if self.h26x is not None:
            self.h26x.close()
            self.h26x = None
        if self.cap is not None:
            self.cap.release()
            self.cap = None


def _file_id(path: str) -> tuple[int, ...] | None:
    """What tells a file from its replacement or an edit of it; None once it is gone."""
    try:
        st = Path(path).stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


class FolderSource:
    """A simulated camera: the images of a folder in name order, at ``fps``, looped
    (files it cannot read skipped)."""

    def __init__(self, folder: str | Path, *, fps: float = 10.0, loop: bool = True) -> None:
        self.folder = Path(folder)
        self.fps = fps
        self.loop = loop
        self.files: list[Path] = []
        self.index = 0
        self._next = 0.0
        self.ended = False

    def open(self) -> None:
        self.files = sorted(p for p in self.folder.rglob("*")
                            if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not self.files:
            raise ImageError(f"{self.folder.name}: no images for the simulated camera")
        self.index = 0
        self._next = time.monotonic()

    def read(self) -> np.ndarray | None:
        """The next readable image; None once the folder is played (not looping) or holds
        none readable. An unreadable file is skipped: it ended the source, and the reopen
        started at the first image again, so the images after it never showed."""
        self._next += 1.0 / self.fps
        delay = self._next - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        # the list as it was: close() from another thread (a camera stopped mid-read)
        # empties self.files, and indexing it then was an IndexError (session 50)
        files = self.files
        for _ in range(len(files)):
            index = self.index
            if index >= len(files):
                if not self.loop:
                    self.ended = True
                    return None
                index = 0
            self.index = index + 1
            path = files[index]
            try:
                # a regular file of a bounded size: a '.jpg' link to /dev/zero was read
                # until the server was killed, a FIFO blocked the camera for good
                if not path.is_file() or path.stat().st_size > MAX_FOLDER_IMAGE_BYTES:
                    continue
                return read_image(path)
            except (ImageError, OSError):  # a file removed or damaged since the listing
                continue
        return None

    def close(self) -> None:
        self.files = []


FOLDER_FPS = 10.0  # a folder camera's rate when none is configured
MAX_FOLDER_IMAGE_BYTES = 64 << 20  # a folder camera's image file (a camera's frame: far less)


def make_source(source: str, *, open_timeout_s: float, read_timeout_s: float, loop: bool,
                fps: float | None, max_pixels: int = MAX_IMAGE_PIXELS) -> FrameSource:
    """``fps`` None: a video file plays at its own rate, a folder at :data:`FOLDER_FPS`."""
    if not source.strip():  # Path("") is the working folder: never a camera
        raise ImageError("a camera's source must not be empty")
    source = file_path(source)  # a file as a URL: the file (it played unpaced)
    if Path(source).is_dir():
        return FolderSource(source, fps=fps or FOLDER_FPS, loop=loop)
    return OpenCVSource(source, open_timeout_s=open_timeout_s, read_timeout_s=read_timeout_s,
                        loop=loop, fps=fps if Path(source).is_file() else None,
                        max_pixels=max_pixels)
