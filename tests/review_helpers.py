"""A review folder with every kind of caption (and a broken image), and `animetagnet review` as a real process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from serve_helpers import free_port

ROOT = Path(__file__).resolve().parents[1]
NOT_UTF8 = b"caf\xe9, smile\n"


def make_folder(d: Path, n: int = 6) -> Path:
    """img0..img{n-1}.jpg (distinct colours, so the tiny model's scores differ) with captions:
    img0 underscores, img1 spaces, img2 not UTF-8, img3 none, the rest `1girl, solo`; plus broken.jpg."""
    d.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        rng = np.random.default_rng(i)
        base = rng.integers(0, 256, 3)
        arr = np.clip(base + rng.integers(-30, 30, (48, 48, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(d / f"img{i}.jpg", quality=92)
    (d / "img0.txt").write_text("1girl, long_hair, smile\n", encoding="utf-8")
    (d / "img1.txt").write_text("long hair, blue eyes\n", encoding="utf-8")
    (d / "img2.txt").write_bytes(NOT_UTF8)
    for i in range(4, n):
        (d / f"img{i}.txt").write_text("1girl, solo\n", encoding="utf-8")
    (d / "broken.jpg").write_bytes(b"this is not a JPEG")
    return d


def env() -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + e.get("PYTHONPATH", "")
    return e


class ReviewServer:
    """`python -m animetagnet review DIR --model M` on 127.0.0.1, ready once the suggestions are computed."""

    def __init__(self, folder: Path, model: Path, *extra: str):
        import httpx

        self.httpx = httpx
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "animetagnet", "review", str(folder), "--model", str(model), "--port", str(self.port),
             "--log-level", "warning", *extra], env=env(), stderr=subprocess.PIPE, text=True)
        self.client = httpx.Client(base_url=self.url, timeout=30)

    def wait(self, timeout: float = 90) -> "ReviewServer":
        deadline = time.time() + timeout
        while True:
            try:
                r = self.client.get("/v1/review/status", timeout=2)
                if r.status_code == 200 and not r.json()["suggestions"]["running"]:
                    return self
            except self.httpx.TransportError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"the review server exited: {self.proc.stderr.read()}")
            if time.time() > deadline:
                raise RuntimeError("the review server did not become ready")
            time.sleep(0.2)

    def get(self, path: str, **kw):
        return self.client.get(path, **kw)

    def post(self, path: str, json=None, **kw):
        return self.client.post(path, json=json, **kw)

    def item_by_name(self, name: str) -> dict:
        for it in self.get("/v1/review/items", params={"limit": 1000}).json()["items"]:
            if it["name"] == name:
                return self.get(f"/v1/review/items/{it['id']}").json()
        raise KeyError(name)

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=20)
        self.client.close()

    def stop(self) -> str:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.stderr.read() if self.proc.stderr else ""

    def __enter__(self):
        return self.wait()

    def __exit__(self, *exc):
        self.stop()
