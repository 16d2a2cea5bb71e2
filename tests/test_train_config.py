"""Recipes are strict and typed; overrides reach every key; the shipped recipes load."""

from pathlib import Path

import pytest

pytest.importorskip("yaml")

from animetagnet.errors import UsageError  # noqa: E402
from animetagnet_train import config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_shipped_recipes_load(name):
    cfg = config.load(ROOT / "configs" / name)
    assert cfg.model.image_size >= 16 and cfg.train.epochs >= 1


def test_unknown_key_is_an_error(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("optim:\n  lr: 0.1\n  learning_rate: 0.2\n")
    with pytest.raises(UsageError, match="unknown key.*learning_rate"):
        config.load(p)


def test_wrong_type_is_an_error(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("train:\n  epochs: many\n")
    with pytest.raises(UsageError, match="train.epochs"):
        config.load(p)


def test_overrides_and_roundtrip(tmp_path):
    cfg = config.load(ROOT / "configs" / "smoke.yaml", ["optim.lr=1e-3", "train.epochs=3", "data.augment.crop_scale=[0.5, 1.0]"])
    assert cfg.optim.lr == pytest.approx(1e-3) and cfg.train.epochs == 3
    assert cfg.data.augment.crop_scale == [0.5, 1.0]
    saved = tmp_path / "resolved.yaml"
    saved.write_text(config.dump_yaml(cfg))
    assert config.load(saved) == cfg


def test_bad_override_and_choice():
    with pytest.raises(UsageError, match="unknown key"):
        config.load(None, ["optim.nope=1"])
    with pytest.raises(UsageError, match="loss.name"):
        config.load(None, ["loss.name=hinge"])
    with pytest.raises(UsageError, match="section.key=value"):
        config.load(None, ["optim.lr"])


def test_errors_are_one_line_naming_the_key(tmp_path):
    cases = {
        "optim.learning_rate=1": "config optim: unknown key(s) learning_rate; valid keys: betas,",
        "optim.lr=true": "config optim.lr:",  # a boolean is not a number
        "train.epochs='3'": "config train.epochs:",  # no silent coercion of strings
        "data.augment.resample=[bicubic, fancy]": "config data.augment.resample[1]:",
        "data.augment.crop_scale=[0.9, 0.5]": "crop_scale must be [min, max]",
        "model.mean=[1, 2]": "config model.mean:",
        "model.image_size=8": "config model.image_size:",
    }
    for override, says in cases.items():
        with pytest.raises(UsageError) as exc:
            config.load(None, [override])
        assert says in str(exc.value) and "\n" not in str(exc.value), override


def test_empty_sections_and_yaml_floats(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("model:\noptim:\n  lr: 1e-3\n  betas: [0.9, 1]\n")  # YAML 1.1 reads 1e-3 as a string
    cfg = config.load(p)
    assert cfg.model == config.ModelConfig() and cfg.optim.lr == 1e-3 and cfg.optim.betas == [0.9, 1.0]
    assert config.RunConfig().model.mean is not config.RunConfig().model.mean  # defaults are never shared
