"""GPU check of the training path (bf16/fp16 autocast, channels-last, loader workers) on synthetic data.

Needs no real data: builds the tests' synthetic colour dataset, trains the smoke recipe on CUDA
with each precision, exports, and measures throughput of a bigger recipe. Prints JSON.

    python benchmarks/gpu_check.py [--images 2048] [--backbone resnet50] [--size 224]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2048)
    ap.add_argument("--backbone", default="resnet50")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--device", default="cuda", help="cpu only to dry-run this script")
    a = ap.parse_args()

    import torch

    from animetagnet_train import config, export
    from animetagnet_train.train import train
    from train_helpers import make_synthetic

    if a.device == "cuda":
        assert torch.cuda.is_available(), "no CUDA device visible to torch"
    out: dict = {"device": torch.cuda.get_device_name(0) if a.device == "cuda" else "cpu", "torch": torch.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ds = make_synthetic(tmp / "ds", n_train=64, n_val=16)
        for amp in ("bf16", "fp16"):
            cfg = config.load(ROOT / "configs" / "smoke.yaml", [f"train.device={a.device}", f"train.amp={amp}", "train.epochs=2"])
            res = train(ds, tmp / f"run-{amp}", cfg)
            out[f"smoke_{amp}"] = {"losses": [r["train_loss"] for r in res.history], "val_map": res.best.get("val_map")}
        meta = export.export(tmp / "run-bf16", tmp / "model", log=lambda m: None)
        out["export_parity_max_abs_diff"] = meta["parity"]["max_abs_diff"]
        big = make_synthetic(tmp / "big", n_train=a.images, n_val=64, n_test=1)
        cfg = config.load(ROOT / "configs" / "smoke.yaml", [
            f"model.backbone={a.backbone}", f"model.image_size={a.size}", f"train.device={a.device}", "train.epochs=1",
            "data.batch_size=128", f"data.workers={a.workers}", "optim.warmup_epochs=0", "train.threads=0"])
        res = train(big, tmp / "run-big", cfg)
        row = res.history[-1]
        out["throughput"] = {"backbone": a.backbone, "size": a.size, "images": a.images,
                             "images_per_s": row["images_per_s"], "data_wait_share": row["data_wait_share"],
                             "note": "one epoch incl. warm-up (cudnn autotune, worker start)"}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
