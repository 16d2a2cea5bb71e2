"""The Kaggle "tagged-anime-illustrations" layout: find its parts, match posts to image files.

The parts are found by walking the tree, whatever the unzip nesting
(`danbooru-images/danbooru-images/0000/...` works as well as `0000/...`):
- metadata: JSON-lines files whose first line is a post object (`danbooru-metadata/2017*.json`),
- images: every image file outside the faces part, indexed by file stem: a numeric stem is
  a post id (gwern layout `<id % 1000:04d>/<id>.jpg`), a 32-hex stem an md5,
- faces: the `moeimouto-faces` folder (folder-per-character, `000_` prefixes).
A post is matched by id first, then by md5. The image index costs memory in proportion to
the number of image files (not posts): an int key and a short path per file.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from ..errors import UsageError
from ..images import is_image_path
from .danbooru import Post, is_metadata_file, iter_posts, looks_like_metadata, tag_id_of
from .folders import walk_sorted
from .records import Record, SkipLog

_HEX32 = re.compile(r"^[0-9a-fA-F]{32}$")


@dataclass
class KaggleLayout:
    root: Path
    metadata_files: list[Path] = field(default_factory=list)
    faces_dir: Path | None = None

    def describe(self) -> dict:
        return {
            "metadata_files": [os.path.relpath(p, self.root) for p in self.metadata_files],
            "faces_dir": os.path.relpath(self.faces_dir, self.root) if self.faces_dir else None,
        }


def find_layout(root: Path) -> KaggleLayout:
    layout = KaggleLayout(root=root)
    for dirpath, dirnames, filenames in walk_sorted(root):
        if layout.faces_dir is None:
            for d in dirnames:
                if "moeimouto" in d.lower():
                    cand = Path(dirpath) / d
                    # Doubled unzip folder: descend while the only child is another moeimouto dir.
                    while True:
                        subs = [e for e in os.scandir(cand) if e.is_dir()]
                        if len(subs) == 1 and "moeimouto" in subs[0].name.lower():
                            cand = Path(subs[0].path)
                        else:
                            break
                    layout.faces_dir = cand
                    break
        dirnames[:] = [d for d in dirnames if "moeimouto" not in d.lower()]
        for fname in filenames:
            path = Path(dirpath) / fname
            if is_metadata_file(fname) and looks_like_metadata(path):
                layout.metadata_files.append(path)
    return layout


class ImageIndex:
    """Image files keyed by post id (numeric stem) and by md5 (32-hex stem)."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.by_id: dict[int, int] = {}
        self.by_md5: dict[int, int] = {}
        self.other: int = 0
        self.matched = bytearray()

    @classmethod
    def build(cls, roots: Iterable[Path], exclude: Path | None, log: SkipLog) -> "ImageIndex":
        index = cls()
        exclude_s = os.fspath(exclude) if exclude else None
        for root in roots:
            for dirpath, dirnames, filenames in walk_sorted(root):
                if exclude_s:
                    dirnames[:] = [d for d in dirnames if os.path.join(dirpath, d) != exclude_s]
                for fname in filenames:
                    if is_image_path(fname):
                        index.add(os.path.join(dirpath, fname), log)
        index.matched = bytearray(len(index.paths))
        return index

    def add(self, path: str, log: SkipLog) -> None:
        stem = os.path.splitext(os.path.basename(path))[0]
        if stem.isdigit():
            table, key = self.by_id, int(stem)
        elif _HEX32.match(stem):
            table, key = self.by_md5, int(stem, 16)
        else:
            self.other += 1
            log.add("image file named neither <post id> nor <md5> (ignored)", path)
            return
        if key in table:
            log.add("second image file for one post (ignored)", path)
            return
        table[key] = len(self.paths)
        self.paths.append(path)

    def __len__(self) -> int:
        return len(self.paths)

    def match(self, post: Post) -> str | None:
        i = self.by_id.get(int(post.id))
        if i is None and post.md5:
            i = self.by_md5.get(int(post.md5, 16))
        if i is None:
            return None
        self.matched[i] = 1
        return self.paths[i]

    def report_unmatched(self, log: SkipLog) -> int:
        n = 0
        for i, hit in enumerate(self.matched):
            if not hit:
                n += 1
                log.add("image file without a post in the metadata", self.paths[i])
        return n


def iter_post_records(
    metadata_files: list[Path],
    index: ImageIndex | None,
    log: SkipLog,
    tag_ids: dict[str, int] | None = None,
) -> Iterator[Record]:
    """Posts as Records. With an image index, only posts that have an image file (the rest
    are counted in `log`); without one (metadata only), every post, with `image` None."""
    for post in iter_posts(metadata_files, log):
        path = None
        if index is not None:
            path = index.match(post)
            if path is None:
                log.add("post without an image file", post.id)
                continue
        if tag_ids is not None and post.tag_ids:
            for (name, _cat), raw in zip(post.tags, post.tag_ids):
                if name not in tag_ids:
                    tid = tag_id_of(raw)
                    if tid:
                        tag_ids[name] = tid
        yield Record(
            id=post.id,
            group=post.group,
            image=path,
            tags=post.tags,
            rating=post.rating,
            content_key=f"md5:{post.md5}" if post.md5 else None,
        )
    if index is not None:
        index.report_unmatched(log)


def require_layout(layout: KaggleLayout, part: str) -> None:
    if part == "faces" and layout.faces_dir is None:
        raise UsageError(
            f"{layout.root}: no moeimouto-faces folder found in the Kaggle layout "
            "(to read a face folder directly, pass it with --format folders)"
        )
    if part == "images" and not layout.metadata_files:
        raise UsageError(
            f"{layout.root}: no Danbooru metadata (JSON lines with post ids) found in the Kaggle layout"
        )
