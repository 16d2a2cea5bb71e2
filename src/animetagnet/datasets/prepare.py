"""The `prepare` pipeline: source -> checked, deduplicated, split records -> vocabulary -> files.

Three streaming passes keep memory bounded by small per-image state (ids, content hashes,
split keys), never by the size of the metadata:
1. read the source, normalise tags (aliases), check and hash each image, drop duplicate
   posts, collapse byte-identical images (tags merged into the first copy), assign the split,
   and spool compact records to a temporary file in the output directory;
2. count tags on the training split and select the vocabulary;
3. write train/val/test.jsonl (tags filtered to the vocabulary), the statistics, and
   dataset.json. Output depends only on the source and the options: reruns are byte-identical.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from ..errors import ImageError, UsageError
from ..fileio import atomic_write_text
from ..images import load_image, open_image
from ..vocab import Category
from . import kaggle
from .curation import CurationRules, select_vocabulary
from .danbooru import is_metadata_file, looks_like_metadata
from .folders import iter_captioned, iter_class_folders, walk_sorted
from .records import Record, SkipLog
from .splits import DEFAULT_RATIOS, SPLITS, split_of
from .stats import DatasetStats, label_frequency, plot_long_tail, render_markdown
from .tagtable import TagTable

FORMATS = ("kaggle", "danbooru", "captions", "folders")
VERIFY_MODES = ("none", "header", "full")
FORMAT_VERSION = 1
#: Every file `prepare` writes; with --overwrite, stale ones from an earlier run are removed.
OUTPUT_FILES = (
    "selected_tags.csv", "train.jsonl", "val.jsonl", "test.jsonl",
    "dataset.json", "stats.json", "report.md", "label_frequency.png",
)
SPLIT_FUNCTION = "bucket = int(sha1(group.encode('utf-8')).hexdigest()[:8], 16) % 10000; " \
    "train if bucket < 100*train, val if bucket < 100*(train+val), else test"


@dataclass
class PrepareOptions:
    source: str
    out: str
    format: str = "auto"
    kaggle_part: str = "images"
    images: str | None = None
    metadata_only: bool = False
    ratios: tuple[float, float, float] = DEFAULT_RATIOS
    verify: str = "header"
    rules: CurationRules = field(default_factory=CurationRules)
    tag_tables: list[str] = field(default_factory=list)
    class_category: str = "character"
    class_prefix: str = "auto"
    drop_untagged: bool = False
    workers: int = 2
    overwrite: bool = False
    plot: bool = True
    progress: Callable[[str], None] | None = None


# --- format detection --------------------------------------------------------------------

def detect_format(source: Path, files_per_dir: int = 200, max_dirs: int = 2000) -> str:
    """Guess the source format from a bounded look at the tree; UsageError when unsure.

    Looks at no more than `files_per_dir` files in each of at most `max_dirs` folders, at
    most 4 levels deep, so a 337k-image Kaggle tree is classified in well under a second.
    """
    if source.is_file():
        if is_metadata_file(source):
            return "danbooru"
        raise UsageError(f"{source}: a file source must be Danbooru metadata (.json/.jsonl, optionally .gz)")
    if not source.is_dir():
        raise UsageError(f"source not found: {source}")
    from ..images import is_image_path

    images = captioned = top_images = metadata = dirs = 0
    buckets = moeimouto = False
    for dirpath, dirnames, filenames in walk_sorted(source):
        dirs += 1
        depth = 0 if dirpath == str(source) else os.path.relpath(dirpath, source).count(os.sep) + 1
        name = os.path.basename(dirpath)
        if depth and "moeimouto" in name.lower():
            moeimouto = True
            dirnames[:] = []
        if depth and len(name) == 4 and name.isdigit():
            buckets = True
        sample = filenames[:files_per_dir]
        stems = {os.path.splitext(f)[0] for f in sample if f.lower().endswith((".txt", ".caption"))}
        for f in sample:
            if is_image_path(f):
                images += 1
                top_images += depth == 0
                captioned += os.path.splitext(f)[0] in stems
            elif is_metadata_file(f) and metadata < 3 and looks_like_metadata(Path(dirpath) / f):
                metadata += 1
        if depth >= 4:
            dirnames[:] = []
        if dirs >= max_dirs:
            break
    if metadata and not images and not moeimouto:
        return "danbooru"
    if moeimouto or buckets or (metadata and images):
        return "kaggle"
    if captioned and captioned * 2 >= images:
        return "captions"
    if images and not top_images:
        return "folders"
    raise UsageError(
        f"{source}: cannot tell the source format (found {images} images, {captioned} with "
        f"captions, {metadata} metadata files); name it with --format {{{','.join(FORMATS)}}}"
    )


# --- reading -------------------------------------------------------------------------------

def _open_source(opts: PrepareOptions, log: SkipLog, tag_ids: dict[str, int]) -> tuple[str, dict, Iterator[Record]]:
    """(format, source description, record iterator)."""
    source = Path(opts.source)
    fmt = opts.format if opts.format != "auto" else detect_format(source)
    desc: dict = {"path": opts.source, "format": fmt, "format_detected": opts.format == "auto"}
    if fmt not in FORMATS:
        raise UsageError(f"unknown --format {fmt!r}; one of {', '.join(FORMATS)}")
    if not source.exists():
        raise UsageError(f"source not found: {source}")
    if opts.metadata_only and fmt not in ("danbooru", "kaggle"):
        raise UsageError("--metadata-only applies to Danbooru metadata sources only")
    class_cat = int(Category.parse(opts.class_category))
    if fmt == "folders":
        desc["class_category"] = Category(class_cat).label
        desc["class_prefix"] = opts.class_prefix
        return fmt, desc, iter_class_folders(source, class_cat, log, opts.class_prefix)
    if fmt == "captions":
        return fmt, desc, iter_captioned(source, log)
    if fmt == "kaggle":
        layout = kaggle.find_layout(source)
        desc["part"] = opts.kaggle_part
        desc["layout"] = layout.describe()
        kaggle.require_layout(layout, opts.kaggle_part)
        if opts.kaggle_part == "faces":
            desc["class_category"] = Category(class_cat).label
            return fmt, desc, iter_class_folders(layout.faces_dir, class_cat, log, opts.class_prefix)
        index = None
        if not opts.metadata_only:
            index = kaggle.ImageIndex.build([source], layout.faces_dir, log)
            desc["image_files_indexed"] = len(index)
        return fmt, desc, kaggle.iter_post_records(layout.metadata_files, index, log, tag_ids)
    # danbooru: a metadata file, or a folder of them, plus --images
    if source.is_file():
        files = [source]
    else:
        files = [Path(d) / f for d, _, fs in walk_sorted(source) for f in fs if is_metadata_file(f)]
        files = [f for f in files if looks_like_metadata(f)]
        if not files:
            raise UsageError(f"{source}: no Danbooru metadata files (.json/.jsonl lines with post ids)")
    desc["metadata_files"] = len(files)
    index = None
    if opts.images:
        desc["images"] = opts.images
        if not Path(opts.images).is_dir():
            raise UsageError(f"--images {opts.images}: not a directory")
        index = kaggle.ImageIndex.build([Path(opts.images)], None, log)
        desc["image_files_indexed"] = len(index)
    elif not opts.metadata_only:
        raise UsageError(
            "Danbooru metadata needs --images DIR (image files named <post id> or <md5>), "
            "or --metadata-only to curate the vocabulary and report statistics without images"
        )
    return fmt, desc, kaggle.iter_post_records(files, index, log, tag_ids)


def _check_image(path: str, verify: str) -> tuple[bytes | None, str | None]:
    """(content digest or None, skip reason or None). Reads each file once."""
    if verify == "none":
        return (None, None) if os.path.isfile(path) else (None, "image file missing")
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        return None, "image file missing"
    except OSError as exc:
        return None, f"unreadable image file ({exc.strerror or exc})"
    try:
        if verify == "full":
            load_image(data)
        else:
            open_image(data)
    except ImageError as exc:
        return None, f"unusable image: {exc.reason}"
    return hashlib.md5(data).digest(), None


# --- output helpers ------------------------------------------------------------------------

def _check_out_not_in_source(source: Path, out: Path) -> None:
    # The readers walk the source tree: an output inside it would be read back as input.
    src, dst = os.path.abspath(source), os.path.abspath(out)
    if os.path.isdir(src) and (dst == src or dst.startswith(src.rstrip(os.sep) + os.sep)):
        raise UsageError(f"--out {out}: must not be inside the source folder {source}")


def _prepare_out_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a directory")
    if out.is_dir():
        entries = [e for e in os.listdir(out) if not e.startswith(".")]
        ours = set(OUTPUT_FILES)
        if entries:
            # An interrupted run leaves only our own file names (dataset.json is written last).
            if not (out / "dataset.json").exists() and not set(entries) <= ours:
                raise UsageError(f"--out {out}: directory is not empty and holds no dataset; refusing to write into it")
            if not overwrite:
                raise UsageError(f"--out {out}: already holds a dataset; pass --overwrite to replace it")
            # Remove the old marker first: until the new dataset.json lands, the directory
            # is visibly incomplete rather than a mix of two datasets that looks finished.
            if (out / "dataset.json").exists():
                (out / "dataset.json").unlink()
    out.mkdir(parents=True, exist_ok=True)


class _AtomicLines:
    """Stream lines into a temporary file beside `path`; `commit` renames it into place."""

    def __init__(self, path: Path):
        self.path = path
        self.tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        self.fh = open(self.tmp, "w", encoding="utf-8", newline="\n")
        self.sha = hashlib.sha256()
        self.lines = 0

    def write(self, line: str) -> None:
        data = line + "\n"
        self.fh.write(data)
        self.sha.update(data.encode("utf-8"))
        self.lines += 1

    def commit(self) -> None:
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        if not self.fh.closed:
            self.fh.close()
        try:
            os.unlink(self.tmp)
        except FileNotFoundError:
            pass


def _dumps(obj) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


# --- the pipeline --------------------------------------------------------------------------

def prepare_dataset(opts: PrepareOptions) -> dict:
    """Build the dataset directory; returns the content of dataset.json (plus `stats`)."""
    if opts.verify not in VERIFY_MODES:
        raise UsageError(f"--verify {opts.verify!r}: one of {', '.join(VERIFY_MODES)}")
    out = Path(opts.out)
    table = TagTable()
    for path in opts.tag_tables:
        table.load(path)
    log = SkipLog()
    tag_ids: dict[str, int] = {}
    _check_out_not_in_source(Path(opts.source), out)
    fmt, desc, records = _open_source(opts, log, tag_ids)
    _prepare_out_dir(out, opts.overwrite)
    say = opts.progress or (lambda msg: None)

    spool_path = out / f".prepare-spool.{os.getpid()}.jsonl"
    writers: list[_AtomicLines] = []
    # Wall-clock phases, returned to the caller (benchmarks) but never written to the files.
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    try:
        n_read, n_spooled, merged, categories = _pass_read(opts, table, records, log, spool_path, say)
        timings["read_s"] = time.perf_counter() - t0
        train_counts, rating_counts = _pass_count(spool_path, merged)
        vocab, selection = select_vocabulary(train_counts, categories, rating_counts, opts.rules, tag_ids)
        say(f"vocabulary: {len(vocab):,} tags selected of {len(train_counts):,} seen in train")

        stats = DatasetStats()
        split_counts = Counter()
        dropped_empty = 0
        if not opts.metadata_only:
            writers = [_AtomicLines(out / f"{s}.jsonl") for s in SPLITS]
        by_split = dict(zip(SPLITS, writers))
        allowed = opts.rules.category_set()
        excluded = set(opts.rules.exclude)
        order = {name: i for i, name in enumerate(vocab.names)}
        for idx, (rid, group, image, split, tags, rating) in _read_spool(spool_path, merged):
            n_all = len(tags)
            n_scope = sum(1 for name, cat in tags if cat in allowed and name not in excluded)
            kept = sorted((name for name, _ in tags if name in order), key=order.__getitem__)
            stats.splits[split].add(group, n_all, n_scope, len(kept))
            if opts.rules.ratings and rating in order:
                kept.insert(0, rating)
            if opts.drop_untagged and not kept:
                dropped_empty += 1
                continue
            split_counts[split] += 1
            if by_split:
                by_split[split].write(_dumps({"id": rid, "image": os.path.abspath(image), "tags": kept, "group": group}))
        if dropped_empty:
            log.add("image with no vocabulary tag (dropped by --drop-untagged)", count=dropped_empty)

        timings["count_select_write_s"] = time.perf_counter() - t0 - timings["read_s"]
        files: dict = {}
        for w in writers:
            w.commit()
            files[w.path.name] = {"records": w.lines, "sha256": w.sha.hexdigest()}
        writers = []
        vocab.write_csv(out / "selected_tags.csv")
        files["selected_tags.csv"] = {"tags": len(vocab)}

        vnames = set(vocab.names)
        stats_doc: dict = {"splits": stats.summary(), "label_frequency": label_frequency(train_counts, vnames)}
        plot_path = out / "label_frequency.png"
        why_not = plot_long_tail(train_counts, vnames, plot_path) if opts.plot else "disabled (--no-plot)"
        if why_not is None:
            stats_doc["plot"] = plot_path.name
        else:
            stats_doc["plot_skipped"] = why_not
            if plot_path.exists():
                plot_path.unlink()

        rules = opts.rules.to_dict()
        rules["tag_tables"] = list(opts.tag_tables)
        rules["aliases_loaded"] = len(table.aliases)
        rules["drop_untagged"] = opts.drop_untagged
        info = {
            "format": "animetagnet-dataset",
            "format_version": FORMAT_VERSION,
            "source": desc,
            "image_paths": "none (metadata only)" if opts.metadata_only else "absolute",
            "verify": opts.verify,
            "content_hash": "md5 of the file bytes" if opts.verify != "none" else "Danbooru md5 from the metadata, when present",
            "split": {
                "ratios": dict(zip(SPLITS, opts.ratios)),
                "function": SPLIT_FUNCTION,
                "group_key": _group_key_doc(fmt, opts.kaggle_part),
            },
            "rules": rules,
            "counts": {
                "records_read": n_read,
                "records_kept": n_spooled,
                "images": {s: split_counts[s] for s in SPLITS},
                "vocabulary": {c.label: int((vocab.categories == int(c)).sum()) for c in vocab.present_categories()},
                "skipped": log.to_dict(),
            },
            "selection": selection,
            "files": files,
        }
        atomic_write_text(out / "stats.json", json.dumps(stats_doc, indent=1, ensure_ascii=False) + "\n")
        info_with_stats = dict(info, stats=stats_doc)
        atomic_write_text(out / "report.md", render_markdown(info_with_stats))
        atomic_write_text(out / "dataset.json", json.dumps(info, indent=1, ensure_ascii=False) + "\n")
        if opts.metadata_only:
            for name in ("train.jsonl", "val.jsonl", "test.jsonl"):
                if (out / name).exists():
                    (out / name).unlink()
        timings["total_s"] = time.perf_counter() - t0
        info_with_stats["timings"] = {k: round(v, 3) for k, v in timings.items()}
        return info_with_stats
    finally:
        for w in writers:
            w.abort()
        try:
            spool_path.unlink()
        except FileNotFoundError:
            pass


def _group_key_doc(fmt: str, part: str) -> str:
    if fmt in ("danbooru",) or (fmt == "kaggle" and part == "images"):
        return "Danbooru parent_id when non-zero, else the post id (a post and its children share a split)"
    return "the md5 of a file named <md5>-<k>.<ext> (all crops of one post), else the file's path below the source"


def _pass_read(opts, table: TagTable, records: Iterator[Record], log: SkipLog, spool_path: Path, say):
    """Pass 1: check, deduplicate, split and spool. Returns counts, merges and categories."""
    # Numeric ids are stored as ints: a third of the memory of the strings at 300k+ posts.
    seen_ids: set = set()
    first_by_content: dict[bytes, int] = {}
    merged: dict[int, list[list]] = {}
    categories: dict[str, int] = {}
    n_read = n_spooled = 0
    started = time.monotonic()
    with open(spool_path, "w", encoding="utf-8", newline="\n") as spool:
        for rec, checked in _checked(records, opts.verify, opts.workers):
            n_read += 1
            if n_read % 50_000 == 0:
                say(f"{n_read:,} records read, {n_spooled:,} kept ({n_read / (time.monotonic() - started):,.0f}/s)")
            id_key = int(rec.id) if rec.id.isdigit() else rec.id
            if id_key in seen_ids:
                log.add("duplicate post id (later copy skipped)", rec.id)
                continue
            seen_ids.add(id_key)
            digest = None
            if rec.image is not None:
                digest, problem = checked
                if problem:
                    log.add(problem, rec.image)
                    continue
            if digest is None and rec.content_key and rec.content_key.startswith("md5:"):
                digest = bytes.fromhex(rec.content_key[4:])
            tags = _resolve_tags(rec.tags, table, categories)
            if digest is not None:
                first = first_by_content.get(digest)
                if first is not None:
                    log.add("byte-identical image collapsed into its first copy (tags merged)", rec.id)
                    merged.setdefault(first, []).extend(tags)
                    continue
                first_by_content[digest] = n_spooled
            split = split_of(rec.group, opts.ratios)
            spool.write(_dumps([rec.id, rec.group, rec.image, split, tags, rec.rating]) + "\n")
            n_spooled += 1
    say(f"{n_read:,} records read, {n_spooled:,} kept")
    return n_read, n_spooled, merged, categories


def _checked(records: Iterator[Record], verify: str, workers: int, chunk: int = 256):
    """(record, (digest, problem)) in source order; image checks run on `workers` threads.

    File reads, md5 and Pillow's decoders release the GIL, so threads use both cores.
    Records are taken `chunk` at a time, so memory stays bounded and order deterministic.
    """
    def check(rec: Record):
        return _check_image(rec.image, verify) if rec.image is not None else (None, None)

    if workers <= 1:
        for rec in records:
            yield rec, check(rec)
        return
    from concurrent.futures import ThreadPoolExecutor
    from itertools import islice

    with ThreadPoolExecutor(max_workers=workers) as pool:
        while True:
            batch = list(islice(records, chunk))
            if not batch:
                return
            yield from zip(batch, pool.map(check, batch))


def _resolve_tags(raw, table: TagTable, categories: dict[str, int]) -> list[list]:
    """Alias-map names, settle categories (the source's, else the tag table's, else general),
    drop repeats. `categories` remembers the first category seen for each name."""
    out: dict[str, int] = {}
    if table:
        raw = [(n, c if c is not None else table.category(table.canonical(n))) for n, c in raw]
        raw = [(table.canonical(n), c) for n, c in raw]
    for name, cat in raw:
        if name in out:
            continue
        known = categories.get(name)
        if known is None:
            known = categories[name] = cat if cat is not None else 0
        out[name] = known
    return [[n, c] for n, c in out.items()]


def _read_spool(spool_path: Path, merged: dict[int, list[list]]):
    with open(spool_path, encoding="utf-8") as fh:
        for idx, line in enumerate(fh):
            rid, group, image, split, tags, rating = json.loads(line)
            extra = merged.get(idx)
            if extra:
                have = {t[0] for t in tags}
                for t in extra:
                    if t[0] not in have:
                        have.add(t[0])
                        tags.append(t)
            yield idx, (rid, group, image, split, tags, rating)


def _pass_count(spool_path: Path, merged) -> tuple[Counter, Counter]:
    """Pass 2: tag and rating frequencies on the training split."""
    counts: Counter = Counter()
    ratings: Counter = Counter()
    for _idx, (_rid, _g, _img, split, tags, rating) in _read_spool(spool_path, merged):
        if split == "train":
            counts.update(t[0] for t in tags)
            if rating:
                ratings[rating] += 1
    return counts, ratings


def print_summary(info: dict, stream=sys.stderr) -> None:
    c = info["counts"]
    imgs = c["images"]
    voc = ", ".join(f"{n:,} {k}" for k, n in c["vocabulary"].items()) or "empty"
    print(
        f"records read {c['records_read']:,}, kept {c['records_kept']:,}; "
        f"train {imgs['train']:,} / val {imgs['val']:,} / test {imgs['test']:,}; vocabulary: {voc}",
        file=stream,
    )
    cov = info["stats"]["splits"]["all"]["coverage"]
    print(
        f"coverage: {cov['mean_all']:.1%} of each image's tags kept on average "
        f"({cov['mean_in_scope']:.1%} of in-scope tags); {cov['images_with_no_kept_tag']:,} images with no kept tag",
        file=stream,
    )
    skipped = c["skipped"]
    if skipped:
        print("skipped or noted:", file=stream)
        log = SkipLog()
        for reason, entry in skipped.items():
            log.counts[reason] = entry["count"]
            log.examples[reason] = entry["examples"]
        for line in log.lines():
            print("  " + line, file=stream)


#: Skip reasons that mean an input was broken (exit code 1), as opposed to expected gaps
#: such as Kaggle posts outside the image subset or files that are not images.
FAILURE_MARKERS = ("malformed", "unreadable", "unusable image", "image file missing", "cut short",
                   "without a valid id", "not a JSON object", "without tags")


def failure_count(info: dict) -> int:
    return sum(
        entry["count"]
        for reason, entry in info["counts"]["skipped"].items()
        if any(m in reason for m in FAILURE_MARKERS)
    )
