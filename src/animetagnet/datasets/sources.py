"""Reading a source: format detection, the record reader of each format, image checks."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from ..errors import ImageError, UsageError
from ..images import is_image_path, load_image, open_image
from ..vocab import Category
from . import kaggle
from .danbooru import is_metadata_file, looks_like_metadata
from .folders import iter_captioned, iter_class_folders, walk_sorted
from .records import Record, SkipLog

if TYPE_CHECKING:
    from .prepare import PrepareOptions

FORMATS = ("kaggle", "danbooru", "captions", "folders")
VERIFY_MODES = ("none", "header", "full")
#: Folder names a pre-split source uses at its top level, for each of our splits.
SPLIT_FOLDER_NAMES = {"train": ("train",), "val": ("val", "validation"), "test": ("test",)}
#: Formats whose records are plain files, so split folders can sit above them.
SPLITTABLE_FORMATS = ("captions", "folders")


def split_folders(source: Path) -> dict[str, str] | None:
    """{split: folder name} when the top level of `source` is train/ plus val/ (or validation/)
    and/or test/, and nothing else but files; None otherwise (the source is split by hash).

    Any other folder beside them (say a class named `train` among 20 others) means the
    names are not split folders, so such a source keeps the hash split.
    """
    if not source.is_dir():
        return None
    dirs = sorted(e.name for e in os.scandir(source) if e.is_dir() and not e.name.startswith("."))
    by_name = {name: split for split, names in SPLIT_FOLDER_NAMES.items() for name in names}
    if not dirs or "train" not in dirs or any(d not in by_name for d in dirs) or len(dirs) < 2:
        return None
    found: dict[str, str] = {}
    for d in dirs:
        split = by_name[d]
        if split in found:
            raise UsageError(f"{source}: both {found[split]}/ and {d}/ are there; keep one validation folder")
        found[split] = d
    return {s: found[s] for s in SPLIT_FOLDER_NAMES if s in found}


def _in_split_folders(folders: dict[str, str], source: Path, read) -> Iterator[Record]:
    """Records of each split folder in train, val, test order, with the folder's split and ids
    prefixed by the folder name (so `train/0001` and `test/0001` stay distinct)."""
    from dataclasses import replace

    for split, folder in folders.items():
        for rec in read(source / folder):
            # A file that is its own group (no <md5>- prefix) keeps id == group, prefixed alike.
            group = f"{folder}/{rec.group}" if rec.group == rec.id else rec.group
            yield replace(rec, id=f"{folder}/{rec.id}", group=group, split=split)


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

def open_source(opts: "PrepareOptions", log: SkipLog, tag_ids: dict[str, int]) -> tuple[str, dict, Iterator[Record]]:
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
    if fmt in SPLITTABLE_FORMATS:
        folders = split_folders(source)
        if folders and not opts.resplit:
            desc["split_folders"] = folders
        else:
            folders = None
        if fmt == "folders":
            desc["class_category"] = Category(class_cat).label
            desc["class_prefix"] = opts.class_prefix

            def read(root: Path) -> Iterator[Record]:
                return iter_class_folders(root, class_cat, log, opts.class_prefix, shown_from=source)
        else:
            def read(root: Path) -> Iterator[Record]:
                return iter_captioned(root, log, shown_from=source)
        return fmt, desc, (_in_split_folders(folders, source, read) if folders else read(source))
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

def check_image(path: str, verify: str) -> tuple[bytes | None, str | None]:
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


def checked_records(records: Iterator[Record], verify: str, workers: int, chunk: int = 256):
    """(record, (digest, problem)) in source order; image checks run on `workers` threads.

    File reads, md5 and Pillow's decoders release the GIL, so threads use both cores.
    Records are taken `chunk` at a time, so memory stays bounded and order deterministic.
    """
    def check(rec: Record):
        return check_image(rec.image, verify) if rec.image is not None else (None, None)

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
