"""Every endpoint of the HTTP service and every error, in process (FastAPI TestClient), with a tiny WD model."""

import asyncio
import io

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the serve extra (fastapi) is not installed")
pytest.importorskip("multipart", reason="the serve extra (python-multipart) is not installed")
from fastapi.testclient import TestClient  # noqa: E402

from animetagnet import Tagger  # noqa: E402
from animetagnet.formatting import CaptionStyle  # noqa: E402
from animetagnet.serve.app import create_app  # noqa: E402
from animetagnet.serve.limits import BodyLimitMiddleware  # noqa: E402
from animetagnet.serve.service import Limits  # noqa: E402
from serve_helpers import LOCAL, jpeg_bytes, png_bytes, real_images  # noqa: E402

LIMITS = Limits(max_request_bytes=400_000, max_file_bytes=200_000, max_files=3)


@pytest.fixture(scope="module")
def tagger(tiny_model):
    return Tagger(tiny_model)


@pytest.fixture(scope="module")
def client(tagger):
    with TestClient(create_app(tagger, limits=LIMITS, max_wait_ms=2), base_url=LOCAL) as c:
        yield c


def sample_image() -> bytes:
    imgs = real_images()
    return imgs[0].read_bytes() if imgs else jpeg_bytes((96, 80))


def upload(*items):
    return [("files", it) for it in items]


def assert_error(resp, status, code):
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]


# --- health, docs, model ----------------------------------------------------------
def test_health_ready_model_and_docs(client, tagger):
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    info = client.get("/v1/model").json()
    assert info["tags"] == len(tagger.vocab) and info["input_size"] == 32
    assert info["categories"] == {"general": 7, "character": 2, "rating": 4}
    assert info["default_thresholds"] == {"general": 0.35, "character": 0.85}
    assert info["limits"]["max_files"] == 3
    spec = client.get("/openapi.json").json()
    assert {"/v1/tag", "/v1/caption", "/health", "/ready", "/v1/gallery/search"} <= set(spec["paths"])
    params = {p["name"] for p in spec["paths"]["/v1/tag"]["post"]["parameters"]}
    assert {"general_threshold", "top_k", "spaces", "min_confidence", "exclude"} <= params
    assert client.get("/docs").status_code == 200


def test_not_ready_before_startup(tagger):
    c = TestClient(create_app(tagger), base_url=LOCAL)  # not entered: the lifespan (model worker) never started
    assert_error(c.get("/ready"), 503, "not_ready")
    assert_error(c.post("/v1/tag", files=upload(("a.png", png_bytes(), "image/png"))), 503, "not_ready")
    assert c.get("/health").status_code == 200


def test_pages_and_static_files(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"] and "/static/app.js" in page.text
    assert "/static/gallery.js" in client.get("/gallery").text
    assert "/static/api.js" in client.get("/api").text  # offline API reference (Swagger UI needs a CDN)
    for name in ("app.js", "gallery.js", "api.js", "style.css"):
        assert client.get(f"/static/{name}").status_code == 200
    for name in ("app.js", "gallery.js", "api.js", "style.css"):  # nothing from the internet (offline users)
        assert "http://" not in client.get(f"/static/{name}").text and "https://" not in client.get(f"/static/{name}").text
    for page in ("/", "/gallery", "/api"):
        assert "https://" not in client.get(page).text


# --- tagging ------------------------------------------------------------------------
def test_tag_one_image_matches_the_python_api(client, tagger):
    data = sample_image()
    resp = client.post("/v1/tag", files=upload(("pic.jpg", data, "image/jpeg")))
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["model"] == "tiny" and len(body["results"]) == 1
    res = body["results"][0]
    direct = tagger.tag(data)
    assert res["filename"] == "pic.jpg"
    assert res["rating"] == direct.rating
    assert res["tags"] == direct.to_dict()["tags"]
    assert res["caption"] == CaptionStyle().caption(direct)
    assert "scores" not in res


def test_tag_several_images_in_order(client, tagger):
    files = upload(("red.png", png_bytes(color=(220, 10, 10)), "image/png"),
                   ("blue.png", png_bytes(color=(10, 10, 220)), "image/png"),
                   ("noise.jpg", jpeg_bytes(), "image/jpeg"))
    body = client.post("/v1/tag", files=files).json()
    assert [r["filename"] for r in body["results"]] == ["red.png", "blue.png", "noise.jpg"]
    for (_, (name, data, _)), res in zip(files, body["results"]):
        assert res["tags"] == tagger.tag(data).to_dict()["tags"], name


def test_options_are_the_cli_options(client):
    data = png_bytes(color=(90, 160, 30))
    every = client.post("/v1/tag?general_threshold=0&character_threshold=0", files=upload(("a.png", data, "image/png")))
    res = every.json()["results"][0]
    assert len(res["tags"]["general"]) == 7 and len(res["tags"]["character"]) == 2
    top = client.post("/v1/tag?general_threshold=0&character_threshold=0&top_k=2",
                      files=upload(("a.png", data, "image/png"))).json()["results"][0]
    assert sum(len(v) for v in top["tags"].values()) == 2
    excl = client.post("/v1/tag?general_threshold=0&exclude=long_hair,solo&spaces=true&replace=1girl%3Done_girl",
                       files=upload(("a.png", data, "image/png"))).json()["results"][0]
    assert "long_hair" not in excl["tags"]["general"] and "solo" not in excl["tags"]["general"]
    assert "one_girl" in excl["tags"]["general"] and "1girl" not in excl["tags"]["general"]
    assert "very long hair" in excl["caption"] and "very_long_hair" not in excl["caption"]
    implied = client.post("/v1/tag?general_threshold=0&drop_implied=true",
                          files=upload(("a.png", data, "image/png"))).json()["results"][0]
    assert "very_long_hair" in implied["tags"]["general"] and "long_hair" not in implied["tags"]["general"]
    rated = client.post("/v1/tag?include_rating=true&with_confidence=true",
                        files=upload(("a.png", data, "image/png"))).json()["results"][0]
    assert rated["caption"].startswith(f"({rated['rating']}:")


def test_min_confidence_returns_all_scores_for_live_filtering(client, tagger):
    data = jpeg_bytes(seed=3)
    res = client.post("/v1/tag?min_confidence=0.05", files=upload(("a.jpg", data, "image/jpeg"))).json()["results"][0]
    probs = tagger.predict(tagger.prepare(data)[None])[0]
    expected = {name for i, name in enumerate(tagger.vocab.names) if tagger.vocab.categories[i] != 9 and probs[i] >= 0.05}
    got = {name for tags in res["scores"].values() for name in tags}
    assert got == expected
    assert set(res["tags"]["general"]) <= set(res["scores"]["general"])


def test_caption_endpoint_formats_without_inference(client):
    items = [{"rating": "general", "ratings": {"general": 0.9},
              "tags": {"general": {"long_hair": 0.9, "1girl": 0.95}, "character": {"irys_(hololive)": 0.5}}}]
    resp = client.post("/v1/caption?spaces=true&escape_parens=true&include_rating=true", json={"items": items})
    assert resp.json() == {"captions": [r"general, irys \(hololive\), 1girl, long hair"]}
    assert client.post("/v1/caption?sort=name&characters_first=false", json={"items": items}).json()["captions"] == [
        "1girl, irys_(hololive), long_hair"]
    assert_error(client.post("/v1/caption", json={"nope": 1}), 422, "invalid_request")


# --- errors ---------------------------------------------------------------------------
def test_not_an_image_is_415(client):
    err = assert_error(client.post("/v1/tag", files=upload(("notes.txt", b"hello world", "text/plain"))),
                       415, "unsupported_media_type")
    assert "notes.txt" in err["message"] and "not an image" in err["message"]


def test_broken_and_empty_images_are_400(client):
    data = jpeg_bytes((200, 200))
    assert_error(client.post("/v1/tag", files=upload(("cut.jpg", data[: len(data) // 3], "image/jpeg"))),
                 400, "broken_image")
    assert_error(client.post("/v1/tag", files=upload(("empty.png", b"", "image/png"))), 400, "empty_file")


def test_mixed_batch_reports_per_item_errors(client):
    resp = client.post("/v1/tag", files=upload(("ok.png", png_bytes(), "image/png"), ("bad.txt", b"zz", "text/plain")))
    assert resp.status_code == 200
    ok, bad = resp.json()["results"]
    assert "tags" in ok and bad["error"]["code"] == "unsupported_media_type" and bad["filename"] == "bad.txt"
    both_bad = client.post("/v1/tag", files=upload(("a.txt", b"zz", "text/plain"), ("b.txt", b"yy", "text/plain")))
    err = assert_error(both_bad, 415, "unsupported_media_type")
    assert [d["filename"] for d in err["details"]] == ["a.txt", "b.txt"]


def test_size_limits_are_413(client):
    big = np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(big).save(buf, "PNG")  # ~270 kB: above the file limit, below the request limit
    assert len(buf.getvalue()) > LIMITS.max_file_bytes
    assert_error(client.post("/v1/tag", files=upload(("big.png", buf.getvalue(), "image/png"))), 413, "file_too_large")
    huge = b"\0" * (LIMITS.max_request_bytes + 10)
    assert_error(client.post("/v1/tag", files=upload(("huge.bin", huge, "image/png"))), 413, "request_too_large")
    four = upload(*[(f"{i}.png", png_bytes(), "image/png") for i in range(4)])
    assert_error(client.post("/v1/tag", files=four), 413, "too_many_files")


def test_pixel_limit_is_413(tiny_model):
    small = Tagger(tiny_model, max_pixels=50 * 50)
    with TestClient(create_app(small), base_url=LOCAL) as c:
        err = assert_error(c.post("/v1/tag", files=upload(("wide.png", png_bytes((100, 60)), "image/png"))),
                           413, "too_many_pixels")
        assert "6,000 pixels" in err["message"]
        assert c.post("/v1/tag", files=upload(("s.png", png_bytes((40, 40)), "image/png"))).status_code == 200


def test_padded_square_counts_against_the_pixel_limit(tiny_model):
    """A long thin image is padded to a square before resizing: that square must fit --max-pixels too
    (a 262 kB 30000x2900 PNG cost 3.8 GB before), except where JPEG draft mode shrinks it first."""
    small = Tagger(tiny_model, max_pixels=30_000)
    with TestClient(create_app(small), base_url=LOCAL) as c:
        strip = png_bytes((1000, 20))  # 20,000 pixels, padded to 1000x1000
        err = assert_error(c.post("/v1/tag", files=upload(("strip.png", strip, "image/png"))), 413, "too_many_pixels")
        assert "1000x1000" in err["message"]
        assert c.post("/v1/tag", files=upload(("ok.png", png_bytes((170, 170)), "image/png"))).status_code == 200
        # a 400x60 JPEG decodes at 1/8 (draft mode, model input 32): its square is 50x50
        wide = c.post("/v1/tag", files=upload(("wide.jpg", jpeg_bytes((400, 60)), "image/jpeg")))
        assert wide.status_code == 200, wide.text


def test_bad_parameters(client):
    png = ("a.png", png_bytes(), "image/png")
    assert_error(client.post("/v1/tag?general_threshold=1.5", files=upload(png)), 422, "invalid_request")
    assert_error(client.post("/v1/tag?top_k=0", files=upload(png)), 422, "invalid_request")
    assert_error(client.post("/v1/tag?sort=random", files=upload(png)), 422, "invalid_request")
    assert_error(client.post("/v1/tag?no_such_option=1", files=upload(png)), 422, "invalid_request")
    assert_error(client.post("/v1/tag?replace=nonsense", files=upload(png)), 400, "invalid_parameter")
    err = assert_error(client.post("/v1/tag?threshold_preset=strict", files=upload(png)), 400, "invalid_parameter")
    assert "strict" in err["message"]
    assert_error(client.post("/v1/tag"), 422, "invalid_request")


def test_never_reads_a_server_path_named_by_the_client(client):
    real = real_images()
    name = str(real[0]) if real else "/etc/hostname"
    # The filename is only a label: the content is what is tagged, so this must fail as "not an image".
    assert_error(client.post("/v1/tag", files=upload((name, b"not an image", "image/jpeg"))), 415, "unsupported_media_type")
    # A path sent as a plain form field is not a file upload.
    assert_error(client.post("/v1/tag", data={"files": name}), 422, "invalid_request")


def test_unknown_route_and_method_use_the_error_shape(client):
    assert_error(client.get("/v1/nothing"), 404, "not_found")
    assert_error(client.get("/v1/tag"), 405, "method_not_allowed")


def test_stats_count_batches(client):
    stats = client.get("/v1/stats").json()
    assert stats["requests"] > 0 and stats["batching"]["items"] > 0
    assert stats["batching"]["max_batch"] >= 1


def test_inference_timeout_is_503(tiny_model):
    slow = Tagger(tiny_model)
    real_predict = slow.predict

    def sleepy(batch):
        import time

        time.sleep(0.5)
        return real_predict(batch)

    slow.predict = sleepy
    with TestClient(create_app(slow, limits=Limits(request_timeout=0.1)), base_url=LOCAL) as c:
        err = assert_error(c.post("/v1/tag", files=upload(("a.png", png_bytes(), "image/png"))), 503, "timeout")
        assert "0.1 s" in err["message"]


# --- slow clients (the body middleware, driven directly) -------------------------------
async def _drive(middleware, messages, delay_after=None, headers=()):
    sent = []
    reached = []

    async def app(scope, receive, send):
        while True:  # read like a framework does: until the body ends or the client goes
            message = await receive()
            reached.append(message)
            if message["type"] == "http.disconnect" or not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})  # dropped after a refusal

    async def receive():
        if messages:
            return messages.pop(0)
        await asyncio.sleep(delay_after or 3600)
        return {"type": "http.disconnect"}

    async def send(msg):
        sent.append(msg)

    mw = BodyLimitMiddleware(app, **middleware)
    scope = {"type": "http", "method": "POST", "headers": list(headers)}
    await mw(scope, receive, send)
    return sent, reached


def test_stalled_upload_gets_408_and_the_app_sees_only_a_disconnect():
    msgs = [{"type": "http.request", "body": b"x" * 10, "more_body": True}]
    sent, reached = asyncio.run(_drive({"max_bytes": 1000, "idle_timeout": 0.1, "total_timeout": 5}, msgs))
    assert sent[0]["status"] == 408 and b"request_timeout" in sent[1]["body"]
    assert reached == [{"type": "http.request", "body": b"x" * 10, "more_body": True}, {"type": "http.disconnect"}]


def test_body_streams_through_and_limit_applies_while_streaming():
    msgs = [{"type": "http.request", "body": b"ab", "more_body": True}, {"type": "http.request", "body": b"cd"}]
    sent, reached = asyncio.run(_drive({"max_bytes": 1000, "idle_timeout": 1, "total_timeout": 5}, msgs))
    assert [m["body"] for m in reached] == [b"ab", b"cd"] and sent[0]["status"] == 200  # pieces as they came
    msgs = [{"type": "http.request", "body": b"x" * 600, "more_body": True}] * 3
    sent, reached = asyncio.run(_drive({"max_bytes": 1000, "idle_timeout": 1, "total_timeout": 5}, list(msgs)))
    assert sent[0]["status"] == 413 and b"request_too_large" in sent[1]["body"]
    assert [m["type"] for m in reached] == ["http.request", "http.disconnect"]  # the second piece never reached it


def test_a_stuck_client_does_not_hold_the_model(tagger):
    """Over a real socket: a client that stops mid-upload gets 408 while others are served meanwhile."""
    import socket

    import httpx

    from serve_helpers import ServerThread

    app = create_app(tagger, limits=Limits(body_idle_timeout=1.0))
    with ServerThread(app) as server:
        stuck = socket.create_connection(("127.0.0.1", server.port))
        stuck.sendall(b"POST /v1/tag HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                      b"Content-Length: 100000\r\n\r\n--b\r\n")
        r = httpx.post(server.url + "/v1/tag", files={"files": ("a.png", png_bytes(), "image/png")}, timeout=10)
        assert r.status_code == 200  # served while the other upload hangs
        stuck.settimeout(10)
        reply = b""
        while b"\r\n\r\n" not in reply or b"}}" not in reply:
            chunk = stuck.recv(4096)
            if not chunk:
                break
            reply += chunk
        stuck.close()
        assert reply.startswith(b"HTTP/1.1 408") and b'"request_timeout"' in reply
