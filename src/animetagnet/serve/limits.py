"""ASGI middleware that reads a whole request body under a size limit and time limits before the app runs.

So no handler (and never the model) waits on a slow or stuck client: the body is complete
before any route code runs; a body above the limit gets 413 as soon as it is announced (or
as soon as it grows past the limit), a client that stalls gets 408.
"""

from __future__ import annotations

import asyncio
import json


def error_body(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


async def send_error(send, status: int, code: str, message: str) -> None:
    body = error_body(code, message)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    def __init__(self, app, *, max_bytes: int, idle_timeout: float, total_timeout: float):
        self.app = app
        self.max_bytes = max_bytes
        self.idle_timeout = idle_timeout
        self.total_timeout = total_timeout

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        limit_mb = self.max_bytes / (1024 * 1024)
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    return await send_error(send, 400, "bad_request", "invalid Content-Length header")
                if declared > self.max_bytes:
                    return await send_error(send, 413, "request_too_large",
                                            f"request body of {declared:,} bytes is above the limit of {limit_mb:g} MiB")
        chunks: list[bytes] = []
        size = 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.total_timeout
        while True:
            wait = min(self.idle_timeout, deadline - loop.time())
            try:
                if wait <= 0:
                    raise asyncio.TimeoutError
                message = await asyncio.wait_for(receive(), wait)
            except asyncio.TimeoutError:
                return await send_error(send, 408, "request_timeout",
                                        "the request body arrived too slowly; the upload was abandoned")
            if message["type"] == "http.disconnect":
                return None
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_bytes:
                return await send_error(send, 413, "request_too_large",
                                        f"request body is above the limit of {limit_mb:g} MiB")
            chunks.append(body)
            if not message.get("more_body", False):
                break
        full = b"".join(chunks)
        chunks.clear()
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": full, "more_body": False}
            return await receive()  # after the body: only the disconnect remains

        return await self.app(scope, replay, send)
