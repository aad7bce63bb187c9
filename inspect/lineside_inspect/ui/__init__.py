"""The web pages' files, no build step: HTML templates (``templates/``), the scripts and
styles they load (``static/``), and :func:`render`, which fills a template.

Nothing here knows about requests, keys or the store: the routes that serve these pages
(:mod:`lineside_inspect.server.routes.pages`) and the JSON they read
(:mod:`lineside_inspect.server.routes.page_data`) live with the server, which imports
this room, never the reverse. The scripts build their DOM from API values as text
(createElement, textContent, SVG by createElementNS) under the CSP of
:mod:`lineside_inspect.server.headers`.
"""

from __future__ import annotations

from html import escape
from pathlib import Path

from starlette.staticfiles import StaticFiles

__all__ = ["STATIC", "TEMPLATES", "render", "static"]

HERE = Path(__file__).parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"


def render(name: str, text: dict[str, str] | None = None, markup: dict[str, str] | None = None) -> str:
    """Template ``name`` with ``{{key}}`` replaced by escaped ``text`` and ``<!--key-->``
    by ``markup``, which only the page routes build (from constants and escaped values)."""
    page = (TEMPLATES / name).read_text()
    for key, value in (text or {}).items():
        page = page.replace("{{" + key + "}}", escape(value))
    for key, value in (markup or {}).items():
        page = page.replace(f"<!--{key}-->", value)
    return page


static = StaticFiles(directory=STATIC)  # mounted at /static by the box and the hub
