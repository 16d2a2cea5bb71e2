"""Vocabulary curation: which tags the model learns, chosen from training-split frequencies.

Two presets:
- `frequency` (default): per category, keep tags with at least `min_count` training images,
  optionally only the `top` N most frequent; meta tags (category 5 and a list of meta-like
  names such as `highres`) are excluded; rating labels (category 9) optional.
- `original`: the original AnimeTagNet rules, for comparison: keep only tags made of letters
  and digits (so every multi-word tag such as `long_hair` is dropped), all categories
  together, the 2,000 most frequent.
Order of the written vocabulary, the WD v3 layout (`vocab.wd_layout_problems`): the four
rating rows (WD order) always, then general, character, and copyright, artist, meta only when
asked for; inside a category by training count (descending), then name. The rating rows are
written even when the source has no ratings (or --ratings is off): positional readers take
rows 0-3 as ratings, and a file without them shifts every name by four. Such rows have a
training count of 0; export records them as untrained and our tools then show no rating.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict, dataclass, field

from ..errors import UsageError
from ..vocab import RATING_IDS, RATING_NAMES, Category, Tag, Vocabulary, extra_category_warning

CATEGORY_ORDER = (Category.GENERAL, Category.CHARACTER, Category.COPYRIGHT, Category.ARTIST, Category.META)

#: Meta-like tags excluded by default even when a source files them as general (captions).
DEFAULT_EXCLUDE = (
    "absurdres", "artist_request", "bad_id", "bad_pixiv_id", "bad_twitter_id", "character_request",
    "check_translation", "commentary", "commentary_request", "copyright_request", "duplicate",
    "english_commentary", "highres", "incredibly_absurdres", "jpeg_artifacts", "lowres",
    "md5_mismatch", "partially_translated", "source_request", "tagme", "translated",
    "translation_request",
)
_ALNUM = re.compile(r"^[a-z0-9]+$")


@dataclass
class CurationRules:
    preset: str = "frequency"
    categories: tuple[str, ...] = ("general", "character")
    min_count: dict[str, int] = field(default_factory=lambda: {"*": 10})
    top: dict[str, int] = field(default_factory=dict)
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE
    ratings: bool = False

    @classmethod
    def original(cls) -> "CurationRules":
        return cls(
            preset="original",
            categories=("general", "character", "copyright", "artist", "meta"),
            min_count={"*": 1},
            top={"*": 2000},
            exclude=(),
        )

    def min_for(self, cat: Category) -> int:
        return self.min_count.get(cat.label, self.min_count.get("*", 1))

    def top_for(self, cat: Category) -> int | None:
        return self.top.get(cat.label, self.top.get("*"))

    def category_set(self) -> set[Category]:
        return {Category.parse(c) for c in self.categories}

    def to_dict(self) -> dict:
        d = asdict(self)
        d["categories"] = list(self.categories)
        d["exclude"] = sorted(self.exclude)
        d["min_count"] = dict(sorted(self.min_count.items()))
        d["top"] = dict(sorted(self.top.items()))
        return d


def parse_category_values(values: list[str] | None, option: str) -> dict[str, int]:
    """`['10', 'character=5']` -> {'*': 10, 'character': 5}."""
    out: dict[str, int] = {}
    for value in values or []:
        key, _, num = value.rpartition("=")
        key = key.strip().lower() or "*"
        if key != "*":
            try:
                key = Category.parse(key).label
            except ValueError:
                raise UsageError(f"{option} {value!r}: unknown category {key!r}") from None
        try:
            n = int(num)
        except ValueError:
            raise UsageError(f"{option} {value!r}: expected N or CATEGORY=N") from None
        if n < 0:
            raise UsageError(f"{option} {value!r}: must not be negative")
        out[key] = n
    return out


def _sort_key(item: tuple[str, int]) -> tuple[int, str]:
    return (-item[1], item[0])


def select_vocabulary(
    train_counts: Counter,
    categories: dict[str, int],
    rating_counts: Counter,
    rules: CurationRules,
    tag_ids: dict[str, int] | None = None,
) -> tuple[Vocabulary, dict]:
    """The vocabulary and a report of what each rule kept or dropped."""
    tag_ids = tag_ids or {}
    allowed = rules.category_set()
    excluded = set(rules.exclude)
    by_cat: dict[Category, list[tuple[str, int]]] = {c: [] for c in CATEGORY_ORDER}
    report: dict = {"candidates": {}, "kept": {}, "dropped": Counter()}
    for name, count in train_counts.items():
        try:
            cat = Category(categories.get(name, 0))
        except ValueError:
            cat = Category.GENERAL
        if cat not in allowed or cat is Category.RATING:
            report["dropped"]["category not selected"] += 1
            continue
        if name in excluded:
            report["dropped"]["excluded (meta-like)"] += 1
            continue
        by_cat[cat].append((name, count))

    # Always the four WD rating rows first; without --ratings they are never labelled (count 0).
    chosen: list[Tag] = [
        Tag(r, Category.RATING, rating_counts.get(r, 0) if rules.ratings else 0, RATING_IDS[r]) for r in RATING_NAMES
    ]
    if rules.preset == "original":
        pool = [(n, c, cat) for cat, items in by_cat.items() for n, c in items]
        one_word = [p for p in pool if _ALNUM.match(p[0])]
        report["original"] = {"one_word_tags": len(one_word), "multi_word_tags": len(pool) - len(one_word)}
        report["dropped"]["not letters and digits only"] += len(pool) - len(one_word)
        one_word = [p for p in one_word if p[1] >= rules.min_count.get("*", 1)]
        one_word.sort(key=lambda p: (-p[1], p[0]))
        limit = rules.top.get("*", 2000)
        report["dropped"]["beyond the top N"] += max(0, len(one_word) - limit)
        kept = one_word[:limit]
        for cat in CATEGORY_ORDER:
            items = [(n, c) for n, c, k in kept if k == cat]
            report["candidates"][cat.label] = sum(1 for p in pool if p[2] == cat)
            report["kept"][cat.label] = len(items)
            chosen.extend(Tag(n, cat, c, tag_ids.get(n, 0)) for n, c in items)
    elif rules.preset == "frequency":
        for cat in CATEGORY_ORDER:
            items = sorted(by_cat[cat], key=_sort_key)
            report["candidates"][cat.label] = len(items)
            minimum = rules.min_for(cat)
            above = [it for it in items if it[1] >= minimum]
            report["dropped"][f"{cat.label}: fewer than {minimum} training images"] += len(items) - len(above)
            limit = rules.top_for(cat)
            if limit is not None and len(above) > limit:
                report["dropped"][f"{cat.label}: beyond the top {limit}"] += len(above) - limit
                above = above[:limit]
            report["kept"][cat.label] = len(above)
            chosen.extend(Tag(n, cat, c, tag_ids.get(n, 0)) for n, c in above)
    else:
        raise UsageError(f"unknown curation preset {rules.preset!r} (frequency or original)")
    report["candidates"] = {k: v for k, v in report["candidates"].items() if v}
    report["kept"] = {k: v for k, v in report["kept"].items() if v}
    report["kept"]["rating"] = len(RATING_NAMES)
    report["ratings_labelled"] = sum(1 for t in chosen if t.category is Category.RATING and t.count > 0)
    report["dropped"] = {k: v for k, v in sorted(report["dropped"].items()) if v}
    vocab = Vocabulary(chosen)
    warning = extra_category_warning(vocab)
    if warning:
        report["warnings"] = [warning]
    return vocab, report
