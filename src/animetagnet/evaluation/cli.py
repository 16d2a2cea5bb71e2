"""`animetagnet evaluate`: metrics of a model on a dataset split, threshold calibration, HTML report, comparison."""

from __future__ import annotations

import argparse
import json
import sys

EPILOG = """examples:
  animetagnet evaluate --model runs/faces-effnet --data data/faces-ds --split test --report reports/faces
  animetagnet evaluate --model models/my-bundle --data data/faces-ds --calibrate      # thresholds from val
  animetagnet evaluate --model models/new --data data/ds --compare models/old --report reports/cmp

MODEL_OR_RUN is a model bundle (model.onnx + selected_tags.csv, any WD model), a model.onnx path, a
Hugging Face repo id, or a training run directory holding an exported bundle (RUN_DIR/export/,
else any RUN_DIR/*/model.onnx). Tags are matched by name between model and dataset.

--calibrate runs the model on the calibration split (val), computes threshold presets (global,
per_category, balanced, high_precision, high_recall) and writes them into the model's
animetagnet.json (atomically, other keys kept); `animetagnet tag` then uses the default preset.
Which preset is the default is measured, not assumed (--default-preset auto): per-tag thresholds
fitted to a few dozen positives can carry worse to new images than one per category, so each
preset is fitted on half of the split and scored on the other half (5 random halvings by post).

exit status: 0 done, 1 some images could not be read (each reported), 2 usage or setup error
"""


def register(sub) -> None:
    from ..options import ModelOptions, ThresholdOptions

    p = sub.add_parser("evaluate", help="measure a model on a dataset split; calibrate thresholds; HTML report",
                       description="Evaluate a tagger on a dataset split with metrics that cannot flatter.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    ModelOptions.add_arguments(p, help={"model": "the model bundle, model.onnx, Hub id or training run directory "
                                                 "(MODEL_OR_RUN below)"})
    p.add_argument("--data", "-d", required=True, metavar="DATASET_DIR", help="dataset directory (selected_tags.csv + split .jsonl files)")
    p.add_argument("--split", choices=("train", "val", "test"), default=None,
                   help="split to evaluate (default: test when the dataset has one, else val)")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N images of the split")
    ThresholdOptions.add_arguments(p, title="thresholds", only=("general", "character", "preset"))
    g = p.add_argument_group("calibration")
    g.add_argument("--calibrate", action="store_true", help="calibrate thresholds on --calibration-split and write them into the model")
    g.add_argument("--calibration-split", default="val", choices=("train", "val", "test"), help="split to calibrate on (default val)")
    g.add_argument("--min-support", type=int, default=10,
                   help="a tag needs this many positives in the calibration split for its own threshold (default 10)")
    g.add_argument("--default-preset", default="auto",
                   choices=("auto", "global", "per_category", "balanced", "high_precision", "high_recall"),
                   help="preset `animetagnet tag` uses by default after --calibrate (default auto: of global, "
                        "per_category and balanced, the one with the best macro-F1 on halves of the calibration "
                        "split it was not fitted on)")
    g.add_argument("--save-metrics", action="store_true",
                   help="record the headline figures of this evaluation in the model's animetagnet.json (`metrics`)")
    g = p.add_argument_group("output")
    g.add_argument("--compare", metavar="OTHER_MODEL", default=None, help="evaluate a second model on the same split, side by side")
    g.add_argument("--report", metavar="DIR", default=None, help="write report.html and metrics.json into DIR")
    g.add_argument("--examples", type=int, default=12, help="example images in the report (default 12)")
    g.add_argument("--json", action="store_true", help="print metrics.json to standard output instead of the summary")
    g.add_argument("--quiet", "-q", action="store_true", help="no progress or summary on standard error")
    p.set_defaults(func=run)


def _print_summary(res: dict, out) -> None:
    h, pr, ex = res["headline"], res["f1_at_pr"], res["example_based"]
    d, v = res["dataset"], res["vocabulary"]
    out.write(f"model {res['model']['name']} on {d['path']} [{d['split']}]: {d['images']} images, "
              f"{v['evaluated_tags']}/{v['dataset_tags']} tags in the model, thresholds: {res['thresholds']['source']}\n")
    out.write(f"  micro  P {h['micro_precision']:.4f}  R {h['micro_recall']:.4f}  F1 {h['micro_f1']:.4f}\n")
    out.write(f"  macro  P {h['macro_precision']:.4f}  R {h['macro_recall']:.4f}  F1 {h['macro_f1']:.4f}"
              f"  (over {h['tags_with_support']} tags with positives)\n")
    out.write(f"  mAP {h['map'] if h['map'] is None else round(h['map'], 4)}  micro AP {h['micro_ap']:.4f}\n")
    for k in ("micro", "macro"):
        c = pr[k]
        if c:
            out.write(f"  {k}-F1 at P=R {c['f1']:.4f} (threshold {c['threshold']:.4f})\n")
    out.write(f"  per image: P {ex['precision']:.4f}  R {ex['recall']:.4f}  F1 {ex['f1']:.4f}  Jaccard {ex['jaccard']:.4f}"
              f"  exact set {ex['exact_match']:.4f}\n")
    un = res.get("images_without_tags") or {}
    if un.get("images"):
        cats = ", ".join(f"{c['images_with_a_false_tag']} with a false {label} tag"
                         for label, c in un["false_by_category"].items() if c["false_tags"] or label == "character")
        out.write(f"  images without tags: {un['images']}, {un['clean']:.4f} with nothing predicted ({cats})\n")
    for s in res["strategies"]:
        out.write(f"  [{s['name']:>22}] micro-F1 {s['micro_f1']:.4f}  macro-F1 {s['macro_f1']:.4f}\n")
    if res["rating"]:
        out.write(f"  rating accuracy {res['rating']['accuracy']} on {res['rating']['images_judged']} images\n")
    for w in res["warnings"]:
        out.write(f"  warning: {w}\n")


def run(args) -> int:
    from ..errors import UsageError
    from ..options import ModelOptions, ThresholdOptions
    from .calibration import write_calibration
    from .summary import calibration_scores
    from .dataset import default_split, load_split
    from .runner import find_model_dir, load_metadata, run_model
    from .summary import summarize

    quiet = args.quiet
    log = (lambda msg: None) if quiet else (lambda msg: print(f"animetagnet: {msg}", file=sys.stderr))
    options = ThresholdOptions.from_args(args)
    model = ModelOptions.from_args(args)
    if args.limit is not None and args.limit < 1:
        raise UsageError("--limit must be at least 1")
    split = args.split or default_split(args.data)
    model_dir = find_model_dir(model.model)
    if str(model_dir) != str(model.model):
        log(f"model bundle: {model_dir}")
    common = dict(options=model, progress=not quiet, log=log)
    failed = 0
    cache = {}
    if args.calibrate:
        from .calibration import calibrate, choose_default_preset

        cal_split = load_split(args.data, args.calibration_split, limit=args.limit)
        cdata = run_model(model_dir, cal_split, **common)
        failed += len(cdata.failed)
        cache[args.calibration_split] = cdata
        cov = cdata.covered
        presets = calibrate(cdata.y_true, cdata.scores, cdata.tag_names, cdata.model_categories, cov,
                            min_support=args.min_support)
        info = {"dataset": cdata.dataset_dir, "split": cdata.split, "images": len(cdata.ids),
                "min_support": args.min_support, "tags_with_own_threshold": len(presets.get("balanced", {}).get("tags", {})),
                "scores_on_calibration_split": calibration_scores(cdata, presets)}
        default = args.default_preset
        if default == "auto":
            default, info["default_preset"] = choose_default_preset(cdata, cal_split.groups_of(cdata.ids),
                                                                    min_support=args.min_support)
            for name, sc in info["default_preset"]["held_out"].items():
                log(f"  {name:>15} fitted on half of {cal_split.split}, scored on the other: "
                    f"macro-F1 {sc['macro_f1']:.4f}  micro-F1 {sc['micro_f1']:.4f}")
            log(f"  default preset: {default} ({info['default_preset']['chosen_by']})")
        path = write_calibration(model_dir, presets, default=default, info=info)
        log(f"calibrated on {cal_split.split} ({len(cdata.ids)} images): wrote presets {', '.join(presets)} "
            f"(default {default}) into {path}")
        scores = info["scores_on_calibration_split"]
        for name, sc in scores.items():
            log(f"  {name:>15} on {cal_split.split}: micro-F1 {sc['micro_f1']:.4f}  macro-F1 {sc['macro_f1']:.4f}")
        if "mcut" in scores and default in scores and scores["mcut"]["macro_f1"] > scores[default]["macro_f1"]:
            log("  note: MCut (animetagnet tag --mcut-general --mcut-character) beats the default preset on this split")
        if split == args.calibration_split:
            log(f"warning: evaluating on the split the thresholds were calibrated on ({split}): figures will be optimistic")
    data = cache.get(split) or run_model(model_dir, load_split(args.data, split, limit=args.limit), **common)
    if split not in cache:
        failed += len(data.failed)
    summary = summarize(data, load_metadata(model_dir), options)
    if args.save_metrics:
        from .calibration import write_metrics

        log(f"wrote the {split} figures into {write_metrics(model_dir, summary.result)}")
    other = None
    if args.compare:
        other_dir = find_model_dir(args.compare)
        odata = run_model(other_dir, load_split(args.data, split, limit=args.limit), **common)
        # The other model is evaluated with the same options (a preset is looked up in its own metadata).
        other = summarize(odata, load_metadata(other_dir), options)
    if args.report:
        from .report import write_report

        path = write_report(args.report, summary, other, examples=args.examples)
        log(f"report: {path}")
    if args.json:
        from .report import json_safe

        res = dict(summary.result)
        if other is not None:
            res["compared_with"] = other.result
        json.dump(json_safe(res), sys.stdout, indent=2, ensure_ascii=False, allow_nan=False)
        sys.stdout.write("\n")
    else:
        _print_summary(summary.result, sys.stdout)
        if other is not None:
            sys.stdout.write("compared with:\n")
            _print_summary(other.result, sys.stdout)
    return 1 if failed else 0
