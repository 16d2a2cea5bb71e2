"""The `train` and `export` verbs (torch is imported only when a verb runs, so `animetagnet --help` stays light)."""

from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a multi-label tagger on a prepared dataset directory",
        description="Train a timm backbone on DATASET_DIR (from `animetagnet prepare`). The run directory gets "
        "the resolved config, checkpoints (safetensors), metrics.jsonl/csv and the best weights.",
    )
    p.add_argument("dataset", metavar="DATASET_DIR")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory to create (or to resume)")
    p.add_argument("--config", metavar="YAML", help="recipe, e.g. configs/smoke.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set optim.lr=1e-3 --set train.epochs=3 (repeatable)")
    p.add_argument("--init-from", metavar="MODEL_OR_RUN", default=None,
                   help="fine-tune from a run directory, an exported model directory (its run's weights) or a "
                        "checkpoint: keeps its vocabulary and adds the dataset's new tags (model.init_from)")
    p.add_argument("--resume", action="store_true", help="continue RUN_DIR from its last checkpoint (config from the run)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    p.set_defaults(func=run_train)

    c = subparsers.add_parser(
        "cache",
        help="pre-resize a prepared dataset into a uint8 cache for fast training (data.cache)",
        description="Decode and preprocess every image of DATASET_DIR's train and val splits once, at the training "
        "size, into memory-mapped uint8 shards with a checksummed manifest (resumable: a rerun finishes or checks "
        "it). Train with --set data.cache=auto (the default directory) or data.cache=DIR.",
    )
    c.add_argument("dataset", metavar="DATASET_DIR")
    c.add_argument("--size", type=int, required=True, metavar="PX", help="the training size (model.image_size)")
    c.add_argument("--out", metavar="DIR", default=None, help="cache directory (default: DATASET_DIR/.cache/SIZEpx)")
    c.add_argument("--splits", default="train,val", metavar="LIST", help="splits to cache (default train,val)")
    c.add_argument("--workers", type=int, default=0, metavar="N", help="decoding processes (default: up to 8)")
    c.add_argument("--no-verify", action="store_true", help="trust the sizes of finished shards (skip their sha256)")
    c.set_defaults(func=run_cache)

    e = subparsers.add_parser(
        "export",
        help="export a training run to a WD-layout model directory (ONNX)",
        description="Write model.onnx (NHWC BGR 0..255, dynamic batch; outputs: sigmoid probabilities, embedding), "
        "selected_tags.csv (WD v3 layout), "
        "animetagnet.json (thresholds picked on val, metrics, provenance) and a model card.",
    )
    e.add_argument("run_dir", metavar="RUN_DIR")
    e.add_argument("--out", required=True, metavar="MODEL_DIR")
    e.add_argument("--dataset", metavar="DATASET_DIR", help="dataset for thresholds/metrics/parity (default: the run's)")
    e.add_argument("--weights", choices=("best", "last"), default="best")
    e.add_argument("--int8", action="store_true", help="also write model_int8.onnx (dynamic quantization) and measure it")
    e.add_argument("--parity-images", type=int, default=16, metavar="N", help="real images for the ONNX/torch parity check")
    e.add_argument("--max-eval-images", type=int, default=0, metavar="N", help="cap the val images used for thresholds and figures (0: all)")
    e.add_argument("--force", action="store_true", help="overwrite an existing MODEL_DIR/model.onnx")
    e.add_argument("--input-size", type=int, default=None, metavar="PX",
                   help="ONNX input size, resized in the graph to the trained size (448 for kohya sd-scripts, "
                        "which always feeds 448 px; default: the trained size)")
    e.add_argument("--network-size", type=int, default=None, metavar="PX",
                   help="run the network at PX instead of its trained size (a convolutional network runs at any size; "
                        "a little larger offsets the zoom of random-crop training: decide it on val)")
    e.add_argument("--flip-average", action="store_true",
                   help="the graph averages each image with its mirror (test-time flip: twice the compute, "
                        "read by every tool unmodified)")
    e.add_argument("--comfyui", metavar="DIR", default=None,
                   help="also write ComfyUI-WD14-Tagger's flat layout: DIR/NAME.onnx + DIR/NAME.csv (NAME: MODEL_DIR's name)")
    e.set_defaults(func=run_export)


def run_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from . import config
    from .train import train

    overrides = list(args.overrides)
    if args.init_from:
        import json as _json

        overrides.append(f"model.init_from={_json.dumps(str(Path(args.init_from).resolve()) if Path(args.init_from).exists() else args.init_from)}")
    if args.no_progress:
        overrides.append("train.progress=false")
    if args.resume:
        saved = Path(args.out) / "config.yaml"
        if not saved.is_file():
            from .errors import TrainingError

            raise TrainingError(f"--resume: {saved} not found (is {args.out} a run directory?)")
        cfg = config.load(saved, overrides)
    else:
        recipe = args.config
        if recipe is None and args.init_from:
            from .model import resolve_init

            weights, _, _ = resolve_init(args.init_from)
            run_cfg = weights.parent.parent / "config.yaml"  # RUN/checkpoints/best.safetensors
            if run_cfg.is_file():
                recipe = run_cfg  # fine-tuning repeats the run's recipe unless --config says otherwise
                print(f"recipe: {run_cfg} (the --init-from run's; --config to change it)", file=sys.stderr)
        cfg = config.load(recipe, overrides)
    result = train(args.dataset, args.out, cfg, resume=args.resume)
    if result.interrupted:
        print(f"interrupted; checkpoint saved. Continue with: animetagnet train {args.dataset} --out {args.out} --resume",
              file=sys.stderr)
        return 130
    best = result.best
    if best:
        print(f"best epoch {best['epoch']}: val {best['metric']} {best['value']:.4f} "
              f"(mAP {best.get('val_map', float('nan')):.4f}, macro-F1@0.5 {best.get('val_macro_f1', float('nan')):.4f}, "
              f"top-1 {best.get('val_top1', float('nan')):.4f}) -> {args.out}")
    return 0


def run_cache(args: argparse.Namespace) -> int:
    from .cache import build

    splits = tuple(x.strip() for x in args.splits.split(",") if x.strip())
    res = build(args.dataset, args.size, args.out, splits=splits, workers=args.workers, verify=not args.no_verify)
    images = ", ".join(f"{k} {v}" for k, v in res["images"].items())
    print(f"cache {res['dir']}: {images} images at {args.size} px; built {res['built']} shard(s), "
          f"kept {res['kept']}" + (" (sha256 checked)" if not args.no_verify else ""), file=sys.stderr)
    return 0


def run_export(args: argparse.Namespace) -> int:
    from .export import export

    report = export(args.run_dir, args.out, dataset_dir=args.dataset, weights=args.weights, int8=args.int8,
                    parity_images=args.parity_images, max_eval_images=args.max_eval_images, force=args.force,
                    input_size=args.input_size, comfyui_dir=args.comfyui, flip_average=args.flip_average,
                    network_size=args.network_size)
    print(f"exported {args.run_dir} -> {args.out} (parity max |diff| {report['parity']['max_abs_diff']:.2e})")
    return 0
