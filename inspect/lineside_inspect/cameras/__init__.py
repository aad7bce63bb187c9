"""Cameras the server reads itself: OpenCV sources, capture workers, triggers."""

from lineside_inspect.cameras.manager import CameraManager, CameraUnavailable
from lineside_inspect.cameras.worker import CameraWorker, Frame

__all__ = ["CameraManager", "CameraUnavailable", "CameraWorker", "Frame"]
