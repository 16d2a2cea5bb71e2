"""The tag vocabulary: names and Danbooru categories, read from and written to WD `selected_tags.csv`.

Row i of the label file names output i of the model. Our own code takes categories from the
file's `category` column, never from positions; the WD clients (kohya, the A1111 and ComfyUI
taggers) do read by position, so every label file we write follows the WD v3 layout, checked
by `wd_layout_problems`: rows 0-3 the ratings, then the general block, then the characters.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from .errors import ModelError
from .fileio import atomic_write_text


class Category(IntEnum):
    """Danbooru tag categories, plus WD's pseudo-category 9 for the rating outputs."""

    GENERAL = 0
    ARTIST = 1
    COPYRIGHT = 3
    CHARACTER = 4
    META = 5
    RATING = 9

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, value: "str | int | Category") -> "Category":
        """Accept 0/'0'/'general'/Category.GENERAL alike."""
        if isinstance(value, Category):
            return value
        if isinstance(value, int):
            return cls(value)
        text = str(value).strip().lower()
        if text.lstrip("-").isdigit():
            return cls(int(text))
        try:
            return cls[text.upper()]
        except KeyError:
            raise ValueError(f"unknown tag category {value!r}") from None


#: WD rating output names, in Danbooru's newer g/s/q/e order.
RATING_NAMES = ("general", "sensitive", "questionable", "explicit")
#: WD label files give the rating rows these ids; kept so our files look like theirs.
RATING_IDS = {"general": 9999999, "sensitive": 9999998, "questionable": 9999997, "explicit": 9999996}
#: The WD v3 block order after the rating rows. Categories WD files never carry go last, where
#: positional readers mistake them for characters (see `extra_category_warning`).
WD_BLOCK_ORDER = (0, 4, 3, 1, 5)  # general, character, copyright, artist, meta


@dataclass(frozen=True)
class Tag:
    name: str
    category: Category
    count: int = 0
    tag_id: int = 0


class Vocabulary(Sequence[Tag]):
    """An ordered list of tags; index i is model output i."""

    def __init__(self, tags: Iterable[Tag]):
        self._tags: list[Tag] = list(tags)
        self.names: list[str] = [t.name for t in self._tags]
        self.categories: np.ndarray = np.array([int(t.category) for t in self._tags], dtype=np.int16)
        self._index: dict[str, int] = {}
        for i, name in enumerate(self.names):
            # First occurrence wins; duplicates are reported by `duplicates()`.
            self._index.setdefault(name, i)

    # Sequence protocol
    def __len__(self) -> int:
        return len(self._tags)

    def __getitem__(self, i):  # type: ignore[override]
        return self._tags[i]

    def __iter__(self) -> Iterator[Tag]:
        return iter(self._tags)

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def index(self, name: str) -> int:  # type: ignore[override]
        try:
            return self._index[name]
        except KeyError:
            raise KeyError(f"tag {name!r} is not in the vocabulary") from None

    def get_index(self, name: str) -> int | None:
        return self._index.get(name)

    def indices(self, category: Category | int) -> np.ndarray:
        """Output indices of every tag in `category`."""
        return np.flatnonzero(self.categories == int(category))

    def category_of(self, name: str) -> Category:
        return self._tags[self.index(name)].category

    def present_categories(self) -> list[Category]:
        return sorted({t.category for t in self._tags})

    def duplicates(self) -> list[str]:
        seen: set[str] = set()
        dup: list[str] = []
        for n in self.names:
            if n in seen:
                dup.append(n)
            seen.add(n)
        return dup

    # --- CSV -------------------------------------------------------------
    @classmethod
    def read_csv(cls, path: str | Path) -> "Vocabulary":
        """Read a WD `selected_tags.csv` (header tag_id,name,category,count)."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8-sig")
        except FileNotFoundError:
            raise ModelError(f"label file not found: {path}") from None
        except UnicodeDecodeError as exc:
            raise ModelError(f"{path}: label file is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset "
                             f"{exc.start}); save it as UTF-8") from None
        except OSError as exc:
            raise ModelError(f"{path}: cannot read the label file ({exc.strerror or exc})") from None
        return cls.from_csv_text(text, source=str(path))

    @classmethod
    def from_csv_text(cls, text: str, source: str = "<csv>") -> "Vocabulary":
        reader = csv.DictReader(io.StringIO(text))
        fields = set(reader.fieldnames or [])
        if not {"name", "category"} <= fields:
            raise ModelError(
                f"{source}: label file needs the columns name and category "
                f"(WD header: tag_id,name,category,count); found {sorted(fields)}"
            )
        tags: list[Tag] = []
        for lineno, row in enumerate(reader, start=2):
            try:
                tags.append(
                    Tag(
                        name=row["name"],
                        category=Category.parse(row["category"]),
                        count=int(float(row.get("count") or 0)),
                        tag_id=int(float(row.get("tag_id") or 0)),
                    )
                )
            except (ValueError, TypeError) as exc:
                raise ModelError(f"{source}:{lineno}: bad label row {row!r}: {exc}") from None
        if not tags:
            raise ModelError(f"{source}: label file has no tags")
        return cls(tags)

    def to_csv_text(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["tag_id", "name", "category", "count"])
        for t in self._tags:
            writer.writerow([t.tag_id, t.name, int(t.category), t.count])
        return buf.getvalue()

    def write_csv(self, path: str | Path) -> None:
        atomic_write_text(Path(path), self.to_csv_text())


# --- the WD v3 layout -------------------------------------------------------

def _row(vocab: Vocabulary, i: int) -> str:
    t = vocab[i]
    return f"row {i} {t.name!r} ({t.category.label})"


def wd_layout_problems(vocab: Vocabulary, *, require_ratings: bool = True, limit: int = 5) -> list[str]:
    """What breaks the WD v3 layout positional readers rely on; [] when the file follows it.

    The layout: rows 0-3 are the ratings general, sensitive, questionable, explicit (category
    9), then every general tag (0), then every character tag (4), then any other category in
    the order copyright, artist, meta. `require_ratings=False` accepts a file with no rating
    rows at all (the pre-v3 label files), but never rating rows elsewhere.
    """
    problems: list[str] = []
    has_ratings = bool(vocab.indices(Category.RATING).size)
    start = 0
    if has_ratings or require_ratings:
        for i, want in enumerate(RATING_NAMES):
            if i >= len(vocab):
                problems.append(f"row {i} is missing (expected the rating {want!r}, category 9)")
            elif vocab[i].category != Category.RATING or vocab[i].name != want:
                problems.append(f"{_row(vocab, i)} should be the rating {want!r} (category 9)")
        start = len(RATING_NAMES)
    rank = {c: k for k, c in enumerate(WD_BLOCK_ORDER)}
    last: int | None = None
    for i in range(start, len(vocab)):
        cat = vocab[i].category
        if cat == Category.RATING:
            problems.append(f"{_row(vocab, i)} is a rating outside rows 0-3")
            continue
        if last is not None and rank[cat] < rank[vocab[last].category]:
            problems.append(f"{_row(vocab, i)} comes after {_row(vocab, last)}; blocks must be "
                            "general, then character, then copyright, artist, meta")
        if last is None or rank[cat] >= rank[vocab[last].category]:
            last = i
    return problems[:limit] + ([f"... and {len(problems) - limit} more"] if len(problems) > limit else [])


def extra_category_warning(vocab: Vocabulary) -> str | None:
    """The warning for copyright/artist/meta rows: what positional readers do with them."""
    extra = [c for c in vocab.present_categories() if int(c) not in (0, 4, 9)]
    if not extra:
        return None
    n = sum(int((vocab.categories == int(c)).sum()) for c in extra)
    labels = "/".join(c.label for c in extra)
    return (f"{n} {labels} label(s) follow the characters: our tools select them by category, but "
            "kohya sd-scripts reads every row after the general block as a character (and fails with "
            "IndexError when one fires), ComfyUI-WD14-Tagger captions them as characters, and the A1111 "
            "taggers mix them into the general tags")
