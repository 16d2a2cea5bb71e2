"""Run checkpoints as safetensors (tensors) + JSON (everything else): resumable, never unpickled.

Every file carries a SHA-256 of its tensors (names, dtypes, shapes and bytes) in its metadata,
checked on load: a file whose header is intact but whose tensor bytes changed (a bad disk, a
copy cut short and padded) is refused instead of resuming with garbage weights. The training
state is kept twice: saving a new one first renames the last one to PREV_STATE_FILE, and
`load_state` falls back to it, with a warning, when the latest does not verify.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import torch

from animetagnet.fileio import atomic_write_bytes, cleanup_stale_temp

from .errors import TrainingError

STATE_FILE = "last_state.safetensors"
#: The state saved before STATE_FILE: what a resume uses when the latest is corrupted.
PREV_STATE_FILE = "prev_state.safetensors"
CHECKSUM_KEY = "tensors_sha256"


def tensors_checksum(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the tensors in name order: each name, dtype, shape and raw bytes."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        if t.numel():
            h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()


def save_weights(path: Path, state: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
    from safetensors.torch import save

    # clone: safetensors refuses tensors that share storage (views, tied weights).
    tensors = {k: v.detach().to("cpu").clone().contiguous() for k, v in state.items()}
    meta = {"json": json.dumps(metadata or {}), CHECKSUM_KEY: tensors_checksum(tensors)}
    cleanup_stale_temp(path.parent, {path.name})  # what a kill during an earlier save left
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
        extra = json.loads(meta.get("json", "{}"))
    except Exception as exc:  # noqa: BLE001 - a corrupt file is a user-facing error
        raise TrainingError(f"{path}: not a readable safetensors checkpoint ({exc})") from None
    expected = meta.get(CHECKSUM_KEY)  # absent in files written before checksums: loaded as they are
    if expected is not None and tensors_checksum(tensors) != expected:
        raise TrainingError(f"{path}: checkpoint is corrupted (its tensors do not match their checksum)")
    return tensors, extra


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
    latest = run_dir / "checkpoints" / STATE_FILE
    if latest.is_file():  # the one before stays as the fallback (a kill between the two steps: see load_state)
        os.replace(latest, latest.with_name(PREV_STATE_FILE))
    save_weights(latest, tensors, meta)


def has_state(run_dir: Path) -> bool:
    ckpt = run_dir / "checkpoints"
    return (ckpt / STATE_FILE).is_file() or (ckpt / PREV_STATE_FILE).is_file()


def _read_state(run_dir: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The latest state that verifies; the previous one, with a warning, when the latest does not."""
    latest = run_dir / "checkpoints" / STATE_FILE
    prev = latest.with_name(PREV_STATE_FILE)
    problems = []
    for path in (latest, prev):
        if not path.is_file():
            problems.append(f"{path.name} missing")
            continue
        try:
            tensors, meta = load_weights(path)
        except TrainingError as exc:
            problems.append(str(exc).removeprefix(f"{path}: "))
            continue
        if "progress" not in meta:
            problems.append(f"{path.name} has no training state")
            continue
        if path == prev:
            print(f"animetagnet: warning: {latest.name} is unusable ({problems[0]}); resuming from the previous "
                  f"checkpoint {prev.name} (epoch {meta['progress'].get('epoch', 0) + 1}, step "
                  f"{meta['progress'].get('global_step')})", file=sys.stderr, flush=True)
        return tensors, meta
    raise TrainingError(f"{run_dir}: no usable checkpoint to resume from: {STATE_FILE}: {problems[0]}; "
                        f"{PREV_STATE_FILE}: {problems[1]}")


def load_state(run_dir: Path, model: torch.nn.Module, ema: torch.nn.Module | None, optimizer, scaler) -> dict:
    """Restore everything save_state wrote; returns the progress record (epoch, step, history...)."""
    tensors, meta = _read_state(run_dir)

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
