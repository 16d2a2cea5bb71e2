"""The `review` and `review-report` verbs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REVIEW_EPILOG = """examples:
  animetagnet review dataset/ --model models/mine          # then open http://127.0.0.1:8000/review
  animetagnet review dataset/ --port 8010 --db /tmp/review.db --general-threshold 0.5

Keys on the page: j/k or arrows next/previous, a accept, x reject, c confirm the caption,
u (or Ctrl+Z) undo, Shift+U (or Ctrl+Y) redo, / add a tag, Esc back to the grid, ? help.
The journal (every edit, undoable) lives in DIR/.animetagnet-review.db unless --db is given.
The server has no authentication: keep it on 127.0.0.1.
"""

REPORT_EPILOG = """examples:
  animetagnet review-report dataset/ --model models/mine --out models/mine-reviewed
  animetagnet review-report dataset/ --model models/mine --json report.json   # figures only
"""


def register(sub) -> None:
    from ...options import ModelOptions, ServeOptions, ThresholdOptions

    p = sub.add_parser("review", help="review and correct a folder's captions in the browser (journaled, undoable)",
                       description="A local web page over DIR (images with caption files, as `tag --format txt` "
                                   "writes them): the captions beside the model's suggestions, filters, bulk edits, "
                                   "tag frequencies; every edit journaled with undo/redo, files written atomically, "
                                   "a caption changed on disk never overwritten.",
                       epilog=REVIEW_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--db", metavar="FILE", help="the review journal (default DIR/.animetagnet-review.db)")
    p.add_argument("--caption-extension", default=".txt", metavar="EXT",
                   help="extension of new caption files (existing .txt/.caption files are used as they are)")
    p.add_argument("--tag-table", metavar="CSV", default=None,
                   help="Danbooru tag table for autocompletion (default $ANIMETAGNET_DATA/tags/danbooru_tags.csv)")
    p.add_argument("--no-suggestions", dest="suggest", action="store_false",
                   help="do not run the model over the folder (cached suggestions are still shown)")
    ModelOptions.add_arguments(p, skip=("workers",))
    ThresholdOptions.add_arguments(p, only=("general", "character", "preset"))
    ServeOptions.add_arguments(p, only=("host", "port", "log_level", "allowed_host", "allowed_origin"))
    p.set_defaults(func=run_review)

    r = sub.add_parser("review-report", help="precision/recall of the model's suggestions as reviewed; re-calibrated thresholds",
                       description="Per-tag precision and recall of the model's suggestions on the images reviewed in "
                                   "DIR (final captions as truth, accept/reject verdicts counted), and thresholds "
                                   "re-calibrated from those judgements, written into a copy of the model.",
                       epilog=REPORT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("dir", metavar="DIR")
    r.add_argument("--db", metavar="FILE", help="the review journal (default DIR/.animetagnet-review.db)")
    r.add_argument("--out", metavar="MODEL_DIR", help="write a copy of the model with the re-calibrated thresholds here")
    r.add_argument("--in-place", action="store_true", help="write the thresholds into --model's own animetagnet.json")
    r.add_argument("--json", metavar="FILE", help="write the whole report as JSON")
    r.add_argument("--min-support", type=int, default=None, metavar="N",
                   help="judged positives a tag needs for its own threshold (default 10; fewer: its category's)")
    r.add_argument("--top", type=int, default=30, metavar="N", help="tags shown in the table")
    ModelOptions.add_arguments(r, skip=("workers",))
    ThresholdOptions.add_arguments(r, only=("general", "character", "preset"))
    r.set_defaults(func=run_report)


def _session(args, suggest: bool):
    from ...options import ModelOptions, ThresholdOptions
    from .session import ReviewSession

    tagger = ModelOptions.from_args(args).load()
    thresholds = ThresholdOptions.from_args(args)
    session = ReviewSession(args.dir, tagger, db=args.db, thresholds=thresholds,
                            caption_extension=getattr(args, "caption_extension", ".txt"),
                            tag_table=getattr(args, "tag_table", None), suggest=suggest)
    return tagger, session


def run_review(args) -> int:
    from ...errors import UsageError

    try:
        import uvicorn
    except ImportError:
        raise UsageError("review needs the 'serve' extra (uvicorn is missing): pip install 'animetagnet[serve]'") from None
    from ...options import ServeOptions
    from ..cli import _is_loopback
    from ..connections import fit_connections, raise_file_limit, server_config
    from ..security import check_origins, trusted_hosts
    from .routes import create_review_app

    opts = ServeOptions.from_args(args)
    check_origins(opts.allowed_origin)
    connections, lowered = fit_connections(opts.connection_limits(), raise_file_limit())
    tagger, session = _session(args, args.suggest)
    s = session.scan_report
    print(f"animetagnet: {tagger.describe()}; {s['images']} images in {session.root} ({s['missing_captions']} without "
          f"caption, {s['unreadable_captions']} unreadable captions, {s['reloaded']} captions changed on disk since "
          f"the last session); journal {session.db_path}", file=sys.stderr)
    if lowered:
        print(f"animetagnet: warning: {lowered}", file=sys.stderr)
    if not _is_loopback(opts.host):
        print(f"animetagnet: warning: listening on {opts.host}: the review server has no authentication and "
              "writes into the folder", file=sys.stderr)
    # The tagging service's app: the same limits, error shape, trusted hosts and same-origin writes.
    app = create_review_app(session, tagger, limits=opts.limits(),
                            allowed_hosts=trusted_hosts(opts.host, opts.allowed_host),
                            allowed_origins=opts.allowed_origin)
    print(f"animetagnet: review page http://{opts.host}:{opts.port}/review", file=sys.stderr)
    try:
        uvicorn.Server(server_config(app, host=opts.host, port=opts.port, limits=connections,
                                     log_level=opts.log_level)).run()
    finally:
        session.close()
    return 0


def run_report(args) -> int:
    from ...errors import UsageError
    from ...evaluation.calibration import DEFAULT_MIN_SUPPORT
    from .report import build_report, format_table, write_model

    if args.out and args.in_place:
        raise UsageError("--out and --in-place exclude each other")
    if args.json:  # an unwritable --json fails now, not after the report is built
        from ...outputs import probe_folder

        if Path(args.json).is_dir():
            raise UsageError(f"--json {args.json} is a directory")
        probe_folder(Path(args.json))
    tagger, session = _session(args, suggest=False)
    if args.out:  # refuse a bad target before any work
        out = Path(args.out)
        if out.resolve() == tagger.bundle.path.resolve():
            session.close()
            raise UsageError("--out is the model directory itself; pass --in-place to overwrite its thresholds")
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            session.close()
            raise UsageError(f"{out} exists and is not an empty directory")
    try:
        report = build_report(session, min_support=DEFAULT_MIN_SUPPORT if args.min_support is None else args.min_support)
    finally:
        session.close()
    print(format_table(report, args.top))
    if args.json:
        from ...fileio import atomic_write_json

        try:  # probed above, but the disk can still fill up
            atomic_write_json(args.json, report)
        except OSError as exc:
            raise UsageError(f"cannot write {args.json}: {exc.strerror or exc}") from None
    if args.out or args.in_place:
        path = write_model(report, tagger.bundle.path, Path(args.out) if args.out else None, in_place=args.in_place)
        print(f"re-calibrated thresholds (preset 'balanced' is the default) written to {path}", file=sys.stderr)
    elif not args.json:
        print("(pass --out MODEL_DIR to write a copy of the model with these thresholds)", file=sys.stderr)
    return 0
