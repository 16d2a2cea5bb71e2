"""Run directory -> WD-layout model directory: ONNX (NHWC BGR 0..255, sigmoid), labels, thresholds, metrics, card.

What the graph computes around the network (label layout, untrained ratings, 448 px input,
embedding output) is `wdgraph`'s; this module runs the export, checks it and writes the files.
"""

from __future__ import annotations

import io
import json
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from animetagnet.errors import ImageError
from animetagnet.evaluation import calibration
from animetagnet.fileio import atomic_write_bytes, atomic_write_text, sha256_file
from animetagnet.images import load_and_preprocess
from animetagnet.postprocess import TagSelector
from animetagnet.vocab import Category, Vocabulary, extra_category_warning

from . import checkpoint, config as config_mod, data, metrics
from . import model as model_mod
from . import wdgraph
from .errors import TrainingError

#: ONNX/torch parity bound on probabilities; float32 reorderings stay orders of magnitude below it.
PARITY_TOLERANCE = 1e-4
INPUT_NAME, OUTPUT_NAME, EMBEDDING_NAME = "input", wdgraph.OUTPUT_NAME, wdgraph.EMBEDDING_NAME


def load_run(run_dir: Path, weights: str = "best"):
    """-> (config, vocabulary, Tagger in eval mode on CPU, weight-file metadata)."""
    if not (run_dir / "config.yaml").is_file():
        raise TrainingError(f"{run_dir} is not a run directory (config.yaml missing)")
    cfg = config_mod.load(run_dir / "config.yaml")
    vocab = Vocabulary.read_csv(run_dir / "selected_tags.csv")
    net = model_mod.create(cfg.model, len(vocab))
    state, meta = checkpoint.load_weights(run_dir / "checkpoints" / f"{weights}.safetensors")
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise TrainingError(f"{run_dir}: weights do not fit the run's config: {str(exc).splitlines()[0]}") from None
    return cfg, vocab, net.eval(), meta




def to_onnx_bytes(graph: wdgraph.ExportGraph, size: int, opset: int = 17) -> bytes:
    """ONNX of `graph` taking [batch, size, size, 3]; outputs `output` (probabilities) and `embedding`."""
    import warnings

    buf = io.BytesIO()
    dummy = torch.zeros(2, size, size, 3) + 128.0
    # The TorchScript exporter is deprecated but needs no onnxscript; its warnings are noise here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        _export(graph, dummy, buf, opset)
    return buf.getvalue()


def _export(graph: torch.nn.Module, dummy: torch.Tensor, buf: io.BytesIO, opset: int) -> None:
    torch.onnx.export(
        graph.eval(), (dummy,), buf,
        input_names=[INPUT_NAME], output_names=[OUTPUT_NAME, EMBEDDING_NAME],
        dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}, EMBEDDING_NAME: {0: "batch"}},
        opset_version=opset, do_constant_folding=True, dynamo=False,
    )


def session(path: Path, threads: int = 0):
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def run_onnx(sess, batch: np.ndarray, chunk: int = 64) -> np.ndarray:
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: batch[i : i + chunk]})[0] for i in range(0, len(batch), chunk)])


def load_images(paths: list[str], size: int) -> np.ndarray:
    """THE inference preprocessing (the same call `animetagnet tag` makes), stacked NHWC."""
    out = []
    for p in paths:
        try:
            out.append(load_and_preprocess(p, size))
        except ImageError as exc:
            raise TrainingError(f"export: cannot read evaluation image: {exc}") from None
    return np.stack(out) if out else np.zeros((0, size, size, 3), np.float32)


def targets_of(split: data.Split, n_tags: int, offset: int = 0) -> np.ndarray:
    """Multi-hot targets; `offset` shifts the dataset's indices (rating rows prepended at export)."""
    t = np.zeros((len(split.paths), n_tags), dtype=np.float32)
    for i, lab in enumerate(split.labels):
        t[i, np.asarray(lab, dtype=np.int64) + offset] = 1
    return t


def pick_thresholds(probs: np.ndarray, targets: np.ndarray, vocab: Vocabulary) -> dict:
    """The F-beta presets of `evaluate --calibrate` (calibration.calibrate, the one picker) on validation.

    A preset always exists: a category (or a whole split) without positives gets no value and
    so keeps the tagger's default for it (0.85 for characters, 0.35 for the rest).
    """
    covered = vocab.categories != int(Category.RATING)  # rating is an argmax, never thresholded
    found = calibration.calibrate(targets.astype(bool), probs, vocab.names, vocab.categories, covered)
    return {name: found.get(name, {"categories": {}, "tags": {}}) for name in calibration.FBETA_PRESETS}


def threshold_vector(preset: dict, vocab: Vocabulary) -> np.ndarray:
    """Per output, the threshold `animetagnet tag` applies with `preset` (the TagSelector's resolution)."""
    return TagSelector(vocab, preset=preset).thresholds


def split_metrics(probs: np.ndarray, targets: np.ndarray, th: np.ndarray) -> dict:
    at_half = metrics.evaluate(probs, targets, 0.5)
    at_th = metrics.evaluate(probs, targets, th)
    return {
        "images": at_half["images"], "map": at_half["map"], "top1": at_half["top1"],
        "macro_f1@0.5": at_half["macro_f1"], "micro_f1@0.5": at_half["micro_f1"],
        "macro_f1": at_th["macro_f1"], "micro_f1": at_th["micro_f1"],
        "micro_precision": at_th["micro_precision"], "micro_recall": at_th["micro_recall"],
    }


def _speed(sess, batch: np.ndarray, repeats: int = 3) -> float:
    run_onnx(sess, batch[:8])  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        run_onnx(sess, batch, chunk=1)
        best = min(best, time.perf_counter() - t)
    return len(batch) / best


#: Dynamic-quantization variants tried; the faster one on this CPU is kept. On CNNs, ConvInteger
#: is often slower than float convolutions, so "matmul" (MatMul/Gemm only) is the safe choice there.
INT8_VARIANTS = {"matmul": ["MatMul", "Gemm"], "all": None}


def quantize_int8(src: Path, dst: Path, op_types: list[str] | None) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = dst.with_name(f".{dst.name}.tmp")
    quantize_dynamic(str(src), str(tmp), weight_type=QuantType.QInt8, op_types_to_quantize=op_types)
    tmp.replace(dst)


def export_int8(onnx_path: Path, q_path: Path, vimgs, vp, vt, th, float_val: dict, log) -> dict:
    """Quantize (each variant), measure speed (batch 1, CPU) and val metrics; keep the fastest."""
    speed_imgs = vimgs[:64]
    f_speed = _speed(session(onnx_path), speed_imgs)
    tried = {}
    for name, ops in INT8_VARIANTS.items():
        cand = q_path.with_name(f".{name}.{q_path.name}")
        quantize_int8(onnx_path, cand, ops)
        qsess = session(cand)
        tried[name] = (_speed(qsess, speed_imgs), cand, run_onnx(qsess, vimgs))
        log(f"int8 ({name}): {tried[name][0]:.1f} img/s vs float {f_speed:.1f}")
    best = max(tried, key=lambda k: tried[k][0])
    q_speed, cand, qp = tried[best]
    cand.replace(q_path)
    for _, other, _ in tried.values():
        other.unlink(missing_ok=True)
    q_eval = split_metrics(qp, vt, th)
    log(f"int8 kept: {best}, {q_speed / f_speed:.2f}x, val mAP {q_eval['map']:.4f} vs {float_val['map']:.4f}")
    return {
        "file": q_path.name, "method": f"onnxruntime quantize_dynamic QInt8, ops: {best}",
        "float_images_per_s": f_speed, "int8_images_per_s": q_speed, "speedup": q_speed / f_speed,
        "variants_images_per_s": {k: v[0] for k, v in tried.items()},
        "val_map": q_eval["map"], "float_val_map": float_val["map"],
        "val_macro_f1": q_eval["macro_f1"], "float_val_macro_f1": float_val["macro_f1"],
        "max_abs_diff": float(np.abs(qp - vp).max()), "measured_on": "CPU, batch 1",
    }


def model_card(meta: dict, vocab: Vocabulary) -> str:
    pre = meta["preprocessing"]
    lines = [
        f"# {meta['name']}",
        "",
        "A Danbooru-style multi-label tagger in WD layout (`model.onnx` + `selected_tags.csv`), trained with AnimeTagNet.",
        "",
        "## Use",
        "- `animetagnet tag IMAGES --model THIS_DIR`.",
        f"- input `{INPUT_NAME}` [batch, {pre['size']}, {pre['size']}, 3] float32 **BGR 0..255** (NHWC), "
        "white-padded centred square, bicubic resize"
        + (f"; the graph resizes it to the {pre['network_size']} px the network runs at "
           "(Pillow's bicubic weights)" if "in_graph_resize" in pre else "")
        + (f"; the network was trained at {pre['trained_size']} px and runs here at {pre['network_size']} px"
           if "trained_size" in pre else "") + ".",
        *(["- test-time flip inside the graph: both outputs are the mean over the image and its mirror "
           "(twice the compute of a plain export; every tool that reads the file gets it)."] if "test_time" in pre else []),
        f"- outputs: `{OUTPUT_NAME}` [batch, {len(vocab)}] sigmoid probabilities, row i of `selected_tags.csv` = "
        f"output i; `{EMBEDDING_NAME}` [batch, {meta['embedding']['dim']}], the pooled features before the head.",
        "",
        "## Label file",
        "WD v3 layout: rows 0-3 are the ratings general, sensitive, questionable, explicit (category 9), then the "
        "general tags (0), then the characters (4)" + (", then other categories (read the warning below)"
                                                        if any(int(c) not in (0, 4, 9) for c in vocab.present_categories()) else "") + ".",
    ]
    labels = meta["labels"]
    if labels["ratings"] == "untrained":
        lines.append(f"- **The ratings were never trained** (the dataset has no rating labels): rows 0-3 output "
                     f"{wdgraph.UNTRAINED_RATING_VALUE} for every image. animetagnet shows no rating for this model; "
                     "tools that take the argmax of rows 0-3 (kohya `--use_rating_tags`) would always print `general`, so "
                     "do not ask them for ratings.")
    warning = extra_category_warning(vocab)
    if warning:
        lines.append(f"- Warning: {warning}.")
    lines += [
        "",
        "## Which tools read it",
        "Checked by this project's tests on a model trained on real faces: imgutils with its own code, the "
        "others with their reading conventions restated (they cannot be installed from a registry).",
        "- imgutils `get_wd14_tags` (from a Hugging Face cache entry): reads the input size from the model and "
        "needs the two outputs; any size works; tags and confidences equal `animetagnet tag --exact`.",
        "- ComfyUI-WD14-Tagger (flat `NAME.onnx` + `NAME.csv`, `animetagnet export --comfyui DIR`) and the A1111 "
        "wd14 tagger extensions: read the input size from the model; any size works; they resize with other "
        "filters than ours, so a confidence near a threshold can differ slightly.",
        "- kohya sd-scripts `tag_images_by_wd14_tagger.py --onnx` (`--model_dir PARENT --repo_id FOLDER`): always "
        "feeds 448 px; use an export made with `--input-size 448`"
        + (" (this one)." if pre["size"] == 448 else f" (this one takes {pre['size']} px)."),
        "- The 448 px export resizes to the trained size inside the graph: on the faces recipe it cost 0.0001 "
        "test mAP against the native size (benchmarks/RESULTS.md); measure yours with "
        "`animetagnet evaluate --model NATIVE --compare EXPORT_448`.",
        "",
        "## Training",
    ]
    prov = meta["provenance"]
    lines += [f"- {k}: {v}" for k, v in prov.items() if k != "config"]
    lines += ["", "## Thresholds (picked on the validation split)", ""]
    for name, p in meta["thresholds"]["presets"].items():
        cats = ", ".join(f"{c} {t:.2f}" for c, t in p["categories"].items()) or "the tagger's defaults"
        lines.append(f"- {name}: {cats}" + (f"; own thresholds for {len(p['tags'])} tags" if p["tags"] else ""))
    lines.append("- categories not listed use the tagger's defaults (general 0.35, character 0.85)")
    lines += ["", "## Evaluation", "",
              "macro/micro F1 at the balanced thresholds (and at 0.5), mAP = mean over tags of average precision, "
              "top-1 = the highest-scoring tag is a true tag.", "",
              "| split | images | mAP | macro-F1 | micro-F1 | macro-F1@0.5 | top-1 |", "|---|---|---|---|---|---|---|"]
    for split, m in meta["metrics"].items():
        if isinstance(m, dict) and "map" in m:
            lines.append(f"| {split} | {m['images']} | {m['map']:.4f} | {m['macro_f1']:.4f} | {m['micro_f1']:.4f} | "
                         f"{m['macro_f1@0.5']:.4f} | {m['top1']:.4f} |")
    if "int8" in meta:
        q = meta["int8"]
        lines += ["", f"`model_int8.onnx` (dynamic int8): {q['speedup']:.2f}x the float model's speed on this machine's CPU; "
                      f"val mAP {q['val_map']:.4f} vs {q['float_val_map']:.4f}, max |prob diff| {q['max_abs_diff']:.3f}."]
    lines += ["", "Validation figures are development figures: the split also chose the thresholds and the best epoch. "
                  "Export never reads the test split; measure it once, for the model you keep: "
                  "`animetagnet evaluate --model MODEL --data DATASET --split test --save-metrics`."]
    return "\n".join(lines) + "\n"


def comfyui_copy(out_dir: Path, comfy_dir: Path, name: str, force: bool) -> list[Path]:
    """ComfyUI-WD14-Tagger's layout: flat NAME.onnx + NAME.csv in its models folder."""
    comfy_dir.mkdir(parents=True, exist_ok=True)
    pairs = [(out_dir / "model.onnx", comfy_dir / f"{name}.onnx"), (out_dir / "selected_tags.csv", comfy_dir / f"{name}.csv")]
    if not force:
        for _, dst in pairs:
            if dst.exists():
                raise TrainingError(f"{dst} exists; pass --force to overwrite")
    for src, dst in pairs:
        tmp = dst.with_name(f".{dst.name}.tmp")
        shutil.copyfile(src, tmp)
        tmp.replace(dst)
    return [dst for _, dst in pairs]


def export(run_dir, out_dir, dataset_dir=None, weights: str = "best", int8: bool = False,
           parity_images: int = 16, max_eval_images: int = 0, force: bool = False, log=None,
           input_size: int | None = None, comfyui_dir=None, flip_average: bool = False,
           network_size: int | None = None) -> dict:
    """Export a run. `input_size` (e.g. 448 for kohya): the ONNX input size, resized in the graph to
    the network size; `network_size`: the size the network runs at (default: the trained size; a
    convolutional network runs at any size, and a larger one offsets random-crop training's zoom);
    `comfyui_dir`: also write NAME.onnx + NAME.csv there (NAME: the model directory's name);
    `flip_average`: the graph outputs the mean over the image and its mirror (twice the compute)."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if (out_dir / "model.onnx").exists() and not force:
        raise TrainingError(f"{out_dir}/model.onnx exists; pass --force to overwrite")
    cfg, run_vocab, net, wmeta = load_run(run_dir, weights)
    trained_size = cfg.model.image_size
    network_size = network_size or trained_size
    size = input_size or network_size
    for flag, px in (("--network-size", network_size), ("--input-size", size)):
        if not 16 <= px <= 4096:
            raise TrainingError(f"{flag} {px}: expected 16..4096 pixels")
    if dataset_dir is None:
        run_info = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").is_file() else {}
        dataset_dir = run_info.get("dataset")
        if not dataset_dir:
            raise TrainingError(f"{run_dir}: no dataset recorded; pass --dataset")
    ds = data.open_dataset(dataset_dir)
    if ds.vocab.names != run_vocab.names and set(ds.vocab.names) <= set(run_vocab.names):
        ds = data.with_vocabulary(ds, run_vocab)  # a fine-tuned run: the checkpoint's tags plus the dataset's
    if ds.vocab.names != run_vocab.names:
        raise TrainingError(f"{dataset_dir}: vocabulary differs from the run's ({len(ds.vocab)} vs {len(run_vocab)} tags)")
    rating_idx = set(run_vocab.indices(Category.RATING).tolist())
    rating_positives = sum(int(k) in rating_idx for lab in ds.split("train").labels for k in lab) if "train" in ds.splits else 0
    plan = wdgraph.plan_labels(ds.vocab, rating_positives)  # refuses a label file that breaks the WD layout
    vocab, offset = plan.vocab, len(plan.vocab) - len(run_vocab)
    if plan.added_ratings:
        log("the run's label file has no rating rows (prepared before the WD layout): four constant rating rows added")
    if not plan.ratings_trained:
        log(f"ratings: the dataset has no rating labels; rows 0-3 output {wdgraph.UNTRAINED_RATING_VALUE} and are marked untrained")
    warning = extra_category_warning(vocab)
    if warning:
        log(f"warning: {warning}")

    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / "model.onnx"
    graph = wdgraph.ExportGraph(net, plan, network_size, size, flip_average=flip_average).eval()
    resize_note = f" (trained at {trained_size}px)" if network_size != trained_size else ""
    resize_note += f", input {size}px resized in the graph" if size != network_size else ""
    resize_note += ", mean over the image and its mirror" if flip_average else ""
    log(f"exporting {cfg.model.backbone}@{network_size}{resize_note} ({len(vocab)} tags) to {onnx_path}")
    atomic_write_bytes(onnx_path, to_onnx_bytes(graph, size))
    import onnx

    onnx.checker.check_model(str(onnx_path))
    sess = session(onnx_path)

    # Parity on real images, through the inference preprocessing.
    val = ds.split("val")
    n_par = max(1, min(parity_images, len(val.paths)))
    par_batch = load_images(val.paths[:n_par], size)
    with torch.no_grad():
        ref, ref_emb = (t.numpy() for t in graph(torch.from_numpy(par_batch)))
        # The graph's own head path must be the network's forward, rows mapped by the label plan.
        x = graph.resize_input(torch.from_numpy(par_batch)) if graph.resize else torch.from_numpy(par_batch)
        direct = torch.sigmoid(net(x))
        if flip_average:
            direct = (direct + torch.sigmoid(net(x.flip(2)))) / 2
        direct = direct.numpy()
    keep = graph.keep.numpy() > 0
    if np.abs(ref[:, offset:][:, keep] - direct[:, keep]).max() > PARITY_TOLERANCE:
        raise TrainingError("export: the graph's head path differs from the network's forward (unsupported timm head?)")
    got_all = sess.run(None, {sess.get_inputs()[0].name: par_batch})
    got, got_emb = got_all[0], got_all[1]
    diff = float(max(np.abs(ref - got).max(), np.abs(ref_emb - got_emb).max()))
    log(f"parity onnxruntime vs torch on {n_par} real images: max |diff| {diff:.2e} (bound {PARITY_TOLERANCE:.0e})")
    if not diff <= PARITY_TOLERANCE:
        raise TrainingError(f"export parity check failed: max |onnx - torch| = {diff:.3e} > {PARITY_TOLERANCE:.0e}")

    # Thresholds and figures from the exported model itself, on the inference preprocessing.
    # Val only: export is run on every candidate, and a test figure printed each time would be
    # looked at and tuned on; the test split is read once, by `evaluate --split test`.
    sp = ds.split("val")
    n = len(sp.paths) if not max_eval_images else min(max_eval_images, len(sp.paths))
    vimgs = load_images(sp.paths[:n], size)
    vp, vt = run_onnx(sess, vimgs), targets_of(sp, len(vocab), offset)[:n]
    presets = pick_thresholds(vp, vt, vocab)
    thresholds = calibration.thresholds_entry(presets, info={
        "by": "animetagnet export", "split": "val", "images": int(len(vp)),
        "min_support": calibration.DEFAULT_MIN_SUPPORT})
    th = threshold_vector(presets["balanced"], vocab)
    val_figures = v = split_metrics(vp, vt, th)
    log(f"val: mAP {v['map']:.4f}, macro-F1 {v['macro_f1']:.4f} (at 0.5: {v['macro_f1@0.5']:.4f}), "
        f"micro-F1 {v['micro_f1']:.4f}, top-1 {v['top1']:.4f} on {v['images']} images")

    history = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines() if l.strip()] \
        if (run_dir / "metrics.jsonl").is_file() else []
    meta = {
        "format_version": 1,
        "name": cfg.name,
        "outputs": "probabilities",
        "preprocessing": {"size": size, "layout": "NHWC", "channels": "BGR", "range": [0, 255],
                          "pad": "white-centred-square", "resample": "bicubic",
                          **({"network_size": network_size} if size != network_size or network_size != trained_size else {}),
                          **({"in_graph_resize": "Pillow BICUBIC weights (antialiased), two matrix products"}
                             if size != network_size else {}),
                          **({"trained_size": trained_size} if network_size != trained_size else {}),
                          # the outputs are the mean over the image and its mirror, computed in the graph
                          **({"test_time": wdgraph.FLIP_AVERAGE} if flip_average else {})},
        "labels": plan.metadata(),
        "embedding": {"output": EMBEDDING_NAME, "dim": int(got_emb.shape[1]),
                      "what": "pooled backbone features before the classifier head"},
        "thresholds": thresholds,
        "provenance": {
            "dataset": str(Path(dataset_dir).resolve()),
            "run": str(run_dir.resolve()),
            "backbone": cfg.model.backbone,
            "init_from": cfg.model.init_from,
            "weights": weights,
            # The torch backend runs an export from these weights; the hash tells it they are still the exported ones.
            "weights_sha256": sha256_file(run_dir / "checkpoints" / f"{weights}.safetensors"),
            "epoch": wmeta.get("epoch"),
            "epochs_trained": len(history),
            "selected_by": f"val {wmeta.get('metric')}" if wmeta.get("metric") else None,
            "ema": wmeta.get("ema"),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__,
            "config": config_mod.to_dict(cfg),
        },
        "metrics": {"split": "val", "threshold_preset": "balanced", "val": val_figures,
                    "micro_f1": val_figures["micro_f1"], "macro_f1": val_figures["macro_f1"], "map": val_figures["map"]},
        "parity": {"images": n_par, "max_abs_diff": diff, "tolerance": PARITY_TOLERANCE},
    }

    if int8:
        meta["int8"] = export_int8(onnx_path, out_dir / "model_int8.onnx", vimgs, vp, vt, th, val_figures, log)

    vocab.write_csv(out_dir / "selected_tags.csv")  # counts from the dataset's training split
    calibration.write_metadata(out_dir, meta)
    atomic_write_text(out_dir / "README.md", model_card(meta, vocab))
    if comfyui_dir is not None:
        for path in comfyui_copy(out_dir, Path(comfyui_dir), out_dir.resolve().name, force):
            log(f"ComfyUI-WD14-Tagger layout: {path}")
    if (run_dir / "metrics.jsonl").is_file():
        shutil.copyfile(run_dir / "metrics.jsonl", out_dir / ".training_metrics.jsonl.tmp")
        (out_dir / ".training_metrics.jsonl.tmp").replace(out_dir / "training_metrics.jsonl")
    return meta
