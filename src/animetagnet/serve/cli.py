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
    from ..options import IndexOptions, ModelOptions, ServeOptions, ThresholdOptions

    p = sub.add_parser("serve", help="HTTP service and web page for tagging (and the gallery)",
                       description="Tag uploads over HTTP: a JSON API (reference at /api, OpenAPI at /openapi.json) and a web page at /.",
                       epilog=SERVE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    ModelOptions.add_arguments(p, skip=("workers",))  # uploads are decoded by --decode-workers
    ServeOptions.add_arguments(p)
    p.set_defaults(func=run_serve)

    p = sub.add_parser("index", help="tag a folder into a searchable gallery database (incremental)",
                       description="Tag the images under DIR into an SQLite database; a second run only tags "
                                   "new or changed files and forgets deleted ones.",
                       epilog=INDEX_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--db", required=True, metavar="FILE", help="the SQLite database (created if absent)")
    IndexOptions.add_arguments(p)
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
    from ..options import ModelOptions, ServeOptions
    from .app import create_app
    from .connections import fit_connections, raise_file_limit, server_config
    from .security import check_origins, trusted_hosts

    opts = ServeOptions.from_args(args)
    check_origins(opts.allowed_origin)
    connections, lowered = fit_connections(opts.connection_limits(), raise_file_limit())
    tagger = ModelOptions.from_args(args).load()
    hosts = trusted_hosts(opts.host, opts.allowed_host)
    app = create_app(tagger, max_wait_ms=opts.max_wait_ms, limits=opts.limits(), gallery_db=opts.gallery,
                     decode_workers=opts.decode_workers, allowed_hosts=hosts, allowed_origins=opts.allowed_origin)
    print(f"animetagnet: {tagger.describe()}; micro-batches of up to {tagger.batch_size}, "
          f"waiting at most {opts.max_wait_ms:g} ms", file=sys.stderr)
    if lowered:
        print(f"animetagnet: warning: {lowered}", file=sys.stderr)
    if not _is_loopback(opts.host):
        print(f"animetagnet: warning: listening on {opts.host}: the service has no authentication; anyone who can "
              "reach this address can use it", file=sys.stderr)
        if not opts.allowed_host:
            print("animetagnet: requests must name localhost, 127.0.0.1, ::1 or " + opts.host + " in their Host "
                  "header; add --allowed-host NAME for the name clients use", file=sys.stderr)
    if "*" in opts.allowed_host:
        print("animetagnet: warning: --allowed-host '*' accepts any Host header: a web page can reach this service "
              "through DNS rebinding; name the hosts instead unless a proxy in front checks Host", file=sys.stderr)
    if "*" in opts.allowed_origin:
        print("animetagnet: warning: --allowed-origin '*' lets any web page a user visits upload to this service "
              "from that user's browser", file=sys.stderr)
    print(f"animetagnet: web page http://{opts.host}:{opts.port}/ , API reference http://{opts.host}:{opts.port}/api",
          file=sys.stderr)
    # One process, one model: no uvicorn workers (each would load its own copy of the model).
    uvicorn.Server(server_config(app, host=opts.host, port=opts.port, limits=connections,
                                 log_level=opts.log_level)).run()
    return 0


def run_index(args) -> int:
    from ..options import IndexOptions, ModelOptions, ThresholdOptions
    from ..progress import Progress
    from .gallery import DEFAULT_FLOOR, index_folder

    opts = IndexOptions.from_args(args)
    floor = DEFAULT_FLOOR if opts.floor is None else opts.floor
    thresholds = ThresholdOptions.from_args(args)
    model = ModelOptions.from_args(args)
    tagger = model.load()
    quiet = args.quiet
    if not quiet:
        print(f"animetagnet: {tagger.describe()}; indexing {args.dir} into {args.db}", file=sys.stderr)

    def progress(total: int) -> Progress:
        return Progress(total, enabled=False if (quiet or args.no_progress) else None, label="indexing")

    report = index_folder(args.db, args.dir, tagger, thresholds, floor=floor, recursive=opts.recursive,
                          prune=not opts.keep_missing, workers=model.workers, progress_factory=progress,
                          allow_symlinks=opts.allow_symlinks)
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
