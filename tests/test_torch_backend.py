"""The PyTorch backend against onnxruntime on real images, the backend choice and its messages, the decoders.

The timm repositories are built here as SmilingWolf publishes WD v3 ones: config.json +
model.safetensors (timm) beside a model.onnx that takes NHWC BGR 0..255 and returns sigmoid
probabilities; the ONNX side is exported from this file's own wrapper, written from the WD
convention (BGR into the timm network, mean/std 0.5), not from the backend's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

from cli_helpers import REPO  # noqa: E402
from modelfactory import wd_labels, write_labels  # noqa: E402

from animetagnet import Tagger  # noqa: E402
from animetagnet.errors import DeviceError, ModelError, UsageError  # noqa: E402
from animetagnet.images import load_and_preprocess  # noqa: E402

#: float32 parity bound between the backends (the issue's); measured differences are ~1e-7.
TOL = 1e-4


class _WDReference(torch.nn.Module):
    """What a WD v3 model.onnx computes: NHWC BGR 0..255 -> NCHW BGR, (x/255 - 0.5)/0.5 -> timm -> sigmoid."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        x = x.permute(0, 3, 1, 2) / 255.0
        return torch.sigmoid(self.net((x - 0.5) / 0.5))


def build_timm_repo(out: Path, arch: str, size: int, *, labels=None, onnx: bool = True, seed: int = 0) -> Path:
    from safetensors.torch import save_file

    labels = labels or wd_labels()
    torch.manual_seed(seed)
    net = timm.create_model(arch, pretrained=False, num_classes=len(labels), img_size=size) if "vit" in arch else \
        timm.create_model(arch, pretrained=False, num_classes=len(labels))
    head = net.get_classifier()
    with torch.no_grad():  # random heads sit at 0.5 everywhere; spread them so that parity means something
        head.weight.mul_(40.0)
    net.eval()
    out.mkdir(parents=True, exist_ok=True)
    model_args = {"img_size": size} if "vit" in arch else {}
    (out / "config.json").write_text(json.dumps({
        "architecture": arch, "num_classes": len(labels), "model_args": model_args,
        "pretrained_cfg": {"input_size": [3, size, size], "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
                           "interpolation": "bicubic", "crop_pct": 1.0}}))
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(out / "model.safetensors"))
    write_labels(out / "selected_tags.csv", labels)
    if onnx:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(_WDReference(net), (torch.zeros(2, size, size, 3) + 128,), str(out / "model.onnx"),
                              input_names=["input"], output_names=["output"],
                              dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}}, opset_version=17,
                              dynamo=False)
    return out


@pytest.fixture(scope="module", params=["test_vit", "test_efficientnet"])
def timm_repo(request, tmp_path_factory):
    return build_timm_repo(tmp_path_factory.mktemp("timm") / request.param, request.param, 64)


@pytest.fixture
def run_cli(capsys):
    """The CLI in this process (torch is imported once): -> (exit status, stdout, stderr)."""
    from animetagnet.cli import main

    def run(args):
        capsys.readouterr()
        rc = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return rc, out, err

    return run


def probs_of(tagger: Tagger, paths, **kw) -> np.ndarray:
    rows = [p for _, p in tagger.iter_probabilities(paths, **kw)]
    assert all(r is not None for r in rows)
    return np.stack(rows)


def test_timm_repo_matches_onnxruntime_on_real_images(timm_repo, real_images):
    onnx_t = Tagger(timm_repo, backend="onnx", device="cpu")
    torch_t = Tagger(timm_repo, backend="torch", device="cpu")
    assert torch_t.backend.backend == "torch" and onnx_t.backend.backend == "onnx"
    assert torch_t.input_size == onnx_t.input_size == 64
    assert torch_t.vocab.names == onnx_t.vocab.names
    a, b = probs_of(onnx_t, real_images), probs_of(torch_t, real_images)
    assert a.std(axis=0).max() > 0.05  # the images give different outputs: the comparison can fail
    assert np.abs(a - b).max() <= TOL
    # Same tags through the public API too.
    assert [r.to_dict() for r in onnx_t.tag_batch(real_images[:3])] == [r.to_dict() for r in torch_t.tag_batch(real_images[:3])]


def test_channel_order_is_what_the_onnx_file_takes(timm_repo, real_images):
    """Feeding RGB instead of BGR changes the outputs, so the parity above checks the convention."""
    torch_t = Tagger(timm_repo, backend="torch", device="cpu")
    batch = np.stack([load_and_preprocess(p, 64) for p in real_images[:6]])
    assert np.abs(torch_t.predict(batch) - torch_t.predict(batch[..., ::-1].copy())).max() > 1e-3


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A smoke run on a WD-layout dataset, exported at its own size, at 64 px (resized in the graph)
    and with the network run at 48 px (off its trained size)."""
    from animetagnet_train import config, export
    from animetagnet_train.train import train
    from train_helpers import ROOT, make_synthetic

    base = tmp_path_factory.mktemp("run")
    ds = make_synthetic(base / "ds", ratings=True)
    train(ds, base / "run", config.load(ROOT / "configs" / "smoke.yaml", ["train.epochs=1"]))
    export.export(base / "run", base / "model", log=lambda m: None)
    export.export(base / "run", base / "model-64", input_size=64, log=lambda m: None)
    export.export(base / "run", base / "model-flip", flip_average=True, log=lambda m: None)
    export.export(base / "run", base / "model-net48", network_size=48, log=lambda m: None)
    return base


def test_training_run_and_exports_match_onnxruntime(trained, real_images):
    paths = real_images + sorted((trained / "ds" / "images").glob("*"))[:10]  # real JPEGs + the run's own PNG/JPEG
    for export_dir in ("model", "model-64", "model-flip", "model-net48"):
        onnx_t = Tagger(trained / export_dir, backend="onnx", device="cpu")
        torch_t = Tagger(trained / export_dir, backend="torch", device="cpu")
        assert torch_t.vocab.names == onnx_t.vocab.names and torch_t.input_size == onnx_t.input_size
        a, b = probs_of(onnx_t, paths), probs_of(torch_t, paths)
        assert a[:, 4:].std(axis=0).max() > 1e-3
        assert np.abs(a - b).max() <= TOL, export_dir
    # The run directory itself (no export needed): the export's label plan and outputs.
    run_t = Tagger(trained / "run", backend="torch", device="cpu")
    onnx_t = Tagger(trained / "model", backend="onnx", device="cpu")
    assert run_t.vocab.names == onnx_t.vocab.names
    assert np.abs(probs_of(run_t, paths) - probs_of(onnx_t, paths)).max() <= TOL
    # auto on a directory without model.onnx: torch on the CPU, and it says why.
    auto = Tagger(trained / "run", device="cpu")
    assert auto.backend.backend == "torch" and "no model.onnx" in auto.describe()


def test_export_whose_run_weights_changed_is_refused(trained, tmp_path):
    import shutil

    meta = json.loads((trained / "model" / "animetagnet.json").read_text())
    assert len(meta["provenance"]["weights_sha256"]) == 64
    copy = tmp_path / "model"
    shutil.copytree(trained / "model", copy)
    meta["provenance"]["weights_sha256"] = "0" * 64
    (copy / "animetagnet.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="changed since the export"):
        Tagger(copy, backend="torch", device="cpu")


# --- the choice and its messages -----------------------------------------------------------
def test_auto_without_a_gpu_says_it_runs_onnxruntime_on_cpu(tiny_model):
    from animetagnet.backends import ort_has_cuda, torch_gpu

    if ort_has_cuda() or torch_gpu():
        pytest.skip("this machine has CUDA")
    t = Tagger(tiny_model)
    assert t.backend.backend == "onnx" and t.device.device == "cpu"
    text = t.describe()
    assert "backend onnx (auto: onnxruntime has no CUDA provider" in text and "-> CPU" in text
    assert "threads decoding" in text
    assert "--precision bf16 unused" in Tagger(tiny_model, precision="bf16").describe()


def test_auto_prefers_torch_cuda_when_onnxruntime_has_no_cuda(timm_repo, monkeypatch):
    from animetagnet import backends

    seen = {}

    def fake_open_torch(model, device, precision, threads, cache_dir, why):
        seen.update(device=device, why=why)
        raise DeviceError("stop here")

    monkeypatch.setattr(backends, "ort_has_cuda", lambda: False)
    monkeypatch.setattr(backends, "torch_gpu", lambda: "NVIDIA H200")
    monkeypatch.setattr(backends, "_open_torch", fake_open_torch)
    with pytest.raises(DeviceError, match="stop here"):
        backends.open_model(timm_repo)
    assert seen["device"] == "cuda"
    assert seen["why"] == "auto: onnxruntime has no CUDA provider (onnxruntime-gpu is not installed); torch sees NVIDIA H200"


def test_auto_never_starts_torch_for_an_onnx_only_model(tiny_model, monkeypatch):
    from animetagnet import backends

    def no_torch():
        raise AssertionError("torch_gpu() called for a model without torch weights")

    monkeypatch.setattr(backends, "ort_has_cuda", lambda: False)
    monkeypatch.setattr(backends, "torch_gpu", no_torch)
    choice = backends.open_model(tiny_model)[2]
    assert choice.backend == "onnx" and "the model has no torch weights" in choice.reason and "-> CPU" in choice.reason


def test_auto_keeps_onnxruntime_cuda_first(tiny_model, monkeypatch):
    from animetagnet import backends

    calls = []
    monkeypatch.setattr(backends, "ort_has_cuda", lambda: True)
    monkeypatch.setattr(backends, "_open_onnx", lambda model, device, *a: calls.append(device) or ("B", "P"))
    assert backends.open_model(tiny_model)[2] == backends.Choice("onnx", "auto: onnxruntime CUDA works")
    assert calls == ["cuda"]


def test_option_errors_are_one_line_exit_2(tiny_model, real_images, timm_repo, run_cli):
    img = str(real_images[0])
    cases = [
        (["--device", "cuda"], "--device cuda"),
        (["--backend", "torch", "--device", "cuda", "--model", str(timm_repo)], "--device cuda"),
        (["--backend", "onnx", "--precision", "bf16"], "--precision bf16 is for the torch backend"),
        (["--decoder", "gpu"], "--decoder gpu"),
        (["--backend", "torch"], "no torch weights"),  # the tiny ONNX model has none
    ]
    from animetagnet.backends import ort_has_cuda, torch_gpu

    for extra, msg in cases:
        if "cuda" in extra and (ort_has_cuda() or torch_gpu()):
            continue
        args = ["tag", img, "-q", "-f", "json"] + (extra if "--model" in extra else ["--model", str(tiny_model)] + extra)
        rc, out, err = run_cli(args)
        assert rc == 2, (extra, err)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert len(lines) == 1 and msg in lines[0], (extra, err)


def test_timm_repo_whose_labels_do_not_match_is_refused_with_the_counts(tmp_path, real_images, run_cli):
    repo = build_timm_repo(tmp_path / "repo", "test_efficientnet", 32, onnx=False)
    write_labels(repo / "selected_tags.csv", wd_labels()[:-2])
    with pytest.raises(ModelError, match=r"num_classes 13, model.safetensors has 13 outputs, but selected_tags.csv lists 11"):
        Tagger(repo, backend="torch", device="cpu")
    rc, _, err = run_cli(["tag", str(real_images[0]), "--model", str(repo), "--backend", "torch", "-q"])
    assert rc == 2 and "lists 11 tags" in err and len(err.strip().splitlines()) == 1
    # Weights of another architecture than config.json names: refused, naming the file.
    cfg = json.loads((repo / "config.json").read_text())
    write_labels(repo / "selected_tags.csv", wd_labels())
    (repo / "config.json").write_text(json.dumps({**cfg, "architecture": "test_resnet"}))
    with pytest.raises(ModelError, match="do not fit test_resnet"):
        Tagger(repo, backend="torch", device="cpu")


def test_backend_torch_without_torch_is_one_line_exit_2(timm_repo, real_images):
    script = textwrap.dedent(f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "timm", "torchvision", "safetensors"):
                    raise ImportError("blocked")
        sys.meta_path.insert(0, Block())
        from animetagnet.cli import main
        sys.exit(main(["tag", {str(real_images[0])!r}, "--model", {str(timm_repo)!r}, "--backend", "torch", "-q"]))
        """)
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "needs PyTorch" in lines[0] and "animetagnet[torch]" in lines[0]


def test_cli_tags_a_timm_repo_with_the_torch_backend(timm_repo, real_images, run_cli):
    rc, out, err = run_cli(["tag", *map(str, real_images[:2]), "--model", str(timm_repo), "--backend", "torch",
                            "--device", "cpu", "-f", "jsonl"])
    assert rc == 0, err
    assert "backend torch (asked for)" in err and "cpu (torch" in err
    assert len(out.strip().splitlines()) == 2


# --- decoders ------------------------------------------------------------------------------
def test_process_decoding_equals_thread_decoding(tiny_model, real_images, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(real_images[0].read_bytes()[:300])
    paths = real_images[:6] + [bad] + real_images[6:9]
    threads = list(Tagger(tiny_model, device="cpu", decoder="threads").iter_probabilities(paths, workers=2))
    procs = list(Tagger(tiny_model, device="cpu", decoder="processes").iter_probabilities(paths, workers=2))
    assert [it.path for it, _ in procs] == [it.path for it, _ in threads] == list(map(str, paths))
    assert procs[6][1] is None and procs[6][0].error == threads[6][0].error
    for (_, a), (_, b) in zip(threads, procs):
        assert (a is None and b is None) or np.array_equal(a, b)


#: Device decoding vs THE CPU preprocessing (exact mode), in uint8 levels: Pillow's fixed-point
#: weights differ from the float ones by at most 2 levels; large sources use torch's antialiased
#: bicubic where the CPU path uses JPEG draft mode (measured on a 2400x1800 source at 448 px: device
#: 4 levels max / 0.026 mean from exact; draft mode 13 / 0.36).
PIXEL_TOL = {"max": 2, "mean": 0.02}
LARGE_TOL = {"max": 10, "mean": 0.05}


def test_device_decoding_matches_the_cpu_preprocessing(real_images, tmp_path):
    from PIL import Image

    from animetagnet.torch_backend import decode_on_device

    cpu = torch.device("cpu")
    # Non-square and upscaled sources too (the real files are 512x512).
    src = Image.open(real_images[1]).convert("RGB")
    extra = {"wide.jpg": src.crop((0, 40, 512, 341)), "tall.jpg": src.crop((33, 0, 300, 512)),
             "large.jpg": src.resize((2400, 1800), Image.BICUBIC)}
    for name, im in extra.items():
        im.save(tmp_path / name, quality=92)
    files = [*real_images[:8], *(tmp_path / n for n in ("wide.jpg", "tall.jpg"))]
    for size in (448, 224, 64):
        got = decode_on_device([Path(p).read_bytes() for p in files], size, cpu, exact=True)
        for p, g in zip(files, got):
            ref = load_and_preprocess(p, size, exact=True)
            d = np.abs(g.numpy().astype(np.float32) - ref)
            assert d.max() <= PIXEL_TOL["max"] and d.mean() <= PIXEL_TOL["mean"], (p, size, d.max(), d.mean())
    g = decode_on_device([(tmp_path / "large.jpg").read_bytes()], 448, cpu)[0].numpy().astype(np.float32)
    d = np.abs(g - load_and_preprocess(tmp_path / "large.jpg", 448, exact=True))
    assert d.mean() <= LARGE_TOL["mean"] and d.max() <= LARGE_TOL["max"], (d.max(), d.mean())


def test_gpu_decoder_cpu_fallback_matches_and_keeps_order(timm_repo, real_images, tmp_path):
    from PIL import Image

    png = tmp_path / "a.png"
    Image.open(real_images[2]).convert("RGBA").save(png)  # not a JPEG: the CPU path
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    paths = [*real_images[:5], png, bad, *real_images[5:12]]
    # exact: no JPEG draft mode on the CPU side, Pillow's weights on the device side (64 px is 1/8 of 512).
    kw = dict(backend="torch", device="cpu", batch_size=4, exact=True)
    ref = list(Tagger(timm_repo, decoder="threads", **kw).iter_probabilities(paths))
    got = list(Tagger(timm_repo, decoder="gpu", **kw).iter_probabilities(paths))
    assert [it.path for it, _ in got] == [it.path for it, _ in ref] == list(map(str, paths))
    assert got[6][1] is None and got[6][0].error == ref[6][0].error
    diffs = [np.abs(a - b).max() for (_, a), (_, b) in zip(ref, got) if a is not None]
    assert len(diffs) == len(paths) - 1
    # Pixels within 2 levels (mean < 0.02) move these spread-out (40x-scaled head) probabilities by a little.
    assert max(diffs) <= 0.02, diffs
    assert diffs[5] <= TOL  # the PNG went through the very same CPU code


def test_service_and_ray_replica_run_the_torch_backend(timm_repo, real_images):
    """The HTTP service and a Ray replica take the same ModelOptions and give the onnxruntime results."""
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from animetagnet.distributed.replica import TaggerReplica
    from animetagnet.formatting import TagFilter
    from animetagnet.options import ModelOptions, ThresholdOptions
    from animetagnet.serve.app import create_app

    opts = ModelOptions(model=str(timm_repo), backend="torch", device="cpu")
    onnx_t = ModelOptions(model=str(timm_repo), backend="onnx", device="cpu").load()
    want = onnx_t.tag(real_images[0]).to_dict()
    with TestClient(create_app(opts.load(), max_wait_ms=2), base_url="http://localhost") as client:
        info = client.get("/v1/model").json()
        assert info["backend"].startswith("backend torch") and info["device"] == "cpu"
        data = real_images[0].read_bytes()
        body = client.post("/v1/tag", files=[("files", ("a.jpg", data, "image/jpeg"))]).json()
    got = body["results"][0]
    assert got["rating"] == want["rating"]
    assert json.dumps(got["tags"], sort_keys=True) == json.dumps(want["tags"], sort_keys=True)
    import pickle

    replica = TaggerReplica(opts, ThresholdOptions(), TagFilter())
    out = replica({"path": [str(p) for p in real_images[:2]]})
    assert [pickle.loads(r).to_dict()["tags"] for r in out["result"]] == [onnx_t.tag(p).to_dict()["tags"] for p in real_images[:2]]


@pytest.mark.parametrize("src,dst", [(512, 448), (300, 448), (897, 448), (130, 64), (64, 64)])
def test_device_resize_weights_are_pillows(src, dst):
    """The closed-form weights equal what Pillow applies (each unit impulse resized in float mode)."""
    from PIL import Image

    from animetagnet.torch_backend import _pillow_matrix

    ref = np.zeros((dst, src), dtype=np.float32)
    for j in range(src):
        line = np.zeros((1, src), dtype=np.float32)
        line[0, j] = 1.0
        ref[:, j] = np.asarray(Image.fromarray(line, mode="F").resize((dst, 1), Image.BICUBIC))[0]
    assert np.abs(_pillow_matrix(src, dst, torch.device("cpu")).numpy() - ref).max() <= 1e-6


def test_hub_id_fetches_the_timm_files_from_the_cache(timm_repo, real_images, tmp_path, monkeypatch):
    """A WD v3 Hub id with --backend torch reads config.json + model.safetensors (no model.onnx needed), offline."""
    pytest.importorskip("huggingface_hub")
    import shutil

    rev = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--SmilingWolf--wd-test-tagger-v3"
    snap = repo / "snapshots" / rev
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(rev)
    for name in ("config.json", "model.safetensors", "selected_tags.csv"):
        shutil.copy(timm_repo / name, snap / name)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t = Tagger("SmilingWolf/wd-test-tagger-v3", backend="torch", device="cpu")
    ref = Tagger(timm_repo, backend="onnx", device="cpu")
    assert t.bundle.path == snap
    assert np.abs(probs_of(t, real_images[:4]) - probs_of(ref, real_images[:4])).max() <= TOL
    # The ONNX backend asks the same snapshot for model.onnx, which it lacks: one line naming the file.
    from animetagnet.hub import HubError

    with pytest.raises(HubError, match="model.onnx not in the Hugging Face cache"):
        Tagger("SmilingWolf/wd-test-tagger-v3", backend="onnx", device="cpu")


def test_a_killed_decoder_process_fails_its_images_not_the_run(tiny_model, real_images):
    import os
    import signal
    import time

    tagger = Tagger(tiny_model, device="cpu", decoder="processes", batch_size=1)
    paths = (real_images * 4)[:40]
    stream = tagger.iter_probabilities(paths, workers=2)
    out = [next(stream)]
    old = tagger._pool[1]
    for proc in list(old._processes.values()):  # the OOM killer, as far as the pool can tell
        os.kill(proc.pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while not old._broken and time.monotonic() < deadline:
        time.sleep(0.05)
    assert old._broken
    out += list(stream)
    assert [it.path for it, _ in out] == list(map(str, paths))
    assert all(it.error in (None, "decoder process died") for it, _ in out)
    assert all((row is None) == (it.error is not None) for it, row in out)
    assert tagger._pool is not None and tagger._pool[1] is not old
    again = list(tagger.iter_probabilities(paths[:4], workers=2))  # the fresh pool serves later calls
    assert all(it.error is None for it, _ in again)
    tagger.close()


def test_device_decoding_leaves_oversized_squares_to_the_cpu_path(tmp_path, monkeypatch):
    from PIL import Image

    from animetagnet import images
    from animetagnet.torch_backend import _inspect, _inspect_cpu

    long = tmp_path / "long.jpg"
    Image.new("RGB", (1600, 100), (200, 40, 40)).save(long, quality=90)  # 160k pixels, a 2.56M-pixel square
    how, value = _inspect(str(long), 32, False, 1_000_000)
    assert how == "cpu" and value.error is None and value.array.shape == (32, 32, 3)
    assert _inspect(str(long), 32, False, 4_000_000)[0] == "gpu"  # within the bound: the device decodes it

    def hostile(*a, **k):
        raise ValueError("codec bug")

    monkeypatch.setattr(images, "load_and_preprocess", hostile)
    tagger = type("T", (), {"exact": False, "max_pixels": None})()
    assert _inspect_cpu(str(long), 32, tagger).error == "unexpected ValueError: codec bug"
