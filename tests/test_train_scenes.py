"""Multi-object training: the label-safe crop, and the scenes recipe learning from a few dozen real-pixel scenes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("torch")
pytest.importorskip("timm")

from animetagnet.errors import UsageError  # noqa: E402
from animetagnet_train import config as config_mod  # noqa: E402
from animetagnet_train.data import augment, border_crop_box  # noqa: E402

from train_helpers import ROOT  # noqa: E402

SCENES_CFG = ROOT / "configs" / "scenes-cpu.yaml"
PRETRAIN_CFG = ROOT / "configs" / "scenes-pretrain-cpu.yaml"
FACE = 56  # the smallest face make_scenes pastes into a 256 px scene


def _kept(box, obj) -> float:
    """Share of `obj` (x0, y0, x1, y1) inside the crop `box`."""
    ix = max(0, min(box[2], obj[2]) - max(box[0], obj[0]))
    iy = max(0, min(box[3], obj[3]) - max(box[1], obj[1]))
    return ix * iy / ((obj[2] - obj[0]) * (obj[3] - obj[1]))


def _random_area_box(w, h, lo, rng):
    """The crop_scale crop as data.augment draws it (area in [lo, 1], aspect near 1)."""
    area = rng.uniform(lo, 1.0)
    cw = ch = round(w * np.sqrt(area))
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return x0, y0, x0 + cw, y0 + ch


def test_border_crop_keeps_most_of_every_face_wherever_it_is():
    border = config_mod.load(SCENES_CFG).data.augment.crop_border
    bound = (1 - int(border * 256) / FACE) ** 2  # each side loses at most int(border * 256) px
    rng = np.random.default_rng(0)
    places = [(x, y, x + FACE, y + FACE) for x in range(0, 256 - FACE + 1, 25) for y in (0, 100, 256 - FACE)]
    worst, worst_area_crop = 1.0, 1.0
    for _ in range(1000):
        box = border_crop_box(256, 256, border, rng)
        assert box[2] - box[0] == box[3] - box[1]  # square stays square: no padding
        worst = min(worst, min(_kept(box, p) for p in places))
        worst_area_crop = min(worst_area_crop, min(_kept(_random_area_box(256, 256, 0.5, rng), p) for p in places))
    assert worst >= bound - 1e-9 and bound > 0.5
    assert worst < bound + 0.05  # the bound is reached, not just loose
    # The random-area crop (the faces recipe's) has no such bound: it cuts a corner face away.
    assert worst_area_crop < 0.3


def _corner_scene() -> tuple[Image.Image, list[tuple[int, int, int]]]:
    colours = [(230, 20, 20), (20, 200, 20), (20, 20, 230), (230, 230, 20)]
    im = Image.new("RGB", (256, 256), (128, 128, 128))
    for (x, y), c in zip([(0, 0), (256 - FACE, 0), (0, 256 - FACE), (256 - FACE, 256 - FACE)], colours):
        im.paste(Image.new("RGB", (FACE, FACE), c), (x, y))
    return im, colours


def _visible(arr_bgr: np.ndarray, colour) -> int:
    rgb = arr_bgr[:, :, ::-1].astype(int)
    return int((np.abs(rgb - np.array(colour)).max(axis=2) < 40).sum())


def test_scenes_augmentation_never_pushes_a_corner_object_out():
    aug = config_mod.load(SCENES_CFG).data.augment
    size = 128
    im, colours = _corner_scene()
    full = (FACE * size / 256) ** 2
    bound = (1 - int(aug.crop_border * 256) / FACE) ** 2
    worst = 1.0
    for i in range(60):
        out = augment(im, size, aug, np.random.default_rng([0, i]))
        worst = min(worst, min(_visible(out, c) for c in colours) / full)
    assert worst >= 0.9 * bound  # resampling blurs the edges a little
    # The same scene under the faces recipe's crop loses a corner entirely in some draws.
    faces_aug = aug.model_copy(update={"crop_border": 0.0, "crop_scale": [0.3, 1.0]})
    lost = min(min(_visible(augment(im, size, faces_aug, np.random.default_rng([1, i])), c) for c in colours)
               for i in range(60))
    assert lost / full < 0.25


def test_crop_border_excludes_random_area_crops_and_faces_recipe_keeps_its_own():
    with pytest.raises(UsageError, match="crop_border and crop_scale"):
        config_mod.load(None, ["data.augment.crop_border=0.05", "data.augment.crop_scale=[0.7,1.0]"])
    with pytest.raises(UsageError, match="crop_border"):
        config_mod.load(None, ["data.augment.crop_border=0.3"])
    # Random erasing can hide a whole small face of a scene: not with the scenes crop either.
    with pytest.raises(UsageError, match="crop_border and erase"):
        config_mod.load(None, ["data.augment.crop_border=0.05", "data.augment.erase=0.5"])
    faces = config_mod.load(ROOT / "configs" / "faces-cpu.yaml").data.augment
    assert faces.crop_border == 0.0 and faces.crop_scale[0] < 1.0 and faces.rotate_degrees > 0
    scenes = config_mod.load(SCENES_CFG)
    assert scenes.data.augment.crop_scale == [1.0, 1.0] and scenes.data.augment.rotate_degrees == 0
    assert scenes.model.timm_args.get("global_pool") in ("max", "avgmax", "catavgmax")


# --- the recipe learns: a few dozen scenes of real faces --------------------------------------

CHARACTERS = ("gawr_gura", "mori_calliope")


def _write_scenes(data_dir: Path, root: Path) -> None:
    """kohya caption folders train/ val/ test/ of 128 px scenes: 0-2 real face crops of two
    characters on a flat colour; faces of one post stay in one split (as make_scenes does)."""
    rng = np.random.default_rng(7)
    faces = {c: sorted((data_dir / "faces" / c).glob("*.jpg")) for c in CHARACTERS}
    by_split = {"train": (0, 64), "val": (1, 32), "test": (2, 8)}
    for split, (k, n) in by_split.items():
        pool = {c: [p for p in ps if int(p.name[:2], 16) % 3 == k] for c, ps in faces.items()}
        d = root / split
        d.mkdir(parents=True)
        for i in range(n):
            im = Image.new("RGB", (128, 128), tuple(int(v) for v in rng.integers(0, 256, 3)))
            present = [c for c in CHARACTERS if rng.random() < 0.5]
            for j, c in enumerate(present):
                s = int(rng.integers(44, 64))
                face = Image.open(pool[c][int(rng.integers(len(pool[c])))]).convert("RGB").resize((s, s))
                x = int(rng.integers(0, 64 - s // 2)) + 64 * j if len(present) == 2 else int(rng.integers(0, 128 - s))
                im.paste(face, (min(x, 128 - s), int(rng.integers(0, 128 - s))))
            im.save(d / f"{i:03d}.jpg", quality=92)
            (d / f"{i:03d}.txt").write_text(", ".join(present), encoding="utf-8")


def _write_faces(data_dir: Path, root: Path) -> None:
    """Stage 1's input: the faces of the training (and validation) scenes' pools, as split folders."""
    for split, k in (("train", 0), ("val", 1)):
        for c in CHARACTERS:
            d = root / split / c
            d.mkdir(parents=True)
            for p in sorted((data_dir / "faces" / c).glob("*.jpg")):
                if int(p.name[:2], 16) % 3 == k:
                    d.joinpath(p.name).write_bytes(p.read_bytes())


def test_scenes_recipe_learns_a_few_dozen_scenes(shared_data, tmp_path):
    """Both stages as shipped, made small: faces (scenes-pretrain-cpu.yaml), then scenes from those weights."""
    from animetagnet.datasets.curation import CurationRules
    from animetagnet.datasets.prepare import PrepareOptions, prepare_dataset
    from animetagnet_train.train import train

    tables = [str(shared_data / "tags" / "danbooru_tags.csv")]
    _write_faces(shared_data, tmp_path / "faces")
    faces_ds = tmp_path / "ds-faces"
    prepare_dataset(PrepareOptions(source=str(tmp_path / "faces"), out=str(faces_ds), plot=False,
                                   rules=CurationRules(min_count={"*": 1}), tag_tables=tables))
    pre = config_mod.load(PRETRAIN_CFG, ["model.image_size=48", "data.batch_size=16", "data.workers=0",
                                         "train.epochs=4", "train.progress=false"])
    assert pre.model.timm_args == config_mod.load(SCENES_CFG).model.timm_args  # the head carries over
    stage1 = train(faces_ds, tmp_path / "pretrain", pre)
    assert stage1.best["val_map"] > 0.8, stage1.best

    _write_scenes(shared_data, tmp_path / "scenes")
    ds = tmp_path / "ds"
    info = prepare_dataset(PrepareOptions(source=str(tmp_path / "scenes"), out=str(ds), plot=False,
                                          rules=CurationRules(min_count={"*": 1}), tag_tables=tables))
    assert info["split"]["mode"] == "predefined"
    cfg = config_mod.load(SCENES_CFG, ["model.image_size=96", "data.batch_size=16", "data.workers=0",
                                       "train.epochs=8", "train.progress=false",
                                       f"model.init_from={json.dumps(str(tmp_path / 'pretrain'))}"])
    res = train(ds, tmp_path / "run", cfg)
    hist = res.history
    assert hist[-1]["train_loss"] < 0.75 * hist[0]["train_loss"]
    assert config_mod.load(tmp_path / "run" / "config.yaml").model.init_from == str(tmp_path / "pretrain")
    val = [json.loads(l) for l in (ds / "val.jsonl").read_text().splitlines()]
    prevalence = np.mean([[c in r["tags"] for c in CHARACTERS] for r in val])
    # mAP of a scorer that knows nothing is about the prevalence; the recipe must be well above it.
    assert res.best["val_map"] > max(0.75, prevalence + 0.25), (res.best, prevalence)


def test_cached_training_draws_the_same_border_crop():
    """data.cache crops on the device from drawn boxes: the scenes crop must be the same bounded one."""
    from animetagnet_train import cache
    from animetagnet_train.data import sample_rng

    aug = config_mod.load(SCENES_CFG).data.augment
    size, limit = 128, int(aug.crop_border * 128)
    for i in range(200):
        flip, y0, x0, ch, cw = cache.draw_params(aug, size, 0, 1, i).tolist()
        left, top, right, bottom = border_crop_box(size, size, aug.crop_border, sample_rng(0, 1, i))
        assert (x0, y0, x0 + cw, y0 + ch) == (left, top, right, bottom)
        assert max(x0, y0, size - x0 - cw, size - y0 - ch) <= limit
