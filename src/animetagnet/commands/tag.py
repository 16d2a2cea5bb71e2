"""`animetagnet tag`: tag files, folders and globs into a table, JSON, JSONL, CSV or caption files."""

from __future__ import annotations

import argparse
import sys

from ..options import OutputOptions, RayOptions, TagOptions

EPILOG = """examples:
  animetagnet tag image.jpg
  animetagnet tag photos/ --recursive --format txt --spaces --on-existing append
  animetagnet tag 'art/**/*.png' --format jsonl -o tags.jsonl --resume
  animetagnet tag dir/ --model SmilingWolf/wd-vit-tagger-v3 --device cuda --mcut-general

exit status: 0 all images tagged, 1 some images failed (each reported), 2 usage or setup error
"""


def register(sub) -> None:
    p = sub.add_parser("tag", help="tag images", description="Tag anime images with Danbooru-style tags.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="*", metavar="PATH", help="image files, directories or glob patterns")
    p.add_argument("--recursive", "-r", action="store_true", help="descend into sub-directories")
    p.add_argument("--input-list", action="append", default=[], metavar="FILE", help="a file with one image path per line")
    p.add_argument("--manifest", action="append", default=[], metavar="URL",
                   help="JSONL, Parquet or text manifest of image paths, local or any fsspec URL")
    p.add_argument("--manifest-column", default=None, metavar="NAME",
                   help="manifest column with the paths (default: path, image, file)")
    TagOptions.add_arguments(p)
    OutputOptions.add_arguments(p)
    g = p.add_argument_group("run")
    g.add_argument("--engine", choices=("local", "ray"), default="local", help="local threads, or a Ray cluster")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--quiet", "-q", action="store_true", help="no progress bar, no summary")
    RayOptions.add_arguments(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..engine import TagJob
    from ..errors import UsageError
    from ..inputs import InputSet, collect_inputs

    if not args.paths and not args.input_list and not args.manifest:
        raise UsageError("nothing to tag: give image files, directories, glob patterns or --input-list FILE")
    job = TagJob.from_args(args, InputSet())  # bad options fail before any file is listed
    job.inputs = found = collect_inputs(args.paths, recursive=args.recursive, list_files=args.input_list)
    if args.manifest:
        from ..distributed.manifest import add_manifests

        add_manifests(found, args.manifest, args.manifest_column)
    for arg, reason in found.missing:
        print(f"animetagnet: {arg}: {reason}", file=sys.stderr)
    if args.engine == "ray":
        from ..distributed.ray_engine import run as run_engine
    else:
        from ..engine import run as run_engine
    summary = run_engine(job)
    return 1 if summary["failed"] or found.missing else 0
