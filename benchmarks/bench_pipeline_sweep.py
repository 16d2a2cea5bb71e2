"""Sweep the tagging pipeline's thread settings: decode workers x onnxruntime threads x spinning.

Decoding threads and onnxruntime's intra-op threads share the cores; this measures which split
keeps the model fed without starving it, to choose the defaults in animetagnet.tagger.
Uses the models and images that bench_tagging.py caches (run it first, or pass --build).

    python benchmarks/bench_pipeline_sweep.py --model small --rounds 3
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_tagging import MODELS, export_wd_model, machine, make_image_sets  # noqa: E402

from animetagnet import Tagger  # noqa: E402
from animetagnet.predict import usable_cores  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="small", choices=sorted(MODELS))
    ap.add_argument("--sets", default="small,large")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cache", default=str(Path(os.environ.get("TMPDIR", "/tmp")) / "animetagnet-bench"))
    args = ap.parse_args()
    cache = Path(args.cache)
    arch, size = MODELS[args.model]
    model_dir = export_wd_model(arch, size, cache / f"{args.model}-{arch}-{size}")
    sets = make_image_sets(cache)
    cores = usable_cores()
    thread_opts = sorted({1, cores})
    configs = list(itertools.product((1, 2, 3), thread_opts, (None, False)))
    taggers = {(t, s): Tagger(model_dir, device="cpu", threads=t, spin=s) for _, t, s in configs}
    out = {"benchmark": "pipeline_sweep", "machine": machine(), "model": f"{arch}@{size}", "results": []}
    for set_name in args.sets.split(","):
        paths = sets[set_name]
        tg = taggers[(cores, None)]
        arrays = np.stack([tg.prepare(p) for p in paths[: tg.batch_size]])
        tg.predict(arrays)
        t0 = time.perf_counter()
        reps = max(2, len(paths) // tg.batch_size)
        for _ in range(reps):
            tg.predict(arrays)
        model_only = reps * len(arrays) / (time.perf_counter() - t0)
        rates: dict[tuple, list[float]] = {c: [] for c in configs}
        for _ in range(args.rounds):
            for w, t, s in configs:
                tagger = taggers[(t, s)]
                start = time.perf_counter()
                n = sum(1 for r in tagger.iter_tag_files(paths, workers=w) if r.ok)
                rates[(w, t, s)].append(n / (time.perf_counter() - start))
        for (w, t, s), v in rates.items():
            out["results"].append({"images": set_name, "workers": w, "ort_threads": t, "spinning": "default" if s is None else s,
                                   "img_s_median": round(float(np.median(v)), 2), "runs": [round(x, 2) for x in v],
                                   "model_only_img_s": round(model_only, 2)})
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
