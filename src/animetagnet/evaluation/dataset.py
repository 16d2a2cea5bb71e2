"""Reads one split of a dataset directory (selected_tags.csv + <split>.jsonl, docs/formats.md) for evaluation."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..datasets.load import DatasetError, open_dataset
from ..vocab import Vocabulary


@dataclass
class Record:
    id: str
    image: str  # absolute path
    tags: list[str]
    group: str = ""  # the split key (post md5 for face crops): records that must stay together


@dataclass
class SplitData:
    dataset_dir: Path
    split: str
    vocab: Vocabulary
    records: list[Record]
    #: Labels in the jsonl that are not in the dataset's selected_tags.csv (ignored), with counts.
    unknown_labels: Counter = field(default_factory=Counter)

    def groups_of(self, ids: list[str]) -> list[str]:
        """The split group of each id (a record without one is its own group)."""
        group = {r.id: r.group or r.id for r in self.records}
        return [group[i] for i in ids]


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
    ds = open_dataset(dataset_dir, require=(split,))
    root, vocab = ds.root, ds.vocab
    records: list[Record] = []
    unknown: Counter = Counter()
    for example in ds.iter_split(split):
        known = []
        for t in example.tags:
            if t in vocab:
                known.append(t)
            else:
                unknown[t] += 1
        records.append(Record(id=example.id, image=example.image, tags=known, group=example.group))
        if limit is not None and len(records) >= limit:
            break
    if not records:
        raise DatasetError(f"{root / f'{split}.jsonl'}: the {split} split is empty")
    return SplitData(dataset_dir=root, split=split, vocab=vocab, records=records, unknown_labels=unknown)
