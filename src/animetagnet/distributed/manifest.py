"""Manifests of images to tag: JSONL, Parquet or plain path lists, on local disk or any fsspec URL."""

from __future__ import annotations

import json
import os
import posixpath

from ..errors import UsageError

#: Columns tried, in order, when the user names none (`image` is the dataset-split column).
PATH_COLUMNS = ("path", "image", "file", "filename")


def is_url(path: str) -> bool:
    return "://" in path


def _resolve(base: str, path: str) -> str:
    """A relative path in a manifest is relative to the manifest's own directory."""
    if is_url(path) or os.path.isabs(path):
        return path
    return posixpath.join(base, path) if is_url(base) else os.path.join(base, path)


def _pick_column(names: list[str], column: str | None, where: str) -> str:
    if column:
        if column not in names:
            raise UsageError(f"{where}: no column {column!r} (columns: {', '.join(names) or 'none'})")
        return column
    for c in PATH_COLUMNS:
        if c in names:
            return c
    raise UsageError(f"{where}: no path column ({' or '.join(PATH_COLUMNS)}); name one with --manifest-column")


def _base(url: str) -> str:
    return url.rsplit("/", 1)[0] if is_url(url) else os.path.dirname(os.path.abspath(url))


def add_manifests(found, urls: list[str], column: str | None = None) -> None:
    """Add the paths of each manifest to an InputSet, rooted at the manifest's directory (so
    caption files under --output-dir mirror the manifest's relative layout)."""
    for url in urls:
        root = _base(url)
        for p in read_manifest(url, column):
            found.add(p, root)


def read_manifest(url: str, column: str | None = None) -> list[str]:
    """Image paths listed in `url`: `.parquet`, `.jsonl`/`.ndjson`/`.json` (one object per line,
    compressed or not) or any other text file with one path per line (`#` comments allowed)."""
    try:
        import fsspec
    except ImportError:
        raise UsageError("--manifest needs fsspec (and pyarrow for Parquet): pip install 'animetagnet[ray]'") from None

    base = _base(url)
    name = url.lower()
    for ext in (".gz", ".bz2", ".xz", ".zst"):
        if name.endswith(ext):
            name = name[: -len(ext)]
    try:
        if name.endswith(".parquet"):
            import pyarrow.parquet as pq

            with fsspec.open(url, "rb") as fh:
                pf = pq.ParquetFile(fh)
                col = _pick_column(pf.schema_arrow.names, column, url)
                raw = pf.read(columns=[col]).column(col).to_pylist()
        else:
            raw = []
            jsonl = name.endswith((".jsonl", ".ndjson", ".json"))
            with fsspec.open(url, "rt", encoding="utf-8", compression="infer") as fh:
                col = None
                for n, line in enumerate(fh, 1):
                    line = line.strip()
                    if not line or line.startswith("#"):
                        continue
                    if not jsonl:
                        raw.append(line)
                        continue
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise UsageError(f"{url}:{n}: not JSON ({exc.msg})") from None
                    if not isinstance(rec, dict):
                        raise UsageError(f"{url}:{n}: expected one JSON object per line")
                    col = col or _pick_column(list(rec), column, f"{url}:{n}")
                    raw.append(rec.get(col))
    except FileNotFoundError:
        raise UsageError(f"manifest {url}: no such file") from None
    return [_resolve(base, str(p)) for p in raw if p]
