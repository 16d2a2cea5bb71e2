"""Shared fixtures-in-functions for the serve tests: real images from ../shared/data, synthetic ones, a server thread."""

from __future__ import annotations

import io
import socket
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

from cli_helpers import data_dir  # noqa: F401 - re-exported for the serve tests

#: TestClient's base URL: the service trusts loopback names only (its default "testserver" is a 400).
LOCAL = "http://localhost"


def real_images() -> list[Path]:
    d = data_dir() / "danbooru-512px" / "tagged"
    return sorted(d.glob("*.jpg")) if d.is_dir() else []


def png_bytes(size=(48, 40), color=(200, 30, 60), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, "PNG")
    return buf.getvalue()


def jpeg_bytes(size=(64, 64), seed=0) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerThread:
    """A real uvicorn server on 127.0.0.1 in a thread, configured as `animetagnet serve` configures it."""

    def __init__(self, app, connections=None):
        import uvicorn

        from animetagnet.serve.connections import server_config

        self.port = free_port()
        self.config = server_config(app, host="127.0.0.1", port=self.port, limits=connections, log_level="warning")
        self.server = uvicorn.Server(self.config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def counters(self):
        """The server's connection counters (accepted, refused, evicted, head_timeouts, ...)."""
        return self.config.http_protocol_class.counters

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=10)
