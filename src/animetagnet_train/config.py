"""Typed training recipes: pydantic models loaded strictly from YAML, overridable with `key.sub=value`.

Every section forbids unknown keys and checks types (no silent coercion: `epochs: "3"` is an
error, `lr: 1e-3` is a float although YAML 1.1 reads it as a string); an error becomes one
line naming the key, e.g. `config optim: unknown key(s) learning_rate; valid keys: ...`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Optional

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from animetagnet.errors import UsageError

Resample = Literal["nearest", "box", "bilinear", "hamming", "bicubic", "lanczos"]


def _yaml_float(value: Any) -> Any:
    """YAML 1.1 (PyYAML) reads `1e-3` as a string: accept numeric strings for floats."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


#: A float that also takes ints and numeric strings, never booleans.
Float = Annotated[float, BeforeValidator(_yaml_float)]
RGB = Annotated[list[Float], Field(min_length=3, max_length=3)]


class _Section(BaseModel):
    """Strict: unknown keys and wrong types are errors; an empty YAML section means the defaults."""

    model_config = ConfigDict(extra="forbid", strict=True, protected_namespaces=())

    @model_validator(mode="before")
    @classmethod
    def _empty_is_default(cls, data: Any) -> Any:
        return {} if data is None else data


class ModelConfig(_Section):
    backbone: str = "resnet18"  # any timm model name
    image_size: int = Field(224, ge=16)
    # Where the weights start from: null (scratch), a .safetensors file (our weights or a
    # backbone), a WD/timm checkpoint directory (model.safetensors + config.json), one of our
    # run directories, or a Hugging Face hub id of a timm checkpoint.
    init_from: Optional[str] = None
    # When the dataset has tags the checkpoint lacks: add outputs for them, keep old ones.
    extend_vocab: bool = True
    # Normalisation done INSIDE the network (the exported ONNX takes raw BGR 0..255).
    mean: RGB = Field(default_factory=lambda: [0.5, 0.5, 0.5])
    std: RGB = Field(default_factory=lambda: [0.5, 0.5, 0.5])
    drop_rate: Float = 0.0
    drop_path_rate: Float = 0.0
    # Extra timm.create_model arguments (filled from a WD/timm config.json's model_args).
    timm_args: dict[str, Any] = Field(default_factory=dict)


class AugmentConfig(_Section):
    hflip: Float = 0.5
    # Random crop of the (unpadded) image: area fraction range; aspect stays near the original.
    # Label-safe for one-object images only (a face crop stays that face).
    crop_scale: list[Float] = Field(default_factory=lambda: [1.0, 1.0])
    # Label-safe crop for images with several objects anywhere (scenes): each side loses at
    # most this fraction of the image, so an object at least `m` of the image side always keeps
    # at least 1 - crop_border/m of its extent, whatever its place (docs/train.md).
    crop_border: Float = Field(0.0, ge=0.0, lt=0.25)
    rotate_degrees: Float = 0.0
    # Resize filters drawn at random per image (the val/test/inference path is always bicubic).
    resample: list[Resample] = Field(default_factory=lambda: ["bicubic"])
    # Mixup (Zhang et al. 2018): each training batch is blended with a shuffled copy of itself,
    # weight lam ~ Beta(mixup, mixup), and so are the targets (soft labels: what the pixels
    # now show). Label-safe for any image. 0 disables; 0.1-0.4 are the usual strengths.
    mixup: Float = Field(0.0, ge=0.0)
    # Random erasing (Zhong et al. 2020): with this probability a training image gets one
    # rectangle of uniform noise, `erase_area` of the image's area, aspect 0.3-3.3. Label-safe
    # for one-object images only (part of a face hidden is still that face); in a scene it
    # could hide a whole small face, so it excludes crop_border as crop_scale does.
    erase: Float = Field(0.0, ge=0.0, le=1.0)
    erase_area: list[Float] = Field(default_factory=lambda: [0.02, 0.25])
    # With this probability a training image becomes greyscale (luma, kept as 3 channels), so
    # that monochrome art (manga pages, sketches) is not a different world. A colour change: it
    # makes colour tags false (blonde_hair, blue_eyes...), so training refuses it when the
    # vocabulary has general tags; for character-only sets such as face crops it is label-safe.
    grayscale: Float = Field(0.0, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _crop_range(self) -> "AugmentConfig":
        lo_hi = self.crop_scale
        if len(lo_hi) != 2 or not (0 < lo_hi[0] <= lo_hi[1] <= 1):
            raise ValueError("crop_scale must be [min, max] with 0 < min <= max <= 1")
        if self.crop_border > 0 and lo_hi[0] < 1.0:
            # A random-area crop can cut any object out of the frame: the border bound would not hold.
            raise ValueError("crop_border and crop_scale < 1 exclude each other (crop_border is the label-safe crop for scenes)")
        ea = self.erase_area
        if len(ea) != 2 or not (0 < ea[0] <= ea[1] < 1):
            raise ValueError("erase_area must be [min, max] with 0 < min <= max < 1")
        if self.crop_border > 0 and self.erase > 0:
            raise ValueError("crop_border and erase exclude each other (an erased patch can hide a whole object of a scene)")
        return self


class DataConfig(_Section):
    batch_size: int = Field(64, ge=1)
    workers: int = 2
    val_batch_size: int = 0  # 0: same as batch_size
    limit_train: int = 0  # 0: all; smoke recipes use a few
    limit_val: int = 0
    augment: AugmentConfig = Field(default_factory=lambda: AugmentConfig())
    # Pre-resized uint8 cache at model.image_size (cache.py): null (decode every epoch), "auto"
    # (DATASET_DIR/.cache/SIZEpx, built or finished at the start), or a directory.
    cache: Optional[str] = None
    cache_verify: bool = True  # recompute the shards' sha256 at the start (false: trust sizes)


class LossConfig(_Section):
    name: Literal["bce", "asl"] = "bce"
    gamma_neg: Float = 4.0  # ASL only
    gamma_pos: Float = 0.0
    clip: Float = 0.05
    # Per-tag weights from training frequency: none | inverse_sqrt (rare tags count more).
    tag_weights: Literal["none", "inverse_sqrt"] = "none"
    # Label smoothing (timm's multi-label convention): targets y*(1-e) + e/T for T outputs, so a
    # wrong label in the data costs less; thresholds are calibrated on val afterwards anyway.
    label_smoothing: Float = Field(0.0, ge=0.0, lt=1.0)


class OptimConfig(_Section):
    name: Literal["adamw", "lamb", "sgd"] = "adamw"
    lr: Float = 1e-3
    weight_decay: Float = 0.05
    betas: list[Float] = Field(default_factory=lambda: [0.9, 0.999])
    warmup_epochs: Float = 1.0
    min_lr_ratio: Float = 0.01  # cosine floor as a fraction of lr
    grad_clip: Float = 1.0  # max global norm; 0 disables
    ema_decay: Float = 0.0  # 0 disables EMA


class TrainConfig(_Section):
    epochs: int = Field(10, ge=1)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"  # auto: bf16/fp16 on GPU, off on CPU
    channels_last: Literal["auto", "on", "off"] = "auto"  # auto: on for GPU
    threads: int = 0  # torch intra-op threads on CPU; 0 leaves torch's default
    checkpoint_every_steps: int = 0  # 0: at the end of each epoch only
    select_metric: Literal["map", "macro_f1", "micro_f1", "top1", "loss"] = "map"
    progress: bool = True
    # Testing aid: stop (as if killed) after this many optimizer steps; 0 disables.
    stop_after_steps: int = 0


class RunConfig(_Section):
    name: str = "run"
    model: ModelConfig = Field(default_factory=lambda: ModelConfig())
    data: DataConfig = Field(default_factory=lambda: DataConfig())
    loss: LossConfig = Field(default_factory=lambda: LossConfig())
    optim: OptimConfig = Field(default_factory=lambda: OptimConfig())
    train: TrainConfig = Field(default_factory=lambda: TrainConfig())


def _where(loc: tuple) -> str:
    """('data', 'augment', 'resample', 1) -> data.augment.resample[1]"""
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".") or "root"


def _section_of(loc: tuple) -> type[BaseModel] | None:
    """The model class that holds the key at `loc` (for listing its valid keys)."""
    cls: type[BaseModel] = RunConfig
    for part in loc[:-1]:
        field = cls.model_fields.get(str(part))
        ann = field.annotation if field else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        cls = ann
    return cls


def _one_line(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False)
    unknown = [e for e in errors if e["type"] == "extra_forbidden"]
    if unknown:
        parent = unknown[0]["loc"][:-1]
        keys = sorted(str(e["loc"][-1]) for e in unknown if e["loc"][:-1] == parent)
        cls = _section_of(unknown[0]["loc"])
        valid = f"; valid keys: {', '.join(sorted(cls.model_fields))}" if cls else ""
        return f"config {_where(parent)}: unknown key(s) {', '.join(keys)}{valid}"
    e = errors[0]
    msg = e["msg"].removeprefix("Value error, ")
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    got = f", got {e['input']!r}" if e["type"] not in ("missing",) and not isinstance(e["input"], dict) else ""
    return f"config {_where(e['loc'])}: {msg}{got}{more}"


def from_dict(data: dict) -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise UsageError(_one_line(exc)) from None


def to_dict(cfg: RunConfig) -> dict:
    return cfg.model_dump()


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
