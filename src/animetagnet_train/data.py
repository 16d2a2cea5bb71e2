"""The training input pipeline: dataset directory -> label-safe augmentation -> THE core preprocessing -> batches."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from animetagnet.datasets.load import DatasetDirectory, DatasetError
from animetagnet.datasets.load import open_dataset as open_dataset_dir
from animetagnet.errors import ImageError
from animetagnet.images import load_image, preprocess
from animetagnet.vocab import Vocabulary

from .config import AugmentConfig
from .errors import TrainingError

_RESAMPLE = {
    "nearest": Image.NEAREST,
    "box": Image.BOX,
    "bilinear": Image.BILINEAR,
    "hamming": Image.HAMMING,
    "bicubic": Image.BICUBIC,
    "lanczos": Image.LANCZOS,
}


@dataclass
class Split:
    ids: list[str]
    paths: list[str]
    labels: list[np.ndarray]  # tag indices per image (int32)


@dataclass
class DatasetDir:
    root: Path
    vocab: Vocabulary
    splits: dict[str, Split]

    def split(self, name: str) -> Split:
        if name not in self.splits:
            raise TrainingError(f"{self.root}: the dataset has no {name}.jsonl")
        return self.splits[name]

    def tag_counts(self, split: str = "train") -> np.ndarray:
        counts = np.zeros(len(self.vocab), dtype=np.int64)
        for lab in self.split(split).labels:
            counts[lab] += 1
        return counts


def _read_split(ds: DatasetDirectory, name: str) -> Split:
    """One split's records as tag indices, through the core's reader (one parser of split files)."""
    root, vocab = ds.root, ds.vocab
    ids, paths, labels = [], [], []
    for example in ds.iter_split(name):
        idx = []
        for t in example.tags:
            i = vocab.get_index(t)
            if i is None:
                raise TrainingError(f"{root / (name + '.jsonl')}: record {example.id}: tag {t!r} is not in selected_tags.csv")
            idx.append(i)
        paths.append(example.image)
        ids.append(example.id)
        labels.append(np.array(sorted(set(idx)), dtype=np.int32))
    return Split(ids, paths, labels)


def with_vocabulary(ds: DatasetDir, vocab: Vocabulary) -> DatasetDir:
    """The dataset with its labels re-indexed by name into `vocab` (a superset of its own vocabulary).

    `train --init-from` trains on the checkpoint's vocabulary plus the dataset's new tags, and
    `export` reads the dataset in the run's vocabulary the same way."""
    if vocab.names == ds.vocab.names:
        return ds
    lost = [n for n in ds.vocab.names if n not in vocab]
    if lost:
        raise TrainingError(f"{ds.root}: {len(lost)} dataset tag(s) are not in the run's vocabulary (e.g. {lost[:5]})")
    mapping = np.array([vocab.index(n) for n in ds.vocab.names], dtype=np.int32)
    splits = {name: Split(sp.ids, sp.paths, [np.sort(mapping[lab]).astype(np.int32) for lab in sp.labels])
              for name, sp in ds.splits.items()}
    return DatasetDir(ds.root, vocab, splits)


def open_dataset(root: str | Path) -> DatasetDir:
    """Read a dataset directory (docs/formats.md) through the core's one validator.

    Its DatasetError becomes a TrainingError with the same message: everything that stops
    a run is a TrainingError.
    """
    try:
        ds = open_dataset_dir(root, require=("train",))
        splits = {name: _read_split(ds, name) for name in ds.splits}
    except DatasetError as exc:
        raise TrainingError(str(exc)) from None
    root, vocab = ds.root, ds.vocab
    if not splits["train"].paths:
        raise TrainingError(f"{root}/train.jsonl has no records")
    return DatasetDir(root, vocab, splits)


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """Augmentation randomness depends only on (seed, epoch, sample): workers and resumes cannot change it."""
    return np.random.default_rng([seed, epoch, index])


def mixup_batch(images, targets, alpha: float, rng: np.random.Generator):
    """Blend a batch with a permutation of itself: (lam * x + (1 - lam) * x[perm], same for targets).

    `lam ~ Beta(alpha, alpha)` and the permutation come from `rng` (seeded by the step, so a
    resumed run mixes the same pairs). Images come back as float32 (0..255, any layout); the
    targets are soft labels, which BCE and ASL take as they are."""
    lam = float(rng.beta(alpha, alpha))
    perm = torch.from_numpy(rng.permutation(images.shape[0])).to(images.device)
    x = images.float()
    return x * lam + x[perm] * (1.0 - lam), targets * lam + targets[perm] * (1.0 - lam)


#: One random stream per batch augmentation, so that turning one on does not move another's draws.
_STEP_STREAMS = {"mixup": 0x6D6978, "erase": 0x657261, "grayscale": 0x677279}


def step_rng(seed: int, step: int, rank: int, stream: str) -> np.random.Generator:
    """A batch augmentation's randomness for one optimizer step of one process: a function of (seed, step, rank)."""
    return np.random.default_rng([seed, step, rank, _STEP_STREAMS[stream]])


def erase_batch(images: torch.Tensor, prob: float, area: tuple[float, float], rng: np.random.Generator) -> torch.Tensor:
    """Random erasing on a [B,H,W,C] batch (uint8 or float 0..255): each image, with probability
    `prob`, gets one rectangle of uniform noise covering `area` of it (aspect 0.3-3.3).

    Our own rather than timm's RandomErasing: that one draws from Python's global `random`, so a
    resumed run would erase other patches; here every draw comes from `rng` (seeded by the step).
    """
    b, h, w = images.shape[:3]
    out = None
    for i in range(b):
        if rng.random() >= prob:
            continue
        for _ in range(10):  # a drawn shape may not fit; retry as Zhong et al. do
            target = rng.uniform(*area) * h * w
            aspect = math.exp(rng.uniform(math.log(0.3), math.log(1 / 0.3)))
            eh, ew = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
            if 0 < eh < h and 0 < ew < w:
                break
        else:
            continue
        y0, x0 = int(rng.integers(0, h - eh + 1)), int(rng.integers(0, w - ew + 1))
        noise = rng.integers(0, 256, size=(eh, ew, images.shape[3]), dtype=np.uint8)
        if out is None:
            out = images.clone()
        out[i, y0 : y0 + eh, x0 : x0 + ew] = torch.from_numpy(noise).to(images.device, images.dtype)
    return images if out is None else out


def grayscale_batch(images: torch.Tensor, prob: float, rng: np.random.Generator) -> torch.Tensor:
    """Each image of a [B,H,W,3] BGR batch, with probability `prob`, replaced by its luma (ITU-R BT.601,
    as Pillow's convert("L")) in all three channels; dtype kept (uint8 rounds)."""
    pick = torch.from_numpy(rng.random(images.shape[0]) < prob).to(images.device)
    if not bool(pick.any()):
        return images
    x = images.float()
    luma = x[..., 0:1] * 0.114 + x[..., 1:2] * 0.587 + x[..., 2:3] * 0.299
    if images.dtype == torch.uint8:
        luma = luma.round_()
    grey = luma.expand_as(x).to(images.dtype)
    return torch.where(pick[:, None, None, None], grey, images)


def batch_augment(images: torch.Tensor, targets: torch.Tensor, aug: AugmentConfig, seed: int, step: int, rank: int = 0):
    """The augmentations drawn per batch rather than per image (greyscale, erasing, mixup), in that order.

    Every draw comes from a generator seeded by (seed, step, rank, which), so a resumed run
    repeats them exactly; they run on the training device, cached data or not.
    """
    if aug.grayscale > 0:
        images = grayscale_batch(images, aug.grayscale, step_rng(seed, step, rank, "grayscale"))
    if aug.erase > 0:
        images = erase_batch(images, aug.erase, tuple(aug.erase_area), step_rng(seed, step, rank, "erase"))
    if aug.mixup > 0:
        images, targets = mixup_batch(images, targets, aug.mixup, step_rng(seed, step, rank, "mixup"))
    return images, targets


def colour_safe_problem(aug: AugmentConfig, vocab) -> str | None:
    """Why `aug` would make labels false for this vocabulary (a colour change with general tags), or None."""
    from animetagnet.vocab import Category

    general = [t.name for t in vocab if t.category == Category.GENERAL]
    if aug.grayscale > 0 and general:
        return (f"data.augment.grayscale would make colour tags false: the vocabulary has {len(general)} general tags "
                f"(e.g. {general[0]}); it is for character-only datasets such as face crops")
    return None


def border_crop_box(w: int, h: int, border: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A crop that removes at most `border` of the width (height) at each side; aspect kept.

    Why it is label-safe for scenes: a box of side >= m * w anywhere in the image loses at
    most border * w per side, so at least 1 - border / m of it stays in the frame (scenes:
    faces >= 56 of 256 px, border 0.06 -> >= 72% of every face kept), and no label can go
    out of view. A random-area crop (crop_scale) gives no such bound. The same shrink on
    both axes keeps the aspect, so a square scene needs no padding.
    """
    bw, bh = int(border * w), int(border * h)
    shrink = rng.uniform(0.0, 2.0 * border)
    tx, ty = min(2 * bw, int(shrink * w)), min(2 * bh, int(shrink * h))
    left = int(rng.integers(max(0, tx - bw), min(bw, tx) + 1))
    top = int(rng.integers(max(0, ty - bh), min(bh, ty) + 1))
    return left, top, w - (tx - left), h - (ty - top)


def random_area_box(w: int, h: int, crop_scale: tuple[float, float], rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A random-area crop (`crop_scale` of the area, aspect within 0.9-1.1), as (left, top, right, bottom).

    One definition for the PIL augmentation and the cached-square loader, so both draw the same
    box from the same generator state.
    """
    lo, hi = crop_scale
    area = rng.uniform(lo, hi)
    log_r = rng.uniform(math.log(0.9), math.log(1.0 / 0.9))
    cw = min(w, max(1, round(w * math.sqrt(area * math.exp(log_r)))))
    ch = min(h, max(1, round(h * math.sqrt(area / math.exp(log_r)))))
    x0 = int(rng.integers(0, w - cw + 1))
    y0 = int(rng.integers(0, h - ch + 1))
    return x0, y0, x0 + cw, y0 + ch


def augment(img: Image.Image, size: int, aug: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """Label-safe augmentation on PIL (flip, small crop, small rotation, resize filter), then THE preprocessing.

    No colour changes: hair and eye colours are tags, so colour jitter would make labels false
    (the one exception, greyscale for character-only sets, is a batch augmentation: `batch_augment`).
    Two crops: `crop_scale` (random area; one-object images such as face crops) and
    `crop_border` (bounded per side; images with several objects anywhere, such as scenes).
    """
    from animetagnet.images import to_rgb_on_white

    img = to_rgb_on_white(img)
    w, h = img.size
    lo, hi = aug.crop_scale
    if aug.crop_border > 0:
        img = img.crop(border_crop_box(w, h, aug.crop_border, rng))
    elif hi < 1.0 or lo < 1.0:
        img = img.crop(random_area_box(w, h, aug.crop_scale, rng))
    if aug.rotate_degrees > 0:
        angle = rng.uniform(-aug.rotate_degrees, aug.rotate_degrees)
        img = img.rotate(angle, resample=Image.BILINEAR, fillcolor=(255, 255, 255))
    if rng.random() < aug.hflip:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    names = aug.resample
    resample = _RESAMPLE[names[int(rng.integers(0, len(names)))]]
    return preprocess(img, size, resample=resample)


class TagDataset(torch.utils.data.Dataset):
    """Items are (uint8 HWC BGR image, multi-hot float32 target); the model does the normalisation."""

    def __init__(self, split: Split, num_tags: int, size: int, aug: AugmentConfig | None, seed: int = 0):
        self.split, self.num_tags, self.size, self.aug, self.seed = split, num_tags, size, aug, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.split.paths)

    def __getitem__(self, index: int):
        path = self.split.paths[index]
        try:
            img = load_image(path, draft_size=self.size)
        except ImageError as exc:
            raise TrainingError(f"cannot read training image: {exc}") from None
        if self.aug is None:
            arr = preprocess(img, self.size)
        else:
            arr = augment(img, self.size, self.aug, sample_rng(self.seed, self.epoch, index))
        # preprocess() yields integral 0..255 floats; uint8 is lossless and 4x cheaper to ship between processes.
        image = torch.from_numpy(arr.astype(np.uint8))
        target = torch.zeros(self.num_tags, dtype=torch.float32)
        target[torch.from_numpy(self.split.labels[index]).long()] = 1.0
        return image, target


class EpochSampler(torch.utils.data.Sampler[int]):
    """Deterministic shuffled order per (seed, epoch), sharded by rank, resumable at any batch."""

    def __init__(self, n: int, seed: int, shuffle: bool, rank: int = 0, world: int = 1, drop_last: bool = False):
        self.n, self.seed, self.shuffle, self.rank, self.world = n, seed, shuffle, rank, world
        self.drop_last = drop_last
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """`start`: number of this rank's samples already consumed this epoch (resume)."""
        self.epoch, self.start = epoch, start

    def indices(self) -> list[int]:
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch, 7]).permutation(self.n).tolist()
        else:
            order = list(range(self.n))
        if self.world > 1:
            per = math.ceil(self.n / self.world)
            order = (order + order[: per * self.world - self.n])[self.rank :: self.world]
        return order

    def __iter__(self):
        return iter(self.indices()[self.start :])

    def __len__(self) -> int:
        return len(self.indices()) - self.start


def make_loader(dataset: TagDataset, sampler: EpochSampler, batch_size: int, workers: int, pin: bool, drop_last: bool):
    kwargs = {}
    if workers > 0:
        kwargs = {"persistent_workers": False, "prefetch_factor": 4}
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=pin,
        drop_last=drop_last,
        **kwargs,
    )
