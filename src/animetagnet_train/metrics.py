"""Multi-label metrics on (probabilities, targets) arrays: F1 (macro/micro), mAP, top-1, threshold search."""

from __future__ import annotations

import numpy as np


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """AP of one tag (mean precision at each positive, ranked by score); NaN without positives."""
    npos = int(labels.sum())
    if npos == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    hits = labels[order].astype(np.float64)
    cum = np.cumsum(hits)
    precision = cum / np.arange(1, len(hits) + 1)
    return float((precision * hits).sum() / npos)


def f1_counts(tp, fp, fn):
    denom = 2 * tp + fp + fn
    return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), np.nan)


def evaluate(probs: np.ndarray, targets: np.ndarray, threshold: float | np.ndarray = 0.5) -> dict:
    """macro/micro F1 and precision/recall at `threshold`, mAP over tags with positives, top-1."""
    targets = targets.astype(bool)
    pred = probs >= threshold
    tp = (pred & targets).sum(0).astype(np.float64)
    fp = (pred & ~targets).sum(0).astype(np.float64)
    fn = (~pred & targets).sum(0).astype(np.float64)
    has_pos = targets.sum(0) > 0
    per_tag_f1 = f1_counts(tp, fp, fn)
    aps = np.array([average_precision(probs[:, j], targets[:, j]) for j in range(probs.shape[1])])
    with_pos = targets.any(1)
    top1 = targets[np.arange(len(probs)), probs.argmax(1)][with_pos].mean() if with_pos.any() else float("nan")
    TP, FP, FN = tp.sum(), fp.sum(), fn.sum()
    return {
        "macro_f1": float(np.nanmean(per_tag_f1[has_pos])) if has_pos.any() else float("nan"),
        "micro_f1": float(2 * TP / max(2 * TP + FP + FN, 1)),
        "micro_precision": float(TP / max(TP + FP, 1)),
        "micro_recall": float(TP / max(TP + FN, 1)),
        "map": float(np.nanmean(aps[has_pos])) if has_pos.any() else float("nan"),
        "top1": float(top1),
        "images": int(len(probs)),
    }


def best_threshold(probs: np.ndarray, targets: np.ndarray, beta: float = 1.0, grid=None) -> tuple[float, float]:
    """The single threshold maximising macro F-beta over `probs`' columns (tags with positives)."""
    grid = np.round(np.arange(0.05, 0.96, 0.01), 2) if grid is None else grid
    targets = targets.astype(bool)
    keep = targets.sum(0) > 0
    if not keep.any():
        return 0.5, float("nan")
    probs, targets = probs[:, keep], targets[:, keep]
    b2 = beta * beta
    best = (0.5, -1.0)
    for t in grid:
        pred = probs >= t
        tp = (pred & targets).sum(0)
        fp = (pred & ~targets).sum(0)
        fn = (~pred & targets).sum(0)
        denom = (1 + b2) * tp + b2 * fn + fp
        score = float(np.mean(np.where(denom > 0, (1 + b2) * tp / np.maximum(denom, 1), 0.0)))
        if score > best[1] + 1e-12:
            best = (float(t), score)
    return best
