"""The web pages (tagging, gallery, offline API reference) and their static files."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = str(resources.files("animetagnet.serve").joinpath("static"))

router = APIRouter(include_in_schema=False)


@router.get("/")
async def index_page():
    return FileResponse(f"{STATIC}/index.html", media_type="text/html")


@router.get("/gallery")
async def gallery_page():
    return FileResponse(f"{STATIC}/gallery.html", media_type="text/html")


@router.get("/api")
async def api_page():
    return FileResponse(f"{STATIC}/api.html", media_type="text/html")


def install(app: FastAPI) -> None:
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
