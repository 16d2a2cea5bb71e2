"""Load test of `animetagnet serve`: concurrent clients from a second process on loopback, micro-batching vs not.

Starts the real server (`python -m animetagnet serve`) in a subprocess on 127.0.0.1 once per
setting, fires CLIENTS concurrent clients (threads, one keep-alive httpx connection each, each
uploading real 512 px Danbooru JPEGs from ../shared/data in a loop) for a bounded time, and
prints one JSON object: throughput, p50/p90/p99 latency, errors and the server's batch sizes.

    python benchmarks/bench_service.py                       # builds a timm efficientnet_b0 WD-layout model
    python benchmarks/bench_service.py --model DIR           # any model the CLI takes
    python benchmarks/bench_service.py --clients 32 --seconds 20 --settings 1:0 16:5
    python benchmarks/bench_service.py --simulate 40:2     # model call sleeps 40 ms + 2 ms/image

A setting is BATCH:MAX_WAIT_MS; `1:0` is one request at a time (no micro-batching).
The built model has random weights (no download): its compute is real, its tags are not.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("ANIMETAGNET_DATA", ROOT.parent / "shared" / "data"))


def build_model(out: Path, arch: str, size: int) -> Path:
    """A WD-layout bundle: timm `arch` (random init) exported to ONNX, NHWC BGR 0..255 in, sigmoid out."""
    import torch
    import timm

    labels = DATA / "tags" / "wd_v3_selected_tags.csv"
    n_out = sum(1 for _ in labels.open(encoding="utf-8")) - 1
    net = timm.create_model(arch, pretrained=False, num_classes=n_out).eval()

    class WD(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):  # [N, H, W, 3] BGR 0..255, as WD models take it
            x = x[..., [2, 1, 0]].permute(0, 3, 1, 2) / 255.0
            return torch.sigmoid(self.net(x))

    out.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(WD(net), torch.zeros(1, size, size, 3), str(out / "model.onnx"), input_names=["input"],
                      output_names=["output"], dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                      opset_version=17, dynamo=False)
    (out / "selected_tags.csv").write_bytes(labels.read_bytes())
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# A server whose model call also sleeps BASE + PER x batch ms (no CPU): it shows the batching
# mechanics apart from CPU contention, like an accelerator where a batch costs little more than one image.
SIMULATED_SERVER = """
import sys, time
import uvicorn
from animetagnet import Tagger
from animetagnet.serve.app import create_app
model, port, batch, wait, base, per = sys.argv[1:]
tagger = Tagger(model)
real = tagger.predict
def predict(b):
    time.sleep((float(base) + float(per) * len(b)) / 1000)
    return real(b)
tagger.predict = predict
app = create_app(tagger, batch_size=int(batch), max_wait_ms=float(wait))
uvicorn.run(app, host="127.0.0.1", port=int(port), log_level="warning")
"""


def start_server(model: str, batch: int, wait_ms: float, threads: int | None, simulate: str | None = None):
    port = free_port()
    if simulate:
        base, per = simulate.split(":")
        cmd = [sys.executable, "-c", SIMULATED_SERVER, model, str(port), str(batch), str(wait_ms), base, per]
    else:
        cmd = [sys.executable, "-m", "animetagnet", "serve", "--model", model, "--port", str(port),
               "--batch-size", str(batch), "--max-wait-ms", str(wait_ms), "--log-level", "warning",
               "--request-timeout", "120"]
        if threads:
            cmd += ["--threads", str(threads)]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    import httpx

    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read()}")
        try:
            if httpx.get(url + "/ready", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not become ready")


def stop_server(proc) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def percentile(sorted_vals: list[float], q: float) -> float:
    if not sorted_vals:
        return float("nan")
    k = min(len(sorted_vals) - 1, max(0, round(q / 100 * (len(sorted_vals) - 1))))
    return sorted_vals[k]


def load(url: str, images: list[tuple[str, bytes]], clients: int, seconds: float, warmup: int) -> dict:
    import httpx

    with httpx.Client(timeout=120) as c:  # warm-up: first inference, allocator, caches
        for i in range(warmup):
            name, data = images[i % len(images)]
            c.post(url + "/v1/tag", files={"files": (name, data, "image/jpeg")}).raise_for_status()
        before = c.get(url + "/v1/stats").json()["batching"]
    latencies: list[float] = []
    errors: dict[str, int] = {}
    lock = threading.Lock()
    start_evt = threading.Event()
    stop_at = [0.0]

    def client(k: int) -> None:
        lat, errs = [], {}
        with httpx.Client(timeout=120) as c:
            i = k
            start_evt.wait()
            while time.perf_counter() < stop_at[0]:
                name, data = images[i % len(images)]
                i += clients
                t0 = time.perf_counter()
                try:
                    r = c.post(url + "/v1/tag", files={"files": (name, data, "image/jpeg")})
                    ok = r.status_code == 200
                    key = None if ok else str(r.status_code)
                except httpx.HTTPError as exc:
                    key = type(exc).__name__
                dt = time.perf_counter() - t0
                if key is None:
                    lat.append(dt)
                else:
                    errs[key] = errs.get(key, 0) + 1
        with lock:
            latencies.extend(lat)
            for k2, v in errs.items():
                errors[k2] = errors.get(k2, 0) + v

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    t0 = time.perf_counter()
    stop_at[0] = t0 + seconds
    start_evt.set()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0  # includes the requests in flight at the deadline
    with httpx.Client(timeout=30) as c:
        after = c.get(url + "/v1/stats").json()["batching"]
    return {"latencies": latencies, "errors": errors, "wall": wall,
            "batches": after["batches"] - before["batches"], "items": after["items"] - before["items"],
            "inference_s": after["inference_seconds"] - before["inference_seconds"]}


def summarize(runs: list[dict]) -> dict:
    """Pool the rounds of one setting."""
    lat = sorted(x for r in runs for x in r["latencies"])
    errors: dict[str, int] = {}
    for r in runs:
        for k, v in r["errors"].items():
            errors[k] = errors.get(k, 0) + v
    wall = sum(r["wall"] for r in runs)
    batches = sum(r["batches"] for r in runs)
    items = sum(r["items"] for r in runs)
    inference = sum(r["inference_s"] for r in runs)
    return {
        "requests_ok": len(lat),
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "wall_s": round(wall, 2),
        "throughput_img_per_s": round(len(lat) / wall, 2),
        "throughput_per_round": [round(len(r["latencies"]) / r["wall"], 2) for r in runs],
        "latency_ms": {"p50": round(percentile(lat, 50) * 1000, 1), "p90": round(percentile(lat, 90) * 1000, 1),
                       "p99": round(percentile(lat, 99) * 1000, 1), "max": round(lat[-1] * 1000, 1) if lat else None},
        "server_batches": batches,
        "server_mean_batch": round(items / batches, 2) if batches else 0.0,
        "server_inference_ms_per_image": round(1000 * inference / items, 1) if items else None,
        "server_model_busy_fraction": round(inference / wall, 3),
        "loadavg_1min": [r["loadavg"] for r in runs],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model directory (default: build a timm model, see --arch)")
    ap.add_argument("--arch", default="efficientnet_b0")
    ap.add_argument("--size", type=int, default=224, help="input size of the built model")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=20.0, help="measured time per setting")
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--threads", type=int, default=None, help="onnxruntime threads in the server")
    ap.add_argument("--settings", nargs="+", default=["1:0", "16:5"], help="BATCH:MAX_WAIT_MS, e.g. 1:0 8:5 32:10")
    ap.add_argument("--rounds", type=int, default=2,
                    help="alternate the settings this many times (A B A B): a shared CPU's load drifts")
    ap.add_argument("--simulate", metavar="BASE_MS:PER_IMAGE_MS", default=None,
                    help="use the tiny test model and add a sleep of BASE + PER x batch ms to each model call")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args()

    images = [(p.name, p.read_bytes()) for p in sorted((DATA / "danbooru-512px").rglob("*.jpg"))]
    if not images:
        sys.exit(f"no images under {DATA / 'danbooru-512px'} (set ANIMETAGNET_DATA)")
    tmp = tempfile.TemporaryDirectory()
    if args.simulate and not args.model:
        sys.path.insert(0, str(ROOT / "tests"))
        from modelfactory import build_wd_model

        args.model = str(build_wd_model(Path(tmp.name) / "tiny", size=32))
    model = args.model or str(build_model(Path(tmp.name) / args.arch, args.arch, args.size))
    runs: dict[str, list[dict]] = {setting: [] for setting in args.settings}
    for rnd in range(args.rounds):
        for setting in args.settings:
            batch, wait = setting.split(":")
            proc, url = start_server(model, int(batch), float(wait), args.threads, args.simulate)
            load_before = os.getloadavg()[0]
            try:
                run = load(url, images, args.clients, args.seconds, args.warmup)
            finally:
                stop_server(proc)
            # Other processes may share the CPU: the load average says how much.
            run["loadavg"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
            runs[setting].append(run)
            print(f"round {rnd + 1} {setting}: {len(run['latencies'])} ok in {run['wall']:.1f} s, "
                  f"{sum(run['errors'].values())} errors, load {run['loadavg']}", file=sys.stderr)
    results = {setting: summarize(r) for setting, r in runs.items()}
    out = {
        "benchmark": "bench_service",
        "model": ("tiny test model + simulated cost" if args.simulate else args.model)
                 or f"{args.arch} (random init, {args.size}px, 10,861 outputs)",
        "simulated_model_ms": args.simulate,
        "clients": args.clients,
        "seconds_per_round": args.seconds,
        "rounds": args.rounds,
        "images": f"{len(images)} real 512px Danbooru JPEGs, cycled",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "settings": results,
    }
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
