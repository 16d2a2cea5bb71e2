"""CPU cost of gallery searches on a synthetic database: the costly query shapes of issue 11, before and after.

Builds an SQLite gallery of FILES images x TAGS stored tags (rows written directly, no
inference; tag names from a 997-name vocabulary), then times `Gallery.search` (count, page and
tag counts) for each query in a fresh subprocess with a wall-clock limit, and prints one JSON
object: per query its matches, CPU seconds, or the one-line error it was refused with. `--src`
runs another checkout's sources (e.g. /work/main/src for "before"); the database is built by
the checkout under test.

    python benchmarks/bench_gallery_queries.py                       # 20,000 x 30, this checkout
    python benchmarks/bench_gallery_queries.py --src ../main/src --files 5000 --limit-s 120
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WILD4 = "-*x*:>0.15 -*y*:>0.25 -*q*:>0.35 -*z*:>0.85"
QUERIES = {
    "empty (all files, all tag counts)": "",
    "one tag": "tag_001_name",
    "one wildcard *a*": "*a*",
    "four negated wildcards": WILD4,
    "four negated wildcards + 28 terms (the caps)": WILD4 + " " + " ".join(f"-zz{i}" for i in range(28)),
    "*a* x 400 (issue 11)": " ".join(["*a*"] * 400),
    "999 terms (issue 11)": " ".join(["x"] * 999),
}

RUN_ONE = """
import json, sys, time
from animetagnet.errors import AnimeTagNetError
from animetagnet.serve.gallery import Gallery
db, q = sys.argv[1], sys.argv[2]
t = time.process_time()
try:
    r = Gallery(db).search(q, limit=60)
    out = {"total": r.total}
except AnimeTagNetError as exc:
    out = {"refused": str(exc)}
except Exception as exc:  # what the old code did: an exception out of sqlite3
    out = {"exception": f"{type(exc).__name__}: {str(exc)[:120]}"}
out["cpu_s"] = round(time.process_time() - t, 3)
print(json.dumps(out))
"""


def build(db: Path, files: int, tags: int) -> None:
    sys.path.insert(0, str(ROOT / "src"))
    from animetagnet.serve.gallery import connect

    con = connect(db)
    con.executemany("INSERT INTO files (id, path, size, mtime_ns, sha1, rating, rating_confidence, error, indexed_at) "
                    "VALUES (?, ?, 1, 1, 'x', 'general', 0.9, NULL, 0)",
                    [(i, f"/nowhere/f{i:06d}.png") for i in range(1, files + 1)])
    con.executemany("INSERT INTO tags VALUES (?, ?, 'general', ?, ?)",
                    [(i, f"tag_{(i * 7 + k * 13) % 997:03d}_name", 0.1 + (k % 9) / 10, int(k % 3 == 0))
                     for i in range(1, files + 1) for k in range(tags)])
    con.commit()
    con.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=20_000)
    ap.add_argument("--tags", type=int, default=30)
    ap.add_argument("--src", default=str(ROOT / "src"), help="the sources to time (default: this checkout)")
    ap.add_argument("--limit-s", type=float, default=120.0, help="wall-clock limit per query")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.db"
        build(db, args.files, args.tags)
        env = {**os.environ, "PYTHONPATH": args.src}
        results = {}
        for name, q in QUERIES.items():
            start = time.time()
            try:
                proc = subprocess.run([sys.executable, "-c", RUN_ONE, str(db), q], capture_output=True, text=True,
                                      env=env, timeout=args.limit_s)
                results[name] = json.loads(proc.stdout) if proc.returncode == 0 else {"failed": proc.stderr[-300:]}
            except subprocess.TimeoutExpired:
                results[name] = {"timed_out_after_s": args.limit_s}
            results[name]["wall_s"] = round(time.time() - start, 2)
    print(json.dumps({"files": args.files, "tags_per_file": args.tags, "src": args.src, "queries": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
