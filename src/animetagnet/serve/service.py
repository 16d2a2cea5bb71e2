"""What one request asks of the model, without the web framework: options, decoding, tagging, captions.

`TagService` owns the Tagger, the micro-batcher, the decoding threads and the counters of one
process. A request's options are a frozen `TagOptions` (serve/params.py builds it from the
query); being hashable, the options themselves are the keys of the cached selectors, filters
and caption styles.
"""

from __future__ import annotations

import asyncio
import functools
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import AnimeTagNetError, ImageError
from ..options import CaptionOptions, FilterOptions, TagOptions, ThresholdOptions, floor_thresholds
from ..results import TagResult
from .batching import MicroBatcher, NotRunning, Overloaded
from .limits import InflightBudget

MiB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """Per-process limits; every one is a command-line option of `serve`."""

    max_request_bytes: int = 64 * MiB
    max_file_bytes: int = 20 * MiB
    max_files: int = 32
    #: Seconds a request may wait for its inference result (queue + batch).
    request_timeout: float = 30.0
    #: Seconds the server waits for the next piece of a request body (slow or stuck client).
    body_idle_timeout: float = 15.0
    #: Seconds a whole request body may take to arrive.
    body_total_timeout: float = 120.0
    max_queue: int = 1024
    #: Bytes of request bodies in flight across all requests (serve/limits.py InflightBudget).
    max_inflight_bytes: int = 256 * MiB


class ApiError(Exception):
    """An error with an HTTP status and a stable machine-readable code."""

    def __init__(self, status: int, code: str, message: str, details: Any = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details

    def to_dict(self) -> dict:
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details is not None:
            err["details"] = self.details
        return {"error": err}


def image_error(exc: ImageError, filename: str | None) -> ApiError:
    """Map a loader failure to a status: 415 not an image, 413 too many pixels, 400 broken."""
    reason = exc.reason
    prefix = f"{filename}: " if filename else ""
    if reason.startswith("not an image"):
        return ApiError(415, "unsupported_media_type", prefix + reason)
    if reason.startswith("too many pixels") or "above the limit" in reason:
        return ApiError(413, "too_many_pixels", prefix + reason)
    if reason == "empty file":
        return ApiError(400, "empty_file", prefix + reason)
    return ApiError(400, "broken_image", prefix + reason)


class TagService:
    """One model per process, shared by every request; see the module docstring."""

    def __init__(self, tagger, *, batch_size: int | None = None, max_wait_ms: float = 5.0,
                 limits: Limits | None = None, decode_workers: int = 2, gallery=None):
        self.tagger = tagger
        self.limits = limits or Limits()
        #: A read-only serve.gallery.Gallery, or None.
        self.gallery = gallery
        self.batcher = MicroBatcher(tagger.predict, batch_size=batch_size or tagger.batch_size,
                                    max_wait_ms=max_wait_ms, max_queue=self.limits.max_queue)
        self.decode_workers = decode_workers
        #: Shared by every request of the app (BodyLimitMiddleware takes and gives back).
        self.inflight = InflightBudget(self.limits.max_inflight_bytes)
        self._decoder: ThreadPoolExecutor | None = None
        self.requests = 0
        self.images = 0
        self.failures = 0
        # Selectors precompute a threshold per output (~10k on WD v3): build each set once.
        # The frozen option groups are the cache keys.
        self._selector = functools.lru_cache(maxsize=64)(self._make_selector)
        self._filter = functools.lru_cache(maxsize=64)(self._client_error(FilterOptions.build))
        self._style = functools.lru_cache(maxsize=64)(self._client_error(CaptionOptions.style))

    async def start(self) -> None:
        self._decoder = ThreadPoolExecutor(max_workers=self.decode_workers, thread_name_prefix="decode")
        await self.batcher.start()

    async def stop(self) -> None:
        await self.batcher.stop()
        if self._decoder is not None:
            self._decoder.shutdown(wait=False, cancel_futures=True)
            self._decoder = None

    @property
    def ready(self) -> bool:
        return self.batcher.running and self._decoder is not None

    # --- options ------------------------------------------------------------
    @staticmethod
    def _client_error(build):
        """Bad options (an unknown preset, a malformed replacement) are the client's mistake: 400."""
        @functools.wraps(build)
        def wrapped(*args):
            try:
                return build(*args)
            except AnimeTagNetError as exc:
                raise ApiError(400, "invalid_parameter", str(exc)) from None
        return wrapped

    def _make_selector(self, thresholds: ThresholdOptions):
        return self._client_error(self.tagger.selector)(thresholds)

    def selector(self, thresholds: ThresholdOptions):
        return self._selector(thresholds)

    def check(self, options: TagOptions) -> None:
        """Build what `options` need now, so that bad ones fail before any decoding."""
        self.selector(options.thresholds)
        self._filter(options.filters)
        self._style(options.caption)

    def default_thresholds(self) -> dict[str, float]:
        """The threshold each category uses when a request sets none (model preset or defaults)."""
        sel = self.selector(ThresholdOptions())
        return {label: round(float(np.median(sel.thresholds[idx])), 4) for label, idx in sel.groups if idx.size}

    # --- what the service reports -------------------------------------------
    def stats(self) -> dict[str, Any]:
        return {"requests": self.requests, "images": self.images, "failed_images": self.failures,
                "queued": self.batcher.pending, "batching": self.batcher.stats.to_dict(),
                "inflight_bytes": self.inflight.to_dict()}

    def model_info(self) -> dict[str, Any]:
        """The loaded model, its defaults and the service limits (GET /v1/model)."""
        from .. import __version__

        tagger, limits = self.tagger, self.limits
        vocab = tagger.vocab
        cats = {cat.label: int(vocab.indices(cat).size) for cat in vocab.present_categories()}
        presets = sorted((tagger.bundle.metadata.thresholds.get("presets") or {}).keys())
        return {
            "name": tagger.bundle.name,
            "tags": len(vocab),
            "categories": cats,
            "input_size": tagger.input_size,
            "device": tagger.device.device,
            "providers": list(tagger.device.providers),
            "backend": str(getattr(tagger, "backend", "onnx")),
            "default_thresholds": self.default_thresholds(),
            "threshold_presets": presets,
            "default_preset": tagger.bundle.metadata.thresholds.get("default"),
            "batching": {"batch_size": self.batcher.batch_size, "max_wait_ms": self.batcher.max_wait * 1000},
            "limits": {"max_request_bytes": limits.max_request_bytes, "max_file_bytes": limits.max_file_bytes,
                       "max_files": limits.max_files, "max_pixels": tagger.max_pixels,
                       "max_inflight_bytes": limits.max_inflight_bytes,
                       "request_timeout_s": limits.request_timeout},
            "gallery": self.gallery is not None,
            "version": __version__,
        }

    # --- work ---------------------------------------------------------------
    async def tag_uploads(self, uploads: list, options: TagOptions, min_confidence: float | None) -> list[dict]:
        """Tag uploaded files (objects with `filename`, `size` and `async read()`), counting them.

        A failed image becomes an item with an `error`; when every image fails, the first
        failure is raised (with every failure in its details when there were several)."""
        limits = self.limits
        if len(uploads) > limits.max_files:
            raise ApiError(413, "too_many_files", f"{len(uploads)} files in one request; the limit is {limits.max_files}")
        self.check(options)  # bad options fail before any decoding
        self.requests += 1
        outcomes = await asyncio.gather(*(self._tag_upload(u, options, min_confidence) for u in uploads),
                                        return_exceptions=True)
        results, errors = [], []
        for upload, out in zip(uploads, outcomes):
            if isinstance(out, ApiError):
                errors.append(out)
                results.append({"filename": upload.filename or None, **out.to_dict()})
            elif isinstance(out, BaseException):
                raise out
            else:
                results.append(out)
        self.images += len(uploads)
        self.failures += len(errors)
        if errors and len(errors) == len(uploads):
            first = errors[0]
            if len(uploads) > 1:
                first = ApiError(first.status, first.code, first.message,
                                 [r["error"] | {"filename": r["filename"]} for r in results])
            raise first
        return results

    async def _tag_upload(self, upload, options: TagOptions, min_confidence: float | None) -> dict[str, Any]:
        name = upload.filename or None
        max_bytes = self.limits.max_file_bytes
        if upload.size is not None and upload.size > max_bytes:
            raise ApiError(413, "file_too_large", f"{name}: {upload.size:,} bytes is above the per-file limit of "
                                                  f"{max_bytes / 1024 / 1024:g} MiB")
        spooled = getattr(upload, "file", None)
        if spooled is not None and upload.size is not None:
            # Starlette's upload: decode straight from its spooled temporary file, so the
            # file's bytes are never copied into memory (files above 1 MiB stay on disk).
            if upload.size > max_bytes:
                raise ApiError(413, "file_too_large", f"{name}: above the per-file limit")
            if upload.size == 0:
                raise image_error(ImageError("empty file"), name)
            spooled.seek(0)
            array = await self.decode(spooled, name)
        else:
            data = await upload.read()
            if len(data) > max_bytes:
                raise ApiError(413, "file_too_large", f"{name}: above the per-file limit")
            array = await self.decode(data, name)
            del data
        probs = await self.infer(array)
        return self.describe(probs, name, options, min_confidence)

    async def decode(self, data, filename: str | None) -> np.ndarray:
        """Bytes or an open binary file -> model input, in a decoding thread (never a path: uploads only)."""
        if self._decoder is None:
            raise ApiError(503, "not_ready", "the model is not ready")
        if isinstance(data, str) or hasattr(data, "__fspath__"):
            raise TypeError("the service decodes uploads only, never a path")
        source = bytes(data) if isinstance(data, (bytearray, memoryview)) else data
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._decoder, self._prepare_bounded, source)
        except ImageError as exc:
            raise image_error(exc, filename) from None

    def _prepare_bounded(self, source) -> np.ndarray:
        """`tagger.prepare`, after checking that the padded square also fits `max_pixels`.

        Preprocessing pads to a max(w, h) square before resizing, so a long thin image costs
        about 3.7 bytes per pixel of that square on top of the ~8 per decoded pixel: a 262 kB
        30000x2900 PNG (under the pixel limit) took 3.8 GB. Bounding the square (after JPEG
        draft mode, which shrinks it first) keeps a decode under ~12 x max_pixels bytes."""
        from ..images import draft_request, open_image

        tagger = self.tagger
        limit = tagger.max_pixels
        if limit is not None:
            img = open_image(source, max_pixels=limit)
            if img.format == "JPEG" and not tagger.exact:
                request = draft_request(img.size, tagger.input_size)
                if request is not None:
                    img.draft("RGB" if img.mode not in ("L", "CMYK") else img.mode, request)
            side = max(img.size)
            if side * side > limit:
                raise ImageError(f"too many pixels once padded to a square: {img.size[0]}x{img.size[1]} pads to "
                                 f"{side}x{side} = {side * side:,} pixels, above the limit of {limit:,} "
                                 "(decompression-bomb guard; raise it with --max-pixels if the file is trusted)")
            if hasattr(source, "seek"):
                source.seek(0)
        return tagger.prepare(source)

    async def infer(self, array: np.ndarray) -> np.ndarray:
        try:
            return await asyncio.wait_for(self.batcher.submit(array), self.limits.request_timeout)
        except asyncio.TimeoutError:
            raise ApiError(503, "timeout", f"the model did not answer within {self.limits.request_timeout:g} s; "
                                           "the service is overloaded, retry later") from None
        except Overloaded as exc:
            raise ApiError(503, "overloaded", str(exc)) from None
        except NotRunning as exc:
            raise ApiError(503, "not_ready", str(exc)) from None

    def describe(self, probs: np.ndarray, filename: str | None, options: TagOptions,
                 min_confidence: float | None) -> dict[str, Any]:
        tag_filter, style = self._filter(options.filters), self._style(options.caption).use_label_order(self.tagger.vocab.names)
        result = tag_filter.apply(self.selector(options.thresholds).select(probs, filename))
        out = result.to_dict()
        out = {"filename": filename, **{k: v for k, v in out.items() if k != "path"}}
        out["caption"] = style.caption(result)
        if min_confidence is not None:
            scores = tag_filter.apply(self.selector(floor_thresholds(min_confidence)).select(probs, filename))
            out["scores"] = scores.to_dict()["tags"]
        return out

    def caption(self, items: list[dict[str, Any]], options: TagOptions) -> list[str]:
        """Captions for tag sets the page already has (its slider filters them client-side)."""
        tag_filter, style = self._filter(options.filters), self._style(options.caption).use_label_order(self.tagger.vocab.names)
        return [style.caption(tag_filter.apply(TagResult.from_dict(it))) for it in items]
