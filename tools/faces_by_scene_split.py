#!/usr/bin/env python3
"""Lay out a faces folder by make_scenes.py's own split, for pre-training a scenes model on faces.

make_scenes.py sends the faces of each source post to train, val or test by a hash of the post
md5. A model pre-trained on single faces before it learns scenes must see only the faces that
the training scenes are made of, or the val/test scenes would show faces it was trained on.
This copies FACES_DIR/<tag>/<md5>-<k>.jpg to OUT/{train,val,test}/<tag>/ by make_scenes' own
`split_of` (loaded from the script, not restated here), so `animetagnet prepare OUT` keeps
exactly those splits. Copies, not links: `prepare` reads the folder as it is. The copy is
made in OUT.partial and renamed to OUT when complete, so an interrupted run leaves no half OUT
and a rerun starts over.

    python tools/faces_by_scene_split.py ../shared/data/faces OUT [--make-scenes ../shared/tools/make_scenes.py]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
from pathlib import Path

DEFAULT_MAKE_SCENES = Path(__file__).resolve().parents[2] / "shared" / "tools" / "make_scenes.py"


def load_split_of(path: Path):
    spec = importlib.util.spec_from_file_location("make_scenes", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.split_of


def lay_out(faces: Path, out: Path, split_of) -> dict[str, int]:
    counts = {"train": 0, "val": 0, "test": 0}
    for tag_dir in sorted(p for p in faces.iterdir() if p.is_dir()):
        for image in sorted(tag_dir.glob("*.jpg")):
            split = split_of(image.name.split("-")[0])
            target = out / split / tag_dir.name / image.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(image, target)
            counts[split] += 1
    return counts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("faces", type=Path, help="folder-per-character faces (../shared/data/faces)")
    ap.add_argument("out", type=Path, help="new folder for train/ val/ test/")
    ap.add_argument("--make-scenes", type=Path, default=DEFAULT_MAKE_SCENES, help="make_scenes.py whose split to follow")
    args = ap.parse_args()
    if not args.faces.is_dir():
        print(f"error: faces folder not found: {args.faces}", file=sys.stderr)
        return 2
    if not args.make_scenes.is_file():
        print(f"error: make_scenes.py not found: {args.make_scenes} (pass --make-scenes)", file=sys.stderr)
        return 2
    if args.out.exists() and any(args.out.iterdir()):
        print(f"error: {args.out} is not empty", file=sys.stderr)
        return 2
    split_of = load_split_of(args.make_scenes)
    partial = args.out.with_name(args.out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)  # what an interrupted run left
    counts = lay_out(args.faces, partial, split_of)
    if args.out.exists():
        args.out.rmdir()  # empty (checked above)
    partial.rename(args.out)
    print(json.dumps(counts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
