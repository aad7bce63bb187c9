"""A simulated network camera: MJPEG over HTTP on loopback, from a folder of images or
generated frames. Used by ``lineside bench camera`` and by the tests, which also switch
it to a frozen picture or a hung connection and kill and restart it."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from lineside_inspect.imageio import IMAGE_SUFFIXES, read_image
from lineside_inspect.opencv import cv2


def counter_frame(i: int) -> np.ndarray:
    """A small frame showing its own number."""
    img = np.full((120, 160, 3), 40, np.uint8)
    cv2.putText(img, str(i), (10, 80), cv2.FONT_HERSHEY_SIMPLEX, 2, (255, 255, 255), 3)
    return img


def folder_frames(folder: str | Path) -> Callable[[int], np.ndarray]:
    files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    images = [read_image(p) for p in files]
    if not images:
        raise ValueError(f"{folder}: no images")
    return lambda i: images[i % len(images)]


class MJPEGSimulator:
    """``mode``: ``live`` (new frames at ``fps``), ``frozen`` (the same picture again and
    again), ``hang`` (connection open, no bytes) or ``cut`` (each JPEG cut to a third and
    closed with its end marker, as a lossy link delivers them) or ``lossy`` (every fourth
    cut so)."""

    def __init__(self, frames: Callable[[int], np.ndarray] = counter_frame, *,
                 fps: float = 30.0, port: int = 0) -> None:
        self.frames = frames
        self.fps = fps
        self.mode = "live"
        self.port = port
        self.server: http.server.ThreadingHTTPServer | None = None
        self.start()

    def start(self) -> None:
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=f")
                self.end_headers()
                i, cache = 0, {}
                try:
                    while outer.server is not None:
                        if outer.mode == "hang":
                            time.sleep(0.05)
                            continue
                        n = 0 if outer.mode == "frozen" else i
                        if n not in cache:
                            cache = {n: cv2.imencode(".jpg", outer.frames(n))[1].tobytes()}
                        data = cache[n]
                        if outer.mode == "cut" or (outer.mode == "lossy" and i % 4 == 3):
                            data = data[:len(data) // 3] + b"\xff\xd9"
                        self.wfile.write(b"--f\r\nContent-Type: image/jpeg\r\nContent-Length: "
                                         + str(len(data)).encode() + b"\r\n\r\n" + data + b"\r\n")
                        i += 1
                        time.sleep(1 / outer.fps)
                except OSError:
                    pass

            def log_message(self, *args: object) -> None:
                pass

        http.server.ThreadingHTTPServer.allow_reuse_address = True
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        # kill() waits for serve_forever's next poll: every 50 ms, not the default 0.5 s
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()

    def kill(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            server.shutdown()
            server.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/stream.mjpg"
