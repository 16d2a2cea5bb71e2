"""Which engine runs the network, onnxruntime (the core) or PyTorch (extra `[torch]`), and why: said once, never silently.

`open_model` turns what the user asked for (--model, --backend, --device, --precision) into a
`ModelBundle` and a predictor. Both predictors have the same surface (`device`, `input_size`,
`fixed_batch`, `num_outputs`, `run`, `close`), so the Tagger, the service and the Ray engine do
not know which one they hold.

`auto`, in order: onnxruntime on CUDA when its CUDA provider works; else PyTorch on CUDA when
torch sees a GPU and the model has torch weights (a WD v3 timm repository, one of our runs or
exports); else onnxruntime on the CPU (PyTorch on the CPU only for a model that has no
model.onnx). This module never imports torch unless a GPU is present or torch is asked for, so
the core install stays torch-free and a CPU machine with torch pays nothing for it.
"""

from __future__ import annotations

import glob
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from .bundle import MODEL_FILE, ModelBundle, looks_like_hub_id, resolve_model
from .errors import DeviceError, ModelError, UsageError
from .options import BACKENDS, PRECISIONS
TORCH_HINT = "pip install 'animetagnet[torch]' (torch, timm, safetensors), or reuse the PyTorch your kohya/ComfyUI/A1111 environment brings"


@dataclass(frozen=True)
class Choice:
    """The backend that runs, and the one-line reason (shown by `Tagger.describe`)."""

    backend: str  # "onnx" or "torch"
    reason: str

    def __str__(self) -> str:
        return f"backend {self.backend} ({self.reason})"


def torch_installed() -> bool:
    """torch, timm and safetensors importable (without importing them)."""
    try:
        return all(importlib.util.find_spec(m) is not None for m in ("torch", "timm", "safetensors"))
    except (ImportError, ValueError):  # a blocked or half-installed package
        return False


def nvidia_present() -> bool:
    """An NVIDIA driver on this machine: the cheap test before paying for `import torch`."""
    return os.path.exists("/proc/driver/nvidia/version") or bool(glob.glob("/dev/nvidia[0-9]*"))


def torch_gpu() -> str | None:
    """The name of the GPU torch would use, or None (torch missing, no driver, or no usable device)."""
    if not (torch_installed() and nvidia_present()):
        return None
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        return torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001 - a broken CUDA install is "no GPU" here, reported by the caller
        return None


def ort_has_cuda() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


def torch_kind(path: Path) -> str | None:
    """What torch can load from a local directory: "run", "timm", "export", or None."""
    if (path / "config.yaml").is_file() and (path / "checkpoints").is_dir():
        return "run"
    if (path / "model.safetensors").is_file() and (path / "config.json").is_file():
        return "timm"
    if (path / MODEL_FILE).is_file() and (path / "animetagnet.json").is_file():
        import json

        try:
            meta = json.loads((path / "animetagnet.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if isinstance(meta, dict) and (meta.get("provenance") or {}).get("run"):
            return "export"
    return None


def check_options(backend: str, device: str, precision: str | None) -> None:
    if backend not in BACKENDS:
        raise UsageError(f"--backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    if precision is not None and precision not in PRECISIONS:
        raise UsageError(f"--precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if backend == "onnx" and precision not in (None, "fp32"):
        raise UsageError(f"--precision {precision} is for the torch backend; onnxruntime runs the model file's own "
                         "precision (use --backend torch or auto)")


def open_model(model=None, *, backend: str = "auto", device: str = "auto", precision: str | None = None,
               threads: int | None = None, spin: bool | None = None, cache_dir: str | None = None):
    """-> (ModelBundle, predictor, Choice). Raises ModelError, DeviceError or UsageError (one line each)."""
    check_options(backend, device, precision)
    if backend == "torch":
        if not torch_installed():
            raise DeviceError(f"--backend torch needs PyTorch, timm and safetensors, which are not installed: {TORCH_HINT}")
        return _open_torch(model, device, precision, threads, cache_dir, "asked for")
    if backend == "onnx":
        bundle, pred = _open_onnx(model, device, threads, spin, cache_dir)
        return bundle, pred, Choice("onnx", "asked for")

    bundle, pred, choice = _auto(model, device, precision, threads, spin, cache_dir)
    if choice.backend == "onnx" and precision not in (None, "fp32"):
        # Never silently: the precision asked for is not what runs.
        choice = Choice("onnx", f"{choice.reason}; --precision {precision} unused: onnxruntime runs the file's own precision")
    return bundle, pred, choice


def _auto(model, device, precision, threads, spin, cache_dir):
    local = _local_dir(model)
    kind = torch_kind(local) if local is not None else None
    has_onnx = local is None or (local / MODEL_FILE).is_file() or isinstance(model, ModelBundle)
    if device == "cpu":
        if has_onnx:
            bundle, pred = _open_onnx(model, "cpu", threads, spin, cache_dir)
            return bundle, pred, Choice("onnx", "auto, --device cpu")
        return _torch_or_explain(model, "cpu", precision, threads, cache_dir, kind, "auto: the model has no model.onnx")
    tried = []
    if has_onnx:
        if ort_has_cuda():
            try:
                bundle, pred = _open_onnx(model, "cuda", threads, spin, cache_dir)
                return bundle, pred, Choice("onnx", "auto: onnxruntime CUDA works")
            except DeviceError as exc:
                tried.append(f"onnxruntime CUDA failed ({exc})")
        else:
            tried.append("onnxruntime has no CUDA provider (onnxruntime-gpu is not installed)")
    can_torch = kind is not None or (local is None and _is_hub(model))
    # torch_gpu() imports torch and starts CUDA (seconds, GPU memory): only for a model torch can load.
    gpu = torch_gpu() if can_torch else None
    if gpu is not None and can_torch:
        why = "; ".join(tried + [f"torch sees {gpu}"])
        try:
            return _open_torch(model, "cuda", precision, threads, cache_dir, f"auto: {why}")
        except ModelError as exc:
            if not has_onnx:
                raise
            tried.append(f"torch cannot load the model ({exc})")
    elif not can_torch:
        tried.append("the model has no torch weights")
    else:
        tried.append("torch is not installed" if not torch_installed() else "torch sees no CUDA GPU")
    if device == "cuda":
        raise DeviceError("--device cuda but no backend can use a GPU here: " + "; ".join(tried)
                          + " (install onnxruntime-gpu with a matching CUDA/cuDNN, or a CUDA PyTorch: "
                          "pip install 'animetagnet[torch]')")
    if has_onnx:
        bundle, pred = _open_onnx(model, "cpu", threads, spin, cache_dir)
        return bundle, pred, Choice("onnx", "auto: " + "; ".join(tried) + " -> CPU")
    return _torch_or_explain(model, "cpu", precision, threads, cache_dir, kind,
                             "auto: the model has no model.onnx; " + "; ".join(tried))


def _local_dir(model) -> Path | None:
    if isinstance(model, ModelBundle):
        return model.path
    if model is None:
        model = os.environ.get("ANIMETAGNET_MODEL")
        if model is None:
            return None
    p = Path(model).expanduser()
    if p.is_file() and p.name.endswith(".onnx"):
        return p.parent
    return p if p.is_dir() else None


def _is_hub(model) -> bool:
    text = os.fspath(model) if model is not None else os.environ.get("ANIMETAGNET_MODEL", "")
    return not text or looks_like_hub_id(text)


def _open_onnx(model, device, threads, spin, cache_dir):
    from .predict import Predictor

    bundle = model if isinstance(model, ModelBundle) else ModelBundle.load(model, cache_dir=cache_dir)
    return bundle, Predictor(bundle.model_path, device=device, threads=threads, spin=spin)


def _torch_or_explain(model, device, precision, threads, cache_dir, kind, why):
    if kind is None:
        # Neither an ONNX bundle nor torch weights: the bundle loader's message says what is missing.
        ModelBundle.load(model, cache_dir=cache_dir)
    if not torch_installed():
        raise DeviceError(f"{why}, and running its torch weights needs PyTorch: {TORCH_HINT}")
    return _open_torch(model, device, precision, threads, cache_dir, why)


def _open_torch(model, device, precision, threads, cache_dir, why):
    from . import torch_backend

    path = model.path if isinstance(model, ModelBundle) else resolve_model(model, cache_dir=cache_dir, torch=True)
    bundle, pred = torch_backend.load(path, device=device, precision=precision, threads=threads)
    return bundle, pred, Choice("torch", why)
