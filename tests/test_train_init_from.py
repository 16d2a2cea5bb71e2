"""`train --init-from` a run or an exported model: the checkpoint's vocabulary kept, the dataset's new tags added."""

import json

import numpy as np

import pytest

pytest.importorskip("torch")
pytest.importorskip("timm")

from animetagnet.vocab import Category, Tag, Vocabulary  # noqa: E402
from animetagnet_train import data, model as model_mod  # noqa: E402
from animetagnet_train.errors import TrainingError  # noqa: E402

from cli_helpers import run_cli  # noqa: E402
from train_helpers import ROOT, make_synthetic  # noqa: E402


def vocab(*rows):
    return Vocabulary(Tag(n, Category(c), 1, i) for i, (n, c) in enumerate(rows))


def test_merged_vocabulary_keeps_old_order_and_the_wd_blocks(tmp_path):
    old = vocab(("general", 9), ("sensitive", 9), ("questionable", 9), ("explicit", 9), ("a", 0), ("b", 0), ("x", 4))
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "best.safetensors").write_bytes(b"")
    old.write_csv(run / "selected_tags.csv")
    ds_vocab = vocab(("general", 9), ("sensitive", 9), ("questionable", 9), ("explicit", 9), ("b", 0), ("c", 0),
                     ("y", 4))
    merged = model_mod.init_vocabulary(str(run), ds_vocab)
    assert merged.names == ["general", "sensitive", "questionable", "explicit", "a", "b", "c", "x", "y"]
    # labels are re-indexed by name
    ds = data.DatasetDir(tmp_path, ds_vocab, {"train": data.Split(["r"], ["p"], [np.array([4, 6])])})
    out = data.with_vocabulary(ds, merged)
    assert [merged.names[i] for i in out.splits["train"].labels[0]] == ["b", "y"]
    with pytest.raises(TrainingError, match="not in the run's vocabulary"):
        data.with_vocabulary(out, ds_vocab)


def test_init_from_an_exported_model_without_its_run_says_what_to_do(tmp_path):
    m = tmp_path / "model"
    m.mkdir()
    (m / "model.onnx").write_bytes(b"x")
    (m / "animetagnet.json").write_text(json.dumps({"provenance": {"run": str(tmp_path / "gone")}}))
    with pytest.raises(TrainingError, match="pass the run directory"):
        model_mod.resolve_init(str(m))


@pytest.mark.parametrize("meta", [b"\xff\xfe not UTF-8", b"{not json", b'{"provenance": {"run": 5}}'])
def test_init_from_an_exported_model_with_a_broken_animetagnet_json_is_one_line(tmp_path, meta):
    m = tmp_path / "model"
    m.mkdir()
    (m / "model.onnx").write_bytes(b"x")
    (m / "animetagnet.json").write_bytes(meta)
    with pytest.raises(TrainingError) as e:
        model_mod.resolve_init(str(m))
    assert "animetagnet.json" in str(e.value) or "not recorded" in str(e.value)
    assert "\n" not in str(e.value)


def test_train_init_from_run_then_from_its_export(tmp_path):
    base = make_synthetic(tmp_path / "base")
    r1 = run_cli("train", str(base), "--out", str(tmp_path / "r1"), "--config", str(ROOT / "configs" / "smoke.yaml"))
    assert r1.returncode == 0, r1.stderr
    extended = make_synthetic(tmp_path / "ext", extra_tag=True, seed=1)
    # no --config: the run's own recipe
    r2 = run_cli("train", str(extended), "--out", str(tmp_path / "r2"), "--init-from", str(tmp_path / "r1"))
    assert r2.returncode == 0, r2.stderr
    assert "the --init-from run's" in r2.stderr
    old = Vocabulary.read_csv(tmp_path / "r1" / "selected_tags.csv").names
    new = Vocabulary.read_csv(tmp_path / "r2" / "selected_tags.csv").names
    assert new[: len(old) - 1] == old[:-1] and set(new) == set(old) | {"yellow_thing"}
    ex = run_cli("export", str(tmp_path / "r2"), "--out", str(tmp_path / "m2"), "--parity-images", "2")
    assert ex.returncode == 0, ex.stderr
    # from the exported model: its run's weights and vocabulary; a dataset lacking old tags still trains
    r3 = run_cli("train", str(base), "--out", str(tmp_path / "r3"), "--init-from", str(tmp_path / "m2"))
    assert r3.returncode == 0, r3.stderr
    assert Vocabulary.read_csv(tmp_path / "r3" / "selected_tags.csv").names == new
    cfg = (tmp_path / "r3" / "config.yaml").read_text()
    assert str(tmp_path / "m2") in cfg
    ex = run_cli("export", str(tmp_path / "r3"), "--out", str(tmp_path / "m3"), "--parity-images", "2")
    assert ex.returncode == 0, ex.stderr
