"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from lineside_inspect.server.deps import MetricsDep, RoleFirstRoute
from lineside_inspect.server.responses import NOT_READY, Health, Readiness, errors

router = APIRouter(route_class=RoleFirstRoute, tags=["health"])


# async: answered on the event loop, so a busy thread pool can never stall a probe.
# HEAD (as health checkers send it) runs the same handler: the server sends GET's status
# and headers, Content-Length included, and no body (uvicorn drops a HEAD body). Kept out
# of the schema, which lists each operation once.
@router.get("/healthz", responses=errors())
@router.head("/healthz", include_in_schema=False)
async def healthz() -> Health:
    """Live: the process answers."""
    return Health(status="ok")


@router.get("/readyz", responses={**errors(), **NOT_READY})
@router.head("/readyz", include_in_schema=False)
async def readyz(request: Request, response: Response) -> Readiness:
    """Ready only once models are loaded and warmed up, and not while shutting down (a
    hub: and while its database answers)."""
    ready = bool(getattr(request.app.state, "ready", False))
    probe = getattr(request.app.state, "ready_probe", None)
    if ready and probe is not None:
        ready = await probe()
    response.status_code = 200 if ready else 503
    return Readiness(ready=ready)


@router.get("/metrics", response_class=Response, responses={
    **errors(), 200: {"description": "Prometheus text exposition format",
                      "content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}}}})
@router.head("/metrics", include_in_schema=False)
def metrics(m: MetricsDep, request: Request) -> Response:
    for hook in request.app.state.metrics_hooks:
        hook()
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)
