"""A pre-resized uint8 cache of a prepared dataset at the training size, so a GPU never waits for JPEG decoding.

Layout of a cache directory (default DATASET_DIR/.cache/SIZEpx, `data.cache: auto`):

- `manifest.json`: size, layout, the preprocessing parameters (`preprocessing()`: a cache built
  with others is rebuilt), the dataset's fingerprint per split (ids, paths, file sizes and
  modification times) and, per finished shard, its image range and sha256;
- `SPLIT-NNNNN.u8`: raw [count, S, S, 3] uint8 BGR arrays, read with numpy memmap: exactly
  what `data.TagDataset` yields without augmentation (THE preprocessing of images.py, which
  produces integral values, so uint8 is lossless).

Building is resumable: the manifest is rewritten after every shard, a rerun keeps the shards
whose checksum still matches and builds the rest; a changed dataset (fingerprint) starts over.

Augmentation with the cache runs on the training device on uint8 batches: horizontal flips and
crops of the cached square (resized back, bilinear). Flip decisions and crop boxes are drawn from
the same per-sample generator as `data.augment`, so without crops the flips are the same images'.
Rotation and random resize filters need the original images: refused with the cache.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from animetagnet.fileio import atomic_write_text, sha256_file

from .config import AugmentConfig
from .errors import TrainingError

FORMAT = 1
#: Images per shard: ~150 MB at 224 px, ~600 MB at 448 px; a lost shard costs little to rebuild.
SHARD_IMAGES = 1024


def default_dir(dataset_dir: Path, size: int) -> Path:
    return Path(dataset_dir) / ".cache" / f"{size}px"


def fingerprint(split) -> str:
    """What the cache of a split depends on: ids, paths, and each file's size and mtime."""
    h = hashlib.sha256()
    for i, p in zip(split.ids, split.paths):
        try:
            st = os.stat(p)
            h.update(f"{i}\0{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{i}\0{p}\0missing\n".encode())
    return h.hexdigest()




#: Bump when THE preprocessing changes in a way `preprocessing()` does not already show (padding,
#: channel order, the draft rule): a cache built by other code is then rebuilt, never trained on.
PREPROCESS_VERSION = 1


def preprocessing() -> dict:
    """What the cached pixels depend on besides the files: recorded in the manifest, compared on use."""
    from animetagnet import images

    return {"version": PREPROCESS_VERSION, "draft_margin": images.DRAFT_MARGIN, "resample": "bicubic",
            "pad": list(images.WHITE), "channels": "BGR"}


def _decode(args) -> np.ndarray:
    """One image through THE preprocessing at the cache size (in a worker process)."""
    from animetagnet.errors import ImageError
    from animetagnet.images import load_image, preprocess

    path, size = args
    try:
        return preprocess(load_image(path, draft_size=size), size).astype(np.uint8)
    except ImageError as exc:
        raise TrainingError(f"cannot read training image: {exc}") from None


def _load_manifest(cache_dir: Path) -> dict | None:
    try:
        return json.loads((cache_dir / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def build(dataset_dir: str | Path, size: int, cache_dir: str | Path | None = None, *, splits=("train", "val"),
          workers: int = 0, verify: bool = True, log: Callable[[str], None] | None = None,
          stop_after_shards: int = 0) -> dict:
    """Build (or finish, or check) the cache; -> {"dir", "built", "kept", "images"}.

    `verify`: recompute the sha256 of kept shards (else trust their sizes). `stop_after_shards`:
    testing aid, stop as if killed after building that many shards."""
    from . import data

    log = log or (lambda m: print(f"animetagnet: {m}", file=sys.stderr, flush=True))
    if not 16 <= size <= 4096:
        raise TrainingError(f"cache size {size}: expected 16..4096 pixels")
    ds = data.open_dataset(dataset_dir)
    cache_dir = Path(cache_dir) if cache_dir else default_dir(ds.root, size)
    cache_dir.mkdir(parents=True, exist_ok=True)
    old = _load_manifest(cache_dir) or {}
    if old and (old.get("format") != FORMAT or old.get("size") != size):
        raise TrainingError(f"{cache_dir} holds a cache at {old.get('size')} px, not {size}; choose another directory")
    manifest = {"format": FORMAT, "size": size, "layout": "NHWC BGR uint8 (THE preprocessing)",
                "preprocessing": preprocessing(),
                "dataset": str(ds.root.resolve()), "shard_images": SHARD_IMAGES, "splits": {}}
    if old and old.get("preprocessing") != manifest["preprocessing"]:
        log(f"cache {cache_dir}: built with other preprocessing ({old.get('preprocessing')}, now "
            f"{manifest['preprocessing']}); building it again")
        old = {}
    item_bytes = size * size * 3
    built = kept = 0
    from animetagnet.predict import usable_cores

    workers = workers or min(8, usable_cores())
    if workers > 1:
        import multiprocessing

        # forkserver: the trainer may already hold torch threads, which fork would copy mid-state.
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("forkserver"))
    else:
        pool = None
    try:
        for name in splits:
            if name not in ds.splits:
                continue
            sp = ds.split(name)
            fp = fingerprint(sp)
            prev = (old.get("splits") or {}).get(name) or {}
            if prev and prev.get("fingerprint") != fp:
                log(f"cache {name}: the dataset changed since the cache was built; building it again")
                prev = {}
            done = {s["file"]: s for s in prev.get("shards", [])}
            n = len(sp.paths)
            entry = {"images": n, "fingerprint": fp, "shards": []}
            manifest["splits"][name] = entry
            for k in range(math.ceil(n / SHARD_IMAGES)):
                start, count = k * SHARD_IMAGES, min(SHARD_IMAGES, n - k * SHARD_IMAGES)
                fname = f"{name}-{k:05d}.u8"
                path = cache_dir / fname
                have = done.get(fname)
                if have and have["start"] == start and have["count"] == count and path.is_file() \
                        and path.stat().st_size == count * item_bytes and (not verify or sha256_file(path) == have["sha256"]):
                    entry["shards"].append(have)
                    kept += 1
                    continue
                if have:
                    log(f"cache {name}: {fname} does not match its checksum; building it again")
                t0 = time.perf_counter()
                tmp = path.with_name(f".{fname}.tmp")
                mm = np.memmap(tmp, dtype=np.uint8, mode="w+", shape=(count, size, size, 3))
                jobs = [(p, size) for p in sp.paths[start : start + count]]
                results = pool.map(_decode, jobs, chunksize=16) if pool else map(_decode, jobs)
                for j, arr in enumerate(results):
                    mm[j] = arr
                mm.flush()
                del mm
                os.replace(tmp, path)
                entry["shards"].append({"file": fname, "start": start, "count": count, "sha256": sha256_file(path)})
                atomic_write_text(cache_dir / "manifest.json", json.dumps(manifest, indent=1) + "\n")
                built += 1
                log(f"cache {name}: {fname} ({count} images) in {time.perf_counter() - t0:.1f} s")
                if stop_after_shards and built >= stop_after_shards:
                    return {"dir": cache_dir, "built": built, "kept": kept, "stopped": True}
        atomic_write_text(cache_dir / "manifest.json", json.dumps(manifest, indent=1) + "\n")
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return {"dir": cache_dir, "built": built, "kept": kept,
            "images": {k: v["images"] for k, v in manifest["splits"].items()}}


class CachedImages:
    """One split of a cache as memory-mapped shards; `take(indices)` -> [B, S, S, 3] uint8."""

    def __init__(self, cache_dir: Path, split_name: str, split, size: int):
        manifest = _load_manifest(cache_dir)
        if manifest is None:
            raise TrainingError(f"{cache_dir}: no cache manifest (build it with `animetagnet cache DATASET --size {size}`)")
        if manifest.get("size") != size:
            raise TrainingError(f"{cache_dir}: the cache is {manifest.get('size')} px but model.image_size is {size}")
        if manifest.get("preprocessing") != preprocessing():
            raise TrainingError(f"{cache_dir}: the cache was built with other preprocessing (rebuild it)")
        entry = (manifest.get("splits") or {}).get(split_name)
        if not entry or entry.get("fingerprint") != fingerprint(split):
            raise TrainingError(f"{cache_dir}: the cache of {split_name} does not match the dataset (rebuild it)")
        self.cache_dir, self.size = cache_dir, size
        self.shards = [(s["start"], s["count"], s["file"]) for s in entry["shards"]]
        if sum(c for _, c, _ in self.shards) != entry["images"]:
            raise TrainingError(f"{cache_dir}: the cache of {split_name} is incomplete (rebuild it)")
        self._maps: dict[str, np.memmap] = {}  # opened lazily, per process (loader workers)

    def _map(self, fname: str, count: int) -> np.memmap:
        mm = self._maps.get(fname)
        if mm is None:
            mm = np.memmap(self.cache_dir / fname, dtype=np.uint8, mode="r", shape=(count, self.size, self.size, 3))
            self._maps[fname] = mm
        return mm

    def __getstate__(self):
        return {**self.__dict__, "_maps": {}}

    def take(self, indices) -> np.ndarray:
        idx = np.asarray(indices, dtype=np.int64)
        out = np.empty((len(idx), self.size, self.size, 3), dtype=np.uint8)
        for start, count, fname in self.shards:
            sel = np.flatnonzero((idx >= start) & (idx < start + count))
            if sel.size:
                local = idx[sel] - start
                order = np.argsort(local, kind="stable")  # sorted reads: sequential pages within a shard
                out[sel[order]] = self._map(fname, count)[local[order]]
        return out


def check_augment(aug: AugmentConfig) -> None:
    if aug.rotate_degrees > 0 or list(aug.resample) != ["bicubic"]:
        raise TrainingError("data.cache: rotation and random resize filters need the original images; set "
                            "data.augment.rotate_degrees=0 and data.augment.resample=[bicubic], or drop data.cache")


def draw_params(aug: AugmentConfig | None, size: int, seed: int, epoch: int, index: int) -> np.ndarray:
    """[flip, y0, x0, h, w] of one sample, drawn in `data.augment`'s order from its generator."""
    from .data import border_crop_box, random_area_box, sample_rng

    if aug is None:
        return np.array([0, 0, 0, size, size], dtype=np.int32)
    rng = sample_rng(seed, epoch, index)
    y0, x0, ch, cw = 0, 0, size, size
    lo, hi = aug.crop_scale
    if aug.crop_border > 0:  # the label-safe crop for scenes (data.border_crop_box), on the cached square
        x0, y0, x1, y1 = border_crop_box(size, size, aug.crop_border, rng)
        cw, ch = x1 - x0, y1 - y0
    elif hi < 1.0 or lo < 1.0:
        x0, y0, x1, y1 = random_area_box(size, size, aug.crop_scale, rng)
        cw, ch = x1 - x0, y1 - y0
    flip = int(rng.random() < aug.hflip)
    return np.array([flip, y0, x0, ch, cw], dtype=np.int32)


class CachedTagDataset(torch.utils.data.Dataset):
    """Batch-level items: `ds[list of indices]` -> (uint8 [B,S,S,3], targets [B,T][, params [B,5]]).

    Reading a whole batch at once from the memmap (sorted, per shard) is what keeps the loader
    ahead of a GPU; the pixels stay uint8 until the device."""

    def __init__(self, images: CachedImages, split, num_tags: int, aug: AugmentConfig | None, seed: int = 0):
        self.images, self.split, self.num_tags, self.aug, self.seed = images, split, num_tags, aug, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.split.paths)

    def __getitem__(self, indices):
        indices = list(indices)
        images = torch.from_numpy(self.images.take(indices))
        labels = [self.split.labels[i] for i in indices]
        targets = np.zeros((len(indices), self.num_tags), dtype=np.float32)
        targets[np.repeat(np.arange(len(indices)), [len(lab) for lab in labels]),
                np.concatenate(labels).astype(np.int64) if labels else []] = 1.0
        targets = torch.from_numpy(targets)
        if self.aug is None:
            return images, targets
        params = np.stack([draw_params(self.aug, self.images.size, self.seed, self.epoch, i) for i in indices])
        return images, targets, torch.from_numpy(params)


def make_loader(dataset: CachedTagDataset, sampler, batch_size: int, workers: int, pin: bool, drop_last: bool):
    batches = torch.utils.data.BatchSampler(sampler, batch_size, drop_last)
    kwargs = {"persistent_workers": False, "prefetch_factor": 4} if workers > 0 else {}
    return torch.utils.data.DataLoader(dataset, batch_size=None, sampler=batches, num_workers=workers,
                                       pin_memory=pin, **kwargs)


def augment_on_device(images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Apply the drawn flips and crops to a uint8 [B,S,S,3] batch where it lives (the GPU in training)."""
    params = params.to(images.device)
    flip = params[:, 0].bool()
    if bool(flip.any()):
        images = torch.where(flip[:, None, None, None], images.flip(2), images)
    size = images.shape[1]
    crop = (params[:, 3] < size) | (params[:, 4] < size)
    if bool(crop.any()):
        images = images.clone()
        for b in torch.nonzero(crop).flatten().tolist():
            _, y0, x0, h, w = params[b].tolist()
            patch = images[b, y0 : y0 + h, x0 : x0 + w].permute(2, 0, 1)[None].float()
            patch = torch.nn.functional.interpolate(patch, size=(size, size), mode="bilinear", align_corners=False,
                                                    antialias=True)
            images[b] = patch[0].round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0)
    return images


def ensure(dataset_dir: Path, size: int, setting: str, *, workers: int, verify: bool, log) -> Path:
    """`data.cache` -> a complete, checked cache directory (built or finished now when needed)."""
    cache_dir = default_dir(Path(dataset_dir), size) if setting == "auto" else Path(setting).expanduser()
    res = build(dataset_dir, size, cache_dir, workers=workers, verify=verify, log=log)
    if res["built"]:
        log(f"cache {cache_dir}: built {res['built']} shard(s), kept {res['kept']}")
    return cache_dir
