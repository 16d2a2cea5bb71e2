"""Validation metrics during training, built on the evaluation package's definitions (one set of formulas).

`evaluate` is the per-epoch summary (macro/micro F1 at a threshold, mAP, top-1). Thresholds are
picked by `animetagnet.evaluation.calibration` (export uses it too).
"""

from __future__ import annotations

import numpy as np

from animetagnet.evaluation.metrics import confusion_counts, per_tag_average_precision, prf


def evaluate(probs: np.ndarray, targets: np.ndarray, threshold: float | np.ndarray = 0.5) -> dict:
    """macro/micro F1 and precision/recall at `threshold`, mAP over tags with positives, top-1."""
    targets = targets.astype(bool)
    tp, fp, fn = confusion_counts(targets, probs >= threshold)
    has_pos = targets.sum(0) > 0
    _, _, per_tag_f1 = prf(tp, fp, fn)
    aps = per_tag_average_precision(targets, probs)
    with_pos = targets.any(1)
    top1 = targets[np.arange(len(probs)), probs.argmax(1)][with_pos].mean() if with_pos.any() else float("nan")
    micro_p, micro_r, micro_f1 = prf(tp.sum(), fp.sum(), fn.sum())
    return {
        "macro_f1": float(per_tag_f1[has_pos].mean()) if has_pos.any() else float("nan"),
        "micro_f1": float(micro_f1),
        "micro_precision": float(micro_p),
        "micro_recall": float(micro_r),
        "map": float(np.nanmean(aps[has_pos])) if has_pos.any() else float("nan"),
        "top1": float(top1),
        "images": int(len(probs)),
    }

