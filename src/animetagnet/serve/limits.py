"""ASGI middleware that streams request bodies under size limits, time limits and a budget shared by all requests.

Nothing is buffered here: each piece of the body goes to the app as it arrives (Starlette's
multipart parser spools files above 1 MiB to a temporary file), so a request costs memory for
what the app keeps, not twice its body. While the body streams:

- a body above `max_bytes` gets 413 `request_too_large` as soon as it is announced
  (Content-Length) or grows past the limit (chunked), never after reading it all;
- a multipart part above `max_file_bytes` (plus room for the part's own headers) gets 413
  `file_too_large` as soon as it passes that size; the route still checks each file's exact
  size;
- a client that stalls (`idle_timeout` between pieces, `total_timeout` in all) gets 408;
- the bytes of bodies in flight across all requests stay within `InflightBudget`: a request
  takes its Content-Length before anything is read (a chunked one takes each piece as it
  comes) and gives it back when its response is done. One that does not fit gets 503
  `overloaded` with Retry-After at once, before its body is read.

Why refuse rather than spool to disk or queue: spooling moves the exhaustion from memory to
the disk (and Starlette already spools each file); queueing holds the connection and the
client's upload anyway. A 503 with Retry-After costs nothing, tells a well-behaved client when
to come back, and the budget then bounds the memory and temporary disk that uploads can hold
(docs/serve.md has the formula).

On a violation the middleware answers itself (the error shape, `Connection: close`) and hands
the app an `http.disconnect`, so any framework just sees a client that went away; whatever the
app tries to send afterwards is dropped. So no handler (and never the model) waits on a slow or
stuck client: FastAPI runs route code only after the whole form has arrived.
"""

from __future__ import annotations

import asyncio
import json


def error_body(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


async def send_error(send, status: int, code: str, message: str, headers=()) -> None:
    body = error_body(code, message)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"), *headers]})
    await send({"type": "http.response.body", "body": body})


class InflightBudget:
    """Bytes of request bodies in flight across the requests of one app (one event loop: no lock)."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.used = 0
        self.peak = 0
        self.refused = 0

    def take(self, n: int) -> bool:
        if self.used + n > self.max_bytes:
            self.refused += 1
            return False
        self.used += n
        self.peak = max(self.peak, self.used)
        return True

    def give(self, n: int) -> None:
        self.used -= n

    def to_dict(self) -> dict:
        return {"max_bytes": self.max_bytes, "used": self.used, "peak": self.peak, "refused": self.refused}


#: Room for a multipart part's own headers (Content-Disposition with the file name, Content-Type).
PART_HEADER_ROOM = 64 * 1024


def multipart_boundary(content_type: bytes) -> bytes | None:
    """The boundary of a `multipart/...; boundary=...` Content-Type, else None."""
    kind, _, params = content_type.partition(b";")
    if not kind.strip().lower().startswith(b"multipart/"):
        return None
    for param in params.split(b";"):
        name, _, value = param.strip().partition(b"=")
        if name.strip().lower() == b"boundary":
            value = value.strip().strip(b'"')
            return value or None
    return None


class PartSizes:
    """Tracks the size of the current multipart part while the body streams by (no copy of the body).

    It only looks for the delimiter `--BOUNDARY`: a false match inside data could only make a
    part look smaller, so it never refuses a body that a full parser would accept."""

    def __init__(self, boundary: bytes, limit: int):
        self.delimiter = b"--" + boundary
        self.limit = limit
        self.offset = 0  # stream position of the next chunk
        self.part_start = 0  # stream position just after the last delimiter
        self.tail = b""  # the last len(delimiter) - 1 bytes, for a delimiter split across chunks

    def feed(self, chunk: bytes) -> bool:
        """False once a part is longer than the limit."""
        d, n = self.delimiter, len(self.delimiter)
        ok = True
        if self.tail:
            seam = self.tail + chunk[: n - 1]
            i = seam.find(d)
            if 0 <= i < len(self.tail):
                ok = self._delimiter_at(self.offset - len(self.tail) + i)
        i = chunk.find(d)
        while i >= 0:
            ok = self._delimiter_at(self.offset + i) and ok
            i = chunk.find(d, i + n)
        self.offset += len(chunk)
        self.tail = (self.tail + chunk)[-(n - 1):] if len(chunk) < n - 1 else chunk[-(n - 1):]
        return ok and self.offset - self.part_start <= self.limit

    def _delimiter_at(self, position: int) -> bool:
        """A part ends at `position`: was it within the limit?"""
        ok = position - self.part_start <= self.limit
        self.part_start = position + len(self.delimiter)
        return ok


class BodyLimitMiddleware:
    def __init__(self, app, *, max_bytes: int, idle_timeout: float, total_timeout: float,
                 max_file_bytes: int | None = None, budget: InflightBudget | None = None, retry_after: int = 2):
        self.app = app
        self.max_bytes = max_bytes
        self.idle_timeout = idle_timeout
        self.total_timeout = total_timeout
        self.max_file_bytes = max_file_bytes
        self.budget = budget
        self.retry_after = retry_after

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        limit_mb = self.max_bytes / (1024 * 1024)
        declared = None
        boundary = None
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    return await send_error(send, 400, "bad_request", "invalid Content-Length header")
                if declared > self.max_bytes:
                    return await send_error(send, 413, "request_too_large",
                                            f"request body of {declared:,} bytes is above the limit of {limit_mb:g} MiB")
            elif name == b"content-type":
                boundary = multipart_boundary(value)
        budget = self.budget
        reserved = 0
        if budget is not None and declared:
            if not budget.take(declared):
                return await self._busy(send)
            reserved = declared
        parts = PartSizes(boundary, self.max_file_bytes + PART_HEADER_ROOM) if boundary and self.max_file_bytes else None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.total_timeout
        size = 0
        started = False  # the app's response began
        answered = False  # we answered instead of the app

        async def refuse(status: int, code: str, message: str, headers=()):
            nonlocal answered
            if not started:
                answered = True
                await send_error(send, status, code, message, headers)
            return {"type": "http.disconnect"}

        async def guarded_receive():
            nonlocal size, reserved
            if answered:
                return {"type": "http.disconnect"}
            wait = min(self.idle_timeout, deadline - loop.time())
            try:
                if wait <= 0:
                    raise asyncio.TimeoutError
                message = await asyncio.wait_for(receive(), wait)
            except asyncio.TimeoutError:
                return await refuse(408, "request_timeout", "the request body arrived too slowly; the upload was abandoned")
            if message["type"] != "http.request":
                return message
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_bytes:
                return await refuse(413, "request_too_large", f"request body is above the limit of {limit_mb:g} MiB")
            if budget is not None and declared is None and body:
                if not budget.take(len(body)):
                    return await refuse(503, "overloaded", self._busy_message(), self._retry_headers())
                reserved += len(body)
            if parts is not None and not parts.feed(body):
                return await refuse(413, "file_too_large", "a file in the upload is above the per-file limit of "
                                                           f"{self.max_file_bytes / 1024 / 1024:g} MiB")
            return message

        async def guarded_send(message):
            nonlocal started
            if answered:
                return  # our error went out instead
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, guarded_receive, guarded_send)
        finally:
            if budget is not None:
                budget.give(reserved)

    def _retry_headers(self):
        return [(b"retry-after", str(self.retry_after).encode())]

    def _busy_message(self) -> str:
        mb = self.budget.max_bytes / 1024 / 1024 if self.budget else 0
        return (f"uploads in progress already use the service's {mb:g} MiB budget for request bodies "
                f"(--max-inflight-mb); retry in {self.retry_after} s")

    async def _busy(self, send):
        await send_error(send, 503, "overloaded", self._busy_message(), self._retry_headers())
