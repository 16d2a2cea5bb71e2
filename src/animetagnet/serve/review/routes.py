"""/v1/review/...: the JSON API of the review page, and the page itself at /review.

Images are addressed by the ids the session gave them; no request names a path. Errors are
the service's one shape (`{"error": {"code", "message", "details"}}`): 409 for a stale version,
a caption changed on disk (reloaded, nothing written) or an unreadable caption; 507 for a
caption file that could not be written (disk full, read-only: the edit is kept in the history).
"""

from __future__ import annotations

from typing import Annotated, Literal, Optional

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import FileResponse, Response
from pydantic import BaseModel, Field

from ...errors import ImageError
from ..files import FileStream, thumbnail_jpeg
from ..gallery import MAX_ROW_NUMBER
from ..service import ApiError
from .session import DEFAULT_LOW, Filter, ReviewError, ReviewSession

router = APIRouter(tags=["review"])


def _session(request: Request) -> ReviewSession:
    return request.app.state.review


Session = Annotated[ReviewSession, Depends(_session)]


def _api(exc: ReviewError) -> ApiError:
    return ApiError(exc.status, exc.code, exc.message, exc.details)


def call(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except ReviewError as exc:
        raise _api(exc) from None


class FilterQuery(BaseModel):
    """The selection: the grid's filters, also the target of a bulk edit."""

    tag: str = Field("", max_length=4000, description="comma-separated tags the caption must have")
    missing: str = Field("", max_length=4000, description="comma-separated tags the caption must not have")
    disagree: bool = Field(False, description="only images where the caption and the model's selection differ")
    low: Optional[float] = Field(None, ge=0.5, le=1.0,
                                 description=f"only images the model is unsure about: some tag with "
                                             f"max(p, 1-p) below this (e.g. {DEFAULT_LOW})")
    problems: bool = Field(False, description="only unreadable images or captions and images without a caption")

    def build(self) -> Filter:
        split = lambda s: [t for t in s.split(",") if t.strip()]  # noqa: E731
        return Filter.make(split(self.tag), split(self.missing), self.disagree, self.low, self.problems)


class EditRequest(BaseModel):
    version: int = Field(..., description="the image's version the client saw (from its last answer)")
    op: Literal["add", "remove", "move", "set", "accept", "reject", "confirm"]
    tag: Optional[str] = Field(None, max_length=500)
    tags: Optional[list[Annotated[str, Field(max_length=500)]]] = Field(None, max_length=2000,
                                                                          description="op set: the whole caption")
    index: Optional[int] = Field(None, ge=0, le=100000, description="add/move: position in the caption")


class BulkRequest(BaseModel):
    op: Literal["add", "remove", "rename", "replace"]
    tag: str = Field(..., max_length=500)
    new: Optional[str] = Field(None, max_length=4000, description="rename: the new tag; replace: comma-separated tags")
    filter: FilterQuery = Field(default_factory=FilterQuery)


@router.get("/v1/review/status", summary="The folder, the model, suggestion progress, undo/redo availability")
def status(session: Session) -> dict:
    return session.status()


@router.get("/v1/review/items", summary="The filtered, sorted selection (a page of it, and every id in order)")
def items(session: Session, flt: Annotated[FilterQuery, Query()],
          sort: Literal["file", "tags", "disagreement", "confidence"] = "file", descending: bool = False,
          offset: int = Query(0, ge=0), limit: int = Query(60, ge=1, le=1000)) -> dict:
    return call(session.list_items, flt.build(), sort, descending, offset, limit)


@router.get("/v1/review/items/{item_id}", summary="One image: caption tags and model tags, marked")
def item(session: Session, item_id: int) -> dict:
    return call(session.detail, item_id)


@router.post("/v1/review/items/{item_id}/edit", summary="Edit one caption (journaled; undo with /v1/review/undo)")
def edit(session: Session, item_id: int, body: EditRequest) -> dict:
    return call(session.edit, item_id, body.version, body.op, body.tag, body.tags, body.index)


@router.post("/v1/review/bulk", summary="Add, remove, rename or replace a tag on every image of a selection")
def bulk(session: Session, body: BulkRequest) -> dict:
    return call(session.bulk, body.filter.build(), body.op, body.tag, body.new)


@router.post("/v1/review/undo", summary="Undo the last action (one edit or one bulk edit)")
def undo(session: Session) -> dict:
    return call(session.undo)


@router.post("/v1/review/redo", summary="Redo the last undone action")
def redo(session: Session) -> dict:
    return call(session.redo)


@router.get("/v1/review/history", summary="The journal, newest first")
def history(session: Session, limit: int = Query(50, ge=1, le=1000),
            item: Optional[int] = Query(None, ge=1, le=MAX_ROW_NUMBER, description="only this image's edits")) -> dict:
    return {"history": session.history(limit, item)}


@router.get("/v1/review/tags", summary="Tag frequency table of the folder (or of a selection)")
def tags(session: Session, flt: Annotated[FilterQuery, Query()], selection: bool = False,
         limit: int = Query(500, ge=1, le=100000)) -> dict:
    table = session.frequencies(flt.build() if selection else None)
    return {"total": len(table), "tags": table[:limit]}


@router.get("/v1/review/complete", summary="Autocomplete: model vocabulary, then the Danbooru tag table")
def complete(session: Session, q: str = Query(..., max_length=200), limit: int = Query(15, ge=1, le=100)) -> dict:
    return {"completions": session.completer.complete(q, limit)}


@router.get("/v1/review/items/{item_id}/thumb", summary="A JPEG thumbnail", response_class=Response)
def thumb(session: Session, item_id: int, size: int = Query(256, ge=32, le=768)):
    fh, _ = call(session.open_image, item_id)
    max_pixels = session.tagger.max_pixels if session.tagger is not None else None
    try:
        return thumbnail_jpeg(fh, size=size, max_pixels=max_pixels, cache_control="no-cache")
    except ImageError as exc:
        raise ApiError(404, "file_unavailable", f"image {item_id} cannot be read: {exc.reason}") from None


@router.get("/v1/review/items/{item_id}/image", summary="The original image file", response_class=Response)
def image(session: Session, item_id: int):
    fh, name = call(session.open_image, item_id)
    # streamed from the descriptor that was checked (confine.open_confined)
    return FileStream(fh, name, headers={"Cache-Control": "no-cache"})


def install(app: FastAPI, session: ReviewSession) -> FastAPI:
    """Add the review API and page to an app from `serve.app.create_app` (its limits, errors and security)."""
    from ..routes.pages import STATIC

    app.state.review = session
    app.include_router(router)

    @app.get("/review", include_in_schema=False)
    async def review_page():
        return FileResponse(f"{STATIC}/review.html", media_type="text/html")

    return app


def create_review_app(session: ReviewSession, tagger, **app_kwargs) -> FastAPI:
    """The tagging service's app (create_app) with the review API and page added."""
    from ..app import create_app

    return install(create_app(tagger, **app_kwargs), session)
