"""The FastAPI application: tagging endpoints, health/readiness, gallery API, the web pages, one error shape.

`create_app(tagger, ...)` builds it around an already loaded `animetagnet.Tagger`; every
error is `{"error": {"code": ..., "message": ...}}` with a meaningful status.
"""

from __future__ import annotations

import asyncio
import io
import time
from contextlib import asynccontextmanager
from importlib import resources
from typing import Annotated, Any, Literal

from .. import __version__
from .service import ApiError, Limits, TagService

try:
    from fastapi import FastAPI, File, Query, Request, UploadFile
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse, Response
    from fastapi.staticfiles import StaticFiles
    from pydantic import BaseModel, Field
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ImportError as _exc:  # pragma: no cover - exercised only without the extra
    from ..errors import UsageError

    raise UsageError(
        f"the web service needs the 'serve' extra ({_exc.name} is missing): pip install 'animetagnet[serve]'"
    ) from None

from .limits import BodyLimitMiddleware
from .params import TagQuery


class CaptionItem(BaseModel):
    rating: str | None = None
    ratings: dict[str, float] = Field(default_factory=dict)
    tags: dict[str, dict[str, float]] = Field(default_factory=dict)


class CaptionRequest(BaseModel):
    items: list[CaptionItem] = Field(..., max_length=256)


def _options(params: TagQuery):
    from ..errors import AnimeTagNetError

    try:
        return params.tag_options()
    except AnimeTagNetError as exc:
        raise ApiError(400, "invalid_parameter", str(exc)) from None


def _error_response(exc: ApiError) -> JSONResponse:
    return JSONResponse(exc.to_dict(), status_code=exc.status)


def _static_dir() -> str:
    return str(resources.files("animetagnet.serve").joinpath("static"))


def create_app(
    tagger,
    *,
    batch_size: int | None = None,
    max_wait_ms: float = 5.0,
    limits: Limits | None = None,
    gallery_db: str | None = None,
    decode_workers: int = 2,
) -> FastAPI:
    """The application for one loaded model. `batch_size` 1 turns micro-batching off."""
    service = TagService(tagger, batch_size=batch_size, max_wait_ms=max_wait_ms, limits=limits,
                         decode_workers=decode_workers)
    limits = service.limits
    gallery = None
    if gallery_db is not None:
        from .gallery import Gallery

        gallery = Gallery(gallery_db, readonly=True)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(
        title="AnimeTagNet",
        version=__version__,
        description="Danbooru-style tags for anime illustrations. Every error is "
                    '`{"error": {"code": "...", "message": "..."}}`.',
        lifespan=lifespan,
    )
    app.state.service = service
    app.state.gallery = gallery
    app.add_middleware(BodyLimitMiddleware, max_bytes=limits.max_request_bytes,
                       idle_timeout=limits.body_idle_timeout, total_timeout=limits.body_total_timeout)

    # --- one error shape ------------------------------------------------------
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return _error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        problems = []
        for e in exc.errors():
            where = ".".join(str(p) for p in e.get("loc", ()) if p not in ("body", "query"))
            problems.append(f"{where or 'request'}: {e.get('msg')}")
        return _error_response(ApiError(422, "invalid_request", "; ".join(problems) or "invalid request",
                                        [{"loc": list(e.get("loc", ())), "msg": e.get("msg")} for e in exc.errors()]))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        codes = {404: "not_found", 405: "method_not_allowed", 400: "bad_request", 413: "request_too_large"}
        return _error_response(ApiError(exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail)))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        return _error_response(ApiError(500, "internal_error", f"unexpected {type(exc).__name__}: {exc}"))

    # --- health -----------------------------------------------------------------
    @app.get("/health", tags=["health"], summary="Liveness: the process answers")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/ready", tags=["health"], summary="Readiness: the model is loaded and the batcher runs",
             responses={503: {"description": "not ready"}})
    async def ready() -> dict:
        if not service.ready:
            raise ApiError(503, "not_ready", "the model is not ready")
        return {"status": "ready", "model": tagger.bundle.name, "device": str(tagger.device)}

    @app.get("/v1/model", tags=["tagging"], summary="The loaded model, its defaults and the service limits")
    async def model_info() -> dict:
        vocab = tagger.vocab
        cats: dict[str, int] = {}
        for cat in vocab.present_categories():
            cats[cat.label] = int(vocab.indices(cat).size)
        presets = sorted((tagger.bundle.metadata.thresholds.get("presets") or {}).keys())
        return {
            "name": tagger.bundle.name,
            "tags": len(vocab),
            "categories": cats,
            "input_size": tagger.input_size,
            "device": tagger.device.device,
            "providers": list(tagger.device.providers),
            "default_thresholds": service.default_thresholds(),
            "threshold_presets": presets,
            "default_preset": tagger.bundle.metadata.thresholds.get("default"),
            "batching": {"batch_size": service.batcher.batch_size, "max_wait_ms": service.batcher.max_wait * 1000},
            "limits": {"max_request_bytes": limits.max_request_bytes, "max_file_bytes": limits.max_file_bytes,
                       "max_files": limits.max_files, "max_pixels": tagger.max_pixels,
                       "request_timeout_s": limits.request_timeout},
            "gallery": gallery is not None,
            "version": __version__,
        }

    @app.get("/v1/stats", tags=["health"], summary="Request and micro-batching counters")
    async def stats() -> dict:
        return {"requests": service.requests, "images": service.images, "failed_images": service.failures,
                "queued": service.batcher.pending, "batching": service.batcher.stats.to_dict()}

    # --- tagging ----------------------------------------------------------------
    async def _one(upload: UploadFile, options, floor: float | None) -> dict[str, Any]:
        name = upload.filename or None
        if upload.size is not None and upload.size > limits.max_file_bytes:
            raise ApiError(413, "file_too_large", f"{name}: {upload.size:,} bytes is above the per-file limit of "
                                                  f"{limits.max_file_bytes / 1024 / 1024:g} MiB")
        data = await upload.read()
        if len(data) > limits.max_file_bytes:
            raise ApiError(413, "file_too_large", f"{name}: above the per-file limit")
        array = await service.decode(data, name)
        del data
        probs = await service.infer(array)
        return service.describe(probs, name, options, floor)

    @app.post(
        "/v1/tag", tags=["tagging"], summary="Tag one or more uploaded images",
        responses={400: {"description": "bad parameter or broken image"}, 413: {"description": "too large"},
                   415: {"description": "not an image"}, 422: {"description": "invalid request"},
                   503: {"description": "not ready, overloaded or timed out"}},
    )
    async def tag(
        files: Annotated[list[UploadFile], File(description="image files (repeat the field for several)")],
        params: Annotated[TagQuery, Query()],
    ) -> dict:
        """Multipart upload (field `files`, repeatable). Each image gets its rating, tags by category
        with confidences and a caption; with `min_confidence` also `scores` (all tags above it).

        One bad image among several gives that item an `error` (same shape) and the others are
        tagged; when every image fails, the response is the first failure's status and error."""
        t0 = time.perf_counter()
        if len(files) > limits.max_files:
            raise ApiError(413, "too_many_files", f"{len(files)} files in one request; the limit is {limits.max_files}")
        options = _options(params)
        service.check(options)  # bad options fail before any decoding
        service.requests += 1
        outcomes = await asyncio.gather(*(_one(f, options, params.min_confidence) for f in files), return_exceptions=True)
        results, errors = [], []
        for f, out in zip(files, outcomes):
            if isinstance(out, ApiError):
                errors.append(out)
                results.append({"filename": f.filename or None, **out.to_dict()})
            elif isinstance(out, BaseException):
                raise out
            else:
                results.append(out)
        service.images += len(files)
        service.failures += len(errors)
        if errors and len(errors) == len(files):
            first = errors[0]
            if len(files) > 1:
                first = ApiError(first.status, first.code, first.message,
                                 [r["error"] | {"filename": r["filename"]} for r in results])
            raise first
        return {"model": tagger.bundle.name, "results": results,
                "elapsed_ms": round((time.perf_counter() - t0) * 1000, 2)}

    @app.post("/v1/caption", tags=["tagging"], summary="Captions for tag sets already returned by /v1/tag")
    async def caption(body: CaptionRequest, params: Annotated[TagQuery, Query()]) -> dict:
        """Formats tags the client already has (e.g. after filtering them with a slider) with the
        same formatting options as /v1/tag; no inference."""
        return {"captions": service.caption([it.model_dump() for it in body.items], _options(params))}

    # --- gallery ----------------------------------------------------------------
    def _gallery():
        if gallery is None:
            raise ApiError(404, "no_gallery", "this server has no gallery; start it with --gallery FILE "
                                              "(a database written by `animetagnet index`)")
        return gallery

    @app.get("/v1/gallery/search", tags=["gallery"], summary="Search indexed images with a booru-style query")
    def gallery_search(q: str = Query("", max_length=2000, description="e.g. `1girl blue_eyes -smile rating:general`"),
                       limit: int = Query(60, ge=1, le=500), offset: int = Query(0, ge=0),
                       counts: int = Query(40, ge=0, le=500, description="how many tag counts to return")) -> dict:
        from ..errors import UsageError

        try:
            res = _gallery().search(q, limit=limit, offset=offset, counts=counts)
        except UsageError as exc:
            raise ApiError(400, "invalid_query", str(exc)) from None
        out = res.to_dict()
        for it in out["items"]:
            it.pop("path", None)  # the server's folder layout is not the client's business
        return out

    @app.get("/v1/gallery/files/{file_id}", tags=["gallery"], summary="One indexed image with all stored tags")
    def gallery_file(file_id: int) -> dict:
        info = _gallery().get(file_id)
        if info is None:
            raise ApiError(404, "not_found", f"no indexed file with id {file_id}")
        info.pop("path", None)
        return info

    @app.get("/v1/gallery/files/{file_id}/thumb", tags=["gallery"], summary="A JPEG thumbnail",
             response_class=Response)
    def gallery_thumb(file_id: int, size: int = Query(256, ge=32, le=512)):
        from ..errors import ImageError
        from ..images import load_image, to_rgb_on_white

        path = _gallery().path_of(file_id)  # from the database: never a client-named path
        if path is None:
            raise ApiError(404, "not_found", f"no indexed file with id {file_id}")
        try:
            img = to_rgb_on_white(load_image(path, max_pixels=tagger.max_pixels, draft_size=size))
        except ImageError as exc:
            raise ApiError(404, "file_unavailable", f"indexed file {file_id} cannot be read now: {exc.reason}") from None
        img.thumbnail((size, size))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=85)
        return Response(buf.getvalue(), media_type="image/jpeg", headers={"Cache-Control": "max-age=300"})

    @app.get("/v1/gallery/files/{file_id}/image", tags=["gallery"], summary="The original indexed file",
             response_class=FileResponse)
    def gallery_image(file_id: int):
        import os

        path = _gallery().path_of(file_id)
        if path is None:
            raise ApiError(404, "not_found", f"no indexed file with id {file_id}")
        if not os.path.isfile(path):
            raise ApiError(404, "file_unavailable", f"indexed file {file_id} is no longer on disk")
        return FileResponse(path)

    # --- pages ------------------------------------------------------------------
    static = _static_dir()

    @app.get("/", include_in_schema=False)
    async def index_page():
        return FileResponse(f"{static}/index.html", media_type="text/html")

    @app.get("/gallery", include_in_schema=False)
    async def gallery_page():
        return FileResponse(f"{static}/gallery.html", media_type="text/html")

    @app.get("/api", include_in_schema=False)
    async def api_page():
        return FileResponse(f"{static}/api.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=static), name="static")
    return app
