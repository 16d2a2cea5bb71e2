"""Default decoding (JPEG draft mode) vs `--exact`: how many tag sets change, and what the draft saves.

Draft mode decodes a large JPEG at a reduced DCT scale (1/2, 1/4, 1/8) that keeps the padded square
at least the model's input size; `--exact` always decodes at full size. For each model and image
set this counts the images whose selected tag set differs between the two, the largest confidence
change, and the decode+preprocess time per image of each (the only part that differs).

Models: the 448 px WD-layout networks of bench_tagging.py (random weights with a sparse head bias:
efficientnet_b0 "small" and ViT-B/16 "wd"), and any exported model given with --model (e.g. a
trained export, any input size). Images: the 22 real 512 px posts and 16 large photos
(2000x3000 / 3000x2000 JPEGs upscaled from them, with noise), as in bench_tagging.py.

    python benchmarks/bench_decoding.py [--models small,wd] [--model DIR ...] [--sets small,large] [--cache DIR]

`--draft-margin M` tries another rule (the draft keeps M x the input size; the package keeps
images.DRAFT_MARGIN = 2; 1 was the rule before) without changing the package.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

from animetagnet import Tagger  # noqa: E402
from bench_tagging import export_wd_model, machine, make_image_sets  # noqa: E402

ARCHS = {"small": "efficientnet_b0", "wd": "vit_base_patch16_224"}
SIZE = 448


def prepare_all(tagger: Tagger, paths: list[Path]) -> tuple[np.ndarray, float]:
    t = time.perf_counter()
    arrays = np.stack([tagger.prepare(p) for p in paths])
    return arrays, (time.perf_counter() - t) / len(paths)


def compare(model_dir: Path, paths: list[Path]) -> dict:
    default, exact = Tagger(model_dir), Tagger(model_dir, exact=True)
    prepare_all(default, paths[:2])  # warm the file cache for both
    x_default, s_default = prepare_all(default, paths)
    x_exact, s_exact = prepare_all(exact, paths)
    same_pixels = int(sum(np.array_equal(a, b) for a, b in zip(x_default, x_exact)))
    bs = default.batch_size
    p_default = np.concatenate([default.predict(x_default[i:i + bs]) for i in range(0, len(paths), bs)])
    p_exact = np.concatenate([default.predict(x_exact[i:i + bs]) for i in range(0, len(paths), bs)])
    selector = default.selector()  # the model's own thresholds, else 0.35 general / 0.85 character
    r_default = selector.select_batch(p_default, [str(p) for p in paths])
    r_exact = selector.select_batch(p_exact, [str(p) for p in paths])

    def tagset(r):
        return {n for cat in r.tags.values() for n in cat} | ({r.rating} if r.rating else set())

    differ = [p.name for p, a, b in zip(paths, r_default, r_exact) if tagset(a) != tagset(b)]
    changed = sum(len(tagset(a) ^ tagset(b)) for a, b in zip(r_default, r_exact))
    return {
        "input_size": default.input_size,
        "images": len(paths),
        "identical_input_arrays": same_pixels,
        "tag_sets_differ": len(differ),
        "tags_added_or_dropped": changed,
        "differing_images": differ,
        "mean_tags_per_image": round(float(np.mean([len(tagset(r)) for r in r_exact])), 2),
        "max_abs_confidence_diff": float(np.abs(p_default - p_exact).max()),
        "mean_abs_confidence_diff_of_tags_above_0.1": float(
            np.abs(p_default - p_exact)[np.maximum(p_default, p_exact) > 0.1].mean()
            if (np.maximum(p_default, p_exact) > 0.1).any() else 0.0),
        "decode_ms_per_image": {"default": round(s_default * 1000, 1), "exact": round(s_exact * 1000, 1)},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="small,wd", help="bench_tagging networks at 448 px (small, wd; '' for none)")
    ap.add_argument("--model", action="append", default=[], help="an exported model directory (repeatable)")
    ap.add_argument("--cache", default=str(Path(os.environ.get("TMPDIR", "/tmp")) / "animetagnet-bench"))
    ap.add_argument("--sets", default="small,large")
    ap.add_argument("--images", action="append", default=[], metavar="NAME=GLOB",
                    help="an extra image set, e.g. faces='/data/faces/*/*.jpg' (first 62 sorted files)")
    ap.add_argument("--draft-margin", type=float, default=None,
                    help="experiment: the draft keeps MARGIN x the input size (default: the package's DRAFT_MARGIN)")
    args = ap.parse_args()
    import animetagnet.images as images

    if args.draft_margin is not None:
        images.DRAFT_MARGIN = args.draft_margin
    cache = Path(args.cache)
    sets = {k: v for k, v in make_image_sets(cache).items() if k in args.sets.split(",")}
    for spec in args.images:
        name, pattern = spec.split("=", 1)
        sets[name] = sorted(Path(p) for p in glob.glob(pattern))[:62]
    models = {k: export_wd_model(ARCHS[k], SIZE, cache / f"{k}-{ARCHS[k]}-{SIZE}") for k in args.models.split(",") if k}
    models.update({Path(m).name: Path(m) for m in args.model})
    out = {"machine": machine(), "draft_margin": images.DRAFT_MARGIN, "load_average": os.getloadavg(), "results": {}}
    for name, model_dir in models.items():
        for set_name, paths in sets.items():
            res = compare(model_dir, paths)
            out["results"][f"{name}/{set_name}"] = res
            print(f"{name}/{set_name}: {res['tag_sets_differ']}/{res['images']} tag sets differ, "
                  f"max |dconf| {res['max_abs_confidence_diff']:.4f}, decode {res['decode_ms_per_image']}",
                  file=sys.stderr)
    json.dump(out, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
