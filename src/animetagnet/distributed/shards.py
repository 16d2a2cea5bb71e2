"""Result shards of a distributed run: Parquet or JSONL files in one directory (local or fsspec URL).

Each shard is written whole under a temporary name and then renamed, so a killed run never leaves
a half shard that a restart would count as done. A record is exactly the local engine's JSONL
record (`TagResult.to_dict()`); in Parquet, `ratings` and `tags` are ordered maps.
"""

from __future__ import annotations

import io
import json
import os
import uuid
from typing import Any, Iterator

from ..errors import UsageError, WriteError
from ..fileio import atomic_write_bytes, cleanup_stale_temp
from ..options import SHARD_FORMATS  # noqa: F401 - defined with the option that picks one

SHARD_PREFIX = "part-"


def _schema():
    import pyarrow as pa

    conf = pa.map_(pa.string(), pa.float64())
    return pa.schema([
        ("path", pa.string()),
        ("error", pa.string()),
        ("rating", pa.string()),
        ("ratings", conf),
        ("tags", pa.map_(pa.string(), conf)),
    ])


def records_to_parquet(records: list[dict[str, Any]]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols: dict[str, list] = {"path": [], "error": [], "rating": [], "ratings": [], "tags": []}
    for r in records:
        cols["path"].append(r.get("path"))
        cols["error"].append(r.get("error"))
        cols["rating"].append(r.get("rating"))
        ok = "error" not in r
        cols["ratings"].append(list(r.get("ratings", {}).items()) if ok else None)
        cols["tags"].append([(cat, list(t.items())) for cat, t in r.get("tags", {}).items()] if ok else None)
    table = pa.Table.from_pydict(cols, schema=_schema())
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def parquet_to_records(data: bytes) -> list[dict[str, Any]]:
    """Back to the exact `TagResult.to_dict()` shape (key order included)."""
    import pyarrow.parquet as pq

    out = []
    for row in pq.read_table(io.BytesIO(data)).to_pylist():
        rec: dict[str, Any] = {"path": row["path"]}
        if row["error"] is not None:
            rec["error"] = row["error"]
        else:
            rec["rating"] = row["rating"]
            rec["ratings"] = dict(row["ratings"] or [])
            rec["tags"] = {cat: dict(tags) for cat, tags in (row["tags"] or [])}
        out.append(rec)
    return out


class ShardStore:
    """The shard directory of one output: list, read, write, prune."""

    def __init__(self, url: str, fmt: str = "parquet"):
        import fsspec

        if fmt not in SHARD_FORMATS:
            raise UsageError(f"shard format must be one of {', '.join(SHARD_FORMATS)}")
        self.url = url.rstrip("/") or url
        self.fmt = fmt
        self.fs, self.root = fsspec.core.url_to_fs(self.url)
        self.local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))
        if self.fs.exists(self.root) and not self.fs.isdir(self.root):
            raise UsageError(f"{url} is a file; --engine ray writes a directory of shards (-o DIR)")
        if self.local:  # temporary shards of a killed driver
            cleanup_stale_temp(self.root, lambda name: name.startswith(SHARD_PREFIX))

    # --- reading ------------------------------------------------------------
    def shards(self) -> list[str]:
        """Finished shards (temporary files start with a dot and are never listed)."""
        if not self.fs.exists(self.root):
            return []
        names = []
        for p in self.fs.ls(self.root, detail=False):
            base = p.rstrip("/").rsplit("/", 1)[-1]
            if base.startswith(SHARD_PREFIX) and base.endswith(tuple("." + f for f in SHARD_FORMATS)):
                names.append(p)
        return sorted(names)

    def read_shard(self, path: str) -> list[dict[str, Any]]:
        data = self.fs.cat_file(path)
        if path.endswith(".parquet"):
            return parquet_to_records(data)
        return [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]

    def records(self) -> Iterator[dict[str, Any]]:
        for p in self.shards():
            yield from self.read_shard(p)

    def read_status(self, path: str) -> list[tuple[str, bool]]:
        """(image path, failed) for each record of a shard; Parquet reads two columns only."""
        if path.endswith(".parquet"):
            import pyarrow.parquet as pq

            t = pq.read_table(io.BytesIO(self.fs.cat_file(path)), columns=["path", "error"])
            return list(zip(t.column("path").to_pylist(), (e is not None for e in t.column("error").to_pylist())))
        return [(r["path"], "error" in r) for r in self.read_shard(path)]

    def done_paths(self) -> set[str]:
        """Paths with a successful record (failed ones are tried again, as with the local --resume)."""
        return {p for shard in self.shards() for p, failed in self.read_status(shard) if not failed}

    # --- writing ------------------------------------------------------------
    def _put(self, name: str, data: bytes) -> None:
        final = f"{self.root}/{name}"
        if self.local:
            atomic_write_bytes(final, data)  # temp file + fsync + rename
            return
        tmp = f"{self.root}/.{name}.{uuid.uuid4().hex}.tmp"
        self.fs.pipe_file(tmp, data)
        self.fs.mv(tmp, final)

    def check_writable(self) -> None:
        """UsageError now, before any image is tagged, if shards cannot be written here (local folders)."""
        if not self.local:
            return
        import tempfile

        try:
            os.makedirs(self.root, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{SHARD_PREFIX}probe.", suffix=".tmp", dir=self.root)
            os.close(fd)
            os.unlink(tmp)
        except OSError as exc:
            raise UsageError(f"cannot write result shards to {self.url}: {exc.strerror or exc}") from None

    def write_shard(self, name: str, records: list[dict[str, Any]]) -> str:
        name = f"{SHARD_PREFIX}{name}.{self.fmt}"
        if self.fmt == "parquet":
            data = records_to_parquet(records)
        else:
            data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
        try:
            self._put(name, data)  # whole shards only: a failed one leaves no file under its name
        except OSError as exc:
            raise WriteError(f"cannot write result shard {self.url}/{name}: {exc.strerror or exc}; the shards "
                             "written before are whole (make room, then rerun with --resume)") from None
        return name

    def drop_failed(self) -> int:
        """Rewrite shards without their failure records, so a resumed run can retry those images
        without leaving two records for one image. Returns how many records were dropped."""
        dropped = 0
        for p in self.shards():
            if not any(failed for _, failed in self.read_status(p)):
                continue
            recs = self.read_shard(p)
            keep = [r for r in recs if "error" not in r]
            if len(keep) == len(recs):
                continue
            dropped += len(recs) - len(keep)
            base = p.rstrip("/").rsplit("/", 1)[-1]
            if keep:
                fmt = "parquet" if base.endswith(".parquet") else "jsonl"
                data = records_to_parquet(keep) if fmt == "parquet" else "".join(
                    json.dumps(r, ensure_ascii=False) + "\n" for r in keep).encode("utf-8")
                self._put(base, data)
            else:
                self.fs.rm_file(p)
        return dropped

    def clear(self) -> int:
        """Remove earlier shards (only ours: `part-*`), for --on-existing overwrite."""
        old = self.shards()
        for p in old:
            self.fs.rm_file(p)
        return len(old)


class ShardBuffer:
    """Collects records on the driver and commits a shard every `rows` records (and at the end)."""

    def __init__(self, store: ShardStore, rows: int = 10_000, run_id: str | None = None):
        self.store = store
        self.rows = max(1, rows)
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self.pending: list[dict[str, Any]] = []
        self.written = 0
        self.shards: list[str] = []

    def add(self, record: dict[str, Any]) -> None:
        self.pending.append(record)
        if len(self.pending) >= self.rows:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            name = self.store.write_shard(f"{self.run_id}-{len(self.shards):06d}", self.pending)
            self.shards.append(name)
            self.written += len(self.pending)
            self.pending = []


def read_results(url: str) -> Iterator[dict[str, Any]]:
    """Every record of a finished (or interrupted) distributed run, shard by shard."""
    return ShardStore(url).records()


