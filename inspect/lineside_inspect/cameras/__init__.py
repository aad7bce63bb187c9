"""Cameras the server reads itself: OpenCV sources, capture workers, triggers."""

from lineside_inspect.cameras.manager import CameraManager
from lineside_inspect.cameras.worker import CameraWorker, Frame
from lineside_inspect.errors import CameraUnavailable  # re-exported: raised by the manager

__all__ = ["CameraManager", "CameraUnavailable", "CameraWorker", "Frame"]
