"""Model directories: WD layout, our metadata, label/output checks, Hub ids from a local cache."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from animetagnet import Tagger
from animetagnet.bundle import ModelBundle, resolve_model
from animetagnet.errors import DeviceError, ImageError, ModelError
from modelfactory import build_wd_model, wd_labels, write_labels


def test_label_count_mismatch_is_explained(tmp_path):
    d = build_wd_model(tmp_path / "m", n_outputs=5)
    with pytest.raises(ModelError, match=r"5 outputs but selected_tags.csv lists 13 tags"):
        Tagger(d)


def test_missing_files(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no model.onnx"):
        ModelBundle.load(tmp_path / "empty")
    d = build_wd_model(tmp_path / "m")
    (d / "selected_tags.csv").unlink()
    with pytest.raises(ModelError, match="no selected_tags.csv"):
        ModelBundle.load(d)
    with pytest.raises(ModelError, match="model not found"):
        ModelBundle.load(tmp_path / "does-not-exist")


def test_bad_label_file(tmp_path):
    d = build_wd_model(tmp_path / "m")
    (d / "selected_tags.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ModelError, match="name and category"):
        ModelBundle.load(d)


def test_model_onnx_path_accepted(tiny_model):
    assert resolve_model(tiny_model / "model.onnx") == tiny_model


def test_categories_come_from_the_label_file_not_positions(tmp_path, real_images):
    # Characters first, ratings last: a tool reading probs[:4] as ratings would be wrong.
    labels = wd_labels()
    shuffled = labels[11:] + labels[4:11] + labels[:4]
    d = build_wd_model(tmp_path / "m", labels=shuffled)
    t = Tagger(d)
    r = t.tag(real_images[0])
    assert r.rating in {"general", "sensitive", "questionable", "explicit"}
    assert set(r.ratings) == {"general", "sensitive", "questionable", "explicit"}
    assert set(r.general) <= {n for n, c in labels if c == 0}
    assert set(r.character) <= {n for n, c in labels if c == 4}


def test_fixed_batch_one_model_handles_batches(tmp_path, real_images):
    """WD v2 files have batch fixed at 1: batches are fed one by one with the same results."""
    fixed = Tagger(build_wd_model(tmp_path / "v2", batch=1, seed=4), batch_size=4)
    dyn = Tagger(build_wd_model(tmp_path / "v3", seed=4), batch_size=4)
    assert fixed.predictor.fixed_batch == 1 and dyn.predictor.fixed_batch is None
    a = [r.to_dict() for r in fixed.iter_tag_files(real_images[:6])]
    b = [r.to_dict() for r in dyn.iter_tag_files(real_images[:6])]
    assert a == b and len(a) == 6


def test_logit_models_get_a_sigmoid(tmp_path, real_images):
    probs = Tagger(build_wd_model(tmp_path / "p", seed=1))
    logits = Tagger(build_wd_model(tmp_path / "l", seed=1, logits=True, metadata={"outputs": "logits"}))
    x = probs.prepare(real_images[0])[None]
    np.testing.assert_allclose(probs.predict(x), logits.predict(x), atol=1e-6)


def test_metadata_size_must_match_onnx(tmp_path):
    d = build_wd_model(tmp_path / "m", metadata={"preprocessing": {"size": 448}})
    with pytest.raises(ModelError, match="448"):
        Tagger(d)


def test_invalid_metadata(tmp_path):
    d = build_wd_model(tmp_path / "m")
    (d / "animetagnet.json").write_text("{not json")
    with pytest.raises(ModelError, match="invalid JSON"):
        ModelBundle.load(d)


def test_metadata_thresholds_are_used(tmp_path, real_images):
    base = Tagger(build_wd_model(tmp_path / "a", seed=2))
    r0 = base.tag(real_images[0])
    name, conf = next(iter(r0.general.items()))
    meta = {"thresholds": {"default": "strict", "presets": {
        "strict": {"categories": {"general": 0.0}, "tags": {name: min(1.0, conf + 0.01)}},
        "loose": {"categories": {"general": 0.0}},
    }}}
    t = Tagger(build_wd_model(tmp_path / "b", seed=2, metadata=meta))
    r = t.tag(real_images[0])
    assert name not in r.general  # per-tag threshold above its confidence
    assert len(r.general) == 6  # category threshold 0 keeps every other general tag
    from animetagnet.postprocess import ThresholdOptions
    assert name in t.tag(real_images[0], ThresholdOptions(preset="loose")).general
    # An explicit user threshold overrides the model's per-tag values for that category.
    assert name in t.tag(real_images[0], ThresholdOptions(general=0.0)).general
    with pytest.raises(ModelError, match="available: loose, strict"):
        t.tag(real_images[0], ThresholdOptions(preset="nope"))


def test_cuda_requested_without_provider_is_an_error(tiny_model):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has CUDA")
    with pytest.raises(DeviceError, match="onnxruntime-gpu"):
        Tagger(tiny_model, device="cuda")
    t = Tagger(tiny_model, device="auto")
    assert t.device.device == "cpu" and "CPUExecutionProvider" in t.device.providers
    assert "cpu (CPUExecutionProvider)" in t.describe()


def test_python_api_inputs(tiny_model, real_images):
    from PIL import Image

    t = Tagger(tiny_model, exact=True)  # in-memory inputs never use JPEG draft mode
    from_path = t.tag(real_images[1])
    pil = Image.open(real_images[1])
    from_pil = t.tag(pil)
    from_array = t.tag(np.asarray(pil.convert("RGB")))
    from_bytes = t.tag(real_images[1].read_bytes())
    assert from_path.all_tags() == from_pil.all_tags() == from_array.all_tags() == from_bytes.all_tags()
    assert from_path.path == str(real_images[1]) and from_pil.path is None
    batch = t.tag_batch(real_images[:3])
    assert [r.path for r in batch] == [str(p) for p in real_images[:3]]
    with pytest.raises(ImageError):
        t.tag(np.zeros((4, 4, 3), dtype=np.float64))
    with t:
        pass
    assert t.predictor.session is None  # model unloaded


def _hub_cache(root, repo_id, src):
    """A Hugging Face hub cache directory, laid out as huggingface_hub writes it."""
    repo_dir = root / ("models--" + repo_id.replace("/", "--"))
    snap = repo_dir / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
    snap.mkdir(parents=True)
    for f in ("model.onnx", "selected_tags.csv"):
        shutil.copy(src / f, snap / f)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(snap.name)
    return snap


def test_hub_repo_id_from_local_cache(tmp_path, tiny_model, monkeypatch, real_images):
    pytest.importorskip("huggingface_hub")
    cache = tmp_path / "hub"
    snap = _hub_cache(cache, "someone/tiny-tagger", tiny_model)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_model("someone/tiny-tagger", cache_dir=str(cache)) == snap
    t = Tagger("someone/tiny-tagger", cache_dir=str(cache))
    assert t.tag(real_images[0]).rating is not None


def test_hub_offline_message_says_how_to_pass_a_directory(tmp_path, monkeypatch):
    pytest.importorskip("huggingface_hub")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="pass its directory: --model"):
        resolve_model("someone/not-cached", cache_dir=str(tmp_path))


def test_vocab_csv_roundtrip(tmp_path):
    from animetagnet.vocab import Category, Vocabulary

    p = tmp_path / "s.csv"
    write_labels(p, wd_labels())
    v = Vocabulary.read_csv(p)
    v.write_csv(tmp_path / "o.csv")
    v2 = Vocabulary.read_csv(tmp_path / "o.csv")
    assert v2.names == v.names and list(v2.categories) == list(v.categories)
    assert v.category_of("irys_(hololive)") == Category.CHARACTER
    assert list(v.indices(Category.RATING)) == [0, 1, 2, 3]


def test_real_wd_label_files_load(shared_data):
    from animetagnet.vocab import Category, Vocabulary

    v = Vocabulary.read_csv(shared_data / "tags" / "wd_v3_selected_tags.csv")
    assert len(v) == 10861
    assert len(v.indices(Category.GENERAL)) == 8106 and len(v.indices(Category.CHARACTER)) == 2751
    old = Vocabulary.read_csv(shared_data / "tags" / "wd_2021_selected_tags_5500.csv")
    assert len(old.indices(Category.COPYRIGHT)) > 0 and len(old.indices(Category.RATING)) == 0
