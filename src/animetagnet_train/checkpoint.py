"""Run checkpoints as safetensors (tensors) + JSON (everything else): resumable, never unpickled."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from animetagnet.fileio import atomic_write_bytes

from .errors import TrainingError

STATE_FILE = "last_state.safetensors"


def save_weights(path: Path, state: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
    from safetensors.torch import save

    # clone: safetensors refuses tensors that share storage (views, tied weights).
    tensors = {k: v.detach().to("cpu").clone().contiguous() for k, v in state.items()}
    meta = {"json": json.dumps(metadata or {})}
    atomic_write_bytes(path, save(tensors, metadata=meta))


def load_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    if not path.is_file():
        raise TrainingError(f"checkpoint not found: {path}")
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except Exception as exc:  # noqa: BLE001 - a corrupt file is a user-facing error
        raise TrainingError(f"{path}: not a readable safetensors checkpoint ({exc})") from None
    return tensors, json.loads(meta.get("json", "{}"))


def _flatten_optimizer(sd: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict] = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optim/{pid}/{k}"] = v
            else:
                scalars.setdefault(str(pid), {})[k] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        if key.startswith("optim/"):
            _, pid, k = key.split("/", 2)
            state.setdefault(int(pid), {})[k] = v
    for pid, extra in meta["scalars"].items():
        state.setdefault(int(pid), {}).update(extra)
    return {"state": state, "param_groups": meta["param_groups"]}


def save_state(run_dir: Path, model: torch.nn.Module, ema: torch.nn.Module | None, optimizer, scaler, progress: dict) -> None:
    """One file, written atomically: a kill at any moment leaves the previous or the new state, never half."""
    tensors: dict[str, torch.Tensor] = {f"model/{k}": v for k, v in model.state_dict().items()}
    if ema is not None:
        tensors.update({f"ema/{k}": v for k, v in ema.state_dict().items()})
    opt_t, opt_meta = _flatten_optimizer(optimizer.state_dict())
    tensors.update(opt_t)
    tensors["rng/torch"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda/{i}"] = s
    meta = {
        "progress": progress,
        "optimizer": opt_meta,
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
    }
    save_weights(run_dir / "checkpoints" / STATE_FILE, tensors, meta)


def load_state(run_dir: Path, model: torch.nn.Module, ema: torch.nn.Module | None, optimizer, scaler) -> dict:
    """Restore everything save_state wrote; returns the progress record (epoch, step, history...)."""
    tensors, meta = load_weights(run_dir / "checkpoints" / STATE_FILE)
    if "progress" not in meta:
        raise TrainingError(f"{run_dir}: checkpoint has no training state")

    def part(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

    try:
        model.load_state_dict(part("model/"))
        if ema is not None:
            ema_sd = part("ema/")
            ema.load_state_dict(ema_sd if ema_sd else part("model/"))
    except RuntimeError as exc:
        raise TrainingError(f"{run_dir}: checkpoint does not fit the configured model: {str(exc).splitlines()[0]}") from None
    optimizer.load_state_dict(_unflatten_optimizer(tensors, meta["optimizer"]))
    if scaler is not None and meta.get("scaler"):
        scaler.load_state_dict(meta["scaler"])
    torch.set_rng_state(tensors["rng/torch"])
    cuda_states = [tensors[k] for k in sorted(tensors) if k.startswith("rng/cuda/")]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states[: torch.cuda.device_count()])
    return meta["progress"]
