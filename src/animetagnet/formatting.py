"""Tag filtering (exclude, replace, drop implied) and caption text formatting, as users ask for it."""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from .errors import UsageError
from .options import CaptionOptions
from .results import TagResult

#: Tags whose underscore is part of the face (from the WD reference tagger): never spaced.
KAOMOJI = frozenset(
    {"0_0", "(o)_(o)", "+_+", "+_-", "._.", "<o>_<o>", "<|>_<|>", "=_=", ">_<", "3_3", "6_9",
     ">_o", "@_@", "^_^", "o_o", "u_u", "x_x", "|_|", "||_||"}
)

_WEIGHTED = re.compile(r"^\((.*):\s*[0-9.]+\)$")


def normalize_tag(text: str) -> str:
    """The canonical form used for comparisons: unescaped, unweighted, underscores, lower case."""
    t = text.strip()
    m = _WEIGHTED.match(t)
    if m:
        t = m.group(1)
    t = t.replace("\\(", "(").replace("\\)", ")").strip()
    if t not in KAOMOJI:
        t = t.replace(" ", "_")
    return t.lower()


def load_implications(path: str | Path | None = None) -> dict[str, set[str]]:
    """antecedent -> every tag it implies (transitively). CSV rows `antecedent,consequent`."""
    if path is None:
        text = resources.files("animetagnet").joinpath("data/implications.csv").read_text(encoding="utf-8")
        source = "built-in implications"
    else:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"cannot read implication table {path}: {exc}") from None
        source = str(path)
    direct: dict[str, set[str]] = {}
    for lineno, row in enumerate(csv.reader(text.splitlines()), start=1):
        if not row or row[0].lstrip().startswith("#"):
            continue
        if len(row) < 2 or not row[0].strip() or not row[1].strip():
            raise UsageError(f"{source}:{lineno}: expected 'antecedent,consequent', got {row!r}")
        direct.setdefault(normalize_tag(row[0]), set()).add(normalize_tag(row[1]))
    closure: dict[str, set[str]] = {}
    for tag in direct:
        seen: set[str] = set()
        stack = list(direct[tag])
        while stack:
            t = stack.pop()
            if t not in seen:
                seen.add(t)
                stack.extend(direct.get(t, ()))
        closure[tag] = seen
    return closure


def parse_replacements(items: list[str]) -> dict[str, str]:
    """`old=new` items (several may share one argument separated by ';')."""
    out: dict[str, str] = {}
    for item in items:
        for part in item.split(";"):
            if not part.strip():
                continue
            if "=" not in part:
                raise UsageError(f"replacement {part!r} must look like old=new")
            old, new = part.split("=", 1)
            if not old.strip():
                raise UsageError(f"replacement {part!r} has an empty tag")
            out[normalize_tag(old)] = new.strip().replace(" ", "_")
    return out


def split_tag_list(items: list[str] | None) -> list[str]:
    """Flatten `--exclude a,b --exclude c` style options."""
    out: list[str] = []
    for item in items or []:
        out.extend(t.strip() for t in item.split(",") if t.strip())
    return out


@dataclass
class TagFilter:
    """Removes, renames and de-duplicates tags in a result; applied before any output."""

    exclude: set[str] = field(default_factory=set)
    replacements: dict[str, str] = field(default_factory=dict)
    implications: dict[str, set[str]] | None = None  # None: keep implied tags

    def __post_init__(self) -> None:
        self.exclude = {normalize_tag(t) for t in self.exclude}

    @property
    def active(self) -> bool:
        return bool(self.exclude or self.replacements or self.implications)

    def apply(self, result: TagResult) -> TagResult:
        if not result.ok or not self.active:
            return result
        present = {normalize_tag(name) for name, _, _ in result.iter_tags()}
        implied: set[str] = set()
        if self.implications:
            for tag in present:
                implied |= self.implications.get(tag, set())
        tags: dict[str, dict[str, float]] = {}
        for cat, items in result.tags.items():
            kept: dict[str, float] = {}
            for name, conf in items.items():
                key = normalize_tag(name)
                if key in self.exclude or key in implied:
                    continue
                new = self.replacements.get(key, name)
                if normalize_tag(new) in self.exclude:
                    continue
                kept[new] = max(conf, kept.get(new, 0.0))
            tags[cat] = kept
        return TagResult(path=result.path, rating=result.rating, ratings=result.ratings, tags=tags)


@dataclass(frozen=True)
class CaptionStyle(CaptionOptions):
    """Caption text from a result; the fields (and their defaults) are CaptionOptions'."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.validate()

    def use_label_order(self, names: list[str]) -> "CaptionStyle":
        """The model's label-file order (row i = output i), which sort="model" follows (set once)."""
        if self.sort == "model" and not hasattr(self, "_label_order"):
            object.__setattr__(self, "_label_order", {n: i for i, n in reversed(list(enumerate(names)))})
        return self

    def sort_key(self, item: tuple[str, float]):
        """Key for (name, confidence) pairs in this style's order."""
        if self.sort == "confidence":
            return (-item[1], item[0])
        if self.sort == "model":
            order = getattr(self, "_label_order", {})
            # Renamed tags (--replace) are not in the label file: they go after, by name.
            return (order.get(item[0], len(order)), item[0])
        return (item[0],)

    def format_name(self, name: str) -> str:
        text = name
        if self.spaces and name not in KAOMOJI:
            text = text.replace("_", " ")
        if self.escape_parens:
            text = text.replace("(", "\\(").replace(")", "\\)")
        return text

    def ordered(self, result: TagResult) -> list[tuple[str, float]]:
        """(name, confidence) in caption order."""
        key = self.sort_key
        chars = sorted(result.character.items(), key=key)
        others = sorted(((n, c) for n, cat, c in result.iter_tags() if cat != "character"), key=key)
        body = chars + others if self.characters_first else sorted(chars + others, key=key)
        head: list[tuple[str, float]] = []
        if self.include_rating and result.rating:
            head.append((result.rating, result.ratings.get(result.rating, 1.0)))
        if self.always_first:
            wanted = [normalize_tag(t) for t in self.always_first]
            by_key = {normalize_tag(n): (n, c) for n, c in body}
            head += [by_key[w] for w in wanted if w in by_key]
            taken = {normalize_tag(n) for n, _ in head}
            body = [(n, c) for n, c in body if normalize_tag(n) not in taken]
        return head + body

    def format_tag(self, name: str, conf: float) -> str:
        text = self.format_name(name)
        return f"({text}:{conf:.2f})" if self.with_confidence else text

    def caption(self, result: TagResult) -> str:
        return self.separator.join(self.format_tag(n, c) for n, c in self.ordered(result))


def split_caption(text: str, separator: str = ",") -> list[str]:
    sep = separator.strip() or ","
    return [t.strip() for t in text.replace("\n", sep).split(sep) if t.strip()]


def merge_caption(existing: str, new_tags: list[str], mode: str, separator: str = ", ") -> str:
    """Combine an existing caption with new tags, never duplicating a tag already there."""
    old = split_caption(existing, separator)
    seen = {normalize_tag(t) for t in old}
    fresh = []
    for t in new_tags:
        k = normalize_tag(t)
        if k not in seen:
            seen.add(k)
            fresh.append(t)
    if mode == "append":
        parts = old + fresh
    elif mode == "prepend":
        parts = fresh + old
    else:
        raise ValueError(mode)
    return separator.join(parts)
