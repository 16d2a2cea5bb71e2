"""Training throughput (images/s) and the share of step time spent waiting on data, for one recipe.

Runs one short epoch of real training (limit_train images) and reads the run's own metrics.
Prints JSON. Example (the faces dataset from `animetagnet prepare ../shared/data/faces --out datasets/faces`):

    python benchmarks/bench_train.py datasets/faces --config configs/faces-cpu.yaml --images 1280 \
        --set data.workers=1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset")
    ap.add_argument("--config", default="configs/faces-cpu.yaml")
    ap.add_argument("--images", type=int, default=1280, help="training images in the measured epoch")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    a = ap.parse_args()

    import torch

    from animetagnet_train import config
    from animetagnet_train.train import train

    overrides = [f"data.limit_train={a.images}", "data.limit_val=64", "train.epochs=1", "train.progress=false",
                 "optim.warmup_epochs=0", *a.overrides]
    cfg = config.load(a.config, overrides)
    with tempfile.TemporaryDirectory() as tmp:
        result = train(a.dataset, Path(tmp) / "run", cfg)
    row = result.history[-1]
    print(json.dumps({
        "recipe": a.config, "backbone": cfg.model.backbone, "image_size": cfg.model.image_size,
        "batch_size": cfg.data.batch_size, "workers": cfg.data.workers, "device": cfg.train.device,
        "threads": torch.get_num_threads(), "images": a.images,
        "images_per_s": round(row["images_per_s"], 1), "data_wait_share": round(row["data_wait_share"], 3),
        "epoch_time_s": round(row["epoch_time_s"], 1), "cpu_count": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)), "machine": platform.processor() or platform.machine(),
        "overrides": a.overrides,
    }))


if __name__ == "__main__":
    main()
