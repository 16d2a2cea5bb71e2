"""The `serve`, `index` and `search` verbs: run the HTTP service, build and query the gallery database."""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys

SERVE_EPILOG = """examples:
  animetagnet serve --model models/wd-swinv2-tagger-v3
  animetagnet serve --model M --gallery art.db          # also the gallery page at /gallery
  curl -F files=@image.jpg 'http://127.0.0.1:8000/v1/tag?general_threshold=0.5'

The web page is at http://HOST:PORT/, the gallery at /gallery, the API reference at /api
(offline) and /docs (Swagger UI, loads its scripts from a CDN). The service has no
authentication: keep it on 127.0.0.1 unless a proxy in front of it controls access.
"""

INDEX_EPILOG = """examples:
  animetagnet index ~/pictures --db art.db              # again later: only new or changed files
  animetagnet index art/ --db art.db --general-threshold 0.5
"""

SEARCH_EPILOG = """query syntax (all terms must hold):
  1girl blue_eyes       tags selected at index time
  -smile                without the tag
  long_hair:>0.8        confidence above 0.8 (also >=, <, <=); an absent tag counts as 0
  *_hair                wildcard
  rating:general        or rating:g,s ; -rating:e excludes
examples:
  animetagnet search --db art.db "1girl blue_eyes -smile rating:general"
  animetagnet search --db art.db "hatsune_miku:>0.9" --format json
  animetagnet search --db art.db -- "-smile"           # a query starting with '-' goes after --
"""


def register(sub) -> None:
    from ..options import ModelOptions, ThresholdOptions

    p = sub.add_parser("serve", help="HTTP service and web page for tagging (and the gallery)",
                       description="Tag uploads over HTTP: a JSON API (reference at /api, OpenAPI at /openapi.json) and a web page at /.",
                       epilog=SERVE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    ModelOptions.add_arguments(p, skip=("workers",))  # uploads are decoded by --decode-workers
    g = p.add_argument_group("service")
    g.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    g.add_argument("--port", type=int, default=8000)
    g.add_argument("--max-wait-ms", type=float, default=5.0,
                   help="how long the first waiting image waits for others to share its batch (default 5)")
    g.add_argument("--gallery", metavar="DB", default=None, help="serve this gallery database (from `index`) at /gallery")
    g.add_argument("--max-upload-mb", type=float, default=20.0, help="largest accepted file (default 20 MiB)")
    g.add_argument("--max-request-mb", type=float, default=64.0, help="largest request body (default 64 MiB)")
    g.add_argument("--max-files", type=int, default=32, help="most images in one request (default 32)")
    g.add_argument("--request-timeout", type=float, default=30.0,
                   help="seconds an image may wait for the model before the request fails with 503 (default 30)")
    g.add_argument("--decode-workers", type=int, default=2, help="threads decoding uploads (default 2)")
    g.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    p.set_defaults(func=run_serve)

    p = sub.add_parser("index", help="tag a folder into a searchable gallery database (incremental)",
                       description="Tag the images under DIR into an SQLite database; a second run only tags "
                                   "new or changed files and forgets deleted ones.",
                       epilog=INDEX_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--db", required=True, metavar="FILE", help="the SQLite database (created if absent)")
    p.add_argument("--no-recursive", dest="recursive", action="store_false", help="only DIR itself, no sub-folders")
    p.add_argument("--keep-missing", dest="prune", action="store_false",
                   help="keep entries of files that are no longer under DIR")
    p.add_argument("--floor", type=float, default=None,
                   help="store every tag scoring at least this (default 0.1), for confidence searches")
    ModelOptions.add_arguments(p)
    ThresholdOptions.add_arguments(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar, no summary")
    p.set_defaults(func=run_index)

    p = sub.add_parser("search", help="search a gallery database with a booru-style query",
                       epilog=SEARCH_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("query", nargs="?", default="", help="e.g. '1girl blue_eyes -smile rating:general'")
    p.add_argument("--db", required=True, metavar="FILE")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--offset", type=int, default=0)
    p.add_argument("--format", "-f", choices=("paths", "table", "json"), default=None,
                   help="paths (one a line) when piped, table on a terminal, or json")
    p.add_argument("--counts", type=int, default=0, metavar="N", help="also print the N most common tags of the matches")
    p.set_defaults(func=run_search)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run_serve(args) -> int:
    from ..errors import UsageError

    try:
        import uvicorn
    except ImportError:
        raise UsageError("the web service needs the 'serve' extra (uvicorn is missing): "
                         "pip install 'animetagnet[serve]'") from None
    from .app import create_app
    from .service import MiB, Limits

    if args.max_wait_ms < 0 or args.max_files < 1 or args.max_upload_mb <= 0 or args.request_timeout <= 0:
        raise UsageError("--max-wait-ms must be >= 0; --max-files, --max-upload-mb and --request-timeout > 0")
    from ..options import ModelOptions

    tagger = ModelOptions.from_args(args).load()
    limits = Limits(max_request_bytes=int(args.max_request_mb * MiB), max_file_bytes=int(args.max_upload_mb * MiB),
                    max_files=args.max_files, request_timeout=args.request_timeout)
    app = create_app(tagger, max_wait_ms=args.max_wait_ms, limits=limits, gallery_db=args.gallery,
                     decode_workers=args.decode_workers)
    print(f"animetagnet: {tagger.describe()}; micro-batches of up to {tagger.batch_size}, "
          f"waiting at most {args.max_wait_ms:g} ms", file=sys.stderr)
    if not _is_loopback(args.host):
        print(f"animetagnet: warning: listening on {args.host}: the service has no authentication; anyone who can "
              "reach this address can use it", file=sys.stderr)
    print(f"animetagnet: web page http://{args.host}:{args.port}/ , API reference http://{args.host}:{args.port}/api",
          file=sys.stderr)
    # One process, one model: no uvicorn workers (each would load its own copy of the model).
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, timeout_keep_alive=5)
    return 0


def run_index(args) -> int:
    from ..errors import UsageError
    from ..options import ModelOptions, ThresholdOptions
    from ..progress import Progress
    from .gallery import DEFAULT_FLOOR, index_folder

    floor = DEFAULT_FLOOR if args.floor is None else args.floor
    if not 0.0 < floor <= 1.0:
        raise UsageError(f"--floor must be in (0, 1], got {floor}")
    thresholds = ThresholdOptions.from_args(args)
    model = ModelOptions.from_args(args)
    tagger = model.load()
    quiet = args.quiet
    if not quiet:
        print(f"animetagnet: {tagger.describe()}; indexing {args.dir} into {args.db}", file=sys.stderr)

    def progress(total: int) -> Progress:
        return Progress(total, enabled=False if (quiet or args.no_progress) else None, label="indexing")

    report = index_folder(args.db, args.dir, tagger, thresholds, floor=floor, recursive=args.recursive,
                          prune=args.prune, workers=model.workers, progress_factory=progress)
    for path, reason in report.errors:
        print(f"animetagnet: skipped {path}: {reason}", file=sys.stderr)
    if not quiet:
        r = report
        print(f"animetagnet: {r.seen} images seen: {r.tagged} tagged, {r.unchanged} unchanged, "
              f"{r.copied} duplicates (tags copied), {r.failed} failed, {r.removed} removed from the index",
              file=sys.stderr)
    return 1 if report.failed else 0


def run_search(args) -> int:
    from .gallery import Gallery

    if args.limit < 1 or args.offset < 0:
        from ..errors import UsageError

        raise UsageError("--limit must be >= 1 and --offset >= 0")
    res = Gallery(args.db).search(args.query, limit=args.limit, offset=args.offset, counts=args.counts)
    fmt = args.format or ("table" if sys.stdout.isatty() else "paths")
    out = sys.stdout
    if fmt == "json":
        json.dump(res.to_dict(), out, ensure_ascii=False, indent=2)
        out.write("\n")
        return 0
    if fmt == "paths":
        for it in res.items:
            out.write(it["path"] + "\n")
    else:
        for it in res.items:
            tags = ", ".join(t["tag"] for t in it["tags"][:8])
            out.write(f"{it['path']}\t{it['rating'] or '-'}\t{tags}\n")
    if fmt == "table" or args.counts:
        print(f"{res.total} matching image(s)" + (f", showing {len(res.items)}" if res.total > len(res.items) else ""),
              file=sys.stderr)
    for c in res.counts:
        print(f"  {c['count']:6d}  {c['tag']} ({c['category']})", file=sys.stderr)
    return 0
