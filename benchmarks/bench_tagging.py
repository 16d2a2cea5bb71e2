"""End-to-end folder tagging vs a plain sequential reference pipeline vs model-only throughput.

Models (WD layout, random weights: timing only): a small CNN (timm efficientnet_b0 at 320) and
a WD-v3-sized network (ViT-B/16 at 448, ~150 GFLOPs), both with the 10,861-tag WD v3 head.
Images: the 22 real 512px Danbooru images, and large photos (~2000x3000 JPEGs made from them).

    python benchmarks/bench_tagging.py                 # everything, JSON on stdout
    python benchmarks/bench_tagging.py --models small --sets large

Needs torch + timm to build the models once (cached under --cache); tagging itself is the
torch-free core. Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from animetagnet import Tagger  # noqa: E402

DATA = Path(os.environ.get("ANIMETAGNET_DATA", REPO.parent / "shared" / "data"))
MODELS = {"small": ("efficientnet_b0", 320), "wd": ("vit_base_patch16_224", 448)}


def export_wd_model(arch: str, size: int, out: Path) -> Path:
    """A timm network in WD layout: NHWC BGR 0..255 in, sigmoid out, dynamic batch."""
    if (out / "model.onnx").exists():
        return out
    import timm
    import torch

    labels = DATA / "tags" / "wd_v3_selected_tags.csv"
    n = sum(1 for _ in open(labels, encoding="utf-8")) - 1
    kwargs = {"img_size": size} if arch.startswith("vit") else {}
    net = timm.create_model(arch, pretrained=False, num_classes=n, **kwargs).eval()
    class WD(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net
            self.register_buffer("mean", torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1) * 255)
            self.register_buffer("std", torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1) * 255)

        def forward(self, x):
            x = x.permute(0, 3, 1, 2).flip(1)  # NHWC BGR -> NCHW RGB
            return torch.sigmoid(self.net((x - self.mean) / self.std))

    wrapped = WD(net)
    # Random weights give every tag ~0.5, so thousands would pass the thresholds and the
    # timing would measure building huge tag lists. A head bias drawn from N(-5, 1.5) makes
    # the outputs as sparse as a trained tagger's (~15-25 tags above 0.35 per image).
    with torch.no_grad():
        head = net.get_classifier()
        head.bias.copy_(torch.randn(n, generator=torch.Generator().manual_seed(0)) * 1.5 - 5.0)
    out.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(wrapped, torch.zeros(1, size, size, 3), str(out / "model.onnx"), input_names=["input"],
                          output_names=["output"], dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                          opset_version=17, dynamo=False)
    shutil.copy(labels, out / "selected_tags.csv")
    return out


def make_image_sets(cache: Path) -> dict[str, list[Path]]:
    small = sorted((DATA / "danbooru-512px").rglob("*.jpg"))
    large_dir = cache / "large"
    if not large_dir.exists():
        tmp = cache / "large.tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        for i, p in enumerate(small[:16]):
            img = Image.open(p).convert("RGB").resize((2000, 3000) if i % 2 else (3000, 2000), Image.BICUBIC)
            noise = rng.normal(0, 6, (img.size[1], img.size[0], 3))
            arr = np.clip(np.asarray(img, dtype=np.float32) + noise, 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(tmp / f"photo{i:02d}.jpg", quality=90)
        tmp.rename(large_dir)
    return {"small": small, "large": sorted(large_dir.glob("*.jpg"))}


def reference_pipeline(model_dir: Path, paths: list[Path]) -> float:
    """The plain sequential pipeline: full decode, WD preprocessing, onnxruntime batch 1."""
    import onnxruntime as ort

    from animetagnet.predict import usable_cores

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = usable_cores()  # same cores as ours (onnxruntime ignores affinity)
    sess = ort.InferenceSession(str(model_dir / "model.onnx"), opts, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    size = inp.shape[1]

    def one(p: Path) -> np.ndarray:
        image = Image.open(p).convert("RGBA")
        canvas = Image.new("RGBA", image.size, (255, 255, 255))
        canvas.alpha_composite(image)
        image = canvas.convert("RGB")
        m = max(image.size)
        padded = Image.new("RGB", (m, m), (255, 255, 255))
        padded.paste(image, ((m - image.size[0]) // 2, (m - image.size[1]) // 2))
        padded = padded.resize((size, size), Image.BICUBIC)
        x = np.asarray(padded, dtype=np.float32)[:, :, ::-1][None]
        return sess.run(None, {inp.name: np.ascontiguousarray(x)})[0]

    one(paths[0])  # warm-up
    t = time.perf_counter()
    for p in paths:
        one(p)
    return len(paths) / (time.perf_counter() - t)


def end_to_end(tagger: Tagger, paths: list[Path]) -> float:
    list(tagger.iter_tag_files(paths[:2]))  # warm-up
    t = time.perf_counter()
    n = sum(1 for r in tagger.iter_tag_files(paths) if r.ok)
    dt = time.perf_counter() - t
    assert n == len(paths)
    return n / dt


def model_only(tagger: Tagger, paths: list[Path]) -> float:
    arrays = [tagger.prepare(p) for p in paths]
    bs = tagger.batch_size
    tagger.predict(np.stack(arrays[:bs]))  # warm-up
    t = time.perf_counter()
    for i in range(0, len(arrays), bs):
        tagger.predict(np.stack(arrays[i : i + bs]))
    return len(arrays) / (time.perf_counter() - t)


def machine() -> dict:
    import onnxruntime as ort

    cpu = platform.processor()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from animetagnet.predict import usable_cores

    return {"cpu": cpu, "cores": usable_cores(), "machine_cores": os.cpu_count(), "python": platform.python_version(),
            "onnxruntime": ort.__version__, "pillow": Image.__version__}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="small,wd")
    ap.add_argument("--sets", default="small,large")
    ap.add_argument("--limit", type=int, default=None, help="images per set (default: all; 12 for the WD-size model)")
    ap.add_argument("--cache", default=str(Path(os.environ.get("TMPDIR", "/tmp")) / "animetagnet-bench"))
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    args = ap.parse_args()
    cache = Path(args.cache)
    sets = make_image_sets(cache)
    results = {"benchmark": "tagging", "machine": machine(), "runs": []}
    for key in args.models.split(","):
        arch, size = MODELS[key]
        model_dir = export_wd_model(arch, size, cache / f"{key}-{arch}-{size}")
        tagger = Tagger(model_dir, device="cpu", batch_size=args.batch_size)
        for set_name in args.sets.split(","):
            paths = sets[set_name]
            limit = args.limit or (12 if key == "wd" else None)
            paths = paths[:limit] if limit else paths
            ref = reference_pipeline(model_dir, paths)
            mo = model_only(tagger, paths)
            e2e_rates = [end_to_end(tagger, paths) for _ in range(2 if key == "wd" else 3)]
            e2e = max(e2e_rates)
            sample = next(iter(tagger.iter_tag_files(paths[:1])))
            run = {"model": f"{arch}@{size}", "tags_per_image_sample": len(sample.all_tags()), "images": set_name, "n": len(paths), "batch_size": tagger.batch_size,
                   "reference_img_s": round(ref, 2), "model_only_img_s": round(mo, 2), "end_to_end_img_s": round(e2e, 2),
                   "end_to_end_runs": [round(x, 2) for x in e2e_rates],
                   "e2e_over_model_only": round(e2e / mo, 3), "e2e_over_reference": round(e2e / ref, 2)}
            results["runs"].append(run)
            print(json.dumps(run), file=sys.stderr)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
