"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from lineside_inspect.server.deps import MetricsDep

router = APIRouter(tags=["health"])


# async: answered on the event loop, so a busy thread pool can never stall a probe
@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Live: the process answers."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> Response:
    """Ready only once models are loaded and warmed up, and not while shutting down."""
    ready = bool(getattr(request.app.state, "ready", False))
    return JSONResponse({"ready": ready}, status_code=200 if ready else 503)


@router.get("/metrics")
def metrics(m: MetricsDep, request: Request) -> Response:
    for hook in request.app.state.metrics_hooks:
        hook()
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)
