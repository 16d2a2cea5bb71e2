"""The Python API: load a model once, tag images, arrays, paths or whole streams of files.

`Tagger.iter_tag_files` overlaps decoding with inference: a thread pool decodes and
preprocesses ahead of the model (Pillow and onnxruntime both release the GIL), in a bounded
window so memory stays flat, and results come back in input order.
"""

from __future__ import annotations

import contextlib
import os
from collections import deque
from concurrent.futures import BrokenExecutor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import numpy as np
from PIL import Image

from .bundle import ModelBundle
from .errors import ImageError, ModelError, UsageError
from .options import DECODERS
from .images import DEFAULT_MAX_PIXELS, ImageSource, load_and_preprocess, preprocess
from .postprocess import TagSelector, ThresholdOptions
from .predict import DEFAULT_BATCH, usable_cores
from .results import TagResult


@dataclass
class LoadedImage:
    path: str | None
    array: np.ndarray | None
    error: str | None = None


def default_workers(device: str = "cpu") -> int:
    # Decoding threads share the cores with onnxruntime's own threads; two keep a 2-core CPU's
    # model fed without starving it (benchmarks/bench_tagging.py measures this). A GPU leaves the
    # cores to decoding, and needs them all (benchmarks/gpu_tagging_training.py).
    if device == "cuda":
        return max(2, usable_cores() - 1)
    return max(2, min(8, usable_cores()))


def load_file(path: str, size: int, exact: bool, max_pixels: int | None, dtype=np.float32) -> LoadedImage:
    """One file through THE preprocessing, failures as data (module-level: process pools pickle it)."""
    try:
        arr = load_and_preprocess(path, size, exact=exact, max_pixels=max_pixels)
        return LoadedImage(path, arr if dtype is np.float32 else arr.astype(dtype))
    except ImageError as exc:
        return LoadedImage(path, None, exc.reason)
    except Exception as exc:  # noqa: BLE001 - one hostile file must never end a batch
        return LoadedImage(path, None, f"unexpected {type(exc).__name__}: {exc}")


class Tagger:
    """A loaded model. Thread-safe for inference; one per process is enough.

    >>> tagger = Tagger("models/wd-swinv2-tagger-v3")
    >>> tagger.tag("image.jpg").general
    """

    def __init__(
        self,
        model: str | os.PathLike | ModelBundle | None = None,
        *,
        device: str = "auto",
        backend: str = "auto",
        precision: str | None = None,
        decoder: str = "auto",
        threads: int | None = None,
        spin: bool | None = None,
        batch_size: int | None = None,
        exact: bool = False,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        cache_dir: str | None = None,
    ):
        from .backends import open_model

        self.bundle, self.predictor, self.backend = open_model(
            model, backend=backend, device=device, precision=precision, threads=threads, spin=spin, cache_dir=cache_dir)
        self.vocab = self.bundle.vocab
        n_out = self.predictor.num_outputs
        if n_out is not None and n_out != len(self.vocab):
            raise ModelError(
                f"{self.bundle.path}: the model has {n_out} outputs but selected_tags.csv lists "
                f"{len(self.vocab)} tags; the label file does not belong to this model"
            )
        declared = self.bundle.metadata.preprocessing.get("size")
        if declared is not None and int(declared) != self.predictor.input_size:
            raise ModelError(
                f"{self.bundle.path}: metadata says input size {declared} but the ONNX input is {self.predictor.input_size}"
            )
        self.input_size = self.predictor.input_size
        self.batch_size = batch_size or DEFAULT_BATCH[self.predictor.device.device]
        if decoder not in DECODERS:
            raise UsageError(f"decoder must be one of {', '.join(DECODERS)}, not {decoder!r}")
        if decoder == "gpu" and self.backend.backend != "torch":
            raise UsageError("--decoder gpu decodes on the torch backend's device; add --backend torch")
        self._pool: tuple[int, ProcessPoolExecutor] | None = None
        self.decoder = decoder if decoder != "auto" else "processes" if self.device.device == "cuda" else "threads"
        self.exact = exact
        self.max_pixels = max_pixels
        self._logits = self.bundle.metadata.outputs == "logits"

    # --- info -------------------------------------------------------------
    @property
    def device(self):
        return self.predictor.device

    def describe(self) -> str:
        return (f"model {self.bundle.name} ({len(self.vocab)} tags, {self.input_size}px) on {self.device}, "
                f"{self.backend}, {self.decoder} decoding")

    def selector(self, options: ThresholdOptions | None = None) -> TagSelector:
        preset = self.bundle.metadata.preset(options.preset if options else None)
        return TagSelector(self.vocab, options, preset, ratings=self.bundle.metadata.ratings_trained)

    # --- core -------------------------------------------------------------
    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities for a preprocessed [N, H, W, 3] float32 BGR batch."""
        out = self.predictor.run(batch)
        if out.shape[1] != len(self.vocab):  # a dynamic output axis, known only now
            raise ModelError(f"{self.bundle.path}: the model returned {out.shape[1]} outputs but selected_tags.csv "
                             f"lists {len(self.vocab)} tags; the label file does not belong to this model")
        if self._logits:
            out = 1.0 / (1.0 + np.exp(-out))
        return out

    def prepare(self, image: ImageSource | np.ndarray) -> np.ndarray:
        """Preprocess one input (path, bytes, file object, PIL image or HxWxC uint8 RGB(A) array)."""
        if isinstance(image, np.ndarray):
            if image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 3, 4)):
                arr = image[:, :, 0] if image.ndim == 3 and image.shape[2] == 1 else image
                if arr.dtype != np.uint8:
                    raise ImageError(f"arrays must be uint8 RGB/RGBA (as from PIL), got {arr.dtype}")
                image = Image.fromarray(arr)
            else:
                raise ImageError(f"arrays must be HxW, HxWx3 or HxWx4, got shape {image.shape}")
        if isinstance(image, Image.Image):
            return preprocess(image, self.input_size)
        return load_and_preprocess(image, self.input_size, exact=self.exact, max_pixels=self.max_pixels)

    def tag(self, image: ImageSource | np.ndarray, options: ThresholdOptions | None = None) -> TagResult:
        """Tag one image. Raises ImageError for an unusable input."""
        return self.tag_batch([image], options)[0]

    def tag_batch(
        self, images: Sequence[ImageSource | np.ndarray], options: ThresholdOptions | None = None
    ) -> list[TagResult]:
        """Tag several in-memory inputs at once. Raises ImageError on the first unusable one."""
        if not images:
            return []
        selector = self.selector(options)
        arrays = np.stack([self.prepare(im) for im in images])
        probs = self.predict(arrays)
        paths = [os.fspath(im) if isinstance(im, (str, os.PathLike)) else None for im in images]
        return selector.select_batch(probs, paths)

    def iter_tag_files(
        self,
        paths: Iterable[str | os.PathLike],
        options: ThresholdOptions | None = None,
        *,
        workers: int | None = None,
        with_probabilities: bool = False,
    ) -> Iterator[TagResult] | Iterator[tuple[TagResult, np.ndarray | None]]:
        """Tag files as a stream, in input order; a bad file yields a result with `error` set."""
        selector = self.selector(options)
        for loaded, probs in self.iter_probabilities(paths, workers=workers):
            if loaded.error is not None:
                res = TagResult.failed(loaded.path, loaded.error)
                yield (res, None) if with_probabilities else res
            else:
                res = selector.select(probs, loaded.path)
                yield (res, probs) if with_probabilities else res

    def iter_probabilities(
        self, paths: Iterable[str | os.PathLike], *, workers: int | None = None
    ) -> Iterator[tuple[LoadedImage, np.ndarray | None]]:
        """The pipelined engine: decode ahead (threads, processes or the GPU), infer in batches, keep order."""
        workers = workers or default_workers(self.device.device)
        if self.decoder == "gpu":
            from .torch_backend import iter_gpu_decoded

            yield from iter_gpu_decoded(self, paths, workers=workers)
            return
        window = self.batch_size * 2 + workers  # decoded-but-not-inferred images held at most
        pending: deque[tuple[str, Future[LoadedImage]]] = deque()
        ready: list[LoadedImage] = []
        # Processes hand back uint8 (exact, a quarter of the bytes to pickle); threads what the backend takes.
        dtype = np.uint8 if self.decoder == "processes" else getattr(self.predictor, "wire_dtype", np.float32)
        args = (self.input_size, self.exact, self.max_pixels, dtype)

        def flush() -> Iterator[tuple[LoadedImage, np.ndarray | None]]:
            good = [it for it in ready if it.error is None]
            probs = self.predict(np.stack([it.array for it in good])) if good else None
            k = 0
            for it in ready:
                if it.error is None:
                    row = probs[k]  # type: ignore[index]
                    k += 1
                    it.array = None  # free the pixels as soon as they are used
                    yield it, row
                else:
                    yield it, None
            ready.clear()

        if self.decoder == "processes":
            pool, scope = self._process_pool(workers), contextlib.nullcontext()
        else:
            pool = scope = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode")
        with scope:
            it = iter(paths)
            exhausted = False
            while True:
                while not exhausted and len(pending) < window:
                    try:
                        p = next(it)
                    except StopIteration:
                        exhausted = True
                        break
                    path = os.fspath(p)
                    try:
                        pending.append((path, pool.submit(load_file, path, *args)))
                    except BrokenExecutor:  # a decoder process died since the last result
                        ready.extend(self._decoder_died(pending))
                        pool = self._process_pool(workers)
                        pending.append((path, pool.submit(load_file, path, *args)))
                if not pending:
                    break
                path, fut = pending.popleft()
                try:
                    ready.append(fut.result())
                except BrokenExecutor:
                    # A decoder process was killed (OOM killer, a crash in a codec): every image
                    # still in flight is lost with it; report them as failed, start fresh processes.
                    pending.appendleft((path, fut))
                    ready.extend(self._decoder_died(pending))
                    pool = self._process_pool(workers)
                if sum(1 for r in ready if r.error is None) >= self.batch_size or (exhausted and not pending):
                    yield from flush()
            if ready:
                yield from flush()

    def _process_pool(self, workers: int) -> ProcessPoolExecutor:
        """The decoding processes, started once per Tagger (a Ray replica tags many batches)."""
        if self._pool is None or self._pool[0] != workers:
            import multiprocessing

            if self._pool is not None:
                self._pool[1].shutdown(cancel_futures=True)
            # forkserver: never fork a process that holds onnxruntime/CUDA threads.
            self._pool = (workers, ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("forkserver")))
        return self._pool[1]

    def _decoder_died(self, pending: deque[tuple[str, Future[LoadedImage]]]) -> list[LoadedImage]:
        """Drop a broken process pool; the images it held become per-image errors, in order."""
        lost: list[LoadedImage] = []
        while pending:
            path, fut = pending.popleft()
            try:
                lost.append(fut.result())  # decoded before the crash: still good
            except BrokenExecutor:
                lost.append(LoadedImage(path, None, "decoder process died"))
        if self._pool is not None:
            self._pool[1].shutdown(wait=False, cancel_futures=True)
            self._pool = None
        return lost

    def close(self) -> None:
        """Free the model (onnxruntime session or torch module and its memory) and the decoding processes."""
        if self._pool is not None:
            self._pool[1].shutdown(cancel_futures=True)
            self._pool = None
        self.predictor.close()

    def __enter__(self) -> "Tagger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
