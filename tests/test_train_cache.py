"""The training cache: the same batches as decoding every epoch, resumable, checked, and used by `train`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from train_helpers import ROOT, make_synthetic  # noqa: E402

from animetagnet.vocab import Category, Tag, Vocabulary  # noqa: E402
from animetagnet_train import cache, config, data  # noqa: E402
from animetagnet_train.errors import TrainingError  # noqa: E402

SMOKE = ROOT / "configs" / "smoke.yaml"


def real_dataset(out: Path, shared_data: Path) -> Path:
    """The real 512 px posts and 128 px faces as a dataset (absolute image paths, labels = face folder or post set)."""
    faces = sorted((shared_data / "faces").glob("*/*.jpg"))[::200][:40]
    posts = sorted((shared_data / "danbooru-512px").rglob("*.jpg"))
    names = sorted({p.parent.name for p in faces})
    out.mkdir(parents=True)
    rows = [{"id": f"f{i}", "image": str(p), "tags": [p.parent.name]} for i, p in enumerate(faces)]
    rows += [{"id": f"p{i}", "image": str(p), "tags": ["post"]} for i, p in enumerate(posts)]
    rng = np.random.default_rng(0)
    rng.shuffle(rows)
    (out / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:-12]))
    (out / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[-12:]))
    Vocabulary([Tag("post", Category.GENERAL, 22, 0)] + [Tag(n, Category.CHARACTER, 2, i + 1) for i, n in enumerate(names)]
               ).write_csv(out / "selected_tags.csv")
    return out


@pytest.fixture(scope="module")
def real_ds(shared_data, tmp_path_factory):
    return real_dataset(tmp_path_factory.mktemp("realds") / "ds", shared_data)


def quiet(msg):
    pass


def test_cache_holds_exactly_the_uncached_images_and_labels(real_ds, tmp_path):
    ds = data.open_dataset(real_ds)
    syn = make_synthetic(tmp_path / "syn")  # non-square PNGs and JPEGs too
    for root, size in ((real_ds, 64), (syn, 48)):
        d = data.open_dataset(root)
        res = cache.build(root, size, tmp_path / f"c{size}", workers=2, log=quiet)
        assert res["built"] >= 1 and res["images"]["train"] == len(d.split("train").paths)
        for split in ("train", "val"):
            sp = d.split(split)
            plain = data.TagDataset(sp, len(d.vocab), size, None)
            cached = cache.CachedTagDataset(cache.CachedImages(res["dir"], split, sp, size), sp, len(d.vocab), None)
            order = list(range(len(sp.paths)))[::-1]  # any order, across shards
            images, targets = cached[order]
            for row, i in enumerate(order):
                img, tgt = plain[i]
                assert torch.equal(images[row], img), (root, split, i)
                assert torch.equal(targets[row], tgt)
    assert len(ds.split("train").paths) > 30


def test_same_seed_same_batches_with_flips(real_ds, tmp_path):
    """hflip 0.5, no crop: the loaders give the same labels and the same images (flipped alike) batch by batch."""
    d = data.open_dataset(real_ds)
    size, sp = 64, d.split("train")
    aug = config.AugmentConfig(hflip=0.5)
    res = cache.build(real_ds, size, tmp_path / "c", workers=1, log=quiet)
    plain = data.TagDataset(sp, len(d.vocab), size, aug, seed=3)
    cached = cache.CachedTagDataset(cache.CachedImages(res["dir"], "train", sp, size), sp, len(d.vocab), aug, seed=3)
    flips = 0
    for epoch in (0, 1):
        plain.epoch = cached.epoch = epoch
        s1, s2 = (data.EpochSampler(len(sp.paths), 3, shuffle=True) for _ in range(2))
        s1.set_epoch(epoch)
        s2.set_epoch(epoch)
        a = list(data.make_loader(plain, s1, 8, 0, False, True))
        b = list(cache.make_loader(cached, s2, 8, 0, False, True))
        assert len(a) == len(b) > 2
        for (ia, ta), (ib, tb, pb) in zip(a, b):
            assert torch.equal(ta, tb)
            got = cache.augment_on_device(ib, pb)
            diff = (got.float() - ia.float()).abs()
            # Square sources: flipping before or after pad+resize differs only by Pillow's rounding.
            assert diff.max() <= 2 and diff.mean() <= 0.05, (diff.max(), diff.mean())
            flips += int(pb[:, 0].sum())
    assert 0 < flips < 2 * len(b) * 8  # some flipped, some not: the comparison can fail


def test_crops_run_on_device_and_stay_in_range(real_ds, tmp_path):
    d = data.open_dataset(real_ds)
    sp = d.split("train")
    aug = config.AugmentConfig(hflip=0.5, crop_scale=[0.5, 0.9])
    res = cache.build(real_ds, 32, tmp_path / "c", workers=1, log=quiet)
    ds = cache.CachedTagDataset(cache.CachedImages(res["dir"], "train", sp, 32), sp, len(d.vocab), aug, seed=1)
    images, _, params = ds[list(range(8))]
    assert (params[:, 3] < 32).all() and (params[:, 1] + params[:, 3] <= 32).all()
    out = cache.augment_on_device(images, params)
    assert out.shape == images.shape and out.dtype == torch.uint8
    assert not torch.equal(out, images)
    # Same (seed, epoch, sample) -> same draws, in any worker.
    assert np.array_equal(cache.draw_params(aug, 32, 1, 0, 5), params[5].numpy())


def test_build_is_resumable_and_checked(tmp_path, monkeypatch):
    monkeypatch.setattr(cache, "SHARD_IMAGES", 5)
    ds = make_synthetic(tmp_path / "ds", n_train=17, n_val=6)
    out = tmp_path / "c"
    first = cache.build(ds, 32, out, workers=1, log=quiet, stop_after_shards=2)  # killed after two shards
    assert first["stopped"] and first["built"] == 2
    with pytest.raises(TrainingError, match="incomplete|does not match"):
        sp = data.open_dataset(ds).split("train")
        cache.CachedImages(out, "train", sp, 32)
    second = cache.build(ds, 32, out, workers=1, log=quiet)
    assert second["kept"] == 2 and second["built"] == 4 - 2 + 2  # train: 4 shards, val: 2
    again = cache.build(ds, 32, out, workers=1, log=quiet)
    assert again["built"] == 0 and again["kept"] == 6
    # A damaged shard is found by its checksum and rebuilt, nothing else.
    shard = out / "train-00001.u8"
    raw = bytearray(shard.read_bytes())
    raw[100] ^= 0xFF
    shard.write_bytes(bytes(raw))
    logs = []
    fixed = cache.build(ds, 32, out, workers=1, log=logs.append)
    assert fixed["built"] == 1 and any("checksum" in m for m in logs)
    # A changed image changes the fingerprint: the split is built again.
    img = next((ds / "images").glob("train_0.*"))
    img.write_bytes(img.read_bytes())
    import os

    os.utime(img, ns=(1, 1))
    logs.clear()
    redo = cache.build(ds, 32, out, workers=1, log=logs.append)
    assert redo["built"] == 4 and any("dataset changed" in m for m in logs)
    with pytest.raises(TrainingError, match="holds a cache at 32 px"):
        cache.build(ds, 48, out, workers=1, log=quiet)


def test_changed_preprocessing_rebuilds_the_cache(tmp_path, monkeypatch):
    from animetagnet import images

    monkeypatch.setattr(cache, "SHARD_IMAGES", 5)
    ds = make_synthetic(tmp_path / "ds", n_train=8, n_val=3)
    out = tmp_path / "c"
    assert cache.build(ds, 32, out, workers=1, log=quiet)["built"] == 3
    assert json.loads((out / "manifest.json").read_text())["preprocessing"]["draft_margin"] == images.DRAFT_MARGIN
    sp = data.open_dataset(ds).split("train")
    monkeypatch.setattr(images, "DRAFT_MARGIN", images.DRAFT_MARGIN + 1)  # e.g. a release that drafts less
    with pytest.raises(TrainingError, match="other preprocessing"):
        cache.CachedImages(out, "train", sp, 32)
    logs = []
    redo = cache.build(ds, 32, out, workers=1, log=logs.append)
    assert redo["built"] == 3 and redo["kept"] == 0 and any("other preprocessing" in m for m in logs)
    cache.CachedImages(out, "train", sp, 32)  # usable again
    assert cache.build(ds, 32, out, workers=1, log=quiet)["kept"] == 3


def test_train_with_cache_and_its_refusals(tmp_path):
    from animetagnet_train.train import train

    ds = make_synthetic(tmp_path / "ds")
    over = ["train.epochs=1", "data.augment.rotate_degrees=0", "data.augment.resample=[bicubic]", "data.cache=auto"]
    res = train(ds, tmp_path / "run", config.load(SMOKE, over))
    assert res.history and np.isfinite(res.history[0]["train_loss"])
    assert (ds / ".cache" / "32px" / "manifest.json").is_file()
    assert res.history[0]["data_wait_share"] < 1.0
    with pytest.raises(TrainingError, match="rotation and random resize filters"):
        train(ds, tmp_path / "run2", config.load(SMOKE, ["train.epochs=1", "data.cache=auto"]))


def test_cache_verb(tmp_path):
    from cli_helpers import run_cli

    ds = make_synthetic(tmp_path / "ds", n_train=6, n_val=3)
    proc = run_cli("cache", str(ds), "--size", "24", "--workers", "1")
    assert proc.returncode == 0, proc.stderr
    assert "train 6, val 3 images at 24 px" in proc.stderr
    proc = run_cli("cache", str(ds), "--size", "99999")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
