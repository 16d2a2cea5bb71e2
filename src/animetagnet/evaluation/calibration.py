"""Threshold calibration on a validation split (global, per category, per tag with fallback, F-beta presets), written into animetagnet.json.

The one threshold picker (`calibrate`: `evaluate --calibrate` and `export` both use it) and the
one writer of `animetagnet.json` (`write_metadata`, and `update_metadata` on top of it).

Every threshold is an exact optimum over the split's score values (see `metrics.best_cut`),
written as the midpoint between the lowest accepted score and the next one below it.
The presets have exactly the shape `postprocess.TagSelector` reads:
`{"categories": {label: t}, "tags": {name: t}}`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle import METADATA_FILE, ModelMetadata
from ..errors import ModelError
from ..fileio import atomic_write_json
from ..options import ThresholdOptions
from ..vocab import Category
from .metrics import best_cut, best_cuts, set_metrics

#: Preset name -> beta of the F-beta score it maximises (0.5 weighs precision, 2 recall).
FBETA_PRESETS: dict[str, float] = {"balanced": 1.0, "high_precision": 0.5, "high_recall": 2.0}
#: Below this many positives in the calibration split a tag keeps its category's threshold.
DEFAULT_MIN_SUPPORT = 10
DEFAULT_PRESET = "balanced"
#: All presets written, in the order the report lists them.
PRESET_NAMES = ("global", "per_category", "balanced", "high_precision", "high_recall")
#: What `--default-preset auto` chooses between: the presets that maximise F1, simplest first
#: (high_precision/high_recall are a trade-off the user picks, not an accuracy question).
AUTO_CANDIDATES = ("global", "per_category", "balanced")
#: Below this many split groups in the calibration split, auto keeps DEFAULT_PRESET (halves too small to tell).
AUTO_MIN_GROUPS = 40

PRESET_DESCRIPTIONS = {
    "global": "one threshold for every tag, maximising micro-F1",
    "per_category": "one threshold per category, each maximising that category's micro-F1",
    "balanced": "per tag, maximising the tag's F1; tags with too few positives use the per-category value",
    "high_precision": "as balanced, maximising F0.5 (precision weighs more)",
    "high_recall": "as balanced, maximising F2 (recall weighs more)",
}


def calibrate(
    y_true: np.ndarray,
    scores: np.ndarray,
    tag_names: list[str],
    categories: np.ndarray,
    covered: np.ndarray,
    *,
    min_support: int = DEFAULT_MIN_SUPPORT,
) -> dict[str, dict[str, dict[str, float]]]:
    """Presets computed on (y_true, scores); `categories` are the codes the tagger will group by.

    Rating columns must not be passed in (rating is always an argmax). Columns the model
    cannot predict (`covered` False) are ignored.
    """
    y_true = np.asarray(y_true, dtype=bool)
    scores = np.asarray(scores, dtype=np.float32)
    covered = np.asarray(covered, dtype=bool)
    categories = np.asarray(categories)
    cols = np.flatnonzero(covered)
    labels = sorted({Category(int(c)).label for c in categories[cols]})
    support = y_true.sum(axis=0)

    presets: dict[str, dict[str, dict[str, float]]] = {}
    t_global, _, _ = best_cut(y_true[:, cols], scores[:, cols], 1.0) if cols.size else (float("nan"), 0, 0)
    if not np.isnan(t_global):
        every = set(labels) | {"general", "character"}
        presets["global"] = {"categories": {lab: t_global for lab in sorted(every)}, "tags": {}}

    names = list(FBETA_PRESETS)
    betas = tuple(FBETA_PRESETS.values())
    cats: dict[str, dict[str, float]] = {n: {} for n in names}
    tags: dict[str, dict[str, float]] = {n: {} for n in names}
    col_labels = np.array([Category(int(c)).label for c in categories[cols]]) if cols.size else np.array([])
    for lab in labels:
        c = cols[col_labels == lab]
        for name, (t, _, _) in zip(names, best_cuts(y_true[:, c], scores[:, c], betas)):
            if not np.isnan(t):
                cats[name][lab] = t
    for j in cols:
        if support[j] >= min_support:
            for name, (t, _, _) in zip(names, best_cuts(y_true[:, j], scores[:, j], betas)):
                tags[name][tag_names[j]] = t
    for name in names:
        if name == "balanced":
            presets["per_category"] = {"categories": dict(cats[name]), "tags": {}}
        presets[name] = {"categories": cats[name], "tags": tags[name]}
    return presets


def held_out_scores(
    data,
    groups: list[str],
    *,
    rounds: int = 5,
    min_support: int = DEFAULT_MIN_SUPPORT,
    presets: tuple[str, ...] = AUTO_CANDIDATES,
) -> dict[str, dict[str, float]]:
    """How each preset carries to images it was not fitted on, from the calibration split alone.

    `data` is an `EvalData` of the calibration split, `groups` its images' split groups (all
    crops of one post stay in one half). Each round halves the groups at random (seeded by the
    round), calibrates on one half with `calibrate` and scores the other with the thresholds
    `animetagnet tag` would apply (`data.thresholds`), both ways. Per-tag thresholds fitted to a
    few dozen positives can lose to one threshold per category on unseen images; this measures
    it instead of assuming. Returns {preset: {"macro_f1", "micro_f1", "macro_f1_std"}} (means).
    """
    keys = sorted(set(groups))
    group_index = np.searchsorted(keys, groups)
    y, s = np.asarray(data.y_true, dtype=bool), data.scores
    found: dict[str, list[tuple[float, float]]] = {name: [] for name in presets}
    for r in range(rounds):
        in_a = np.random.default_rng(r).integers(0, 2, len(keys)).astype(bool)[group_index]
        for fit, held in ((in_a, ~in_a), (~in_a, in_a)):
            if not fit.any() or not held.any():
                continue
            fitted = calibrate(y[fit], s[fit], data.tag_names, data.model_categories, data.covered, min_support=min_support)
            for name in presets:
                if name in fitted:
                    m = set_metrics(y[held], s[held] >= data.thresholds(ThresholdOptions(), fitted[name]))
                    found[name].append((m.macro_f1, m.micro_f1))
    return {name: {"macro_f1": round(float(np.mean([v[0] for v in vals])), 4),
                   "micro_f1": round(float(np.mean([v[1] for v in vals])), 4),
                   "macro_f1_std": round(float(np.std([v[0] for v in vals])), 4)}
            for name, vals in found.items() if vals}


def choose_default_preset(data, groups: list[str], *, min_support: int = DEFAULT_MIN_SUPPORT) -> tuple[str, dict]:
    """`--default-preset auto`: the candidate with the best held-out macro-F1 (`held_out_scores`).

    A simpler preset wins ties and near-ties (within 0.001): it has fewer thresholds to be wrong.
    With fewer than AUTO_MIN_GROUPS groups the halves are too small to tell: DEFAULT_PRESET.
    Returns (name, {"chosen_by", "held_out"}) for the calibration record.
    """
    if len(set(groups)) < AUTO_MIN_GROUPS:
        return DEFAULT_PRESET, {"chosen_by": f"fewer than {AUTO_MIN_GROUPS} split groups to halve: the default", "held_out": {}}
    scores = held_out_scores(data, groups, min_support=min_support)
    if not scores:
        return DEFAULT_PRESET, {"chosen_by": "no preset could be fitted on a half: the default", "held_out": {}}
    best = max(v["macro_f1"] for v in scores.values())
    name = next(n for n in AUTO_CANDIDATES if n in scores and scores[n]["macro_f1"] >= best - 0.001)
    return name, {"chosen_by": "held-out macro-F1 on halves of the calibration split", "held_out": scores}


def write_metadata(model_dir: str | Path, data: Mapping[str, Any]) -> Path:
    """THE writer of MODEL_DIR/animetagnet.json: validated, strict JSON (NaN -> null), atomic."""
    path = Path(model_dir) / METADATA_FILE
    ModelMetadata.from_dict(dict(data), str(path))  # never write a file the tagger would refuse
    atomic_write_json(path, dict(data))
    return path


def update_metadata(model_dir: str | Path, change) -> Path:
    """Read MODEL_DIR/animetagnet.json (or start one), apply `change(data)`, validate, write atomically.

    Every key the change does not touch is kept as it was.
    """
    path = Path(model_dir) / METADATA_FILE
    data: dict[str, Any] = {"format_version": 1}
    if path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ModelError(f"{path}: invalid JSON, not overwriting it: {exc}") from None
        if not isinstance(data, dict):
            raise ModelError(f"{path}: expected a JSON object, not overwriting it")
    change(data)
    return write_metadata(model_dir, data)


def thresholds_entry(
    presets: dict[str, dict[str, Any]],
    *,
    default: str = DEFAULT_PRESET,
    info: dict[str, Any] | None = None,
    existing: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The `thresholds` value of animetagnet.json: `existing` presets kept unless replaced, the default, provenance."""
    if default not in presets:
        raise ModelError(f"calibration produced no {default!r} preset (no positives in the calibration split?)")
    thresholds = dict(existing or {})
    merged = dict(thresholds.get("presets") or {})
    merged.update(presets)
    thresholds["presets"] = merged
    thresholds["default"] = default
    calib = dict(info or {})
    calib.setdefault("created", _now())
    calib["presets"] = {k: PRESET_DESCRIPTIONS.get(k, "") for k in presets}
    thresholds["calibration"] = calib
    return thresholds


def write_calibration(
    model_dir: str | Path,
    presets: dict[str, dict[str, Any]],
    *,
    default: str = DEFAULT_PRESET,
    info: dict[str, Any] | None = None,
) -> Path:
    """Merge presets into MODEL_DIR/animetagnet.json atomically, keeping every other key.

    Presets of other names already in the file are kept; ours replace those of the same name.
    """
    entry = thresholds_entry(presets, default=default, info=info)  # refuses a missing default before reading

    def change(data: dict[str, Any]) -> None:
        data["thresholds"] = thresholds_entry(presets, default=default, info=entry["calibration"],
                                              existing=data.get("thresholds"))

    return update_metadata(model_dir, change)


def write_metrics(model_dir: str | Path, result: dict[str, Any]) -> Path:
    """Record an evaluation's headline figures in the bundle's `metrics` (docs/formats.md)."""
    h, pr = result["headline"], result["f1_at_pr"]
    metrics = {
        "split": result["dataset"]["split"],
        "dataset": result["dataset"]["path"],
        "images": result["dataset"]["images"],
        "thresholds": result["thresholds"]["source"],
        "micro_f1": h["micro_f1"], "macro_f1": h["macro_f1"], "map": h["map"],
        "micro_f1_at_pr": pr["micro"]["f1"] if pr["micro"] else None,
        "macro_f1_at_pr": pr["macro"]["f1"] if pr["macro"] else None,
        "evaluated": _now(),
    }

    def change(data: dict[str, Any]) -> None:
        data["metrics"] = metrics

    return update_metadata(model_dir, change)


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
