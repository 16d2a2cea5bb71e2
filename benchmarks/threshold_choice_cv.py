#!/usr/bin/env python3
"""Which threshold preset to ship, decided on val alone: calibrate on half of val, score the other half.

`evaluate --calibrate` picks thresholds on val; which preset (one threshold for all, one per
category, one per tag...) then carries best to unseen images is a choice that must not look at
test. `evaluate --calibrate --default-preset auto` (the default) answers it with
`calibration.held_out_scores`; this prints the same measurement for every preset, with more
halvings, and fixed 0.5 on the whole split for comparison: val halves by split group (all
crops of one post stay together), each preset fitted on one half and scored on the other with
the thresholds `animetagnet tag` would use, both ways. Prints JSON.

Several `--model` directories (same label file) are scored as their ensemble: the mean of their
outputs, which is what an ensemble of exports would tag with.

    python benchmarks/threshold_choice_cv.py --model MODEL_DIR [MODEL_DIR...] --data DATASET_DIR [--rounds 10]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from animetagnet.evaluation.calibration import PRESET_NAMES, choose_default_preset, held_out_scores  # noqa: E402
from animetagnet.evaluation.dataset import load_split  # noqa: E402
from animetagnet.evaluation.metrics import set_metrics  # noqa: E402
from animetagnet.evaluation.runner import run_model  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, nargs="+", help="one model, or several scored as their mean")
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="val", help="the split to halve (val; never test)")
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args()
    split = load_split(args.data, args.split)
    runs = [run_model(m, split, progress=False, log=lambda m: None) for m in args.model]
    ev = runs[0]
    if len(runs) > 1:
        if any(r.tag_names != ev.tag_names or r.ids != ev.ids for r in runs[1:]):
            sys.exit("threshold_choice_cv: the models' label files differ; an ensemble needs the same tags")
        ev = dataclasses.replace(ev, scores=np.mean([r.scores for r in runs], axis=0).astype(np.float32))
    groups = split.groups_of(ev.ids)
    held_out = held_out_scores(ev, groups, rounds=args.rounds, presets=PRESET_NAMES)
    fixed = set_metrics(ev.y_true, ev.scores >= 0.5)
    auto, _ = choose_default_preset(ev, groups)
    print(json.dumps({"model": args.model[0] if len(args.model) == 1 else args.model, "data": args.data, "split": args.split, "images": len(ev.ids),
                      "groups": len(set(groups)), "rounds": args.rounds, "held_out": held_out,
                      "fixed_0.5_whole_split": {"macro_f1": round(fixed.macro_f1, 4), "micro_f1": round(fixed.micro_f1, 4)},
                      "auto_chooses": auto}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
