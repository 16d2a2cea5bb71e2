"""Image-folder sources: folder-per-class (`<root>/<tag>/*.jpg`) and images with caption files.

Directories are walked in sorted order so every run sees the same sequence. Record ids are
the path below the root without the extension (`gawr_gura/0024969d...-1`). The split group
of a file named `<md5>-<k>.<ext>` (crop k of Danbooru post md5) is the md5, so all crops of
one post share a split; any other file is its own group.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterator

from ..images import is_image_path
from .records import Record, SkipLog, normalize_tag

# `<md5>-<k>`, and variants seen in real data such as `<md5>_promise-2` (a group picture).
_MD5_CROP = re.compile(r"^([0-9a-f]{32})(?=$|[-_.])", re.IGNORECASE)
_NUMERIC_PREFIX = re.compile(r"^\d+_(?=.)")
CAPTION_SUFFIXES = (".txt", ".caption")


def walk_sorted(root: Path) -> Iterator[tuple[str, list[str], list[str]]]:
    """os.walk with directories and files sorted, so the order never depends on the disk."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        filenames.sort()
        yield dirpath, dirnames, filenames


def group_of_file(rel_id: str) -> str:
    stem = rel_id.rsplit("/", 1)[-1]
    m = _MD5_CROP.match(stem)
    return m.group(1).lower() if m else rel_id


def _rel_id(root: Path, path: str) -> str:
    rel = os.path.relpath(path, root).replace(os.sep, "/")
    return os.path.splitext(rel)[0]


def class_dirs(root: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))


def class_tag(folder: str, strip_prefix: bool) -> str:
    name = _NUMERIC_PREFIX.sub("", folder) if strip_prefix else folder
    return normalize_tag(name)


def prefix_rule(folders: list[str], mode: str = "auto") -> bool:
    """Whether to strip `000_`-style prefixes: 'auto' strips only when every folder has one
    (moeimouto-faces), so a real tag that starts with digits is never cut by accident."""
    if mode == "strip":
        return True
    if mode == "keep":
        return False
    return bool(folders) and all(_NUMERIC_PREFIX.match(f) for f in folders)


def iter_class_folders(
    root: Path, category: int, log: SkipLog, prefix_mode: str = "auto", shown_from: Path | None = None
) -> Iterator[Record]:
    """Every image below `<root>/<folder>/` gets the folder's tag, in `category`.

    `shown_from`: the folder that logged paths are relative to (the source, above split folders).
    """
    folders = class_dirs(root)
    strip = prefix_rule(folders, prefix_mode)
    base = shown_from or root
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if entry.is_file():
            log.add("file outside the class folders (ignored)", os.path.relpath(entry.path, base))
    for folder in folders:
        tag = class_tag(folder, strip)
        if not tag:
            log.add("class folder with an empty tag name", folder)
            continue
        for dirpath, _dirs, files in walk_sorted(root / folder):
            for fname in files:
                path = os.path.join(dirpath, fname)
                if not is_image_path(fname):
                    log.add("not an image file (ignored)", os.path.relpath(path, base))
                    continue
                rid = _rel_id(root, path)
                yield Record(id=rid, group=group_of_file(rid), image=path, tags=((tag, category),))


def read_caption(path: str) -> list[str]:
    """Comma-separated tags (newlines also separate), spaces or underscores, deduplicated."""
    with open(path, encoding="utf-8-sig", errors="replace") as fh:
        text = fh.read()
    seen: dict[str, None] = {}
    for part in re.split(r"[,\n]", text):
        tag = normalize_tag(part)
        if tag:
            seen.setdefault(tag, None)
    return list(seen)


def iter_captioned(root: Path, log: SkipLog, shown_from: Path | None = None) -> Iterator[Record]:
    """`img.png` + `img.txt` pairs anywhere below `root` (kohya sd-scripts convention).

    An empty caption file is a valid image with no tags (a negative: counted in the log as a
    note); an image without a caption file is reported and left out, since nobody said what
    it shows. `shown_from`: the folder that logged paths are relative to.
    """
    base = shown_from or root
    for dirpath, _dirs, files in walk_sorted(root):
        by_stem: dict[str, list[str]] = {}
        for fname in files:
            stem, ext = os.path.splitext(fname)
            by_stem.setdefault(stem, []).append(fname)
        for stem, names in by_stem.items():
            images = [n for n in names if is_image_path(n)]
            captions = [n for n in names if n.lower().endswith(CAPTION_SUFFIXES)]
            if not images:
                if captions:
                    log.add("caption file without an image", os.path.relpath(os.path.join(dirpath, captions[0]), base))
                continue
            for img in images:
                path = os.path.join(dirpath, img)
                rel = os.path.relpath(path, base)
                if not captions:
                    log.add("image without a caption file", rel)
                    continue
                try:
                    tags = read_caption(os.path.join(dirpath, captions[0]))
                except OSError as exc:
                    log.add("unreadable caption file", f"{rel}: {exc.strerror or exc}")
                    continue
                if not tags:
                    log.add("empty caption (kept: an image with no tags)", rel)
                rid = _rel_id(root, path)
                if len(images) > 1:  # a.png and a.jpg share a caption: keep ids distinct
                    rid = os.path.relpath(path, root).replace(os.sep, "/")
                yield Record(
                    id=rid, group=group_of_file(rid), image=path, tags=tuple((t, None) for t in tags)
                )
