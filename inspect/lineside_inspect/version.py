"""The release version, in one place: the package, the server's API metadata, model cards
and ``pyproject.toml`` (a dynamic version) all read it from here. A leaf module, so the
server imports it without going through ``lineside_inspect/__init__.py``."""

from __future__ import annotations

__version__ = "0.1.0"
