"""Cameras: health, triggered inspection, live MJPEG view and snapshots."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse

from lineside_inspect.cameras import CameraManager, CameraUnavailable
from lineside_inspect.draw import annotate, unavailable
from lineside_inspect.errors import Forbidden, LinesideError, Overloaded
from lineside_inspect.imageio import encode_jpeg
from lineside_inspect.names import Name, PartId
from lineside_inspect.runtime.types import Detections
from lineside_inspect.schemas import InspectionResult
from lineside_inspect.server.deps import (
    ALLOWED,
    LineUser,
    RoleFirstRoute,
    ServiceDep,
    Viewer,
    authorize,
    get_cameras,
    key_holder,
)
from lineside_inspect.server.responses import (
    VERDICT_OR_JPEG,
    CameraHealth,
    annotated_response,
    errors,
    media,
    verdict_response,
)

router = APIRouter(route_class=RoleFirstRoute, prefix="/v1/cameras", tags=["cameras"])
RECHECK_S = 2.0  # a live view checks its caller again this often
# a live view of a camera that stays without a frame this long ends (it sent nothing,
# so the slow-reader abort never saw it: it held its connection for ever)
OFFLINE_END_S = 30.0
# while its camera has no frame, a live view sends its last one dimmed under a banner
# saying so this often: it showed that frame as live for those 30 s, and for good after
DOWN_PART_S = 1.0


class LiveViews:
    """Live views open now, in all and per key, bounded by ``max_live_views`` (one key
    at most half): each holds a connection while it is watched."""

    def __init__(self, limit: int) -> None:
        self.limit, self.per_key = limit, max(1, limit // 2)
        self._open: Counter[str | None] = Counter()
        self._lock = threading.Lock()
        # set on SIGTERM: an endless stream held the stop for uvicorn's whole graceful
        # timeout (30 s, past docker stop's 10 s) and ended in a traceback (deploy review)
        self.closing = False

    async def close(self) -> None:
        """The server is stopping: every live view ends after its current part."""
        self.closing = True

    def take(self, holder: str | None) -> None:
        with self._lock:
            if self._open.total() >= self.limit:
                raise Overloaded(f"{self.limit} live views are open, the most this server "
                                 "keeps (max_live_views): close one, or use the snapshot")
            # without keys (holder None) there is no share, as in the limiter
            if holder is not None and self._open[holder] >= self.per_key:
                raise Overloaded(f"this key has {self.per_key} live views open, the most one "
                                 "key may (half of max_live_views): close one")
            self._open[holder] += 1

    def give(self, holder: str | None) -> None:
        with self._lock:
            self._open[holder] -= 1
            if self._open[holder] <= 0:
                del self._open[holder]


async def _pause(views: LiveViews, seconds: float) -> None:
    """Sleep ``seconds`` (up to 5 s at fps 0.2), or less once the server is stopping."""
    end = time.monotonic() + seconds
    while not views.closing and (left := end - time.monotonic()) > 0:
        await anyio.sleep(min(left, 0.25))


def live_views(request: Request) -> LiveViews:
    views: LiveViews = request.app.state.live_views  # made with the app: never two of them
    return views


class _LiveViewResponse(StreamingResponse):
    """Gives its place back however the view ends (the client gone before its first
    part included: a generator that never started runs no ``finally``)."""

    def __init__(self, content: AsyncIterator[bytes], release: Callable[[], None]) -> None:
        super().__init__(content, media_type="multipart/x-mixed-replace; boundary=frame")
        self._release = release

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


@router.get("", responses=errors(401, 403))
def list_cameras(request: Request, who: Viewer) -> list[CameraHealth]:
    manager: CameraManager | None = request.app.state.cameras
    return [CameraHealth.model_validate(h) for h in manager.health()] if manager else []


@router.post("/{camera_id}/trigger", response_model=InspectionResult,
             responses={**VERDICT_OR_JPEG, **errors(401, 403, 404, 408, 413, 422, 502, 503)})
async def trigger(
    camera_id: str, request: Request, who: LineUser, service: ServiceDep,
    part_id: Annotated[PartId | None, Query()] = None,
    recipe: Annotated[Name | None, Query()] = None,
    timeout_s: Annotated[float, Query(gt=0, le=30)] = 2.0,
    annotated: Annotated[bool, Query(description="answer with the annotated JPEG")] = False,
) -> Any:
    """Inspect the first frame captured after this trigger arrived, never an older one.
    503 with the camera's state when none comes within ``timeout_s``, which bounds the
    wait for the frame and for an inference slot. The recipe is ``recipe`` or the
    camera's configured one (a PLC's ``Recipe`` switch applies to PLC triggers only). Answers
    the verdict JSON or, with ``annotated=1``, the frame as ``POST /v1/inspect`` draws it:
    an image of the line, which is the reviewer role's (as snapshots and live views are),
    so it needs a key that may both trigger and see images (admin); a line key asking for
    it is refused before anything is inspected."""
    if annotated and who.role not in ALLOWED["reviewer"]:
        raise Forbidden(f"key {who.name!r} has role {who.role!r}; annotated=1 answers with "
                        "the camera's frame, an image, which needs 'reviewer' as well "
                        "(an admin key; or read GET /v1/inspections/ID/annotated with a "
                        "reviewer key)")
    # the key's share of the places, as /v1/inspect takes it (a line key's triggers took
    # more than max_places_per_key and crowded out others; camera review, session 32),
    # from the frame's arrival: the wait for it takes no place
    result = await service.inspect_camera(camera_id, part_id=part_id, recipe=recipe,
                                          timeout_s=timeout_s, draw=annotated,
                                          holder=key_holder(request, who))
    return annotated_response(result) if annotated else verdict_response(result)


def _frame_jpeg(manager: CameraManager, camera_id: str) -> bytes:
    worker = manager.worker(camera_id)
    frame = worker.latest()
    if frame is None or not worker.online():
        h = worker.health()
        raise CameraUnavailable(f"camera {camera_id} is {h['state']}", h)
    last = manager.last_results.get(camera_id)
    # every viewer of a camera (status pages each second, live views) shares one drawing
    # and encoding per frame and verdict
    key = (frame.seq, "" if last is None else last.id)
    cached = manager.drawn.get(camera_id)
    if cached is not None and cached[0] == key:
        return cached[1]
    if last is not None:
        image = annotate(frame.image, last.defects, last.verdict)
    else:
        image = annotate(frame.image, Detections.empty([]))
    jpeg = encode_jpeg(image, quality=80)
    manager.drawn[camera_id] = (key, jpeg)
    return jpeg


def _down_jpeg(manager: CameraManager, camera_id: str, *,
               ended: bool = False) -> tuple[bytes, str] | None:
    """A live view's part while its camera has no frame now: the last one dimmed, under
    "camera ID offline: no new frame for N s" (and "live view ended" as the view ends),
    with the camera's state; None if it is online again meanwhile."""
    worker = manager.worker(camera_id)
    h, frame = worker.health(), worker.latest()
    if h["state"] == "online":
        return None
    age = h["last_frame_age_s"]
    said = f"camera {camera_id} {h['state']}: " + (
        "no frame yet" if age is None else f"no new frame for {age:.0f} s")
    if ended:
        said += " - live view ended"
    image = unavailable(None if frame is None else frame.image, said)
    return encode_jpeg(image, quality=80), str(h["state"])


def _part(jpeg: bytes, state: str | None = None) -> bytes:
    """One part of a live view; a frame that is not live says its camera's state."""
    head = b"" if state is None else b"X-Lineside-Camera-State: " + state.encode() + b"\r\n"
    return (b"--frame\r\nContent-Type: image/jpeg\r\n" + head + b"Content-Length: "
            + str(len(jpeg)).encode() + b"\r\n\r\n" + jpeg + b"\r\n")


@router.get("/{camera_id}/snapshot", response_class=Response, responses={
    **media("the newest frame with the last verdict drawn", "image/jpeg"),
    **errors(401, 403, 404, 503)})
def snapshot(camera_id: str, request: Request, who: Viewer) -> Response:
    return Response(_frame_jpeg(get_cameras(request), camera_id), media_type="image/jpeg")


@router.get("/{camera_id}/stream", response_class=StreamingResponse, responses={
    **media("MJPEG: JPEG parts with the last verdict drawn, boundary 'frame', until the "
            "client leaves", "multipart/x-mixed-replace"),
    **errors(401, 403, 404, 422, 503)})
async def stream(camera_id: str, request: Request, who: Viewer,
                 fps: Annotated[float, Query(ge=0.2, le=30)] = 5.0) -> StreamingResponse:
    """MJPEG (multipart/x-mixed-replace) with the last verdict drawn. 503 when the camera
    has no frame now (as its snapshot) or ``max_live_views`` are open. While its camera
    has no frame (offline or stale), a part each second is its last frame dimmed under a
    banner saying so, with the part header ``X-Lineside-Camera-State``; a view ends when
    its camera stays without a frame for 30 s, on a last such part saying it ended."""
    manager = get_cameras(request)
    first = await anyio.to_thread.run_sync(lambda: _frame_jpeg(manager, camera_id))
    views, holder = live_views(request), key_holder(request, who)
    views.take(holder)

    async def frames() -> AsyncIterator[bytes]:
        checked = time.monotonic()
        jpeg: bytes | None = first
        seen = told = time.monotonic()
        while not views.closing and not await request.is_disconnected():
            if time.monotonic() - checked > RECHECK_S:
                # the caller was checked once, at the start: a signed-out or expired
                # review session kept its live view streaming
                checked = time.monotonic()
                try:
                    authorize(request, "viewer")
                except LinesideError:
                    return
            if jpeg is None:
                try:
                    jpeg = await anyio.to_thread.run_sync(lambda: _frame_jpeg(manager, camera_id))
                except CameraUnavailable:
                    ended = time.monotonic() - seen > OFFLINE_END_S
                    if ended or time.monotonic() - told >= DOWN_PART_S:
                        told = time.monotonic()
                        down = await anyio.to_thread.run_sync(
                            partial(_down_jpeg, manager, camera_id, ended=ended))
                        if down is not None:
                            yield _part(*down)
                    if ended:
                        return
                    await _pause(views, 0.5)
                    continue
            seen = told = time.monotonic()
            yield _part(jpeg)
            jpeg = None
            await _pause(views, 1.0 / fps)

    return _LiveViewResponse(frames(), lambda: views.give(holder))
