"""From model outputs to selected tags: thresholds (per category, per tag, MCut), rating, top-k."""

from __future__ import annotations

from typing import Any

import numpy as np

# The options and their defaults are defined in options.py; re-exported here for callers.
from .options import (  # noqa: F401
    DEFAULT_CHARACTER_THRESHOLD,
    DEFAULT_GENERAL_THRESHOLD,
    MCUT_CHARACTER_FLOOR,
    ThresholdOptions,
)
from .results import TagResult
from .vocab import Category, Vocabulary


def mcut_thresholds(probs: np.ndarray, floor: float = 0.0) -> np.ndarray:
    """Maximum Cut Thresholding per row: the midpoint of the largest gap between sorted probabilities.

    Largeron et al. (2012), "MCut: a thresholding strategy for multi-label classification".
    Rows of fewer than two values have no gap, and 0.5 is used. `floor` bounds the cut from
    below (the character floor, `mcut_floor`).
    """
    p = -np.sort(-np.asarray(probs, dtype=np.float64), axis=1)
    if p.shape[1] < 2:
        return np.full(p.shape[0], max(0.5, floor))
    i = np.argmax(p[:, :-1] - p[:, 1:], axis=1)
    rows = np.arange(p.shape[0])
    return np.maximum((p[rows, i] + p[rows, i + 1]) / 2, floor)


def mcut_threshold(probs: np.ndarray, floor: float = 0.0) -> float:
    """`mcut_thresholds` of one probability vector."""
    return float(mcut_thresholds(np.asarray(probs)[None], floor)[0])


def mcut_floor(label: str) -> float:
    """The lowest MCut cut of a category: MCUT_CHARACTER_FLOOR for characters, none otherwise."""
    return MCUT_CHARACTER_FLOOR if label == "character" else 0.0


class TagSelector:
    """Precomputed per-output thresholds for one vocabulary and one set of options.

    Resolution per tag (highest first): the user's explicit category threshold, the model
    preset's per-tag value, the preset's per-category value, the defaults.
    """

    def __init__(self, vocab: Vocabulary, options: ThresholdOptions | None = None, preset: dict[str, Any] | None = None,
                 *, ratings: bool = True):
        self.vocab = vocab
        self.options = options = options or ThresholdOptions()
        options.validate()
        preset = preset or {}
        preset_categories: dict[str, float] = dict(preset.get("categories") or {})
        preset_tags: dict[str, float] = dict(preset.get("tags") or {})

        explicit = dict(options.categories)
        if options.general is not None:
            explicit["general"] = options.general
        if options.character is not None:
            explicit["character"] = options.character
        defaults = {"general": DEFAULT_GENERAL_THRESHOLD, "character": DEFAULT_CHARACTER_THRESHOLD}

        def category_threshold(label: str) -> float:
            if label in explicit:
                return float(explicit[label])
            if label in preset_categories:
                return float(preset_categories[label])
            if label in defaults:
                return defaults[label]
            # Other categories (copyright, artist, meta) follow the general threshold.
            return float(explicit.get("general", preset_categories.get("general", DEFAULT_GENERAL_THRESHOLD)))

        thr = np.empty(len(vocab), dtype=np.float32)
        for i, tag in enumerate(vocab):
            label = tag.category.label
            if label not in explicit and tag.name in preset_tags:
                thr[i] = float(preset_tags[tag.name])
            else:
                thr[i] = category_threshold(label)
        self.thresholds = thr
        # ratings=False: the model's rating rows were never trained (WD layout only); show no rating.
        self.rating_idx = vocab.indices(Category.RATING) if ratings else np.zeros(0, dtype=np.int64)
        self.groups: list[tuple[str, np.ndarray]] = [
            (cat.label, vocab.indices(cat)) for cat in vocab.present_categories() if cat != Category.RATING
        ]
        self.names = np.array(vocab.names, dtype=object)

    def select(self, probs: np.ndarray, path: str | None = None) -> TagResult:
        """Select tags from one image's probability vector."""
        probs = np.asarray(probs, dtype=np.float32)
        result = TagResult(path=path)
        if self.rating_idx.size:
            rp = probs[self.rating_idx]
            order = np.argsort(-rp, kind="stable")
            result.ratings = {str(self.names[self.rating_idx[j]]): float(rp[j]) for j in order}
            result.rating = str(self.names[self.rating_idx[order[0]]])
        picked: list[tuple[str, int, float]] = []
        for label, idx in self.groups:
            if idx.size == 0:
                continue
            p = probs[idx]
            thr = self.thresholds[idx]
            if (label == "general" and self.options.mcut_general) or (label == "character" and self.options.mcut_character):
                thr = np.full_like(thr, mcut_threshold(p, mcut_floor(label)))
            keep = np.flatnonzero(p >= thr)
            picked.extend((label, int(idx[k]), float(p[k])) for k in keep)
        if self.options.top_k is not None and len(picked) > self.options.top_k:
            picked.sort(key=lambda t: -t[2])
            picked = picked[: self.options.top_k]
        by_cat: dict[str, list[tuple[str, float]]] = {}
        for label, i, conf in picked:
            by_cat.setdefault(label, []).append((str(self.names[i]), conf))
        result.tags = {label: dict(sorted(items, key=lambda t: (-t[1], t[0]))) for label, items in by_cat.items()}
        for label, _ in self.groups:
            result.tags.setdefault(label, {})
        return result

    def select_batch(self, probs: np.ndarray, paths: list[str | None]) -> list[TagResult]:
        return [self.select(row, path) for row, path in zip(probs, paths)]

