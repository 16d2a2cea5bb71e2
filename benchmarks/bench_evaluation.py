"""Benchmarks the evaluation package; prints JSON.

1. `metrics`: summarize(), calibrate() and the automatic preset choice (choose_default_preset,
   `evaluate --calibrate`'s default) on synthetic WD-scale arrays (images x 10,861 tags).
2. `faces`: a real end-to-end run on ../shared/data/faces: fits a colour-statistics logistic
   baseline (numpy, 4x4 grid of mean colours -> 20 character tags), exports it as a WD-layout
   ONNX bundle, calibrates on one split and evaluates on another with `animetagnet evaluate`.
   It measures the evaluation machinery on real files, not a good tagger.

    python benchmarks/bench_evaluation.py [--images 2000] [--tags 10861] [--faces-per-class 120] [--out DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from animetagnet.bundle import ModelMetadata  # noqa: E402
from animetagnet.evaluation.calibration import calibrate, choose_default_preset  # noqa: E402
from animetagnet.evaluation.runner import EvalData  # noqa: E402
from animetagnet.evaluation.summary import summarize  # noqa: E402
from animetagnet.vocab import Category, Tag, Vocabulary  # noqa: E402

DATA = Path(os.environ.get("ANIMETAGNET_DATA", ROOT.parent / "shared" / "data"))


def bench_metrics(n: int, t: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    n_char = t // 4
    tags = [Tag(f"g{i}", Category.GENERAL) for i in range(t - n_char)] + [Tag(f"c{i}", Category.CHARACTER) for i in range(n_char)]
    vocab = Vocabulary(tags)
    freq = np.clip(rng.pareto(1.2, t) * 0.002, 1e-4, 0.4)  # long-tailed tag frequencies
    y = rng.random((n, t), dtype=np.float32) < freq
    noise = rng.random((n, t), dtype=np.float32)
    scores = np.clip(0.55 * y + 0.6 * noise ** 3, 0, 1).astype(np.float32)
    data = EvalData(
        model_name="synthetic", model_dir="-", dataset_dir="-", split="test", ids=[str(i) for i in range(n)],
        images=[""] * n, tag_names=vocab.names, categories=vocab.categories.copy(), model_categories=vocab.categories.copy(),
        train_counts=np.zeros(t, np.int64), y_true=y, scores=scores, covered=np.ones(t, bool),
        model_index=np.arange(t), mcut={}, model_vocab=vocab,
    )
    t0 = time.perf_counter()
    s = summarize(data, ModelMetadata())
    t_sum = time.perf_counter() - t0
    t0 = time.perf_counter()
    presets = calibrate(y, scores, vocab.names, vocab.categories, np.ones(t, bool))
    t_cal = time.perf_counter() - t0
    t0 = time.perf_counter()
    chosen, _ = choose_default_preset(data, data.ids)  # every image its own split group
    t_auto = time.perf_counter() - t0
    return {"images": n, "tags": t, "positives": int(y.sum()), "summarize_s": round(t_sum, 2),
            "calibrate_s": round(t_cal, 2), "auto_preset_choice_s": round(t_auto, 2), "auto_preset": chosen,
            "tags_with_own_threshold": len(presets["balanced"]["tags"]),
            "micro_f1_at_pr": round(s.result["f1_at_pr"]["micro"]["f1"], 4)}


def _features(arr: np.ndarray) -> np.ndarray:
    """Mean colour of each cell of a 4x4 grid, the same computation as the ONNX graph below."""
    n, h, w, _ = arr.shape
    x = arr.reshape(n, 4, h // 4, 4, w // 4, 3).mean(axis=(2, 4)) / 255.0
    return x.reshape(n, 48)


def _build_onnx(out: Path, w: np.ndarray, b: np.ndarray, size: int, labels: list[tuple[str, int]]) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("Div", ["input", "scale"], ["x"]),
        helper.make_node("Reshape", ["x", "grid"], ["g"]),
        helper.make_node("ReduceMean", ["g", "axes"], ["m"], keepdims=0),
        helper.make_node("Reshape", ["m", "flat"], ["feat"]),
        helper.make_node("MatMul", ["feat", "W"], ["mm"]),
        helper.make_node("Add", ["mm", "B"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["output"]),
    ]
    inits = [
        numpy_helper.from_array(np.array(255.0, np.float32), "scale"),
        numpy_helper.from_array(np.array([-1, 4, size // 4, 4, size // 4, 3], np.int64), "grid"),
        numpy_helper.from_array(np.array([2, 4], np.int64), "axes"),
        numpy_helper.from_array(np.array([-1, 48], np.int64), "flat"),
        numpy_helper.from_array(w.astype(np.float32), "W"),
        numpy_helper.from_array(b.astype(np.float32), "B"),
    ]
    graph = helper.make_graph(nodes, "colour_baseline",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", size, size, 3])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", w.shape[1]])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    out.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out / "model.onnx"))
    Vocabulary([Tag(n, Category(c), 0, i) for i, (n, c) in enumerate(labels)]).write_csv(out / "selected_tags.csv")
    (out / "animetagnet.json").write_text(json.dumps({"name": "faces-colour-baseline", "provenance": {"note": "benchmark"}}))


def bench_faces(per_class: int, out_dir: Path) -> dict:
    from animetagnet.cli import main
    from animetagnet.images import load_and_preprocess

    faces = DATA / "faces"
    if not faces.is_dir():
        return {"skipped": f"no {faces}"}
    size = 32
    chars = sorted(p.name for p in faces.iterdir() if p.is_dir())
    ds = out_dir / "faces-ds"
    ds.mkdir(parents=True, exist_ok=True)
    splits: dict[str, list] = {"train": [], "val": [], "test": []}
    for c in chars:
        files = sorted(f for f in (faces / c).iterdir() if f.suffix == ".jpg")
        for f in files:
            # md5 of the post is the file-name prefix: split by post, never by file (no leaks).
            bucket = int(hashlib.md5(f.name.split("-")[0].encode()).hexdigest(), 16) % 10
            split = "test" if bucket == 0 else "val" if bucket == 1 else "train"
            splits[split].append({"id": f.stem, "image": str(f), "tags": [c, "1girl"]})
    rng = np.random.default_rng(0)
    train = [r for c in chars for r in rng.permutation([r for r in splits["train"] if r["tags"][0] == c])[:per_class]]
    t0 = time.perf_counter()
    x = _features(np.stack([load_and_preprocess(r["image"], size) for r in train]))
    t_load = time.perf_counter() - t0
    yy = np.array([[r["tags"][0] == c for c in chars] for r in train], dtype=np.float64)
    w = np.zeros((48, len(chars)))
    b = np.zeros(len(chars))
    mu, sd = x.mean(0), x.std(0) + 1e-6
    xs = (x - mu) / sd
    for _ in range(1500):  # plain full-batch gradient descent on the logistic loss
        p = 1 / (1 + np.exp(-(xs @ w + b)))
        g = (p - yy) / len(xs)
        w -= 2.0 * xs.T @ g
        b -= 2.0 * g.sum(0)
    # Fold the standardisation into the weights so the ONNX graph sees raw features.
    w_raw = w / sd[:, None]
    b_raw = b - (mu / sd) @ w
    labels = [(c, 4) for c in chars] + [("1girl", 0)]
    w_full = np.concatenate([w_raw, np.zeros((48, 1))], axis=1)
    b_full = np.concatenate([b_raw, [4.0]])  # "1girl" always on: a trivially right general tag
    model = out_dir / "faces-colour-baseline"
    _build_onnx(model, w_full, b_full, size, labels)
    Vocabulary([Tag(n, Category(c), len(train) // len(chars)) for n, c in labels]).write_csv(ds / "selected_tags.csv")
    for name, recs in splits.items():
        (ds / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # keep this script's stdout pure JSON
        rc = main(["evaluate", "--model", str(model), "--data", str(ds), "--split", "test", "--calibrate", "--min-support", "10",
                   "--report", str(out_dir / "report"), "-q"])
    t_eval = time.perf_counter() - t0
    m = json.loads((out_dir / "report" / "metrics.json").read_text())
    strat = {s["name"]: {"micro_f1": s["micro_f1"], "macro_f1": s["macro_f1"]} for s in m["strategies"]}
    return {"exit": rc, "train_images": len(train), "feature_load_s": round(t_load, 1),
            "val_images": len(splits["val"]), "test_images": m["dataset"]["images"],
            "evaluate_with_calibration_s": round(t_eval, 1),
            "test_images_per_s_in_evaluate": m["dataset"]["images_per_second"],
            "headline": {k: m["headline"][k] for k in ("micro_f1", "macro_f1", "map")},
            "f1_at_pr": {k: round(v["f1"], 4) for k, v in m["f1_at_pr"].items()},
            "strategies": strat, "report": str(out_dir / "report" / "report.html")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--tags", type=int, default=10861)
    ap.add_argument("--faces-per-class", type=int, default=120)
    ap.add_argument("--out", default=None)
    ap.add_argument("--skip-faces", action="store_true")
    args = ap.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="bench_eval_"))
    result = {"metrics": bench_metrics(args.images, args.tags)}
    if not args.skip_faces:
        result["faces"] = bench_faces(args.faces_per_class, out)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
