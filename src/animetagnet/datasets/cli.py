"""The `prepare` and `dataset-stats` verbs: build a dataset directory, show its report."""

from __future__ import annotations

import argparse
import os
import sys

FORMAT_CHOICES = ("auto", "kaggle", "danbooru", "captions", "folders")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "prepare",
        help="build a training dataset directory (vocabulary + splits) from a tagged image collection",
        description=(
            "Read a tagged image collection, choose the tag vocabulary from training-split "
            "frequencies, and write DATASET_DIR: selected_tags.csv, train/val/test.jsonl, "
            "dataset.json, stats.json, report.md and label_frequency.png (see docs/formats.md). "
            "Sources: the Kaggle tagged-anime-illustrations layout, Danbooru metadata (JSON "
            "lines), folders of images with .txt captions, folder-per-class."
        ),
    )
    p.add_argument("source", help="source folder, or a Danbooru metadata file")
    p.add_argument("--out", required=True, metavar="DATASET_DIR", help="output directory")
    src = p.add_argument_group("source")
    src.add_argument("--format", choices=FORMAT_CHOICES, default="auto",
                     help="source format (default: detected)")
    src.add_argument("--part", choices=("images", "faces"), default="images",
                     help="Kaggle layout: the Danbooru images with metadata, or moeimouto-faces")
    src.add_argument("--images", metavar="DIR",
                     help="Danbooru metadata: folder of image files named <post id> or <md5>")
    src.add_argument("--metadata-only", action="store_true",
                     help="Danbooru metadata without images: vocabulary, counts and stats only (no split files)")
    src.add_argument("--verify", choices=("none", "header", "full"), default="header",
                     help="image check: none (exists), header (read + hash + parse header; default), "
                          "full (decode every image)")
    src.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), metavar="N",
                     help="threads for reading, hashing and checking images (default: min(4, CPUs)); "
                          "the output does not depend on it")
    src.add_argument("--tag-table", action="append", default=[], metavar="CSV",
                     help="Danbooru tag table (name,category,post_count,aliases), WD selected_tags.csv or "
                          "old,new alias rows: maps old tag names to current ones, fills unknown categories "
                          "(repeatable)")
    src.add_argument("--class-category", default="character",
                     help="folder-per-class: category of the folder tags (default character)")
    src.add_argument("--class-prefix", choices=("auto", "strip", "keep"), default="auto",
                     help="folder-per-class: strip a numeric prefix like 000_ (auto: when every folder has one)")
    cur = p.add_argument_group("vocabulary")
    cur.add_argument("--rules", choices=("frequency", "original"), default="frequency",
                     help="frequency (default): per-category thresholds; original: the original project's "
                          "rules (letters-and-digits tags only, 2,000 most common)")
    cur.add_argument("--categories", default=None,
                     help="comma-separated categories to learn (default general,character); copyright, artist "
                          "and meta go after the characters, where positional WD readers misread them (warned)")
    cur.add_argument("--min-count", action="append", metavar="N|CATEGORY=N",
                     help="minimum training images per tag (default 10); repeat per category")
    cur.add_argument("--top", action="append", metavar="N|CATEGORY=N",
                     help="keep only the N most frequent tags (overall or per category)")
    cur.add_argument("--exclude", action="append", default=[], metavar="TAG", help="never learn TAG (repeatable)")
    cur.add_argument("--keep-meta-tags", action="store_true",
                     help="do not exclude the default meta-like tags (highres, absurdres, commentary, ...)")
    cur.add_argument("--ratings", action="store_true",
                     help="learn the source's rating labels (category 9: general/sensitive/questionable/explicit); "
                          "the four rating rows are always written (WD layout), untrained without this")
    cur.add_argument("--drop-untagged", action="store_true",
                     help="leave out images with no vocabulary tag (default: keep them as negatives)")
    spl = p.add_argument_group("splits and output")
    spl.add_argument("--split", default=None, metavar="TRAIN/VAL/TEST",
                     help="split percentages by a hash of the group key (default 80/10/10); a source whose "
                          "top level is train/ and val/ (or validation/) and/or test/ folders keeps those splits "
                          "unless --resplit is given")
    spl.add_argument("--resplit", action="store_true",
                     help="hash-split a source that comes with train/val/test folders (default: keep them)")
    spl.add_argument("--overwrite", action="store_true", help="replace an existing dataset in DATASET_DIR")
    spl.add_argument("--no-plot", action="store_true", help="do not draw label_frequency.png")
    spl.add_argument("-q", "--quiet", action="store_true", help="no progress or summary on stderr")
    p.set_defaults(func=run)

    s = subparsers.add_parser("dataset-stats", help="show the report of a prepared dataset directory",
                              description="Print report.md (or stats.json with --json) of DATASET_DIR.")
    s.add_argument("dataset", metavar="DATASET_DIR")
    s.add_argument("--json", action="store_true", help="print stats.json instead of the text report")
    s.set_defaults(func=run_stats)


def build_rules(args: argparse.Namespace):
    from .curation import DEFAULT_EXCLUDE, CurationRules, parse_category_values
    from ..errors import UsageError
    from ..vocab import Category

    rules = CurationRules.original() if args.rules == "original" else CurationRules()
    if args.categories:
        cats = []
        for c in args.categories.split(","):
            c = c.strip()
            if not c:
                continue
            try:
                cat = Category.parse(c)
            except ValueError:
                raise UsageError(f"--categories: unknown category {c!r}") from None
            if cat is Category.RATING:
                raise UsageError("--categories: use --ratings for rating labels")
            cats.append(cat.label)
        rules.categories = tuple(cats)
    if args.min_count:
        rules.min_count = {**rules.min_count, **parse_category_values(args.min_count, "--min-count")}
    if args.top:
        rules.top = {**rules.top, **parse_category_values(args.top, "--top")}
    excluded = set() if args.keep_meta_tags else set(rules.exclude or ())
    if args.rules == "frequency" and not args.keep_meta_tags:
        excluded |= set(DEFAULT_EXCLUDE)
    excluded |= {e.strip() for e in args.exclude if e.strip()}
    rules.exclude = tuple(sorted(excluded))
    rules.ratings = bool(args.ratings)
    return rules


def options_from_args(args: argparse.Namespace):
    from ..errors import UsageError
    from ..vocab import Category
    from .prepare import PrepareOptions
    from .splits import parse_ratios

    try:
        Category.parse(args.class_category)
    except ValueError:
        raise UsageError(f"--class-category: unknown category {args.class_category!r}") from None
    return PrepareOptions(
        source=args.source,
        out=args.out,
        format=args.format,
        kaggle_part=args.part,
        images=args.images,
        metadata_only=args.metadata_only,
        ratios=parse_ratios(args.split or "80/10/10"),
        resplit=bool(args.resplit),
        ratios_given=args.split is not None,
        verify=args.verify,
        rules=build_rules(args),
        tag_tables=list(args.tag_table),
        class_category=args.class_category,
        class_prefix=args.class_prefix,
        drop_untagged=args.drop_untagged,
        workers=max(1, args.workers),
        overwrite=args.overwrite,
        plot=not args.no_plot,
        progress=None if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True)),
    )


def run(args: argparse.Namespace) -> int:
    import time

    from .prepare import failure_count, prepare_dataset, print_summary

    started = time.monotonic()
    info = prepare_dataset(options_from_args(args))
    failed = failure_count(info)
    for warning in info.get("selection", {}).get("warnings", []):
        print(f"animetagnet: warning: {warning}", file=sys.stderr)  # even with -q: it changes what clients read
    if not args.quiet:
        print_summary(info)
        print(f"wrote {args.out} in {time.monotonic() - started:.1f} s", file=sys.stderr)
        if failed:
            print(f"{failed:,} inputs failed (malformed, missing or unreadable); see dataset.json", file=sys.stderr)
    return 1 if failed else 0


def run_stats(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..errors import UsageError

    base = Path(args.dataset)
    name = "stats.json" if args.json else "report.md"
    try:
        text = (base / name).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"{base}: no {name}; is it a dataset directory written by `animetagnet prepare`?") from None
    sys.stdout.write(text)
    return 0
