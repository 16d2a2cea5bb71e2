"""Confinement: read a file for a client only if it is a regular file whose real path lies under a root.

A `Root` is a folder the user chose (an indexed gallery folder, a dataset to review), kept as
its real path. `confined_path(roots, path)` resolves `path` (absolute, or relative to each
root in turn) and returns its real path, or raises `NotConfined`: the path names something
outside every root (`..`, an absolute path elsewhere), a symlink whose target lies outside
its root (unless that root allows symlinks), or anything that is not a regular file (a FIFO
would block the reader, a device would never end). `open_confined` does the same and opens
the file so that what is read is what was checked: the last component is opened with
O_NOFOLLOW (a symlink swapped in after the check is refused), and the open descriptor itself
is checked again (a regular file, the same inode as the path checked, and on Linux its
/proc/self/fd link under the root), so a swap of any directory on the way is refused too.

Nothing here is specific to the gallery; it only knows folders and paths.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from typing import BinaryIO, Iterable

from .errors import AnimeTagNetError


class NotConfined(AnimeTagNetError):
    """A path a client asked for is not a regular file inside one of the allowed folders."""

    def __init__(self, reason: str, path: str | None = None):
        self.reason = reason
        self.path = path
        super().__init__(f"{path}: {reason}" if path else reason)


def _under(path: str, folder: str) -> bool:
    """`path` is `folder` or inside it (both absolute and normalised; no prefix confusion: /a/bc is not under /a/b)."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


@dataclass(frozen=True)
class Root:
    """A folder files may be read from. `path` is its real path (resolve with `Root.of`)."""

    path: str
    #: Symlinks inside the folder may point anywhere (the user said so: `index --allow-symlinks`).
    allow_symlinks: bool = False

    @classmethod
    def of(cls, folder: str | os.PathLike, *, allow_symlinks: bool = False) -> "Root":
        return cls(os.path.realpath(os.fspath(folder)), allow_symlinks)

    def contains(self, path: str) -> bool:
        """Whether an absolute path lies under this folder, by its spelling (no resolving)."""
        return _under(os.path.normpath(path), self.path)


def _candidates(roots: Iterable[Root], path: str | os.PathLike) -> list[tuple[Root, str]]:
    path = os.fspath(path)
    out = []
    for root in roots:
        full = os.path.normpath(path if os.path.isabs(path) else os.path.join(root.path, path))
        if _under(full, root.path):  # `..` that leaves the folder never gets here
            out.append((root, full))
    return out


def confined_path(roots: Iterable[Root] | Root, path: str | os.PathLike) -> str:
    """The real path of `path` if it is a regular file inside one of `roots`; else NotConfined."""
    return _resolve(roots, path)[1]


def _resolve(roots: Iterable[Root] | Root, path: str | os.PathLike) -> tuple[Root, str, os.stat_result]:
    if isinstance(roots, Root):
        roots = [roots]
    roots = list(roots)
    shown = os.fspath(path)
    cands = _candidates(roots, path)
    if not cands:
        raise NotConfined("outside the allowed folders", shown)
    reason = "outside the allowed folders"
    for root, full in cands:
        real = os.path.realpath(full)
        if not (root.allow_symlinks or _under(real, root.path)):
            reason = "a symlink to outside the allowed folder"
            continue
        try:
            st = os.stat(real)
        except FileNotFoundError:
            reason = "no longer on disk"
            continue
        except OSError as exc:
            reason = f"cannot be read ({exc.strerror or exc})"
            continue
        if not stat.S_ISREG(st.st_mode):
            reason = "not a regular file"
            continue
        return root, real, st
    raise NotConfined(reason, shown)


def open_confined(roots: Iterable[Root] | Root, path: str | os.PathLike) -> BinaryIO:
    """Open `path` for reading (binary) under the rules of `confined_path`; the check holds for what is read."""
    root, real, st = _resolve(roots, path)
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(real, flags)
    except OSError as exc:  # ELOOP: the last component became a symlink after the check
        raise NotConfined(f"changed while being opened ({exc.strerror or exc})", os.fspath(path)) from None
    try:
        got = os.fstat(fd)
        if not stat.S_ISREG(got.st_mode) or (got.st_dev, got.st_ino) != (st.st_dev, st.st_ino):
            raise NotConfined("changed while being opened", os.fspath(path))
        link = f"/proc/self/fd/{fd}"
        if not root.allow_symlinks and os.path.islink(link) and not _under(os.readlink(link), root.path):
            raise NotConfined("changed while being opened (now outside the allowed folder)", os.fspath(path))
        if hasattr(os, "O_NONBLOCK"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
