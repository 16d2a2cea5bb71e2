"""A Danbooru tag table: current names, categories and aliases (old name -> current name).

Reads the `name,category,post_count,aliases` table (no header; aliases a quoted,
comma-separated list, as in danbooru_tags.csv), a WD `selected_tags.csv` (categories only),
or a two-column alias file `old_name,new_name` (Danbooru's tag_aliases export shape).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UsageError
from .records import normalize_tag


@dataclass
class TagTable:
    aliases: dict[str, str] = field(default_factory=dict)
    categories: dict[str, int] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)

    def canonical(self, name: str) -> str:
        # Alias chains are rare but exist (a -> b renamed again to c); follow a few hops.
        for _ in range(4):
            new = self.aliases.get(name)
            if new is None or new == name:
                return name
            name = new
        return name

    def category(self, name: str) -> int | None:
        return self.categories.get(name)

    def __bool__(self) -> bool:
        return bool(self.aliases or self.categories)

    def load(self, path: str | Path) -> "TagTable":
        path = Path(path)
        try:
            fh = open(path, newline="", encoding="utf-8-sig")
        except OSError as exc:
            raise UsageError(f"cannot read tag table {path}: {exc.strerror or exc}") from None
        with fh:
            reader = csv.reader(fh)
            first = next(reader, None)
            if first is None:
                raise UsageError(f"tag table {path} is empty")
            header = [c.strip().lower() for c in first]
            if "name" in header and "category" in header:
                self._load_wd(header, reader, path)
            elif len(first) == 2 or header[:2] in (["antecedent_name", "consequent_name"], ["old", "new"]):
                if header[:2] not in (["antecedent_name", "consequent_name"], ["old", "new"]):
                    self._add_alias(first[0], first[1])
                for row in reader:
                    if len(row) >= 2:
                        self._add_alias(row[0], row[1])
            elif len(first) >= 3:
                self._load_danbooru(first, path)
                for row in reader:
                    self._load_danbooru(row, path)
            else:
                raise UsageError(
                    f"tag table {path}: expected name,category,post_count,aliases rows, a WD "
                    "selected_tags.csv, or old_name,new_name alias rows"
                )
        self.sources.append(str(path))
        return self

    def _add_alias(self, old: str, new: str) -> None:
        old, new = normalize_tag(old), normalize_tag(new)
        if old and new and old != new:
            self.aliases[old] = new

    def _load_danbooru(self, row: list[str], path: Path) -> None:
        if len(row) < 2 or not row[0]:
            return
        name = row[0]
        try:
            self.categories[name] = int(row[1])
        except ValueError:
            return
        if len(row) >= 4 and row[3]:
            for old in row[3].split(","):
                old = old.strip()
                # Danbooru's alias column also lists search shortcuts such as "/lh"; they
                # never appear as post tags, but mapping them is harmless.
                if old and old != name:
                    self.aliases.setdefault(old, name)

    def _load_wd(self, header: list[str], reader, path: Path) -> None:
        i_name, i_cat = header.index("name"), header.index("category")
        for row in reader:
            try:
                cat = int(row[i_cat])
            except (ValueError, IndexError):
                continue
            if cat != 9:
                self.categories[row[i_name]] = cat
