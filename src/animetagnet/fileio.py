"""Atomic file writes: a reader never sees a half-written file, a crash never leaves one; strict JSON.

A kill between creating the temporary file and renaming it leaves `.NAME.XXXXXXXX.tmp` behind
(the finally cannot run); `cleanup_stale_temp` removes such files later, only those of our
pattern, for names we write, owned by this user and older than an hour.
"""

from __future__ import annotations

import json
import os
import re
import stat
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to a temporary file beside `path`, fsync it, then rename over `path`.

    The result gets the permissions of the file it replaces, or of a newly created file
    (0666 less the umask), not mkstemp's private 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = path.stat().st_mode & 0o7777
    except FileNotFoundError:
        mode = 0o666 & ~_current_umask()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


#: The temporary names of atomic_write_bytes (mkstemp's 8 characters) and of the Ray shard
#: store's remote writes (a uuid4 hex): `.` + target name + `.` + random part + `.tmp`.
TEMP_PATTERN = re.compile(r"^\.(?P<target>.+)\.(?:[a-z0-9_]{8}|[0-9a-f]{32})\.tmp$")
#: Older than this, a temporary file is no write in progress (an atomic write takes seconds).
STALE_AFTER_S = 3600.0


def cleanup_stale_temp(directory: str | Path, targets=None, *, max_age: float = STALE_AFTER_S) -> int:
    """Remove temporary files a killed atomic write left in `directory`; returns how many.

    Only regular files matching TEMP_PATTERN, owned by this user, last modified more than
    `max_age` seconds ago, and (when `targets` is given: a predicate on the target's name, or
    a collection of names) for a file we write there. Never raises: cleaning is a courtesy.
    """
    match = targets if callable(targets) or targets is None else (lambda name, names=set(targets): name in names)
    removed = 0
    now = time.time()
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return 0
    for entry in entries:
        m = TEMP_PATTERN.match(entry.name)
        if m is None or (match is not None and not match(m.group("target"))):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or now - st.st_mtime < max_age:
                continue
            os.unlink(entry.path)
            removed += 1
        except OSError:
            continue
    return removed


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> None:
    atomic_write_bytes(path, text.encode(encoding))


def json_safe(obj: Any) -> Any:
    """NaN and infinities become null, numpy scalars plain numbers: what we write stays strict JSON."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    return obj


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """`obj` through json_safe, indented, UTF-8, written atomically."""
    atomic_write_text(path, json.dumps(json_safe(obj), indent=2, ensure_ascii=False, allow_nan=False) + "\n")


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 4 MiB blocks (weights, cache shards)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()
