"""Cameras: health, triggered inspection, live MJPEG view and snapshots."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse

from lineside_inspect.cameras import CameraManager, CameraUnavailable
from lineside_inspect.draw import annotate
from lineside_inspect.errors import Forbidden, LinesideError
from lineside_inspect.imageio import encode_jpeg
from lineside_inspect.names import Name, PlainLine
from lineside_inspect.runtime.types import Detections
from lineside_inspect.schemas import InspectionResult
from lineside_inspect.server.deps import (
    ALLOWED,
    LineUser,
    ServiceDep,
    Viewer,
    authorize,
    get_cameras,
)
from lineside_inspect.server.responses import (
    CameraHealth,
    annotated_response,
    errors,
    media,
    verdict_response,
)

router = APIRouter(prefix="/v1/cameras", tags=["cameras"])
RECHECK_S = 2.0  # a live view checks its caller again this often


@router.get("", responses=errors(401, 403))
def list_cameras(request: Request, who: Viewer) -> list[CameraHealth]:
    manager: CameraManager | None = request.app.state.cameras
    return [CameraHealth.model_validate(h) for h in manager.health()] if manager else []


@router.post("/{camera_id}/trigger", response_model=InspectionResult,
             responses={200: {"content": {"image/jpeg": {}},
                              "description": "the verdict (JSON), or with annotated=1 the JPEG"},
                        **errors(401, 403, 404, 408, 413, 422, 502, 503)})
async def trigger(
    camera_id: str, who: LineUser, service: ServiceDep,
    part_id: Annotated[PlainLine | None, Query(max_length=256)] = None,
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
    result = await service.inspect_camera(camera_id, part_id=part_id, recipe=recipe,
                                          timeout_s=timeout_s, draw=annotated)
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


@router.get("/{camera_id}/snapshot", response_class=Response, responses={
    **media("the newest frame with the last verdict drawn", "image/jpeg"),
    **errors(401, 403, 404, 503)})
def snapshot(camera_id: str, request: Request, who: Viewer) -> Response:
    return Response(_frame_jpeg(get_cameras(request), camera_id), media_type="image/jpeg")


@router.get("/{camera_id}/stream", response_class=StreamingResponse, responses={
    **media("MJPEG: JPEG parts with the last verdict drawn, boundary 'frame', until the "
            "client leaves", "multipart/x-mixed-replace"),
    **errors(401, 403, 404, 422)})
async def stream(camera_id: str, request: Request, who: Viewer,
                 fps: Annotated[float, Query(gt=0, le=30)] = 5.0) -> StreamingResponse:
    """MJPEG (multipart/x-mixed-replace) with the last verdict drawn."""
    manager = get_cameras(request)
    manager.worker(camera_id)

    async def frames() -> AsyncIterator[bytes]:
        checked = time.monotonic()
        while not await request.is_disconnected():
            if time.monotonic() - checked > RECHECK_S:
                # the caller was checked once, at the start: a signed-out or expired
                # review session kept its live view streaming
                checked = time.monotonic()
                try:
                    authorize(request, "viewer")
                except LinesideError:
                    return
            try:
                jpeg = await anyio.to_thread.run_sync(lambda: _frame_jpeg(manager, camera_id))
            except CameraUnavailable:
                await anyio.sleep(0.5)
                continue
            yield (b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: "
                   + str(len(jpeg)).encode() + b"\r\n\r\n" + jpeg + b"\r\n")
            await anyio.sleep(1.0 / fps)

    return StreamingResponse(frames(), media_type="multipart/x-mixed-replace; boundary=frame")
