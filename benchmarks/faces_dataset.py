"""Build a dataset directory (docs/formats.md) from ../shared/data/faces: stand-in for `animetagnet prepare`.

Split rule (the same as `prepare`): group key = post md5 (file-name prefix before '-');
bucket = int(sha1(key).hexdigest(), 16) % 100; train < 80 <= val < 90 <= test.
Tags = [folder name], category 4 (character). Images are referenced by absolute path.

    python benchmarks/faces_dataset.py OUT_DIR [--data ../shared/data] [--per-tag N]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from animetagnet.vocab import Category, Tag, Vocabulary  # noqa: E402


def split_of(md5: str) -> str:
    bucket = int(hashlib.sha1(md5.encode()).hexdigest(), 16) % 100
    return "train" if bucket < 80 else "val" if bucket < 90 else "test"


def build(data_root: str | Path, out: str | Path, per_tag: int = 0, splits_min: int = 0) -> dict:
    """`per_tag` > 0 keeps only the first N images (sorted) per tag and split: tiny fixtures for tests."""
    faces = Path(data_root) / "faces"
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = sorted(p.name for p in faces.iterdir() if p.is_dir())
    records: dict[str, list[dict]] = {"train": [], "val": [], "test": []}
    kept: Counter = Counter()
    for tag in names:
        for f in sorted((faces / tag).iterdir()):
            if f.suffix.lower() not in (".jpg", ".jpeg", ".png"):
                continue
            split = split_of(f.name.split("-")[0])
            if per_tag and kept[(tag, split)] >= per_tag:
                continue
            kept[(tag, split)] += 1
            records[split].append({"id": f"{tag}/{f.stem}", "image": str(f.resolve()), "tags": [tag]})
    counts = Counter(r["tags"][0] for r in records["train"])
    vocab = Vocabulary(Tag(n, Category.CHARACTER, counts[n], i) for i, n in enumerate(names))
    vocab.write_csv(out / "selected_tags.csv")
    for split, recs in records.items():
        (out / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    info = {"source": str(faces.resolve()), "rules": "md5 sha1 bucket %100: train<80, val<90, test",
            "counts": {k: len(v) for k, v in records.items()}, "tags": len(names)}
    (out / "dataset.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--data", default=os.environ.get("ANIMETAGNET_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "data")))
    ap.add_argument("--per-tag", type=int, default=0)
    a = ap.parse_args()
    print(json.dumps(build(a.data, a.out, a.per_tag)))


if __name__ == "__main__":
    main()
