"""Runs a model bundle over a dataset split and lines its scores up with the dataset's tags, by name.

Tags of the dataset that the model lacks get no scores (`covered` False: never predicted);
model tags the dataset lacks are ignored; both are counted. Only the ONNX bundle is used
(through `animetagnet.Tagger`), so any WD-format model evaluates the same way as ours.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..bundle import MODEL_FILE, ModelBundle, ModelMetadata, resolve_model
from ..errors import ModelError, UsageError
from ..options import ModelOptions
from ..postprocess import TagSelector, ThresholdOptions, mcut_floor, mcut_threshold
from ..vocab import Category, Vocabulary
from .dataset import SplitData


def find_model_dir(model_or_run: str) -> Path:
    """A bundle directory from a bundle path, a model.onnx path, a Hub id or a training run directory.

    A run directory is any directory without model.onnx of its own that holds an exported
    bundle below it (RUN_DIR/*/model.onnx or RUN_DIR/*/*/model.onnx); `export/` is preferred,
    else the most recently written one.
    """
    p = Path(model_or_run).expanduser()
    if p.is_dir() and not (p / MODEL_FILE).is_file():
        found = sorted(p.glob(f"*/{MODEL_FILE}")) or sorted(p.glob(f"*/*/{MODEL_FILE}"))
        found = [f for f in found if (f.parent / "selected_tags.csv").is_file()]
        if not found:
            raise ModelError(
                f"{p}: neither a model bundle (model.onnx + selected_tags.csv) nor a training run "
                "directory holding an exported bundle (RUN_DIR/export/model.onnx); run `animetagnet export` first"
            )
        preferred = [f for f in found if f.parent.name == "export"]
        pick = preferred[0] if preferred else max(found, key=lambda f: f.stat().st_mtime)
        return pick.parent
    return resolve_model(model_or_run)


@dataclass
class EvalData:
    """One model's scores on one split, aligned to the dataset's non-rating tags."""

    model_name: str
    model_dir: str
    dataset_dir: str
    split: str
    ids: list[str]
    images: list[str]
    tag_names: list[str]
    categories: np.ndarray  # dataset categories [T]
    model_categories: np.ndarray  # the model's category for covered tags (else the dataset's) [T]
    train_counts: np.ndarray  # `count` column of the dataset's selected_tags.csv [T]
    y_true: np.ndarray  # bool [N, T]
    scores: np.ndarray  # float32 [N, T]; 0 where not covered
    covered: np.ndarray  # bool [T]
    model_index: np.ndarray  # int [T], -1 where not covered
    mcut: dict[str, np.ndarray]  # category label -> per-image MCut threshold [N]
    model_vocab: Vocabulary
    rating_names: list[str] = field(default_factory=list)
    rating_true: list[str | None] = field(default_factory=list)
    rating_pred: list[str | None] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    model_only_tags: int = 0
    unknown_labels: int = 0
    device: str = ""
    seconds: float = 0.0

    @property
    def missing_tags(self) -> list[str]:
        return [n for n, c in zip(self.tag_names, self.covered) if not c]

    def thresholds(self, options: ThresholdOptions | None, preset: dict | None) -> np.ndarray:
        """Per-column thresholds exactly as `animetagnet tag` resolves them (inf where not covered)."""
        sel = TagSelector(self.model_vocab, options or ThresholdOptions(), preset or {})
        thr = np.full(len(self.tag_names), np.inf, dtype=np.float32)
        cov = self.covered
        thr[cov] = sel.thresholds[self.model_index[cov]]
        return thr

    def mcut_matrix(self, base: np.ndarray) -> np.ndarray:
        """[N, T] thresholds of the MCut rule (general, and character with its floor); `base` elsewhere."""
        thr = np.broadcast_to(base, self.scores.shape).copy()
        for label, per_image in self.mcut.items():
            cols = np.flatnonzero((self.model_categories == int(Category[label.upper()])) & self.covered)
            thr[:, cols] = per_image[:, None]
        return thr


def run_model(
    model_dir: str | Path,
    split: SplitData,
    *,
    options: ModelOptions = ModelOptions(),
    progress: bool = True,
    log=None,
) -> EvalData:
    """Score every image of the split with the bundle at `model_dir`, loaded with `options`
    (device, threads, batch size, max pixels, exact decoding, workers; its `model` is ignored)."""
    from ..progress import Progress

    log = log or (lambda msg: print(f"animetagnet: {msg}", file=sys.stderr))
    tagger = options.replace(model=str(model_dir)).load()
    mv = tagger.vocab
    ds = split.vocab
    cols = [i for i, t in enumerate(ds) if t.category != Category.RATING]
    names = [ds[i].name for i in cols]
    if not names:
        raise UsageError(f"{split.dataset_dir}: the dataset vocabulary has no tags besides ratings; nothing to evaluate")
    model_index = np.array([(-1 if mv.get_index(n) is None else mv.get_index(n)) for n in names], dtype=np.int64)
    covered = model_index >= 0
    ds_cats = np.array([int(ds[i].category) for i in cols], dtype=np.int16)
    model_cats = ds_cats.copy()
    model_cats[covered] = mv.categories[model_index[covered]]
    col_of = {n: j for j, n in enumerate(names)}
    ds_names = set(ds.names)
    model_only = sum(1 for t in mv if t.category != Category.RATING and t.name not in ds_names)

    rating_ds = [t.name for t in ds if t.category == Category.RATING]
    # A model whose rating rows were never trained (WD layout only) predicts no rating.
    rating_model_idx = mv.indices(Category.RATING) if tagger.bundle.metadata.ratings_trained else np.zeros(0, np.int64)
    rating_model = [mv.names[i] for i in rating_model_idx]
    # The categories `animetagnet tag --mcut-general --mcut-character` cuts per image.
    mcut_groups = {cat.label: mv.indices(cat) for cat in (Category.GENERAL, Category.CHARACTER)}
    mcut_groups = {label: idx for label, idx in mcut_groups.items() if idx.size}

    log(f"{tagger.describe()}; {len(split.records)} images of {split.dataset_dir.name}/{split.split}; "
        f"{int(covered.sum())}/{len(names)} dataset tags in the model")
    by_path = {}
    for k, rec in enumerate(split.records):
        by_path.setdefault(rec.image, []).append(k)

    rows_scores: list[np.ndarray] = []
    keep: list[int] = []
    mc: dict[str, list[float]] = {label: [] for label in mcut_groups}
    r_pred: list[str | None] = []
    failed: list[tuple[str, str]] = []
    seen: dict[str, int] = {}
    bar = Progress(len(split.records), enabled=None if progress else False, label="evaluating")
    start = time.perf_counter()
    try:
        for loaded, probs in tagger.iter_probabilities([r.image for r in split.records], workers=options.workers):
            # Paths can repeat in a split; the n-th result for a path is its n-th record.
            n = seen.get(loaded.path, 0)
            seen[loaded.path] = n + 1
            k = by_path[loaded.path][n]
            bar.update(1, failed=int(probs is None))
            if probs is None:
                failed.append((loaded.path, loaded.error or "failed"))
                continue
            keep.append(k)
            row = np.zeros(len(names), dtype=np.float32)
            row[covered] = probs[model_index[covered]]
            rows_scores.append(row)
            for label, idx in mcut_groups.items():
                mc[label].append(mcut_threshold(probs[idx], mcut_floor(label)))
            if rating_model_idx.size:
                r_pred.append(rating_model[int(np.argmax(probs[rating_model_idx]))])
            else:
                r_pred.append(None)
    finally:
        bar.close()
    seconds = time.perf_counter() - start
    device_name = str(tagger.device)
    tagger.close()
    for path, err in failed:
        log(f"skipped {path}: {err}")
    if not keep:
        raise ModelError(f"no image of the {split.split} split could be read ({len(failed)} failed)")

    recs = [split.records[k] for k in keep]
    y_true = np.zeros((len(recs), len(names)), dtype=bool)
    rating_true: list[str | None] = []
    for i, rec in enumerate(recs):
        rt = None
        for t in rec.tags:
            j = col_of.get(t)
            if j is not None:
                y_true[i, j] = True
            elif t in rating_ds and rt is None:
                rt = t
        rating_true.append(rt)
    mcut = {label: np.array(values) for label, values in mc.items()}
    counts = np.array([ds[i].count for i in cols], dtype=np.int64)
    bundle = ModelBundle.load(model_dir)
    return EvalData(
        model_name=bundle.name, model_dir=str(model_dir), dataset_dir=str(split.dataset_dir), split=split.split,
        ids=[r.id for r in recs], images=[r.image for r in recs], tag_names=names, categories=ds_cats,
        model_categories=model_cats, train_counts=counts, y_true=y_true,
        scores=np.stack(rows_scores) if rows_scores else np.zeros((0, len(names)), np.float32),
        covered=covered, model_index=model_index, mcut=mcut, model_vocab=mv,
        rating_names=sorted(set(rating_ds) | set(rating_model)),
        rating_true=rating_true if rating_ds else [], rating_pred=r_pred if rating_ds else [],
        failed=failed, model_only_tags=model_only, unknown_labels=sum(split.unknown_labels.values()),
        device=device_name, seconds=seconds,
    )


def load_metadata(model_dir: str | Path) -> ModelMetadata:
    return ModelBundle.load(model_dir).metadata
