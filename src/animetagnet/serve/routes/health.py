"""Liveness, readiness and the service's counters."""

from __future__ import annotations

from fastapi import APIRouter

from ..service import ApiError
from . import Service

router = APIRouter(tags=["health"])


@router.get("/health", summary="Liveness: the process answers")
async def health() -> dict:
    return {"status": "ok"}


@router.get("/ready", summary="Readiness: the model is loaded and the batcher runs",
            responses={503: {"description": "not ready"}})
async def ready(service: Service) -> dict:
    if not service.ready:
        raise ApiError(503, "not_ready", "the model is not ready")
    return {"status": "ready", "model": service.tagger.bundle.name, "device": str(service.tagger.device)}


@router.get("/v1/stats", summary="Request and micro-batching counters")
async def stats(service: Service) -> dict:
    return service.stats()
