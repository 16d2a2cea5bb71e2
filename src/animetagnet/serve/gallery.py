"""The tagged gallery: an SQLite index of a folder (incremental, with confidences) and booru-style search.

Schema: `files` (path, size, mtime, sha1, rating and its confidence) and `tags` (file_id, tag,
category, confidence, selected). Every tag scoring at least the index floor is kept, so a
search can ask for any confidence (`tag:>0.8`); `selected` records whether the tag passed the
thresholds used at index time (the same options as `animetagnet tag`), and a bare `tag` term
means "selected". Re-indexing only tags new or changed files: (size, mtime) first, then the
SHA-1 of the content, so a touched-but-identical or moved file costs no inference.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from ..errors import UsageError
from .query import build_where, parse_query

SCHEMA_VERSION = 1
#: Tags scoring below this are not stored (keeps the database small; searches below it see 0).
DEFAULT_FLOOR = 0.1

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    sha1 TEXT NOT NULL,
    rating TEXT,
    rating_confidence REAL,
    error TEXT,
    indexed_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS files_sha1 ON files (sha1);
CREATE INDEX IF NOT EXISTS files_rating ON files (rating);
CREATE TABLE IF NOT EXISTS tags (
    file_id INTEGER NOT NULL REFERENCES files (id) ON DELETE CASCADE,
    tag TEXT NOT NULL,
    category TEXT NOT NULL,
    confidence REAL NOT NULL,
    selected INTEGER NOT NULL,
    PRIMARY KEY (file_id, tag)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS tags_tag ON tags (tag, confidence);
CREATE INDEX IF NOT EXISTS tags_selected ON tags (selected, tag);
"""


def sha1_of(path: str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def connect(db_path: str | os.PathLike, *, readonly: bool = False) -> sqlite3.Connection:
    if readonly:
        if not Path(db_path).is_file():
            raise UsageError(f"gallery database not found: {db_path} (create it with `animetagnet index DIR --db FILE`)")
        con = sqlite3.connect(f"file:{Path(db_path).resolve()}?mode=ro", uri=True, check_same_thread=False)
    else:
        Path(db_path).parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(os.fspath(db_path))
        con.execute("PRAGMA journal_mode=WAL")  # readers (the web gallery) never block the indexer
        con.executescript(SCHEMA)
        con.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
    con.row_factory = sqlite3.Row
    con.execute("PRAGMA foreign_keys=ON")
    try:
        version = con.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    except sqlite3.DatabaseError as exc:
        con.close()
        raise UsageError(f"{db_path} is not an AnimeTagNet gallery database: {exc}") from None
    if version is None or int(version[0]) != SCHEMA_VERSION:
        con.close()
        raise UsageError(f"{db_path}: unsupported gallery schema version {version and version[0]}")
    return con


@dataclass
class SearchResult:
    query: str
    total: int
    items: list[dict[str, Any]]
    counts: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"query": self.query, "total": self.total, "items": self.items, "counts": self.counts}


class Gallery:
    """Read access for searches (the CLI and the web gallery); one short connection per call."""

    def __init__(self, db_path: str | os.PathLike, *, readonly: bool = True):
        self.db_path = os.fspath(db_path)
        self.readonly = readonly
        connect(self.db_path, readonly=readonly).close()  # fail early on a wrong file

    def _con(self) -> sqlite3.Connection:
        return connect(self.db_path, readonly=self.readonly)

    def search(self, query: str, *, limit: int = 60, offset: int = 0, counts: int = 40,
               tags_per_item: int = 12) -> SearchResult:
        where, params = build_where(parse_query(query))
        con = self._con()
        try:
            total = con.execute(f"SELECT COUNT(*) FROM files f WHERE {where}", params).fetchone()[0]
            rows = con.execute(
                f"SELECT f.id, f.path, f.rating, f.rating_confidence FROM files f WHERE {where} "
                "ORDER BY f.path LIMIT ? OFFSET ?", params + [limit, offset]).fetchall()
            items = []
            for r in rows:
                tags = con.execute(
                    "SELECT tag, category, confidence FROM tags WHERE file_id = ? AND selected = 1 "
                    "ORDER BY (category = 'character') DESC, confidence DESC LIMIT ?", (r["id"], tags_per_item)).fetchall()
                items.append({"id": r["id"], "name": Path(r["path"]).name, "path": r["path"], "rating": r["rating"],
                              "rating_confidence": r["rating_confidence"],
                              "tags": [{"tag": t[0], "category": t[1], "confidence": round(t[2], 4)} for t in tags]})
            tag_counts = []
            if counts:
                tag_counts = [{"tag": t[0], "category": t[1], "count": t[2]} for t in con.execute(
                    "SELECT t.tag, t.category, COUNT(*) AS n FROM tags t JOIN files f ON f.id = t.file_id "
                    f"WHERE t.selected = 1 AND {where} GROUP BY t.tag ORDER BY n DESC, t.tag LIMIT ?",
                    params + [counts])]
        finally:
            con.close()
        return SearchResult(query, total, items, tag_counts)

    def get(self, file_id: int) -> dict[str, Any] | None:
        con = self._con()
        try:
            r = con.execute("SELECT * FROM files WHERE id = ?", (file_id,)).fetchone()
            if r is None:
                return None
            tags = con.execute("SELECT tag, category, confidence, selected FROM tags WHERE file_id = ? "
                               "ORDER BY confidence DESC", (file_id,)).fetchall()
        finally:
            con.close()
        return {"id": r["id"], "name": Path(r["path"]).name, "path": r["path"], "size": r["size"], "sha1": r["sha1"],
                "rating": r["rating"], "rating_confidence": r["rating_confidence"], "error": r["error"],
                "tags": [{"tag": t[0], "category": t[1], "confidence": round(t[2], 4), "selected": bool(t[3])}
                         for t in tags]}

    def path_of(self, file_id: int) -> str | None:
        con = self._con()
        try:
            r = con.execute("SELECT path FROM files WHERE id = ?", (file_id,)).fetchone()
        finally:
            con.close()
        return r[0] if r else None


# --- indexing --------------------------------------------------------------------
@dataclass
class IndexReport:
    seen: int = 0
    tagged: int = 0
    unchanged: int = 0
    copied: int = 0  # same content as an indexed file: tags copied, no inference
    failed: int = 0
    removed: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "errors"}


def walk_images(root: str, recursive: bool = True) -> Iterator[str]:
    from ..inputs import collect_inputs

    found = collect_inputs([root], recursive=recursive)
    yield from (os.path.abspath(p) for p in found.paths)


def _store(con: sqlite3.Connection, path: str, st: os.stat_result, digest: str, rating, rating_conf, error,
           tags: Iterable[tuple[str, str, float, int]]) -> None:
    con.execute("DELETE FROM files WHERE path = ?", (path,))
    cur = con.execute(
        "INSERT INTO files (path, size, mtime_ns, sha1, rating, rating_confidence, error, indexed_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (path, st.st_size, st.st_mtime_ns, digest, rating, rating_conf, error, time.time()))
    con.executemany("INSERT INTO tags VALUES (?, ?, ?, ?, ?)", [(cur.lastrowid, *t) for t in tags])


def index_folder(db_path: str | os.PathLike, root: str, tagger, options=None, *, floor: float = DEFAULT_FLOOR,
                 recursive: bool = True, prune: bool = True, workers: int | None = None,
                 commit_every: int = 256, progress_factory=None) -> IndexReport:
    """Tag new and changed images under `root` into the database; returns what happened."""
    from ..options import floor_thresholds

    if not os.path.isdir(root):
        raise UsageError(f"not a directory: {root}")
    con = connect(db_path)
    report = IndexReport()
    root_abs = os.path.abspath(root)
    try:
        model = con.execute("SELECT value FROM meta WHERE key='model'").fetchone()
        if model is not None and model[0] != tagger.bundle.name:
            raise UsageError(f"{db_path} was indexed with model {model[0]!r}, not {tagger.bundle.name!r}; "
                             "use another --db (mixing models would mix their confidences)")
        con.execute("INSERT OR REPLACE INTO meta VALUES ('model', ?)", (tagger.bundle.name,))
        con.execute("INSERT OR REPLACE INTO meta VALUES ('floor', ?)", (str(floor),))
        known = {r["path"]: r for r in con.execute("SELECT id, path, size, mtime_ns, sha1, error FROM files")}
        todo: list[tuple[str, os.stat_result, str]] = []
        present: set[str] = set()
        for path in walk_images(root, recursive):
            report.seen += 1
            present.add(path)
            try:
                st = os.stat(path)
            except OSError as exc:
                report.failed += 1
                report.errors.append((path, str(exc)))
                continue
            old = known.get(path)
            if old is not None and old["size"] == st.st_size and old["mtime_ns"] == st.st_mtime_ns:
                report.unchanged += 1
                continue
            try:
                digest = sha1_of(path)
            except OSError as exc:
                report.failed += 1
                report.errors.append((path, str(exc)))
                continue
            if old is not None and old["sha1"] == digest and old["error"] is None:
                con.execute("UPDATE files SET size = ?, mtime_ns = ? WHERE id = ?", (st.st_size, st.st_mtime_ns, old["id"]))
                report.unchanged += 1
                continue
            twin = con.execute("SELECT id, rating, rating_confidence FROM files WHERE sha1 = ? AND error IS NULL "
                               "AND path != ? LIMIT 1", (digest, path)).fetchone()
            if twin is not None:
                rows = con.execute("SELECT tag, category, confidence, selected FROM tags WHERE file_id = ?",
                                   (twin["id"],)).fetchall()
                _store(con, path, st, digest, twin["rating"], twin["rating_confidence"], None, [tuple(r) for r in rows])
                report.copied += 1
                continue
            todo.append((path, st, digest))
        if prune:
            prefix = root_abs.rstrip(os.sep) + os.sep
            gone = [p for p in known if p.startswith(prefix) and p not in present]
            for p in gone:
                con.execute("DELETE FROM files WHERE path = ?", (p,))
            report.removed = len(gone)
        con.commit()

        floor_selector = tagger.selector(floor_thresholds(floor))
        progress = progress_factory(len(todo)) if progress_factory is not None else None
        by_path = {p: (st, d) for p, st, d in todo}
        pending = 0
        for result, probs in tagger.iter_tag_files([p for p, _, _ in todo], options, workers=workers,
                                                   with_probabilities=True):
            st, digest = by_path[result.path]
            if result.error is not None:
                report.failed += 1
                report.errors.append((result.path, result.error))
                _store(con, result.path, st, digest, None, None, result.error, [])
            else:
                chosen = {name: (cat, conf) for name, cat, conf in result.iter_tags()}
                rows = [(name, cat, float(conf), int(name in chosen))
                        for name, cat, conf in floor_selector.select(probs).iter_tags()]
                stored = {r[0] for r in rows}  # a selected tag below the floor is still kept
                rows += [(name, cat, float(conf), 1) for name, (cat, conf) in chosen.items() if name not in stored]
                _store(con, result.path, st, digest, result.rating, result.ratings.get(result.rating), None, rows)
                report.tagged += 1
            pending += 1
            if progress is not None:
                progress.update(1, failed=int(result.error is not None))
            if pending >= commit_every:  # an interrupted run keeps what it did
                con.commit()
                pending = 0
        con.commit()
        if progress is not None:
            progress.close()
    finally:
        con.close()
    return report
