"""The common record every reader yields, tag-name normalisation, and the log of skipped inputs."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

#: Ratings as WD names them (category 9), keyed by the letters the sources use.
#: Danbooru's 2022 change renamed old "s" (safe) to "g" (general) and introduced a new "s"
#: (sensitive); which table applies depends on the record's format (see danbooru.py).
LEGACY_RATINGS = {"s": "general", "q": "questionable", "e": "explicit"}
CURRENT_RATINGS = {"g": "general", "s": "sensitive", "q": "questionable", "e": "explicit"}


@dataclass(frozen=True)
class Record:
    """One image with its tags, as read from any source.

    `tags` holds (name, category) pairs; category is a Danbooru category number or None when
    the source does not say (caption files). `group` is the split key: records sharing it
    always land in the same split. `content_key` identifies the image content (a file hash,
    or the Danbooru md5 when files are not read); equal keys are collapsed into one record.
    `split` is set when the source itself says the split (its train/ val/ test/ folders);
    None means the split comes from the hash of `group`.
    """

    id: str
    group: str
    image: str | None
    tags: tuple[tuple[str, int | None], ...]
    rating: str | None = None
    content_key: str | None = None
    split: str | None = None


_ESCAPED_PAREN = re.compile(r"\\([()])")
_SPACES = re.compile(r"\s+")


def normalize_tag(text: str) -> str:
    """Danbooru spelling of a tag written by hand or by a caption tool.

    `Long Hair` -> `long_hair`, `irys \\(hololive\\)` -> `irys_(hololive)`. Underscores and
    case-folding are what Danbooru itself does; escaped parentheses come from prompt captions.
    """
    text = _ESCAPED_PAREN.sub(r"\1", text.strip())
    return _SPACES.sub("_", text).lower()


@dataclass
class SkipLog:
    """Counts skipped or noteworthy inputs by reason and keeps a few examples of each.

    Memory stays bounded (at most `max_examples` per reason) however many lines are bad.
    """

    max_examples: int = 5
    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, reason: str, example: str | None = None, count: int = 1) -> None:
        self.counts[reason] += count
        if example is not None:
            ex = self.examples.setdefault(reason, [])
            if len(ex) < self.max_examples:
                ex.append(example[:300])

    def total(self) -> int:
        return sum(self.counts.values())

    def to_dict(self) -> dict:
        return {
            reason: {"count": self.counts[reason], "examples": self.examples.get(reason, [])}
            for reason in sorted(self.counts)
        }

    def lines(self) -> list[str]:
        out = []
        for reason in sorted(self.counts):
            ex = self.examples.get(reason)
            suffix = f" (e.g. {ex[0]})" if ex else ""
            out.append(f"{self.counts[reason]:>9,}  {reason}{suffix}")
        return out
