"""Hostile clients against a real uvicorn server on 127.0.0.1 (raw sockets): hosts, origins, idle and slow sockets, big uploads.

Every server here is configured as `animetagnet serve` configures it (serve/connections.py
server_config, via serve_helpers.ServerThread). Every wait is bounded.
"""

import io
import json
import select
import socket
import time

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the serve extra (fastapi) is not installed")
pytest.importorskip("uvicorn", reason="the serve extra (uvicorn) is not installed")
httpx = pytest.importorskip("httpx", reason="httpx is not installed")

from animetagnet import Tagger  # noqa: E402
from animetagnet.serve.app import create_app  # noqa: E402
from animetagnet.serve.connections import ConnectionLimits, QuietRepeats, fit_connections  # noqa: E402
from animetagnet.serve.limits import PartSizes, multipart_boundary  # noqa: E402
from animetagnet.serve.security import normalize_origin, parse_host_header, trusted_hosts  # noqa: E402
from animetagnet.serve.service import Limits, MiB  # noqa: E402
from serve_helpers import ServerThread, png_bytes  # noqa: E402

BOUNDARY = b"xXbOuNdArYXx"


@pytest.fixture(scope="module")
def tagger(tiny_model):
    return Tagger(tiny_model)


@pytest.fixture(scope="module")
def server(tagger):
    app = create_app(tagger, allowed_hosts=("tagger.lan", "*.example.net"), allowed_origins=("https://app.example.com",))
    with ServerThread(app) as s:
        yield s


def connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def read_response(sock: socket.socket, timeout: float = 10) -> tuple[int, dict, bytes]:
    """Status, headers and body of one response (Content-Length framed, or up to the close)."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a response head: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:])}
    length = int(headers.get("content-length", -1))
    while length < 0 or len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, headers, body


def request(port: int, raw: bytes) -> tuple[int, dict, bytes]:
    with connect(port) as s:
        s.sendall(raw)
        return read_response(s)


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """True when the peer closes (EOF or reset) within `seconds`; any bytes before that are read and dropped."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        ready, _, _ = select.select([sock], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            continue
        try:
            if sock.recv(65536) == b"":
                return True
        except (ConnectionResetError, BrokenPipeError):
            return True
    return False


def error_code(body: bytes) -> str:
    return json.loads(body)["error"]["code"]


def multipart(name: str, data: bytes, ctype: bytes = b"image/png") -> bytes:
    return (b"--" + BOUNDARY + b"\r\nContent-Disposition: form-data; name=\"files\"; filename=\"" + name.encode()
            + b"\"\r\nContent-Type: " + ctype + b"\r\n\r\n" + data + b"\r\n--" + BOUNDARY + b"--\r\n")


def post_head(host: str, length: int | None, extra: str = "") -> bytes:
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return (f"POST /v1/tag HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; boundary="
            f"{BOUNDARY.decode()}\r\n{framing}\r\n{extra}\r\n").encode()


def noise_png(side: int, seed: int = 0) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG", compress_level=1)
    return buf.getvalue()


# --- hosts and origins ---------------------------------------------------------------
def test_host_and_origin_parsing():
    assert parse_host_header("Example.COM.:8000") == ("example.com", 8000)
    assert parse_host_header("[::1]:8000") == ("::1", 8000)
    assert parse_host_header("127.0.0.1") == ("127.0.0.1", None)
    for bad in ("", "a b", "evil.com:x", "[::1", "::1", "user@host", "h:99999"):
        assert parse_host_header(bad) is None, bad
    assert normalize_origin("HTTPS://App.Example.com:443") == "https://app.example.com"
    assert normalize_origin("http://[::1]:8000") == "http://[::1]:8000"
    assert normalize_origin("null") is None and normalize_origin("ftp://x") is None
    assert trusted_hosts("0.0.0.0", ["a.lan"]) == ["localhost", "127.0.0.1", "::1", "a.lan"]
    assert trusted_hosts("192.168.1.5") == ["localhost", "127.0.0.1", "::1", "192.168.1.5"]


def test_host_rules_ignore_ports_and_origins_are_checked_once():
    import asyncio

    from animetagnet.errors import UsageError
    from animetagnet.serve.security import HostRule, SecurityMiddleware, check_origins, install_security

    rule = HostRule(["tagger.lan:8000", "*.example.net:443", "[::1]:9000", "10.0.0.2"])
    assert rule.allows("tagger.lan") and rule.allows("a.example.net") and rule.allows("::1") and rule.allows("10.0.0.2")
    assert not rule.allows("tagger.lan:8000") and not rule.allows("example.net")
    assert check_origins(["*", "https://a.example.com"]) == ("*", "https://a.example.com")
    for bad in (["app.example.com"], ["https://ok.example", "ftp://x"]):
        with pytest.raises(UsageError, match="scheme://host"):
            check_origins(bad)
        with pytest.raises(UsageError, match="scheme://host"):
            install_security(None, allowed_origins=bad)  # the app is never touched: it fails first

    # websocket scopes take the FIRST Host header, as HTTP does
    seen = []

    async def app(scope, receive, send):
        seen.append(scope["type"])

    async def send(msg):
        seen.append(msg["type"])

    mw = SecurityMiddleware(app, allowed_hosts=["tagger.lan:8000"])
    for headers, verdict in (([(b"host", b"tagger.lan:8000"), (b"host", b"evil.example")], "websocket"),
                             ([(b"host", b"evil.example"), (b"host", b"tagger.lan")], "websocket.close")):
        seen.clear()
        asyncio.run(mw({"type": "websocket", "headers": headers}, None, send))
        assert seen == [verdict], headers


def test_untrusted_host_is_400_in_the_error_shape(server):
    port = server.port
    for host in ("attacker.example", "127.0.0.1.attacker.example", "example.net"):
        status, headers, body = request(port, f"GET /health HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        assert status == 400 and error_code(body) == "untrusted_host", host
        assert headers["content-type"] == "application/json"
    # DNS rebinding reads the gallery and the model the same way: refused before any route runs
    status, _, body = request(port, b"GET /v1/model HTTP/1.1\r\nHost: attacker.example:8000\r\n\r\n")
    assert status == 400 and "--allowed-host" in json.loads(body)["error"]["message"]
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "tagger.lan", "a.example.net:80"):
        status, _, body = request(port, f"GET /health HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        assert status == 200, (host, body)
    # an upload with an untrusted Host is refused from its head: the body is never read
    status, _, body = request(port, post_head("attacker.example", 50 * MiB))
    assert status == 400 and error_code(body) == "untrusted_host"


def test_cross_origin_writes_are_403_and_same_origin_ones_pass(server):
    url, files = server.url, {"files": ("a.png", png_bytes(), "image/png")}
    own = f"http://127.0.0.1:{server.port}"
    refused = [{"Origin": "http://attacker.example"}, {"Origin": "null"}, {"Origin": f"https://127.0.0.1:{server.port}"},
               {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"},
               {"Referer": "http://attacker.example/page.html"}]
    for headers in refused:
        r = httpx.post(url + "/v1/tag", files=files, headers=headers, timeout=10)
        assert r.status_code == 403 and r.json()["error"]["code"] == "cross_origin", headers
        r = httpx.post(url + "/v1/caption", json={"items": []}, headers=headers, timeout=10)
        assert r.status_code == 403, headers
    allowed = [{"Origin": own}, {"Origin": "https://app.example.com"}, {"Sec-Fetch-Site": "same-origin"},
               {"Sec-Fetch-Site": "none"}, {"Referer": own + "/"}, {}]  # {}: not a browser (curl, scripts)
    for headers in allowed:
        r = httpx.post(url + "/v1/tag", files=files, headers=headers, timeout=10)
        assert r.status_code == 200, (headers, r.text)
    # reads are not writes: a cross-origin GET is answered (the browser keeps it from the page: no CORS)
    assert httpx.get(url + "/health", headers={"Origin": "http://attacker.example"}, timeout=10).status_code == 200


# --- connections ---------------------------------------------------------------------
def test_idle_sockets_beyond_the_limit_do_not_block_a_good_request(tagger):
    limits = ConnectionLimits(max_connections=20, header_timeout=1.5)
    with ServerThread(create_app(tagger), connections=limits) as srv:
        idle = [connect(srv.port) for _ in range(60)]
        try:
            idle[-1].sendall(b"GET /health HTTP/1.1\r\nHo")  # a half-sent head among them
            r = httpx.get(srv.url + "/health", timeout=10)
            assert r.status_code == 200
            # the oldest idle ones were pushed out at once; the rest go at the head deadline
            assert all(closed_within(s, 1.5 + 5) for s in idle)
            c = srv.counters
            assert c["evicted"] >= 40 and c["head_timeouts"] >= 1 and c["refused"] == 0, dict(c)
        finally:
            for s in idle:
                s.close()
        assert httpx.get(srv.url + "/health", timeout=10).status_code == 200  # still serving


def test_busy_connections_beyond_the_limit_get_a_503(tagger):
    limits = ConnectionLimits(max_connections=2, header_timeout=30)
    with ServerThread(create_app(tagger), connections=limits) as srv:
        busy = [connect(srv.port) for _ in range(2)]
        try:
            for s in busy:  # requests in progress (a body still to come) are never pushed out
                s.sendall(post_head("127.0.0.1", 1000))
            time.sleep(0.3)
            with connect(srv.port) as extra:
                status, headers, body = read_response(extra)
            assert status == 503 and error_code(body) == "too_many_connections" and headers["retry-after"] == "1"
        finally:
            for s in busy:
                s.close()


def test_half_sent_head_is_answered_408_and_closed(tagger):
    with ServerThread(create_app(tagger), connections=ConnectionLimits(header_timeout=1.0)) as srv:
        with connect(srv.port) as s:
            s.sendall(b"GET /health HTTP/1.1\r\n")
            for _ in range(3):  # slowloris: a byte now and then must not extend the deadline
                time.sleep(0.3)
                s.sendall(b"X")
            status, _, body = read_response(s, timeout=5)
            assert status == 408 and error_code(body) == "request_timeout"
            assert closed_within(s, 5)
        with connect(srv.port) as s:  # a silent socket is just closed
            assert closed_within(s, 1.0 + 5)


def test_oversized_head_is_400_and_a_body_nobody_reads_is_not_drained_forever(tagger):
    limits = ConnectionLimits(max_header_bytes=4096, linger=1.0)
    with ServerThread(create_app(tagger), connections=limits) as srv:
        with connect(srv.port) as s:  # h11 bounds the head it has to buffer while waiting for its end
            s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 3000)
            time.sleep(0.2)
            s.sendall(b"a" * 3000)
            status, _, _ = read_response(s)
            assert status == 400 and closed_within(s, 5)
        with connect(srv.port) as s:  # a 404 that never reads its (endless) body
            s.sendall(b"POST /nowhere HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 60000000\r\n\r\n" + b"x" * 1000)
            status, _, _ = read_response(s)
            assert status == 404
            deadline, closed = time.monotonic() + 8, False
            while time.monotonic() < deadline and not closed:
                try:
                    s.sendall(b"x" * 1000)
                except (BrokenPipeError, ConnectionResetError):
                    closed = True
                    break
                closed = closed_within(s, 0.2)
            assert closed


# --- bodies --------------------------------------------------------------------------
def test_part_sizes_follow_delimiters_across_chunks():
    body = multipart("a.png", b"z" * 5000)
    for step in (1, 7, 64, len(body)):
        track = PartSizes(BOUNDARY, 5200)
        assert all(track.feed(body[i:i + step]) for i in range(0, len(body), step)), step
        track = PartSizes(BOUNDARY, 4000)
        assert not all(track.feed(body[i:i + step]) for i in range(0, len(body), step)), step
    assert multipart_boundary(b'multipart/form-data; boundary="ab c"') == b"ab c"
    assert multipart_boundary(b"application/json") is None


def _send_until_answered(sock: socket.socket, total: int, piece: int, chunked: bool) -> int:
    """Send up to `total` body bytes in pieces, stopping once the server answers; the bytes sent."""
    sent = 0
    payload = b"\xff" * piece
    frame = (f"{piece:x}\r\n".encode() + payload + b"\r\n") if chunked else payload
    while sent < total:
        if select.select([sock], [], [], 0.01)[0]:
            return sent
        try:
            sock.sendall(frame)
        except (BrokenPipeError, ConnectionResetError):
            return sent
        sent += piece
    return sent


@pytest.mark.parametrize("case", ["one_big_file", "many_small_parts", "declared_length"])
def test_oversize_uploads_are_refused_while_streaming(tagger, case):
    limits = Limits(max_request_bytes=1 * MiB, max_file_bytes=256 * 1024)
    with ServerThread(create_app(tagger, limits=limits)) as srv, connect(srv.port) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        total = 16 * MiB
        if case == "declared_length":  # announced too large: refused from the head, nothing read
            s.sendall(post_head("127.0.0.1", total))
            sent = 0
        else:
            s.sendall(post_head("127.0.0.1", None))
            first = b"--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name="files"; filename="a.png"\r\n\r\n'
            s.sendall(f"{len(first):x}\r\n".encode() + first + b"\r\n")
            if case == "one_big_file":
                sent = _send_until_answered(s, total, 16 * 1024, chunked=True)
            else:  # parts of 100 KiB each: every one under the file limit, the whole over the request limit
                part = b"y" * (100 * 1024) + b"\r\n--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name="files"; ' \
                       b'filename="b.png"\r\n\r\n'
                sent = 0
                while sent < total and not select.select([s], [], [], 0.01)[0]:
                    s.sendall(f"{len(part):x}\r\n".encode() + part + b"\r\n")
                    sent += len(part)
        status, _, body = read_response(s)
    assert status == 413
    want = {"one_big_file": "file_too_large", "many_small_parts": "request_too_large",
            "declared_length": "request_too_large"}[case]
    assert error_code(body) == want
    assert sent < 4 * MiB  # refused near its limit, not after the 16 MiB the client had to send


def test_concurrent_big_uploads_beyond_the_budget_get_503_with_retry_after(tagger):
    limits = Limits(max_request_bytes=2 * MiB, max_file_bytes=2 * MiB, max_inflight_bytes=3 * MiB, body_idle_timeout=30)
    body = multipart("big.png", noise_png(690))
    assert 1.2 * MiB < len(body) < 1.5 * MiB  # two fit in 3 MiB, a third does not
    with ServerThread(create_app(tagger, limits=limits)) as srv:
        uploads = [connect(srv.port) for _ in range(2)]
        try:
            for s in uploads:  # two uploads under way, each holding its Content-Length of the budget
                s.sendall(post_head("127.0.0.1", len(body)) + body[:100_000])
            time.sleep(0.3)
            with connect(srv.port) as third:
                third.sendall(post_head("127.0.0.1", len(body)))
                status, headers, reply = read_response(third)
            assert status == 503 and error_code(reply) == "overloaded" and int(headers["retry-after"]) >= 1
            assert "--max-inflight-mb" in json.loads(reply)["error"]["message"]
            for s in uploads:
                s.sendall(body[100_000:])
            for s in uploads:
                status, _, reply = read_response(s)
                assert status == 200, reply
        finally:
            for s in uploads:
                s.close()
        # the budget is given back: the same upload now passes, and the counters show the refusal
        r = httpx.post(srv.url + "/v1/tag", content=body, timeout=30,
                       headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY.decode()}"})
        assert r.status_code == 200, r.text
        stats = httpx.get(srv.url + "/v1/stats", timeout=10).json()["inflight_bytes"]
        assert stats["used"] == 0 and stats["refused"] == 1 and 2 * len(body) <= stats["peak"] <= 3 * MiB


# --- the command line and the logs -----------------------------------------------------
def test_connection_cap_fits_the_file_limit():
    fitted, warning = fit_connections(ConnectionLimits(max_connections=5000), 1024)
    assert fitted.max_connections == 1024 - 256 - 128 and "ulimit -n" in warning
    same, none = fit_connections(ConnectionLimits(max_connections=100), 1024)
    assert same.max_connections == 100 and none is None


def test_repeated_log_lines_are_held_back():
    import logging

    f = QuietRepeats(interval=60)
    rec = lambda: logging.LogRecord("asyncio", logging.ERROR, __file__, 1, "socket.accept() out of system resource",  # noqa: E731
                                    None, None)
    results = [f.filter(rec()) for _ in range(1000)]
    assert results[0] and not any(results[1:])
    f.seen[("asyncio", "socket.accept() out of system resource")][0] -= 61
    last = rec()
    assert f.filter(last) and "999 more like this" in last.msg


def test_websocket_scopes_get_the_host_rule_too():
    import asyncio

    from animetagnet.serve.security import SecurityMiddleware

    reached, sent = [], []

    async def app(scope, receive, send):
        reached.append(scope["type"])

    async def send(msg):
        sent.append(msg)

    mw = SecurityMiddleware(app)
    asyncio.run(mw({"type": "websocket", "headers": [(b"host", b"attacker.example")]}, None, send))
    assert sent == [{"type": "websocket.close", "code": 1008}] and reached == []
    asyncio.run(mw({"type": "websocket", "headers": [(b"host", b"localhost:8000")]}, None, send))
    assert reached == ["websocket"]
