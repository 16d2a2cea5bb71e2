"""Turns one model's scores on a split into the full, labelled metrics dictionary (what metrics.json holds)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..bundle import ModelMetadata
from ..postprocess import DEFAULT_CHARACTER_THRESHOLD, DEFAULT_GENERAL_THRESHOLD, MCUT_CHARACTER_FLOOR, ThresholdOptions
from ..vocab import Category
from .calibration import PRESET_DESCRIPTIONS
from .metrics import (
    Sweep,
    average_precision,
    candidate_thresholds,
    combine_sweeps,
    example_based,
    f1_at_pr_crossing,
    per_tag_average_precision,
    set_metrics,
    sweep,
    untagged_images,
)
from .runner import EvalData

DEFINITIONS = {
    "prediction": "a tag is predicted when its score >= its threshold",
    "micro": "precision/recall/F1 of the (image, tag) pairs pooled over all evaluated tags",
    "macro": "mean over tags WITH at least one positive in the split of the per-tag precision/recall/F1; "
             "a tag never predicted has precision 0; macro-F1 is the mean of per-tag F1",
    "f1_at_pr": "F1 at the single global threshold where precision = recall (WD model cards' figure): "
                "thresholds are the distinct score values (an approximate grid of 4,096 when there are more); "
                "scanning upwards, the first threshold with P >= R and the one just below it are compared and "
                "the one with the smaller |P - R| is taken. Micro uses micro P and R (WD v2 cards); macro uses "
                "macro P and R with one global threshold (WD v3 cards) and reports the mean per-tag F1 there",
    "map": "mean over tags with positives of average precision (AP = sum of (R_k - R_k-1) * P_k over the "
           "ranking of images by score, as sklearn); a tag the model lacks has AP 0",
    "micro_ap": "AP of all (image, tag) pairs ranked together",
    "example_based": "per image, then averaged over images with at least one true tag: precision "
                     "|T&P|/|P| (0 when nothing predicted), recall |T&P|/|T|, F1, Jaccard |T&P|/|T|P| "
                     "(the multi-label 'accuracy')",
    "label_accuracy": "share of all (image, tag) pairs classified correctly, absent ones included: it is "
                      "high for a model that predicts nothing (the original project's '56% accuracy' kind "
                      "of figure); shown beside the score of predicting nothing, never as a headline",
    "images_without_tags": "images with no true tag (an empty caption): every tag predicted there is false; "
                           "clean = share of them with nothing predicted, per category the false tags and the "
                           "images with at least one (exact match on them is the same as clean)",
    "rating": "single-label accuracy of the argmax over the model's rating outputs, on images with a rating label",
}


@dataclass
class Summary:
    """metrics.json content plus the arrays the report plots."""

    data: EvalData
    result: dict[str, Any]
    thresholds: np.ndarray
    predictions: np.ndarray
    per_tag_f1: np.ndarray
    per_tag_ap: np.ndarray
    sweep_all: Sweep
    sweep_by_category: dict[str, Sweep] = field(default_factory=dict)


def _describe_thresholds(options: ThresholdOptions, metadata: ModelMetadata) -> tuple[str, dict | None]:
    preset_name = options.preset or metadata.thresholds.get("default")
    preset = metadata.preset(options.preset) if (options.preset or preset_name) else {}
    parts = []
    if options.general is not None:
        parts.append(f"general {options.general} (command line)")
    if options.character is not None:
        parts.append(f"character {options.character} (command line)")
    if preset:
        calib = metadata.thresholds.get("calibration") or {}
        where = ""
        if calib.get("split") and preset_name in (calib.get("presets") or {}):
            where = f" (calibrated on {calib['split']} of {str(calib.get('dataset', '?')).rstrip('/').split('/')[-1]}"
            where += f", {calib['images']} images)" if calib.get("images") else ")"
        parts.append(f"model preset '{preset_name}'{where}")
    if not parts:
        parts.append(f"defaults: general {DEFAULT_GENERAL_THRESHOLD}, character {DEFAULT_CHARACTER_THRESHOLD}")
    return "; ".join(parts), preset or None


def _prf_dict(m) -> dict[str, float]:
    return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in m.summary().items()}


def _strategy(data: EvalData, name: str, description: str, thr: np.ndarray) -> dict[str, Any]:
    pred = data.scores >= thr
    m = set_metrics(data.y_true, pred)
    ex = example_based(data.y_true, pred)
    un = untagged_images(data.y_true, pred, data.categories)
    return {"name": name, "description": description, **_prf_dict(m),
            "example_f1": round(ex["f1"], 6), "example_jaccard": round(ex["jaccard"], 6),
            "exact_match": round(ex["exact_match"], 6),
            "untagged_clean": None if un["clean"] is None else round(un["clean"], 6),
            "tags_per_image": round(float(pred.sum(1).mean()), 3)}


def summarize(data: EvalData, metadata: ModelMetadata, options: ThresholdOptions | None = None,
              *, max_candidates: int = 4096) -> Summary:
    options = options or ThresholdOptions()
    source, preset = _describe_thresholds(options, metadata)
    thr = data.thresholds(options, preset)
    y, s, cov = data.y_true, data.scores, data.covered
    pred = s >= thr
    m = set_metrics(y, pred)
    ap = per_tag_average_precision(y, s, cov)
    support = y.sum(0)
    has = support > 0
    ex = example_based(y, pred)
    untagged = untagged_images(y, pred, data.categories)

    # Sweeps see only covered tags' scores; uncovered columns get -inf (never above a threshold).
    s_sweep = np.where(cov[None, :], s, -np.inf).astype(np.float32)
    cand = candidate_thresholds(s[:, cov], y[:, cov], max_candidates) if cov.any() else np.array([0.5])
    micro_ap = average_precision(y[:, cov], s[:, cov], n_positives=int(y.sum())) if cov.any() else 0.0

    categories: dict[str, Any] = {}
    sweeps: dict[str, Sweep] = {}
    for code in sorted(set(int(c) for c in data.categories)):
        label = Category(code).label
        cols = np.flatnonzero(data.categories == code)
        cm = set_metrics(y[:, cols], pred[:, cols])
        cap = ap[cols]
        sweeps[label] = sweep(y, s_sweep, cand, cols)
        cpr = f1_at_pr_crossing(sweeps[label])
        categories[label] = {
            "tags": int(cols.size), "tags_in_model": int(cov[cols].sum()), **_prf_dict(cm),
            "map": round(float(np.nanmean(cap)), 6) if np.any(~np.isnan(cap)) else None,
            "positives": int(support[cols].sum()),
            "micro_f1_at_pr": cpr["micro"], "macro_f1_at_pr": cpr["macro"],
        }

    # Categories partition the tags: the all-tag sweep is their sum (one pass over the columns).
    sw = combine_sweeps(list(sweeps.values()))
    pr = f1_at_pr_crossing(sw)

    base = data.thresholds(ThresholdOptions(), None)
    strategies = [
        _strategy(data, "chosen", f"the thresholds evaluated above ({source})", thr),
        _strategy(data, "defaults", f"general {DEFAULT_GENERAL_THRESHOLD}, character {DEFAULT_CHARACTER_THRESHOLD}, no preset", base),
        _strategy(data, "fixed_0.5", "0.5 for every tag", np.where(cov, 0.5, np.inf).astype(np.float32)),
    ]
    if data.mcut:
        strategies.append(_strategy(data, "mcut", f"MCut per image: general, and character with a {MCUT_CHARACTER_FLOOR} floor "
                                    "(animetagnet tag --mcut-general --mcut-character); others at the chosen thresholds",
                                    data.mcut_matrix(thr)))
    for name, p in (metadata.thresholds.get("presets") or {}).items():
        strategies.append(_strategy(data, f"preset:{name}", PRESET_DESCRIPTIONS.get(name, "model preset"),
                                    data.thresholds(ThresholdOptions(), p)))

    tags = []
    for j, name in enumerate(data.tag_names):
        tags.append({
            "name": name, "category": Category(int(data.categories[j])).label, "in_model": bool(cov[j]),
            "support": int(support[j]), "train_count": int(data.train_counts[j]),
            "predicted": int(m.tp[j] + m.fp[j]), "tp": int(m.tp[j]), "fp": int(m.fp[j]), "fn": int(m.fn[j]),
            "precision": round(float(m.precision[j]), 6), "recall": round(float(m.recall[j]), 6),
            "f1": round(float(m.f1[j]), 6), "ap": None if np.isnan(ap[j]) else round(float(ap[j]), 6),
            "threshold": None if not np.isfinite(thr[j]) else round(float(thr[j]), 6),
        })

    warnings = []
    calib = metadata.thresholds.get("calibration") or {}
    if calib.get("split") == data.split and calib.get("dataset") == data.dataset_dir:
        warnings.append(f"the model's thresholds were calibrated on this very split ({data.split}): "
                        "figures at calibrated thresholds are optimistic; evaluate on a held-out split")
    if len(data.ids) < 200:
        warnings.append(f"only {len(data.ids)} images: every figure here has a wide margin of error")
    if (~cov).any():
        warnings.append(f"{int((~cov).sum())} dataset tags are not in the model and count as never predicted")
    if data.failed:
        warnings.append(f"{len(data.failed)} images could not be read and are left out")

    result: dict[str, Any] = {
        "model": {"name": data.model_name, "path": data.model_dir, "device": data.device},
        "dataset": {"path": data.dataset_dir, "split": data.split, "images": len(data.ids),
                    "images_failed": len(data.failed), "failed": [{"path": p, "error": e} for p, e in data.failed],
                    "seconds": round(data.seconds, 2),
                    "images_per_second": round(len(data.ids) / data.seconds, 2) if data.seconds else None},
        "vocabulary": {
            "dataset_tags": len(data.tag_names), "evaluated_tags": int(cov.sum()),
            "dataset_tags_not_in_model": int((~cov).sum()),
            "dataset_tags_not_in_model_list": data.missing_tags[:200],
            "model_tags_not_in_dataset": data.model_only_tags,
            "tags_with_positives": int(has.sum()),
            "labels_outside_dataset_vocabulary": data.unknown_labels,
        },
        "thresholds": {"source": source},
        "headline": {**_prf_dict(m), "map": round(float(np.nanmean(ap)), 6) if has.any() else None,
                     "micro_ap": round(float(micro_ap), 6),
                     "tags_per_image_true": round(float(y.sum(1).mean()), 3),
                     "tags_per_image_predicted": round(float(pred.sum(1).mean()), 3)},
        "f1_at_pr": pr,
        "example_based": {k: (round(v, 6) if isinstance(v, float) else v) for k, v in ex.items()},
        "images_without_tags": {k: (round(v, 6) if isinstance(v, float) else v) for k, v in untagged.items()},
        "strategies": strategies,
        "categories": categories,
        "rating": rating_metrics(data),
        "tags": tags,
        "definitions": DEFINITIONS,
        "warnings": warnings,
    }
    return Summary(data=data, result=result, thresholds=thr, predictions=pred, per_tag_f1=m.f1,
                   per_tag_ap=ap, sweep_all=sw, sweep_by_category=sweeps)


def rating_metrics(data: EvalData) -> dict[str, Any] | None:
    pairs = [(t, p) for t, p in zip(data.rating_true, data.rating_pred) if t is not None]
    if not pairs:
        return None
    predictable = {n for n in data.model_vocab.names if data.model_vocab.category_of(n) == Category.RATING}
    judged = [(t, p) for t, p in pairs if t in predictable]
    names = sorted({t for t, _ in pairs} | {p for _, p in pairs if p is not None})
    confusion = {t: {p: 0 for p in names} for t in names}
    for t, p in pairs:
        if p is not None:
            confusion[t][p] += 1
    return {
        "images_with_rating": len(pairs),
        "images_judged": len(judged),
        "labels_model_cannot_output": len(pairs) - len(judged),
        "accuracy": round(sum(t == p for t, p in judged) / len(judged), 6) if judged else None,
        "confusion": confusion,
        "note": "rows: true rating, columns: predicted (argmax over the model's rating outputs)",
    }


def calibration_scores(data: EvalData, presets: dict[str, dict]) -> dict[str, dict[str, float]]:
    """Micro/macro F1 of each new preset and of MCut on the calibration split itself (optimistic by nature)."""
    out = {}
    for name, preset in presets.items():
        m = set_metrics(data.y_true, data.scores >= data.thresholds(ThresholdOptions(), preset))
        out[name] = {"micro_f1": round(m.micro_f1, 6), "macro_f1": round(m.macro_f1, 6)}
    if data.mcut:
        base = data.thresholds(ThresholdOptions(), presets.get("balanced"))
        m = set_metrics(data.y_true, data.scores >= data.mcut_matrix(base))
        out["mcut"] = {"micro_f1": round(m.micro_f1, 6), "macro_f1": round(m.macro_f1, 6)}
    return out
