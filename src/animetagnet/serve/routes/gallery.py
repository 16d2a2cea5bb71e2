"""The gallery API over the database `animetagnet index` writes (read-only; paths never leave the server).

Every file is read through Gallery.open, which re-checks confinement at that moment (see
serve/gallery.py): only regular files inside an indexed folder, never a row with an error.
"""

from __future__ import annotations


from fastapi import APIRouter, Path, Query
from fastapi.responses import Response

from ...errors import ImageError, UsageError
from ..files import FileStream, thumbnail_jpeg
from ..gallery import MAX_ROW_NUMBER, Unavailable
from ..query import QueryTooExpensive
from ..service import ApiError, TagService
from . import Service

router = APIRouter(tags=["gallery"])

#: A file id as the API takes it: a positive 64-bit integer (anything else is a 422, not a 500).
FileId = Path(..., ge=1, le=MAX_ROW_NUMBER, description="an id from a search result")


def _gallery(service: TagService):
    if service.gallery is None:
        raise ApiError(404, "no_gallery", "this server has no gallery; start it with --gallery FILE "
                                          "(a database written by `animetagnet index`)")
    return service.gallery


def _open(service: TagService, file_id: int):
    try:
        return _gallery(service).open(file_id)
    except Unavailable as exc:
        raise ApiError(exc.status, exc.code, str(exc)) from None


@router.get("/v1/gallery/search", summary="Search indexed images with a booru-style query")
def gallery_search(service: Service,
                   q: str = Query("", description="e.g. `1girl blue_eyes -smile rating:general`"),
                   limit: int = Query(60, ge=1, le=500), offset: int = Query(0, ge=0, le=MAX_ROW_NUMBER),
                   counts: int = Query(40, ge=0, le=500, description="how many tag counts to return")) -> dict:
    try:
        res = _gallery(service).search(q, limit=limit, offset=offset, counts=counts)
    except QueryTooExpensive as exc:
        raise ApiError(400, "query_too_expensive", str(exc)) from None
    except UsageError as exc:
        raise ApiError(400, "invalid_query", str(exc)) from None
    out = res.to_dict()
    for it in out["items"]:
        it.pop("path", None)  # the server's folder layout is not the client's business
    return out


@router.get("/v1/gallery/files/{file_id}", summary="One indexed image with all stored tags")
def gallery_file(service: Service, file_id: int = FileId) -> dict:
    try:
        info = _gallery(service).get(file_id)
    except Unavailable as exc:
        raise ApiError(exc.status, exc.code, str(exc)) from None
    info.pop("path", None)
    return info


@router.get("/v1/gallery/files/{file_id}/thumb", summary="A JPEG thumbnail", response_class=Response)
def gallery_thumb(service: Service, file_id: int = FileId, size: int = Query(256, ge=32, le=512)):
    fh, _ = _open(service, file_id)
    try:
        return thumbnail_jpeg(fh, size=size, max_pixels=service.tagger.max_pixels, cache_control="max-age=300")
    except ImageError as exc:
        raise ApiError(404, "file_unavailable", f"indexed file {file_id} cannot be read now: {exc.reason}") from None


@router.get("/v1/gallery/files/{file_id}/image", summary="The original indexed file", response_class=Response)
def gallery_image(service: Service, file_id: int = FileId):
    fh, name = _open(service, file_id)
    return FileStream(fh, name)  # streamed from the descriptor that was checked
