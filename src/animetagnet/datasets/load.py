"""Reading a prepared dataset directory back: its info, vocabulary and split records.

The one reader and validator of dataset directories (docs/formats.md): the trainer, export
and the evaluator all open them here, so every consumer gets the same checks and the same
`DatasetError` messages.
`image` paths come back absolute: `prepare` writes them absolute, and hand-written
datasets may give them relative to the dataset directory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..errors import ModelError, UsageError
from ..vocab import Vocabulary
from .splits import SPLITS


class DatasetError(UsageError):
    """A directory is not a readable dataset: missing files, a bad label file, a malformed record."""


@dataclass(frozen=True)
class Example:
    id: str
    image: str
    tags: tuple[str, ...]
    group: str


@dataclass(frozen=True)
class DatasetDirectory:
    """A validated dataset directory: its root and vocabulary; split files are read on demand."""

    root: Path
    vocab: Vocabulary

    @property
    def splits(self) -> tuple[str, ...]:
        """The splits that have a file, in SPLITS order."""
        return tuple(s for s in SPLITS if (self.root / f"{s}.jsonl").is_file())

    def require(self, split: str, why: str = "") -> Path:
        """The split's file, or a DatasetError naming the splits that are there."""
        if split not in SPLITS:
            raise DatasetError(f"unknown split {split!r}; one of {', '.join(SPLITS)}")
        path = self.root / f"{split}.jsonl"
        if not path.is_file():
            raise DatasetError(f"{self.root}: {split}.jsonl is missing{f' ({why})' if why else ''} "
                               f"(splits present: {', '.join(self.splits) or 'none'})")
        return path

    def iter_split(self, split: str) -> Iterator[Example]:
        self.require(split)
        return iter_split(self.root, split)


def open_dataset(dataset_dir: str | Path, *, require: tuple[str, ...] = ()) -> DatasetDirectory:
    """Check that `dataset_dir` is a dataset directory (and holds the `require`d splits); read its vocabulary."""
    root = Path(dataset_dir).expanduser()
    if not root.is_dir():
        raise DatasetError(f"dataset directory not found: {root}")
    labels = root / "selected_tags.csv"
    if not labels.is_file():
        raise DatasetError(
            f"{root} is not a dataset directory: selected_tags.csv is missing (a dataset directory holds "
            "selected_tags.csv and train/val/test.jsonl; create one with `animetagnet prepare`)"
        )
    try:
        vocab = Vocabulary.read_csv(labels)
    except ModelError as exc:
        raise DatasetError(str(exc)) from None
    if vocab.duplicates():
        raise DatasetError(f"{labels}: duplicate tags {vocab.duplicates()[:5]}")
    ds = DatasetDirectory(root, vocab)
    for split in require:
        ds.require(split)
    return ds


def read_info(dataset_dir: str | Path) -> dict:
    path = Path(dataset_dir) / "dataset.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError(f"{dataset_dir}: no dataset.json; is it a directory written by `animetagnet prepare`?") from None
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: invalid JSON: {exc}") from None


def read_vocabulary(dataset_dir: str | Path) -> Vocabulary:
    return open_dataset(dataset_dir).vocab


def iter_split(dataset_dir: str | Path, split: str) -> Iterator[Example]:
    """Stream the records of one split; raises DatasetError on a malformed line."""
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; one of {', '.join(SPLITS)}")
    base = Path(dataset_dir)
    path = base / f"{split}.jsonl"
    try:
        fh = open(path, encoding="utf-8")
    except FileNotFoundError:
        raise DatasetError(f"{path}: missing (a --metadata-only dataset has no split files)") from None
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
                raise DatasetError(f"{path}:{lineno}: not a dataset record ({exc})") from None
            if not image.is_absolute():
                image = base / image
            yield Example(id=rid, image=str(image), tags=tags, group=str(obj.get("group", rid)))


def read_split(dataset_dir: str | Path, split: str) -> list[Example]:
    return list(iter_split(dataset_dir, split))
