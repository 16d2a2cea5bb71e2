"""The HTTP routers: tagging, gallery, health and the pages; each reads the app's one TagService."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from ..service import TagService


def _service(request: Request) -> TagService:
    return request.app.state.service


#: The process's service (model, batcher, counters, gallery) as a route parameter.
Service = Annotated[TagService, Depends(_service)]
