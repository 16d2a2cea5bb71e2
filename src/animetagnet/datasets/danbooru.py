"""Danbooru metadata records (JSON lines), streamed: the 2017-2021 dumps and the newer API shape.

Two record shapes:
- Danbooru2017-2021 dumps: every scalar a string, `tags` a list of {id, name, category}
  (category "0" general, "1" artist, "3" copyright, "4" character, "5" meta), rating s/q/e
  where "s" is the pre-2022 "safe" (WD's `general`).
- Newer exports (API JSON, 2023+ dumps): `tag_string_general`, `tag_string_character`,
  `tag_string_copyright`, `tag_string_artist`, `tag_string_meta` (space-separated), ids as
  numbers, rating g/s/q/e (general/sensitive/questionable/explicit). A bare `tag_string`
  is accepted too (categories then come from a tag table, or default to general).
"""

from __future__ import annotations

import gzip
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterable, Iterator

from .records import CURRENT_RATINGS, LEGACY_RATINGS, SkipLog

TAG_STRING_FIELDS = (
    ("tag_string_general", 0),
    ("tag_string_character", 4),
    ("tag_string_copyright", 3),
    ("tag_string_artist", 1),
    ("tag_string_meta", 5),
)
_HEX32 = re.compile(r"^[0-9a-fA-F]{32}$")
# Category values as the dumps write them (strings) and as newer ones do (numbers).
_CATEGORIES: dict = {**{str(c): c for c in (0, 1, 3, 4, 5)}, **{c: c for c in (0, 1, 3, 4, 5)}}
METADATA_SUFFIXES = (".json", ".jsonl", ".ndjson", ".json.gz", ".jsonl.gz")


@dataclass(frozen=True)
class Post:
    id: str
    md5: str | None
    parent_id: str | None
    tags: tuple[tuple[str, int | None], ...]
    tag_ids: tuple | None  # raw Danbooru tag ids as found (strings in the dumps)
    rating: str | None
    file_ext: str | None

    @property
    def group(self) -> str:
        """Split key: a child post goes with its parent (variants of one picture)."""
        return self.parent_id or self.id


def tag_id_of(raw) -> int:
    try:
        return int(raw)
    except (TypeError, ValueError):
        return 0


class RecordError(ValueError):
    """A line that is JSON but not a usable post; the message is the skip reason."""


def _id_text(value) -> str | None:
    if value is None or isinstance(value, bool):
        return None
    text = str(value).strip()
    if not text:
        return None
    try:
        n = int(float(text)) if "." in text or "e" in text.lower() else int(text)
    except (ValueError, OverflowError):
        return None
    return str(n) if n > 0 else None


def parse_post(obj: object) -> Post:
    """A Post from one decoded JSON object; RecordError(reason) when it cannot be one."""
    if not isinstance(obj, dict):
        raise RecordError("line is not a JSON object")
    post_id = _id_text(obj.get("id"))
    if post_id is None:
        raise RecordError("record without a valid id")
    tags: list[tuple[str, int | None]] = []
    tag_ids: list[int] | None = None
    ratings = LEGACY_RATINGS
    raw_tags = obj.get("tags")
    if isinstance(raw_tags, list):
        tag_ids = []
        for t in raw_tags:
            if type(t) is dict:
                name = t.get("name")
                if type(name) is not str or not name:
                    continue
                tags.append((name, _CATEGORIES.get(t.get("category"))))
                tag_ids.append(t.get("id"))  # converted only when first needed (tag_id_of)
            elif isinstance(t, str) and t:
                tags.append((t, None))
                tag_ids.append(None)
    elif any(f in obj for f, _ in TAG_STRING_FIELDS):
        ratings = CURRENT_RATINGS
        for fname, cat in TAG_STRING_FIELDS:
            value = obj.get(fname)
            if isinstance(value, str):
                tags.extend((name, cat) for name in value.split())
    elif isinstance(obj.get("tag_string"), str):
        ratings = CURRENT_RATINGS
        tags.extend((name, None) for name in obj["tag_string"].split())
    elif isinstance(raw_tags, str):
        tags.extend((name, None) for name in raw_tags.split())
    else:
        raise RecordError("record without tags")
    rating_letter = obj.get("rating")
    rating = ratings.get(rating_letter) if isinstance(rating_letter, str) else None
    md5 = obj.get("md5")
    md5 = md5.lower() if isinstance(md5, str) and _HEX32.match(md5) else None
    ext = obj.get("file_ext")
    return Post(
        id=post_id,
        md5=md5,
        parent_id=_id_text(obj.get("parent_id")),
        tags=tuple(tags),
        tag_ids=tuple(tag_ids) if tag_ids is not None else None,
        rating=rating,
        file_ext=ext if isinstance(ext, str) and ext else None,
    )


def is_metadata_file(path: str | os.PathLike) -> bool:
    name = os.fspath(path).lower()
    return name.endswith(METADATA_SUFFIXES)


def _open(path: Path) -> IO[bytes]:
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rb")
    return open(path, "rb")


def looks_like_metadata(path: Path) -> bool:
    """True when the file's first non-empty line is a JSON object with an id (a post)."""
    try:
        with _open(path) as fh:
            for _ in range(5):
                line = fh.readline(1 << 20)
                if not line:
                    return False
                if line.strip():
                    obj = json.loads(line)
                    return isinstance(obj, dict) and "id" in obj
    except (OSError, ValueError, EOFError):
        return False
    return False


def iter_posts(files: Iterable[Path], log: SkipLog) -> Iterator[Post]:
    """Stream posts from JSON-lines files, one line at a time; bad lines go to `log`."""
    for path in files:
        try:
            fh = _open(path)
        except OSError as exc:
            log.add("unreadable metadata file", f"{path}: {exc.strerror or exc}")
            continue
        with fh:
            lineno = 0
            try:
                for line in fh:
                    lineno += 1
                    if not line.strip():
                        continue
                    try:
                        obj = json.loads(line)
                    except ValueError:
                        log.add("malformed JSON line", f"{path}:{lineno}")
                        continue
                    try:
                        post = parse_post(obj)
                    except RecordError as exc:
                        log.add(str(exc), f"{path}:{lineno}")
                        continue
                    except (TypeError, ValueError, AttributeError):
                        # Fields of unexpected types (a list where a string belongs, ...).
                        log.add("malformed record (fields of the wrong type)", f"{path}:{lineno}")
                        continue
                    yield post
            except (OSError, EOFError) as exc:  # truncated gzip, I/O error mid-file
                log.add("metadata file cut short", f"{path}:{lineno}: {exc}")
