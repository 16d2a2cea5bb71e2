"""The gallery API over the database `animetagnet index` writes (read-only; paths never leave the server)."""

from __future__ import annotations

import io
import os

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse, Response

from ...errors import ImageError, UsageError
from ...images import load_image, to_rgb_on_white
from ..service import ApiError, TagService
from . import Service

router = APIRouter(tags=["gallery"])


def _gallery(service: TagService):
    if service.gallery is None:
        raise ApiError(404, "no_gallery", "this server has no gallery; start it with --gallery FILE "
                                          "(a database written by `animetagnet index`)")
    return service.gallery


@router.get("/v1/gallery/search", summary="Search indexed images with a booru-style query")
def gallery_search(service: Service,
                   q: str = Query("", max_length=2000, description="e.g. `1girl blue_eyes -smile rating:general`"),
                   limit: int = Query(60, ge=1, le=500), offset: int = Query(0, ge=0),
                   counts: int = Query(40, ge=0, le=500, description="how many tag counts to return")) -> dict:
    try:
        res = _gallery(service).search(q, limit=limit, offset=offset, counts=counts)
    except UsageError as exc:
        raise ApiError(400, "invalid_query", str(exc)) from None
    out = res.to_dict()
    for it in out["items"]:
        it.pop("path", None)  # the server's folder layout is not the client's business
    return out


@router.get("/v1/gallery/files/{file_id}", summary="One indexed image with all stored tags")
def gallery_file(service: Service, file_id: int) -> dict:
    info = _gallery(service).get(file_id)
    if info is None:
        raise ApiError(404, "not_found", f"no indexed file with id {file_id}")
    info.pop("path", None)
    return info


@router.get("/v1/gallery/files/{file_id}/thumb", summary="A JPEG thumbnail", response_class=Response)
def gallery_thumb(service: Service, file_id: int, size: int = Query(256, ge=32, le=512)):
    path = _gallery(service).path_of(file_id)  # from the database: never a client-named path
    if path is None:
        raise ApiError(404, "not_found", f"no indexed file with id {file_id}")
    try:
        img = to_rgb_on_white(load_image(path, max_pixels=service.tagger.max_pixels, draft_size=size))
    except ImageError as exc:
        raise ApiError(404, "file_unavailable", f"indexed file {file_id} cannot be read now: {exc.reason}") from None
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85)
    return Response(buf.getvalue(), media_type="image/jpeg", headers={"Cache-Control": "max-age=300"})


@router.get("/v1/gallery/files/{file_id}/image", summary="The original indexed file", response_class=FileResponse)
def gallery_image(service: Service, file_id: int):
    path = _gallery(service).path_of(file_id)
    if path is None:
        raise ApiError(404, "not_found", f"no indexed file with id {file_id}")
    if not os.path.isfile(path):
        raise ApiError(404, "file_unavailable", f"indexed file {file_id} is no longer on disk")
    return FileResponse(path)
