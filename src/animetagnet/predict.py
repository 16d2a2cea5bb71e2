"""The onnxruntime session: device selection, honest provider reporting, batched inference."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np

from .errors import DeviceError, ModelError

log = logging.getLogger(__name__)


def usable_cores() -> int:
    """Cores this process may run on (respects taskset/cgroup affinity, unlike os.cpu_count)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1

DEVICES = ("auto", "cpu", "cuda")
#: Batch sizes that keep CPU latency low (batching buys nothing on CPU for WD-size models)
#: and keep a GPU busy.
DEFAULT_BATCH = {"cpu": 4, "cuda": 32}


@dataclass(frozen=True)
class DeviceInfo:
    device: str  # "cpu" or "cuda"
    providers: tuple[str, ...]  # what onnxruntime actually runs, in priority order

    def __str__(self) -> str:
        return f"{self.device} ({', '.join(self.providers)})"


def _session_options(threads: int | None, spin: bool | None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # onnxruntime counts the machine's cores, not the ones we may use: on a pinned or
    # containerised process that oversubscribes, the trap measured in docs (3x slower).
    opts.intra_op_num_threads = threads or usable_cores()
    if spin is not None:
        # Spinning intra-op threads burn the cores that decoding threads need between runs.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    opts.log_severity_level = 3
    return opts


class Predictor:
    """One onnxruntime InferenceSession for one model file; `run` maps NHWC batches to outputs."""

    def __init__(
        self, model_path: str | os.PathLike, *, device: str = "auto", threads: int | None = None, spin: bool | None = None
    ):
        import onnxruntime as ort

        if device not in DEVICES:
            raise DeviceError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
        available = ort.get_available_providers()
        has_cuda = "CUDAExecutionProvider" in available
        if device == "cuda" and not has_cuda:
            raise DeviceError(
                "CUDA was asked for but this onnxruntime has no CUDAExecutionProvider "
                f"(available: {', '.join(available)}). Install onnxruntime-gpu in place of onnxruntime "
                "(pip uninstall onnxruntime && pip install 'animetagnet[gpu]') with a matching CUDA/cuDNN."
            )
        wanted = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device in ("cuda", "auto") and has_cuda else ["CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(os.fspath(model_path), sess_options=_session_options(threads, spin), providers=wanted)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise ModelError(f"{model_path}: onnxruntime cannot load the model: {exc}") from None
        actual = tuple(self.session.get_providers())
        runs_cuda = "CUDAExecutionProvider" in actual
        if "CUDAExecutionProvider" in wanted and not runs_cuda:
            # The users' top complaint: silent CPU fallback. Refuse when CUDA was demanded.
            msg = "CUDAExecutionProvider failed to initialise (check CUDA/cuDNN versions); onnxruntime fell back to CPU"
            if device == "cuda":
                raise DeviceError(msg)
            log.warning(msg)
        self.device = DeviceInfo("cuda" if runs_cuda else "cpu", actual)

        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ModelError(f"{model_path}: expected one input, the model has {len(inputs)}")
        self.input_name = inputs[0].name
        shape = inputs[0].shape
        if len(shape) != 4 or shape[3] != 3:
            raise ModelError(f"{model_path}: expected an NHWC input [N, H, W, 3] (WD layout), got {shape}")
        h, w = shape[1], shape[2]
        if not isinstance(h, int) or not isinstance(w, int) or h != w:
            raise ModelError(f"{model_path}: the input must have a fixed square size, got {shape}")
        self.input_size: int = h
        #: None when the batch axis is dynamic; 1 for WD v2 files.
        self.fixed_batch: int | None = shape[0] if isinstance(shape[0], int) else None
        # Output 0 is the probabilities; WD exports with embeddings (imgutils' and ours) add a second,
        # the pooled features, which tagging never fetches.
        outputs = self.session.get_outputs()
        out_shape = outputs[0].shape
        # onnxruntime reports an output of unknown rank as []: allowed here, checked on each run.
        if not isinstance(out_shape, (list, tuple)) or len(out_shape) not in (0, 2):
            raise ModelError(f"{model_path}: output 0 must be [N, tags] probabilities, got shape {out_shape}")
        self.model_path = model_path
        self.num_outputs: int | None = out_shape[-1] if out_shape and isinstance(out_shape[-1], int) else None
        self.output_name = outputs[0].name
        self.embedding_name: str | None = outputs[1].name if len(outputs) > 1 else None

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Run a float32 [N, H, W, 3] batch; returns [N, num_outputs] float32 (ModelError for any other shape)."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        return self._checked(self._run(batch), batch.shape[0])

    def _checked(self, out, n: int) -> np.ndarray:
        # A declared shape is a promise onnxruntime does not enforce: check what came back.
        out = np.asarray(out)
        if out.ndim != 2 or out.shape[0] != n or (self.num_outputs is not None and out.shape[1] != self.num_outputs):
            raise ModelError(f"{self.model_path}: output 0 must be [N, tags] probabilities; for a batch of {n} "
                             f"the model returned shape {list(out.shape)}")
        return out

    def _run(self, batch: np.ndarray) -> np.ndarray:
        if self.fixed_batch is None or batch.shape[0] == self.fixed_batch:
            return self.session.run([self.output_name], {self.input_name: batch})[0]
        # Fixed-batch model (WD v2 has batch 1): feed it in chunks of its size.
        fb = self.fixed_batch
        outs = []
        for start in range(0, batch.shape[0], fb):
            chunk = batch[start : start + fb]
            n = chunk.shape[0]
            if n < fb:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], fb - n, axis=0)])
            outs.append(self._checked(self.session.run([self.output_name], {self.input_name: chunk})[0], fb)[:n])
        return np.concatenate(outs)

    def close(self) -> None:
        self.session = None  # type: ignore[assignment]
