"""Known-answer tests of the evaluation metrics, and cross-checks against scikit-learn as an independent reference."""

from __future__ import annotations

import numpy as np
import pytest

from animetagnet.evaluation.metrics import (
    average_precision,
    best_cut,
    candidate_thresholds,
    crossing,
    example_based,
    f1_at_pr_crossing,
    nice_cut,
    per_tag_average_precision,
    set_metrics,
    sweep,
    untagged_images,
)

# 3 images x 4 tags; tag 3 has no positives (excluded from macro averages).
Y = np.array([[1, 0, 1, 0], [0, 1, 1, 0], [1, 1, 0, 0]], dtype=bool)
P = np.array([[1, 1, 0, 0], [0, 1, 1, 1], [0, 0, 0, 0]], dtype=bool)


def test_set_metrics_known_answers():
    m = set_metrics(Y, P)
    assert m.tp.tolist() == [1, 1, 1, 0]
    assert m.fp.tolist() == [0, 1, 0, 1]
    assert m.fn.tolist() == [1, 1, 1, 0]
    assert m.precision.tolist() == pytest.approx([1.0, 0.5, 1.0, 0.0])
    assert m.recall.tolist() == pytest.approx([0.5, 0.5, 0.5, 0.0])
    assert m.f1.tolist() == pytest.approx([2 / 3, 0.5, 2 / 3, 0.0])
    assert m.micro_precision == pytest.approx(3 / 5)
    assert m.micro_recall == pytest.approx(3 / 6)
    assert m.micro_f1 == pytest.approx(6 / 11)
    assert m.tags_with_support == 3
    assert m.macro_precision == pytest.approx(5 / 6)
    assert m.macro_recall == pytest.approx(0.5)
    assert m.macro_f1 == pytest.approx(11 / 18)


def test_never_predicted_tag_has_precision_zero_and_counts_in_macro():
    y = np.array([[1, 1], [0, 1]], dtype=bool)
    p = np.array([[1, 0], [0, 0]], dtype=bool)  # tag 1 has support 2, never predicted
    m = set_metrics(y, p)
    assert m.precision[1] == 0.0 and m.recall[1] == 0.0 and m.f1[1] == 0.0
    assert m.macro_precision == pytest.approx(0.5)
    assert m.macro_f1 == pytest.approx(0.5)


def test_example_based_known_answers():
    ex = example_based(Y, P)
    assert ex["precision"] == pytest.approx((1 / 2 + 2 / 3 + 0) / 3)
    assert ex["recall"] == pytest.approx((1 / 2 + 1 + 0) / 3)
    assert ex["f1"] == pytest.approx((1 / 2 + 4 / 5 + 0) / 3)
    assert ex["jaccard"] == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)
    assert ex["exact_match"] == 0.0
    assert ex["images_with_no_correct_tag"] == 1
    assert ex["label_accuracy"] == pytest.approx(7 / 12)
    assert ex["label_accuracy_if_nothing_predicted"] == pytest.approx(0.5)


def test_label_accuracy_flatters_a_model_that_predicts_nothing():
    # The original project's failure: 56%-style "accuracy" with not one right tag.
    rng = np.random.default_rng(1)
    y = rng.random((50, 200)) < 0.03
    nothing = np.zeros_like(y)
    ex = example_based(y, nothing)
    m = set_metrics(y, nothing)
    assert ex["label_accuracy"] > 0.95
    assert m.micro_f1 == 0.0 and m.macro_f1 == 0.0 and ex["jaccard"] == 0.0
    assert ex["images_with_no_correct_tag"] == int(y.any(1).sum())


def test_average_precision_known_answers():
    assert average_precision([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.6]) == pytest.approx(5 / 6)
    # Tied scores form one threshold: (0.5 * 1) + (0.5 * 2/3).
    assert average_precision([1, 1, 0], [0.9, 0.5, 0.5]) == pytest.approx(5 / 6)
    assert np.isnan(average_precision([0, 0], [0.3, 0.2]))
    # A positive outside the ranking can never be recalled: recall tops out at 1/2.
    assert average_precision([1, 0], [0.9, 0.1], n_positives=2) == pytest.approx(0.5)


def test_per_tag_ap_uncovered_tag_is_zero():
    y = np.array([[1, 1], [0, 1]], dtype=bool)
    s = np.array([[0.9, 0.0], [0.1, 0.0]])
    ap = per_tag_average_precision(y, s, covered=np.array([True, False]))
    assert ap.tolist() == [1.0, 0.0]


def test_pr_crossing_known_answer():
    y = np.array([[1], [0], [1], [1], [0]], dtype=bool)
    s = np.array([[0.9], [0.8], [0.7], [0.6], [0.5]])
    sw = sweep(y, s, candidate_thresholds(s))
    pr = f1_at_pr_crossing(sw)
    assert pr["micro"]["threshold"] == pytest.approx(0.7)
    assert pr["micro"]["precision"] == pytest.approx(2 / 3)
    assert pr["micro"]["recall"] == pytest.approx(2 / 3)
    assert pr["micro"]["f1"] == pytest.approx(2 / 3)
    # One tag: macro equals micro.
    assert pr["macro"]["threshold"] == pytest.approx(0.7)


def test_crossing_takes_the_first_crossing_not_the_degenerate_top():
    t = np.array([0.1, 0.2, 0.3, 0.4])
    p = np.array([0.2, 0.45, 0.6, 0.0])  # at 0.4 nothing is predicted: P = R = 0
    r = np.array([1.0, 0.55, 0.3, 0.0])
    f = 2 * p * r / np.maximum(p + r, 1e-12)
    c = crossing(t, p, r, f)
    assert c["threshold"] == 0.2  # |P-R| 0.1 beats 0.3 at the first threshold with P >= R


def test_sweep_matches_brute_force():
    rng = np.random.default_rng(3)
    y = rng.random((40, 6)) < 0.3
    s = np.round(rng.random((40, 6)), 2)  # ties on purpose
    th = candidate_thresholds(s)
    sw = sweep(y, s, th)
    for k in range(0, th.size, 7):
        m = set_metrics(y, s >= th[k])
        assert sw.tp[k] == m.tp.sum() and sw.fp[k] == m.fp.sum() and sw.fn[k] == m.fn.sum()
        assert sw.macro_precision[k] == pytest.approx(m.macro_precision)
        assert sw.macro_recall[k] == pytest.approx(m.macro_recall)
        assert sw.macro_f1[k] == pytest.approx(m.macro_f1)


def test_candidate_grid_when_too_many_values():
    rng = np.random.default_rng(0)
    s = rng.random((100, 50))
    y = rng.random((100, 50)) < 0.1
    th = candidate_thresholds(s, y, max_candidates=256)
    assert th.size <= 256 and np.all(np.diff(th) > 0)
    assert th[0] == pytest.approx(s.min()) and th[-1] == pytest.approx(s.max())


def test_best_cut_lands_on_the_midpoint():
    t, f, n = best_cut([1, 1, 0, 0], [0.8, 0.7, 0.3, 0.2])
    assert (t, f, n) == (0.5, 1.0, 2)


@pytest.mark.parametrize("beta,expected", [(1.0, 0.25), (0.5, 0.85), (2.0, 0.25)])
def test_best_cut_fbeta(beta, expected):
    # F1: all five (0.75) beats top three (0.667); F0.5: top one (0.714) beats all (0.652).
    t, _, _ = best_cut([1, 0, 1, 0, 1], [0.9, 0.8, 0.7, 0.6, 0.5], beta)
    assert t == pytest.approx(expected)


def test_best_cut_survives_float32_neighbours():
    a = np.float32(0.7)
    b = np.nextafter(a, np.float32(0))  # adjacent float32 values
    t, _, _ = best_cut([1, 0], [a, b])
    assert np.float32(b) < np.float32(t) <= np.float32(a)
    assert nice_cut(0.8, 0.3) == 0.55


# --- scikit-learn as the independent reference ---------------------------------------------
sk = pytest.importorskip("sklearn.metrics", reason="scikit-learn is the independent reference (pip install scikit-learn)")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_against_sklearn(seed):
    rng = np.random.default_rng(seed)
    n, t = 60, 15
    y = rng.random((n, t)) < rng.uniform(0.02, 0.4, t)
    y[:, 0] = False  # a tag with no positives
    y[np.flatnonzero(~y.any(1)), 1] = True  # every image has a true tag (sklearn's samples average)
    s = rng.random((n, t)) * 0.6 + y * rng.random((n, t)) * 0.4
    pred = s >= 0.5
    pred[:, 2] = False  # a tag never predicted
    m = set_metrics(y, pred)
    ex = example_based(y, pred)
    support = np.flatnonzero(y.any(0))
    p, r, f, _ = sk.precision_recall_fscore_support(y, pred, average="micro", zero_division=0)
    assert (m.micro_precision, m.micro_recall, m.micro_f1) == pytest.approx((p, r, f))
    p, r, f, _ = sk.precision_recall_fscore_support(y, pred, average="macro", labels=support, zero_division=0)
    assert (m.macro_precision, m.macro_recall, m.macro_f1) == pytest.approx((p, r, f))
    p, r, f, sup = sk.precision_recall_fscore_support(y, pred, average=None, zero_division=0)
    assert m.precision == pytest.approx(p) and m.recall == pytest.approx(r) and m.f1 == pytest.approx(f)
    assert m.support.tolist() == sup.tolist()
    assert ex["precision"] == pytest.approx(sk.precision_score(y, pred, average="samples", zero_division=0))
    assert ex["recall"] == pytest.approx(sk.recall_score(y, pred, average="samples", zero_division=0))
    assert ex["f1"] == pytest.approx(sk.f1_score(y, pred, average="samples", zero_division=0))
    assert ex["jaccard"] == pytest.approx(sk.jaccard_score(y, pred, average="samples", zero_division=0))
    assert ex["exact_match"] == pytest.approx(sk.accuracy_score(y, pred))
    assert 1 - ex["label_accuracy"] == pytest.approx(sk.hamming_loss(y, pred))
    ap = per_tag_average_precision(y, s)
    for j in support:
        assert ap[j] == pytest.approx(sk.average_precision_score(y[:, j], s[:, j]))
    assert np.isnan(ap[0])
    assert np.nanmean(ap) == pytest.approx(sk.average_precision_score(y[:, support], s[:, support], average="macro"))
    assert average_precision(y, s) == pytest.approx(sk.average_precision_score(y, s, average="micro"))


def test_best_cut_is_optimal_against_sklearn():
    rng = np.random.default_rng(7)
    y = rng.random(80) < 0.3
    s = np.round(rng.random(80) * 0.7 + y * 0.3, 3)
    for beta in (0.5, 1.0, 2.0):
        t, fb, _ = best_cut(y, s, beta)
        brute = max(sk.fbeta_score(y, s >= c, beta=beta, zero_division=0) for c in np.unique(s))
        assert fb == pytest.approx(brute)
        assert sk.fbeta_score(y, s >= t, beta=beta, zero_division=0) == pytest.approx(brute)


def test_images_without_tags_count_every_prediction_as_false():
    # 4 images x 3 tags (general, character, character); images 1 and 3 have no true tag.
    y = np.array([[1, 0, 0], [0, 0, 0], [0, 1, 0], [0, 0, 0]], dtype=bool)
    p = np.array([[1, 1, 0], [0, 1, 1], [0, 1, 0], [0, 0, 0]], dtype=bool)
    out = untagged_images(y, p, np.array([0, 4, 4]))
    assert out["images"] == 2 and out["clean"] == 0.5 and out["images_with_a_false_tag"] == 1
    assert out["false_tags_per_image"] == 1.0
    assert out["false_by_category"] == {"general": {"false_tags": 0, "images_with_a_false_tag": 0},
                                        "character": {"false_tags": 2, "images_with_a_false_tag": 1}}
    none = untagged_images(y[[0, 2]], p[[0, 2]], np.array([0, 4, 4]))
    assert none["images"] == 0 and none["clean"] is None
