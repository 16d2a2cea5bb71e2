"""The tagged gallery: an SQLite index of a folder (incremental, with confidences) and booru-style search.

Schema: `files` (path, size, mtime, sha1, rating and its confidence) and `tags` (file_id, tag,
category, confidence, selected). Every tag scoring at least the index floor is kept, so a
search can ask for any confidence (`tag:>0.8`); `selected` records whether the tag passed the
thresholds used at index time (the same options as `animetagnet tag`), and a bare `tag` term
means "selected". Re-indexing only tags new or changed files: (size, mtime) first, then the
SHA-1 of the content, so a touched-but-identical or moved file costs no inference.

Confinement: `roots` holds the real path of every folder the user indexed. Only regular
files whose real path lies under such a folder are indexed (a symlink to elsewhere only with
`allow_symlinks`, recorded per folder), and every read for a client (`Gallery.open`, `get`)
checks the row again through animetagnet.confine at that moment, so a file replaced by a
symlink after indexing is refused. A row whose file failed to decode is never served.

Searches: a query is capped (characters, terms, wildcards) before any SQL is built, the
matching files are computed once into a temporary table that the count, the page and the tag
counts all read, and an SQLite progress handler ends a search that costs more than its
budget of virtual-machine steps (`QueryTooExpensive`).
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Iterator

from ..confine import NotConfined, Root, confined_path, open_confined
from ..errors import AnimeTagNetError, UsageError, WriteError
from .query import QueryTooExpensive, build_where, parse_query

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
CREATE TABLE IF NOT EXISTS roots (
    path TEXT PRIMARY KEY,
    allow_symlinks INTEGER NOT NULL,
    indexed_at REAL NOT NULL
);
"""

#: SQLite virtual-machine steps one search may take (count, page and tag counts together): a
#: few seconds of one core. Measured on 20,000 files x 30 tags: an empty query (all files and
#: their tag counts) takes ~10^7 steps, the costliest query the caps allow ~3 x 10^7.
DEFAULT_QUERY_BUDGET = 250_000_000
_PROGRESS_EVERY = 10_000  # steps between two calls of the progress handler
#: Largest LIMIT/OFFSET accepted (SQLite integers are 64-bit; Python ints are not bounded).
MAX_ROW_NUMBER = 2**62


class Unavailable(AnimeTagNetError):
    """An indexed file cannot be given to a client now: `status` 404 (gone, or unreadable when
    indexed) or 403 (refused: not a regular file inside an indexed folder)."""

    def __init__(self, status: int, code: str, message: str):
        self.status, self.code = status, code
        super().__init__(message)



def sha1_of(path: str | BinaryIO, chunk: int = 1 << 20) -> str:
    h = hashlib.sha1()
    with (open(path, "rb") if isinstance(path, str) else path) as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def connect(db_path: str | os.PathLike, *, readonly: bool = False) -> sqlite3.Connection:
    if readonly:
        if not Path(db_path).is_file():
            raise UsageError(f"gallery database not found: {db_path} (create it with `animetagnet index DIR --db FILE`)")
        con = sqlite3.connect(f"file:{Path(db_path).resolve()}?mode=ro", uri=True, check_same_thread=False)
    else:
        try:  # a folder or file we cannot write is a setup error, one line
            Path(db_path).parent.mkdir(parents=True, exist_ok=True)
            con = sqlite3.connect(os.fspath(db_path))
            con.execute("PRAGMA journal_mode=WAL")  # readers (the web gallery) never block the indexer
            con.executescript(SCHEMA)
            con.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            con.commit()
        except (OSError, sqlite3.Error) as exc:
            raise UsageError(f"cannot write the gallery database {db_path}: {getattr(exc, 'strerror', None) or exc}") from None
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

    def __init__(self, db_path: str | os.PathLike, *, readonly: bool = True,
                 query_budget: int = DEFAULT_QUERY_BUDGET):
        self.db_path = os.fspath(db_path)
        self.readonly = readonly
        self.query_budget = query_budget
        connect(self.db_path, readonly=readonly).close()  # fail early on a wrong file

    def _con(self) -> sqlite3.Connection:
        return connect(self.db_path, readonly=self.readonly)

    def search(self, query: str, *, limit: int = 60, offset: int = 0, counts: int = 40,
               tags_per_item: int = 12) -> SearchResult:
        for name, value in (("limit", limit), ("offset", offset), ("counts", counts)):
            if not 0 <= value <= MAX_ROW_NUMBER or (name == "limit" and value < 1):
                raise UsageError(f"{name} must be between {int(name == 'limit')} and {MAX_ROW_NUMBER}, got {value}")
        where, params = build_where(parse_query(query))
        con = self._con()
        steps = [0]

        def budget() -> int:  # non-zero ends the running statement with "interrupted"
            steps[0] += _PROGRESS_EVERY
            return int(steps[0] > self.query_budget)

        con.set_progress_handler(budget, _PROGRESS_EVERY)
        try:
            # One pass over the conditions: the matching ids (in page order) into a temporary
            # table, which the count, the page and the tag counts read.
            con.execute("PRAGMA temp_store = MEMORY")
            con.execute("CREATE TEMP TABLE hits (n INTEGER PRIMARY KEY, id INTEGER NOT NULL)")
            con.execute(f"INSERT INTO hits (id) SELECT f.id FROM files f WHERE {where} ORDER BY f.path", params)
            con.execute("CREATE UNIQUE INDEX temp.hits_id ON hits (id)")  # for the joins of the tag counts
            total = con.execute("SELECT COUNT(*) FROM hits").fetchone()[0]
            rows = con.execute(
                "SELECT f.id, f.path, f.rating, f.rating_confidence FROM hits h JOIN files f ON f.id = h.id "
                "ORDER BY h.n LIMIT ? OFFSET ?", (limit, offset)).fetchall()
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
                    # CROSS JOIN: from the matches to their tags by key (not every selected tag of the
                    # gallery, each probed against the matches)
                    "SELECT t.tag, t.category, COUNT(*) AS n FROM hits h CROSS JOIN tags t ON t.file_id = h.id "
                    "WHERE +t.selected = 1 GROUP BY t.tag ORDER BY n DESC, t.tag LIMIT ?", (counts,))]
        except sqlite3.OperationalError as exc:
            if steps[0] > self.query_budget:
                raise QueryTooExpensive(f"query too expensive: more than {self.query_budget:,} database steps; "
                                        "use fewer or more specific terms (wildcards cost the most)") from None
            raise UsageError(f"query failed: {exc}") from None
        finally:
            con.close()
        return SearchResult(query, total, items, tag_counts)

    def roots(self, con: sqlite3.Connection | None = None) -> list[Root]:
        """The indexed folders (none in a database written before folders were recorded)."""
        own = con is None
        con = con or self._con()
        try:
            return [Root(r[0], bool(r[1])) for r in con.execute("SELECT path, allow_symlinks FROM roots")]
        except sqlite3.OperationalError:  # no `roots` table: indexed by an older version
            return []
        finally:
            if own:
                con.close()

    def _checked_row(self, file_id: int, con: sqlite3.Connection) -> tuple[sqlite3.Row, list[Root]]:
        """The row of `file_id`, if a client may have it now; else Unavailable."""
        if not 1 <= file_id <= MAX_ROW_NUMBER:
            raise Unavailable(404, "not_found", f"no indexed file with id {file_id}")
        r = con.execute("SELECT * FROM files WHERE id = ?", (file_id,)).fetchone()
        if r is None:
            raise Unavailable(404, "not_found", f"no indexed file with id {file_id}")
        if r["error"] is not None:
            raise Unavailable(404, "file_unavailable", f"indexed file {file_id} could not be read when it was indexed")
        roots = self.roots(con)
        if not roots:
            raise Unavailable(403, "file_refused", "this gallery database records no indexed folder (written by an "
                                                   "older version); run `animetagnet index` on the folder again")
        return r, roots

    @staticmethod
    def _refusal(file_id: int, exc: NotConfined) -> Unavailable:
        if exc.reason == "no longer on disk":
            return Unavailable(404, "file_unavailable", f"indexed file {file_id} is no longer on disk")
        return Unavailable(403, "file_refused", f"indexed file {file_id} is refused: {exc.reason}")

    def get(self, file_id: int) -> dict[str, Any]:
        """One file's stored details and tags; Unavailable unless a client may have the file now."""
        con = self._con()
        try:
            r, roots = self._checked_row(file_id, con)
            tags = con.execute("SELECT tag, category, confidence, selected FROM tags WHERE file_id = ? "
                               "ORDER BY confidence DESC", (file_id,)).fetchall()
        finally:
            con.close()
        try:
            confined_path(roots, r["path"])
        except NotConfined as exc:
            raise self._refusal(file_id, exc) from None
        return {"id": r["id"], "name": Path(r["path"]).name, "path": r["path"], "size": r["size"], "sha1": r["sha1"],
                "rating": r["rating"], "rating_confidence": r["rating_confidence"], "error": r["error"],
                "tags": [{"tag": t[0], "category": t[1], "confidence": round(t[2], 4), "selected": bool(t[3])}
                         for t in tags]}

    def open(self, file_id: int) -> tuple[BinaryIO, str]:
        """(binary file object, file name) of an indexed file, opened under confinement; else Unavailable."""
        con = self._con()
        try:
            r, roots = self._checked_row(file_id, con)
        finally:
            con.close()
        try:
            return open_confined(roots, r["path"]), Path(r["path"]).name
        except NotConfined as exc:
            raise self._refusal(file_id, exc) from None


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
    """Image paths under `root`, spelled under its real path (what the `roots` table holds)."""
    from ..inputs import collect_inputs

    found = collect_inputs([os.path.realpath(root)], recursive=recursive)
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
                 commit_every: int = 256, progress_factory=None, allow_symlinks: bool = False) -> IndexReport:
    """Tag new and changed images under `root` into the database; returns what happened.

    Only regular files whose real path lies under `root` are indexed; `allow_symlinks` also
    takes symlinks to files elsewhere (and the server will then serve them). A file refused
    counts as failed and is reported; an earlier entry for it is removed.
    """
    from ..options import floor_thresholds

    if not os.path.isdir(root):
        raise UsageError(f"not a directory: {root}")
    con = connect(db_path)
    report = IndexReport()
    folder = Root.of(root, allow_symlinks=allow_symlinks)
    root_abs = folder.path
    try:
        model = con.execute("SELECT value FROM meta WHERE key='model'").fetchone()
        if model is not None and model[0] != tagger.bundle.name:
            raise UsageError(f"{db_path} was indexed with model {model[0]!r}, not {tagger.bundle.name!r}; "
                             "use another --db (mixing models would mix their confidences)")
        con.execute("INSERT OR REPLACE INTO meta VALUES ('model', ?)", (tagger.bundle.name,))
        con.execute("INSERT OR REPLACE INTO meta VALUES ('floor', ?)", (str(floor),))
        con.execute("INSERT OR REPLACE INTO roots VALUES (?, ?, ?)", (folder.path, int(allow_symlinks), time.time()))
        known = {r["path"]: r for r in con.execute("SELECT id, path, size, mtime_ns, sha1, error FROM files")}
        todo: list[tuple[str, os.stat_result, str]] = []
        present: set[str] = set()
        for path in walk_images(root, recursive):
            report.seen += 1
            try:
                confined_path(folder, path)
                st = os.stat(path)
            except NotConfined as exc:  # not stored; an older entry for the path is pruned
                report.failed += 1
                report.errors.append((path, exc.reason + ("" if allow_symlinks else
                                                          " (index --allow-symlinks to take it)")))
                continue
            except OSError as exc:
                present.add(path)  # unreadable now: kept, as a missing file would be by a failed walk
                report.failed += 1
                report.errors.append((path, str(exc)))
                continue
            present.add(path)
            old = known.get(path)
            if old is not None and old["size"] == st.st_size and old["mtime_ns"] == st.st_mtime_ns:
                report.unchanged += 1
                continue
            try:
                digest = sha1_of(open_confined(folder, path))
            except NotConfined as exc:
                report.failed += 1
                report.errors.append((path, exc.reason))
                present.discard(path)
                continue
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
    except sqlite3.Error as exc:  # a full disk mid-run: SQLite rolls back to the last commit, which stays
        raise WriteError(f"cannot write the gallery database {db_path}: {exc}; what was committed before is kept, "
                         "run index again once there is room") from None
    finally:
        con.close()
    return report
