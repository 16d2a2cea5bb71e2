"""The FastAPI application: one TagService, the routers (tagging, gallery, health, pages), one error shape.

`create_app(tagger, ...)` builds it around an already loaded `animetagnet.Tagger`; every
error is `{"error": {"code": ..., "message": ...}}` with a meaningful status. The endpoints
live in serve/routes/, the work and the counters in serve/service.py.
"""

from __future__ import annotations

from contextlib import asynccontextmanager

from .. import __version__
from .service import ApiError, Limits, TagService

try:
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ImportError as _exc:  # pragma: no cover - exercised only without the extra
    from ..errors import UsageError

    raise UsageError(
        f"the web service needs the 'serve' extra ({_exc.name} is missing): pip install 'animetagnet[serve]'"
    ) from None

from .limits import BodyLimitMiddleware
from .routes import gallery, health, pages, tagging
from .security import install_security


def _error_response(exc: ApiError) -> JSONResponse:
    return JSONResponse(exc.to_dict(), status_code=exc.status)


def install_error_handlers(app: FastAPI) -> None:
    """Every failure, the framework's own included, in the one error shape."""

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


def create_app(
    tagger,
    *,
    batch_size: int | None = None,
    max_wait_ms: float = 5.0,
    limits: Limits | None = None,
    gallery_db: str | None = None,
    decode_workers: int = 2,
    allowed_hosts: tuple[str, ...] = (),
    allowed_origins: tuple[str, ...] = (),
) -> FastAPI:
    """The application for one loaded model. `batch_size` 1 turns micro-batching off.

    Requests must name a trusted host (loopback names plus `allowed_hosts`) and writes must
    come from the same origin or one of `allowed_origins` (serve/security.py)."""
    opened = None
    if gallery_db is not None:
        from .gallery import Gallery

        opened = Gallery(gallery_db, readonly=True)
    service = TagService(tagger, batch_size=batch_size, max_wait_ms=max_wait_ms, limits=limits,
                         decode_workers=decode_workers, gallery=opened)

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
    app.state.gallery = service.gallery
    limits = service.limits
    app.add_middleware(BodyLimitMiddleware, max_bytes=limits.max_request_bytes, max_file_bytes=limits.max_file_bytes,
                       idle_timeout=limits.body_idle_timeout, total_timeout=limits.body_total_timeout,
                       budget=service.inflight)
    install_security(app, allowed_hosts=allowed_hosts, allowed_origins=allowed_origins)  # last: outermost
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(tagging.router)
    app.include_router(gallery.router)
    pages.install(app)
    return app
