"""Result writers: table, JSON, JSON Lines, CSV and caption files; atomic, resumable, never clobbering.

Every writer takes already-filtered TagResults. `is_done(path)` tells the caller which inputs a
previous run already finished (for --resume), comparing inputs.resume_key (real folder + name),
so the spelling of a path never tags an image twice.

Write failures: a result file that cannot be created is a UsageError (exit 2, before any
image is tagged); a record that cannot be written (disk full, file gone) is a WriteError that
stops the run (exit 1). JSON Lines and CSV records are written whole or not at all: a record
cut short by the failure is truncated back off, so the file stays one a plain --resume reads.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import IO, Iterable

from .errors import UsageError, WriteError  # noqa: F401 - WriteError is part of this module's interface
from .fileio import atomic_write_text, cleanup_stale_temp
from .inputs import resume_key, resume_keys
from .formatting import CaptionStyle, merge_caption
from .options import CAPTION_NAMES, FORMATS, ON_EXISTING  # noqa: F401 - defined with the options that pick them
from .results import TagResult

CSV_COLUMNS = ("path", "rating", "rating_confidence", "character", "general", "other", "error")


#: errnos that mean the disk itself takes no more writes (full, over quota, read-only), not one file.
_DISK_GONE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc)


class ResultWriter:
    """Base: `write` each result, then `close`. Returns a per-file error message or None."""

    def done_paths(self) -> set[str]:
        """resume_keys of the inputs an earlier run finished."""
        return set()

    def is_done(self, path: str) -> bool:
        """Whether an earlier run already finished `path` (for --resume)."""
        dirs = self.__dict__.setdefault("_dirs", {})  # each folder resolved once per run
        return resume_key(path, dirs) in self.done_paths()

    def write(self, result: TagResult) -> str | None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class _Records:
    """Appends whole records (text) to a result file, or to standard output.

    A file is written with os.write on its descriptor, no buffer in between, so after a failed
    write the file's end is known and cut back to the last whole record (ftruncate works on a
    full disk: it frees space).
    """

    def __init__(self, output: str | None, resume: bool, overwrite: bool):
        self.path = None if output in (None, "-") else output
        self.count = 0
        if self.path is None:
            if resume:
                raise UsageError("--resume needs a result file (-o FILE) or --format txt")
            self.fd = None
            return
        path = Path(self.path)
        if path.exists() and not (resume or overwrite):
            raise UsageError(f"{path} exists; pass --resume to continue it or --on-existing overwrite to replace it")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if resume else os.O_TRUNC) | getattr(os, "O_CLOEXEC", 0)
            self.fd = os.open(path, flags, 0o666)
            self.end = os.lseek(self.fd, 0, os.SEEK_END)
        except OSError as exc:
            raise UsageError(f"cannot write results to {path}: {_why(exc)}") from None

    def write(self, text: str) -> None:
        if self.fd is None:
            try:
                sys.stdout.write(text)
                sys.stdout.flush()
            except BrokenPipeError:
                raise
            except OSError as exc:
                raise WriteError(f"cannot write results to standard output: {_why(exc)}") from None
            self.count += 1
            return
        data = memoryview(text.encode("utf-8"))
        done = 0
        try:
            while done < len(data):
                done += os.write(self.fd, data[done:])
        except OSError as exc:
            try:
                os.ftruncate(self.fd, self.end)
            except OSError:
                pass
            raise WriteError(f"cannot write results to {self.path}: {_why(exc)}; the {self.count} records written "
                             "before it in this run are whole (make room, then rerun with --resume)") from None
        self.end += len(data)
        self.count += 1

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _salvage(path: Path, text: str) -> None:
    """Rewrite a result file as salvaged for --resume (atomically; a failure is a setup error)."""
    try:
        atomic_write_text(path, text)
    except OSError as exc:
        raise UsageError(f"cannot resume {path}: cannot rewrite it ({_why(exc)})") from None


def _clean_beside(output: str | None) -> None:
    """Temporary copies of this result file that a killed run left (see fileio.cleanup_stale_temp)."""
    if output not in (None, "-"):
        cleanup_stale_temp(Path(output).parent, {Path(output).name})


def probe_folder(path: Path) -> None:
    """Create (and remove) a temporary file where `path` will be written atomically; UsageError if we cannot."""
    if path.parent.exists() and not path.parent.is_dir():  # mkdir would only say "File exists"
        raise UsageError(f"cannot write results to {path}: {path.parent} is not a directory")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise UsageError(f"cannot write results to {path}: {_why(exc)}") from None


def _read_result_file(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise UsageError(f"cannot resume {path}: {_why(exc)}") from None


class JsonlWriter(ResultWriter):
    def __init__(self, output: str | None, *, resume: bool = False, overwrite: bool = False):
        self._done: set[str] = set()
        _clean_beside(output)
        if resume and output and output != "-" and Path(output).exists():
            self._done = resume_keys(_salvage_jsonl(Path(output)))
        self.out = _Records(output, resume, overwrite)

    def done_paths(self) -> set[str]:
        return self._done

    def write(self, result: TagResult) -> str | None:
        self.out.write(json.dumps(result.to_dict(), ensure_ascii=False) + "\n")
        return None

    def close(self) -> None:
        self.out.close()


def _salvage_jsonl(path: Path) -> set[str]:
    """Keep the complete, successful records of an interrupted run; return their paths."""
    keep: list[str] = []
    done: set[str] = set()
    for line in _read_result_file(path).splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by the interruption
        if isinstance(rec, dict) and isinstance(rec.get("path"), str) and rec["path"] and "error" not in rec:
            keep.append(line)
            done.add(rec["path"])
    _salvage(path, "".join(line + "\n" for line in keep))
    return done


class JsonWriter(ResultWriter):
    """One JSON array, written atomically at the end (merged with the old file on --resume)."""

    def __init__(self, output: str | None, *, resume: bool = False, overwrite: bool = False):
        self.output = output
        self.results: list[dict] = []
        _clean_beside(output)
        if output in (None, "-"):
            if resume:
                raise UsageError("--resume needs a result file (-o FILE) or --format txt")
        elif Path(output).exists():
            if resume:
                try:
                    old = json.loads(_read_result_file(Path(output)))
                except json.JSONDecodeError as exc:
                    raise UsageError(f"{output}: cannot resume, not valid JSON ({exc})") from None
                if not isinstance(old, list):
                    raise UsageError(f"{output}: cannot resume, not a JSON array of results")
                self.results = [r for r in old if isinstance(r, dict) and isinstance(r.get("path"), str)
                                and r["path"] and "error" not in r]
            elif not overwrite:
                raise UsageError(f"{output} exists; pass --resume to continue it or --on-existing overwrite to replace it")
        if output not in (None, "-"):
            probe_folder(Path(output))  # fail now, not after tagging everything
        self._done = resume_keys(r["path"] for r in self.results)

    def done_paths(self) -> set[str]:
        return self._done

    def write(self, result: TagResult) -> str | None:
        self.results.append(result.to_dict())
        return None

    def close(self) -> None:
        text = json.dumps(self.results, ensure_ascii=False, indent=2) + "\n"
        if self.output in (None, "-"):
            sys.stdout.write(text)
            return
        try:
            atomic_write_text(self.output, text)  # all or nothing: the old file stays on failure
        except OSError as exc:
            raise WriteError(f"cannot write results to {self.output}: {_why(exc)}; the file is as it was "
                             "before this run") from None


class CsvWriter(ResultWriter):
    def __init__(self, output: str | None, style: CaptionStyle, *, resume: bool = False, overwrite: bool = False):
        self.style = style
        self._done: set[str] = set()
        existed = bool(output and output != "-" and Path(output).exists())
        _clean_beside(output)
        if resume and existed:
            self._done = resume_keys(_salvage_csv(Path(output)))  # type: ignore[arg-type]
        self.out = _Records(output, resume, overwrite)
        if not (resume and existed):
            self._row(CSV_COLUMNS)

    def _row(self, row: Iterable[str]) -> None:
        buf = io.StringIO()  # one whole record, then one write
        csv.writer(buf, lineterminator="\n").writerow(row)
        self.out.write(buf.getvalue())

    def done_paths(self) -> set[str]:
        return self._done

    def write(self, result: TagResult) -> str | None:
        if not result.ok:
            row = [result.path, "", "", "", "", "", result.error]
        else:
            st = self.style
            join = lambda items: st.separator.join(st.format_tag(n, c) for n, c in items)  # noqa: E731
            key = st.sort_key
            other = sorted(((n, c) for n, cat, c in result.iter_tags() if cat not in ("general", "character")), key=key)
            row = [
                result.path,
                result.rating or "",
                f"{result.ratings.get(result.rating, 0.0):.4f}" if result.rating else "",
                join(sorted(result.character.items(), key=key)),
                join(sorted(result.general.items(), key=key)),
                join(other),
                "",
            ]
        self._row(row)
        return None

    def close(self) -> None:
        self.out.close()


def _salvage_csv(path: Path) -> set[str]:
    text = _read_result_file(path)
    rows = list(csv.reader(io.StringIO(text)))
    if not rows or tuple(rows[0]) != CSV_COLUMNS:
        raise UsageError(f"{path}: cannot resume, not a result CSV of this tool")
    good = [r for r in rows[1:] if len(r) == len(CSV_COLUMNS) and r[0] and not r[-1]]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    w.writerows(good)
    _salvage(path, buf.getvalue())
    return {r[0] for r in good}


class TableWriter(ResultWriter):
    """Readable text for a terminal."""

    def __init__(self, style: CaptionStyle, stream: IO[str] | None = None):
        self.style = style
        self.stream = stream or sys.stdout

    def write(self, result: TagResult) -> str | None:
        out = self.stream
        if not result.ok:
            out.write(f"{result.path}\n  error: {result.error}\n\n")
            return None
        rating = f"{result.rating} {result.ratings.get(result.rating, 0):.2f}" if result.rating else "-"
        out.write(f"{result.path}\n  rating     {rating}\n")
        order = ["character"] + [c for c in result.tags if c != "character"]
        for cat in order:
            tags = result.tags.get(cat)
            if not tags:
                continue
            text = ", ".join(f"{self.style.format_name(n)} {c:.2f}" for n, c in tags.items())
            out.write(f"  {cat:<10} {text}\n")
        out.write("\n")
        out.flush()
        return None


class CaptionWriter(ResultWriter):
    """One caption file per image: beside it, or under `output_dir` mirroring the input tree."""

    def __init__(
        self,
        style: CaptionStyle,
        *,
        extension: str = ".txt",
        on_existing: str = "skip",
        output_dir: str | None = None,
        roots: dict[str, str] | None = None,
        name: str = "stem",
    ):
        if on_existing not in ON_EXISTING:
            raise UsageError(f"--on-existing must be one of {', '.join(ON_EXISTING)}")
        if name not in CAPTION_NAMES:
            raise UsageError(f"--caption-name must be one of {', '.join(CAPTION_NAMES)}")
        self.name = name
        self.style = style
        self.extension = extension if extension.startswith(".") else "." + extension
        self.on_existing = on_existing
        self.output_dir = Path(output_dir) if output_dir else None
        if self.output_dir is not None:
            try:  # a folder that cannot exist is a setup error, not one failure per image
                self.output_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise UsageError(f"cannot write captions under {self.output_dir}: {_why(exc)}") from None
        self.roots = roots or {}
        self.skipped_existing = 0
        self._cleaned: set[Path] = set()  # folders whose stale temporary captions are gone

    def _named(self, p: Path) -> Path:
        return p.with_name(p.name + self.extension) if self.name == "full" else p.with_suffix(self.extension)

    def caption_path(self, image_path: str) -> Path:
        p = Path(image_path)
        if self.output_dir is None:
            return self._named(p)
        root = Path(self.roots.get(image_path, p.parent))
        try:
            rel = p.relative_to(root)
        except ValueError:
            rel = Path(p.name)
        return self._named(self.output_dir / rel)

    def check_collisions(self, image_paths: Iterable[str]) -> None:
        """UsageError naming the images that would share one caption file (a.jpg and a.png -> a.txt).

        Called before anything is written: with --caption-name stem one of them would silently
        lose its tags. Compared by real folder, so two spellings of one image are not a collision.
        """
        owners: dict[str, list[str]] = {}
        dirs: dict[str, str] = {}
        for path in image_paths:
            key = resume_key(str(self.caption_path(path)), dirs)
            names = owners.setdefault(key, [])
            if all(resume_key(other, dirs) != resume_key(path, dirs) for other in names):
                names.append(path)
        clashes = [(cap, names) for cap, names in owners.items() if len(names) > 1]
        if not clashes:
            return
        shown = "; ".join(" and ".join(names) + f" -> {os.path.basename(cap)}" for cap, names in clashes[:5])
        more = f" (and {len(clashes) - 5} more)" if len(clashes) > 5 else ""
        raise UsageError(f"{len(clashes)} caption file name(s) would be shared: {shown}{more}; "
                         "nothing was written. Use --caption-name full (a.jpg -> a.jpg.txt) or tag them apart")

    def is_done(self, image_path: str) -> bool:
        return self.caption_path(image_path).exists()

    def write(self, result: TagResult) -> str | None:
        if not result.ok or result.path is None:
            return None
        target = self.caption_path(result.path)
        if target.parent not in self._cleaned:
            self._cleaned.add(target.parent)
            cleanup_stale_temp(target.parent, lambda name: name.endswith(self.extension))
        tags = [self.style.format_tag(n, c) for n, c in self.style.ordered(result)]
        text = self.style.separator.join(tags)
        try:
            if target.exists():
                if self.on_existing == "skip":
                    self.skipped_existing += 1
                    return None
                if self.on_existing in ("append", "prepend"):
                    old = target.read_text(encoding="utf-8").strip()
                    text = merge_caption(old, tags, self.on_existing, self.style.separator) if old else text
            atomic_write_text(target, text + "\n")
        except OSError as exc:
            if exc.errno in _DISK_GONE:
                # Every later caption would fail the same way: stop with one line, not one per image.
                raise WriteError(f"cannot write caption {target}: {_why(exc)}; the run stops (the captions written "
                                 "so far are whole; --resume continues once there is room)") from None
            return f"cannot write caption {target}: {exc}"  # this file only (permissions, a name too long, ...)
        return None


def make_writer(
    fmt: str,
    *,
    style: CaptionStyle,
    output: str | None = None,
    resume: bool = False,
    on_existing: str = "skip",
    caption_extension: str = ".txt",
    output_dir: str | None = None,
    roots: dict[str, str] | None = None,
    caption_name: str = "stem",
) -> ResultWriter:
    if fmt not in FORMATS:
        raise UsageError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    overwrite = on_existing == "overwrite"
    if fmt == "txt":
        return CaptionWriter(style, extension=caption_extension, on_existing=on_existing, output_dir=output_dir, roots=roots,
                             name=caption_name)
    if fmt == "jsonl":
        return JsonlWriter(output, resume=resume, overwrite=overwrite)
    if fmt == "json":
        return JsonWriter(output, resume=resume, overwrite=overwrite)
    if fmt == "csv":
        return CsvWriter(output, style, resume=resume, overwrite=overwrite)
    if resume:
        raise UsageError("--resume needs a result file (-o FILE with json, jsonl or csv) or --format txt")
    if output not in (None, "-"):
        raise UsageError("--format table prints to the terminal; use json, jsonl or csv with -o FILE")
    return TableWriter(style)

