"""Reads one split of a dataset directory (selected_tags.csv + <split>.jsonl, docs/formats.md) for evaluation."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UsageError
from ..datasets.load import iter_split
from ..vocab import Vocabulary

SPLITS = ("train", "val", "test")


@dataclass
class Record:
    id: str
    image: str  # absolute path
    tags: list[str]


@dataclass
class SplitData:
    dataset_dir: Path
    split: str
    vocab: Vocabulary
    records: list[Record]
    #: Labels in the jsonl that are not in the dataset's selected_tags.csv (ignored), with counts.
    unknown_labels: Counter = field(default_factory=Counter)


def split_size(dataset_dir: str | Path, split: str) -> int:
    path = Path(dataset_dir) / f"{split}.jsonl"
    if not path.is_file():
        return 0
    with path.open(encoding="utf-8") as fh:
        return sum(1 for line in fh if line.strip())


def default_split(dataset_dir: str | Path) -> str:
    """`test` when the dataset has a non-empty test split, else `val`."""
    return "test" if split_size(dataset_dir, "test") else "val"


def load_split(dataset_dir: str | Path, split: str, *, limit: int | None = None) -> SplitData:
    root = Path(dataset_dir).expanduser()
    if not root.is_dir():
        raise UsageError(f"dataset directory not found: {root}")
    labels = root / "selected_tags.csv"
    if not labels.is_file():
        raise UsageError(f"{root}: no selected_tags.csv (a dataset directory holds selected_tags.csv and train/val/test.jsonl)")
    vocab = Vocabulary.read_csv(labels)
    path = root / f"{split}.jsonl"
    if not path.is_file():
        raise UsageError(f"{root}: no {split}.jsonl (splits present: "
                         f"{', '.join(s for s in SPLITS if (root / f'{s}.jsonl').is_file()) or 'none'})")
    records: list[Record] = []
    unknown: Counter = Counter()
    for example in iter_split(root, split):  # the one reader of split files
        known = []
        for t in example.tags:
            if t in vocab:
                known.append(t)
            else:
                unknown[t] += 1
        records.append(Record(id=example.id, image=example.image, tags=known))
        if limit is not None and len(records) >= limit:
            break
    if not records:
        raise UsageError(f"{path}: the {split} split is empty")
    return SplitData(dataset_dir=root, split=split, vocab=vocab, records=records, unknown_labels=unknown)
