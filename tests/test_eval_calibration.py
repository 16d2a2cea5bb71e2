"""Calibration lands on the right thresholds for constructed cases, and `animetagnet tag` then uses them."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from animetagnet.bundle import ModelBundle
from animetagnet.errors import ModelError
from animetagnet.evaluation.calibration import calibrate, write_calibration
from animetagnet.evaluation.metrics import best_cut
from animetagnet.vocab import Category
from modelfactory import build_wd_model


def test_calibrate_constructed_case():
    s = np.array([
        [0.90, 0.95, 0.20],
        [0.80, 0.70, 0.90],
        [0.60, 0.35, 0.10],
        [0.40, 0.20, 0.10],
        [0.30, 0.15, 0.10],
        [0.10, 0.05, 0.10],
    ])
    y = np.array([
        [1, 1, 0],
        [1, 0, 1],
        [1, 1, 0],
        [0, 0, 0],
        [0, 0, 0],
        [0, 0, 0],
    ], dtype=bool)
    cats = np.array([0, 0, 4])
    presets = calibrate(y, s, ["a", "b", "c"], cats, np.array([True, True, True]), min_support=2)
    bal = presets["balanced"]
    # Tag a: perfectly separated between 0.6 and 0.4 -> the midpoint.
    assert bal["tags"]["a"] == 0.5
    # Tag b: the best F1 (0.8) accepts the top three; the cut falls between 0.35 and 0.2.
    assert 0.2 < bal["tags"]["b"] <= 0.35 and bal["tags"]["b"] == pytest.approx(0.275, abs=0.006)
    # Tag c has one positive (< min_support): no tag entry, the character category decides.
    assert "c" not in bal["tags"]
    assert bal["categories"]["character"] == pytest.approx(0.55)
    # General, pooled: the best micro-F1 (10/12) accepts everything down to 0.35; next value 0.3.
    assert 0.3 < bal["categories"]["general"] <= 0.35
    assert presets["per_category"] == {"categories": bal["categories"], "tags": {}}
    g = presets["global"]["categories"]
    assert set(g) == {"general", "character"} and len(set(g.values())) == 1
    assert g["general"] == best_cut(y, s)[0]
    # F0.5 keeps only b's top score (precision 1): its cut moves above 0.7.
    assert 0.7 < presets["high_precision"]["tags"]["b"] <= 0.95
    assert presets["high_recall"]["tags"]["a"] == 0.5


def test_calibrate_ignores_tags_the_model_lacks():
    y = np.array([[1, 1], [0, 1], [1, 0]], dtype=bool)
    s = np.array([[0.9, 0.0], [0.2, 0.0], [0.8, 0.0]])
    presets = calibrate(y, s, ["x", "missing"], np.array([0, 0]), np.array([True, False]), min_support=1)
    assert set(presets["balanced"]["tags"]) == {"x"}
    assert presets["balanced"]["categories"]["general"] == 0.5


def test_write_calibration_keeps_other_keys(tmp_path):
    model = build_wd_model(tmp_path / "m", metadata={
        "name": "kept", "provenance": {"run": "r1"}, "custom_key": [1, 2],
        "thresholds": {"default": "mine", "presets": {"mine": {"categories": {"general": 0.2}}}},
    })
    presets = {"balanced": {"categories": {"general": 0.4}, "tags": {"smile": 0.3}}}
    write_calibration(model, presets, info={"split": "val"})
    data = json.loads((model / "animetagnet.json").read_text())
    assert data["name"] == "kept" and data["provenance"] == {"run": "r1"} and data["custom_key"] == [1, 2]
    assert data["thresholds"]["presets"]["mine"] == {"categories": {"general": 0.2}}
    assert data["thresholds"]["default"] == "balanced"
    assert data["thresholds"]["calibration"]["split"] == "val"
    assert ModelBundle.load(model).metadata.preset(None) == presets["balanced"]
    assert not [p for p in model.iterdir() if p.name.endswith(".tmp")]


def test_write_calibration_refuses_broken_metadata(tmp_path):
    model = build_wd_model(tmp_path / "m")
    (model / "animetagnet.json").write_text("{not json")
    with pytest.raises(ModelError):
        write_calibration(model, {"balanced": {"categories": {}, "tags": {}}})
    assert (model / "animetagnet.json").read_text() == "{not json"


def _images(folder, n, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        arr = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
        img = Image.fromarray(arr).resize((40, 48), Image.NEAREST)
        p = folder / f"img{i:02d}.png"
        img.save(p)
        paths.append(p)
    return paths


def test_calibrated_thresholds_drive_the_tagger(tmp_path):
    """Calibrate on a constructed split, then `Tagger.tag` must select exactly the calibrated sets."""
    from animetagnet import Tagger
    from animetagnet.cli import main
    from animetagnet.postprocess import TagSelector

    model = build_wd_model(tmp_path / "model", seed=3)
    paths = _images(tmp_path / "images", 16)
    tagger = Tagger(model)
    probs = tagger.predict(np.stack([tagger.prepare(p) for p in paths]))
    vocab = tagger.vocab
    labels = [[] for _ in paths]
    expected_cut = {}
    for j, tag in enumerate(vocab):
        col = probs[:, j]
        if tag.category == Category.RATING:
            continue
        k = 4 if tag.category == Category.GENERAL else 3
        order = np.argsort(-col)
        assert col[order[k - 1]] > col[order[k]], "test needs distinct scores"
        for i in order[:k]:
            labels[i].append(tag.name)
        expected_cut[tag.name] = (col[order[k]], col[order[k - 1]])  # (below, lowest accepted)
    rating_idx = vocab.indices(Category.RATING)
    for i in range(len(paths)):
        labels[i].append(vocab.names[rating_idx[int(np.argmax(probs[i, rating_idx]))]])
    ds = tmp_path / "ds"
    ds.mkdir()
    vocab.write_csv(ds / "selected_tags.csv")
    lines = [json.dumps({"id": str(i), "image": str(p), "tags": t}) for i, (p, t) in enumerate(zip(paths, labels))]
    (ds / "val.jsonl").write_text("\n".join(lines) + "\n")

    # Before calibration the default thresholds do NOT reproduce the labels (the test has teeth).
    default_sel = TagSelector(vocab)
    assert any(set(default_sel.select(probs[i]).all_tags()) != set(labels[i][:-1]) for i in range(len(paths)))

    rep = tmp_path / "report"
    rc = main(["evaluate", "--model", str(model), "--data", str(ds), "--split", "val", "--calibrate",
               "--min-support", "1", "--report", str(rep), "--examples", "4", "-q"])
    assert rc == 0
    meta = json.loads((model / "animetagnet.json").read_text())
    balanced = meta["thresholds"]["presets"]["balanced"]
    on_val = meta["thresholds"]["calibration"]["scores_on_calibration_split"]
    assert on_val["balanced"] == {"micro_f1": 1.0, "macro_f1": 1.0} and "mcut" in on_val
    assert meta["thresholds"]["default"] == "balanced"
    for name, (below, lowest) in expected_cut.items():
        t = balanced["tags"][name]
        assert np.float32(below) < np.float32(t) <= np.float32(lowest), name

    fresh = Tagger(model)  # a new process would see the same file
    for i, p in enumerate(paths):
        got = set(fresh.tag(p).all_tags())
        assert got == set(labels[i][:-1]), f"image {i}"

    metrics = json.loads((rep / "metrics.json").read_text())
    assert metrics["headline"]["micro_f1"] == 1.0 and metrics["headline"]["macro_f1"] == 1.0
    assert metrics["headline"]["map"] == 1.0
    assert metrics["rating"]["accuracy"] == 1.0
    assert "preset 'balanced' (calibrated on val of ds, 16 images)" in metrics["thresholds"]["source"]
    assert any("calibrated on this very split" in w for w in metrics["warnings"])


def test_save_metrics_records_headline(tmp_path):
    from animetagnet.cli import main

    model = build_wd_model(tmp_path / "model", metadata={"name": "m", "provenance": {"run": "x"}})
    paths = _images(tmp_path / "images", 6)
    ds = tmp_path / "ds"
    ds.mkdir()
    (ds / "selected_tags.csv").write_text('tag_id,name,category,count\n1,"smile",0,3\n')
    (ds / "val.jsonl").write_text("".join(json.dumps({"id": str(i), "image": str(p), "tags": ["smile"] if i % 2 else []}) + "\n"
                                          for i, p in enumerate(paths)))
    assert main(["evaluate", "--model", str(model), "--data", str(ds), "--save-metrics", "-q", "--report", str(tmp_path / "r")]) == 0
    meta = json.loads((model / "animetagnet.json").read_text())
    rep = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert meta["provenance"] == {"run": "x"} and meta["name"] == "m"
    assert meta["metrics"]["split"] == "val" and meta["metrics"]["images"] == 6
    assert meta["metrics"]["micro_f1"] == rep["headline"]["micro_f1"]


def _eval_data(y: np.ndarray, s: np.ndarray):
    """An EvalData of character tags only, as run_model would build it from these scores."""
    from animetagnet.evaluation.runner import EvalData
    from animetagnet.vocab import Tag, Vocabulary

    t = y.shape[1]
    names = [f"char_{j}" for j in range(t)]
    vocab = Vocabulary(Tag(n, Category.CHARACTER) for n in names)
    cats = np.full(t, int(Category.CHARACTER))
    return EvalData(model_name="m", model_dir="m", dataset_dir="d", split="val", ids=[str(i) for i in range(len(y))],
                    images=[""] * len(y), tag_names=names, categories=cats, model_categories=cats,
                    train_counts=np.zeros(t, int), y_true=y.astype(bool), scores=s.astype(np.float32),
                    covered=np.ones(t, bool), model_index=np.arange(t), mcut={}, model_vocab=vocab)


def _one_character_each(n: int, t: int, rng):
    y = np.zeros((n, t), bool)
    y[np.arange(n), rng.integers(0, t, n)] = True
    return y


def test_auto_preset_prefers_one_threshold_when_per_tag_ones_only_fit_noise():
    from animetagnet.evaluation.calibration import choose_default_preset, held_out_scores

    rng = np.random.default_rng(0)
    y = _one_character_each(400, 10, rng)
    # Every tag's scores follow the same law: the best threshold is one for all, and a per-tag
    # cut fitted to ~20 positives of a half chases the noise.
    s = np.where(y, rng.beta(4, 2, y.shape), rng.beta(2, 4, y.shape))
    groups = [str(i // 2) for i in range(400)]  # two crops per post, kept together
    held = held_out_scores(_eval_data(y, s), groups)
    assert held["per_category"]["macro_f1"] > held["balanced"]["macro_f1"] + 0.005
    name, why = choose_default_preset(_eval_data(y, s), groups)
    assert name in ("global", "per_category") and why["held_out"] == held


def test_auto_preset_keeps_per_tag_thresholds_when_tags_live_on_their_own_scales():
    from animetagnet.evaluation.calibration import choose_default_preset

    rng = np.random.default_rng(1)
    y = _one_character_each(400, 10, rng)
    # Tag j separates cleanly around its own level, so no single threshold fits every tag.
    level = np.linspace(0.15, 0.8, 10)[None, :]
    s = np.where(y, level + rng.uniform(0.02, 0.15, y.shape), level - rng.uniform(0.02, 0.15, y.shape))
    name, why = choose_default_preset(_eval_data(y, s), [str(i) for i in range(400)])
    assert name == "balanced", why
    assert why["held_out"]["balanced"]["macro_f1"] > why["held_out"]["per_category"]["macro_f1"] + 0.05


def test_auto_preset_keeps_the_default_when_too_few_groups_to_halve():
    from animetagnet.evaluation.calibration import DEFAULT_PRESET, choose_default_preset

    rng = np.random.default_rng(2)
    y = _one_character_each(60, 4, rng)
    s = np.where(y, 0.8, 0.2)
    name, why = choose_default_preset(_eval_data(y, s), [str(i % 10) for i in range(60)])  # 10 posts
    assert name == DEFAULT_PRESET and "fewer than" in why["chosen_by"] and why["held_out"] == {}
