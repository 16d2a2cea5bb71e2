#!/usr/bin/env python3
"""The review loop, measured: weak model -> captions -> reviewer corrects a sample over HTTP -> fine-tune -> better on the rest.

Data: multi-character scenes made from the shared faces (../shared/tools/make_scenes.py; true
captions = the characters pasted). Steps (each skipped when its output exists in WORK):
1. a deliberately weak model: resnet10t@96, a few epochs on a few hundred training scenes from
   which two characters (HELD_OUT) were left out, so the model does not know them at all;
2. the review folder: SAMPLE scenes of the test split, captioned by the weak model
   (`animetagnet tag --format txt`); the other test scenes are the REST, never touched;
3. the reviewer: `animetagnet review SAMPLE --model weak` as a real server on 127.0.0.1, and a
   script that, for every image, accepts or rejects each model-only tag against the true
   caption, rejects wrong caption tags, adds the missing ones (the held-out characters come in
   here) and confirms; all through the HTTP API;
4. `animetagnet review-report` (suggestion precision/recall as judged, thresholds re-calibrated
   into a copy of the weak model), `prepare` on the reviewed folder as it is, and
   `animetagnet train --init-from models/weak` (exported model: its run's weights and vocabulary,
   plus the new tags), then export;
5. evaluation on the REST against the true captions: mAP and macro-F1 (each model at its own
   default thresholds) of the weak model, the weak model with review-calibrated thresholds, and
   the fine-tuned one; over all characters and over the weak model's own vocabulary.

Usage: python benchmarks/bench_review_loop.py --scenes /work/review-scenes --work /work/review-bench
Writes WORK/results.json and prints a markdown table for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

HELD_OUT = ("tsukumo_sana", "ceres_fauna")


def env() -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + e.get("PYTHONPATH", "")
    return e


def cli(*args: str, log: Path | None = None) -> float:
    """Run `animetagnet ARGS` (nice'd: the machine is shared); returns the wall time."""
    t0 = time.perf_counter()
    cmd = ["nice", "-n", "15", sys.executable, "-m", "animetagnet", *args]
    print("+ animetagnet " + " ".join(args), file=sys.stderr, flush=True)
    with open(log, "w") if log else open(os.devnull, "w") as out:
        r = subprocess.run(cmd, env=env(), stdout=out if log else None, stderr=subprocess.STDOUT if log else None)
    if r.returncode not in (0, 1):
        raise SystemExit(f"animetagnet {' '.join(args)} failed ({r.returncode}); see {log}")
    return time.perf_counter() - t0


def read_tags(p: Path) -> list[str]:
    text = p.read_text(encoding="utf-8") if p.is_file() else ""
    return [t.strip() for t in text.replace("\n", ",").split(",") if t.strip()]


def copy_scene(src: Path, dst_dir: Path, with_caption: bool) -> None:
    dst_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst_dir / src.name)
    if with_caption:
        shutil.copyfile(src.with_suffix(".txt"), dst_dir / (src.stem + ".txt"))


def build_weak(scenes: Path, work: Path, n_train: int, epochs: int, size: int, table: Path, timings: dict) -> Path:
    model = work / "models" / "weak"
    if (model / "model.onnx").is_file():
        return model
    folder = work / "weak-train"
    if folder.exists():
        shutil.rmtree(folder)
    picked = 0
    for img in sorted((scenes / "train").glob("*.jpg")):
        if any(t in HELD_OUT for t in read_tags(img.with_suffix(".txt"))):
            continue
        copy_scene(img, folder, True)
        picked += 1
        if picked >= n_train:
            break
    ds = work / "datasets" / "weak"
    cli("prepare", str(folder), "--out", str(ds), "--tag-table", str(table), "--overwrite", "--no-plot", "-q",
        log=work / "logs" / "prepare-weak.log")
    timings["weak_train_s"] = cli("train", str(ds), "--out", str(work / "runs" / "weak"), "--config",
                                  str(ROOT / "configs" / "faces-cpu.yaml"), "--set", f"train.epochs={epochs}",
                                  "--set", f"model.image_size={size}", "--set", "data.batch_size=32", "--set", "train.threads=2", "--set", "data.workers=1",
                                  "--no-progress", log=work / "logs" / "train-weak.log")
    cli("export", str(work / "runs" / "weak"), "--out", str(model), "--parity-images", "4",
        log=work / "logs" / "export-weak.log")
    return model


def adopt_run(run: Path, work: Path) -> Path:
    """Use an existing (partly trained) run as the weak model: copied, then exported from the copy."""
    model = work / "models" / "weak"
    if (model / "model.onnx").is_file():
        return model
    dst = work / "runs" / "weak"
    (dst / "checkpoints").mkdir(parents=True, exist_ok=True)
    for name in ("config.yaml", "selected_tags.csv", "run.json", "metrics.jsonl", "metrics.csv"):
        if (run / name).is_file():
            shutil.copyfile(run / name, dst / name)
    shutil.copyfile(run / "checkpoints" / "best.safetensors", dst / "checkpoints" / "best.safetensors")
    # A run from another branch may carry recipe keys this one lacks (augmentation only): drop them.
    from animetagnet_train import config as config_mod

    text = (dst / "config.yaml").read_text()
    for _ in range(10):
        try:
            config_mod.load(dst / "config.yaml")
            break
        except Exception as exc:  # noqa: BLE001 - "unknown key(s) NAME"
            msg = str(exc)
            if "unknown key(s)" not in msg:
                raise
            key = msg.split("unknown key(s)", 1)[1].split(";")[0].strip()
            text = "\n".join(l for l in text.splitlines() if not l.strip().startswith(key + ":")) + "\n"
            (dst / "config.yaml").write_text(text)
            print(f"note: dropped recipe key {key!r} unknown to this branch", file=sys.stderr)
    cli("export", str(dst), "--out", str(model), "--parity-images", "4", "--max-eval-images", "300",
        log=work / "logs" / "export-weak.log")
    return model


def build_folder(scenes: Path, work: Path, n_sample: int, n_rest: int, weak: Path) -> tuple[Path, Path, dict]:
    """SAMPLE (to review, weak captions) and REST (held out); true captions in WORK/truth.json."""
    sample, rest = work / "folder" / "sample", work / "folder" / "rest"
    truth_file = work / "truth.json"
    if truth_file.is_file() and sample.is_dir():
        return sample, rest, json.loads(truth_file.read_text())
    for d in (sample, rest):
        if d.exists():
            shutil.rmtree(d)
    truth: dict[str, list[str]] = {}
    imgs = sorted((scenes / "test").glob("*.jpg"))
    for i, img in enumerate(imgs[: n_sample + n_rest]):
        target = sample if i < n_sample else rest
        copy_scene(img, target, False)
        truth[f"{target.name}/{img.name}"] = read_tags(img.with_suffix(".txt"))
    cli("tag", str(sample), "--model", str(weak), "--format", "txt", "--on-existing", "overwrite", "--no-progress",
        log=work / "logs" / "tag-sample.log")
    truth_file.write_text(json.dumps(truth, indent=1))
    return sample, rest, truth


def review_over_http(sample: Path, weak: Path, truth: dict, work: Path, table: Path) -> dict:
    """The programmatic reviewer: accept/reject/add through the API until each caption is the truth."""
    from review_helpers import ReviewServer

    done_file = work / "review-done.json"
    if done_file.is_file():
        return json.loads(done_file.read_text())
    counts = {"images": 0, "requests": 0, "accepted": 0, "rejected": 0, "added": 0, "removed": 0, "confirmed": 0}
    t0 = time.perf_counter()
    srv = ReviewServer(sample, weak, "--tag-table", str(table))
    try:
        srv.wait(timeout=900)
        ids = srv.get("/v1/review/items", params={"limit": 1000}).json()["ids"]
        for item_id in ids:
            it = srv.get(f"/v1/review/items/{item_id}").json()
            counts["requests"] += 1
            want = set(truth[f"sample/{it['name']}"])

            def act(op, tag):
                nonlocal it
                r = srv.post(f"/v1/review/items/{item_id}/edit", json={"version": it["version"], "op": op, "tag": tag})
                counts["requests"] += 1
                if r.status_code != 200:
                    raise SystemExit(f"review API refused {op} {tag} on {it['name']}: {r.text}")
                it = r.json()

            for m in [m for m in it["model"] if m["mark"] == "model"]:
                if m["tag"] in want:
                    act("accept", m["tag"]); counts["accepted"] += 1
                else:
                    act("reject", m["tag"]); counts["rejected"] += 1
            for c in [c for c in it["caption"] if c["tag"] not in want]:
                act("reject", c["tag"]); counts["removed"] += 1
            have = {c["tag"] for c in it["caption"]}
            for t in sorted(want - have):
                act("add", t); counts["added"] += 1
            r = srv.post(f"/v1/review/items/{item_id}/edit", json={"version": it["version"], "op": "confirm"})
            counts["requests"] += 1
            counts["confirmed"] += r.status_code == 200
            counts["images"] += 1
    finally:
        srv.stop()
    counts["seconds"] = round(time.perf_counter() - t0, 1)
    for img in sorted(sample.glob("*.jpg")):  # the folder on disk is now the truth
        assert set(read_tags(img.with_suffix(".txt"))) == set(truth[f"sample/{img.name}"]), img
    done_file.write_text(json.dumps(counts, indent=1))
    return counts


def evaluate(model_dir: Path, rest: Path, truth: dict, tags: list[str], weak_tags: set[str]) -> dict:
    from animetagnet import Tagger
    from animetagnet.evaluation.metrics import per_tag_average_precision, prf

    tagger = Tagger(model_dir, device="cpu")
    sel = tagger.selector()
    names = tagger.vocab.names
    col = {n: i for i, n in enumerate(names)}
    paths = sorted(str(p) for p in rest.glob("*.jpg"))
    scores = np.zeros((len(paths), len(tags)), dtype=np.float32)
    pred = np.zeros((len(paths), len(tags)), dtype=bool)
    y = np.zeros((len(paths), len(tags)), dtype=bool)
    row = {p: i for i, p in enumerate(paths)}
    for loaded, probs in tagger.iter_probabilities(paths):
        i = row[loaded.path]
        for j, t in enumerate(tags):
            if t in col:
                scores[i, j] = probs[col[t]]
                pred[i, j] = probs[col[t]] >= sel.thresholds[col[t]]
    for p, i in row.items():
        for t in truth[f"rest/{Path(p).name}"]:
            y[i, tags.index(t)] = True
    tagger.close()
    ap = per_tag_average_precision(y, scores)
    tp = (y & pred).sum(0); fp = (~y & pred).sum(0); fn = (y & ~pred).sum(0)
    _, _, f1 = prf(tp, fp, fn)
    sup = y.sum(0) > 0
    own = np.array([t in weak_tags for t in tags]) & sup
    new = np.array([t not in weak_tags for t in tags]) & sup
    ap0 = np.nan_to_num(ap, nan=0.0)
    return {"images": len(paths), "map_all": float(ap0[sup].mean()), "macro_f1_all": float(f1[sup].mean()),
            "map_known": float(ap0[own].mean()), "macro_f1_known": float(f1[own].mean()),
            "map_new": float(ap0[new].mean()) if new.any() else None,
            "macro_f1_new": float(f1[new].mean()) if new.any() else None,
            "micro_f1_all": float(prf(tp[sup].sum(), fp[sup].sum(), fn[sup].sum())[2])}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", default="/work/review-scenes", help="make_scenes.py output (train/ and test/)")
    ap.add_argument("--work", default="/work/review-bench")
    ap.add_argument("--weak-train", type=int, default=1000, help="training scenes of the weak model")
    ap.add_argument("--weak-epochs", type=int, default=3)
    ap.add_argument("--image-size", type=int, default=128, help="network input of the weak model (and the fine-tune)")
    ap.add_argument("--sample", type=int, default=400, help="scenes the reviewer corrects")
    ap.add_argument("--rest", type=int, default=800, help="held-out scenes the models are measured on")
    ap.add_argument("--base-run", metavar="RUN_DIR", help="an existing partly trained scenes run as the weak model "
                    "(instead of training one); its vocabulary has every character")
    ap.add_argument("--finetune-lr", type=float, default=0.001)
    ap.add_argument("--finetune-epochs", type=int, default=4)
    ap.add_argument("--control", action="store_true",
                    help="also fine-tune on the weak model's unreviewed captions of the same scenes")
    args = ap.parse_args()
    scenes, work = Path(args.scenes), Path(args.work)
    (work / "logs").mkdir(parents=True, exist_ok=True)
    table = Path(os.environ.get("ANIMETAGNET_DATA", ROOT.parent / "shared" / "data")) / "tags" / "danbooru_tags.csv"
    timings: dict = {}
    if args.base_run:
        weak = adopt_run(Path(args.base_run), work)
    else:
        weak = build_weak(scenes, work, args.weak_train, args.weak_epochs, args.image_size, table, timings)
    sample, rest, truth = build_folder(scenes, work, args.sample, args.rest, weak)
    review = review_over_http(sample, weak, truth, work, table)

    calibrated = work / "models" / "weak-reviewed"
    if not (calibrated / "model.onnx").is_file():
        cli("review-report", str(sample), "--model", str(weak), "--out", str(calibrated), "--json",
            str(work / "review-report.json"), "--min-support", "5", log=work / "logs" / "review-report.log")
    ft = work / "models" / "finetuned"
    if not (ft / "model.onnx").is_file():
        ds = work / "datasets" / "reviewed"
        cli("prepare", str(sample), "--out", str(ds), "--tag-table", str(table), "--overwrite", "--no-plot", "-q",
            log=work / "logs" / "prepare-reviewed.log")
        timings["finetune_s"] = cli("train", str(ds), "--out", str(work / "runs" / "finetuned"), "--init-from", str(weak),
                                    "--set", f"train.epochs={args.finetune_epochs}", "--set", "optim.warmup_epochs=0",
                                    "--set", f"optim.lr={args.finetune_lr}", "--set", "data.batch_size=32",
                                    "--no-progress", log=work / "logs" / "train-finetuned.log")
        cli("export", str(work / "runs" / "finetuned"), "--out", str(ft), "--parity-images", "4",
            log=work / "logs" / "export-finetuned.log")

    control = work / "models" / "finetuned-unreviewed"
    if args.control and not (control / "model.onnx").is_file():
        # The same fine-tune on the weak model's own captions of the same scenes, unreviewed:
        # what the correction is worth beyond simply training longer on more images.
        raw = work / "folder" / "sample-unreviewed"
        if raw.exists():
            shutil.rmtree(raw)
        for img in sorted(sample.glob("*.jpg")):
            copy_scene(img, raw, False)
        cli("tag", str(raw), "--model", str(weak), "--format", "txt", "--on-existing", "overwrite", "--no-progress",
            log=work / "logs" / "tag-unreviewed.log")
        ds = work / "datasets" / "unreviewed"
        cli("prepare", str(raw), "--out", str(ds), "--tag-table", str(table), "--overwrite", "--no-plot", "-q",
            log=work / "logs" / "prepare-unreviewed.log")
        cli("train", str(ds), "--out", str(work / "runs" / "unreviewed"), "--init-from", str(weak),
            "--set", f"train.epochs={args.finetune_epochs}", "--set", "optim.warmup_epochs=0",
            "--set", f"optim.lr={args.finetune_lr}", "--set", "data.batch_size=32", "--no-progress",
            log=work / "logs" / "train-unreviewed.log")
        cli("export", str(work / "runs" / "unreviewed"), "--out", str(control), "--parity-images", "4",
            log=work / "logs" / "export-unreviewed.log")

    from animetagnet.vocab import Vocabulary

    tags = sorted({t for v in truth.values() for t in v})
    weak_tags = set(Vocabulary.read_csv(weak / "selected_tags.csv").names)
    results = {"held_out_characters": list(HELD_OUT), "review": review, "timings": timings,
               "report": {k: v for k, v in json.loads((work / "review-report.json").read_text()).items()
                          if k in ("judged_images", "micro", "macro", "verdicts", "tags_not_in_model")},
               "models": {}}
    models = [("weak", weak), ("weak + review thresholds", calibrated), ("fine-tuned on the review", ft)]
    if (control / "model.onnx").is_file():
        models.append(("control: fine-tuned on unreviewed weak captions", control))
    for name, m in models:
        results["models"][name] = evaluate(m, rest, truth, tags, weak_tags)
    (work / "results.json").write_text(json.dumps(results, indent=1))
    n_rest = next(iter(results["models"].values()))["images"]
    n_new = sum(t not in weak_tags for t in tags)
    print(f"\nREST: {n_rest} scenes never reviewed; {len(tags)} characters ({n_new} unknown to the weak model)\n")
    print(f"| model | mAP (all) | macro-F1 (all) | mAP (known {len(tags) - n_new}) | macro-F1 (known) | "
          f"mAP ({n_new} new) | macro-F1 (new) |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results["models"].items():
        fmt = lambda v: "—" if v is None else f"{v:.3f}"  # noqa: E731
        print(f"| {name} | {fmt(r['map_all'])} | {fmt(r['macro_f1_all'])} | {fmt(r['map_known'])} | "
              f"{fmt(r['macro_f1_known'])} | {fmt(r['map_new'])} | {fmt(r['macro_f1_new'])} |")
    print(json.dumps({"review": review, "timings": timings, "report": results["report"]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
