"""Training end to end on tiny data: run directory contents, exact resume, clear errors, vocabulary extension."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

from safetensors.torch import load_file  # noqa: E402

from animetagnet.errors import AnimeTagNetError  # noqa: E402
from animetagnet_train import config  # noqa: E402
from animetagnet_train.errors import TrainingError  # noqa: E402
from animetagnet_train.train import train  # noqa: E402

from train_helpers import ROOT, make_synthetic  # noqa: E402

SMOKE = ROOT / "configs" / "smoke.yaml"


def smoke_cfg(*overrides):
    return config.load(SMOKE, list(overrides))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_synthetic(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def smoke_run(tiny, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "smoke"
    result = train(tiny, run, smoke_cfg())
    return run, result


def test_smoke_run_writes_a_complete_run_directory(smoke_run):
    run, result = smoke_run
    for name in ("config.yaml", "selected_tags.csv", "metrics.jsonl", "metrics.csv", "run.json",
                 "checkpoints/best.safetensors", "checkpoints/last.safetensors", "checkpoints/last_state.safetensors"):
        assert (run / name).is_file(), name
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    for key in ("train_loss", "val_map", "val_macro_f1", "val_top1", "images_per_s", "data_wait_share"):
        assert all(np.isfinite(r[key]) for r in rows), key
    assert result.best["epoch"] in (1, 2)
    assert config.load(run / "config.yaml") == smoke_cfg()  # the resolved config is saved


def test_training_learns_the_synthetic_colours(tiny, tmp_path):
    # Enough steps for a tiny net to separate three colours: loss must fall clearly.
    result = train(tiny, tmp_path / "run", smoke_cfg("train.epochs=6", "optim.lr=0.01", "loss.name=bce"))
    losses = [r["train_loss"] for r in result.history]
    assert losses[-1] < 0.7 * losses[0]


def _weights(run: Path) -> dict:
    return load_file(str(run / "checkpoints" / "last.safetensors"))


@pytest.mark.parametrize("extra", [[], ["data.augment.mixup=0.4", "data.augment.erase=0.5"]], ids=["plain", "mixup+erase"])
def test_resume_after_a_crash_matches_an_uninterrupted_run(tiny, tmp_path, extra):
    base = ["train.epochs=3", "data.workers=1", *extra]  # batch augmentations: a resumed run must mix and erase alike
    full = train(tiny, tmp_path / "full", smoke_cfg(*base))
    # 3 steps/epoch: checkpoint every 2 steps, "crash" after step 5 -> resume from step 4 (mid-epoch 2).
    crashed = train(tiny, tmp_path / "crash", smoke_cfg(*base, "train.checkpoint_every_steps=2", "train.stop_after_steps=5"))
    assert crashed.stopped
    resumed = train(tiny, tmp_path / "crash", config.load(tmp_path / "crash" / "config.yaml",
                                                         ["train.stop_after_steps=0"]), resume=True)
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "crash")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    drop = ("images_per_s", "data_wait_share", "epoch_time_s", "val_time_s")
    strip = lambda h: [{k: v for k, v in r.items() if k not in drop} for r in h]  # noqa: E731
    assert strip(resumed.history) == strip(full.history)


def test_existing_run_needs_resume(smoke_run, tiny):
    run, _ = smoke_run
    with pytest.raises(TrainingError, match="--resume"):
        train(tiny, run, smoke_cfg())


def test_grayscale_on_a_dataset_with_colour_tags_is_refused_before_anything_is_written(tiny, tmp_path):
    with pytest.raises(TrainingError, match="grayscale would make colour tags false"):
        train(tiny, tmp_path / "run", smoke_cfg("data.augment.grayscale=0.2"))
    assert not (tmp_path / "run").exists()


def test_wrong_data_directory_is_a_clear_error(tmp_path):
    with pytest.raises(TrainingError, match="not found"):
        train(tmp_path / "nope", tmp_path / "run", smoke_cfg())
    (tmp_path / "empty").mkdir()
    with pytest.raises(TrainingError, match="selected_tags.csv is missing"):
        train(tmp_path / "empty", tmp_path / "run", smoke_cfg())


def test_resume_with_another_vocabulary_is_refused(smoke_run, tmp_path):
    run, _ = smoke_run
    other = make_synthetic(tmp_path / "other", extra_tag=True)
    with pytest.raises(TrainingError, match="vocabulary"):
        train(other, run, config.load(run / "config.yaml"), resume=True)


def test_vocabulary_extension_keeps_old_outputs(smoke_run, tmp_path):
    from animetagnet.vocab import Vocabulary
    from animetagnet_train import export, model as model_mod

    run, _ = smoke_run
    _, old_vocab, old_net, _ = export.load_run(run)
    extended = make_synthetic(tmp_path / "ext", extra_tag=True)
    new_vocab = Vocabulary.read_csv(extended / "selected_tags.csv")
    cfg = smoke_cfg(f"model.init_from={run}")
    new_net, info = model_mod.build(cfg.model, new_vocab)
    assert info["vocab_added"] == 1
    # The old tags' head rows are copied bit for bit ...
    old_head, new_head = old_net.backbone.get_classifier(), new_net.backbone.get_classifier()
    for i, name in enumerate(old_vocab.names):
        j = new_vocab.index(name)
        assert torch.equal(old_head.weight[i], new_head.weight[j]), name
        assert torch.equal(old_head.bias[i], new_head.bias[j]), name
    # ... so their outputs agree up to float rounding (a GEMM with one more output column may
    # block its sums differently, so bitwise equality of outputs is not promised).
    x = torch.rand(3, 32, 32, 3) * 255
    with torch.no_grad():
        old_out, new_out = old_net.eval()(x), new_net.eval()(x)
    for i, name in enumerate(old_vocab.names):
        torch.testing.assert_close(old_out[:, i], new_out[:, new_vocab.index(name)], rtol=0, atol=1e-6, msg=name)
    assert new_out.shape[1] == len(old_vocab) + 1
    # Without permission to extend, a mismatch is an error that says what to do.
    with pytest.raises(TrainingError, match="extend_vocab"):
        model_mod.build(smoke_cfg(f"model.init_from={run}", "model.extend_vocab=false").model, new_vocab)
    # Dropping old tags would lose their outputs: refused.
    fewer = Vocabulary(list(old_vocab)[:2])
    with pytest.raises(TrainingError, match="not in the dataset"):
        model_mod.build(cfg.model, fewer)


def test_fine_tune_from_a_wd_style_timm_checkpoint(smoke_run, tmp_path):
    """WD v3 layout: model.safetensors (bare timm network) + config.json (+ selected_tags.csv)."""
    from safetensors.torch import save_file

    from animetagnet_train import export, model as model_mod

    run, _ = smoke_run
    _, vocab, net, _ = export.load_run(run)
    wd = tmp_path / "wd"
    wd.mkdir()
    save_file({k: v.contiguous() for k, v in net.backbone.state_dict().items()}, str(wd / "model.safetensors"))
    (wd / "config.json").write_text(json.dumps({"architecture": "test_resnet", "num_classes": len(vocab),
                                                "model_args": {"global_pool": "avg"},
                                                "pretrained_cfg": {"mean": [0.5] * 3, "std": [0.5] * 3}}))
    vocab.write_csv(wd / "selected_tags.csv")
    cfg = smoke_cfg(f"model.init_from={wd}")
    tuned, info = model_mod.build(cfg.model, vocab)
    assert cfg.model.timm_args == {"global_pool": "avg"}  # recorded, so export rebuilds the same architecture
    x = torch.rand(2, 32, 32, 3) * 255
    with torch.no_grad():
        assert torch.allclose(tuned.eval()(x), net(x))
    with pytest.raises(TrainingError, match="resnet18"):
        model_mod.build(smoke_cfg(f"model.init_from={wd}", "model.backbone=resnet18").model, vocab)


def test_fine_tune_from_a_timm_classifier_for_other_classes(smoke_run, tmp_path):
    """A timm checkpoint directory without a label file whose head has another size (ImageNet's
    1,000 classes, say): the backbone loads, the head starts new. A bare file with such a head
    (no config.json saying what it is) is still refused: nothing says its rows are not tags."""
    from safetensors.torch import save_file

    from animetagnet_train import export, model as model_mod

    run, _ = smoke_run
    _, vocab, net, _ = export.load_run(run)
    state = {k: v.contiguous() for k, v in net.backbone.state_dict().items()}
    head = net.backbone.get_classifier()
    wkey = next(k for k, v in net.backbone.named_parameters() if v is head.weight)
    bkey = next(k for k, v in net.backbone.named_parameters() if v is head.bias)
    state[wkey], state[bkey] = torch.randn(1000, state[wkey].shape[1]), torch.randn(1000)
    imagenet = tmp_path / "imagenet"
    imagenet.mkdir()
    save_file(state, str(imagenet / "model.safetensors"))
    (imagenet / "config.json").write_text(json.dumps({"architecture": "test_resnet", "num_classes": 1000,
                                                      "pretrained_cfg": {"mean": [0.5] * 3, "std": [0.5] * 3}}))
    tuned, info = model_mod.build(smoke_cfg(f"model.init_from={imagenet}").model, vocab)
    assert info["head"] == "new (the checkpoint's 1000-output head has no tag names)"
    trunk = {k: v for k, v in net.backbone.state_dict().items() if k not in (wkey, bkey)}
    assert all(torch.equal(tuned.backbone.state_dict()[k], v) for k, v in trunk.items())
    assert tuned.backbone.get_classifier().weight.shape[0] == len(vocab)
    with pytest.raises(TrainingError, match="no label file"):
        model_mod.build(smoke_cfg(f"model.init_from={imagenet / 'model.safetensors'}").model, vocab)


def test_pickled_checkpoints_are_never_loaded(tmp_path):
    from animetagnet_train import model as model_mod

    pt = tmp_path / "weights.pt"
    pt.write_bytes(b"\x80\x04not really")
    with pytest.raises(TrainingError, match="pickled"):
        model_mod.resolve_init(str(pt))


def _cli_env():
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def test_cli_help_works_without_torch():
    code = ("import sys; sys.modules['torch'] = None; sys.modules['timm'] = None\n"
            "from animetagnet.cli import build_parser\n"
            "h = build_parser().format_help(); assert 'train' in h and 'export' in h, h; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], env=_cli_env(), capture_output=True, text=True)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


def test_cli_errors_are_one_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "animetagnet", "train", str(tmp_path / "missing"), "--out",
                          str(tmp_path / "run"), "--config", str(SMOKE)], env=_cli_env(), capture_output=True, text=True)
    assert out.returncode == 2
    assert "dataset directory not found" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.slow
def test_torchrun_two_cpu_processes(tiny, tmp_path):
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "animetagnet", "train", str(tiny), "--out", str(run), "--config", str(SMOKE),
           "--set", "train.epochs=1"]
    env = _cli_env()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "2 process(es)" in out.stderr
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and np.isfinite(rows[0]["val_map"])
    # 24 images, batch 8, 2 ranks -> 12 per rank -> 2 steps (not 3 as on one process).
    assert rows[0]["step"] == 2
