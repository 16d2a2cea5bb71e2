"""Generate a Danbooru2017-format metadata file (JSON lines) for ingestion benchmarks.

Tags are drawn from the real Danbooru tag table (../shared/data/tags/danbooru_tags.csv),
weighted by their real post counts, so the label distribution has the real long tail;
every other field copies the real record `danbooru2017_format_record_263162.jsonl`
(all scalars strings, as in the dump). About 1 in 1,000 lines is malformed and 1 in 1,000
repeats an earlier post, as real dumps concatenated by hand do.

    python benchmarks/gen_metadata.py --posts 300000 --out /tmp/meta300k/201700.json
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import sys
import zlib
from pathlib import Path

import numpy as np

DATA = Path(os.environ.get("ANIMETAGNET_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
#: (category, mean tags per post) roughly as on Danbooru2017 posts.
PER_POST = {0: 26, 4: 1.2, 3: 1.0, 1: 1.0, 5: 2.0}


def load_table() -> dict[int, tuple[list[str], np.ndarray]]:
    by_cat: dict[int, tuple[list[str], list[int]]] = {}
    with open(DATA / "tags" / "danbooru_tags.csv", newline="", encoding="utf-8") as fh:
        for row in csv.reader(fh):
            names, counts = by_cat.setdefault(int(row[1]), ([], []))
            names.append(row[0])
            counts.append(int(row[2]))
    out = {}
    for cat, (names, counts) in by_cat.items():
        w = np.asarray(counts, dtype=np.float64)
        out[cat] = (names, w / w.sum())
    return out


def generate(n_posts: int, out: Path, start_id: int = 1_000_000, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    table = load_table()
    template = json.loads((DATA / "danbooru-metadata" / "danbooru2017_format_record_263162.jsonl").read_text().splitlines()[0])
    out.parent.mkdir(parents=True, exist_ok=True)
    written = malformed = repeated = 0
    chunk = 10_000
    with open(out, "w", encoding="utf-8") as fh:
        for base in range(0, n_posts, chunk):
            m = min(chunk, n_posts - base)
            per_cat = {}
            for cat, mean in PER_POST.items():
                k = rng.poisson(mean, size=m)
                names, p = table[cat]
                draws = rng.choice(len(names), size=int(k.sum()), p=p)
                per_cat[cat] = (k, draws, names)
            offsets = {cat: 0 for cat in PER_POST}
            for j in range(m):
                i = base + j
                pid = start_id + i
                tags = {}
                for cat, (k, draws, names) in per_cat.items():
                    o = offsets[cat]
                    for d in draws[o:o + k[j]]:
                        tags.setdefault(names[d], cat)
                    offsets[cat] = o + k[j]
                rec = dict(template)
                rec["id"] = str(pid)
                rec["md5"] = hashlib.md5(str(pid).encode()).hexdigest()
                rec["parent_id"] = str(pid - 1) if i % 50 == 49 else "0"
                rec["rating"] = "sqe"[int(rng.integers(0, 3))]
                rec["tags"] = [{"id": str(zlib.crc32(n.encode()) % 2_000_000), "name": n, "category": str(c)}
                               for n, c in sorted(tags.items())]
                line = json.dumps(rec, separators=(",", ":"))
                fh.write(line + "\n")
                written += 1
                if i % 1000 == 500:
                    fh.write(line[: len(line) // 2] + "\n")
                    malformed += 1
                if i % 1000 == 900:
                    fh.write(line + "\n")
                    repeated += 1
    return {"posts": written, "malformed_lines": malformed, "repeated_posts": repeated,
            "bytes": out.stat().st_size, "path": str(out)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--posts", type=int, default=300_000)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--start-id", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print(json.dumps(generate(args.posts, args.out, args.start_id, args.seed)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
