"""The reviewers' web page: served by the same server, no build step.

The page signs in with a reviewer (or admin) key, kept in an HttpOnly, SameSite=Strict
cookie that the API accepts like a header; line keys are refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Form, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from lineside_inspect.errors import LinesideError
from lineside_inspect.server.deps import ALLOWED, authenticate

HERE = Path(__file__).parent
router = APIRouter(tags=["review page"], include_in_schema=False)


def _page(name: str) -> str:
    return (HERE / "templates" / name).read_text()


@router.get("/review", response_class=HTMLResponse)
def review_page(request: Request) -> Response:
    try:
        who = authenticate(request)
    except LinesideError:
        return HTMLResponse(_page("login.html"))
    if who is None or who.role not in ALLOWED["reviewer"]:
        return HTMLResponse(_page("login.html").replace("<!--error-->",
                            "<p class=err>This key may not review.</p>"), status_code=403)
    return HTMLResponse(_page("review.html"))


@router.post("/review/login")
def login(request: Request, key: Annotated[str, Form()]) -> Response:
    request.scope.setdefault("headers", [])
    headers = [(k, v) for k, v in request.scope["headers"] if k != b"authorization"]
    request.scope["headers"] = [*headers, (b"authorization", f"Bearer {key}".encode())]
    try:
        who = authenticate(Request(request.scope))
    except LinesideError:
        return HTMLResponse(_page("login.html").replace("<!--error-->",
                            "<p class=err>Unknown key.</p>"), status_code=401)
    if who is None or who.role not in ALLOWED["reviewer"]:
        return HTMLResponse(_page("login.html").replace("<!--error-->",
                            "<p class=err>This key may not review.</p>"), status_code=403)
    resp = RedirectResponse("/review", status_code=303)
    resp.set_cookie("lineside_key", key, httponly=True, samesite="strict")
    return resp


@router.post("/review/logout")
def logout() -> Response:
    resp = RedirectResponse("/review", status_code=303)
    resp.delete_cookie("lineside_key")
    return resp


static = StaticFiles(directory=HERE / "static")
