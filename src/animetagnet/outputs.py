"""Result writers: table, JSON, JSON Lines, CSV and caption files; atomic, resumable, never clobbering.

Every writer takes already-filtered TagResults. `is_done(path)` tells the caller which inputs a
previous run already finished (for --resume).
"""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path
from typing import IO

from .errors import UsageError
from .fileio import atomic_write_text
from .formatting import CaptionStyle, merge_caption
from .options import FORMATS, ON_EXISTING  # noqa: F401 - defined with the options that pick them
from .results import TagResult

CSV_COLUMNS = ("path", "rating", "rating_confidence", "character", "general", "other", "error")


class ResultWriter:
    """Base: `write` each result, then `close`. Returns a per-file error message or None."""

    def done_paths(self) -> set[str]:
        return set()

    def is_done(self, path: str) -> bool:
        """Whether an earlier run already finished `path` (for --resume)."""
        return path in self.done_paths()

    def write(self, result: TagResult) -> str | None:
        raise NotImplementedError

    def close(self) -> None:
        pass


def _open_stream(output: str | None, resume: bool, overwrite: bool) -> tuple[IO[str], bool]:
    """The stream a streaming writer appends to; (stream, owns_it)."""
    if output is None or output == "-":
        if resume:
            raise UsageError("--resume needs a result file (-o FILE) or --format txt")
        return sys.stdout, False
    path = Path(output)
    if path.exists() and not (resume or overwrite):
        raise UsageError(f"{path} exists; pass --resume to continue it or --on-existing overwrite to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    return open(path, "a" if resume else "w", encoding="utf-8", newline=""), True


class JsonlWriter(ResultWriter):
    def __init__(self, output: str | None, *, resume: bool = False, overwrite: bool = False):
        self._done: set[str] = set()
        if resume and output and Path(output).exists():
            self._done = _salvage_jsonl(Path(output))
        self.stream, self._owns = _open_stream(output, resume, overwrite)

    def done_paths(self) -> set[str]:
        return self._done

    def write(self, result: TagResult) -> str | None:
        self.stream.write(json.dumps(result.to_dict(), ensure_ascii=False) + "\n")
        self.stream.flush()
        return None

    def close(self) -> None:
        if self._owns:
            self.stream.close()


def _salvage_jsonl(path: Path) -> set[str]:
    """Keep the complete, successful records of an interrupted run; return their paths."""
    keep: list[str] = []
    done: set[str] = set()
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by the interruption
        if isinstance(rec, dict) and rec.get("path") and "error" not in rec:
            keep.append(line)
            done.add(rec["path"])
    atomic_write_text(path, "".join(line + "\n" for line in keep))
    return done


class JsonWriter(ResultWriter):
    """One JSON array, written atomically at the end (merged with the old file on --resume)."""

    def __init__(self, output: str | None, *, resume: bool = False, overwrite: bool = False):
        self.output = output
        self.results: list[dict] = []
        if output in (None, "-"):
            if resume:
                raise UsageError("--resume needs a result file (-o FILE) or --format txt")
        elif Path(output).exists():
            if resume:
                try:
                    old = json.loads(Path(output).read_text(encoding="utf-8"))
                except json.JSONDecodeError as exc:
                    raise UsageError(f"{output}: cannot resume, not valid JSON ({exc})") from None
                self.results = [r for r in old if isinstance(r, dict) and r.get("path") and "error" not in r]
            elif not overwrite:
                raise UsageError(f"{output} exists; pass --resume to continue it or --on-existing overwrite to replace it")
        self._done = {r["path"] for r in self.results}

    def done_paths(self) -> set[str]:
        return self._done

    def write(self, result: TagResult) -> str | None:
        self.results.append(result.to_dict())
        return None

    def close(self) -> None:
        text = json.dumps(self.results, ensure_ascii=False, indent=2) + "\n"
        if self.output in (None, "-"):
            sys.stdout.write(text)
        else:
            atomic_write_text(self.output, text)


class CsvWriter(ResultWriter):
    def __init__(self, output: str | None, style: CaptionStyle, *, resume: bool = False, overwrite: bool = False):
        self.style = style
        self._done: set[str] = set()
        existed = bool(output and output != "-" and Path(output).exists())
        if resume and existed:
            self._done = _salvage_csv(Path(output))  # type: ignore[arg-type]
        self.stream, self._owns = _open_stream(output, resume, overwrite)
        self.writer = csv.writer(self.stream, lineterminator="\n")
        if not (resume and existed):
            self.writer.writerow(CSV_COLUMNS)

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
        self.writer.writerow(row)
        self.stream.flush()
        return None

    def close(self) -> None:
        if self._owns:
            self.stream.close()


def _salvage_csv(path: Path) -> set[str]:
    text = path.read_text(encoding="utf-8", errors="replace")
    rows = list(csv.reader(io.StringIO(text)))
    if not rows or tuple(rows[0]) != CSV_COLUMNS:
        raise UsageError(f"{path}: cannot resume, not a result CSV of this tool")
    good = [r for r in rows[1:] if len(r) == len(CSV_COLUMNS) and r[0] and not r[-1]]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    w.writerows(good)
    atomic_write_text(path, buf.getvalue())
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
    ):
        if on_existing not in ON_EXISTING:
            raise UsageError(f"--on-existing must be one of {', '.join(ON_EXISTING)}")
        self.style = style
        self.extension = extension if extension.startswith(".") else "." + extension
        self.on_existing = on_existing
        self.output_dir = Path(output_dir) if output_dir else None
        self.roots = roots or {}
        self.skipped_existing = 0

    def caption_path(self, image_path: str) -> Path:
        p = Path(image_path)
        if self.output_dir is None:
            return p.with_suffix(self.extension)
        root = Path(self.roots.get(image_path, p.parent))
        try:
            rel = p.relative_to(root)
        except ValueError:
            rel = Path(p.name)
        return (self.output_dir / rel).with_suffix(self.extension)

    def is_done(self, image_path: str) -> bool:
        return self.caption_path(image_path).exists()

    def write(self, result: TagResult) -> str | None:
        if not result.ok or result.path is None:
            return None
        target = self.caption_path(result.path)
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
            return f"cannot write caption {target}: {exc}"
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
) -> ResultWriter:
    if fmt not in FORMATS:
        raise UsageError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    overwrite = on_existing == "overwrite"
    if fmt == "txt":
        return CaptionWriter(style, extension=caption_extension, on_existing=on_existing, output_dir=output_dir, roots=roots)
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

