"""GPU tagging and training throughput, one command: JSON files into the folder given.

    python benchmarks/gpu_tagging_training.py OUT_DIR            # on the GPU machine, < 8 minutes
    python benchmarks/gpu_tagging_training.py OUT_DIR --smoke    # tiny sizes on the CPU (CI runs this)

Tagging (the torch backend, random weights): model-only img/s (uint8 batches already on the
device) vs end-to-end img/s (files -> Tagger.iter_probabilities) for every decoder (threads,
processes, gpu), for ViT-B/16@448 with the WD v3 head (10,861 tags) and a small CNN
(efficientnet_b0@448), on the real 512 px JPEGs of $ANIMETAGNET_DATA/danbooru-512px and on large
photos (those posts upscaled to 3000x2000). Training: resnet50@224 img/s and data-wait share
with and without the uint8 cache (`data.cache`), on the 512 px JPEGs, bf16, channels-last.

Checks (checks.json): the CUDA results (fp32, bf16, fp16, GPU decoding) against the CPU path on
real images, and nvJPEG + device resize against THE CPU preprocessing, in pixel levels.

Files: env.json, tagging.json, checks.json, training.json, summary.json (the issue's goals checked:
end-to-end >= 0.9x model-only and >= 1,500 img/s for the ViT; data wait < 5% at >= 2,000 img/s).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

FULL = {"vit": ("vit_base_patch16_224", {"img_size": 448}, 448), "cnn": ("efficientnet_b0", {}, 448),
        "tags": 10861, "paths_512": 4096, "paths_large": 768, "large": (3000, 2000), "batch": 64,
        "model_iters": 30, "train_images": 12288, "train_backbone": "resnet50", "train_size": 224,
        "train_batch": 256, "train_epochs": 2}
SMOKE = {"vit": ("test_vit", {"img_size": 64}, 64), "cnn": ("test_efficientnet", {}, 64),
         "tags": 13, "paths_512": 16, "paths_large": 4, "large": (900, 600), "batch": 4,
         "model_iters": 2, "train_images": 24, "train_backbone": "test_resnet", "train_size": 32,
         "train_batch": 8, "train_epochs": 1}


def data_dir() -> Path:
    return Path(os.environ.get("ANIMETAGNET_DATA", ROOT.parent / "shared" / "data"))


def write(out: Path, name: str, obj) -> None:
    (out / name).write_text(json.dumps(obj, indent=2) + "\n")
    print(f"wrote {out / name}", file=sys.stderr, flush=True)


def labels_csv(path: Path, n: int) -> None:
    wd = data_dir() / "tags" / "wd_v3_selected_tags.csv"
    if n == 10861 and wd.is_file():
        path.write_text(wd.read_text(encoding="utf-8"), encoding="utf-8")
        return
    rows = ["tag_id,name,category,count"] + [f"{i},tag_{i},0,{1000 - i}" for i in range(n)]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")


def timm_repo(dst: Path, arch: str, args: dict, size: int, n: int) -> Path:
    import timm
    from safetensors.torch import save_file

    net = timm.create_model(arch, pretrained=False, num_classes=n, **args)
    dst.mkdir(parents=True)
    (dst / "config.json").write_text(json.dumps({"architecture": arch, "num_classes": n, "model_args": args,
                                                 "pretrained_cfg": {"input_size": [3, size, size], "mean": [0.5] * 3,
                                                                    "std": [0.5] * 3}}))
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(dst / "model.safetensors"))
    labels_csv(dst / "selected_tags.csv", n)
    return dst


def sync(dev) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize()


def model_only(tagger, iters: int) -> float:
    import torch

    pred = tagger.predictor
    dev = pred.torch_device
    x = torch.randint(0, 256, (tagger.batch_size, tagger.input_size, tagger.input_size, 3), dtype=torch.uint8, device=dev)
    for _ in range(3):
        pred.run_tensor(x)
    sync(dev)
    t = time.perf_counter()
    for _ in range(iters):
        out = pred.run_tensor(x)
    out.cpu()
    sync(dev)
    return iters * tagger.batch_size / (time.perf_counter() - t)


def end_to_end(tagger, paths: list[str]) -> dict:
    n = failed = 0
    t = time.perf_counter()
    for loaded, probs in tagger.iter_probabilities(paths):
        n += 1
        failed += probs is None
    s = time.perf_counter() - t
    return {"images": n, "failed": failed, "seconds": round(s, 3), "images_per_s": round(n / s, 1)}


def bench_tagging(cfg: dict, device: str, tmp: Path, posts: list[Path]) -> dict:
    from PIL import Image

    from animetagnet import Tagger

    large_dir = tmp / "large"
    large_dir.mkdir()
    large = []
    for i, p in enumerate(posts[:16]):
        dst = large_dir / f"{i}.jpg"
        Image.open(p).convert("RGB").resize(cfg["large"], Image.BICUBIC).save(dst, quality=90)
        large.append(dst)
    inputs = {"512px": [str(posts[i % len(posts)]) for i in range(cfg["paths_512"])],
              "large": [str(large[i % len(large)]) for i in range(cfg["paths_large"])]}
    out = {}
    for key in ("vit", "cnn"):
        arch, args, size = cfg[key]
        repo = timm_repo(tmp / key, arch, args, size, cfg["tags"])
        row: dict = {"arch": arch, "model_args": args, "input_size": size, "tags": cfg["tags"]}
        for decoder in ("threads", "processes", "gpu"):
            tagger = Tagger(repo, backend="torch", device=device, batch_size=cfg["batch"], decoder=decoder)
            if decoder == "threads":
                row["device"] = str(tagger.device)
                row["workers"] = None
                row["model_only_images_per_s"] = round(model_only(tagger, cfg["model_iters"]), 1)
                print(f"{key}: model only {row['model_only_images_per_s']} img/s", file=sys.stderr, flush=True)
            for name, paths in inputs.items():
                end_to_end(tagger, paths[: cfg["batch"] * 2])  # warm-up: pools, cudnn, caches
                res = end_to_end(tagger, paths)
                res["vs_model_only"] = round(res["images_per_s"] / row["model_only_images_per_s"], 3)
                row[f"e2e_{name}_{decoder}"] = res
                print(f"{key} {name} {decoder}: {res['images_per_s']} img/s ({res['vs_model_only']}x)", file=sys.stderr,
                      flush=True)
            tagger.close()
        out[key] = row
    return out


def checks(cfg: dict, device: str, tmp: Path, posts: list[Path]) -> dict:
    """Correctness where CI cannot look: the device's results against the CPU path, on real images."""
    import numpy as np
    import torch

    from animetagnet import Tagger
    from animetagnet.images import load_and_preprocess
    from animetagnet.torch_backend import decode_on_device

    arch, args, size = cfg["vit"]
    repo = tmp / "vit" if (tmp / "vit").is_dir() else timm_repo(tmp / "vit", arch, args, size, cfg["tags"])
    paths = [str(p) for p in posts[:16]]

    def probs(**kw):
        t = Tagger(repo, backend="torch", batch_size=8, **kw)
        out = np.stack([p for _, p in t.iter_probabilities(paths)])
        t.close()
        return out

    ref = probs(device="cpu", precision="fp32", decoder="threads")
    out: dict = {"images": len(paths), "model": arch}
    for name, kw in {"fp32": dict(precision="fp32", decoder="threads"), "bf16": dict(precision="bf16", decoder="threads"),
                     "fp16": dict(precision="fp16", decoder="threads"),
                     "fp32_gpu_decode": dict(precision="fp32", decoder="gpu")}.items():
        out[f"max_prob_diff_{name}_vs_cpu_fp32"] = float(np.abs(probs(device=device, **kw) - ref).max())
    dev = torch.device(device)
    px = []
    for exact in (True, False):
        got = decode_on_device([Path(p).read_bytes() for p in paths], size, dev, exact)
        d = [np.abs(g.cpu().numpy().astype(np.float32) - load_and_preprocess(p, size, exact=exact)) for g, p in zip(got, paths)]
        out[f"decode_pixels_exact_{exact}"] = {"max": float(max(x.max() for x in d)), "mean": float(np.mean([x.mean() for x in d]))}
    print(f"checks: {out}", file=sys.stderr, flush=True)
    return out


def train_dataset(dst: Path, posts: list[Path], n: int, n_tags: int = 1000) -> Path:
    import numpy as np

    from animetagnet.vocab import Category, Tag, Vocabulary

    rng = np.random.default_rng(0)
    dst.mkdir(parents=True)

    def rows(k, prefix):
        return "".join(json.dumps({"id": f"{prefix}{i}", "image": str(posts[i % len(posts)]),
                                   "tags": [f"t{j}" for j in sorted(set(rng.integers(0, n_tags, 12).tolist()))]}) + "\n"
                       for i in range(k))

    (dst / "train.jsonl").write_text(rows(n, "tr"))
    (dst / "val.jsonl").write_text(rows(max(8, n // 64), "va"))
    Vocabulary([Tag(f"t{j}", Category.GENERAL, 10, j) for j in range(n_tags)]).write_csv(dst / "selected_tags.csv")
    return dst


def loader_only(ds_dir: Path, size: int, cache_dir: Path, batch: int, workers: int) -> dict:
    """Images/s the training input pipeline delivers with no model: per process (workers=0) and with `workers`."""
    from animetagnet_train import cache, config, data

    ds = data.open_dataset(ds_dir)
    sp = ds.split("train")
    aug = config.AugmentConfig(hflip=0.5)
    out = {}
    for w in (0, workers):
        plain = data.TagDataset(sp, len(ds.vocab), size, aug)
        cached = cache.CachedTagDataset(cache.CachedImages(cache_dir, "train", sp, size), sp, len(ds.vocab), aug)
        for name, loader in (("decode", data.make_loader(plain, data.EpochSampler(len(sp.paths), 0, True), batch, w, False, True)),
                             ("cache", cache.make_loader(cached, data.EpochSampler(len(sp.paths), 0, True), batch, w, False, True))):
            n, t = 0, time.perf_counter()
            for images, *_ in loader:
                n += images.shape[0]
            out[f"{name}_workers_{w}_images_per_s"] = round(n / (time.perf_counter() - t), 1)
    return out


def bench_training(cfg: dict, device: str, tmp: Path, posts: list[Path], workers: int) -> dict:
    from animetagnet_train import cache, config
    from animetagnet_train.train import train

    ds = train_dataset(tmp / "train-ds", posts, cfg["train_images"])
    size = cfg["train_size"]
    t = time.perf_counter()
    built = cache.build(ds, size, tmp / "cache", workers=workers, log=lambda m: None)
    cache_s = time.perf_counter() - t
    out = {"backbone": cfg["train_backbone"], "size": size, "images": cfg["train_images"], "batch": cfg["train_batch"],
           "workers": workers, "source": "danbooru-512px JPEGs (repeated)",
           "cache_build": {"seconds": round(cache_s, 2), "images_per_s": round(sum(built["images"].values()) / cache_s, 1)}}
    out["loader_only"] = loader_only(ds, size, tmp / "cache", cfg["train_batch"], workers)
    print(f"loader only: {out['loader_only']}", file=sys.stderr, flush=True)
    common = [f"model.backbone={cfg['train_backbone']}", f"model.image_size={size}", f"train.device={device}",
              f"train.epochs={cfg['train_epochs']}", f"data.batch_size={cfg['train_batch']}", f"data.workers={workers}",
              "data.augment.hflip=0.5", "data.augment.rotate_degrees=0", "data.augment.resample=[bicubic]",
              "optim.warmup_epochs=0", "train.progress=false", "optim.ema_decay=0"]
    if device == "cuda":
        common += ["train.amp=bf16", "train.channels_last=on"]
    for name, extra in (("decode_every_epoch", []), ("cache", [f"data.cache={tmp / 'cache'}", "data.cache_verify=false"])):
        res = train(ds, tmp / f"run-{name}", config.load(None, common + extra))
        last = res.history[-1]
        out[name] = {"images_per_s": round(last["images_per_s"], 1), "data_wait_share": round(last["data_wait_share"], 4),
                     "epoch_time_s": round(last["epoch_time_s"], 2), "epochs": len(res.history),
                     "note": "last epoch (the first includes cudnn autotuning and worker start)"}
        print(f"train {name}: {out[name]}", file=sys.stderr, flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="folder for the JSON files")
    ap.add_argument("--smoke", action="store_true", help="tiny models and sizes (CPU, CI)")
    ap.add_argument("--device", default=None, help="cuda (default) or cpu (default with --smoke)")
    ap.add_argument("--workers", type=int, default=None, help="decoding processes/threads (default: cores - 1)")
    ap.add_argument("--only", choices=("tagging", "checks", "training", "loader"), default=None,
                    help="one part; loader: the training input pipeline alone (no model, CPU is enough)")
    ap.add_argument("--train-images", type=int, default=None, metavar="N", help="training images (default 12288)")
    a = ap.parse_args()

    import torch

    cfg = dict(SMOKE if a.smoke else FULL)
    if a.train_images:
        cfg["train_images"] = a.train_images
    device = a.device or ("cpu" if a.smoke else "cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device visible to torch (use --smoke --device cpu for a dry run)")
    a.out.mkdir(parents=True, exist_ok=True)
    posts = sorted((data_dir() / "danbooru-512px").rglob("*.jpg"))
    if not posts:
        raise SystemExit(f"no JPEGs under {data_dir() / 'danbooru-512px'} (set ANIMETAGNET_DATA)")
    cores = len(os.sched_getaffinity(0))
    workers = a.workers or (2 if a.smoke else max(2, cores - 1))
    write(a.out, "env.json", {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
                              "torch": torch.__version__, "cores": cores, "smoke": a.smoke, "config": cfg})
    t0 = time.perf_counter()
    summary: dict = {}
    with tempfile.TemporaryDirectory(prefix="gpu-bench-") as tmp:
        tmp = Path(tmp)
        if a.only in (None, "tagging"):
            tagging = bench_tagging(cfg, device, tmp, posts)
            write(a.out, "tagging.json", tagging)
            vit = tagging["vit"]
            best = max((v["images_per_s"], k) for k, v in vit.items() if k.startswith("e2e_512px_"))
            summary["vit_512px"] = {"model_only": vit["model_only_images_per_s"], "best_e2e": best[0], "decoder": best[1],
                                    "goal_e2e_ge_0.9x_and_1500": best[0] >= 0.9 * vit["model_only_images_per_s"]
                                    and best[0] >= 1500}
        if a.only == "loader":
            from animetagnet_train import cache

            ds = train_dataset(tmp / "train-ds", posts, cfg["train_images"])
            t = time.perf_counter()
            built = cache.build(ds, cfg["train_size"], tmp / "cache", workers=workers, log=lambda m: None)
            res = {"size": cfg["train_size"], "images": cfg["train_images"], "batch": cfg["train_batch"],
                   "cache_build_images_per_s": round(sum(built["images"].values()) / (time.perf_counter() - t), 1),
                   **loader_only(ds, cfg["train_size"], tmp / "cache", cfg["train_batch"], workers)}
            write(a.out, "loader.json", res)
        if a.only in (None, "checks"):
            write(a.out, "checks.json", checks(cfg, device, tmp, posts))
        if a.only in (None, "training"):
            training = bench_training(cfg, device, tmp, posts, workers)
            write(a.out, "training.json", training)
            c = training["cache"]
            summary["training_cache"] = {**c, "goal_wait_lt_5pct_at_2000": c["data_wait_share"] < 0.05
                                         and c["images_per_s"] >= 2000}
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    write(a.out, "summary.json", summary)


if __name__ == "__main__":
    main()
