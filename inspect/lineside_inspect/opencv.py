"""The one place that imports OpenCV: ``from lineside_inspect.opencv import cv2``.

Public, for the training side and any tool that reads images as the edge does. OpenCV
reads ``OPENCV_IO_MAX_IMAGE_PIXELS`` once, when ``cv2`` is first imported; a decompression
bomb (a tiny PNG that claims 20000x20000 pixels) is only refused if the limit is in the
environment by then, so every module gets ``cv2`` from here. ``MAX_IMAGE_PIXELS`` is the
one pixel limit (``LINESIDE_MAX_IMAGE_PIXELS``, default 64 Mpx); decoders and settings
default to it.
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
