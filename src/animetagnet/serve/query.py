"""The gallery's booru-style query language, parsed into SQL conditions over the `files` and `tags` tables."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..errors import UsageError

RATING_ALIASES = {"g": "general", "s": "sensitive", "q": "questionable", "e": "explicit",
                  "safe": "general", "nsfw": "explicit"}
_NUMBER = re.compile(r"^(>=|<=|>|<|=)?(\d*\.?\d+)$")
#: Caps on one query, checked before any SQL exists: every term is one condition of the search,
#: a wildcard term the costliest (it cannot use the tag index). The cost of what passes is
#: bounded again while it runs (serve/gallery.py's step budget).
MAX_QUERY_CHARS = 2000
MAX_TERMS = 32
MAX_WILDCARDS = 4


class QueryTooExpensive(UsageError):
    """A query over the caps above or over the search's step budget (HTTP 400 query_too_expensive)."""


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
    if len(text) > MAX_QUERY_CHARS:
        raise QueryTooExpensive(f"query too long: {len(text)} characters, at most {MAX_QUERY_CHARS}")
    words = text.split()
    if len(words) > MAX_TERMS:
        raise QueryTooExpensive(f"query has {len(words)} terms, at most {MAX_TERMS}")
    wild = sum("*" in w for w in words)
    if wild > MAX_WILDCARDS:
        raise QueryTooExpensive(f"query has {wild} wildcard terms, at most {MAX_WILDCARDS}")
    terms: list[Term] = []
    for raw in words:
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
        return "+t.tag LIKE ? ESCAPE '\\'", [like]
    return "t.tag = ?", [tag]


def build_where(terms: list[Term]) -> tuple[str, list]:
    """One condition per term, each a lookup of the file's own tags by the (file_id, tag) key.

    The unary `+` keeps SQLite from driving a term by the `selected` or `confidence` columns'
    indexes instead: that plan scans every selected tag of the gallery once per file (the
    cost of `*a*` was quadratic in the gallery's size).
    """
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
            cond, cparams, exists = "+t.selected = 1", [], True
        elif op in (">", ">="):
            cond, cparams, exists = f"+t.confidence {op} ?", [thr], True
        else:  # `< x` holds when no stored score reaches x: the negation of `>= x`
            cond, cparams, exists = f"+t.confidence {'>=' if op == '<' else '>'} ?", [thr], False
        if term.negated:
            exists = not exists
        clauses.append(f"{'' if exists else 'NOT '}EXISTS (SELECT 1 FROM tags t WHERE t.file_id = f.id AND {match} AND {cond})")
        params.extend(mparams + cparams)
    return " AND ".join(clauses), params
