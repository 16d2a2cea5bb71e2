#!/usr/bin/env python3
"""At which size to run a trained network, decided on val alone (`export --network-size`).

Random-crop training shows the network objects larger than a whole-image resize does at test
time, so a network often does better run a little above its trained size (Touvron et al.,
"Fixing the train-test resolution discrepancy", 2019). This exports a run at each size asked
(through `animetagnet export`, so the figures are the exported ONNX model's, on the inference
preprocessing) and prints, per size, val mAP, macro-F1 at 0.5 and the held-out macro-F1 of
`calibration.held_out_scores` (calibrated on half of val, scored on the other half), plus the
compute relative to the trained size. Never reads the test split. Prints JSON.

    python benchmarks/network_size_sweep.py RUN_DIR --sizes 96 104 112 120 [--flip-average] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from animetagnet.evaluation.calibration import held_out_scores  # noqa: E402
from animetagnet.evaluation.dataset import load_split  # noqa: E402
from animetagnet.evaluation.metrics import per_tag_average_precision, set_metrics  # noqa: E402
from animetagnet.evaluation.runner import run_model  # noqa: E402
from animetagnet_train.export import export  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--sizes", type=int, nargs="+", required=True)
    ap.add_argument("--flip-average", action="store_true")
    ap.add_argument("--rounds", type=int, default=10, help="val halvings for the held-out figure")
    ap.add_argument("--out", default=None, help="keep the exports under DIR/size-N (default: a temporary folder)")
    args = ap.parse_args()
    run_info = json.loads((Path(args.run_dir) / "run.json").read_text())
    split = load_split(run_info["dataset"], "val")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(args.out or tmp)
        trained = None
        for size in args.sizes:
            model_dir = base / f"size-{size}"
            meta = export(args.run_dir, model_dir, network_size=size, flip_average=args.flip_average,
                          force=True, log=lambda m: None)
            trained = meta["provenance"]["config"]["model"]["image_size"]
            ev = run_model(str(model_dir), split, progress=False, log=lambda m: None)
            held = held_out_scores(ev, split.groups_of(ev.ids), rounds=args.rounds, presets=("global", "per_category"))
            fixed = set_metrics(ev.y_true, ev.scores >= 0.5)
            rows.append({"network_size": size, "compute_vs_trained": round((size / trained) ** 2, 2),
                         "map": round(float(np.nanmean(per_tag_average_precision(ev.y_true, ev.scores, ev.covered))), 4),
                         "macro_f1@0.5": round(fixed.macro_f1, 4),
                         "held_out_macro_f1": {k: round(v["macro_f1"], 4) for k, v in held.items()}})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(json.dumps({"run": args.run_dir, "split": "val", "images": len(split.records), "trained_size": trained,
                      "flip_average": args.flip_average, "rounds": args.rounds, "sizes": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
