"""The tagger network: a timm backbone with a multi-label head, taking NHWC BGR 0..255 like WD models."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from animetagnet import hub
from animetagnet.vocab import Vocabulary

from .config import ModelConfig
from .errors import TrainingError


class Tagger(nn.Module):
    """Normalisation inside the network, so the exported ONNX takes raw pixels exactly like WD models.

    Input [N, H, W, 3] BGR 0..255 (any dtype); output logits [N, T]. The NHWC->NCHW permute
    gives a channels-last tensor for free, which is what CNNs want on GPU anyway.
    """

    def __init__(self, backbone: nn.Module, mean: list[float], std: list[float]):
        super().__init__()
        self.backbone = backbone
        # Reversed because the input is BGR; folded into one multiply-add per pixel.
        rgb_mean = torch.tensor(mean, dtype=torch.float32)
        rgb_std = torch.tensor(std, dtype=torch.float32)
        scale = 1.0 / (255.0 * rgb_std)
        shift = -rgb_mean / rgb_std
        self.register_buffer("scale", scale.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", shift.view(1, 3, 1, 1), persistent=False)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2).flip(1).float()  # NHWC BGR -> NCHW RGB
        return x * self.scale + self.shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.normalise(x))


def _classifier(backbone: nn.Module) -> nn.Linear:
    head = backbone.get_classifier()
    if not isinstance(head, nn.Linear):
        raise TrainingError(f"{type(backbone).__name__}: the classifier is not a Linear layer; vocabulary mapping unsupported")
    return head


def create(cfg: ModelConfig, num_tags: int) -> Tagger:
    import timm

    try:
        backbone = timm.create_model(
            cfg.backbone,
            pretrained=False,
            num_classes=num_tags,
            drop_rate=cfg.drop_rate,
            drop_path_rate=cfg.drop_path_rate or None,
            **cfg.timm_args,
        )
    except RuntimeError as exc:
        raise TrainingError(f"unknown timm model {cfg.backbone!r}: {exc}") from None
    return Tagger(backbone, cfg.mean, cfg.std)


def remap_head(backbone: nn.Module, state: dict, old_vocab: list[str] | None, new_vocab: Vocabulary, extend: bool) -> dict:
    """Adapt a checkpoint's classifier rows to `new_vocab` by tag name.

    Same names in any order: rows are permuted. New names (when `extend`): fresh rows, old
    outputs unchanged. Names missing from the new vocabulary: an error (their outputs would be lost).
    """
    head = _classifier(backbone)
    wkey = next(k for k, v in backbone.named_parameters() if v is head.weight)
    bkey = next(k for k, v in backbone.named_parameters() if v is head.bias)
    w_old, b_old = state[wkey], state[bkey]
    if old_vocab is None:
        if w_old.shape[0] != len(new_vocab):
            raise TrainingError(
                f"the checkpoint has {w_old.shape[0]} outputs but the dataset vocabulary has {len(new_vocab)} tags, "
                "and the checkpoint carries no label file to map them by name"
            )
        return state
    if len(old_vocab) != w_old.shape[0]:
        raise TrainingError(f"checkpoint label file has {len(old_vocab)} tags but its head has {w_old.shape[0]} outputs")
    if list(old_vocab) == list(new_vocab.names):
        return state
    missing = [t for t in old_vocab if t not in new_vocab]
    added = [t for t in new_vocab.names if t not in set(old_vocab)]
    if missing:
        raise TrainingError(
            f"vocabulary mismatch: {len(missing)} checkpoint tag(s) are not in the dataset's selected_tags.csv "
            f"(e.g. {missing[:5]}); keep every old tag to fine-tune (new tags may be added)"
        )
    if added and not extend:
        raise TrainingError(
            f"vocabulary mismatch: the dataset has {len(added)} tag(s) the checkpoint lacks (e.g. {added[:5]}); "
            "set model.extend_vocab=true to add them"
        )
    w_new = head.weight.detach().clone()
    b_new = head.bias.detach().clone()
    for i, name in enumerate(old_vocab):
        j = new_vocab.index(name)
        w_new[j] = w_old[i]
        b_new[j] = b_old[i]
    if added:
        # Start new tags as "rarely present" so they do not fire before they have learnt anything.
        for name in added:
            b_new[new_vocab.index(name)] = -4.0
    state = dict(state)
    state[wkey], state[bkey] = w_new, b_new
    return state


def _hub_or_path(ref: str) -> Path:
    p = Path(ref).expanduser()
    if p.exists():
        return p
    if hub.looks_like_repo_id(ref):  # a timm/WD checkpoint repo: the core's one Hub helper
        return hub.fetch(ref, ["model.safetensors"], ["config.json", "selected_tags.csv"])
    raise TrainingError(f"model.init_from: {ref} not found")


def _exported_run(p: Path) -> Path | None:
    """The run directory an exported model directory came from (its animetagnet.json provenance), if still there."""
    meta = p / "animetagnet.json"
    if not (p / "model.onnx").is_file() or not meta.is_file():
        return None
    try:  # not UTF-8, not JSON (ValueError), unreadable (OSError): say so, not a traceback
        run = (json.loads(meta.read_text(encoding="utf-8")).get("provenance") or {}).get("run")
    except (OSError, ValueError) as exc:
        raise TrainingError(f"{meta}: cannot be read ({getattr(exc, 'strerror', None) or exc}); it should name the "
                            "training run of this exported model: pass the run directory as --init-from") from None
    except AttributeError:  # JSON, but not our metadata object
        return None
    if not isinstance(run, str):
        run = None
    if run and (Path(run) / "checkpoints" / "best.safetensors").is_file():
        return Path(run)
    raise TrainingError(f"{p} is an exported model (ONNX) whose training run {run or '(not recorded)'} is not here; "
                        "fine-tuning needs the run's weights: pass the run directory as --init-from")


def resolve_init(ref: str) -> tuple[Path, list[str] | None, dict | None]:
    """-> (weights file, checkpoint vocabulary or None, timm config.json or None)."""
    p = _hub_or_path(ref)
    if p.is_dir() and not (p / "model.safetensors").is_file() and not (p / "checkpoints").is_dir():
        p = _exported_run(p) or p  # an exported model: start from the weights of its run
    if p.is_dir():
        run_best = p / "checkpoints" / "best.safetensors"
        if run_best.is_file():  # one of our run directories
            return run_best, Vocabulary.read_csv(p / "selected_tags.csv").names, None
        weights = p / "model.safetensors"
        if not weights.is_file():
            raise TrainingError(f"{p}: no model.safetensors (WD/timm checkpoint) or checkpoints/best.safetensors (run)")
        vocab = Vocabulary.read_csv(p / "selected_tags.csv").names if (p / "selected_tags.csv").is_file() else None
        cfg = json.loads((p / "config.json").read_text()) if (p / "config.json").is_file() else None
        return weights, vocab, cfg
    if p.suffix != ".safetensors":
        raise TrainingError(f"model.init_from: {p} is not a .safetensors file (pickled checkpoints are not loaded)")
    side = p.parent / "selected_tags.csv"
    if not side.is_file() and p.parent.name == "checkpoints":
        side = p.parent.parent / "selected_tags.csv"
    return p, (Vocabulary.read_csv(side).names if side.is_file() else None), None


def build(cfg: ModelConfig, vocab: Vocabulary) -> tuple[Tagger, dict]:
    """Create the network and load `init_from` if set. Returns (model, provenance info)."""
    from safetensors.torch import load_file

    info: dict = {"backbone": cfg.backbone, "init_from": cfg.init_from}
    if cfg.init_from is None:
        return create(cfg, len(vocab)), info
    weights, old_vocab, timm_cfg = resolve_init(cfg.init_from)
    if timm_cfg:
        arch = timm_cfg.get("architecture")
        if arch and arch != cfg.backbone:
            raise TrainingError(f"{cfg.init_from} is a {arch!r} checkpoint but model.backbone is {cfg.backbone!r}")
        pre = timm_cfg.get("pretrained_cfg") or {}
        # The checkpoint's normalisation travels with its weights (recorded in the resolved config).
        if "mean" in pre and "std" in pre:
            cfg.mean, cfg.std = [float(v) for v in pre["mean"]], [float(v) for v in pre["std"]]
    if timm_cfg and timm_cfg.get("model_args"):
        # e.g. a WD v3 ViT's img_size=448: the architecture must match the weights (saved in the run's config).
        cfg.timm_args = {**timm_cfg["model_args"], **cfg.timm_args}
    model = create(cfg, len(vocab))
    state = load_file(str(weights))  # safetensors: tensors only, nothing is unpickled
    # Our own weights are saved from the Tagger (prefix "backbone."); WD/timm ones from the bare network.
    ours = any(k.startswith("backbone.") for k in state)
    if ours:
        state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    head = _classifier(model.backbone)
    wkey = next(k for k, v in model.backbone.named_parameters() if v is head.weight)
    bkey = next(k for k, v in model.backbone.named_parameters() if v is head.bias)
    if wkey in state and timm_cfg and old_vocab is None and state[wkey].shape[0] != len(vocab):
        # A timm classifier for other classes (ImageNet's 1,000, say): no label file, so no row of
        # its head can be a tag. Its backbone is what is wanted; the head starts new.
        info["head"] = f"new (the checkpoint's {state[wkey].shape[0]}-output head has no tag names)"
        state = {k: v for k, v in state.items() if k not in (wkey, bkey)}
    elif wkey in state:
        state = remap_head(model.backbone, state, old_vocab, vocab, cfg.extend_vocab)
    else:
        info["head"] = "new (checkpoint had no classifier)"
    try:
        missing, unexpected = model.backbone.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise TrainingError(f"{weights}: weights do not fit {cfg.backbone}: {str(exc).splitlines()[0]}") from None
    real_missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if real_missing and not set(real_missing) <= {wkey, wkey.replace("weight", "bias")}:
        raise TrainingError(f"{weights}: weights do not fit {cfg.backbone}: missing {real_missing[:5]}")
    if unexpected:
        raise TrainingError(f"{weights}: weights do not fit {cfg.backbone}: unexpected {unexpected[:5]}")
    info["init_weights"] = str(weights)
    if old_vocab is not None:
        info["vocab_added"] = len([t for t in vocab.names if t not in set(old_vocab)])
    return model, info


def _vocab_file(ref: str) -> Path | None:
    weights, _, _ = resolve_init(ref)
    for cand in (weights.parent / "selected_tags.csv", weights.parent.parent / "selected_tags.csv"):
        if cand.is_file():
            return cand
    return None


def init_vocabulary(ref: str, dataset_vocab: Vocabulary) -> Vocabulary:
    """The checkpoint's vocabulary (every tag, in its order) with the dataset's new tags added.

    New tags go after the last old tag of their category (so the WD layout, ratings then
    general then character, holds); the head rows are then matched by name in `remap_head`."""
    path = _vocab_file(ref)
    if path is None:
        return dataset_vocab
    old = Vocabulary.read_csv(path)
    new = [t for t in dataset_vocab if t.name not in old]
    if not new:
        return old
    tags = list(old)
    for tag in new:
        same = [i for i, t in enumerate(tags) if t.category == tag.category]
        tags.insert(same[-1] + 1 if same else len(tags), tag)
    return Vocabulary(tags)
