"""The `animetagnet` command line: thin verbs, each in its own module, heavy imports inside `run`.

Every verb module defines `register(subparsers)`, which adds its sub-parser and sets
`func=run` on it. Exit codes: 0 success, 1 some inputs failed (reported), 2 usage or setup
error, 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__
from .errors import AnimeTagNetError

#: Modules that contribute verbs, in help order. A module that is absent is skipped, so
#: partial installs (or parts still under construction) never break the CLI.
VERB_MODULES = (
    "animetagnet.commands.tag",
    "animetagnet.datasets.cli",
    "animetagnet_train.cli",
    "animetagnet.evaluation.cli",
    "animetagnet.serve.cli",
    "animetagnet.serve.review.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="animetagnet",
        description="Danbooru-style tagging of anime illustrations.",
    )
    parser.add_argument("--version", action="version", version=f"animetagnet {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for name in VERB_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and name.startswith(exc.name):
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except AnimeTagNetError as exc:
        print(f"animetagnet: error: {exc}", file=sys.stderr)
        return int(getattr(exc, "exit_code", 2))
    except KeyboardInterrupt:
        print("animetagnet: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `animetagnet tag ... | head`
        try:
            sys.stdout = None  # type: ignore[assignment]
        finally:
            return 0
