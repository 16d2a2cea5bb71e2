"""The review database: the folder's items, cached model suggestions, and the journal of every edit.

Schema (SQLite, WAL, synchronous=FULL: an edit the server answered is on disk even if the
process is killed the next instant):
- `items`: one row per image under DIR (path relative to DIR, never sent to clients; clients
  use `id`), its caption file's state and fingerprint (sha1, size, mtime) as last read or
  written, the caption's tags as written, the file's style, and a `version` that every change
  increments (a client's edit names the version it saw).
- `suggestions`: per (image sha1, model key) the model's scores, sparse (index -> p >= 0.01),
  so a restart or a second session on the same folder never runs the model again.
- `batches` + `edits`: the journal. A batch is one user action (one edit, one bulk edit, one
  reload of a file changed on disk, or an edit refused because of such a change); its edits
  hold each item's caption before and after, and, for accept/reject, the verdict on a model
  tag. Batch states: applied, undone (redo-able), dropped (undone, then superseded by a new
  edit; kept: nothing is deleted), reload, conflict and failed (a caption file that could not
  be written: the edit asked for is kept; history only, not undoable).
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from ...errors import UsageError

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY,
    image TEXT NOT NULL UNIQUE,
    caption TEXT NOT NULL,
    image_size INTEGER, image_mtime_ns INTEGER, image_sha1 TEXT,
    image_error TEXT,
    gone INTEGER NOT NULL DEFAULT 0,
    caption_state TEXT NOT NULL,
    caption_error TEXT,
    disk_sha1 TEXT, disk_size INTEGER, disk_mtime_ns INTEGER,
    tags TEXT NOT NULL,
    style TEXT NOT NULL,
    version INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS suggestions (
    image_sha1 TEXT NOT NULL,
    model TEXT NOT NULL,
    rating TEXT,
    scores TEXT NOT NULL,
    PRIMARY KEY (image_sha1, model)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS batches (
    id INTEGER PRIMARY KEY,
    op TEXT NOT NULL,
    summary TEXT NOT NULL,
    state TEXT NOT NULL,
    created REAL NOT NULL,
    undo_seq INTEGER
);
CREATE TABLE IF NOT EXISTS edits (
    id INTEGER PRIMARY KEY,
    batch INTEGER NOT NULL REFERENCES batches (id),
    item_id INTEGER NOT NULL,
    op TEXT NOT NULL,
    before TEXT NOT NULL,
    after TEXT NOT NULL,
    verdict_tag TEXT,
    verdict TEXT,
    model TEXT,
    confidence REAL
);
CREATE INDEX IF NOT EXISTS edits_batch ON edits (batch);
CREATE INDEX IF NOT EXISTS edits_item ON edits (item_id);
CREATE INDEX IF NOT EXISTS batches_state ON batches (state);
"""


def default_db(root: str | os.PathLike) -> Path:
    """Beside the images, hidden: `prepare` and `tag` skip it (not an image, not a caption)."""
    return Path(root) / ".animetagnet-review.db"


def connect(db_path: str | os.PathLike) -> sqlite3.Connection:
    parent = Path(db_path).parent
    if parent.exists() and not parent.is_dir():
        raise UsageError(f"cannot open the review database {db_path}: {parent} is not a directory")
    try:  # on a read-only disk, without permission, a directory: one line, not a traceback
        parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(os.fspath(db_path), check_same_thread=False, isolation_level=None)
    except (OSError, sqlite3.Error) as exc:
        raise UsageError(f"cannot open the review database {db_path}: {getattr(exc, 'strerror', None) or exc}") from None
    con.row_factory = sqlite3.Row
    try:
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=FULL")
        con.executescript(SCHEMA)
        con.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        version = con.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    except sqlite3.DatabaseError as exc:
        con.close()
        raise UsageError(f"{db_path} is not an AnimeTagNet review database: {exc}") from None
    except sqlite3.Error as exc:  # e.g. unable to open (a directory), read-only
        con.close()
        raise UsageError(f"cannot open the review database {db_path}: {exc}") from None
    if int(version[0]) != SCHEMA_VERSION:
        con.close()
        raise UsageError(f"{db_path}: unsupported review schema version {version[0]}")
    return con
