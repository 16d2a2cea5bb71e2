"""`animetagnet tag`: tag files, folders and globs into a table, JSON, JSONL, CSV or caption files."""

from __future__ import annotations

import argparse
import sys

from ..distributed.ray_engine import add_ray_options
from ..images import DEFAULT_MAX_PIXELS

EPILOG = """examples:
  animetagnet tag image.jpg
  animetagnet tag photos/ --recursive --format txt --spaces --on-existing append
  animetagnet tag 'art/**/*.png' --format jsonl -o tags.jsonl --resume
  animetagnet tag dir/ --model SmilingWolf/wd-vit-tagger-v3 --device cuda --mcut-general

exit status: 0 all images tagged, 1 some images failed (each reported), 2 usage or setup error
"""


def add_model_options(p: argparse.ArgumentParser) -> None:
    """Options that load a model; shared with other verbs (serve, index)."""
    g = p.add_argument_group("model")
    g.add_argument("--model", "-m", default=None,
                   help="model directory (model.onnx + selected_tags.csv), a model.onnx path, or a Hugging Face "
                        "repo id; default: $ANIMETAGNET_MODEL or SmilingWolf/wd-swinv2-tagger-v3")
    g.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto uses CUDA when onnxruntime-gpu works, else CPU (the device used is always reported)")
    g.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: its own choice)")
    g.add_argument("--batch-size", type=int, default=None, help="images per inference call (default 4 on CPU, 32 on CUDA)")
    g.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help=f"refuse images with more pixels than this (decompression-bomb guard, default {DEFAULT_MAX_PIXELS:,})")


def add_selection_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("tag selection")
    g.add_argument("--general-threshold", type=float, default=None, help="threshold for general tags (default 0.35 or the model's)")
    g.add_argument("--character-threshold", type=float, default=None, help="threshold for character tags (default 0.85 or the model's)")
    g.add_argument("--threshold-preset", default=None, help="a threshold preset from the model's metadata (e.g. high_precision)")
    g.add_argument("--mcut-general", action="store_true", help="MCut (largest-gap) threshold for general tags")
    g.add_argument("--mcut-character", action="store_true", help="MCut threshold for character tags (floor 0.15)")
    g.add_argument("--top-k", type=int, default=None, help="keep at most K tags per image (best first)")


def add_format_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("tag formatting")
    g.add_argument("--spaces", action="store_true", help="write `long hair` instead of `long_hair` (kaomoji like ^_^ kept)")
    g.add_argument("--escape-parens", action="store_true", help=r"escape parentheses: `irys \(hololive\)`")
    g.add_argument("--separator", default=", ", help="between tags in captions and CSV cells (default ', ')")
    g.add_argument("--with-confidence", action="store_true", help="write tags as (tag:0.93)")
    g.add_argument("--sort", choices=("confidence", "name", "model"), default="confidence",
                   help="tag order in captions: confidence (best first), name, or model (label-file order, as kohya writes)")
    g.add_argument("--no-characters-first", dest="characters_first", action="store_false",
                   help="do not put character tags first")
    g.add_argument("--include-rating", action="store_true", help="start captions with the rating tag")
    g.add_argument("--always-first", action="append", metavar="TAGS", help="comma-separated tags to put first when present")
    g.add_argument("--exclude", action="append", metavar="TAGS", help="comma-separated tags never to output")
    g.add_argument("--replace", action="append", metavar="OLD=NEW", help="rename tags, e.g. --replace '1girl=one girl'")
    g.add_argument("--drop-implied", action="store_true",
                   help="drop tags implied by a more specific one present (long_hair when very_long_hair is there)")
    g.add_argument("--implications", metavar="CSV", help="tag implication table (antecedent,consequent rows); implies --drop-implied")


def register(sub) -> None:
    p = sub.add_parser("tag", help="tag images", description="Tag anime images with Danbooru-style tags.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="*", metavar="PATH", help="image files, directories or glob patterns")
    p.add_argument("--recursive", "-r", action="store_true", help="descend into sub-directories")
    p.add_argument("--input-list", action="append", default=[], metavar="FILE", help="a file with one image path per line")
    add_model_options(p)
    add_selection_options(p)
    add_format_options(p)
    g = p.add_argument_group("output")
    g.add_argument("--format", "-f", choices=("table", "json", "jsonl", "csv", "txt"), default=None,
                   help="table on a terminal, jsonl when piped (default); txt writes caption files")
    g.add_argument("--output", "-o", default=None, help="result file for json/jsonl/csv (default: standard output)")
    g.add_argument("--caption-extension", default=".txt", help="caption file extension for --format txt")
    g.add_argument("--output-dir", default=None, help="write caption files here, mirroring the input tree")
    g.add_argument("--on-existing", choices=("skip", "append", "prepend", "overwrite"), default="skip",
                   help="what to do with an existing caption (or -o result file); default skip: never destroy anything")
    g.add_argument("--resume", action="store_true", help="skip images already done (caption present or in the -o file)")
    g.add_argument("--exact", action="store_true", help="decode JPEGs at full size (no draft-mode downscale)")
    g.add_argument("--workers", type=int, default=None, help="decoding threads")
    g.add_argument("--engine", choices=("local", "ray"), default="local", help="local threads, or a Ray cluster")
    g.add_argument("--ray-address", default=None, help="Ray cluster address (default: start a local one)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--quiet", "-q", action="store_true", help="no progress bar, no summary")
    add_ray_options(p)
    p.set_defaults(func=run)


def build_options(args):
    """(ThresholdOptions, TagFilter, CaptionStyle) from parsed arguments."""
    from ..formatting import CaptionStyle, TagFilter, load_implications, parse_replacements, split_tag_list
    from ..postprocess import ThresholdOptions

    thresholds = ThresholdOptions(
        general=args.general_threshold,
        character=args.character_threshold,
        mcut_general=args.mcut_general,
        mcut_character=args.mcut_character,
        top_k=args.top_k,
        preset=args.threshold_preset,
    )
    thresholds.validate()
    implications = None
    if args.drop_implied or args.implications:
        implications = load_implications(args.implications)
    tag_filter = TagFilter(
        exclude=set(split_tag_list(args.exclude)),
        replacements=parse_replacements(args.replace or []),
        implications=implications,
    )
    style = CaptionStyle(
        spaces=args.spaces,
        escape_parens=args.escape_parens,
        separator=args.separator,
        with_confidence=args.with_confidence,
        sort=args.sort,
        characters_first=args.characters_first,
        include_rating=args.include_rating,
        always_first=split_tag_list(args.always_first),
    )
    return thresholds, tag_filter, style


def run(args) -> int:
    from ..errors import UsageError
    from ..inputs import collect_inputs
    from ..outputs import make_writer
    from ..progress import Progress

    if not args.paths and not args.input_list and not args.manifest:
        raise UsageError("nothing to tag: give image files, directories, glob patterns or --input-list FILE")
    fmt = args.format or ("table" if sys.stdout.isatty() and not args.output else "jsonl")
    if args.output_dir and fmt != "txt":
        raise UsageError("--output-dir is for caption files (--format txt); use -o FILE for json/jsonl/csv")
    thresholds, tag_filter, style = build_options(args)
    found = collect_inputs(args.paths, recursive=args.recursive, list_files=args.input_list)
    if args.manifest:
        from ..distributed.manifest import add_manifests

        add_manifests(found, args.manifest, args.manifest_column)
    for arg, reason in found.missing:
        print(f"animetagnet: {arg}: {reason}", file=sys.stderr)

    if args.engine == "ray":
        from ..distributed.ray_engine import run_ray_tagging

        return run_ray_tagging(args, found, fmt, thresholds, tag_filter, style)

    writer = make_writer(fmt, style=style, output=args.output, resume=args.resume, on_existing=args.on_existing,
                         caption_extension=args.caption_extension, output_dir=args.output_dir, roots=found.roots)
    todo = found.paths
    skipped = 0
    if args.resume:
        todo = [p for p in todo if not writer.is_done(p)]
        skipped = len(found.paths) - len(todo)

    from ..tagger import Tagger

    tagger = Tagger(args.model, device=args.device, threads=args.threads, batch_size=args.batch_size,
                    exact=args.exact, max_pixels=args.max_pixels)
    style.use_label_order(tagger.vocab.names)
    quiet = args.quiet
    if not quiet:
        print(f"animetagnet: {tagger.describe()}; {len(todo)} images to tag"
              + (f", {skipped} already done (--resume)" if skipped else ""), file=sys.stderr)
    progress = Progress(len(todo), enabled=False if (quiet or args.no_progress) else None)
    failed = len(found.missing)
    try:
        for result in tagger.iter_tag_files(todo, thresholds, workers=args.workers):
            error = result.error
            if error is None:
                error = writer.write(tag_filter.apply(result))
            else:
                writer.write(result)
            if error is not None:
                failed += 1
                progress.stream.write(("\n" if progress.enabled else "") + f"animetagnet: skipped {result.path}: {error}\n")
            progress.update(1, failed=int(error is not None))
    finally:
        writer.close()
        progress.close()
    if not quiet:
        extra = f"device {tagger.device}"
        kept = getattr(writer, "skipped_existing", 0)
        if kept:
            extra += f"; {kept} existing captions left as they were (--on-existing skip)"
        print(f"animetagnet: {progress.summary(extra)}", file=sys.stderr)
    return 1 if failed else 0
