"""A model bundle: a WD-layout directory (model.onnx + selected_tags.csv) plus our optional metadata.

`resolve_model` turns what the user typed for --model (a directory, a model.onnx path or a
Hugging Face Hub repo id) into a local directory; `ModelBundle.load` reads it.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import hub
from .errors import ModelError
from .vocab import Vocabulary, wd_layout_problems

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
LABELS_FILE = "selected_tags.csv"
METADATA_FILE = "animetagnet.json"

#: The default model: WD v3 SwinV2. Of the v3 models it has the best published macro-F1
#: after EVA02-Large (0.454 vs 0.477) at a quarter of EVA02-L's cost (~0.9 vs ~0.2 images/s
#: on a 2-core CPU); ViT is as fast but less accurate (0.440). See README.
DEFAULT_MODEL = "SmilingWolf/wd-swinv2-tagger-v3"

#: Beside the two WD files, what a Hub model repo may carry that we read or show.
_HUB_OPTIONAL = [METADATA_FILE, "config.json", "README.md"]


@dataclass
class ModelMetadata:
    """Our `animetagnet.json`; every field optional (WD repositories have none of it)."""

    name: str | None = None
    outputs: str = "probabilities"  # or "logits"
    preprocessing: dict[str, Any] = field(default_factory=dict)
    thresholds: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = METADATA_FILE) -> "ModelMetadata":
        if not isinstance(data, dict):
            raise ModelError(f"{source}: expected a JSON object")
        known = {"name", "outputs", "preprocessing", "thresholds", "provenance", "metrics"}
        for key in ("preprocessing", "thresholds", "provenance", "metrics"):
            if data.get(key) is not None and not isinstance(data[key], dict):
                raise ModelError(f"{source}: {key!r} must be a JSON object, not {type(data[key]).__name__} "
                                 f"{data[key]!r:.60}")
        if data.get("name") is not None and not isinstance(data["name"], str):
            raise ModelError(f"{source}: 'name' must be a string")
        size = (data.get("preprocessing") or {}).get("size")
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size <= 0):
            raise ModelError(f"{source}: preprocessing 'size' must be a positive whole number of pixels, "
                             f"not {size!r:.60}")
        thresholds = data.get("thresholds") or {}
        presets = thresholds.get("presets")
        if presets is not None and not (isinstance(presets, dict) and all(isinstance(v, dict) for v in presets.values())):
            raise ModelError(f"{source}: thresholds 'presets' must map preset names to objects")
        if thresholds.get("default") is not None and not isinstance(thresholds["default"], str):
            raise ModelError(f"{source}: thresholds 'default' must be a preset name")
        meta = cls(
            name=data.get("name"),
            outputs=data.get("outputs", "probabilities"),
            preprocessing=dict(data.get("preprocessing") or {}),
            thresholds=dict(data.get("thresholds") or {}),
            provenance=dict(data.get("provenance") or {}),
            metrics=dict(data.get("metrics") or {}),
            extra={k: v for k, v in data.items() if k not in known and k != "format_version"},
        )
        if meta.outputs not in ("probabilities", "logits"):
            raise ModelError(f"{source}: 'outputs' must be 'probabilities' or 'logits', not {meta.outputs!r}")
        return meta

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"format_version": 1}
        if self.name:
            data["name"] = self.name
        data["outputs"] = self.outputs
        for key in ("preprocessing", "thresholds", "provenance", "metrics"):
            if getattr(self, key):
                data[key] = getattr(self, key)
        data.update(self.extra)
        return data

    @property
    def ratings_trained(self) -> bool:
        """False when export recorded that rows 0-3 exist only for the WD layout (no rating labels)."""
        return (self.extra.get("labels") or {}).get("ratings") != "untrained"

    def preset(self, name: str | None) -> dict[str, Any]:
        """Thresholds of a named preset (or the default preset); {} when the model has none."""
        presets = self.thresholds.get("presets") or {}
        if name is None:
            name = self.thresholds.get("default")
            if name is None:
                return {}
        if name not in presets:
            available = ", ".join(sorted(presets)) or "none"
            raise ModelError(f"threshold preset {name!r} not in the model's metadata (available: {available})")
        return presets[name]


@dataclass
class ModelBundle:
    path: Path
    vocab: Vocabulary
    metadata: ModelMetadata

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def name(self) -> str:
        return self.metadata.name or self.path.name

    @classmethod
    def load(cls, model: str | os.PathLike | None = None, *, cache_dir: str | None = None) -> "ModelBundle":
        path = resolve_model(model, cache_dir=cache_dir)
        if not (path / MODEL_FILE).is_file():
            raise ModelError(f"{path}: no {MODEL_FILE} (a model directory holds {MODEL_FILE} and {LABELS_FILE})")
        if not (path / LABELS_FILE).is_file():
            raise ModelError(f"{path}: no {LABELS_FILE} beside {MODEL_FILE}")
        return cls.read(path)

    @classmethod
    def read(cls, path: Path) -> "ModelBundle":
        """The label file and metadata of a directory, whatever runs its network (see backends.py)."""
        if not (path / LABELS_FILE).is_file():
            raise ModelError(f"{path}: no {LABELS_FILE} (the label file of the model)")
        vocab = Vocabulary.read_csv(path / LABELS_FILE)
        _warn_layout(path / LABELS_FILE, vocab)
        meta_path = path / METADATA_FILE
        if meta_path.is_file():
            try:
                data = json.loads(meta_path.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise ModelError(f"{meta_path}: invalid JSON: {exc}") from None
            metadata = ModelMetadata.from_dict(data, str(meta_path))
        else:
            metadata = ModelMetadata()
        return cls(path=path, vocab=vocab, metadata=metadata)


_warned_layout: set[str] = set()


def _warn_layout(labels: Path, vocab: Vocabulary) -> None:
    """Warn once per label file that positional WD readers would misread; we select by category anyway.

    A file without rating rows (the pre-v3 WD files) is a layout of its own, not warned about.
    """
    problems = wd_layout_problems(vocab, require_ratings=False, limit=2)
    key = os.fspath(labels.resolve())
    if problems and key not in _warned_layout:
        _warned_layout.add(key)
        log.warning("%s: not the WD v3 layout (%s); animetagnet selects tags by category, but kohya and the "
                    "A1111/ComfyUI taggers read rows by position and will misname them", labels, "; ".join(problems))


def looks_like_hub_id(text: str) -> bool:
    return hub.looks_like_repo_id(text)


def resolve_model(model: str | os.PathLike | None, *, cache_dir: str | None = None, torch: bool = False) -> Path:
    """A local model directory for `model` (directory, model.onnx path or Hub repo id).

    `torch`: a Hub repo is fetched for its timm weights (config.json + model.safetensors) instead of model.onnx."""
    if model is None:
        model = os.environ.get("ANIMETAGNET_MODEL", DEFAULT_MODEL)
    path = Path(model).expanduser()
    if path.is_file() and path.name.endswith(".onnx"):
        return path.parent
    if path.is_dir():
        return path
    text = os.fspath(model)
    if path.exists() or not looks_like_hub_id(text):
        raise ModelError(f"model not found: {text} (pass a model directory, or a Hugging Face repo id like {DEFAULT_MODEL})")
    return download_from_hub(text, cache_dir=cache_dir, torch=torch)


#: What the torch backend needs of a WD v3 Hub repo: timm's files instead of model.onnx.
TIMM_FILES = ["config.json", "model.safetensors"]


def download_from_hub(repo_id: str, *, cache_dir: str | None = None, torch: bool = False) -> Path:
    """A WD-layout repo from the HF cache, downloaded once when the cache lacks model.onnx (or, for
    `torch`, the timm weights) or its labels."""
    if torch:
        return hub.fetch(repo_id, [*TIMM_FILES, LABELS_FILE], [METADATA_FILE, "README.md"], cache_dir=cache_dir)
    return hub.fetch(repo_id, [MODEL_FILE, LABELS_FILE], _HUB_OPTIONAL, cache_dir=cache_dir)
