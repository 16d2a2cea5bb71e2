"""`animetagnet serve` as users start it: a real process on 127.0.0.1, reachable, stopped cleanly."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from modelfactory import build_wd_model
from serve_helpers import free_port, png_bytes

httpx = pytest.importorskip("httpx", reason="httpx is not installed")
pytest.importorskip("uvicorn", reason="the serve extra (uvicorn) is not installed")
ROOT = Path(__file__).resolve().parents[1]


def env():
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + e.get("PYTHONPATH", "")
    return e


def test_serve_process_answers_and_stops(tmp_path):
    model = build_wd_model(tmp_path / "tiny", size=32)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "animetagnet", "serve", "--model", str(model), "--port", str(port),
                             "--max-wait-ms", "2", "--batch-size", "8", "--log-level", "warning"],
                            env=env(), stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 60
        while True:
            try:
                if httpx.get(url + "/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stderr.read()
            assert time.time() < deadline, "the server did not become ready"
            time.sleep(0.2)
        info = httpx.get(url + "/v1/model").json()
        assert info["batching"]["batch_size"] == 8 and info["name"] == "tiny"
        r = httpx.post(url + "/v1/tag", files={"files": ("a.png", png_bytes(), "image/png")})
        assert r.status_code == 200 and r.json()["results"][0]["filename"] == "a.png"
        assert "<title>AnimeTagNet" in httpx.get(url + "/").text
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    err = proc.stderr.read()
    assert "micro-batches of up to 8" in err and f"http://127.0.0.1:{port}/" in err


def test_serve_bad_model_is_a_clear_usage_error(tmp_path):
    r = subprocess.run([sys.executable, "-m", "animetagnet", "serve", "--model", str(tmp_path / "none")],
                       env=env(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "model not found" in r.stderr and "Traceback" not in r.stderr


def test_verbs_are_registered():
    r = subprocess.run([sys.executable, "-m", "animetagnet", "--help"], env=env(), capture_output=True, text=True, timeout=60)
    for verb in ("serve", "index", "search"):
        assert verb in r.stdout


def _run_blocked(code: str, blocked: list[str]) -> subprocess.CompletedProcess:
    prelude = "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in blocked)
    return subprocess.run([sys.executable, "-c", prelude + code], env=env(), capture_output=True, text=True, timeout=120)


def test_serve_never_imports_torch():
    r = _run_blocked("import animetagnet.serve.app, animetagnet.serve.gallery, animetagnet.serve.cli\n"
                     "from animetagnet.cli import build_parser; build_parser()\nprint('ok')", ["torch"])
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr


def test_without_the_serve_extra_serve_says_so_and_the_gallery_still_works(tmp_path):
    model = build_wd_model(tmp_path / "tiny", size=32)
    (tmp_path / "pics").mkdir()
    (tmp_path / "pics" / "a.png").write_bytes(png_bytes())
    blocked = ["fastapi", "uvicorn", "starlette", "multipart", "python_multipart"]
    r = _run_blocked(f"from animetagnet.cli import main; sys.exit(main(['serve', '--model', {str(model)!r}]))", blocked)
    assert r.returncode == 2 and "pip install 'animetagnet[serve]'" in r.stderr and "Traceback" not in r.stderr
    db = str(tmp_path / "g.db")
    r = _run_blocked(f"from animetagnet.cli import main; sys.exit(main(['index', {str(tmp_path / 'pics')!r}, '--db', {db!r}, "
                     f"'--model', {str(model)!r}, '-q']) or main(['search', '--db', {db!r}, '']))", blocked)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("a.png")


def test_serve_refuses_bad_security_options_in_one_line(tmp_path):
    for extra, words in ((["--allowed-origin", "app.example.com"], "scheme://host"),
                         (["--max-inflight-mb", "8"], "--max-inflight-mb")):
        r = subprocess.run([sys.executable, "-m", "animetagnet", "serve", "--model", str(tmp_path / "none"), *extra],
                           env=env(), capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr, r.stderr
