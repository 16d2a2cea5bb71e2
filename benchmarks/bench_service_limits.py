"""Memory and connections of `animetagnet serve` under hostile load: idle-socket floods and concurrent big uploads.

Starts the real server (`python -m animetagnet serve`) in a subprocess on 127.0.0.1, fresh for
each scenario (so its peak RSS, VmHWM, is that scenario's), attacks it from this process with
raw sockets, and prints one JSON object:

- `idle_flood`: N idle sockets (a third of them with a half-sent request head) against a server
  whose file limit is 1,024 (as on a default Linux login): the server's RSS, file descriptors,
  CPU seconds and log bytes during the flood, whether good requests are served meanwhile and
  how long they take, and how many flood sockets the server has closed after the head timeout.
- `uploads_*`: N concurrent uploads of SIZE MB each (declared Content-Length, sent in 1 MiB
  pieces): the statuses (200 / 413 / 503), the peak RSS and the bytes each client got to send
  before its answer; `oversize` files are above the per-file limit (the attack of issue 11),
  `valid` ones are real PNGs under it (they are decoded and tagged), `chunked` is one upload
  without Content-Length, far above the limits.
- `formula`: the worst-case RSS bound of docs/serve.md evaluated for the server's settings.

    python benchmarks/bench_service_limits.py                   # tiny WD-layout model at 448 px
    python benchmarks/bench_service_limits.py --model DIR       # any model the CLI takes
    python benchmarks/bench_service_limits.py --flood 1050 --uploads 20 --upload-mb 40

Every wait is bounded; the server and every socket are closed at the end.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import resource
import select
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: The source tree the server runs from (--src: e.g. another checkout, for a before/after).
SRC = [ROOT / "src"]
MiB = 1024 * 1024
BOUNDARY = "benchLimitsBoundary"


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`animetagnet serve` in a subprocess, stderr to a file (its log volume is a result)."""

    def __init__(self, model: str, args: list[str], nofile: int | None = None):
        self.port = free_port()
        self.log = tempfile.NamedTemporaryFile(prefix="serve-limits-", suffix=".log", delete=False)
        env = dict(os.environ, PYTHONPATH=str(SRC[0]) + os.pathsep + os.environ.get("PYTHONPATH", ""))

        def limit_files():
            if nofile:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        self.proc = subprocess.Popen([sys.executable, "-m", "animetagnet", "serve", "--model", model,
                                      "--port", str(self.port), "--log-level", "warning", *args],
                                     env=env, stdout=subprocess.DEVNULL, stderr=self.log, preexec_fn=limit_files)
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("server exited: " + Path(self.log.name).read_text()[-2000:])
            try:
                if get(self.port, "/ready", timeout=1)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("server did not become ready")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_size(self) -> tuple[int, int]:
        data = Path(self.log.name).read_bytes()
        return len(data), data.count(b"\n")

    def log_tail(self, start: int, n: int = 600) -> str:
        return Path(self.log.name).read_bytes()[start:start + n].decode("utf-8", "replace")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.unlink(self.log.name)


def read_status(sock: socket.socket, timeout: float) -> tuple[int, bytes]:
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before a response")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(head.split()[1]), body


def get(port: int, path: str, timeout: float = 10) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        return read_status(s, timeout)


def multipart(data: bytes) -> tuple[bytes, bytes]:
    head = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"f.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode()
    return head, f"\r\n--{BOUNDARY}--\r\n".encode()


def _readable(sock: socket.socket) -> bool:
    p = select.poll()
    p.register(sock, select.POLLIN)
    return bool(p.poll(0))


def upload(port: int, data: bytes, chunked: bool = False, timeout: float = 120) -> dict:
    """One upload in 1 MiB pieces, stopping as soon as the server answers; status, bytes sent, seconds."""
    first, last = multipart(data)
    total = len(first) + len(data) + len(last)
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {total}"
    t0 = time.perf_counter()
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall((f"POST /v1/tag HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; "
                   f"boundary={BOUNDARY}\r\n{framing}\r\nConnection: close\r\n\r\n").encode())
        view = memoryview(data)
        pieces = [first] + [view[i:i + MiB] for i in range(0, len(data), MiB)] + [last]
        try:
            for piece in pieces:
                if select.poll and _readable(s):
                    break  # answered early
                if chunked:
                    s.sendall(f"{len(piece):x}\r\n".encode())
                s.sendall(piece)
                if chunked:
                    s.sendall(b"\r\n")
                sent += len(piece)
            else:
                if chunked:
                    s.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            status, body = read_status(s, timeout)
            code = json.loads(body)["error"]["code"] if status != 200 else None
        except (OSError, ValueError):
            status, code = 0, "connection_error"
    return {"status": status, "code": code, "sent_bytes": sent, "total_bytes": total,
            "seconds": round(time.perf_counter() - t0, 3)}


class RssSampler:
    """The server's RSS every 20 ms while a scenario runs (VmHWM gives the true peak too)."""

    def __init__(self, pid: int):
        self.pid, self.peak, self.stop_evt = pid, 0, threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stop_evt.is_set():
            try:
                self.peak = max(self.peak, proc_status(self.pid)["VmRSS"])
            except (OSError, KeyError):
                return
            self.stop_evt.wait(0.02)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop_evt.set()
        self.thread.join(5)


def mb(n: float) -> float:
    return round(n / MiB, 1)


def idle_flood(model: str, n: int, good: int, args: list[str], header_timeout: float) -> dict:
    timeout_args = ["--header-timeout", str(header_timeout)] if SRC[0] == ROOT / "src" else []
    srv = Server(model, [*timeout_args, *args], nofile=1024)
    socks: list[socket.socket] = []
    try:
        base = proc_status(srv.pid)
        log0, lines0 = srv.log_size()
        cpu0 = cpu_seconds(srv.pid)
        t0 = time.perf_counter()
        refused_connect = 0
        for i in range(n):
            try:
                s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
                if i % 3 == 2:
                    s.sendall(b"GET /v1/model HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
                socks.append(s)
            except OSError:
                refused_connect += 1
        opened_s = time.perf_counter() - t0
        time.sleep(0.5)
        during = {"server_fds": open_fds(srv.pid), "server_rss_mb": mb(proc_status(srv.pid)["VmRSS"])}
        latencies, ok = [], 0
        for _ in range(good):
            t = time.perf_counter()
            try:
                if get(srv.port, "/v1/model", timeout=10)[0] == 200:
                    ok += 1
            except OSError:
                pass
            latencies.append(time.perf_counter() - t)
        deadline = time.time() + header_timeout + 5
        closed = 0
        sel = selectors.DefaultSelector()  # epoll: select() stops at descriptor 1024
        for s in socks:
            sel.register(s, selectors.EVENT_READ)
        pending = len(socks)
        while pending and time.time() < deadline:
            for key, _ in sel.select(0.2):
                try:
                    gone = key.fileobj.recv(65536) == b""
                except OSError:
                    gone = True
                if gone:
                    closed += 1
                    pending -= 1
                    sel.unregister(key.fileobj)
        sel.close()
        log1, lines1 = srv.log_size()
        latencies.sort()
        return {
            "sockets": n, "half_sent_heads": n // 3, "server_file_limit": 1024, "header_timeout_s": header_timeout,
            "connect_failures": refused_connect, "open_seconds": round(opened_s, 2),
            "server_rss_before_mb": mb(base["VmRSS"]), **during,
            "server_peak_rss_mb": mb(proc_status(srv.pid)["VmHWM"]),
            "good_requests": good, "good_ok": ok,
            "good_p50_ms": round(latencies[len(latencies) // 2] * 1000, 1),
            "good_max_ms": round(latencies[-1] * 1000, 1),
            "flood_sockets_closed_by_server": closed,
            "server_cpu_s": round(cpu_seconds(srv.pid) - cpu0, 2),
            "wall_s": round(time.perf_counter() - t0, 2),
            "server_log_bytes": log1 - log0, "server_log_lines": lines1 - lines0,
            "server_log_start": srv.log_tail(log0),
        }
    finally:
        for s in socks:
            s.close()
        srv.stop()


def uploads(model: str, name: str, data: bytes, n: int, args: list[str], chunked: bool = False) -> dict:
    srv = Server(model, args)
    try:
        base = proc_status(srv.pid)["VmRSS"]
        results: list[dict] = [{}] * n
        barrier = threading.Barrier(n)

        def client(k: int):
            barrier.wait()
            results[k] = upload(srv.port, data, chunked=chunked)

        t0 = time.perf_counter()
        with RssSampler(srv.pid) as sampler:
            threads = [threading.Thread(target=client, args=(k,)) for k in range(n)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(300)
        statuses: dict[str, int] = {}
        for r in results:
            key = f"{r.get('status')} {r.get('code') or ''}".strip()
            statuses[key] = statuses.get(key, 0) + 1
        stats = json.loads(get(srv.port, "/v1/stats")[1])
        return {
            "scenario": name, "uploads": n, "upload_mb": mb(len(data)), "chunked": chunked, "statuses": statuses,
            "max_sent_mb_before_answer": mb(max(r["sent_bytes"] for r in results)),
            "server_rss_before_mb": mb(base), "server_peak_rss_mb": mb(max(sampler.peak, proc_status(srv.pid)["VmHWM"])),
            "server_peak_over_idle_mb": mb(max(sampler.peak, proc_status(srv.pid)["VmHWM"]) - base),
            "inflight_budget": {k: (mb(v) if k != "refused" else v) for k, v in stats.get("inflight_bytes", {}).items()},
            "wall_s": round(time.perf_counter() - t0, 2),
        }
    finally:
        srv.stop()


def get_model_info(model: str, args: list[str]) -> bytes:
    srv = Server(model, args)
    try:
        return get(srv.port, "/v1/model")[1]
    finally:
        srv.stop()


def noise_png(target_bytes: int) -> bytes:
    import numpy as np
    from PIL import Image

    side = int((target_bytes / 3) ** 0.5)
    arr = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def formula(settings: dict, idle_mb: float) -> dict:
    """docs/serve.md's worst case: idle + in-flight budget + queue x 12 S^2 + decode threads x decode bytes + connections x per-connection."""
    s = settings
    terms = {
        "idle_mb": idle_mb,
        "inflight_budget_mb": float(s["max_inflight_mb"]),
        "queued_images_mb": mb((s["max_queue"] + s["batch_size"]) * 12 * s["input_size"] ** 2),
        "decode_threads_mb": mb(s["decode_workers"] * 12 * s["max_pixels"]),
        "connections_mb": mb(s["max_connections"] * s["per_connection_kib"] * 1024),
    }
    terms["total_mb"] = round(sum(terms.values()), 1)
    return terms


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model directory (default: a tiny WD-layout model at --size px, built here)")
    ap.add_argument("--size", type=int, default=448)
    ap.add_argument("--flood", type=int, default=1050, help="idle sockets (default 1050)")
    ap.add_argument("--good", type=int, default=20, help="good requests during the flood (default 20)")
    ap.add_argument("--header-timeout", type=float, default=10.0)
    ap.add_argument("--uploads", type=int, default=20, help="concurrent uploads (default 20)")
    ap.add_argument("--upload-mb", type=float, default=40.0, help="size of each oversize upload (default 40)")
    ap.add_argument("--valid-mb", type=float, default=15.0, help="size of each valid PNG upload (default 15)")
    ap.add_argument("--server-args", default="", help="extra `serve` arguments, e.g. '--max-inflight-mb 128'")
    ap.add_argument("--src", type=Path, help="run the server from this source tree instead (a before/after)")
    ap.add_argument("--skip", nargs="*", default=(), choices=("flood", "oversize", "valid", "chunked"))
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # this process holds the flood's sockets
    extra = args.server_args.split()
    if args.src:
        SRC[0] = args.src.resolve()
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            sys.path.insert(0, str(ROOT / "tests"))
            from modelfactory import build_wd_model

            model = str(build_wd_model(Path(tmp) / "tiny448", size=args.size))
        out: dict = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                 "platform": platform.platform()}, "model": args.model or f"tiny WD layout @{args.size}",
                     "server_source": str(SRC[0])}
        if "flood" not in args.skip:
            out["idle_flood"] = idle_flood(model, args.flood, args.good, extra, args.header_timeout)
        if "flood" not in args.skip:
            f = out["idle_flood"]
            held = min(args.flood, 512)  # the default --max-connections
            per_conn_kib = max(0.0, (f["server_rss_mb"] - f["server_rss_before_mb"]) * 1024 / held)
            f["rss_per_held_connection_kib"] = round(per_conn_kib, 1)
            info = json.loads(get_model_info(model, extra))
            out["formula"] = formula({"max_inflight_mb": 256, "max_queue": 1024, "input_size": info["input_size"],
                                      "decode_workers": 2, "max_pixels": info["limits"]["max_pixels"],
                                      "batch_size": info["batching"]["batch_size"],
                                      "max_connections": 512, "per_connection_kib": max(per_conn_kib, 1.0)},
                                     f["server_rss_before_mb"])
        if "oversize" not in args.skip:
            junk = os.urandom(int(args.upload_mb * MiB))
            out["uploads_oversize"] = uploads(model, "oversize", junk, args.uploads, extra)
            del junk
        if "valid" not in args.skip:
            png = noise_png(int(args.valid_mb * MiB))
            out["uploads_valid"] = uploads(model, "valid", png, args.uploads, extra)
            del png
        if "chunked" not in args.skip:
            out["uploads_chunked"] = uploads(model, "chunked", os.urandom(80 * MiB), 1, extra, chunked=True)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
