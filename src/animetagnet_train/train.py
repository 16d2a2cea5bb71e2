"""The training loop: one run directory in, checkpoints, metrics and the best weights out; resumable at any step."""

from __future__ import annotations

import copy
import csv
import io
import json
import math
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from animetagnet.fileio import atomic_write_text
from animetagnet.vocab import Vocabulary

from . import checkpoint, config as config_mod, data, losses, metrics
from . import model as model_mod
from .config import RunConfig
from .distributed import Dist, pick_device, setup
from .errors import TrainingError

HIGHER_IS_BETTER = {"map": True, "macro_f1": True, "micro_f1": True, "top1": True, "loss": False}


def lr_at(step: int, total: int, warmup: int, base: float, min_ratio: float) -> float:
    """Linear warmup then cosine to base*min_ratio; a pure function of the step, so resuming needs no scheduler state."""
    if warmup > 0 and step < warmup:
        return base * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def make_optimizer(cfg: config_mod.OptimConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        # Norm layers and biases are not weight-decayed (standard for CNNs and ViTs alike).
        (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas))
    if cfg.name == "lamb":
        from timm.optim import Lamb

        return Lamb(groups, lr=cfg.lr, betas=tuple(cfg.betas))
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.betas[0], nesterov=True)


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float, step: int) -> None:
    # Warm the decay up so that an EMA of a from-scratch model is not dominated by random init.
    d = min(decay, (1 + step) / (10 + step))
    for e, m in zip(ema.state_dict().values(), model.state_dict().values()):
        if e.dtype.is_floating_point:
            e.mul_(d).add_(m.detach(), alpha=1 - d)
        else:
            e.copy_(m)


@torch.no_grad()
def predict(model: torch.nn.Module, loader, device: torch.device, amp_ctx) -> tuple[np.ndarray, np.ndarray]:
    model.eval()
    probs, targets = [], []
    for images, target in loader:
        with amp_ctx():
            logits = model(images.to(device, non_blocking=True))
        probs.append(torch.sigmoid(logits.float()).cpu().numpy())
        targets.append(target.numpy())
    return np.concatenate(probs), np.concatenate(targets)


def _bce(probs: np.ndarray, targets: np.ndarray) -> float:
    p = np.clip(probs, 1e-7, 1 - 1e-7)
    return float(-(targets * np.log(p) + (1 - targets) * np.log(1 - p)).mean())


def write_metrics(run_dir: Path, history: list[dict]) -> None:
    atomic_write_text(run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history))
    keys: list[str] = []
    for r in history:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    w.writeheader()
    w.writerows(history)
    atomic_write_text(run_dir / "metrics.csv", buf.getvalue())


class _StopFlag:
    """SIGTERM/SIGINT: finish the current step, checkpoint, exit (a second signal kills as usual)."""

    def __init__(self):
        self.signal: int | None = None
        self._old = {}

    def __enter__(self):
        import threading

        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGTERM, signal.SIGINT):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signal = signum
        signal.signal(signum, self._old.get(signum, signal.SIG_DFL))

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


@dataclass
class Result:
    run_dir: Path
    stopped: bool = False
    interrupted: bool = False
    best: dict = field(default_factory=dict)
    history: list = field(default_factory=list)


def _tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(str(run_dir / "tensorboard"))
    except Exception:  # noqa: BLE001 - optional: tensorboard not installed
        return None


def _log(dist: Dist, msg: str) -> None:
    if dist.main:
        print(msg, file=sys.stderr, flush=True)


def _diff(a: dict, b: dict, prefix: str = "") -> dict:
    out = {}
    for k in b:
        if isinstance(b[k], dict):
            out.update(_diff(a.get(k, {}), b[k], f"{prefix}{k}."))
        elif a.get(k) != b[k]:
            out[f"{prefix}{k}"] = [a.get(k), b[k]]
    return out


def prepare_run_dir(run_dir: Path, cfg: RunConfig, vocab: Vocabulary, resume: bool, dataset_dir: Path) -> None:
    state = run_dir / "checkpoints" / checkpoint.STATE_FILE
    if resume:
        if not checkpoint.has_state(run_dir):
            raise TrainingError(f"--resume: {run_dir} has no checkpoint to resume from ({state} missing)")
        saved = Vocabulary.read_csv(run_dir / "selected_tags.csv")
        if saved.names != vocab.names:
            raise TrainingError(
                f"--resume: the dataset's vocabulary ({len(vocab)} tags) differs from the run's ({len(saved)} tags)"
            )
        before = config_mod.load(run_dir / "config.yaml")
        if before != cfg:
            # Overrides given with --resume (e.g. more epochs) become the run's config; the change is logged.
            changes = _diff(config_mod.to_dict(before), config_mod.to_dict(cfg))
            atomic_write_text(run_dir / "config.yaml", config_mod.dump_yaml(cfg))
            info = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").is_file() else {}
            info.setdefault("resumed_with", []).append(changes)
            atomic_write_text(run_dir / "run.json", json.dumps(info, indent=2) + "\n")
        return
    if checkpoint.has_state(run_dir):
        raise TrainingError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --out")
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", config_mod.dump_yaml(cfg))
    vocab.write_csv(run_dir / "selected_tags.csv")
    atomic_write_text(run_dir / "run.json", json.dumps({"dataset": str(dataset_dir.resolve())}, indent=2) + "\n")


def _out_of_memory(exc: BaseException) -> bool:
    text = str(exc)
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in text or "can't allocate memory" in text


def train(dataset_dir: str | Path, run_dir: str | Path, cfg: RunConfig, resume: bool = False) -> Result:
    try:
        return _train(Path(dataset_dir), Path(run_dir), cfg, resume)
    except RuntimeError as exc:
        if _out_of_memory(exc):
            raise TrainingError(
                f"out of memory with data.batch_size={cfg.data.batch_size} at model.image_size={cfg.model.image_size}; "
                "lower the batch size (e.g. --set data.batch_size=16) or the image size"
            ) from None
        raise


def _train(dataset_dir: Path, run_dir: Path, cfg: RunConfig, resume: bool) -> Result:
    trainer = Trainer(dataset_dir, run_dir, cfg, resume)
    try:
        return trainer.run()
    finally:
        trainer.close()


class Trainer:
    """One training run: set up once (device, data, model, optimizer, state), then epochs of steps."""

    def __init__(self, dataset_dir: Path, run_dir: Path, cfg: RunConfig, resume: bool):
        self.cfg, self.run_dir = cfg, run_dir
        t_cfg = cfg.train
        device = pick_device(t_cfg.device)
        self.dist = dist = setup(device.type)
        if dist.enabled and device.type == "cuda":
            device = torch.device("cuda", dist.local_rank)
            torch.cuda.set_device(device)
        self.device = device
        if t_cfg.threads > 0:
            torch.set_num_threads(t_cfg.threads)
        ds = data.open_dataset(dataset_dir)
        if cfg.model.init_from and cfg.model.extend_vocab:
            # Fine-tuning keeps every output of the checkpoint and adds the dataset's new tags.
            ds = data.with_vocabulary(ds, model_mod.init_vocabulary(cfg.model.init_from, ds.vocab))
        self.vocab = vocab = ds.vocab
        if problem := data.colour_safe_problem(cfg.data.augment, vocab):
            raise TrainingError(problem)
        if "val" not in ds.splits:
            raise TrainingError(f"{dataset_dir}: val.jsonl is missing (needed to pick the best checkpoint)")

        torch.manual_seed(t_cfg.seed)
        net, _ = model_mod.build(cfg.model, vocab)
        if dist.main:
            prepare_run_dir(run_dir, cfg, vocab, resume, dataset_dir)
        dist.barrier()
        self._setup_model(net)
        self._setup_data(ds)

        self.progress = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "best": None, "history": []}
        if resume:
            self.progress = checkpoint.load_state(run_dir, self.net, self.ema, self.optimizer, self.scaler)
            _log(dist, f"resuming {run_dir} at epoch {self.progress['epoch'] + 1}, step {self.progress['global_step']}")
        self.train_net = self.net
        if dist.enabled:
            ids = [device.index] if device.type == "cuda" else None
            self.train_net = torch.nn.parallel.DistributedDataParallel(self.net, device_ids=ids)
        self.tb = _tensorboard(run_dir) if dist.main else None
        self.result = Result(run_dir)
        _log(dist, f"training {cfg.model.backbone}@{cfg.model.image_size} on {device} ({dist.world} process(es)), "
                   f"{len(self.train_ds)} train / {len(self.val_ds)} val images, {len(vocab)} tags, "
                   f"{self.steps_per_epoch} steps/epoch x {t_cfg.epochs} epochs, amp={self.amp}, "
                   f"channels_last={self.channels_last}")

    # --- setup -------------------------------------------------------------
    def _setup_model(self, net: torch.nn.Module) -> None:
        cfg, t_cfg, device = self.cfg, self.cfg.train, self.device
        use_cuda = device.type == "cuda"
        self.channels_last = t_cfg.channels_last == "on" or (t_cfg.channels_last == "auto" and use_cuda)
        net = net.to(device)
        if self.channels_last:
            net = net.to(memory_format=torch.channels_last)
        amp = t_cfg.amp
        if amp == "auto":
            amp = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if use_cuda else "off"
        self.amp = amp
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
        self.net = net
        self.ema = copy.deepcopy(net).eval() if cfg.optim.ema_decay > 0 else None
        if self.ema is not None:
            for p in self.ema.parameters():
                p.requires_grad_(False)
        self.optimizer = make_optimizer(cfg.optim, net)

    def _setup_data(self, ds: data.DatasetDir) -> None:
        cfg, dist = self.cfg, self.dist
        self.criterion = losses.build(cfg.loss, ds.tag_counts("train")).to(self.device)
        train_split, val_split = ds.split("train"), ds.split("val")
        if cfg.data.limit_train:
            train_split = data.Split(*(x[: cfg.data.limit_train] for x in (train_split.ids, train_split.paths, train_split.labels)))
        if cfg.data.limit_val:
            val_split = data.Split(*(x[: cfg.data.limit_val] for x in (val_split.ids, val_split.paths, val_split.labels)))
        size, n_tags = cfg.model.image_size, len(self.vocab)
        self.cached = bool(cfg.data.cache)
        if self.cached:
            from . import cache

            cache.check_augment(cfg.data.augment)
            cdir = cache.ensure(ds.root, size, cfg.data.cache, workers=max(1, cfg.data.workers),
                                verify=cfg.data.cache_verify, log=lambda m: _log(dist, m)) if dist.main else None
            dist.barrier()
            if cdir is None:  # other ranks: the directory rank 0 just built
                cdir = cache.default_dir(ds.root, size) if cfg.data.cache == "auto" else Path(cfg.data.cache).expanduser()
            self.train_ds = cache.CachedTagDataset(cache.CachedImages(cdir, "train", ds.split("train"), size),
                                                   train_split, n_tags, cfg.data.augment, seed=cfg.train.seed)
            self.val_ds = cache.CachedTagDataset(cache.CachedImages(cdir, "val", ds.split("val"), size),
                                                 val_split, n_tags, None)
        else:
            self.train_ds = data.TagDataset(train_split, n_tags, size, cfg.data.augment, seed=cfg.train.seed)
            self.val_ds = data.TagDataset(val_split, n_tags, size, None)
        self.sampler = data.EpochSampler(len(self.train_ds), cfg.train.seed, shuffle=True, rank=dist.rank, world=dist.world)
        bs = cfg.data.batch_size
        # A tiny last batch would break BatchNorm; keep it only when an epoch is shorter than two batches.
        self.drop_last = len(self.sampler) >= 2 * bs
        self.steps_per_epoch = len(self.sampler) // bs if self.drop_last else math.ceil(len(self.sampler) / bs)
        self.total_steps = self.steps_per_epoch * cfg.train.epochs
        self.warmup = int(round(cfg.optim.warmup_epochs * self.steps_per_epoch))
        self.val_loader = self._make_loader(
            self.val_ds, data.EpochSampler(len(self.val_ds), 0, shuffle=False), cfg.data.val_batch_size or bs,
            cfg.data.workers, self.device.type == "cuda", False,
        )

    def _make_loader(self, dataset, sampler, batch_size, workers, pin, drop_last):
        if self.cached:
            from . import cache

            return cache.make_loader(dataset, sampler, batch_size, workers, pin, drop_last)
        return data.make_loader(dataset, sampler, batch_size, workers, pin, drop_last)

    def amp_ctx(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype else nullcontext()

    def lr(self, step: int) -> float:
        o = self.cfg.optim
        return lr_at(step, self.total_steps, self.warmup, o.lr, o.min_lr_ratio)

    # --- loop ----------------------------------------------------------------
    def run(self) -> Result:
        progress = self.progress
        with _StopFlag() as self.stop:
            for epoch in range(progress["epoch"], self.cfg.train.epochs):
                row = self._train_epoch(epoch)
                if row is None:
                    break
                if self.dist.main:
                    self._validate(epoch, row)
                progress["history"].append(row)
                progress["epoch"], progress["step_in_epoch"] = epoch + 1, 0
                if self.dist.main:
                    write_metrics(self.run_dir, progress["history"])
                self._save()
                if self.stop.signal is not None:
                    self.result.interrupted = True
                    break
        self.result.best = progress["best"] or {}
        self.result.history = progress["history"]
        return self.result

    def _train_epoch(self, epoch: int) -> dict | None:
        """Train one epoch (or its rest, after a resume); None when stopped or interrupted."""
        cfg, progress, dist = self.cfg, self.progress, self.dist
        bs = cfg.data.batch_size
        start_step = progress["step_in_epoch"] if epoch == progress["epoch"] else 0
        self.train_ds.epoch = epoch
        self.sampler.set_epoch(epoch, start_step * bs)
        loader = self._make_loader(self.train_ds, self.sampler, bs, cfg.data.workers, self.device.type == "cuda", self.drop_last)
        self.train_net.train()
        bar = self._bar(epoch, start_step)
        t_epoch = t_last = time.perf_counter()
        wait_s, seen = 0.0, 0
        # Carried in the checkpoint so a resumed epoch reports the same mean loss.
        loss_sum, loss_n = (progress.get("loss_sum", 0.0), progress.get("loss_n", 0)) if start_step else (0.0, 0)
        step = start_step
        stopped = False
        for images, targets, *aug in loader:
            wait_s += time.perf_counter() - t_last
            gstep = progress["global_step"]
            lv = self._step(images, targets, gstep, aug[0] if aug else None)
            loss_sum, loss_n, seen, step = loss_sum + lv, loss_n + 1, seen + images.shape[0], step + 1
            progress.update(global_step=gstep + 1, step_in_epoch=step, epoch=epoch, loss_sum=loss_sum, loss_n=loss_n)
            t_last = time.perf_counter()
            if bar is not None:
                elapsed = max(t_last - t_epoch, 1e-9)
                bar.set_postfix(loss=f"{loss_sum / loss_n:.4f}", img_s=f"{seen * dist.world / elapsed:.1f}",
                                wait=f"{wait_s / elapsed:.0%}", lr=f"{self.lr(gstep):.2e}", refresh=False)
                bar.update(1)
            if self.tb is not None:
                self.tb.add_scalar("train/loss", lv, gstep + 1)
                self.tb.add_scalar("train/lr", self.lr(gstep), gstep + 1)
            every = cfg.train.checkpoint_every_steps
            if every and progress["global_step"] % every == 0 and step < self.steps_per_epoch:
                self._save()
            if cfg.train.stop_after_steps and progress["global_step"] >= cfg.train.stop_after_steps:
                self.result.stopped = stopped = True  # emulated crash: nothing saved beyond the last checkpoint
                break
            if self.stop.signal is not None:
                self._save()
                self.result.interrupted = stopped = True
                break
        if bar is not None:
            bar.close()
        if stopped:
            return None
        elapsed = max(time.perf_counter() - t_epoch, 1e-9)
        return {
            "epoch": epoch + 1,
            "step": progress["global_step"],
            "train_loss": dist.mean(loss_sum / max(loss_n, 1)),
            "lr": self.lr(progress["global_step"] - 1),
            "images_per_s": dist.world * seen / elapsed,
            "data_wait_share": wait_s / elapsed,
            "epoch_time_s": elapsed,
        }

    def _step(self, images: torch.Tensor, targets: torch.Tensor, gstep: int, aug: torch.Tensor | None = None) -> float:
        cfg = self.cfg
        for g in self.optimizer.param_groups:
            g["lr"] = self.lr(gstep)
        images = images.to(self.device, non_blocking=True)
        targets = targets.to(self.device, non_blocking=True)
        if aug is not None:  # cached data: flips and crops on the device, on uint8
            from .cache import augment_on_device

            images = augment_on_device(images, aug)
        images, targets = data.batch_augment(images, targets, cfg.data.augment, cfg.train.seed, gstep, self.dist.rank)
        with self.amp_ctx():
            logits = self.train_net(images)
        loss = self.criterion(logits, targets)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if cfg.optim.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), cfg.optim.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:
            ema_update(self.ema, self.net, cfg.optim.ema_decay, gstep)
        lv = float(loss.detach())
        if not math.isfinite(lv):
            raise TrainingError(f"loss became {lv} at step {gstep}; lower optim.lr or check the data")
        return lv

    def _validate(self, epoch: int, row: dict) -> None:
        """Evaluate (EMA weights when EMA is on), update the best checkpoint, log; adds val_* to `row`."""
        metric = self.cfg.train.select_metric
        eval_net = self.ema if self.ema is not None else self.net
        t_val = time.perf_counter()
        probs, tgts = predict(eval_net, self.val_loader, self.device, self.amp_ctx)
        row.update({f"val_{k}": v for k, v in metrics.evaluate(probs, tgts).items()})
        row["val_loss"] = _bce(probs, tgts)
        row["val_time_s"] = time.perf_counter() - t_val
        value = row[f"val_{metric}"]
        best = self.progress["best"]
        improved = best is None or (value > best["value"] if HIGHER_IS_BETTER[metric] else value < best["value"])
        row["best"] = improved
        if improved:
            self.progress["best"] = {"epoch": epoch + 1, "metric": metric, "value": value,
                                     **{k: row[k] for k in row if k.startswith("val_")}}
            checkpoint.save_weights(self.run_dir / "checkpoints" / "best.safetensors", eval_net.state_dict(),
                                    {"epoch": epoch + 1, "metric": metric, "value": value, "ema": self.ema is not None})
        if self.tb is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k not in ("epoch", "step", "best"):
                    self.tb.add_scalar(k.replace("val_", "val/"), v, epoch + 1)
        _log(self.dist, "epoch {epoch}: loss {train_loss:.4f}, val mAP {val_map:.4f}, macro-F1@0.5 {val_macro_f1:.4f}, "
                        "top-1 {val_top1:.4f}, {images_per_s:.1f} img/s, data wait {data_wait_share:.0%}".format(**row))

    def _save(self) -> None:
        if self.dist.main:
            checkpoint.save_state(self.run_dir, self.net, self.ema, self.optimizer, self.scaler, self.progress)
            checkpoint.save_weights(self.run_dir / "checkpoints" / "last.safetensors", self.net.state_dict(),
                                    {"global_step": self.progress["global_step"]})
        self.dist.barrier()

    def _bar(self, epoch: int, start_step: int):
        if not (self.cfg.train.progress and self.dist.main):
            return None
        from tqdm import tqdm

        return tqdm(total=self.steps_per_epoch, initial=start_step, desc=f"epoch {epoch + 1}/{self.cfg.train.epochs}",
                    unit="step", file=sys.stderr, mininterval=1.0 if sys.stderr.isatty() else 30.0, dynamic_ncols=True)

    def close(self) -> None:
        if getattr(self, "tb", None) is not None:
            self.tb.close()
        self.dist.close()
