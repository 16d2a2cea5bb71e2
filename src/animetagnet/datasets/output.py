"""Writing the dataset directory safely: refuse to clobber, stream files atomically."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ..errors import UsageError

#: Every file `prepare` writes; with --overwrite, stale ones from an earlier run are removed.
OUTPUT_FILES = (
    "selected_tags.csv", "train.jsonl", "val.jsonl", "test.jsonl",
    "dataset.json", "stats.json", "report.md", "label_frequency.png",
)


def check_out_not_in_source(source: Path, out: Path) -> None:
    # The readers walk the source tree: an output inside it would be read back as input.
    src, dst = os.path.abspath(source), os.path.abspath(out)
    if os.path.isdir(src) and (dst == src or dst.startswith(src.rstrip(os.sep) + os.sep)):
        raise UsageError(f"--out {out}: must not be inside the source folder {source}")


def prepare_out_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a directory")
    if out.is_dir():
        entries = [e for e in os.listdir(out) if not e.startswith(".")]
        ours = set(OUTPUT_FILES)
        if entries:
            # An interrupted run leaves only our own file names (dataset.json is written last).
            if not (out / "dataset.json").exists() and not set(entries) <= ours:
                raise UsageError(f"--out {out}: directory is not empty and holds no dataset; refusing to write into it")
            if not overwrite:
                raise UsageError(f"--out {out}: already holds a dataset; pass --overwrite to replace it")
            # Remove the old marker first: until the new dataset.json lands, the directory
            # is visibly incomplete rather than a mix of two datasets that looks finished.
            if (out / "dataset.json").exists():
                (out / "dataset.json").unlink()
    out.mkdir(parents=True, exist_ok=True)


class AtomicLines:
    """Stream lines into a temporary file beside `path`; `commit` renames it into place."""

    def __init__(self, path: Path):
        self.path = path
        self.tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        self.fh = open(self.tmp, "w", encoding="utf-8", newline="\n")
        self.sha = hashlib.sha256()
        self.lines = 0

    def write(self, line: str) -> None:
        data = line + "\n"
        self.fh.write(data)
        self.sha.update(data.encode("utf-8"))
        self.lines += 1

    def commit(self) -> None:
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        if not self.fh.closed:
            self.fh.close()
        try:
            os.unlink(self.tmp)
        except FileNotFoundError:
            pass


def dumps(obj) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
