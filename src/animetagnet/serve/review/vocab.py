"""Tag autocompletion: the model's vocabulary first, then a Danbooru tag table (name,category,post_count,aliases).

The table (140k rows for the shared danbooru_tags.csv) is read in a background thread, so
the server answers at once; until it is loaded, completions come from the model alone. An
alias completes to its tag (`/lh` or `long hair` -> `long_hair`).
"""

from __future__ import annotations

import bisect
import csv
import os
import threading
from pathlib import Path

from ...formatting import normalize_tag

#: Danbooru category codes of the table's second column.
TABLE_CATEGORIES = {0: "general", 1: "artist", 3: "copyright", 4: "character", 5: "meta"}


def default_table() -> Path | None:
    """$ANIMETAGNET_DATA/tags/danbooru_tags.csv when present."""
    base = os.environ.get("ANIMETAGNET_DATA")
    if base:
        p = Path(base) / "tags" / "danbooru_tags.csv"
        if p.is_file():
            return p
    return None


class Completer:
    def __init__(self, model_names: list[str], model_categories: list[str], table: str | os.PathLike | None = None):
        self.model = {n: c for n, c in zip(model_names, model_categories) if c != "rating"}
        self._model_sorted = sorted(self.model)
        self.table: dict[str, tuple[str, int]] = {}   # name -> (category, post count)
        self.aliases: dict[str, str] = {}
        self._keys: list[str] = []                     # sorted names and aliases
        self.table_path = Path(table) if table else default_table()
        self.table_error: str | None = None
        self._loaded = threading.Event()
        if self.table_path is not None:
            threading.Thread(target=self._load, name="review-tags", daemon=True).start()
        else:
            self._loaded.set()

    def _load(self) -> None:
        table: dict[str, tuple[str, int]] = {}
        aliases: dict[str, str] = {}
        try:
            with open(self.table_path, newline="", encoding="utf-8-sig") as fh:
                for row in csv.reader(fh):
                    if len(row) < 3 or not row[0]:
                        continue
                    try:
                        cat, count = TABLE_CATEGORIES.get(int(row[1]), "general"), int(row[2])
                    except ValueError:
                        continue  # a header row
                    table[row[0]] = (cat, count)
                    for a in (row[3].split(",") if len(row) > 3 and row[3] else ()):
                        a = a.strip()
                        if a and a != row[0]:
                            aliases.setdefault(a, row[0])
        except OSError as exc:
            self.table_error = f"cannot read tag table {self.table_path}: {exc.strerror or exc}"
        self.table, self.aliases = table, aliases
        self._keys = sorted(set(table) | set(aliases))
        self._loaded.set()

    def wait(self, timeout: float = 30.0) -> bool:
        return self._loaded.wait(timeout)

    def category(self, tag: str) -> str | None:
        if tag in self.model:
            return self.model[tag]
        hit = self.table.get(tag)
        return hit[0] if hit else None

    @staticmethod
    def _prefixed(keys: list[str], prefix: str, cap: int) -> list[str]:
        i = bisect.bisect_left(keys, prefix)
        out = []
        while i < len(keys) and keys[i].startswith(prefix) and len(out) < cap:
            out.append(keys[i])
            i += 1
        return out

    def complete(self, query: str, limit: int = 15) -> list[dict]:
        """Tags starting with `query` (normalized): the model's by name, then the table's by post count."""
        q = normalize_tag(query)
        if not q:
            return []
        out: list[dict] = []
        seen: set[str] = set()
        for name in self._prefixed(self._model_sorted, q, limit):
            seen.add(name)
            count = self.table.get(name, (None, 0))[1]
            out.append({"tag": name, "category": self.model[name], "count": count, "in_model": True})
        if len(out) < limit and self._loaded.is_set():
            hits = []
            for key in self._prefixed(self._keys, q, 2000):
                name = self.aliases.get(key, key) if key not in self.table else key
                if name in seen or name not in self.table:
                    continue
                seen.add(name)
                cat, count = self.table[name]
                hits.append({"tag": name, "category": cat, "count": count, "in_model": name in self.model,
                             **({"alias": key} if key != name else {})})
            hits.sort(key=lambda d: -d["count"])
            out += hits[: limit - len(out)]
        if len(out) < limit:  # then model tags containing the query (`hair` -> long_hair)
            for name in self._model_sorted:
                if q in name and name not in seen:
                    seen.add(name)
                    out.append({"tag": name, "category": self.model[name], "count": 0, "in_model": True})
                    if len(out) >= limit:
                        break
        return out

