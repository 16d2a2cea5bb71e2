"""The gallery's booru-style query language, parsed into SQL conditions over the `files` and `tags` tables."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..errors import UsageError

RATING_ALIASES = {"g": "general", "s": "sensitive", "q": "questionable", "e": "explicit",
                  "safe": "general", "nsfw": "explicit"}
_NUMBER = re.compile(r"^(>=|<=|>|<|=)?(\d*\.?\d+)$")


# --- query language ------------------------------------------------------------
@dataclass
class Term:
    kind: str  # "tag" or "rating"
    value: Any  # tag name (may contain * wildcards) or a set of ratings
    negated: bool = False
    op: str | None = None  # None: "selected at index time"; else a comparison on confidence
    threshold: float | None = None


def parse_query(text: str) -> list[Term]:
    """Booru-style query: terms separated by spaces, all must hold.

    `tag` (selected at index time), `-tag` (not), `tag:>0.8` / `tag:>=0.5` / `tag:<0.2`
    (confidence; an absent tag counts as 0), `*` wildcards (`*_hair`), `rating:general` or
    `rating:g,s` and `-rating:e`. Tags with a colon of their own (`:d`) work as they are.
    """
    terms: list[Term] = []
    for raw in text.split():
        negated = raw.startswith("-") and len(raw) > 1 and raw not in ("-_-",)
        word = raw[1:] if negated else raw
        low = word.lower()
        if low.startswith("rating:"):
            names = set()
            for part in low[len("rating:"):].split(","):
                name = RATING_ALIASES.get(part, part)
                if name not in ("general", "sensitive", "questionable", "explicit"):
                    raise UsageError(f"unknown rating {part!r} in {raw!r} (general, sensitive, questionable, explicit "
                                     "or g, s, q, e)")
                names.add(name)
            terms.append(Term("rating", names, negated))
            continue
        op = threshold = None
        head, sep, tail = word.rpartition(":")
        m = _NUMBER.match(tail) if sep and head else None
        if m:
            word, op, threshold = head, m.group(1) or ">=", float(m.group(2))
            if op == "=":
                op = ">="
            if not 0.0 <= threshold <= 1.0:
                raise UsageError(f"confidence in {raw!r} must be between 0 and 1")
        terms.append(Term("tag", word.lower(), negated, op, threshold))
    return terms


def _tag_match(tag: str) -> tuple[str, list]:
    if "*" in tag:
        like = tag.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_").replace("*", "%")
        return "t.tag LIKE ? ESCAPE '\\'", [like]
    return "t.tag = ?", [tag]


def build_where(terms: list[Term]) -> tuple[str, list]:
    clauses: list[str] = ["f.error IS NULL"]
    params: list = []
    for term in terms:
        if term.kind == "rating":
            marks = ",".join("?" * len(term.value))
            clauses.append(f"f.rating {'NOT IN' if term.negated else 'IN'} ({marks})")
            params.extend(sorted(term.value))
            continue
        match, mparams = _tag_match(term.value)
        op, thr = term.op, term.threshold
        if op is None:
            cond, cparams, exists = "t.selected = 1", [], True
        elif op in (">", ">="):
            cond, cparams, exists = f"t.confidence {op} ?", [thr], True
        else:  # `< x` holds when no stored score reaches x: the negation of `>= x`
            cond, cparams, exists = f"t.confidence {'>=' if op == '<' else '>'} ?", [thr], False
        if term.negated:
            exists = not exists
        clauses.append(f"{'' if exists else 'NOT '}EXISTS (SELECT 1 FROM tags t WHERE t.file_id = f.id AND {match} AND {cond})")
        params.extend(mparams + cparams)
    return " AND ".join(clauses), params
