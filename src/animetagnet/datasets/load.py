"""Reading a prepared dataset directory back: its info, vocabulary and split records.

For the trainer and the evaluator, so that no consumer parses the files its own way.
`image` paths come back absolute: `prepare` writes them absolute, and hand-written
datasets may give them relative to the dataset directory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..errors import UsageError
from ..vocab import Vocabulary
from .splits import SPLITS


@dataclass(frozen=True)
class Example:
    id: str
    image: str
    tags: tuple[str, ...]
    group: str


def read_info(dataset_dir: str | Path) -> dict:
    path = Path(dataset_dir) / "dataset.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{dataset_dir}: no dataset.json; is it a directory written by `animetagnet prepare`?") from None


def read_vocabulary(dataset_dir: str | Path) -> Vocabulary:
    return Vocabulary.read_csv(Path(dataset_dir) / "selected_tags.csv")


def iter_split(dataset_dir: str | Path, split: str) -> Iterator[Example]:
    """Stream the records of one split; raises UsageError on a malformed line."""
    if split not in SPLITS:
        raise UsageError(f"unknown split {split!r}; one of {', '.join(SPLITS)}")
    base = Path(dataset_dir)
    path = base / f"{split}.jsonl"
    try:
        fh = open(path, encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"{path}: missing (a --metadata-only dataset has no split files)") from None
    with fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                image = Path(obj["image"])
                rid = str(obj["id"])
                tags = tuple(obj["tags"])
            except (ValueError, KeyError, TypeError) as exc:
                raise UsageError(f"{path}:{lineno}: not a dataset record ({exc})") from None
            if not image.is_absolute():
                image = base / image
            yield Example(id=rid, image=str(image), tags=tags, group=str(obj.get("group", rid)))


def read_split(dataset_dir: str | Path, split: str) -> list[Example]:
    return list(iter_split(dataset_dir, split))
