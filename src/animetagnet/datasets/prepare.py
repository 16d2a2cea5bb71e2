"""The `prepare` pipeline: source -> checked, deduplicated, split records -> vocabulary -> files.

Three streaming passes keep memory bounded by small per-image state (ids, content hashes,
split keys), never by the size of the metadata:
1. read the source, normalise tags (aliases), check and hash each image, drop duplicate
   posts, collapse byte-identical images (tags merged into the first copy), assign the split,
   and spool compact records to a temporary file in the output directory;
2. count tags on the training split and select the vocabulary;
3. write train/val/test.jsonl (tags filtered to the vocabulary), the statistics, and
   dataset.json. Output depends only on the source and the options: reruns are byte-identical.

A source that comes split (top-level train/, val/ or validation/, test/ folders) keeps its
split: each record stays in its folder's split (`--resplit` hashes instead). Its folders are
read in train, val, test order, so an image found in two of them is kept in the first (an
evaluation split never holds a training image) and reported.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from ..errors import UsageError
from ..fileio import atomic_write_text
from .curation import CurationRules, select_vocabulary
from .output import AtomicLines, check_out_not_in_source, dumps, prepare_out_dir
from .records import Record, SkipLog
from .sources import FORMATS, VERIFY_MODES, checked_records, detect_format, open_source  # noqa: F401
from .splits import DEFAULT_RATIOS, SPLITS, split_of
from .stats import DatasetStats, label_frequency, plot_long_tail, render_markdown
from .tagtable import TagTable

FORMAT_VERSION = 1
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
    resplit: bool = False  # hash-split even a source that comes with train/val/test folders
    ratios_given: bool = False  # --split was given: an error on a pre-split source without --resplit
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
    check_out_not_in_source(Path(opts.source), out)
    fmt, desc, records = open_source(opts, log, tag_ids)
    split_folders = desc.get("split_folders")
    if split_folders and opts.ratios_given:
        raise UsageError(f"{opts.source} comes split ({', '.join(f + '/' for f in split_folders.values())}): "
                         "--split applies only with --resplit")
    prepare_out_dir(out, opts.overwrite)
    say = opts.progress or (lambda msg: None)

    spool_path = out / f".prepare-spool.{os.getpid()}.jsonl"
    writers: list[AtomicLines] = []
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
            writers = [AtomicLines(out / f"{s}.jsonl") for s in SPLITS]
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
                by_split[split].write(dumps({"id": rid, "image": os.path.abspath(image), "tags": kept, "group": group}))
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
        stats_doc: dict = {"split_mode": "predefined" if split_folders else "hash", "splits": stats.summary(),
                           "label_frequency": label_frequency(train_counts, vnames)}
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
            "split": _split_doc(fmt, opts, split_folders),
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


def _split_doc(fmt: str, opts: PrepareOptions, folders: dict | None) -> dict:
    if folders:
        return {
            "mode": "predefined",
            "folders": folders,
            "rule": "each image keeps the split of its top-level folder; an image (by content) in two "
                    "folders is kept in the first of train, val, test; --resplit hashes instead",
        }
    return {
        "mode": "hash",
        "ratios": dict(zip(SPLITS, opts.ratios)),
        "function": SPLIT_FUNCTION,
        "group_key": _group_key_doc(fmt, opts.kaggle_part),
    }


def _group_key_doc(fmt: str, part: str) -> str:
    if fmt in ("danbooru",) or (fmt == "kaggle" and part == "images"):
        return "Danbooru parent_id when non-zero, else the post id (a post and its children share a split)"
    return "the md5 of a file named <md5>-<k>.<ext> (all crops of one post), else the file's path below the source"


def _pass_read(opts, table: TagTable, records: Iterator[Record], log: SkipLog, spool_path: Path, say):
    """Pass 1: check, deduplicate, split and spool. Returns counts, merges and categories."""
    # Numeric ids are stored as ints: a third of the memory of the strings at 300k+ posts.
    seen_ids: set = set()
    first_by_content: dict[bytes, int] = {}
    split_by_index: list[str] = []  # split of each spooled record, to tell cross-split copies apart
    split_of_group: dict[str, str] = {}  # predefined splits: where each group was first seen
    merged: dict[int, list[list]] = {}
    categories: dict[str, int] = {}
    n_read = n_spooled = 0
    started = time.monotonic()
    with open(spool_path, "w", encoding="utf-8", newline="\n") as spool:
        # No file work to share out without images or checks: threads would only add overhead.
        workers = 1 if opts.metadata_only or opts.verify == "none" else opts.workers
        for rec, checked in checked_records(records, opts.verify, workers):
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
            split = rec.split or split_of(rec.group, opts.ratios)
            if digest is not None:
                first = first_by_content.get(digest)
                if first is not None:
                    if rec.split is not None and split_by_index[first] != split:
                        log.add(f"same image in two split folders (kept in {split_by_index[first]}, "
                                f"the {split} copy dropped; tags merged)", rec.id)
                    else:
                        log.add("byte-identical image collapsed into its first copy (tags merged)", rec.id)
                    merged.setdefault(first, []).extend(tags)
                    continue
                first_by_content[digest] = n_spooled
            if rec.split is not None:
                seen_in = split_of_group.setdefault(rec.group, split)
                if seen_in != split:
                    log.add(f"source post in two split folders ({seen_in} and {split}; kept as given)", rec.id)
            split_by_index.append(split)
            spool.write(dumps([rec.id, rec.group, rec.image, split, tags, rec.rating]) + "\n")
            n_spooled += 1
    say(f"{n_read:,} records read, {n_spooled:,} kept")
    return n_read, n_spooled, merged, categories


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
