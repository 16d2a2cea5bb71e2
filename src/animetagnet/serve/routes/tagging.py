"""/v1/model, /v1/tag and /v1/caption; the query parameters come from options.py (serve/params.py)."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, File, Query, UploadFile
from pydantic import BaseModel, Field

from ...errors import AnimeTagNetError
from ...options import TagOptions
from ..params import TagQuery
from ..service import ApiError
from . import Service

router = APIRouter(tags=["tagging"])


class CaptionItem(BaseModel):
    rating: str | None = None
    ratings: dict[str, float] = Field(default_factory=dict)
    tags: dict[str, dict[str, float]] = Field(default_factory=dict)


class CaptionRequest(BaseModel):
    items: list[CaptionItem] = Field(..., max_length=256)


def _options(params: TagQuery) -> TagOptions:
    try:
        return params.tag_options()
    except AnimeTagNetError as exc:
        raise ApiError(400, "invalid_parameter", str(exc)) from None


@router.get("/v1/model", summary="The loaded model, its defaults and the service limits")
async def model_info(service: Service) -> dict:
    return service.model_info()


@router.post(
    "/v1/tag", summary="Tag one or more uploaded images",
    responses={400: {"description": "bad parameter or broken image"}, 413: {"description": "too large"},
               415: {"description": "not an image"}, 422: {"description": "invalid request"},
               503: {"description": "not ready, overloaded or timed out"}},
)
async def tag(
    service: Service,
    files: Annotated[list[UploadFile], File(description="image files (repeat the field for several)")],
    params: Annotated[TagQuery, Query()],
) -> dict:
    """Multipart upload (field `files`, repeatable). Each image gets its rating, tags by category
    with confidences and a caption; with `min_confidence` also `scores` (all tags above it).

    One bad image among several gives that item an `error` (same shape) and the others are
    tagged; when every image fails, the response is the first failure's status and error."""
    t0 = time.perf_counter()
    results = await service.tag_uploads(files, _options(params), params.min_confidence)
    return {"model": service.tagger.bundle.name, "results": results,
            "elapsed_ms": round((time.perf_counter() - t0) * 1000, 2)}


@router.post("/v1/caption", summary="Captions for tag sets already returned by /v1/tag")
async def caption(service: Service, body: CaptionRequest, params: Annotated[TagQuery, Query()]) -> dict:
    """Formats tags the client already has (e.g. after filtering them with a slider) with the
    same formatting options as /v1/tag; no inference."""
    return {"captions": service.caption([it.model_dump() for it in body.items], _options(params))}
