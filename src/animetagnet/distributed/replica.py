"""A model replica for Ray Data: one Tagger per actor process, tagging batches of paths or fsspec URLs."""

from __future__ import annotations

import os
import pickle
import tempfile
from typing import Any

from ..formatting import TagFilter
from ..options import ModelOptions, ThresholdOptions
from ..results import TagResult


class TaggerReplica:
    """One model replica: a Ray Data callable class holding one Tagger, created once per actor."""

    def __init__(self, model: ModelOptions, thresholds: ThresholdOptions, tag_filter: TagFilter):
        import socket

        self.tagger = model.load()
        self.thresholds = thresholds
        self.tag_filter = tag_filter
        self.workers = model.workers
        self.name = f"{socket.gethostname()}:{os.getpid()} {self.tagger.device}"

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        paths = [str(p) for p in batch["path"]]
        with tempfile.TemporaryDirectory(prefix="animetagnet-") as tmp:
            local, fetch_errors = fetch_remote(paths, tmp)
            results = []
            for path, res in zip(paths, self.tagger.iter_tag_files(local, self.thresholds, workers=self.workers)):
                if path in fetch_errors:
                    res = TagResult.failed(path, fetch_errors[path])
                elif res.error is None:
                    res = self.tag_filter.apply(res)
                res.path = path
                results.append(pickle.dumps(res))
        return {"result": results, "replica": [self.name] * len(results)}


def fetch_remote(paths: list[str], tmp: str) -> tuple[list[str], dict[str, str]]:
    """Images given as fsspec URLs (s3://, gs://, https://, ...) are copied into `tmp` with their
    suffix, so the core loads them like any file; local paths pass through untouched.
    Returns the paths to load and {url: error} for those that could not be fetched."""
    from .manifest import is_url

    remote = [p for p in paths if is_url(p)]
    if not remote:
        return paths, {}
    import fsspec

    local_of: dict[str, str] = {}
    errors: dict[str, str] = {}
    by_fs: dict[Any, list[str]] = {}
    for url in remote:
        fs, _ = fsspec.core.url_to_fs(url)
        by_fs.setdefault(fs, []).append(url)
    for fs, urls in by_fs.items():
        # one call per filesystem: fsspec fetches the batch concurrently where it can (async stores)
        got = fs.cat([fs._strip_protocol(u) for u in urls], on_error="return")
        for url in urls:
            data = got.get(fs._strip_protocol(url))
            if isinstance(data, BaseException) or data is None:
                errors[url] = f"cannot read: {data if data is not None else 'not found'}"
                continue
            dest = os.path.join(tmp, f"{len(local_of):06d}{os.path.splitext(url.split('?', 1)[0])[1]}")
            with open(dest, "wb") as fh:
                fh.write(data)
            local_of[url] = dest
    # a URL that could not be fetched still goes through the tagger (as a missing file) so
    # that results stay one per input, in order; its error is replaced by the fetch error
    return [local_of.get(p, os.path.join(tmp, "missing")) if is_url(p) else p for p in paths], errors
