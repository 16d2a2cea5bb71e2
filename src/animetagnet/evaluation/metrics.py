"""Multi-label metrics in pure numpy: P/R/F1 (micro, macro, per tag, per image), AP, threshold sweeps.

Conventions (the report and docs/evaluation.md state them too):
- A prediction is `score >= threshold`.
- A tag (or image) with no predictions has precision 0; with no positives, recall 0;
  F1 = 2TP / (2TP + FP + FN), 0 when that denominator is 0.
- Macro averages run over tags WITH positive support in the split only; a tag that has
  support but is never predicted therefore pulls macro precision down (precision 0).
- Macro F1 is the mean of per-tag F1 (not the F1 of macro P and macro R).
- Example-based (per image) metrics average over images with at least one true tag.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..vocab import Category


def _div(num, den) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den > 0)


def confusion_counts(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-tag TP, FP, FN for boolean [N, T] truth and predictions."""
    y_true = np.asarray(y_true, dtype=bool)
    y_pred = np.asarray(y_pred, dtype=bool)
    tp = np.count_nonzero(y_true & y_pred, axis=0).astype(np.int64)
    fp = np.count_nonzero(~y_true & y_pred, axis=0).astype(np.int64)
    fn = np.count_nonzero(y_true & ~y_pred, axis=0).astype(np.int64)
    return tp, fp, fn


def prf(tp, fp, fn) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and F1 from counts (arrays or scalars), with the conventions above."""
    tp = np.asarray(tp, dtype=np.float64)
    fp = np.asarray(fp, dtype=np.float64)
    fn = np.asarray(fn, dtype=np.float64)
    return _div(tp, tp + fp), _div(tp, tp + fn), _div(2 * tp, 2 * tp + fp + fn)


def fbeta(tp, fp, fn, beta: float = 1.0) -> np.ndarray:
    tp = np.asarray(tp, dtype=np.float64)
    b2 = beta * beta
    return _div((1 + b2) * tp, (1 + b2) * tp + b2 * np.asarray(fn, dtype=np.float64) + np.asarray(fp, dtype=np.float64))


@dataclass
class SetMetrics:
    """Micro and macro P/R/F1 of one set of binary predictions, plus per-tag values."""

    micro_precision: float
    micro_recall: float
    micro_f1: float
    macro_precision: float
    macro_recall: float
    macro_f1: float
    tags_with_support: int
    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray

    @property
    def support(self) -> np.ndarray:
        return self.tp + self.fn

    def summary(self) -> dict[str, float]:
        return {
            "micro_precision": self.micro_precision,
            "micro_recall": self.micro_recall,
            "micro_f1": self.micro_f1,
            "macro_precision": self.macro_precision,
            "macro_recall": self.macro_recall,
            "macro_f1": self.macro_f1,
            "tags_with_support": self.tags_with_support,
        }


def set_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> SetMetrics:
    tp, fp, fn = confusion_counts(y_true, y_pred)
    p, r, f = prf(tp, fp, fn)
    mp, mr, mf = prf(tp.sum(), fp.sum(), fn.sum())
    has = (tp + fn) > 0
    n = int(has.sum())
    return SetMetrics(
        micro_precision=float(mp), micro_recall=float(mr), micro_f1=float(mf),
        macro_precision=float(p[has].mean()) if n else 0.0,
        macro_recall=float(r[has].mean()) if n else 0.0,
        macro_f1=float(f[has].mean()) if n else 0.0,
        tags_with_support=n, tp=tp, fp=fp, fn=fn, precision=p, recall=r, f1=f,
    )


def example_based(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Per-image metrics, averaged over images with at least one true tag.

    `jaccard` (|T & P| / |T | P|) is what multi-label papers call "accuracy". `label_accuracy`
    is accuracy over every (image, tag) pair: it rewards predicting nothing, so it is shown
    beside `label_accuracy_if_nothing_predicted`, the score of an empty predictor.
    """
    y_true = np.asarray(y_true, dtype=bool)
    y_pred = np.asarray(y_pred, dtype=bool)
    inter = np.count_nonzero(y_true & y_pred, axis=1)
    n_pred = np.count_nonzero(y_pred, axis=1)
    n_true = np.count_nonzero(y_true, axis=1)
    union = np.count_nonzero(y_true | y_pred, axis=1)
    rows = n_true > 0
    out = {
        "images_with_tags": int(rows.sum()),
        "precision": float(_div(inter, n_pred)[rows].mean()) if rows.any() else 0.0,
        "recall": float(_div(inter, n_true)[rows].mean()) if rows.any() else 0.0,
        "f1": float(_div(2 * inter, n_pred + n_true)[rows].mean()) if rows.any() else 0.0,
        "jaccard": float(_div(inter, union)[rows].mean()) if rows.any() else 0.0,
        "exact_match": float(np.all(y_true == y_pred, axis=1).mean()) if len(y_true) else 0.0,
        "images_with_no_correct_tag": int(np.count_nonzero(rows & (inter == 0))),
        "label_accuracy": float((y_true == y_pred).mean()) if y_true.size else 0.0,
        "label_accuracy_if_nothing_predicted": float(1.0 - y_true.mean()) if y_true.size else 0.0,
    }
    return out


def untagged_images(y_true: np.ndarray, y_pred: np.ndarray, categories: np.ndarray) -> dict:
    """How a model behaves on images with no true tag (a scene with nobody in it).

    Every prediction there is false. `clean` is the share of such images with nothing
    predicted; `false_by_category` counts the false tags per category label (a false
    character is the costly kind: a name on an empty picture).
    """
    y_true = np.asarray(y_true, dtype=bool)
    y_pred = np.asarray(y_pred, dtype=bool)
    rows = ~y_true.any(axis=1)
    n = int(rows.sum())
    pred = y_pred[rows]
    by_cat = {}
    for code in sorted(set(int(c) for c in categories)):
        cols = np.asarray(categories) == code
        k = int(pred[:, cols].sum())
        by_cat[Category(code).label] = {
            "false_tags": k,
            "images_with_a_false_tag": int(pred[:, cols].any(axis=1).sum()),
        }
    return {
        "images": n,
        "clean": float((~pred.any(axis=1)).mean()) if n else None,
        "images_with_a_false_tag": int(pred.any(axis=1).sum()),
        "false_tags_per_image": float(pred.sum(axis=1).mean()) if n else None,
        "false_by_category": by_cat,
    }


def average_precision(y_true: np.ndarray, scores: np.ndarray, n_positives: int | None = None) -> float:
    """AP of one ranking: sum over distinct thresholds of (R_k - R_{k-1}) * P_k (no interpolation).

    The same definition as sklearn's `average_precision_score`. NaN when there is no positive.
    `n_positives` counts positives that are not in the ranking at all (never retrievable).
    """
    y = np.asarray(y_true, dtype=bool).ravel()
    s = _float(scores).ravel()
    n_pos = int(y.sum()) if n_positives is None else int(n_positives)
    if n_pos == 0:
        return float("nan")
    if s.size == 0:
        return 0.0
    _, tp, fp = ranking_counts(y, s)
    precision = tp / (tp + fp)
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _float(a) -> np.ndarray:
    a = np.asarray(a)
    return a if a.dtype.kind == "f" else a.astype(np.float64)


def ranking_counts(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct scores, highest first, with TP and FP counts when accepting every score >= each.

    Sorting the positives, the negatives and the values separately (no argsort) is several
    times faster on the millions of (image, tag) pairs of a large vocabulary.
    """
    pos = np.sort(s[y])
    neg = np.sort(s[~y])
    v = np.sort(s)
    distinct = v[np.r_[np.flatnonzero(np.diff(v)), v.size - 1]][::-1]
    tp = pos.size - np.searchsorted(pos, distinct, side="left")
    fp = neg.size - np.searchsorted(neg, distinct, side="left")
    return distinct, tp.astype(np.int64), fp.astype(np.int64)


def per_tag_average_precision(y_true: np.ndarray, scores: np.ndarray, covered: np.ndarray | None = None) -> np.ndarray:
    """AP per column; NaN for tags without positives, 0 for tags the model cannot predict."""
    t = y_true.shape[1]
    ap = np.full(t, np.nan)
    for j in range(t):
        if covered is not None and not covered[j]:
            ap[j] = 0.0 if y_true[:, j].any() else np.nan
        else:
            ap[j] = average_precision(y_true[:, j], scores[:, j])
    return ap


def candidate_thresholds(scores: np.ndarray, y_true: np.ndarray | None = None, max_candidates: int = 4096) -> np.ndarray:
    """Thresholds to sweep: every distinct score when there are few, else an approximate grid.

    The grid is half uniform over the score range, half quantiles of the positives' scores
    (where precision and recall change fastest).
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    if s.size == 0:
        return np.array([0.5])
    u = np.unique(s)
    if u.size <= max_candidates:
        return u
    half = max_candidates // 2
    grid = [np.linspace(u[0], u[-1], half)]
    if y_true is not None and np.any(y_true):
        grid.append(np.quantile(s[np.asarray(y_true, dtype=bool).ravel()], np.linspace(0, 1, half)))
    return np.unique(np.concatenate(grid))


@dataclass
class Sweep:
    """Counts and averages at each candidate threshold, for one group of tags."""

    thresholds: np.ndarray  # [K] ascending
    tp: np.ndarray  # [K] micro totals
    fp: np.ndarray
    fn: np.ndarray
    macro_precision: np.ndarray  # [K] over tags with support
    macro_recall: np.ndarray
    macro_f1: np.ndarray
    tags_with_support: int

    @property
    def micro(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return prf(self.tp, self.fp, self.fn)


def sweep(y_true: np.ndarray, scores: np.ndarray, thresholds: np.ndarray, columns: np.ndarray | None = None) -> Sweep:
    """Micro counts and macro P/R/F1 at every threshold (predict score >= t), one tag at a time."""
    thresholds = np.asarray(thresholds, dtype=np.float64)
    cols = np.arange(y_true.shape[1]) if columns is None else np.asarray(columns)
    k = thresholds.size
    tp_tot = np.zeros(k, np.int64)
    fp_tot = np.zeros(k, np.int64)
    fn_tot = np.zeros(k, np.int64)
    mp = np.zeros(k)
    mr = np.zeros(k)
    mf = np.zeros(k)
    n_support = 0
    for j in cols:
        y = np.asarray(y_true[:, j], dtype=bool)
        s = np.asarray(scores[:, j])
        pos = np.sort(s[y])
        neg = np.sort(s[~y])
        tp = pos.size - np.searchsorted(pos, thresholds, side="left")
        fp = neg.size - np.searchsorted(neg, thresholds, side="left")
        fn = pos.size - tp
        tp_tot += tp
        fp_tot += fp
        fn_tot += fn
        if pos.size:
            n_support += 1
            p, r, f = prf(tp, fp, fn)
            mp += p
            mr += r
            mf += f
    if n_support:
        mp /= n_support
        mr /= n_support
        mf /= n_support
    return Sweep(thresholds, tp_tot, fp_tot, fn_tot, mp, mr, mf, n_support)


def combine_sweeps(parts: list[Sweep]) -> Sweep:
    """The sweep of the union of disjoint column groups swept at the same thresholds."""
    n = sum(p.tags_with_support for p in parts)

    def macro(attr: str) -> np.ndarray:
        total = sum(getattr(p, attr) * p.tags_with_support for p in parts)
        return total / n if n else total

    return Sweep(parts[0].thresholds, sum(p.tp for p in parts), sum(p.fp for p in parts), sum(p.fn for p in parts),
                 macro("macro_precision"), macro("macro_recall"), macro("macro_f1"), n)


def crossing(thresholds: np.ndarray, precision: np.ndarray, recall: np.ndarray, f1: np.ndarray,
             valid: np.ndarray | None = None) -> dict[str, float] | None:
    """Where precision and recall cross, scanning thresholds upwards (recall falls, precision rises).

    The first valid threshold with P >= R and the valid one just below it are compared and the
    one with the smaller |P - R| wins (ties: the lower threshold). Taking the FIRST crossing
    matters for macro averages: at the very top both macro P and macro R fall to 0 (tags never
    predicted have precision 0), a degenerate "P = R" that a plain argmin |P - R| would pick.
    With no crossing at all, the threshold with the smallest |P - R| is used.
    """
    ok = np.ones(thresholds.size, bool) if valid is None else np.asarray(valid, bool)
    idx = np.flatnonzero(ok)
    if idx.size == 0:
        return None
    above = idx[precision[idx] >= recall[idx]]
    if above.size == 0:
        i = int(idx[np.argmin(np.abs(precision[idx] - recall[idx]))])
    else:
        i = int(above[0])
        prev = idx[idx < i]
        if prev.size:
            j = int(prev[-1])
            if abs(precision[j] - recall[j]) <= abs(precision[i] - recall[i]):
                i = j
    return {"threshold": float(thresholds[i]), "precision": float(precision[i]),
            "recall": float(recall[i]), "f1": float(f1[i])}


def f1_at_pr_crossing(sw: Sweep) -> dict[str, dict[str, float] | None]:
    """WD model cards' figure: F1 at the threshold where P = R, micro and macro (one global threshold)."""
    mp, mr, mf = sw.micro
    micro = crossing(sw.thresholds, mp, mr, mf, valid=(sw.tp + sw.fp) > 0)
    macro = crossing(sw.thresholds, sw.macro_precision, sw.macro_recall, sw.macro_f1, valid=(sw.tp + sw.fp) > 0)
    return {"micro": micro, "macro": macro}


def best_cut(y_true: np.ndarray, scores: np.ndarray, beta: float = 1.0) -> tuple[float, float, int]:
    """The F-beta-optimal cut of one ranking: (threshold, F-beta, predicted count).

    Exact: every distinct score is tried as the lowest accepted score; among equal F-beta the
    higher threshold wins (fewer predictions). The threshold returned is (a short decimal at)
    the midpoint between the lowest accepted score and the next lower score (or 0 when every
    item is accepted), so the cut does not sit on a score value and survives float rounding.
    Returns (nan, 0, 0) when there is no positive.
    """
    return best_cuts(y_true, scores, (beta,))[0]


def best_cuts(y_true: np.ndarray, scores: np.ndarray, betas: tuple[float, ...]) -> list[tuple[float, float, int]]:
    """`best_cut` for several betas, sorting the ranking once."""
    y = np.asarray(y_true, dtype=bool).ravel()
    s = np.asarray(scores, dtype=np.float32).ravel()  # the tagger compares in float32
    n_pos = int(np.count_nonzero(y))
    if n_pos == 0 or s.size == 0:
        return [(float("nan"), 0.0, 0) for _ in betas]
    distinct, tp, fp = ranking_counts(y, s)
    out = []
    for beta in betas:
        fb = fbeta(tp, fp, n_pos - tp, beta)
        i = int(np.argmax(fb))
        lowest = float(distinct[i])
        if i + 1 < distinct.size:
            thr = nice_cut(lowest, float(distinct[i + 1]))
        else:
            thr = nice_cut(lowest, 0.0) if lowest > 0 else lowest
        out.append((thr, float(fb[i]), int(tp[i] + fp[i])))
    return out


def nice_cut(lowest: float, below: float) -> float:
    """A short decimal near the midpoint of (below, lowest] that still separates them in float32.

    The tagger compares float32 probabilities with float32 thresholds, so the cut must keep
    `below < float32(t) <= lowest`; the fewest decimals that do so keep the JSON readable.
    """
    mid = (lowest + below) / 2
    lo32, hi32 = np.float32(below), np.float32(lowest)
    for digits in range(2, 10):
        v = round(mid, digits)
        if below < v <= lowest and lo32 < np.float32(v) <= hi32:
            return float(v)
    return float(np.nextafter(lo32, np.float32(np.inf)))

