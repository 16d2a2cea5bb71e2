#!/usr/bin/env python3
"""Which faces does a scenes model miss? Recall by pasted face size and "all found" by scene size.

make_scenes.py writes captions, not boxes. This replays its random stream for one split (the
same calls in the same order, without decoding or pasting pixels) to recover each scene's
pasted faces and their sizes, and refuses to report anything unless the replayed tag sets equal
every caption on disk (so a change in make_scenes cannot silently skew the figures). Then it
runs the model (onnxruntime, THE preprocessing) with its character threshold (the `balanced`
preset unless --threshold) and prints JSON: recall per size bin, share of scenes where every
character was found, by number of characters. Use val for diagnosis; test only for a final figure.

    python benchmarks/scenes_recall_by_size.py --scenes SCENES_DIR --model MODEL_DIR [--split val]
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import os
import random
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from animetagnet.tagger import Tagger  # noqa: E402

SHARED = Path(os.environ.get("ANIMETAGNET_DATA", ROOT.parent / "shared" / "data")).parent
BINS = ((56, 72), (72, 88), (88, 104), (104, 129))


def load_make_scenes(path: Path):
    spec = importlib.util.spec_from_file_location("make_scenes", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def replay(ms, faces_dir: str, backs_dir: str, split: str, count: int, seed: int) -> list[list[tuple[str, int]]]:
    """[(tag, side px)] per scene, from make_scenes' own functions and random stream."""
    backs = sorted(glob.glob(os.path.join(backs_dir, "**", "*.jpg"), recursive=True))
    pool = [(tag, p) for tag in sorted(os.listdir(faces_dir))
            for p in sorted(glob.glob(os.path.join(faces_dir, tag, "*.jpg")))
            if ms.split_of(os.path.basename(p).split("-")[0]) == split]
    rng = random.Random(f"{seed}-{split}")
    scenes = []
    for _ in range(count):
        ms.background(rng, backs)  # consumes the background's draws
        boxes, placed = [], []
        for _ in range(rng.choices(ms.COUNTS, ms.COUNT_WEIGHTS)[0]):
            for _try in range(30):
                s = rng.randint(56, 128)
                x, y = rng.randint(0, ms.SIZE - s), rng.randint(0, ms.SIZE - s)
                box = (x, y, x + s, y + s)
                if all(ms.overlap(box, b) < 0.15 for b in boxes):
                    break
            else:
                continue
            tag, _path = rng.choice(pool)
            rng.random()  # the mirror draw
            boxes.append(box)
            placed.append((tag, s))
        scenes.append(placed)
    return scenes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenes", required=True, help="make_scenes.py output (has scenes.json)")
    ap.add_argument("--model", required=True)
    ap.add_argument("--split", default="val")
    ap.add_argument("--threshold", type=float, default=None, help="character threshold (default: the model's balanced preset)")
    ap.add_argument("--make-scenes", default=str(SHARED / "tools" / "make_scenes.py"))
    ap.add_argument("--faces", default=str(SHARED / "data" / "faces"))
    ap.add_argument("--backgrounds", default=str(SHARED / "data" / "danbooru-512px"))
    a = ap.parse_args()

    info = json.loads((Path(a.scenes) / "scenes.json").read_text())
    count = info["splits"][a.split]["scenes"]
    scenes = replay(load_make_scenes(Path(a.make_scenes)), a.faces, a.backgrounds, a.split, count, info["seed"])
    folder = Path(a.scenes) / a.split
    for i, placed in enumerate(scenes):
        caption = (folder / f"{i:06d}.txt").read_text(encoding="utf-8")
        if sorted({t for t, _ in placed}) != sorted(x.strip() for x in caption.split(",") if x.strip()):
            print(f"replay differs from {folder / f'{i:06d}.txt'}: make_scenes changed; figures refused", file=sys.stderr)
            return 2

    tagger = Tagger(a.model, device="cpu")
    names = tagger.vocab.names
    index = {n: i for i, n in enumerate(names)}
    paths = [str(folder / f"{i:06d}.jpg") for i in range(count)]
    rows = []
    for loaded, p in tagger.iter_probabilities(paths, workers=1):
        if loaded.error is not None:
            print(f"{loaded.path}: {loaded.error}", file=sys.stderr)
            return 2
        rows.append(p)
    probs = np.stack(rows)
    thr = a.threshold
    if thr is None:
        meta = json.loads((Path(a.model) / "animetagnet.json").read_text())
        thr = meta["thresholds"]["presets"]["balanced"]["categories"].get("character", 0.5)
    hits = {b: [0, 0] for b in BINS}
    found = {}
    for i, placed in enumerate(scenes):
        for tag, side in placed:
            b = next(b for b in BINS if b[0] <= side < b[1])
            hits[b][1] += 1
            hits[b][0] += bool(probs[i, index[tag]] >= thr)
        n = len({t for t, _ in placed})
        f = found.setdefault(n, [0, 0])
        f[1] += 1
        f[0] += all(probs[i, index[t]] >= thr for t, _ in placed)
    print(json.dumps({
        "model": a.model, "split": a.split, "scenes": count, "character_threshold": thr,
        "recall_by_face_px_in_256": {f"{lo}-{hi - 1}": {"recall": round(h / n, 4), "faces": n}
                                     for (lo, hi), (h, n) in hits.items()},
        "all_found_by_characters": {str(k): {"share": round(h / n, 4), "scenes": n} for k, (h, n) in sorted(found.items())},
    }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
