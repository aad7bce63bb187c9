"""The server's own web pages (their files: :mod:`lineside_inspect.ui`): a status page
(``/``: each station's live view, state, recipe, model, last verdict and yield), the
dashboard (``/dashboard``), the reviewers' page (``/review``) and the API docs (``/docs``,
Swagger UI served from this server); and the JSON they read besides the review API
(:mod:`lineside_inspect.server.routes.page_data`).

Signing in with a reviewer (or admin) key creates a server-side session
(:mod:`lineside_inspect.server.sessions`): the browser keeps only a random token in an
HttpOnly, SameSite=Strict cookie, never the key; line keys are refused. Pages are
rendered from templates in which every value is escaped; the scripts build their DOM
from API values as text (createElement, textContent, SVG by createElementNS; see
``static/*.js``), under the CSP of :mod:`lineside_inspect.server.headers`.
"""

from __future__ import annotations

import hashlib
import math
from html import escape
from pathlib import Path
from typing import Annotated
from urllib.parse import parse_qsl, quote, urlencode

import fastapi_offline
from fastapi import APIRouter, Form, Request, Response
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse

from lineside_inspect.config import Role
from lineside_inspect.errors import LinesideError, NotFoundError, TooManyFailedSignIns
from lineside_inspect.server.deps import ALLOWED, Principal, RoleFirstRoute, authenticate, check_key
from lineside_inspect.server.query import said_unknown
from lineside_inspect.server.routes import page_data
from lineside_inspect.server.sessions import Session, SessionStore, cookie_name
from lineside_inspect.ui import STATIC, render
from lineside_inspect.version import __version__

__all__ = ["router"]

# Swagger UI's files as the fastapi-offline package ships them (kept up to date there)
SWAGGER = Path(fastapi_offline.__file__).parent / "static"
LANDING_PAGES = ("/", "/review", "/dashboard", "/fleet")  # where signing in may lead: never a caller's URL
# the pages that read a filter or scope from their address (review.js, dashboard.js): a
# link to one (/review?part_id=SN-1) signed in to keeps it (it was dropped, unsaid, for the
# default list: review, session 48); the query re-encoded, bounded, the path one of these
ADDRESSED_PAGES = ("/review", "/dashboard")
MAX_NEXT_QUERY = 2048


def _landing(next_page: str) -> str:
    """Where signing in leads: ``next_page`` when its path is a landing page (exactly), with
    its query (pairs re-encoded: nothing but name=value pairs reaches the address) on a
    page that reads one and up to MAX_NEXT_QUERY characters; else /review."""
    path, _, query = next_page.partition("?")
    if path not in LANDING_PAGES:
        return "/review"
    if path not in ADDRESSED_PAGES or not query or len(query) > MAX_NEXT_QUERY:
        return path
    try:
        pairs = urlencode(parse_qsl(query, keep_blank_values=True, max_num_fields=100))
    except ValueError:  # more fields than any page has: the page alone
        return path
    return f"{path}?{pairs}" if pairs else path


LEGACY_COOKIE = "lineside_key"  # older versions kept the raw key in this cookie
# a station card's fields, in order: (data-field, title); home.js fills them
STATION_FIELDS = (("recipe", "Recipe · model"), ("last", "Last verdict"), ("shift", "Yield this shift"),
                  ("judged", "Not judged this shift"), ("day", "Yield last 24 h"), ("fps", "Frames"))
SIGN_OUT = ('<form class="signout" method="post" action="/review/logout">'
            '<button type="submit">Sign out</button></form>')

# on a hub (fleet/hub/): the review page and dashboard narrow by site, line and box too;
# each select is filled by the page's script from GET /fleet/v1/boxes
FLEET_FIELDS = (("site", "site"), ("line", "line"), ("box_id", "box"))
FLEET_NAV = '<a href="/fleet">Fleet</a>'

pages = APIRouter(route_class=RoleFirstRoute, tags=["pages"], include_in_schema=False)


def _is_hub(request: Request) -> bool:
    return getattr(request.app.state, "hub", None) is not None


def _fleet_filters(request: Request, label: bool) -> str:
    """The fleet's selects (constants only), on a hub; nothing on a box."""
    if not _is_hub(request):
        return ""
    out = []
    for name, title in FLEET_FIELDS:
        select = (f'<select name="{name}" aria-label="{title}" data-fleet="{name}">'
                  f'<option value="">any {title}</option></select>')
        out.append(f"<label>{title.capitalize()} {select}</label>" if label else select)
    return "".join(out)


# the names a link to a page may set (review.js's and dashboard.js's restore()); a hub's
# pages take the fleet's besides. review.js reads the list's page (offset) with a filter
REVIEW_LINK = ("verdict", "review_state", "camera_id", "part_id", "label", "min_score", "queue",
               "offset")
DASHBOARD_LINK = ("hours", "camera_id", "recipe", "part_id", "per")


def _link_note(request: Request, names: tuple[str, ...]) -> str:
    """A line above the page saying what of its address the page does not apply: a name it
    does not read (``/review?part=SN-1``, with the likely one meant) or one given twice (the
    first is used). Such a link showed the whole line's list or figures, unsaid, where the
    API answers the same query with a 422 (new QA lead's walk, session 48). Text only."""
    if _is_hub(request):
        names = (*names, *(n for n, _ in FLEET_FIELDS))
    params = request.query_params
    unknown = sorted({k for k in params if k not in names})
    twice = sorted({k for k in params if k in names and len(params.getlist(k)) > 1})
    said = []
    if unknown:
        shown, hints = said_unknown(unknown, names)  # (worded as the API's 422)
        said.append(f"{shown}: not a filter of this page, left out"
                    f"{' (' + '; '.join(hints) + ')' if hints else ''}; a link may set "
                    f"{', '.join(names)}")
    if twice:
        said.append(f"{', '.join(twice)}: given more than once, the first value is used")
    if not said:
        return ""
    return f'<p id="linknote" class="linknote" role="status">This link: {escape("; ".join(said))}.</p>'


def _shared_box(request: Request) -> str:
    """This box's id where its database is shared with other boxes (whose inspections its
    review page lists: each card then names its box); '' on a box of its own and on a hub
    (whose page names boxes anyway)."""
    return page_data.shared_box(request) or ""


def _login(next_page: str, error: str | None = None, status: int = 200,
           headers: dict[str, str] | None = None) -> HTMLResponse:
    # the error is the key field's: announced (role=alert) and read with the field, which
    # the page focuses (it was a paragraph apart, and a screen reader read only the field)
    markup = ({"error": f'<p class="err" id="key-error" role="alert">{escape(error)}</p>',
               "key-attrs": ' aria-invalid="true" aria-describedby="key-error"'} if error
              else {"key-attrs": ""})
    return HTMLResponse(render("login.html", {"next": next_page}, markup), status_code=status,
                        headers=headers)


def _viewer(request: Request, next_page: str, role: Role = "viewer"
            ) -> tuple[Principal, Session | None] | HTMLResponse:
    """Who looks at a page (and their session), or the sign-in form to answer instead.
    ``role``: the review page's is reviewer; the status page, dashboard and fleet page are
    a viewer's too (a line lead watching yield)."""
    if request.url.query:  # a link's filter outlives the sign-in (_landing)
        next_page = _landing(f"{next_page}?{request.url.query}")
    try:
        who = authenticate(request)
    except LinesideError:
        return _login(next_page)
    assert who is not None
    if who.role not in ALLOWED[role]:
        return _login(next_page, "This key may not review." if who.role != "viewer" else
                      "This key may only view: the status page and the dashboard.", 403)
    token = request.cookies.get(cookie_name(request))
    sessions: SessionStore = request.app.state.sessions
    session = sessions.get(token) if token and request.app.state.settings.api_keys else None
    return who, session


def _kept_as(who: Principal) -> str:
    """Whose page this is, as the scripts key what they keep in the tab (the review page's
    filter, the dashboard's scope): a short digest of the signed-in name and role, never
    the name itself. One user's kept filter showed to the next one signed in on the same
    tab (a shared line PC: after a sign-out, or a session that expired), their line, part
    and queue with it (session 50); common.js drops what another user kept."""
    return hashlib.sha256(f"{who.role}:{who.name}".encode()).hexdigest()[:16]


def _model_rows(request: Request) -> str:
    rows = []
    for name, slot in request.app.state.registry.models().items():
        # kept current by static/home.js (a rollback, a promotion, a version loaded), and
        # a model loaded later gets its row there
        rows.append(f'<tr data-model="{escape(name)}"><td>{escape(name)}</td><td data-field="active">'
                    f'{escape(slot.active or "-")}</td><td data-field="versions">'
                    f'{escape(page_data.described_versions(slot))}</td></tr>')
    return "\n".join(rows) or '<tr data-empty><td colspan="3">no model loaded</td></tr>'


def _camera_rows(request: Request) -> str:
    manager = request.app.state.cameras
    rows = []
    for h in manager.health() if manager is not None else []:
        url = f"/v1/cameras/{quote(str(h['id']), safe='')}/stream"
        state = "pass" if h["state"] == "online" else "fail"
        mark = "● " if h["state"] == "online" else "✖ "  # not by colour alone
        # state and fps are kept current by static/home.js
        rows.append(f'<tr data-camera="{escape(str(h["id"]))}"><td>{escape(str(h["id"]))}</td>'
                    f'<td class="{state}" data-field="state">{mark}{escape(str(h["state"]))}</td>'
                    f'<td data-field="fps">{escape(str(h["fps"]))}</td>'
                    f'<td><a href="{escape(url)}">live view</a></td></tr>')
    return "\n".join(rows) or '<tr><td colspan="4">no cameras configured</td></tr>'


def _station_cards(request: Request) -> str:
    """A card per camera: its picture (the newest frame with the last verdict's boxes
    drawn by the server, fetched again each second by ``static/home.js``: an endless MJPEG
    stream per card held one of the browser's six connections to this server each, and
    with a few cameras or tabs no page loaded) and the fields ``static/home.js`` fills
    from ``GET /v1/overview``."""
    manager = request.app.state.cameras
    cards = []
    # with a PLC handshake, each station's fault and its parts without a verdict on its
    # card: it read "Last verdict: PASS" while the PLC failed every part with ErrorCode 7
    # (QA review, session 34)
    plc = (("plc", "PLC handshake"),) if page_data.plc_status(request) is not None else ()
    for h in manager.health() if manager is not None else []:
        cid = escape(str(h["id"]))
        url = escape(f"/v1/cameras/{quote(str(h['id']), safe='')}/snapshot")
        fields = "".join(f'<dt>{escape(title)}</dt><dd data-field="{key}">…</dd>'
                         for key, title in (*STATION_FIELDS, *plc))
        cards.append(f'<article class="station" data-camera="{cid}"><h3>{cid} '
                     f'<span class="state" data-field="state">{escape(str(h["state"]))}</span></h3>'
                     f'<div class="live"><img data-snapshot="{url}" alt="camera {cid} now, the '
                     f'last verdict\'s boxes drawn"></div><dl>{fields}</dl></article>')
    return "\n".join(cards) or "<p>no cameras configured</p>"


def _mqtt_section(request: Request) -> str:
    """MQTT event delivery (when configured); home.js keeps the figures current."""
    st = page_data.mqtt_status(request)
    if st is None:
        return ""
    state = "pass" if st["connected"] else "fail"
    rows = [("broker", st["broker"], ""), ("topics", st["topic"], ""),
            ("connection", "connected" if st["connected"] else "disconnected", state),
            ("outbox backlog", st["backlog"], ""), ("delivery lag (s)", st["lag_s"], ""),
            ("delivered", st["delivered"], ""), ("last error", st["last_error"] or "none", "")]
    cells = "".join(f'<tr><th>{escape(k)}</th><td id="mqtt-{escape(k.split()[0])}" class="{cls}">'
                    f"{escape(str(v))}</td></tr>" for k, v, cls in rows)
    return f'<h2>MQTT events</h2>\n<table class="status" id="mqtt">{cells}</table>'


def _plc_section(request: Request) -> str:
    """The PLC handshake (when configured): each station's state and its parts that
    ended without a verdict (only /metrics and the log said so); home.js keeps it current."""
    st = page_data.plc_status(request)
    if st is None:
        return ""
    rows = []
    for s in st["stations"]:
        code = f'{s["error_code"]} ({s["error"]})' if s["error_code"] else "0"
        rows.append(f'<tr data-station="{escape(s["id"])}"><td>{escape(s["id"])}</td>'
                    f'<td data-field="state">{escape(s["state"])}</td>'
                    f'<td data-field="recipe">{escape(s["recipe"] or "-")}</td>'
                    f'<td data-field="code" class="{"fail" if s["error_code"] else ""}">'
                    f'{escape(code)}</td>'
                    f'<td data-field="failed">{escape(str(s["failed_parts"]))}</td></tr>')
    protocols = ", ".join(st["protocols"]) or "none"
    return (f'<h2>PLC handshake ({escape(protocols)})</h2>\n<table class="status" id="plc">'
            "<tr><th>station</th><th>state</th><th>recipe</th><th>ErrorCode</th>"
            f'<th>parts without a verdict</th></tr>{"".join(rows)}</table>')


@pages.get("/", response_class=HTMLResponse)
@pages.head("/", response_class=HTMLResponse)  # uptime checkers: GET's headers, no body
def statusrender(request: Request) -> Response:
    """What this box serves: its stations (live view, state, recipe and model, last verdict,
    yield), models and versions, camera health."""
    seen = _viewer(request, "/")
    if isinstance(seen, Response):
        return seen
    _, session = seen
    ready = "ready" if request.app.state.ready else "starting"
    return HTMLResponse(render(
        "index.html", {"version": __version__, "ready": ready},
        {"models": _model_rows(request), "cameras": _camera_rows(request),
         "stations": _station_cards(request), "mqtt": _mqtt_section(request),
         "plc": _plc_section(request),
         "signout": SIGN_OUT if session else ""}))


@pages.get("/dashboard", response_class=HTMLResponse)
@pages.head("/dashboard", response_class=HTMLResponse)
def dashboardrender(request: Request) -> Response:
    """Yield and fails per hour or shift, the defect Pareto, review outcomes, reviewers."""
    seen = _viewer(request, "/dashboard")
    if isinstance(seen, Response):
        return seen
    who, session = seen
    return HTMLResponse(render("dashboard.html", {"kept_as": _kept_as(who)}, {
        "signout": SIGN_OUT if session else "", "fleet": _fleet_filters(request, True),
        "fleet-nav": FLEET_NAV if _is_hub(request) else "",
        "linknote": _link_note(request, DASHBOARD_LINK)}))


@pages.get("/review", response_class=HTMLResponse)
@pages.head("/review", response_class=HTMLResponse)
def reviewrender(request: Request) -> Response:
    seen = _viewer(request, "/review", "reviewer")
    if isinstance(seen, Response):
        return seen
    who, session = seen
    return HTMLResponse(render("review.html", {"csrf": session.csrf if session else "",
                                               "shared_box": _shared_box(request),
                                               "kept_as": _kept_as(who)},
                              {"signout": SIGN_OUT if session else "",
                               "fleet": _fleet_filters(request, False),
                               "fleet-nav": FLEET_NAV if _is_hub(request) else "",
                               "linknote": _link_note(request, REVIEW_LINK)}))


@pages.get("/fleet", response_class=HTMLResponse)
@pages.head("/fleet", response_class=HTMLResponse)
def fleetrender(request: Request) -> Response:
    """On a hub: every box, what it runs, when it last reported, its backlog."""
    if not _is_hub(request):
        raise NotFoundError("the fleet page is the hub's (lineside hub); this is a box")
    seen = _viewer(request, "/fleet")
    if isinstance(seen, Response):
        return seen
    _, session = seen
    return HTMLResponse(render("fleet.html", markup={"signout": SIGN_OUT if session else ""}))


@pages.get("/review/login")
@pages.get("/review/logout")
def sign_in_address() -> RedirectResponse:
    """A failed sign-in leaves the browser at /review/login: that tab restored, or Enter in
    its address bar, showed a JSON 405 (QA review, session 32). The form is /review's."""
    return RedirectResponse("/review", status_code=303)


@pages.post("/review/login")
def login(request: Request, key: Annotated[str, Form(max_length=4096)],
          next_page: Annotated[str, Form(alias="next")] = "/review") -> Response:
    """Trade a reviewer/admin key for a session cookie (a random token, never the key)."""
    target = _landing(next_page)
    settings = request.app.state.settings
    if not settings.api_keys:  # nothing to sign in to
        return RedirectResponse(target, status_code=303)
    try:
        who = check_key(request, key)
    except TooManyFailedSignIns as exc:
        return _login(target, f"Too many unknown keys from this address: try again in "
                      f"{exc.retry_after_s} s.", 429, {"Retry-After": str(exc.retry_after_s)})
    except LinesideError:
        return _login(target, "Unknown key.", 401)
    if who.role not in ALLOWED["viewer"]:
        return _login(target, "This key may not review.", 403)
    if who.role not in ALLOWED["reviewer"] and target.partition("?")[0] == "/review":
        target = "/dashboard"  # a viewer's key: where it may look (the review's filter not)
    sessions: SessionStore = request.app.state.sessions
    if old := request.cookies.get(cookie_name(request)):
        sessions.revoke(old)
    token, _ = sessions.create(who.name, who.role)
    resp = RedirectResponse(target, status_code=303)
    resp.set_cookie(cookie_name(request), token, max_age=max(1, math.ceil(sessions.ttl_s)), path="/",
                    httponly=True, samesite="strict", secure=request.url.scheme == "https")
    if LEGACY_COOKIE in request.cookies:
        resp.delete_cookie(LEGACY_COOKIE)
    return resp


@pages.post("/review/logout")
def logout(request: Request) -> Response:
    """Revoke the session server-side (the token is then worthless) and drop the cookie."""
    if token := request.cookies.get(cookie_name(request)):
        request.app.state.sessions.revoke(token)
    resp = RedirectResponse("/review", status_code=303)
    resp.delete_cookie(cookie_name(request), path="/", httponly=True, samesite="strict",
                       secure=request.url.scheme == "https")
    return resp


@pages.get("/docs", response_class=HTMLResponse)
def api_docs() -> HTMLResponse:
    return HTMLResponse(render("docs.html"))


@pages.get("/docs/swagger-ui-bundle.js")
def swagger_js() -> FileResponse:
    return FileResponse(SWAGGER / "swagger-ui-bundle.js", media_type="text/javascript")


@pages.get("/favicon.ico")
def favicon() -> FileResponse:
    """The pages' icon (their ``<link rel="icon">``), here too for what a browser opens
    without one (the JSON of an API route, /metrics): each was a 404 in its console."""
    return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml")


@pages.get("/docs/swagger-ui.css")
def swagger_css() -> FileResponse:
    return FileResponse(SWAGGER / "swagger-ui.css", media_type="text/css")


# the pages (not in the API schema) and the JSON they read (in it)
router = APIRouter(route_class=RoleFirstRoute)
router.include_router(pages)
router.include_router(page_data.router)
