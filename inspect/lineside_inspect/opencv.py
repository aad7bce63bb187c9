"""The one place that imports OpenCV.

OpenCV reads ``OPENCV_IO_MAX_IMAGE_PIXELS`` once, when ``cv2`` is first imported; a
decompression bomb (a tiny PNG that claims 20000x20000 pixels) is only refused if the
limit is in the environment by then, so every module gets ``cv2`` from here.
"""

from __future__ import annotations

import os

MAX_IMAGE_PIXELS = int(os.environ.get("LINESIDE_MAX_IMAGE_PIXELS", str(64 * 1024 * 1024)))
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(MAX_IMAGE_PIXELS))
# RTSP over TCP: UDP loses packets (and whole frames) on busy networks and many firewalls
os.environ.setdefault("OPENCV_FFMPEG_CAPTURE_OPTIONS", "rtsp_transport;tcp")

import cv2  # noqa: E402

cv2.setNumThreads(1)

__all__ = ["MAX_IMAGE_PIXELS", "cv2"]
