"""Finding the images to tag: files, directories (optionally recursive), glob patterns, list files."""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from .images import is_image_path


@dataclass
class InputSet:
    """Image paths in a stable order, each with the root it was found under (for mirroring)."""

    paths: list[str] = field(default_factory=list)
    roots: dict[str, str] = field(default_factory=dict)
    #: Arguments that matched nothing: (argument, reason).
    missing: list[tuple[str, str]] = field(default_factory=list)

    def add(self, path: str, root: str) -> None:
        if path not in self.roots:
            self.paths.append(path)
            self.roots[path] = root


def _walk(root: str, recursive: bool) -> Iterable[str]:
    if not recursive:
        with os.scandir(root) as it:
            names = sorted(e.name for e in it if e.is_file() and not e.name.startswith("."))
        for name in names:
            yield os.path.join(root, name)
        return
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith("."):
                yield os.path.join(dirpath, name)


def collect_inputs(args: Iterable[str], *, recursive: bool = False, list_files: Iterable[str] = ()) -> InputSet:
    """Expand CLI arguments. Directories contribute files with image extensions; files named
    explicitly are always taken (a non-image is then reported by the loader, not hidden)."""
    found = InputSet()
    for arg in args:
        if os.path.isdir(arg):
            for p in _walk(arg, recursive):
                if is_image_path(p):
                    found.add(p, arg)
        elif os.path.exists(arg):
            found.add(arg, str(Path(arg).parent))
        elif glob.has_magic(arg):
            matches = sorted(glob.glob(arg, recursive=True))
            if not matches:
                found.missing.append((arg, "pattern matched no file"))
            for p in matches:
                if os.path.isfile(p):
                    found.add(p, str(Path(p).parent))
        else:
            found.missing.append((arg, "no such file or directory"))
    for lf in list_files:
        with open(lf, encoding="utf-8") as fh:
            for line in fh:
                p = line.strip()
                if p and not p.startswith("#"):
                    found.add(p, str(Path(p).parent))
    return found


def resume_key(path: str, dirs: dict[str, str] | None = None) -> str:
    """What --resume compares: the real path of the file's folder plus its name.

    `imgs/a.jpg` typed from /abs and `/abs/imgs/a.jpg` are one image, and so are paths through
    a symlinked folder. The name itself is not resolved: two names linked to one file are two
    inputs, each with its own record. A relative path is taken from the current directory (as
    the run that wrote it took it, when both ran from there). URLs (manifests) stay as they are.
    """
    if "://" in path:
        return path
    head, name = os.path.split(path)
    real = None if dirs is None else dirs.get(head)
    if real is None:
        real = os.path.realpath(head or ".")
        if dirs is not None:  # a cache the caller keeps for one batch of paths (one folder: one resolve)
            dirs[head] = real
    return os.path.join(real, name)


def resume_keys(paths) -> set[str]:
    dirs: dict[str, str] = {}
    return {resume_key(p, dirs) for p in paths}

