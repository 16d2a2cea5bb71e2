"""A review session over one folder: scan, model suggestions, filters, edits with undo/redo, bulk edits.

`ReviewSession(root, tagger)` owns the folder's review database (store.py), an in-memory
mirror of its items (filters and sorts run over it), and a thread that computes the model's
suggestions for images that have none cached. Every change goes through `_apply`: check the
caption file on disk is still what we last saw (else reload it and refuse the edit: a caption
changed on disk is never overwritten), write it atomically, journal it, commit. One lock
serialises changes; the HTTP layer (routes.py) runs requests in threads.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ...datasets.folders import walk_sorted
from ...errors import UsageError
from ...formatting import normalize_tag
from ...images import is_image_path
from . import captions
from .captions import Caption, OutsideFolder, Style, inside
from .store import connect, default_db

#: Model scores below this are not stored (the page shows nothing below it either).
SCORE_FLOOR = 0.01
#: Default of the "low confidence" filter: the model is unsure (p between 0.3 and 0.7) about some tag.
DEFAULT_LOW = 0.7
SORTS = ("file", "tags", "disagreement", "confidence")
ITEM_OPS = ("add", "remove", "move", "set", "accept", "reject", "confirm")
BULK_OPS = ("add", "remove", "rename", "replace")


class ReviewError(Exception):
    """A request the session refuses: HTTP status, stable code, message, optional details."""

    def __init__(self, status: int, code: str, message: str, details: Any = None):
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details


class WriteFailed(ReviewError):
    """A caption file could not be written (disk full, read-only, permissions): the file is left as it was."""

    def __init__(self, name: str, exc: OSError):
        super().__init__(507, "write_failed", f"{name}: cannot write the caption file ({exc.strerror or exc}); "
                                              "it was left as it was")


@dataclass
class Item:
    id: int
    image: str
    caption: str
    image_sha1: str | None
    image_error: str | None
    caption_state: str
    caption_error: str | None
    disk_sha1: str | None
    disk_size: int | None
    disk_mtime_ns: int | None
    tags: list[str]
    style: Style
    version: int
    keys: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.keys = [normalize_tag(t) for t in self.tags]

    @classmethod
    def from_row(cls, r) -> "Item":
        return cls(r["id"], r["image"], r["caption"], r["image_sha1"], r["image_error"], r["caption_state"],
                   r["caption_error"], r["disk_sha1"], r["disk_size"], r["disk_mtime_ns"], json.loads(r["tags"]),
                   Style.from_dict(json.loads(r["style"])), r["version"])

    def snapshot(self) -> dict:
        """What an edit's `before`/`after` records: the tags and whether the file existed."""
        return {"tags": list(self.tags), "exists": self.caption_state != "missing"}


@dataclass(frozen=True)
class Filter:
    """The selection the grid shows and bulk edits act on. Tags are compared normalized."""

    tags: tuple[str, ...] = ()       # caption has all of these
    missing: tuple[str, ...] = ()    # caption has none of these
    disagree: bool = False           # caption and model selection differ
    low: float | None = None         # the model is unsure about some tag (certainty below this)
    problems: bool = False           # unreadable image or caption, or no caption file

    @classmethod
    def make(cls, tags: Iterable[str] = (), missing: Iterable[str] = (), disagree: bool = False,
             low: float | None = None, problems: bool = False) -> "Filter":
        norm = lambda xs: tuple(normalize_tag(t) for t in xs if t and t.strip())  # noqa: E731
        return cls(norm(tags), norm(missing), bool(disagree), low, bool(problems))


class ReviewSession:
    """See the module docstring. `tagger` may be None (no suggestions; everything else works)."""

    def __init__(self, root: str | os.PathLike, tagger=None, *, db: str | os.PathLike | None = None,
                 thresholds=None, caption_extension: str = ".txt", tag_table: str | os.PathLike | None = None,
                 suggest: bool = True):
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise UsageError(f"not a directory: {root}")
        self.db_path = Path(db) if db else default_db(self.root)
        self.extension = caption_extension if caption_extension.startswith(".") else "." + caption_extension
        self.tagger = tagger
        self._lock = threading.RLock()
        self.con = connect(self.db_path)
        self.items: dict[int, Item] = {}
        self.scores: dict[str, tuple[str | None, dict[int, float]]] = {}
        self.scan_report: dict[str, int] = {}
        self.model_key: str | None = None
        self.vocab_names: list[str] = []
        self.vocab_index: dict[str, int] = {}
        self.categories: list[str] = []
        self.thresholds = np.zeros(0, dtype=np.float32)
        self.rating_idx: set[int] = set()
        if tagger is not None:
            self._init_model(tagger, thresholds)
        self._stop = threading.Event()
        self._progress = {"done": 0, "total": 0, "running": False, "error": None}
        from .vocab import Completer

        self.completer = Completer(self.vocab_names, self.categories, tag_table)
        self.scan()
        self._worker: threading.Thread | None = None
        if tagger is not None and suggest:
            self._worker = threading.Thread(target=self._suggest_all, name="review-suggest", daemon=True)
            self._worker.start()

    # --- model ---------------------------------------------------------------
    def _init_model(self, tagger, thresholds) -> None:
        st = tagger.bundle.model_path.stat()
        # Name + size + mtime of the ONNX file: a re-exported model never reuses stale suggestions.
        self.model_key = f"{tagger.bundle.name}:{st.st_size}:{st.st_mtime_ns}"
        vocab = tagger.vocab
        self.vocab_names = list(vocab.names)
        self.vocab_index = {n: i for i, n in enumerate(self.vocab_names)}
        self.categories = [t.category.label for t in vocab]
        sel = tagger.selector(thresholds)
        self.thresholds = np.asarray(sel.thresholds, dtype=np.float32)
        self.rating_idx = {int(i) for i in sel.rating_idx} | {i for i, c in enumerate(self.categories) if c == "rating"}

    def _load_scores(self) -> None:
        if self.model_key is None:
            return
        for r in self.con.execute("SELECT image_sha1, rating, scores FROM suggestions WHERE model = ?", (self.model_key,)):
            self.scores[r[0]] = (r[1], {int(k): v for k, v in json.loads(r[2]).items()})

    def _suggest_all(self) -> None:
        self.compute_suggestions()

    def compute_suggestions(self, ids: Iterable[int] | None = None) -> None:
        """Run the model over the images (all, or `ids`) without cached scores, storing each as it comes."""
        with self._lock:
            pool = self.items.values() if ids is None else [self.items[i] for i in ids if i in self.items]
            todo = [it for it in pool if it.image_sha1 and it.image_sha1 not in self.scores and not it.image_error]
            paths = {}
            for it in todo:
                try:
                    paths[str(inside(self.root, it.image))] = it
                except OutsideFolder:
                    continue
        self._progress.update(total=len(paths), done=0, running=True)
        names = self.vocab_names
        rating_rows = sorted(self.rating_idx)
        try:
            pending = 0
            for loaded, probs in self.tagger.iter_probabilities(list(paths)):
                if self._stop.is_set():
                    break
                it = paths[loaded.path]
                with self._lock:
                    if probs is None:
                        it.image_error = loaded.error
                        self.con.execute("UPDATE items SET image_error = ? WHERE id = ?", (loaded.error, it.id))
                    else:
                        probs = np.asarray(probs, dtype=np.float32)
                        sparse = {int(i): round(float(probs[i]), 4) for i in np.flatnonzero(probs >= SCORE_FLOOR)}
                        rating = names[rating_rows[int(np.argmax(probs[rating_rows]))]] if rating_rows else None
                        self.con.execute("INSERT OR REPLACE INTO suggestions VALUES (?, ?, ?, ?)",
                                         (it.image_sha1, self.model_key, rating, json.dumps(sparse)))
                        self.scores[it.image_sha1] = (rating, sparse)
                    pending += 1
                self._progress["done"] += 1
        except Exception as exc:  # noqa: BLE001 - suggestions are an aid: the editor keeps working
            self._progress["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            self._progress["running"] = False

    def wait_suggestions(self, timeout: float = 60.0) -> bool:
        if self._worker is None:
            return True
        self._worker.join(timeout)
        return not self._worker.is_alive()

    def close(self) -> None:
        self._stop.set()
        if self._worker is not None:
            self._worker.join(10)
        with self._lock:
            self.con.close()

    # --- the folder ----------------------------------------------------------
    def scan(self) -> dict[str, int]:
        """Find every image under DIR (hidden files and folders skipped), read its caption, reconcile with the database.

        A caption that changed on disk since the last session is reloaded (journaled as a reload);
        an image that is gone is hidden, its history kept."""
        from ..gallery import sha1_of

        with self._lock:
            known = {r["image"]: r for r in self.con.execute("SELECT * FROM items")}
            seen: set[str] = set()
            report = {"images": 0, "new": 0, "reloaded": 0, "gone": 0, "unreadable_images": 0,
                      "unreadable_captions": 0, "missing_captions": 0}
            self.con.execute("BEGIN IMMEDIATE")
            for dirpath, dirnames, filenames in walk_sorted(self.root):
                dirnames[:] = [d for d in dirnames if not d.startswith(".")]
                names = {f for f in filenames if not f.startswith(".")}
                for fname in sorted(names):
                    if not is_image_path(fname):
                        continue
                    rel = os.path.relpath(os.path.join(dirpath, fname), self.root).replace(os.sep, "/")
                    seen.add(rel)
                    report["images"] += 1
                    cap_rel = captions.caption_name(rel, names, self.extension).replace(os.sep, "/")
                    image_error = None
                    size = mtime = digest = None
                    cap = self._read_caption(cap_rel)
                    try:
                        path = inside(self.root, rel)
                        st = path.stat()
                        size, mtime = st.st_size, st.st_mtime_ns
                        old = known.get(rel)
                        if old is not None and old["image_size"] == size and old["image_mtime_ns"] == mtime \
                                and old["image_sha1"]:
                            digest = old["image_sha1"]
                            image_error = old["image_error"]
                        else:
                            digest = sha1_of(str(path))
                            image_error = self._header_error(path)
                    except OutsideFolder as exc:
                        image_error = exc.reason
                    except OSError as exc:
                        image_error = f"cannot read: {exc.strerror or exc}"
                    old = known.get(rel)
                    if old is None:
                        self.con.execute(
                            "INSERT INTO items (image, caption, image_size, image_mtime_ns, image_sha1, image_error, "
                            "caption_state, caption_error, disk_sha1, disk_size, disk_mtime_ns, tags, style) "
                            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            (rel, cap_rel, size, mtime, digest, image_error, cap.state, cap.error, cap.sha1, cap.size,
                             cap.mtime_ns, json.dumps(cap.tags), json.dumps(cap.style.to_dict())))
                        report["new"] += 1
                    else:
                        self.con.execute("UPDATE items SET image_size = ?, image_mtime_ns = ?, image_sha1 = ?, "
                                         "image_error = ?, gone = 0, caption = ? WHERE id = ?",
                                         (size, mtime, digest, image_error, cap_rel, old["id"]))
                        if cap.sha1 != old["disk_sha1"] or cap.state != old["caption_state"]:
                            self._store_reload(Item.from_row(old), cap, "changed on disk while no review server ran")
                            report["reloaded"] += 1
                    report["unreadable_images"] += image_error is not None
                    report["unreadable_captions"] += cap.state == "unreadable"
                    report["missing_captions"] += cap.state == "missing"
            for rel, r in known.items():
                if rel not in seen and not r["gone"]:
                    self.con.execute("UPDATE items SET gone = 1 WHERE id = ?", (r["id"],))
                    report["gone"] += 1
            self.con.execute("COMMIT")
            self.items = {r["id"]: Item.from_row(r) for r in
                          self.con.execute("SELECT * FROM items WHERE gone = 0 ORDER BY image")}
            self._load_scores()
            self.scan_report = report
            return report

    def _read_caption(self, rel: str) -> Caption:
        """The caption file as it is now; one that is not a regular file inside DIR is unreadable."""
        try:
            return captions.read(inside(self.root, rel))
        except OutsideFolder as exc:
            return Caption("unreadable", [], Style(), error=f"{exc.reason}; never written")

    def _header_error(self, path: Path) -> str | None:
        """Why the image cannot be read, from its header (the full decode happens when the model runs)."""
        from ...errors import ImageError
        from ...images import open_image

        max_pixels = self.tagger.max_pixels if self.tagger is not None else None
        try:
            open_image(str(path), max_pixels=max_pixels).close()
        except ImageError as exc:
            return exc.reason
        return None

    # --- model view of an item -------------------------------------------------
    def model_tags(self, it: Item) -> tuple[str | None, dict[str, float], set[str]] | None:
        """(rating, {tag: score} above the floor, the tags the model selects), or None before suggestions."""
        if self.model_key is None or it.image_sha1 not in self.scores:
            return None
        rating, sparse = self.scores[it.image_sha1]
        names, thr = self.vocab_names, self.thresholds
        scores = {names[i]: p for i, p in sparse.items() if i not in self.rating_idx}
        selected = {names[i] for i, p in sparse.items() if i not in self.rating_idx and p >= thr[i]}
        return rating, scores, selected

    def disagreement(self, it: Item) -> int | None:
        m = self.model_tags(it)
        if m is None:
            return None
        return len(set(it.keys) ^ m[2])

    def certainty(self, it: Item) -> float | None:
        """The model's least certain decision on this image: min over its scores of max(p, 1-p)."""
        m = self.model_tags(it)
        if m is None:
            return None
        return min((max(p, 1 - p) for p in m[1].values()), default=1.0)

    def _problem(self, it: Item) -> str | None:
        if it.image_error:
            return f"image: {it.image_error}"
        if it.caption_state == "unreadable":
            return f"caption: {it.caption_error}"
        if it.caption_state == "missing":
            return "no caption file"
        return None

    def summary(self, it: Item) -> dict[str, Any]:
        m = self.model_tags(it)
        return {"id": it.id, "name": it.image.rsplit("/", 1)[-1], "folder": os.path.dirname(it.image),
                "tags": it.tags, "caption_state": it.caption_state, "caption_error": it.caption_error,
                "image_error": it.image_error, "problem": self._problem(it), "version": it.version,
                "disagreement": None if m is None else len(set(it.keys) ^ m[2]),
                "certainty": self.certainty(it)}

    def select(self, flt: Filter) -> list[Item]:
        out = []
        for it in self.items.values():
            keys = set(it.keys)
            if any(t not in keys for t in flt.tags) or any(t in keys for t in flt.missing):
                continue
            if flt.disagree and not self.disagreement(it):
                continue
            if flt.low is not None:
                c = self.certainty(it)
                if c is None or c >= flt.low:
                    continue
            if flt.problems and self._problem(it) is None:
                continue
            out.append(it)
        return out

    def list_items(self, flt: Filter, sort: str = "file", descending: bool = False, offset: int = 0,
                   limit: int = 100) -> dict[str, Any]:
        if sort not in SORTS:
            raise ReviewError(400, "invalid_parameter", f"sort must be one of {', '.join(SORTS)}")
        with self._lock:
            chosen = self.select(flt)
            if sort == "file":
                chosen.sort(key=lambda it: it.image, reverse=descending)
            elif sort == "tags":
                chosen.sort(key=lambda it: (len(it.tags), it.image), reverse=descending)
            elif sort == "disagreement":  # most disagreement first unless asked otherwise
                chosen.sort(key=lambda it: (self.disagreement(it) or 0, it.image), reverse=not descending)
            else:  # least certain first
                chosen.sort(key=lambda it: (self.certainty(it) if self.certainty(it) is not None else 2.0, it.image),
                            reverse=descending)
            page = chosen[offset:offset + limit]
            return {"total": len(chosen), "offset": offset, "ids": [it.id for it in chosen],
                    "items": [self.summary(it) for it in page]}

    def get(self, item_id: int) -> Item:
        it = self.items.get(item_id)
        if it is None:
            raise ReviewError(404, "not_found", f"no image with id {item_id} in this folder")
        return it

    def detail(self, item_id: int) -> dict[str, Any]:
        with self._lock:
            it = self.get(item_id)
            out = self.summary(it)
            m = self.model_tags(it)
            verdicts = self._verdicts(it.id)
            keys = set(it.keys)
            model_list = []
            if m is not None:
                rating, scores, selected = m
                out["rating"] = rating
                for tag, p in sorted(scores.items(), key=lambda kv: -kv[1]):
                    if p < 0.05 and tag not in keys:
                        continue
                    idx = self.vocab_index[tag]
                    model_list.append({"tag": tag, "category": self.categories[idx], "confidence": round(p, 4),
                                       "threshold": round(float(self.thresholds[idx]), 4), "selected": tag in selected,
                                       "mark": "both" if tag in keys else ("model" if tag in selected else "below"),
                                       "verdict": verdicts.get(tag)})
            scores = m[1] if m else {}
            selected = m[2] if m else set()
            out["caption"] = [{"text": raw, "tag": key, "confidence": scores.get(key),
                               "category": self.categories[self.vocab_index[key]] if key in self.vocab_index else None,
                               "mark": "both" if key in selected else "caption", "verdict": verdicts.get(key)}
                              for raw, key in zip(it.tags, it.keys)]
            out["model"] = model_list
            out["suggestions_ready"] = m is not None
            return out

    def _verdicts(self, item_id: int) -> dict[str, str]:
        rows = self.con.execute(
            "SELECT e.verdict_tag, e.verdict FROM edits e JOIN batches b ON b.id = e.batch "
            "WHERE e.item_id = ? AND b.state = 'applied' AND e.verdict IS NOT NULL ORDER BY e.id", (item_id,))
        return {r[0]: r[1] for r in rows}

    # --- changes -----------------------------------------------------------------
    def _store_reload(self, it: Item, cap: Caption, why: str) -> None:
        """Take the disk's caption as the truth (inside an open transaction); journaled, not undoable."""
        before = it.snapshot()
        self.con.execute("UPDATE items SET caption_state = ?, caption_error = ?, disk_sha1 = ?, disk_size = ?, "
                         "disk_mtime_ns = ?, tags = ?, style = ?, version = version + 1 WHERE id = ?",
                         (cap.state, cap.error, cap.sha1, cap.size, cap.mtime_ns, json.dumps(cap.tags),
                          json.dumps(cap.style.to_dict()), it.id))
        b = self.con.execute("INSERT INTO batches (op, summary, state, created) VALUES ('reload', ?, 'reload', ?)",
                             (f"{it.image}: {why}", time.time())).lastrowid
        self.con.execute("INSERT INTO edits (batch, item_id, op, before, after) VALUES (?, ?, 'reload', ?, ?)",
                         (b, it.id, json.dumps(before), json.dumps({"tags": cap.tags, "exists": cap.state != "missing"})))

    def _refresh(self, item_id: int) -> Item:
        r = self.con.execute("SELECT * FROM items WHERE id = ?", (item_id,)).fetchone()
        it = Item.from_row(r)
        self.items[item_id] = it
        return it

    def _disk_changed(self, it: Item) -> Caption | None:
        """The caption as it is on disk now if it differs from what we last read or wrote, else None."""
        try:
            path = inside(self.root, it.caption)
        except OutsideFolder:
            cap = self._read_caption(it.caption)
            return None if it.caption_state == "unreadable" and it.caption_error == cap.error else cap
        sha = it.disk_sha1 if it.caption_state != "missing" else None
        if captions.unchanged(path, sha, it.disk_size, it.disk_mtime_ns):
            return None
        cap = captions.read(path)
        if cap.state == it.caption_state == "unreadable" and cap.sha1 == it.disk_sha1:
            return None  # still the same unreadable file (e.g. permissions)
        return cap

    def _conflict(self, it: Item, cap: Caption, wanted: dict | None, op: str) -> ReviewError:
        """Reload a caption changed on disk; journal what the reviewer asked for (nothing typed is lost)."""
        self.con.execute("BEGIN IMMEDIATE")
        self._store_reload(it, cap, "changed on disk since it was loaded")
        if wanted is not None:
            b = self.con.execute("INSERT INTO batches (op, summary, state, created) VALUES (?, ?, 'conflict', ?)",
                                 (op, f"{it.image}: not written, the file changed on disk", time.time())).lastrowid
            self.con.execute("INSERT INTO edits (batch, item_id, op, before, after) VALUES (?, ?, ?, ?, ?)",
                             (b, it.id, op, json.dumps(it.snapshot()), json.dumps(wanted)))
        self.con.execute("COMMIT")
        fresh = self._refresh(it.id)
        return ReviewError(409, "changed_on_disk",
                           f"{fresh.image.rsplit('/', 1)[-1]}: the caption file changed on disk since it was loaded; "
                           "it was reloaded and nothing was written. Your edit is kept in the history.",
                           {"item": self.summary(fresh), "disk_tags": fresh.tags,
                            "your_tags": (wanted or {}).get("tags")})

    def _writable(self, it: Item) -> None:
        if it.caption_state == "unreadable":
            raise ReviewError(409, "caption_unreadable",
                              f"{it.caption.rsplit('/', 1)[-1]}: {it.caption_error}; it is never rewritten")

    def _write_item(self, it: Item, after: dict) -> None:
        """Put `after` on disk (inside an open transaction) and record the new fingerprint."""
        try:
            path = inside(self.root, it.caption)
        except OutsideFolder as exc:
            raise ReviewError(409, "caption_unreadable", f"{it.caption}: {exc.reason}; not written") from None
        try:
            if not after["exists"]:
                captions.remove(path)
                cap = Caption("missing", [], it.style)
            else:
                cap = captions.write(path, after["tags"], it.style)
        except OSError as exc:  # atomic: the old file is intact, so the caller journals the wish, not the change
            raise WriteFailed(it.caption.rsplit("/", 1)[-1], exc) from None
        self.con.execute("UPDATE items SET caption_state = ?, caption_error = NULL, disk_sha1 = ?, disk_size = ?, "
                         "disk_mtime_ns = ?, tags = ?, version = version + 1 WHERE id = ?",
                         (cap.state, cap.sha1, cap.size, cap.mtime_ns, json.dumps(after["tags"]), it.id))

    def _journal_failed(self, op: str, failed: list[tuple[Item, dict]]) -> None:
        """Keep edits whose file could not be written in the history ('failed': not undoable), in their own commit."""
        names = ", ".join(it.image for it, _ in failed[:3]) + (f" and {len(failed) - 3} more" if len(failed) > 3 else "")
        self.con.execute("BEGIN IMMEDIATE")
        try:
            b = self.con.execute("INSERT INTO batches (op, summary, state, created) VALUES (?, ?, 'failed', ?)",
                                 (op, f"{names}: not written, the caption file could not be written",
                                  time.time())).lastrowid
            for it, after in failed:
                self.con.execute("INSERT INTO edits (batch, item_id, op, before, after) VALUES (?, ?, ?, ?, ?)",
                                 (b, it.id, op, json.dumps(it.snapshot()), json.dumps(after)))
            self.con.execute("COMMIT")
        except BaseException:
            self.con.execute("ROLLBACK")
            raise

    def _new_batch(self, op: str, summary: str) -> int:
        # A new action drops the redo stack (the undone batches stay in the journal as 'dropped').
        self.con.execute("UPDATE batches SET state = 'dropped' WHERE state = 'undone'")
        return self.con.execute("INSERT INTO batches (op, summary, state, created) VALUES (?, ?, 'applied', ?)",
                                (op, summary, time.time())).lastrowid

    def _score_of(self, it: Item, key: str) -> float | None:
        m = self.model_tags(it)
        return None if m is None else m[1].get(key, 0.0)

    def edit(self, item_id: int, version: int, op: str, tag: str | None = None, tags: list[str] | None = None,
             index: int | None = None) -> dict[str, Any]:
        """One reviewer action on one image; returns the image's new detail."""
        if op not in ITEM_OPS:
            raise ReviewError(400, "invalid_parameter", f"op must be one of {', '.join(ITEM_OPS)}")
        with self._lock:
            it = self.get(item_id)
            if version != it.version:
                raise ReviewError(409, "stale", f"{it.image.rsplit('/', 1)[-1]} changed since you loaded it "
                                                f"(version {it.version}, you sent {version}); reload it",
                                  {"item": self.summary(it)})
            changed_disk = self._disk_changed(it)
            if changed_disk is not None and it.caption_state == "unreadable":
                raise self._conflict(it, changed_disk, None, op)  # e.g. fixed on disk: show it, then edit
            self._writable(it)
            new_tags, verdict = self._edited_tags(it, op, tag, tags, index)
            after = {"tags": new_tags,
                     "exists": it.caption_state != "missing" or bool(new_tags) or op in ("set", "confirm")}
            if changed_disk is not None:
                raise self._conflict(it, changed_disk, after, op)
            key = normalize_tag(tag) if tag else None
            conf = self._score_of(it, key) if verdict else None
            self.con.execute("BEGIN IMMEDIATE")
            try:
                b = self._new_batch(op, f"{op} {tag or ''}".strip() + f" on {it.image}")
                self.con.execute("INSERT INTO edits (batch, item_id, op, before, after, verdict_tag, verdict, model, "
                                 "confidence) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                 (b, it.id, op, json.dumps(it.snapshot()), json.dumps(after), key if verdict else None,
                                  verdict, self.model_key if verdict else None, conf))
                if after != it.snapshot():
                    self._write_item(it, after)
                self.con.execute("COMMIT")
            except WriteFailed as exc:
                self.con.execute("ROLLBACK")
                self._journal_failed(op, [(it, after)])
                exc.message += ". Your edit is kept in the history."
                exc.details = {"item": self.summary(it)}
                raise
            except BaseException:
                self.con.execute("ROLLBACK")
                raise
            self._refresh(it.id)
            return self.detail(it.id)

    def _edited_tags(self, it: Item, op: str, tag: str | None, tags: list[str] | None,
                     index: int | None) -> tuple[list[str], str | None]:
        cur = list(it.tags)
        keys = list(it.keys)
        if op == "set":
            if tags is None:
                raise ReviewError(400, "invalid_parameter", "op set needs `tags`")
            return captions.split_tags(", ".join(t.replace(",", " ") for t in tags)), None
        if op == "confirm":
            return cur, None
        if not tag or not normalize_tag(tag):
            raise ReviewError(400, "invalid_parameter", f"op {op} needs a non-empty `tag`")
        if "," in tag or "\n" in tag:
            raise ReviewError(400, "invalid_parameter", "a tag cannot contain a comma or a newline")
        key = normalize_tag(tag)
        if op in ("add", "accept"):
            if key not in keys:
                pos = len(cur) if index is None else max(0, min(index, len(cur)))
                cur.insert(pos, it.style.format(tag))
            return cur, "accept" if op == "accept" else None
        if op in ("remove", "reject"):
            if key in keys:
                del cur[keys.index(key)]
            elif op == "remove":
                raise ReviewError(404, "no_such_tag", f"{tag!r} is not in this caption")
            return cur, "reject" if op == "reject" else None
        # move
        if key not in keys:
            raise ReviewError(404, "no_such_tag", f"{tag!r} is not in this caption")
        if index is None:
            raise ReviewError(400, "invalid_parameter", "op move needs `index`")
        raw = cur.pop(keys.index(key))
        cur.insert(max(0, min(index, len(cur))), raw)
        return cur, None

    def bulk(self, flt: Filter, op: str, tag: str, new: str | None = None) -> dict[str, Any]:
        """Add/remove/rename/replace a tag on every image of the selection: one journal batch, one undo."""
        if op not in BULK_OPS:
            raise ReviewError(400, "invalid_parameter", f"op must be one of {', '.join(BULK_OPS)}")
        key = normalize_tag(tag or "")
        if not key or "\n" in tag or ("," in tag):
            raise ReviewError(400, "invalid_parameter", "bulk edits need one non-empty `tag` (no commas)")
        new_list = [t for t in (new or "").split(",") if normalize_tag(t)]
        if op in ("rename", "replace") and not new_list:
            raise ReviewError(400, "invalid_parameter", f"bulk {op} needs `new`")
        if op == "rename" and len(new_list) != 1:
            raise ReviewError(400, "invalid_parameter", "rename takes one new tag; use replace for several")
        with self._lock:
            planned: list[tuple[Item, dict]] = []
            skipped: list[dict] = []
            for it in sorted(self.select(flt), key=lambda i: i.image):
                if it.caption_state == "unreadable" or it.image_error and it.caption_state == "unreadable":
                    skipped.append({"id": it.id, "name": it.image, "reason": it.caption_error})
                    continue
                cur, keys = list(it.tags), list(it.keys)
                if op == "add":
                    if key in keys:
                        continue
                    cur.append(it.style.format(tag))
                elif key not in keys:
                    continue
                else:
                    pos = keys.index(key)
                    del cur[pos]
                    if op in ("rename", "replace"):
                        have = {normalize_tag(t) for t in cur}
                        fresh = [it.style.format(t) for t in new_list if normalize_tag(t) not in have]
                        cur[pos:pos] = fresh
                planned.append((it, {"tags": cur, "exists": True}))
            conflicts = []
            ready: list[tuple[Item, dict]] = []
            for it, after in planned:
                disk = self._disk_changed(it)
                if disk is not None:
                    err = self._conflict(it, disk, after, f"bulk_{op}")
                    conflicts.append({"id": it.id, "name": it.image.rsplit("/", 1)[-1], "reason": err.message})
                else:
                    ready.append((it, after))
            batch = None
            written, failed = 0, []
            if ready:
                self.con.execute("BEGIN IMMEDIATE")
                try:
                    # Each file is written, then journaled: one that cannot be written (disk full, read-only,
                    # permissions) is skipped and the ones already written are committed, so the journal
                    # always matches the disk. The batch is created at the first write: a bulk edit that
                    # wrote nothing does not drop the redo stack.
                    for it, after in ready:
                        try:
                            self._write_item(it, after)
                        except ReviewError as exc:  # WriteFailed, or a caption now outside the folder
                            failed.append((it, after))
                            skipped.append({"id": it.id, "name": it.image, "reason": exc.message})
                            continue
                        if batch is None:
                            batch = self._new_batch(f"bulk_{op}", "")
                        self.con.execute("INSERT INTO edits (batch, item_id, op, before, after) VALUES (?, ?, ?, ?, ?)",
                                         (batch, it.id, f"bulk_{op}", json.dumps(it.snapshot()), json.dumps(after)))
                        written += 1
                    if batch is not None:
                        desc = f"{op} {tag}" + (f" -> {new}" if new else "") + f" on {written} image(s)"
                        self.con.execute("UPDATE batches SET summary = ? WHERE id = ?", (desc, batch))
                    self.con.execute("COMMIT")
                except BaseException:
                    self.con.execute("ROLLBACK")
                    for it, _ in ready:
                        self._refresh(it.id)
                    raise
                for it, _ in ready:
                    self._refresh(it.id)
                if failed:
                    self._journal_failed(f"bulk_{op}", failed)
                    if not written:
                        raise ReviewError(507, "write_failed",
                                          f"no caption file could be written ({skipped[-1]['reason']}); "
                                          "the edits are kept in the history",
                                          {"conflicts": conflicts, "skipped": skipped})
            return {"changed": written, "batch": batch, "conflicts": conflicts, "skipped": skipped}

    # --- undo / redo ---------------------------------------------------------------
    def _replay(self, batch_id: int, forward: bool) -> dict[str, Any]:
        """Apply a batch's `after` (redo) or `before` (undo) to each of its items, checking disk and state."""
        rows = self.con.execute("SELECT * FROM edits WHERE batch = ? ORDER BY id", (batch_id,)).fetchall()
        if not forward:
            rows = rows[::-1]
        done, conflicts, skipped = [], [], []
        plan = []
        for e in rows:
            it = self.items.get(e["item_id"])
            src, dst = (json.loads(e["before"]), json.loads(e["after"]))
            if not forward:
                src, dst = dst, src
            if it is None:
                skipped.append({"id": e["item_id"], "reason": "the image is no longer in the folder"})
                continue
            if it.caption_state == "unreadable":
                skipped.append({"id": it.id, "reason": it.caption_error})
                continue
            disk = self._disk_changed(it)
            if disk is not None:
                err = self._conflict(it, disk, dst, "undo" if not forward else "redo")
                conflicts.append({"id": it.id, "name": it.image.rsplit("/", 1)[-1], "reason": err.message})
                continue
            if it.tags != src["tags"]:
                skipped.append({"id": it.id, "reason": "the caption changed since (reloaded from disk)"})
                continue
            plan.append((it, dst))
        failed = []
        wrote = 0
        self.con.execute("BEGIN IMMEDIATE")
        try:
            for it, dst in plan:
                if dst != it.snapshot():
                    try:
                        self._write_item(it, dst)
                    except ReviewError as exc:  # left as it was, like a conflict: the rest is still replayed
                        failed.append((it, dst))
                        skipped.append({"id": it.id, "reason": exc.message})
                        continue
                    wrote += 1
                done.append(it.id)
            nothing = bool(failed) and not wrote
            if nothing:  # no file changed: the batch keeps its state
                self.con.execute("ROLLBACK")
            else:
                if forward:
                    self.con.execute("UPDATE batches SET state = 'applied', undo_seq = NULL WHERE id = ?", (batch_id,))
                else:
                    seq = self.con.execute("SELECT COALESCE(MAX(undo_seq), 0) + 1 FROM batches").fetchone()[0]
                    self.con.execute("UPDATE batches SET state = 'undone', undo_seq = ? WHERE id = ?", (seq, batch_id))
                self.con.execute("COMMIT")
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        finally:
            for it, _ in plan:
                self._refresh(it.id)
        if failed:
            self._journal_failed("undo" if not forward else "redo", failed)
            if nothing:
                raise ReviewError(507, "write_failed", f"nothing was {'undone' if not forward else 'redone'}: "
                                                       f"{skipped[-1]['reason']}", {"skipped": skipped})
        b = self.con.execute("SELECT op, summary FROM batches WHERE id = ?", (batch_id,)).fetchone()
        return {"batch": batch_id, "op": b[0], "summary": b[1], "items": done, "conflicts": conflicts,
                "skipped": skipped}

    def undo(self) -> dict[str, Any]:
        with self._lock:
            r = self.con.execute("SELECT id FROM batches WHERE state = 'applied' ORDER BY id DESC LIMIT 1").fetchone()
            if r is None:
                raise ReviewError(409, "nothing_to_undo", "nothing to undo")
            return {"undone": True, **self._replay(r[0], forward=False)}

    def redo(self) -> dict[str, Any]:
        with self._lock:
            r = self.con.execute("SELECT id FROM batches WHERE state = 'undone' ORDER BY undo_seq DESC LIMIT 1").fetchone()
            if r is None:
                raise ReviewError(409, "nothing_to_redo", "nothing to redo")
            return {"redone": True, **self._replay(r[0], forward=True)}

    def history(self, limit: int = 50, item_id: int | None = None) -> list[dict[str, Any]]:
        with self._lock:
            if item_id is None:
                rows = self.con.execute("SELECT * FROM batches ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
            else:
                rows = self.con.execute("SELECT DISTINCT b.* FROM batches b JOIN edits e ON e.batch = b.id "
                                        "WHERE e.item_id = ? ORDER BY b.id DESC LIMIT ?", (item_id, limit)).fetchall()
            out = []
            for b in rows:
                edits = self.con.execute("SELECT item_id, op, before, after, verdict_tag, verdict FROM edits "
                                         "WHERE batch = ? ORDER BY id LIMIT 20", (b["id"],)).fetchall()
                out.append({"batch": b["id"], "op": b["op"], "summary": b["summary"], "state": b["state"],
                            "created": b["created"],
                            "edits": [{"item": e[0], "op": e[1], "before": json.loads(e[2])["tags"],
                                       "after": json.loads(e[3])["tags"], "verdict_tag": e[4], "verdict": e[5]}
                                      for e in edits]})
            return out

    def can_undo_redo(self) -> dict[str, bool]:
        with self._lock:
            undo = self.con.execute("SELECT 1 FROM batches WHERE state = 'applied' LIMIT 1").fetchone() is not None
            redo = self.con.execute("SELECT 1 FROM batches WHERE state = 'undone' LIMIT 1").fetchone() is not None
        return {"undo": undo, "redo": redo}

    # --- folder-wide views -------------------------------------------------------------
    def frequencies(self, flt: Filter | None = None) -> list[dict[str, Any]]:
        """Tag frequency over the folder (or the selection): caption count, model count, category."""
        with self._lock:
            items = self.select(flt) if flt else list(self.items.values())
            cap: dict[str, int] = {}
            mod: dict[str, int] = {}
            for it in items:
                for k in set(it.keys):
                    cap[k] = cap.get(k, 0) + 1
                m = self.model_tags(it)
                if m is not None:
                    for k in m[2]:
                        mod[k] = mod.get(k, 0) + 1
            tags = set(cap) | set(mod)
            out = [{"tag": t, "count": cap.get(t, 0), "model_count": mod.get(t, 0),
                    "category": self.categories[self.vocab_index[t]] if t in self.vocab_index
                    else self.completer.category(t),
                    "in_model": t in self.vocab_index} for t in tags]
            out.sort(key=lambda d: (-d["count"], -d["model_count"], d["tag"]))
            return out

    def status(self) -> dict[str, Any]:
        with self._lock:
            ready = sum(1 for it in self.items.values() if it.image_sha1 in self.scores)
            live = {"unreadable_images": sum(1 for it in self.items.values() if it.image_error),
                    "unreadable_captions": sum(1 for it in self.items.values() if it.caption_state == "unreadable"),
                    "missing_captions": sum(1 for it in self.items.values() if it.caption_state == "missing")}
            return {"folder": self.root.name, "images": len(self.items), "suggestions_ready": ready, **live,
                    "suggestions": dict(self._progress), "model": self.tagger.bundle.name if self.tagger else None,
                    "scan": self.scan_report, **self.can_undo_redo()}

    def open_image(self, item_id: int):
        """(binary file, name) of an item's image: the path from the database, opened under confinement to DIR."""
        from ...confine import Root, open_confined

        it = self.get(item_id)
        try:
            return open_confined(Root.of(self.root), it.image), it.image.rsplit("/", 1)[-1]
        except OutsideFolder as exc:
            raise ReviewError(404, "file_unavailable", f"image {item_id}: {exc.reason}") from None
