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
                 limits: Limits | None = None, decode_workers: int = 2):
        self.tagger = tagger
        self.limits = limits or Limits()
        self.batcher = MicroBatcher(tagger.predict, batch_size=batch_size or tagger.batch_size,
                                    max_wait_ms=max_wait_ms, max_queue=self.limits.max_queue)
        self.decode_workers = decode_workers
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

    # --- work ---------------------------------------------------------------
    async def decode(self, data: bytes, filename: str | None) -> np.ndarray:
        """Bytes -> model input, in a decoding thread (never a path: uploads only)."""
        if self._decoder is None:
            raise ApiError(503, "not_ready", "the model is not ready")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._decoder, self.tagger.prepare, bytes(data))
        except ImageError as exc:
            raise image_error(exc, filename) from None

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
        tag_filter, style = self._filter(options.filters), self._style(options.caption)
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
        tag_filter, style = self._filter(options.filters), self._style(options.caption)
        return [style.caption(tag_filter.apply(TagResult.from_dict(it))) for it in items]
