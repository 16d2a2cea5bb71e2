"""Typed training recipes: dataclasses loaded strictly from YAML, overridable with `key.sub=value`."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from animetagnet.errors import UsageError


@dataclass
class ModelConfig:
    backbone: str = "resnet18"  # any timm model name
    image_size: int = 224
    # Where the weights start from: null (scratch), a .safetensors file (our weights or a
    # backbone), a WD/timm checkpoint directory (model.safetensors + config.json), one of our
    # run directories, or a Hugging Face hub id of a timm checkpoint.
    init_from: Optional[str] = None
    # When the dataset has tags the checkpoint lacks: add outputs for them, keep old ones.
    extend_vocab: bool = True
    # Normalisation done INSIDE the network (the exported ONNX takes raw BGR 0..255).
    mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    std: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    # Extra timm.create_model arguments (filled from a WD/timm config.json's model_args).
    timm_args: dict = field(default_factory=dict)


@dataclass
class AugmentConfig:
    hflip: float = 0.5
    # Random crop of the (unpadded) image: area fraction range; aspect stays near the original.
    crop_scale: list[float] = field(default_factory=lambda: [1.0, 1.0])
    rotate_degrees: float = 0.0
    # Resize filters drawn at random per image (the val/test/inference path is always bicubic).
    resample: list[str] = field(default_factory=lambda: ["bicubic"])


@dataclass
class DataConfig:
    batch_size: int = 64
    workers: int = 2
    val_batch_size: int = 0  # 0: same as batch_size
    limit_train: int = 0  # 0: all; smoke recipes use a few
    limit_val: int = 0
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class LossConfig:
    name: str = "bce"  # bce | asl
    gamma_neg: float = 4.0  # ASL only
    gamma_pos: float = 0.0
    clip: float = 0.05
    # Per-tag weights from training frequency: none | inverse_sqrt (rare tags count more).
    tag_weights: str = "none"


@dataclass
class OptimConfig:
    name: str = "adamw"  # adamw | lamb | sgd
    lr: float = 1e-3
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.01  # cosine floor as a fraction of lr
    grad_clip: float = 1.0  # max global norm; 0 disables
    ema_decay: float = 0.0  # 0 disables EMA


@dataclass
class TrainConfig:
    epochs: int = 10
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str = "auto"  # auto (bf16/fp16 on GPU, off on CPU) | off | bf16 | fp16
    channels_last: str = "auto"  # auto (on for GPU) | on | off
    threads: int = 0  # torch intra-op threads on CPU; 0 leaves torch's default
    checkpoint_every_steps: int = 0  # 0: at the end of each epoch only
    select_metric: str = "map"  # map | macro_f1 | micro_f1 | top1 | loss
    progress: bool = True
    # Testing aid: stop (as if killed) after this many optimizer steps; 0 disables.
    stop_after_steps: int = 0


@dataclass
class RunConfig:
    name: str = "run"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def _check_value(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _check_value(value, inner[0], where)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where)
    if origin is list:
        if not isinstance(value, list):
            raise UsageError(f"config {where}: expected a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_check_value(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is dict:
        if not isinstance(value, dict):
            raise UsageError(f"config {where}: expected a mapping, got {value!r}")
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:  # YAML 1.1 reads `1e-3` as a string
            return float(value)
        except ValueError:
            pass
    if tp in (int, float, str, bool) and (not isinstance(value, tp) or (tp is int and isinstance(value, bool))):
        raise UsageError(f"config {where}: expected {tp.__name__}, got {value!r}")
    return value


def _build(cls: type, data: Any, where: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UsageError(f"config {where or 'root'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise UsageError(
            f"config {where or 'root'}: unknown key(s) {', '.join(unknown)}; "
            f"valid keys: {', '.join(sorted(names))}"
        )
    kwargs = {k: _check_value(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


def from_dict(data: dict) -> RunConfig:
    cfg = _build(RunConfig, data, "")
    validate(cfg)
    return cfg


def to_dict(cfg: RunConfig) -> dict:
    return dataclasses.asdict(cfg)


def parse_override(text: str) -> tuple[list[str], Any]:
    import yaml

    if "=" not in text:
        raise UsageError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise UsageError(f"override {text!r}: cannot parse value: {exc}") from None
    return key.strip().split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UsageError(f"override {text!r}: {part} is not a section")
        node[path[-1]] = value
    return data


def load(path: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    """Read a recipe (strict: unknown keys are errors), apply `a.b=value` overrides, validate."""
    import yaml

    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise UsageError(f"config file not found: {p}")
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise UsageError(f"{p}: invalid YAML: {exc}") from None
    return from_dict(apply_overrides(data, list(overrides)))


def dump_yaml(cfg: RunConfig) -> str:
    import yaml

    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


_CHOICES = {
    ("loss", "name"): ("bce", "asl"),
    ("loss", "tag_weights"): ("none", "inverse_sqrt"),
    ("optim", "name"): ("adamw", "lamb", "sgd"),
    ("train", "amp"): ("auto", "off", "bf16", "fp16"),
    ("train", "channels_last"): ("auto", "on", "off"),
    ("train", "select_metric"): ("map", "macro_f1", "micro_f1", "top1", "loss"),
}
RESAMPLE_NAMES = ("nearest", "box", "bilinear", "hamming", "bicubic", "lanczos")


def validate(cfg: RunConfig) -> None:
    for (section, key), choices in _CHOICES.items():
        value = getattr(getattr(cfg, section), key)
        if value not in choices:
            raise UsageError(f"config {section}.{key}={value!r}: choose one of {', '.join(choices)}")
    for name in cfg.data.augment.resample:
        if name not in RESAMPLE_NAMES:
            raise UsageError(f"config data.augment.resample: unknown filter {name!r} ({', '.join(RESAMPLE_NAMES)})")
    lo_hi = cfg.data.augment.crop_scale
    if len(lo_hi) != 2 or not (0 < lo_hi[0] <= lo_hi[1] <= 1):
        raise UsageError("config data.augment.crop_scale must be [min, max] with 0 < min <= max <= 1")
    if len(cfg.model.mean) != 3 or len(cfg.model.std) != 3:
        raise UsageError("config model.mean and model.std need 3 values (RGB)")
    if cfg.model.image_size < 16:
        raise UsageError("config model.image_size must be at least 16")
    if cfg.data.batch_size < 1 or cfg.train.epochs < 1:
        raise UsageError("config data.batch_size and train.epochs must be positive")
