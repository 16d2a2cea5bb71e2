#!/usr/bin/env python3
"""Which threshold preset to ship, decided on val alone: calibrate on half of val, score the other half.

`evaluate --calibrate` picks thresholds on val; which preset (one threshold for all, one per
category, one per tag...) then carries best to unseen images is a choice that must not look at
test. This answers it on val only: the val images are split in two halves by their split group
(all crops of one post stay together), each preset is calibrated on one half with the one
threshold picker (`calibration.calibrate`, called as `evaluate --calibrate` calls it) and
scored on the other with the thresholds `animetagnet tag` would use (`EvalData.thresholds`),
both ways, over several random halvings. Prints JSON: mean held-out macro-F1 / micro-F1 per preset, and fixed 0.5.

    python benchmarks/threshold_choice_cv.py --model MODEL_DIR --data DATASET_DIR [--rounds 10]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from animetagnet.evaluation.calibration import PRESET_NAMES, calibrate  # noqa: E402
from animetagnet.evaluation.dataset import load_split  # noqa: E402
from animetagnet.evaluation.metrics import set_metrics  # noqa: E402
from animetagnet.evaluation.runner import run_model  # noqa: E402
from animetagnet.options import ThresholdOptions  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="val", help="the split to halve (val; never test)")
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args()
    split = load_split(args.data, args.split)
    ev = run_model(args.model, split, progress=False, log=lambda m: None)
    # The split group (post md5 for face crops): all crops of one post go to the same half.
    groups = {r.id: r.group or r.id for r in split.records}
    keys = sorted({groups[i] for i in ev.ids})
    y, s = ev.y_true, ev.scores
    scores: dict[str, list[tuple[float, float]]] = {name: [] for name in (*PRESET_NAMES, "fixed_0.5")}
    for r in range(args.rounds):
        rng = np.random.default_rng(r)
        half = {k: bool(b) for k, b in zip(keys, rng.integers(0, 2, len(keys)))}
        in_a = np.array([half[groups[i]] for i in ev.ids])
        for fit, held in ((in_a, ~in_a), (~in_a, in_a)):
            presets = calibrate(y[fit], s[fit], ev.tag_names, ev.model_categories, ev.covered)
            for name in PRESET_NAMES:
                m = set_metrics(y[held], s[held] >= ev.thresholds(ThresholdOptions(), presets[name]))
                scores[name].append((m.macro_f1, m.micro_f1))
            m = set_metrics(y[held], s[held] >= 0.5)
            scores["fixed_0.5"].append((m.macro_f1, m.micro_f1))
    out = {"model": args.model, "data": args.data, "split": args.split, "images": len(ev.ids),
           "rounds": args.rounds, "held_out_macro_f1": {}, "held_out_micro_f1": {}}
    for name, vals in scores.items():
        a = np.array(vals)
        out["held_out_macro_f1"][name] = {"mean": round(float(a[:, 0].mean()), 4), "std": round(float(a[:, 0].std()), 4)}
        out["held_out_micro_f1"][name] = {"mean": round(float(a[:, 1].mean()), 4), "std": round(float(a[:, 1].std()), 4)}
    out["best_macro_f1"] = max(out["held_out_macro_f1"], key=lambda k: out["held_out_macro_f1"][k]["mean"])
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
