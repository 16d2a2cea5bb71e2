"""Threshold selection: per category, MCut, top-k, rating, with hand-computed answers."""

from __future__ import annotations

import numpy as np
import pytest

from animetagnet.errors import UsageError
from animetagnet.postprocess import TagSelector, ThresholdOptions, mcut_threshold, mcut_thresholds
from animetagnet.vocab import Category, Tag, Vocabulary


def vocab():
    return Vocabulary(
        [Tag("general", Category.RATING), Tag("sensitive", Category.RATING),
         Tag("a", Category.GENERAL), Tag("b", Category.GENERAL), Tag("c", Category.GENERAL), Tag("d", Category.GENERAL),
         Tag("miku", Category.CHARACTER), Tag("rin", Category.CHARACTER),
         Tag("vocaloid", Category.COPYRIGHT)]
    )


P = np.array([0.3, 0.7, 0.9, 0.5, 0.36, 0.1, 0.86, 0.6, 0.4], dtype=np.float32)


def test_defaults_and_rating():
    r = TagSelector(vocab()).select(P, "x.jpg")
    assert r.rating == "sensitive" and list(r.ratings) == ["sensitive", "general"]
    assert r.general == pytest.approx({"a": 0.9, "b": 0.5, "c": 0.36})  # >= 0.35
    assert list(r.general) == ["a", "b", "c"]  # best first
    assert r.character == pytest.approx({"miku": 0.86})  # >= 0.85
    assert r.tags["copyright"] == pytest.approx({"vocaloid": 0.4})  # other categories follow general


def test_explicit_thresholds():
    r = TagSelector(vocab(), ThresholdOptions(general=0.6, character=0.5)).select(P)
    assert set(r.general) == {"a"} and set(r.character) == {"miku", "rin"}
    assert r.tags["copyright"] == {}  # 0.4 < 0.6


def test_mcut_known_answer():
    # Sorted: 0.9, 0.5, 0.36, 0.1 -> gaps 0.4, 0.14, 0.26 -> cut between 0.9 and 0.5 = 0.7
    assert mcut_threshold(np.array([0.5, 0.9, 0.1, 0.36])) == pytest.approx(0.7)
    r = TagSelector(vocab(), ThresholdOptions(mcut_general=True, mcut_character=True)).select(P)
    assert set(r.general) == {"a"}
    # characters 0.86, 0.6 -> mcut 0.73 -> miku only
    assert set(r.character) == {"miku"}


def test_mcut_character_floor():
    low = P.copy()
    low[6], low[7] = 0.12, 0.01  # mcut would be 0.065; floor 0.15 keeps nothing
    r = TagSelector(vocab(), ThresholdOptions(mcut_character=True)).select(low)
    assert r.character == {}


def test_top_k_keeps_best_across_categories():
    r = TagSelector(vocab(), ThresholdOptions(general=0.0, character=0.0, top_k=3)).select(P)
    assert sorted(r.all_tags().values(), reverse=True) == pytest.approx([0.9, 0.86, 0.6])


@pytest.mark.parametrize("opts", [ThresholdOptions(general=1.5), ThresholdOptions(character=-0.1), ThresholdOptions(top_k=0)])
def test_invalid_options(opts):
    with pytest.raises(UsageError):
        TagSelector(vocab(), opts)


def test_mcut_rows_match_a_plain_loop_and_keep_the_floor():
    """The one MCut (tagger and evaluation both use it), against the definition written out by hand."""
    rng = np.random.default_rng(5)
    p = rng.random((8, 12))
    expected = []
    for row in p:
        s = sorted(row, reverse=True)
        k = max(range(len(s) - 1), key=lambda i: s[i] - s[i + 1])
        expected.append((s[k] + s[k + 1]) / 2)
    assert mcut_thresholds(p).tolist() == pytest.approx(expected)
    assert [mcut_threshold(row) for row in p] == pytest.approx(expected)
    assert mcut_threshold(np.array([0.12, 0.01]), floor=0.15) == 0.15
