"""Sending a file the server has checked and opened (gallery and review images): streamed from that descriptor.

A path handed on (FileResponse) would be opened again, after the check; reading the whole file
first would hold it in memory. `FileStream` sends the size fstat gave when the file was opened,
in blocks, and never more. A file that shrinks meanwhile cannot be sent whole: the response
stops there and the server closes the connection (the client sees a short body, never padding
or a traceback in the log).
"""

from __future__ import annotations

import io
import logging
import mimetypes
import os

from starlette.responses import Response, StreamingResponse

from ..images import load_image, to_rgb_on_white

log = logging.getLogger(__name__)

BLOCK = 1 << 16


class FileShrank(Exception):
    """The file has fewer bytes than the Content-Length already sent."""


def _chunks(fh, length: int, name: str, size: int = BLOCK):
    with fh:  # exactly the announced length, even if the file grows meanwhile
        while length > 0:
            block = fh.read(min(size, length))
            if not block:
                raise FileShrank(f"{name}: the file shrank while it was sent ({length} byte(s) short); "
                                 "connection closed")
            length -= len(block)
            yield block


class FileStream(StreamingResponse):
    """`fh` (an open binary file) with its Content-Length and a media type guessed from `name`."""

    def __init__(self, fh, name: str, headers: dict[str, str] | None = None):
        length = os.fstat(fh.fileno()).st_size
        media = mimetypes.guess_type(name)[0] or "application/octet-stream"
        super().__init__(_chunks(fh, length, os.path.basename(name)), media_type=media,
                         headers={"Content-Length": str(length), "X-Content-Type-Options": "nosniff", **(headers or {})})

    async def stream_response(self, send) -> None:
        try:
            await super().stream_response(send)
        except FileShrank as exc:
            # No closing body message: the server sees an unfinished response and closes the
            # connection, where ending it here would make h11 raise (too little data).
            log.warning("%s", exc)


def thumbnail_jpeg(fh, *, size: int, max_pixels: int | None, cache_control: str) -> Response:
    """A JPEG thumbnail (longest side `size`) of a checked, open file; closes it. ImageError when unreadable."""
    try:
        img = to_rgb_on_white(load_image(fh, max_pixels=max_pixels, draft_size=size))
    finally:
        fh.close()
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85)
    return Response(buf.getvalue(), media_type="image/jpeg", headers={"Cache-Control": cache_control})
