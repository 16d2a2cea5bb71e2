"""Losses, metrics, schedule and augmentation on their own."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from PIL import Image  # noqa: E402

from animetagnet.errors import UsageError  # noqa: E402
from animetagnet.evaluation.metrics import best_cut  # noqa: E402
from animetagnet.images import preprocess  # noqa: E402
from animetagnet_train import config, data, losses, metrics  # noqa: E402
from animetagnet_train.config import AugmentConfig, LossConfig  # noqa: E402
from animetagnet_train.train import lr_at  # noqa: E402


def test_asl_without_focusing_is_bce():
    logits = torch.randn(4, 6)
    targets = (torch.rand(4, 6) > 0.5).float()
    bce = losses.MultiLabelLoss(LossConfig(name="bce"))(logits, targets)
    asl = losses.MultiLabelLoss(LossConfig(name="asl", gamma_neg=0, gamma_pos=0, clip=0))(logits, targets)
    assert torch.allclose(bce, asl, atol=1e-6)


def test_asl_down_weights_easy_negatives():
    logits = torch.full((1, 1), -3.0)  # a confident, correct negative
    t = torch.zeros(1, 1)
    bce = losses.MultiLabelLoss(LossConfig(name="bce"))(logits, t)
    asl = losses.MultiLabelLoss(LossConfig(name="asl"))(logits, t)
    assert asl < bce / 10


def test_label_smoothing_moves_the_loss_minimum_to_the_smoothed_targets():
    """With smoothing e over T outputs, BCE is smallest where sigmoid(logit) = y*(1-e) + e/T."""
    t = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    smooth = losses.MultiLabelLoss(LossConfig(name="bce", label_smoothing=0.2))
    target_p = torch.tensor([[0.8 + 0.05, 0.05, 0.05, 0.05]])
    logits = torch.logit(target_p).requires_grad_()
    smooth(logits, t).backward()
    assert logits.grad.abs().max() < 1e-6  # the minimum: no pull towards 0/1 any more
    plain = losses.MultiLabelLoss(LossConfig(name="bce"))
    logits = torch.logit(target_p).requires_grad_()
    plain(logits, t).backward()
    assert logits.grad[0, 0] < 0 and (logits.grad[0, 1:] > 0).all()  # unsmoothed: still pushed apart


def test_frequency_weights_favour_rare_tags():
    w = losses.frequency_weights(np.array([1000, 10, 0]), "inverse_sqrt")
    assert w.mean().item() == pytest.approx(1.0, abs=1e-6)
    assert w[1] > w[0] and w[2] >= w[1]
    assert losses.frequency_weights(np.array([1, 2]), "none") is None


def test_metrics_known_values():
    probs = np.array([[0.9, 0.2], [0.6, 0.7], [0.1, 0.8]])
    targets = np.array([[1, 0], [0, 1], [0, 1]])
    m = metrics.evaluate(probs, targets, 0.5)
    assert m["top1"] == pytest.approx(1.0)
    wrong_first = metrics.evaluate(np.array([[0.9, 0.2], [0.8, 0.7]]), np.array([[1, 0], [0, 1]]))
    assert wrong_first["top1"] == pytest.approx(0.5)
    assert m["map"] == pytest.approx(1.0)  # every tag's positives rank first
    # tag 0: tp1 fp1 -> F1 2/3 ; tag 1: tp2 -> F1 1
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1) / 2)
    t, score, _ = best_cut(targets, probs)  # the one threshold picker (export's, through calibration)
    assert 0.6 < t <= 0.7 + 1e-9 and score == pytest.approx(1.0)


def test_schedule_warmup_then_cosine():
    assert lr_at(0, 100, 10, 1.0, 0.0) == pytest.approx(0.1)
    assert lr_at(9, 100, 10, 1.0, 0.0) == pytest.approx(1.0)
    assert lr_at(55, 100, 10, 1.0, 0.0) == pytest.approx(0.5, abs=1e-6)
    assert lr_at(100, 100, 10, 1.0, 0.01) == pytest.approx(0.01)


def test_augmentation_is_deterministic_and_shaped():
    img = Image.new("RGB", (70, 50), (200, 10, 10))
    aug = AugmentConfig(hflip=0.5, crop_scale=[0.7, 1.0], rotate_degrees=15, resample=["bilinear", "lanczos"])
    a = data.augment(img, 32, aug, data.sample_rng(1, 2, 3))
    b = data.augment(img, 32, aug, data.sample_rng(1, 2, 3))
    c = data.augment(img, 32, aug, data.sample_rng(1, 3, 3))
    assert a.shape == (32, 32, 3) and a.dtype == np.float32
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    # No augmentation at all == THE preprocessing (one implementation).
    plain = data.augment(img, 32, AugmentConfig(hflip=0.0), data.sample_rng(0, 0, 0))
    assert np.array_equal(plain, preprocess(img, 32))


def test_sampler_shards_and_resumes():
    s = data.EpochSampler(10, seed=3, shuffle=True, rank=0, world=2)
    s1 = data.EpochSampler(10, seed=3, shuffle=True, rank=1, world=2)
    s.set_epoch(1)
    s1.set_epoch(1)
    assert sorted(list(s) + list(s1)) == list(range(10))
    full = list(s)
    s.set_epoch(1, start=2)
    assert list(s) == full[2:]


def test_model_takes_nhwc_bgr_pixels():
    from animetagnet_train.model import Tagger

    class Probe(torch.nn.Module):
        def forward(self, x):
            return x.mean(dim=(2, 3))

    net = Tagger(Probe(), mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5])
    bgr = torch.zeros(1, 4, 4, 3)
    bgr[..., 0] = 255.0  # pure blue in BGR
    out = net(bgr)[0]
    assert torch.allclose(out, torch.tensor([-1.0, -1.0, 1.0]))  # RGB order, normalised to [-1, 1]


@pytest.mark.parametrize("name", ["adamw", "lamb", "sgd"])
def test_optimizers_build_and_step(name):
    from animetagnet_train.config import OptimConfig
    from animetagnet_train.train import make_optimizer

    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    opt = make_optimizer(OptimConfig(name=name, lr=0.1), net)
    before = net[0].weight.detach().clone()
    net(torch.randn(2, 4)).sum().backward()
    opt.step()
    assert not torch.equal(before, net[0].weight)
    assert opt.param_groups[1]["weight_decay"] == 0.0  # norms and biases are not decayed


def test_out_of_memory_becomes_a_clear_error(monkeypatch, tmp_path):
    from animetagnet_train import config, train as train_mod
    from animetagnet_train.errors import TrainingError

    def boom(*a, **k):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr(train_mod, "_train", boom)
    with pytest.raises(TrainingError, match="batch_size"):
        train_mod.train(tmp_path, tmp_path / "run", config.RunConfig())


def test_training_code_never_unpickles():
    from pathlib import Path

    src = Path(__file__).resolve().parents[1] / "src" / "animetagnet_train"
    for f in src.glob("*.py"):
        text = f.read_text()
        assert "torch.load(" not in text and "import pickle" not in text, f.name


def test_mixup_blends_pixels_and_targets_alike_and_is_seeded_by_step():
    images = torch.stack([torch.full((4, 4, 3), 200, dtype=torch.uint8), torch.zeros((4, 4, 3), dtype=torch.uint8)])
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    x, t = data.mixup_batch(images, targets, 0.4, data.step_rng(0, 5, 0, "mixup"))
    x2, t2 = data.mixup_batch(images, targets, 0.4, data.step_rng(0, 5, 0, "mixup"))
    assert torch.equal(x, x2) and torch.equal(t, t2)  # a resumed run mixes the same pairs
    assert x.dtype == torch.float32 and torch.allclose(t.sum(1), torch.ones(2))
    # Each image's soft target is the share of each source in its pixels.
    for i in range(2):
        assert torch.allclose(x[i].mean() / 200.0, t[i, 0], atol=1e-6)
    draws = {round(float(data.mixup_batch(images, targets, 0.4, data.step_rng(0, s, 0, "mixup"))[1][0, 0]), 6) for s in range(20)}
    assert len(draws) > 10  # a new blend every step


def test_random_erasing_hides_one_noise_patch_of_the_drawn_size_and_is_seeded_by_step():
    images = torch.full((16, 32, 32, 3), 128, dtype=torch.uint8)
    out = data.erase_batch(images, 1.0, (0.05, 0.2), data.step_rng(0, 7, 0, "erase"))
    assert out.dtype == torch.uint8 and torch.equal(images, torch.full_like(images, 128))  # input untouched
    assert torch.equal(out, data.erase_batch(images, 1.0, (0.05, 0.2), data.step_rng(0, 7, 0, "erase")))  # resumes alike
    assert not torch.equal(out, data.erase_batch(images, 1.0, (0.05, 0.2), data.step_rng(0, 8, 0, "erase")))
    for img in out:
        changed = (img != 128).any(-1)
        rows, cols = torch.nonzero(changed.any(1)).flatten(), torch.nonzero(changed.any(0)).flatten()
        h, w = int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)
        assert 0.04 <= h * w / 32**2 <= 0.21  # one rectangle of the drawn area (rounding aside)
        assert changed[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].float().mean() > 0.9  # noise, not a frame
    assert torch.equal(data.erase_batch(images, 0.0, (0.05, 0.2), data.step_rng(0, 7, 0, "erase")), images)
    some = data.erase_batch(images, 0.5, (0.05, 0.2), data.step_rng(0, 7, 0, "erase"))
    assert 0 < int((some != 128).flatten(1).any(1).sum()) < 16


def test_erase_area_is_checked():
    with pytest.raises(UsageError, match="erase_area"):
        config.load(None, ["data.augment.erase_area=[0.3,0.1]"])
    with pytest.raises(UsageError, match="erase"):
        config.load(None, ["data.augment.erase=1.5"])


def test_grayscale_is_pillows_luma_in_all_three_channels_and_seeded_by_step():
    rgb = np.random.default_rng(0).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    bgr = torch.from_numpy(rgb[..., ::-1].copy())  # the training batch layout
    out = data.grayscale_batch(bgr, 1.0, data.step_rng(0, 3, 0, "grayscale"))
    assert out.dtype == torch.uint8 and torch.equal(out[..., 0], out[..., 1]) and torch.equal(out[..., 1], out[..., 2])
    for i in range(6):
        luma = np.asarray(Image.fromarray(rgb[i]).convert("L"), dtype=np.int16)
        assert np.abs(out[i, ..., 0].numpy().astype(np.int16) - luma).max() <= 1
    assert torch.equal(data.grayscale_batch(bgr, 0.0, data.step_rng(0, 3, 0, "grayscale")), bgr)
    draws = [data.grayscale_batch(bgr, 0.5, data.step_rng(0, s, 0, "grayscale")) for s in (4, 4, 5)]
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])


def test_grayscale_is_refused_where_it_would_make_colour_tags_false():
    from animetagnet.vocab import Category, Tag, Vocabulary
    from animetagnet_train.config import AugmentConfig

    chars = Vocabulary([Tag("general", Category.RATING), Tag("gawr_gura", Category.CHARACTER)])
    with_general = Vocabulary([*chars, Tag("blonde_hair", Category.GENERAL)])
    grey = AugmentConfig(grayscale=0.1)
    assert data.colour_safe_problem(grey, chars) is None
    assert "blonde_hair" in data.colour_safe_problem(grey, with_general)
    assert data.colour_safe_problem(AugmentConfig(), with_general) is None
